"""What a training loop sees when a fetcher raises, and how to report it.

The fetcher below reads "records" and hits a corrupt one after a few calls. The library
catches the exception in the worker, stops that input and closes its Caffe2 queue. The
net then drains the batches already queued and its next ``RunNet`` fails at once, instead
of blocking for the dequeue timeout (600 s by default). ``coordinator.stop()``, in the
``finally`` block, stops every worker and then raises `data_workers.FetcherError`, which
says which input and which worker failed and carries the original exception as
``__cause__``. Call ``coordinator.check()`` in the loop to get the error even earlier.

Run: ``python examples/handle_fetcher_failure.py [--fast] [--worker-type process]``
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

import data_workers
from caffe2.python import model_helper, workspace

BATCH_SIZE = 16


class CorruptRecordError(ValueError):
    """What the fetcher raises: a stand-in for a truncated file or a bad record."""


class FlakyReader:
    """Returns good chunks, then raises on a worker's ``fail_at``-th call.

    Each call also waits ``read_latency`` seconds, as a read from disk or network would,
    so that the net gets to run some iterations before the failure.
    """

    def __init__(self, fail_at: int, read_latency: float = 0.01) -> None:
        self.fail_at = fail_at
        self.read_latency = read_latency
        self._calls: Dict[int, int] = {}  # per worker id; one thread or process per id

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        calls = self._calls[worker_id] = self._calls.get(worker_id, 0) + 1
        time.sleep(self.read_latency)
        if calls == self.fail_at:
            raise CorruptRecordError(f"record {calls * batch_size} of shard {worker_id} is truncated")
        return [np.ones((batch_size, 4), dtype=np.float32), np.zeros(batch_size, dtype=np.int32)]


def train(net_name: str, coordinator: data_workers.GlobalCoordinator, iterations: int) -> int:
    """Run the net; returns the number of iterations done (it is expected to fail first)."""
    done = 0
    coordinator.start()
    try:
        for done in range(iterations):
            started = time.monotonic()
            try:
                workspace.RunNet(net_name)
            except RuntimeError:
                # Caffe2 reports only that DequeueBlobs failed; the cause is in the
                # input, and stop() below raises it.
                print(f"RunNet failed at iteration {done}, "
                      f"{time.monotonic() - started:.2f} s after it was called")
                raise
        return done + 1
    finally:
        coordinator.stop()  # raises the input's failure, once every worker has stopped


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Returns 0 when the failure was caught and reported, as expected."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker-type", choices=("thread", "process"), default="thread")
    parser.add_argument("--fail-at", type=int, default=20,
                        help="each worker raises on this call (5 with --fast)")
    parser.add_argument("--fast", action="store_true")
    args = parser.parse_args(argv)
    fail_at = 5 if args.fast else args.fail_at

    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    workspace.ResetWorkspace()  # the example owns the workspace

    model = model_helper.ModelHelper(name="flaky")
    coordinator = data_workers.init_data_input_workers(
        model.net, ["data", "label"], FlakyReader(fail_at), BATCH_SIZE,
        num_worker_threads=2, input_source_name="flaky", worker_type=args.worker_type,
    )
    workspace.CreateNet(model.net)

    try:
        done = train(model.net.Proto().name, coordinator, iterations=10_000)
    except data_workers.FetcherError as error:
        print(f"input {error.input_source!r} failed in fetcher worker {error.worker_id}: "
              f"{type(error.__cause__).__name__}: {error.__cause__}")
        return 0
    print(f"unexpected: {done} iterations ran without a failure", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
