"""Misbehaving fetchers for fault injection (imported by spawned worker processes).

Every fetcher here is a module-level class so process workers can pickle it;
this module imports only numpy and the standard library, so a spawned child
unpickles it quickly.  Each produces rows in the tagged format of ``util.py``
(``data`` = ``[worker_id, sequence number, ...]`` float64, ``label`` = sequence
number int32) until its fault strikes, so a test can check the rows delivered
before the fault with ``util.check_tagged``.

Faults strike at a call drawn from a per-worker ``RandomState([seed, worker_id])``:
random, but the same on every run, in a spawned child as in a thread.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np

__all__ = [
    "tagged_chunk", "FlakyDiskError", "RandomRaiser", "bad_output", "BAD_OUTPUTS",
    "RandomBadOutput", "SlowFetcher", "BlockingFetcher", "SleepForever", "SuddenDeath",
    "SteadyFetcher", "TrickleFetcher", "hostile_output", "HostileFetcher",
    "BigRowFetcher", "RealBigFetcher", "GatedFetcher", "StuckWorkerFetcher",
    "FailAfterChunks", "CorruptRecords", "SHARED_LOCK", "NeedsTheSharedLock",
]

# ----------------------------------------------------------------------------- rows


def tagged_chunk(worker_id: int, seq: int, rows: int, width: int = 3) -> List[np.ndarray]:
    """``rows`` tagged rows starting at sequence number ``seq`` (see ``util.check_tagged``)."""
    data = np.zeros((rows, width), np.float64)
    data[:, 0] = worker_id
    data[:, 1] = np.arange(seq, seq + rows)
    return [data, np.arange(seq, seq + rows).astype(np.int32)]


class _PerWorker:
    """Per-worker RNG and sequence counter (each worker is one thread or one process)."""

    def __init__(self, seed: int = 0, max_rows: int = 16) -> None:
        self.seed = seed
        self.max_rows = max_rows
        self._state: Dict[int, List[Any]] = {}

    def _next(self, worker_id: int) -> "tuple[np.random.RandomState, int, int, int]":
        """(rng, call number, sequence number, rows) for this worker's next chunk."""
        if worker_id not in self._state:
            self._state[worker_id] = [np.random.RandomState([self.seed, worker_id]), 0, 0]
        st = self._state[worker_id]
        rng, calls, seq = st
        rows = int(rng.randint(1, self.max_rows + 1))
        st[1] = calls + 1
        st[2] = seq + rows
        return rng, calls, seq, rows


# ----------------------------------------------------------------------------- faults


class FlakyDiskError(OSError):
    """What ``RandomRaiser`` raises (picklable, so it crosses from a child process)."""


class RandomRaiser(_PerWorker):
    """Good chunks until a random call (per worker), which raises ``FlakyDiskError``."""

    def __init__(self, p: float = 0.2, seed: int = 0, delay: float = 0.0) -> None:
        super().__init__(seed)
        self.p = p
        self.delay = delay

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        rng, calls, seq, rows = self._next(worker_id)
        if self.delay:
            time.sleep(self.delay)
        if calls > 0 and rng.random_sample() < self.p:
            raise FlakyDiskError("sector %d of shard %d unreadable" % (seq, worker_id))
        return tagged_chunk(worker_id, seq, rows)


class FailAfterChunks:
    """``chunks`` tagged chunks of ``rows`` rows per worker, then ``FlakyDiskError`` on
    every later call: the rows before the failure are known exactly.  With ``marker``,
    the file ``marker`` is created as it first raises, so a test can wait for that."""

    def __init__(self, chunks: int, rows: int = 4, marker: Optional[str] = None) -> None:
        self.chunks = chunks
        self.rows = rows
        self.marker = marker
        self._calls: Dict[int, int] = {}

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        calls = self._calls.get(worker_id, 0)
        if calls >= self.chunks:
            if self.marker is not None:
                open(self.marker, "a").close()
            raise FlakyDiskError("chunk %d of worker %d unreadable" % (calls, worker_id))
        self._calls[worker_id] = calls + 1
        return tagged_chunk(worker_id, calls * self.rows, self.rows)


class CorruptRecords:
    """A ``ShardedSource`` dataset of ``n`` records whose ``load`` raises
    ``FlakyDiskError`` for a block holding a record of ``corrupt``, as a reader
    of a truncated file would.  Row ``i`` is ``data = [i, i, i]``, ``label = i``."""

    def __init__(self, n: int, corrupt: "tuple[int, ...]") -> None:
        self.n = n
        self.corrupt = frozenset(corrupt)

    def __len__(self) -> int:
        return self.n

    def load(self, indices: np.ndarray) -> List[np.ndarray]:
        bad = self.corrupt.intersection(indices.tolist())
        if bad:
            raise FlakyDiskError("record %d is truncated" % min(bad))
        return [np.repeat(indices.astype(np.float64)[:, None], 3, axis=1),
                indices.astype(np.int32)]


def bad_output(kind: str, worker_id: int, seq: int, rows: int) -> Any:
    """A malformed fetcher result of the given kind (see ``BAD_OUTPUTS``)."""
    data, label = tagged_chunk(worker_id, seq, rows)
    if kind == "not_a_list":
        return {"data": data, "label": label}
    if kind == "wrong_count":
        return [data]
    if kind == "not_an_array":
        return [data, label.tolist()]
    if kind == "bad_dtype":
        return [data.astype(np.complex128), label]
    if kind == "rows_mismatch":
        return [data, label[:-1] if rows > 1 else np.zeros(2, np.int32)]
    if kind == "shape_change":
        return [np.zeros((rows, data.shape[1] + 1)), label]
    if kind == "dtype_change":
        return [data.astype(np.float32), label]
    if kind == "no_batch_column":
        return [np.array(1.0), label]  # a 0-d array: no batch column
    raise ValueError(kind)


#: Malformed output kinds and the documented error each one raises.
BAD_OUTPUTS = {
    "not_a_list": "ChunkTypeError",
    "wrong_count": "ChunkTypeError",
    "not_an_array": "ChunkTypeError",
    "bad_dtype": "ChunkTypeError",
    "rows_mismatch": "ChunkValueError",
    "shape_change": "ChunkValueError",
    "dtype_change": "ChunkValueError",
    "no_batch_column": "ChunkValueError",
}


class RandomBadOutput(_PerWorker):
    """Good chunks, then (at a random call) a malformed one of ``kind``."""

    def __init__(self, kind: str, p: float = 0.2, seed: int = 0) -> None:
        super().__init__(seed)
        self.kind = kind
        self.p = p

    def __call__(self, worker_id: int, batch_size: int) -> Any:
        rng, calls, seq, rows = self._next(worker_id)
        if calls > 0 and rng.random_sample() < self.p:
            return bad_output(self.kind, worker_id, seq, rows)
        return tagged_chunk(worker_id, seq, rows)


class SlowFetcher(_PerWorker):
    """Good chunks, each after ``delay`` seconds (longer than the dequeue timeout)."""

    def __init__(self, delay: float, seed: int = 0, max_rows: int = 16) -> None:
        super().__init__(seed, max_rows)
        self.delay = delay

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        time.sleep(self.delay)  # the injected fault: a slow disk, not synchronisation
        _, _, seq, rows = self._next(worker_id)
        return tagged_chunk(worker_id, seq, rows)


class BlockingFetcher(_PerWorker):
    """Thread workers only: ``good`` chunks, then blocks in user code until ``release``.

    "Forever" as far as the library can tell: it cannot interrupt the call.
    The test sets ``release`` in its cleanup so the thread can end.
    """

    def __init__(self, release: threading.Event, good: int = 0,
                 entered: Optional[threading.Event] = None) -> None:
        super().__init__()
        self.release = release
        self.good = good
        self.entered = entered

    def __call__(self, worker_id: int, batch_size: int) -> Optional[List[np.ndarray]]:
        _, calls, seq, rows = self._next(worker_id)
        if calls >= self.good:
            if self.entered is not None:
                self.entered.set()
            self.release.wait()
            return None
        return tagged_chunk(worker_id, seq, rows)


class SleepForever(_PerWorker):
    """Process workers: ``good`` chunks, then sleeps forever inside fetch_fun.

    With ``marker_dir``, a worker creates the file ``<marker_dir>/<worker_id>``
    as it starts sleeping, so a test can wait until every worker is stuck.
    """

    def __init__(self, good: int = 0, marker_dir: Optional[str] = None) -> None:
        super().__init__()
        self.good = good
        self.marker_dir = marker_dir

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        _, calls, seq, rows = self._next(worker_id)
        if calls >= self.good:
            if self.marker_dir is not None:
                open(os.path.join(self.marker_dir, str(worker_id)), "w").close()
            while True:
                time.sleep(3600)
        return tagged_chunk(worker_id, seq, rows)


class SuddenDeath(_PerWorker):
    """Process workers: good chunks, then the process dies (``how``) on a random call.

    ``how``: ``"sigkill"`` (as the OOM killer would), ``"segfault"`` (a crash in
    native code), ``"exit"`` (``os._exit(3)``: a library calling exit).
    Only ``worker_to_die`` dies; the others keep producing.
    """

    def __init__(self, how: str, worker_to_die: Optional[int] = None, p: float = 0.3,
                 seed: int = 0) -> None:
        super().__init__(seed)
        self.how = how
        self.worker_to_die = worker_to_die
        self.p = p

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        rng, calls, seq, rows = self._next(worker_id)
        dies = self.worker_to_die is None or worker_id == self.worker_to_die
        if dies and calls > 0 and rng.random_sample() < self.p:
            if self.how == "sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif self.how == "segfault":
                ctypes.string_at(0)  # reads address 0: SIGSEGV
            elif self.how == "exit":
                os._exit(3)
            raise ValueError(self.how)
        return tagged_chunk(worker_id, seq, rows)


class SteadyFetcher(_PerWorker):
    """Good tagged chunks of 1..max_rows rows, forever, with a ``marker`` in column 2."""

    def __init__(self, seed: int = 0, max_rows: int = 16, marker: float = 0.0) -> None:
        super().__init__(seed, max_rows)
        self.marker = marker

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        _, _, seq, rows = self._next(worker_id)
        data, label = tagged_chunk(worker_id, seq, rows)
        data[:, 2] = self.marker
        return [data, label]


class TrickleFetcher(_PerWorker):
    """One row per call, every ``delay`` seconds: never enough for a big batch quickly."""

    def __init__(self, delay: float = 0.02) -> None:
        super().__init__(max_rows=1)
        self.delay = delay

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        time.sleep(self.delay)
        _, _, seq, rows = self._next(worker_id)
        return tagged_chunk(worker_id, seq, rows)


# ----------------------------------------------------------------------------- hostile


class Stride2(np.ndarray):
    """A trivial ndarray subclass (what a library's array type may be)."""


def hostile_output(kind: str, worker_id: int, seq: int) -> Any:
    """A chunk of 4 rows in one of the hostile forms named by ``kind``.

    Row ``i`` of ``data`` holds ``seq + i`` in every element when the form
    can carry data, so delivered batches can be checked.
    """
    rows = np.arange(seq, seq + 4, dtype=np.float64)
    data = np.repeat(rows[:, None], 3, axis=1)
    label = rows.astype(np.int32)
    if kind == "strided":
        big = np.zeros((8, 6))
        big[::2, ::2] = data
        return [big[::2, ::2], label]
    if kind == "transposed":
        return [np.asfortranarray(data), label]
    if kind == "negative_strides":
        return [data[::-1][::-1], label[::-1].copy()[::-1]]
    if kind == "readonly":
        data.setflags(write=False)
        label.setflags(write=False)
        return [data, label]
    if kind == "broadcast_rows":
        return [np.broadcast_to(rows[:, None], (4, 3)), label]  # zero stride along axis 1
    if kind == "matrix":
        return [np.asmatrix(data), label]
    if kind == "subclass":
        return [data.view(Stride2), label.view(Stride2)]
    if kind == "mixed_dtypes":
        return [data.astype(np.float16), label.astype(np.uint8)]
    if kind == "nan_inf":
        data[:, 1] = np.nan
        data[:, 2] = np.inf
        return [data, label]
    if kind == "object_bytes":
        return [data, np.array([b"r%d" % r for r in label], dtype=object)]
    if kind == "object_str":
        return [data, np.array(["r%d" % r for r in label], dtype=object)]
    # -- rejected forms -----------------------------------------------------
    if kind == "object_mixed":
        return [data, np.array([{"row": int(r)} for r in label], dtype=object)]
    if kind == "masked":
        return [np.ma.masked_array(data, mask=data > seq + 1), label]
    if kind == "zero_d":
        return [np.array(1.0), label]
    if kind == "numpy_scalar":
        return [np.float64(1.0), label]
    if kind == "python_list":
        return [data.tolist(), label]
    if kind == "big_endian":
        return [data.astype(">f8"), label]
    if kind == "unicode":
        return [data, label.astype("U8")]
    if kind == "bytes_dtype":
        return [data, label.astype("S8")]
    if kind == "complex":
        return [data.astype(np.complex128), label]
    if kind == "datetime":
        return [data, label.astype("datetime64[s]")]
    if kind == "uint32":
        return [data, label.astype(np.uint32)]
    if kind == "surrogate":
        return [data, np.array(["r", "\udc80", "r", "r"], dtype=object)]
    if kind == "structured":
        return [np.zeros(4, dtype=[("a", "f4"), ("b", "i4")]), label]
    if kind == "huge_virtual":  # 4 TiB once copied; costs nothing to return
        return [np.broadcast_to(np.float32(1), (1 << 40, 1)),
                np.broadcast_to(np.int32(0), (1 << 40,))]
    if kind == "huge_rows":  # 2 rows of 16 GiB each (virtual); a batch would be worse
        return [np.broadcast_to(np.float64(1), (2, 1 << 31)), label[:2]]
    raise ValueError(kind)


class HostileFetcher:
    """Returns ``hostile_output(kind, ...)`` on every call (picklable)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.seq: Dict[int, int] = {}

    def __call__(self, worker_id: int, batch_size: int) -> Any:
        seq = self.seq.get(worker_id, 0)
        self.seq[worker_id] = seq + 4
        return hostile_output(self.kind, worker_id, seq)


class BigRowFetcher:
    """One row of 8 MiB per chunk: a zero-stride view, so it costs nothing."""

    def __call__(self, worker_id, batch_size):
        return [np.broadcast_to(np.float64(0), (1, 1 << 20)), np.zeros(1, np.int32)]


class RealBigFetcher:
    """A real, materialised 8 MiB chunk of 2 rows."""

    def __call__(self, worker_id, batch_size):
        return [np.ones((2, 1 << 19), np.float64), np.zeros(2, np.int32)]


class GatedFetcher(_PerWorker):
    """Thread workers only: one chunk of ``rows`` rows per permit of ``gate``
    (a ``threading.Semaphore``), so a test decides exactly when data comes."""

    def __init__(self, gate: threading.Semaphore, rows: int = 4) -> None:
        super().__init__(max_rows=rows)
        self.gate = gate
        self.rows = rows

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        self.gate.acquire()
        _, _, seq, _ = self._next(worker_id)
        return tagged_chunk(worker_id, seq, self.rows)


class StuckWorkerFetcher(_PerWorker):
    """Thread workers only: worker ``stuck_id`` blocks until ``release``; the rest
    return steady tagged chunks."""

    def __init__(self, release: threading.Event, stuck_id: int) -> None:
        super().__init__()
        self.release = release
        self.stuck_id = stuck_id

    def __call__(self, worker_id: int, batch_size: int) -> Optional[List[np.ndarray]]:
        if worker_id == self.stuck_id:
            self.release.wait()
            return None
        _, _, seq, rows = self._next(worker_id)
        return tagged_chunk(worker_id, seq, rows)


#: A lock of an importable module: a forked worker gets it in whatever state the
#: trainer's threads left it at the fork; a spawned one imports it anew.
SHARED_LOCK = threading.Lock()


class NeedsTheSharedLock:
    """Takes ``SHARED_LOCK`` on every call (a logging handler, a cache, a client
    library guarded by a module lock)."""

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        with SHARED_LOCK:
            return [np.zeros((4, 3)), np.zeros((4,), np.int32)]
