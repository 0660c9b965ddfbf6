"""Name and device scopes captured at init; data_parallel_model; sources never mix."""

from __future__ import annotations

import numpy as np
import pytest
from caffe2.proto import caffe2_pb2
from caffe2.python import brew, core, data_parallel_model, model_helper, optimizer, scope, workspace

import data_workers
from util import TaggedFetcher, check_tagged, init_tagged, make_net, run_and_collect

pytestmark = pytest.mark.timeout(120)


def test_name_and_device_scope_are_captured(ws):
    net = make_net()
    device = core.DeviceOption(caffe2_pb2.CPU, 1)
    with core.DeviceScope(device), core.NameScope("cpu_1"):
        coord = init_tagged(net)
    coord.start()
    check_tagged(run_and_collect(net, 3, blobs=("cpu_1/data", "cpu_1/label")))
    op = [o for o in net.Proto().op if o.type == "DequeueBlobs"][0]
    assert list(op.output) == ["cpu_1/data", "cpu_1/label"]
    assert op.device_option.device_id == 1
    assert coord.stats()[0].namescope == "cpu_1/"
    coord.stop()


def test_model_helper_and_core_net_both_accepted(ws):
    model = model_helper.ModelHelper(name="m")
    coord = init_tagged(model)
    coord.start()
    workspace.RunNetOnce(model.param_init_net)
    check_tagged(run_and_collect(model.net, 3))
    coord.stop()


class ConstantFetcher:
    def __init__(self, value):
        self.value = value

    def __call__(self, worker_id, batch_size):
        n = np.random.randint(1, 40)
        return [np.full((n, 3), self.value, np.float32), np.full((n,), self.value, np.int32)]


def test_train_and_val_sources_with_same_blob_names_never_mix(ws):
    train, val = make_net("train"), make_net("val")
    coord = data_workers.init_data_input_workers(train, ["data", "label"], ConstantFetcher(1), 16,
                                                 input_source_name="train", timeout=5)
    data_workers.init_data_input_workers(val, ["data", "label"], ConstantFetcher(2), 16,
                                         input_source_name="val", timeout=5)
    coord.start()
    workspace.CreateNet(train, overwrite=True)
    workspace.CreateNet(val, overwrite=True)
    for i in range(30):
        net, value = (train, 1) if i % 3 else (val, 2)
        workspace.RunNet(net.Proto().name)
        assert (workspace.FetchBlob("data") == value).all()
        assert (workspace.FetchBlob("label") == value).all()
    coord.stop()


class LinearlySeparable:
    """Three classes; the label is the argmax of the first three features."""

    def __call__(self, worker_id, batch_size):
        n = np.random.randint(8, 48)
        x = np.random.randn(n, 6).astype(np.float32)
        return [x, np.argmax(x[:, :3], axis=1).astype(np.int32)]


def test_data_parallel_model_over_two_cpu_devices_trains(ws):
    model = model_helper.ModelHelper(name="dpm", arg_scope={"order": "NCHW"})

    def add_input(m):
        data_workers.init_data_input_workers(m, ["data", "label"], LinearlySeparable(), 32,
                                             num_worker_threads=1, timeout=10)

    def add_forward(m, loss_scale):
        fc = brew.fc(m, "data", "fc", dim_in=6, dim_out=3)
        softmax, loss = m.SoftmaxWithLoss([fc, "label"], ["softmax", "loss"])
        brew.accuracy(m, [softmax, "label"], "accuracy")
        return [m.Scale(loss, "scaled_loss", scale=loss_scale)]

    def add_optimizer(m):
        optimizer.build_sgd(m, base_learning_rate=0.2)

    data_parallel_model.Parallelize(
        model, input_builder_fun=add_input, forward_pass_builder_fun=add_forward,
        optimizer_builder_fun=add_optimizer, devices=[0, 1], cpu_device=True)
    coord = data_workers.global_coordinator
    assert sorted(s.namescope for s in coord.stats()) == ["cpu_0/", "cpu_1/"]
    coord.start()
    workspace.RunNetOnce(model.param_init_net)
    workspace.CreateNet(model.net)
    accuracies = []
    for _ in range(150):
        workspace.RunNet(model.net.Proto().name)
        accuracies.append(float(workspace.FetchBlob("cpu_0/accuracy")))
    # The devices see different batches from their own inputs...
    assert not np.array_equal(workspace.FetchBlob("cpu_0/data"), workspace.FetchBlob("cpu_1/data"))
    # ...and keep identical parameters.
    np.testing.assert_allclose(workspace.FetchBlob("cpu_0/fc_w"), workspace.FetchBlob("cpu_1/fc_w"))
    assert np.mean(accuracies[-20:]) > 0.85
    assert coord.stop() is True


def _gpu_count() -> int:
    try:
        return workspace.NumGpuDevices() if workspace.has_gpu_support else 0
    except Exception:
        return 0


@pytest.mark.skipif(_gpu_count() == 0, reason="Caffe2 has no GPU here")
def test_gpu_device_scope_delivers_to_gpu_blobs(ws):
    net = make_net()
    device = core.DeviceOption(workspace.GpuDeviceType, 0)
    with core.DeviceScope(device), core.NameScope("gpu_0"):
        coord = init_tagged(net)
    coord.start()
    check_tagged(run_and_collect(net, 5, blobs=("gpu_0/data", "gpu_0/label")))
    op = [o for o in net.Proto().op if o.type == "DequeueBlobs"][0]
    assert op.device_option.device_type == workspace.GpuDeviceType
    coord.stop()
