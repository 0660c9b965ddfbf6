"""Process workers for fetchers that hold the GIL: the same input with threads, then processes.

`text_features.HashedBagOfWords` does all its work in Python bytecode. With
``worker_type="thread"`` its workers take turns on the GIL, so adding workers adds
little; with ``worker_type="process"`` each worker is a process with its own
interpreter and the work spreads over the cores. The script runs the same input both
ways and prints the rows per second the net received.

For process workers the fetcher must pickle: it is an instance of a class of its own
module, `text_features` (next to this script, on ``sys.path``), which each worker
imports to unpickle it; a worker imports nothing of this script.

Run: ``python examples/process_workers.py [--fast] [--workers N]``
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

import data_workers
from caffe2.python import model_helper, workspace

from text_features import HashedBagOfWords

BATCH_SIZE = 32


def measure(worker_type: str, workers: int, iterations: int, words_per_doc: int) -> float:
    """Rows per second delivered to a net by ``workers`` fetchers of ``worker_type``.

    The clock starts after the first batch, so process start-up is not counted.
    """
    workspace.ResetWorkspace()
    model = model_helper.ModelHelper(name=f"features_{worker_type}")
    coordinator = data_workers.init_data_input_workers(
        model.net, ["features", "topic"], HashedBagOfWords(words_per_doc=words_per_doc),
        BATCH_SIZE, num_worker_threads=workers, input_source_name=f"text_{worker_type}",
        max_buffered_batches=8, worker_type=worker_type,
    )
    workspace.CreateNet(model.net)
    net_name = model.net.Proto().name
    coordinator.start()
    try:
        workspace.RunNet(net_name)  # warm-up: the first batch waits for start-up
        started = time.monotonic()
        for _ in range(iterations):
            workspace.RunNet(net_name)
        elapsed = time.monotonic() - started
    finally:
        coordinator.stop()
    return iterations * BATCH_SIZE / elapsed


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--fast", action="store_true", help="a few short batches")
    args = parser.parse_args(argv)
    iterations, words = (5, 50) if args.fast else (args.iterations, 300)

    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    speeds = {kind: measure(kind, args.workers, iterations, words) for kind in ("thread", "process")}
    for kind, speed in speeds.items():
        print(f"{kind:>7} workers x{args.workers}: {speed:8.0f} rows/s")
    print(f"process / thread: {speeds['process'] / speeds['thread']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
