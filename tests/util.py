"""Test helpers: tagged fetchers whose rows say who made them and in what order.

A tagged row is ``[worker_id, sequence number, ...]`` in float64 (``data``)
and the sequence number again as int32 (``label``).  Checking delivered
batches against that proves exactly-once, in-order delivery per fetcher.
Module-level classes, so process workers can pickle them.
"""

from __future__ import annotations

import collections
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
from legs import core, workspace  # None on the modern leg (no Caffe2)

import data_workers


class TaggedFetcher:
    """Returns chunks of 1..max_rows tagged rows; deterministic per worker."""

    def __init__(self, max_rows: int = 64, width: int = 3, seed: int = 0,
                 delay: float = 0.0) -> None:
        self.max_rows = max_rows
        self.width = width
        self.seed = seed
        self.delay = delay
        self._state: Dict[int, List] = {}

    def __call__(self, worker_id: int, batch_size: int):
        if worker_id not in self._state:
            self._state[worker_id] = [np.random.RandomState(self.seed * 1000 + worker_id), 0]
        rng, seq = self._state[worker_id]
        n = int(rng.randint(1, self.max_rows + 1))
        data = np.zeros((n, self.width), np.float64)
        data[:, 0] = worker_id
        data[:, 1] = np.arange(seq, seq + n)
        label = np.arange(seq, seq + n).astype(np.int32)
        self._state[worker_id][1] = seq + n
        if self.delay:
            time.sleep(self.delay)
        return [data, label]


def make_net(name: str = "net") -> core.Net:
    return core.Net(name)


def run_and_collect(net: core.Net, iterations: int, blobs: Sequence[str] = ("data", "label")):
    """Run ``net`` and return the fetched blobs of each iteration."""
    workspace.CreateNet(net, overwrite=True)
    out = []
    for _ in range(iterations):
        workspace.RunNet(net.Proto().name)
        out.append([workspace.FetchBlob(b) for b in blobs])
    return out


def check_tagged(batches, batch_size: Optional[int] = 32) -> Dict[int, int]:
    """Assert tagged rows arrive exactly once, in order per worker, data and label in step.

    Returns:
        rows seen per worker.
    """
    next_seq: Dict[int, int] = collections.defaultdict(int)
    for data, label in batches:
        if batch_size is not None:
            assert data.shape[0] == batch_size and label.shape[0] == batch_size
        np.testing.assert_array_equal(data[:, 1].astype(np.int64), label.astype(np.int64))
        for wid, seq in data[:, :2].astype(np.int64):
            assert seq == next_seq[wid], "worker %d: got row %d, expected %d" % (wid, seq, next_seq[wid])
            next_seq[wid] += 1
    return dict(next_seq)


def failing_fetcher(worker_id: int, batch_size: int):
    raise ValueError("disk on fire in worker %d" % worker_id)


def init_tagged(net, batch_size: int = 32, **kwargs):
    return data_workers.init_data_input_workers(
        net, ["data", "label"], kwargs.pop("fetch_fun", TaggedFetcher()), batch_size,
        timeout=kwargs.pop("timeout", 5), **kwargs)


class SelfDestruct:
    """A fetcher that serves a few chunks, then dies the way it is told to."""

    def __init__(self, how: str, after: int = 3) -> None:
        self.how = how
        self.after = after
        self.calls = 0

    def __call__(self, worker_id: int, batch_size: int):
        import ctypes
        import os
        import signal

        self.calls += 1
        if self.calls > self.after:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.how == "segfault":
                ctypes.string_at(0)
            elif self.how == "exit":
                os._exit(3)
        return [np.zeros((4, 3)), np.zeros((4,), np.int32)]


class RandomValues:
    """Rows of np.random values: shows each worker process's seeding."""

    def __call__(self, worker_id: int, batch_size: int):
        return [np.random.rand(8, 2), np.full((8,), worker_id, np.int32)]


def shm_segments() -> set:
    import os

    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))
