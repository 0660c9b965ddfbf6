"""Two input sources side by side: "train" and "val" feed the same blob names.

A training net and a validation net both read blobs called "data" and "label". Each
net gets its own input source (``input_source_name``), so each has its own fetchers and
its own Caffe2 queues, and the two streams never mix even though the blob names are the
same. The validation model is built with ``init_params=False``: it reuses the training
model's parameter blobs ("fc_w", "fc_b") by name, the usual Caffe2 way to share weights.

The task is a toy one (three Gaussian clusters in 2-D, a softmax classifier); the point
is the wiring. One `start()` and one `stop()` on the shared coordinator cover both
sources.

Run: ``python examples/train_and_val.py [--fast]``
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

import data_workers
from caffe2.python import brew, model_helper, optimizer, workspace

BATCH_SIZE = 64
CENTRES = np.array([[0.0, 2.0], [2.0, -1.0], [-2.0, -1.0]], dtype=np.float32)


def _clusters(rng: np.random.Generator, rows: int) -> List[np.ndarray]:
    label = rng.integers(0, len(CENTRES), size=rows).astype(np.int32)
    data = CENTRES[label] + rng.normal(scale=0.7, size=(rows, 2)).astype(np.float32)
    return [data, label]


def fetch_train(worker_id: int, batch_size: int) -> List[np.ndarray]:
    """Fresh samples on every call, chunk sizes varying around the batch size."""
    rng = np.random.default_rng()
    return _clusters(rng, int(rng.integers(1, 2 * batch_size + 1)))


class HeldOut:
    """A fixed held-out set, served in order, one batch per call."""

    def __init__(self, rows: int = 1024) -> None:
        self.data, self.label = _clusters(np.random.default_rng(1234), rows)
        self._cursor: Dict[int, int] = {}  # per worker id; one thread per id, no lock needed

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        start = self._cursor.get(worker_id, 0)
        index = np.arange(start, start + batch_size) % len(self.label)
        self._cursor[worker_id] = (start + batch_size) % len(self.label)
        return [self.data[index], self.label[index]]


def add_classifier(model: model_helper.ModelHelper) -> None:
    """data -> fc -> softmax, with "loss" and "accuracy"; parameters named fc_w, fc_b."""
    pred = brew.fc(model, "data", "pred", dim_in=2, dim_out=len(CENTRES))
    softmax, _ = model.net.SoftmaxWithLoss([pred, "label"], ["softmax", "loss"])
    brew.accuracy(model, [softmax, "label"], "accuracy")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--fast", action="store_true", help="run 30 iterations")
    args = parser.parse_args(argv)
    iterations = 30 if args.fast else args.iterations

    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    workspace.ResetWorkspace()  # the example owns the workspace

    train_model = model_helper.ModelHelper(name="train")
    coordinator = data_workers.init_data_input_workers(
        train_model.net, ["data", "label"], fetch_train, BATCH_SIZE,
        num_worker_threads=2, input_source_name="train",
    )
    add_classifier(train_model)
    train_model.AddGradientOperators(["loss"])
    optimizer.build_sgd(train_model, base_learning_rate=0.1)

    val_model = model_helper.ModelHelper(name="val", init_params=False)
    data_workers.init_data_input_workers(  # returns the same coordinator
        val_model.net, ["data", "label"], HeldOut(), BATCH_SIZE,
        num_worker_threads=1, input_source_name="val", max_buffered_batches=4,
    )
    add_classifier(val_model)

    workspace.RunNetOnce(train_model.param_init_net)
    workspace.CreateNet(train_model.net)
    workspace.CreateNet(val_model.net)

    val_every = max(1, iterations // 3)
    coordinator.start()
    try:
        for i in range(1, iterations + 1):
            workspace.RunNet(train_model.net.Proto().name)
            if i % val_every == 0 or i == iterations:
                # Read it now: the validation net writes a "loss" blob of its own.
                train_loss = float(workspace.FetchBlob("loss"))
                accuracies = []
                for _ in range(4):
                    workspace.RunNet(val_model.net.Proto().name)
                    accuracies.append(float(workspace.FetchBlob("accuracy")))
                print(f"iteration {i}: train loss {train_loss:.3f}, "
                      f"val accuracy {np.mean(accuracies):.3f}")
    finally:
        coordinator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
