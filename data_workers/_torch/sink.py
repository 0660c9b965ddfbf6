"""The PyTorch side of one input: a bounded hand-off of whole batches to the consumer.

A ``BatchSink`` (contract: ``_core/sink.py``) like the Caffe2 queue, for a Python
consumer (``data_workers.torch.Loader``) instead of a net::

    enqueuer thread                              consumer thread (the training loop)
      dests = destinations(layout)   <-- pool --+
      (re-batcher copies rows into dests)        | buffer back once the consumer's
      enqueue(dests) --> deque (CAPACITY) -----> take() -> tensors sharing dests' memory
                         blocks while full       | (weakref.finalize on each handed-out view)
                                                 +-- fires when the last tensor is gone

Why buffers are pooled and handed out without a copy: the re-batcher's copy
into ``dests`` is the only copy a row makes, as on the Caffe2 CPU path.  The
consumer may keep a batch (a list of recent batches, a tensor stored in a
metric), so a buffer is never written again while anything still refers to
it: each batch is handed out as a fresh numpy *view* of a pooled base array,
``torch.from_numpy`` keeps that view alive for as long as any tensor sharing
its storage lives, and a ``weakref.finalize`` on the view puts the base back
in the pool only when the view dies.  Nothing in the pool: allocate.

Pinned memory (``pin_memory=True``, CUDA only) is not pooled here: each
destination is a fresh pinned tensor from PyTorch's caching host allocator,
and that tensor itself is handed out.  The allocator then reuses the block
only after every asynchronous copy out of it (``.cuda(non_blocking=True)``)
has finished; a pool of our own could not see those copies and would
overwrite a buffer a copy still reads.

Object (string) arrays have no tensor type; they are handed out as the numpy
arrays themselves, never pooled.

Waiting and closing follow NOTE [ Shutdown and error protocol ] in
``_core/coordinator.py``: ``close()`` never blocks and wakes both sides; every wait
is also bounded, so it rechecks the closed flag on its own.
"""

from __future__ import annotations

import collections
import threading
import time
import weakref
from typing import Any, Optional
from collections.abc import Sequence

import numpy as np
import torch

from .._core.sink import BatchLayout
from .._core.validate import DtypeRule
from .._core.words import Words

__all__ = ["TorchSink", "CAPACITY", "TORCH_DTYPE_RULE", "check_pin_memory"]

#: Batches handed over but not yet taken (the Caffe2 queue holds 4 too).
CAPACITY = 4
#: Free buffers kept per (shape, dtype); more are left to the garbage collector.
_POOL_PER_KEY = CAPACITY + 2
#: Distinct (shape, dtype) keys kept (``dont_rebatch`` inputs vary their shapes).
_POOL_KEYS = 16
#: Longest single wait before rechecking the closed flag.
_WAIT_SECS = 0.5

_TORCH_DTYPES = {
    np.dtype(np.bool_): torch.bool,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}

#: What the validator lets through to this sink: a dtype without a tensor type
#: (uint16, uint32, ...) fails at the first chunk, naming the worker and blob.
#: Object arrays have no tensor type either; they are handed out as numpy arrays.
TORCH_DTYPE_RULE = DtypeRule(
    holder="a torch tensor", dtypes=frozenset(_TORCH_DTYPES),
    object_arrays="numpy object arrays in the batch (no tensor type holds them)")
#: A PyTorch user's words: a loader's workers yield arrays (``_core/words.py``).
TORCH_WORDS = Words(worker="worker", input="loader", array="array",
                    exceptions="fetch_fun exceptions")


def check_pin_memory(pin_memory: Any) -> bool:
    """``pin_memory``, checked where a loader is built (both Loader forms).

    Raises:
        TypeError: not a bool.
        ValueError: True without CUDA: refused rather than silently unpinned.
    """
    if not isinstance(pin_memory, bool):
        raise TypeError("pin_memory must be a bool, got %r" % (pin_memory,))
    if pin_memory and not torch.cuda.is_available():
        raise ValueError("pin_memory=True pins batches for copies to a CUDA device, and "
                         "torch.cuda.is_available() is False here; pass pin_memory=False")
    return pin_memory


_Key = tuple[tuple[int, ...], np.dtype]
#: What one handed-out array of a batch is: a pooled numpy base, or a pinned
#: tensor (whose ``numpy()`` view is the destination), or an object array.
_Slot = tuple[np.ndarray, Optional[torch.Tensor]]


class _BufferPool:
    """Free base arrays by (shape, dtype).

    Buffers come back from ``weakref.finalize`` callbacks, which run on
    whatever thread drops the last reference, or inside the garbage collector
    in the middle of another method of this pool on the same thread: hence a
    reentrant lock and no iteration over shared state while it is held.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._free: dict[_Key, list[np.ndarray]] = {}
        self._closed = False

    def get(self, key: _Key) -> np.ndarray:
        with self._lock:
            free = self._free.get(key)
            if free:
                return free.pop()
        return np.empty(key[0], key[1])

    def give_back(self, key: _Key, base: np.ndarray) -> None:
        with self._lock:
            if self._closed:
                return
            free = self._free.get(key)
            if free is None:
                if len(self._free) >= _POOL_KEYS:
                    return
                free = self._free[key] = []
            if len(free) < _POOL_PER_KEY:
                free.append(base)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._free.clear()


class TorchSink:
    """Hands whole batches to one consumer thread as tensors (a ``BatchSink``).

    Args:
        names: one name per array of a batch, for error messages.
        pin_memory: allocate every batch in pinned (page-locked) host memory;
            the caller has checked that CUDA is available.
        capacity: batches handed over and not yet taken.
    """

    dtype_rule = TORCH_DTYPE_RULE
    words = TORCH_WORDS
    scope = ""
    full_hint = ("the loader holds %d batches the loop has not taken; is it still calling "
                 "next()?" % CAPACITY)

    def __init__(self, names: Sequence[str], pin_memory: bool = False,
                 capacity: int = CAPACITY) -> None:
        self.names = list(names)
        #: The dataset Loader's bookkeeping arrays (``_torch/dataset_loader.py``).
        self.hidden_arrays: frozenset[str] = frozenset()
        self.pin_memory = pin_memory
        self.capacity = capacity
        self._pool = _BufferPool()
        # Reentrant: NOTE [ Shutdown and error protocol ], rule 7 (a close() from a
        # signal handler or a finalizer on a thread that is inside take()).
        self._lock = threading.RLock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._batches: collections.deque[list[_Slot]] = collections.deque()
        self._filling: list[_Slot] = []
        self._closed = False
        #: Seconds take() waited for a batch, in total (under _lock).
        self._waited = 0.0

    # -- producer: the enqueuer thread ------------------------------------------
    def destinations(self, layout: BatchLayout) -> list[np.ndarray]:
        """Arrays to write the next batch into: pooled buffers, pinned tensors' memory.

        Every dtype of ``layout`` passed ``TORCH_DTYPE_RULE`` at the first chunk.
        """
        slots: list[_Slot] = []
        for name, (shape, dtype) in zip(self.names, layout):
            if dtype.kind == "O":
                slots.append((np.empty(shape, dtype), None))
                continue
            tdtype = _TORCH_DTYPES[dtype]
            if self.pin_memory:
                tensor = torch.empty(shape, dtype=tdtype, pin_memory=True)
                slots.append((tensor.numpy(), tensor))
            else:
                slots.append((self._pool.get((tuple(shape), dtype)), None))
        # enqueue() receives the arrays alone (the sink contract); the enqueuer
        # is the only producer and enqueues what it asked for before asking
        # again, so remembering the last slots is enough.
        self._filling = slots
        return [array for array, _ in slots]

    def enqueue(self, dests: Sequence[np.ndarray]) -> bool:
        """Hand the batch over; blocks while ``capacity`` batches wait.

        Returns:
            False if the sink was closed meanwhile (the batch is dropped).
        """
        slots, self._filling = self._filling, []
        with self._lock:
            while len(self._batches) >= self.capacity and not self._closed:
                self._not_full.wait(_WAIT_SECS)
            if self._closed:
                return False
            self._batches.append(slots)
            self._not_empty.notify()
            return True

    # -- consumer -------------------------------------------------------------
    def take(self, timeout: float) -> tuple[Any, ...] | None:
        """The next batch, as one tensor (or object array) per name.

        Waits at most ``timeout`` seconds (and never longer than the sink stays
        open).  Batches handed over before ``close()`` can still be taken.

        Returns:
            The batch, or None if none came within ``timeout`` or the sink is
            closed and empty.
        """
        started = time.monotonic()
        deadline = started + timeout
        with self._lock:
            try:
                while not self._batches:
                    left = deadline - time.monotonic()
                    if self._closed or left <= 0:
                        return None
                    self._not_empty.wait(min(left, _WAIT_SECS))
            finally:
                self._waited += time.monotonic() - started
            slots = self._batches.popleft()
            self._not_full.notify()
        return tuple(self._hand_out(array, tensor) for array, tensor in slots)

    def _hand_out(self, array: np.ndarray, tensor: torch.Tensor | None) -> Any:
        if tensor is not None:
            return tensor  # pinned: the caching host allocator decides on reuse
        if array.dtype.kind == "O":
            return array
        # A view of its own, watched: torch.from_numpy keeps it alive as long as
        # any tensor shares the storage, so the base returns only after that.
        view = array.view()
        finalizer = weakref.finalize(view, self._pool.give_back, (array.shape, array.dtype), array)
        finalizer.atexit = False
        return torch.from_numpy(view)

    # -- halting ---------------------------------------------------------------
    def close(self) -> None:
        """Stop accepting batches; wakes a blocked ``enqueue`` and ``take``.  Never blocks."""
        with self._lock:
            self._closed = True
            self._not_full.notify_all()
            self._not_empty.notify_all()

    def cleanup(self) -> None:
        """Drop the batches nobody took and the free buffers.  Idempotent.

        Tensors the consumer still holds stay valid: they own their memory.
        """
        self.close()
        with self._lock:
            self._batches.clear()
        self._filling = []
        self._pool.close()

    def consumer_wait_secs(self) -> float:
        """Seconds ``take`` has waited for a batch, in total.

        Read without the lock: ``stats()`` calls this, possibly from a signal
        handler that interrupted ``take`` (NOTE [ Shutdown and error protocol ], rule 7).
        """
        return self._waited
