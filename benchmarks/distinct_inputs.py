"""Memory of inputs with new names: 200 inputs started and stopped in one process.

Usage::

    .venv/bin/python -m benchmarks.distinct_inputs               # 200 inputs, 8 MiB batches
    .venv/bin/python -m benchmarks.distinct_inputs --inputs 60 --worker-type process

One validation input per evaluation, one input per trial of a sweep: each input
``train_<i>`` has a name of its own, takes 3 batches of 8 MiB and is stopped; the
user's net is deleted after it.  Goal (issue 23): resident memory grows less than
32 MB from the 20th input to the 200th.  A stopped input must give back its queue's
slot blobs, scratch and status blobs and enqueue net (``_caffe2/feed.py``).
Prints one line per 20 inputs and a final ``growth`` line, of resident memory as
it is and after ``malloc_trim(0)`` (glibc keeps freed 8 MiB blocks in its heap once
its mmap threshold has grown, so the raw figure swings by tens of MB either way
without any leak); exit status 1 if the goal is missed on the raw figure.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
from typing import List, Optional

import numpy as np

#: Rows of a batch and floats per row: 8 rows of 1 MiB, one 8 MiB batch.
ROWS, WIDTH = 8, 1 << 17
GOAL_BYTES = 32 << 20


class EightMiB:
    """Whole 8 MiB batches of float32 ``data`` and int32 ``label``."""

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        return [np.ones((ROWS, WIDTH * 2), np.float32), np.zeros(ROWS, np.int32)]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def trimmed_rss_bytes() -> int:
    """Resident memory after glibc gave its free heap memory back to the system."""
    ctypes.CDLL(None).malloc_trim(0)
    return rss_bytes()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=200)
    parser.add_argument("--from-input", type=int, default=20, help="growth measured from this one")
    parser.add_argument("--every", type=int, default=20, help="print RSS every this many inputs")
    parser.add_argument("--worker-type", default="thread", choices=["thread", "process"])
    args = parser.parse_args(argv)

    from caffe2.python import core, workspace
    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    import data_workers

    base = trimmed_base = None
    rss = trimmed = 0
    for i in range(1, args.inputs + 1):
        net = core.Net("distinct_%d" % i)
        coord = data_workers.init_data_input_workers(
            net, ["data", "label"], EightMiB(), ROWS, input_source_name="train_%d" % i,
            worker_type=args.worker_type, timeout=30)
        coord.start()
        workspace.CreateNet(net)
        for _ in range(3):
            workspace.RunNet(net.Proto().name)
        if not coord.stop():
            print("input %d: stop() returned False" % i)
            return 1
        workspace.C.delete_net(net.Proto().name)
        del net, coord
        gc.collect()
        rss = rss_bytes()
        trimmed = trimmed_rss_bytes()
        if i == args.from_input:
            base, trimmed_base = rss, trimmed
        if i % args.every == 0:
            print("input %4d: rss %7.1f MiB, after malloc_trim %7.1f MiB"
                  % (i, rss / 2 ** 20, trimmed / 2 ** 20), flush=True)
    growth = rss - (base or rss)
    trimmed_growth = trimmed - (trimmed_base or trimmed)
    print("growth from input %d to %d: %.1f MiB, after malloc_trim %.1f MiB (goal < %d MiB)"
          % (args.from_input, args.inputs, growth / 2 ** 20, trimmed_growth / 2 ** 20,
             GOAL_BYTES >> 20))
    return 0 if growth < GOAL_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
