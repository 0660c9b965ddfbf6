"""The three peer-benchmark fetchers as plain functions, for ``python -m data_workers profile``.

::

    python -m data_workers profile benchmarks/profile_fetchers.py:one_sample
    python -m data_workers profile benchmarks/profile_fetchers.py:gil_bound
    python -m data_workers profile benchmarks/profile_fetchers.py:big_batches

They are the fetchers of ``benchmarks/peers.py`` (one row per call; ~10 ms of
pure Python per batch of 32; one 19.3 MB batch per call).  ``gil_bound``
calibrates its spin to 10 ms on its first call in each process.
"""

from __future__ import annotations

from typing import Any, List

import numpy as np

from benchmarks import _harness as h
from benchmarks.peers import BigBatch, GilBound, OneSample

_one = OneSample()
_big = BigBatch()
_gil: List[Any] = []


def one_sample(worker_id: int, batch_size: int) -> List[np.ndarray]:
    return _one(worker_id, batch_size)


def gil_bound(worker_id: int, batch_size: int) -> List[np.ndarray]:
    if not _gil:
        _gil.append(GilBound(int(h.calibrate_spin(0.010)["spin_iterations"])))
    return _gil[0](worker_id, batch_size)  # type: ignore[no-any-return]


def big_batches(worker_id: int, batch_size: int) -> List[np.ndarray]:
    return _big(worker_id, batch_size)
