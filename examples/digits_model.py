"""The demo's Caffe2 side: a small CNN, trained data-parallel over CPU devices.

Two models share one set of parameters, as is usual in Caffe2:

* the training model (``init_params=True``) owns the parameters and the SGD update;
* the validation model (``init_params=False``) builds the same forward pass over the same
  blob names (``cpu_0/conv1_w`` ...), so it reads the trained weights without copies.

Each device's net starts with ``DequeueBlobs`` ops that `data_workers` adds inside the
device and name scope that `data_parallel_model` opens around the input builder; the
"train" and "val" inputs use the same blob names ("data", "label") but separate queues.
"""

from __future__ import annotations

from typing import Callable, List, Sequence

from caffe2.python import brew, core, data_parallel_model, model_helper, optimizer

from digits_data import IMAGE_SIZE, NUM_CLASSES

InputBuilder = Callable[[model_helper.ModelHelper], None]


def add_forward_pass(model: model_helper.ModelHelper, loss_scale: float) -> List[core.BlobReference]:
    """conv-relu-conv-relu-maxpool-fc-relu-fc-softmax; adds ``loss`` and ``accuracy`` blobs.

    Returns the scaled loss, as `data_parallel_model` expects from a forward builder.
    """
    conv1 = brew.conv(model, "data", "conv1", dim_in=1, dim_out=16, kernel=3, pad=1)
    relu1 = brew.relu(model, conv1, "relu1")
    conv2 = brew.conv(model, relu1, "conv2", dim_in=16, dim_out=32, kernel=3, pad=1)
    relu2 = brew.relu(model, conv2, "relu2")
    pool2 = brew.max_pool(model, relu2, "pool2", kernel=2, stride=2)
    flat = (IMAGE_SIZE // 2) ** 2 * 32
    fc1 = brew.fc(model, pool2, "fc1", dim_in=flat, dim_out=64)
    relu3 = brew.relu(model, fc1, "relu3")
    pred = brew.fc(model, relu3, "pred", dim_in=64, dim_out=NUM_CLASSES)
    softmax, loss = model.net.SoftmaxWithLoss([pred, "label"], ["softmax", "loss"])
    brew.accuracy(model, [softmax, "label"], "accuracy")
    return [model.net.Scale(loss, "scaled_loss", scale=loss_scale)]


def build_models(
    devices: Sequence[int],
    train_input: InputBuilder,
    val_input: InputBuilder,
    base_learning_rate: float,
    total_iterations: int,
) -> tuple[model_helper.ModelHelper, model_helper.ModelHelper]:
    """Build the training and validation models over ``devices`` (CPU).

    The input builders are called once per device, inside that device's scope; they are
    where `data_workers.init_data_input_workers` is called.
    """

    def add_optimizer(model: model_helper.ModelHelper) -> None:
        optimizer.add_weight_decay(model, 1e-4)
        # Cut the learning rate tenfold for the last quarter of the run.
        optimizer.build_sgd(
            model,
            base_learning_rate=base_learning_rate,
            policy="step",
            stepsize=max(1, int(total_iterations * 0.75)),
            gamma=0.1,
            momentum=0.9,
            nesterov=True,
        )

    train_model = model_helper.ModelHelper(name="digits_train")
    data_parallel_model.Parallelize(
        train_model,
        input_builder_fun=train_input,
        forward_pass_builder_fun=add_forward_pass,
        optimizer_builder_fun=add_optimizer,
        devices=list(devices),
        cpu_device=True,
    )
    # init_params=False: the validation net reads the training model's parameter blobs.
    val_model = model_helper.ModelHelper(name="digits_val", init_params=False)
    data_parallel_model.Parallelize(
        val_model,
        input_builder_fun=val_input,
        forward_pass_builder_fun=add_forward_pass,
        param_update_builder_fun=None,
        devices=list(devices),
        cpu_device=True,
    )
    return train_model, val_model


def device_blob(device: int, name: str) -> str:
    """The blob ``name`` as seen in CPU device ``device``'s name scope."""
    return f"cpu_{device}/{name}"
