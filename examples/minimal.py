"""The smallest complete use of data_workers: one input feeding one Caffe2 net.

The fetcher returns chunks of any size (here 1..2*batch_size rows); the library
re-batches them into exactly ``batch_size`` rows and feeds them to the net through a
Caffe2 queue, which the net reads with the ``DequeueBlobs`` ops that
`init_data_input_workers` adds to it. To show that rows stay aligned across blobs after
re-batching, each row's data starts with its own label.

Run: ``python examples/minimal.py [--fast]``
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

import numpy as np

import data_workers
from caffe2.python import model_helper, workspace

BATCH_SIZE = 32


def fetch(worker_id: int, batch_size: int) -> List[np.ndarray]:
    """A fetcher: ``batch_size`` is a hint; return one array per input blob."""
    rows = np.random.randint(1, 2 * batch_size + 1)
    label = np.random.randint(0, 10, size=rows).astype(np.int32)
    data = np.random.rand(rows, 4).astype(np.float32)
    data[:, 0] = label  # lets the loop below check that rows were kept together
    return [data, label]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--fast", action="store_true", help="run 20 iterations")
    args = parser.parse_args(argv)
    iterations = 20 if args.fast else args.iterations

    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    workspace.ResetWorkspace()  # the example owns the workspace

    model = model_helper.ModelHelper(name="minimal")
    coordinator = data_workers.init_data_input_workers(
        model.net, ["data", "label"], fetch, BATCH_SIZE,
        num_worker_threads=2, input_source_name="train",
    )
    # Ops that consume "data" and "label" would go here; the dequeue ops come first.
    workspace.CreateNet(model.net)

    coordinator.start()
    try:
        for _ in range(iterations):
            workspace.RunNet(model.net.Proto().name)
            data = workspace.FetchBlob("data")
            label = workspace.FetchBlob("label")
            if data.shape != (BATCH_SIZE, 4) or not np.array_equal(data[:, 0], label):
                raise RuntimeError(f"unexpected batch: data {data.shape}, label {label.shape}")
    finally:
        coordinator.stop()
    print(f"ran {iterations} batches of {BATCH_SIZE} rows; data and label rows stayed aligned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
