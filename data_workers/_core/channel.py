"""Bounded, closable hand-over of chunks from fetchers to the re-batcher.

Two orders:

* ``FifoChannel`` (default): chunks leave in the order they arrived, whichever
  worker made them -- the fastest order.  Each worker's own chunks stay in order.
* ``RoundRobinChannel`` (``deterministic=True``): one chunk from each worker in
  turn, in worker-id order, so the stream depends on the fetchers' outputs
  alone.  Turn markers (rows == 0) keep a worker's place when it returned
  nothing.

One lock, with a "not empty" condition for the consumer and "not full"
conditions for producers (as ``queue.Queue`` does), and ``notify()`` of a
single waiter: with one shared condition and ``notify_all`` every hand-over
woke every thread, each wake-up a futex call and a GIL hand-off.  The consumer
takes every ready chunk per wake-up (``get_ready``).

``close()`` wakes every waiter; ``put`` then returns False and ``get_ready``
an empty list.  Nothing is dropped silently: ``drain()`` returns what was left
so the owner can release it (see NOTE [ Shutdown and error protocol ] in
``_core/coordinator.py``).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence

from .chunk import Chunk

__all__ = ["ChunkChannel", "FifoChannel", "RoundRobinChannel"]


class ChunkChannel:
    """Base: the lock, the consumer's condition and the closed flag."""

    def __init__(self) -> None:
        # Reentrant: NOTE [ Shutdown and error protocol ], rule 7 (_core/coordinator.py).
        self._lock = threading.RLock()
        self._not_empty = threading.Condition(self._lock)
        self._closed = False

    # -- per-order hooks, called with the lock held -----------------------------
    def _not_full_for(self, chunk: Chunk) -> threading.Condition:
        raise NotImplementedError

    def _has_room(self, chunk: Chunk) -> bool:
        raise NotImplementedError

    def _push(self, chunk: Chunk) -> None:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _pop(self) -> Chunk:
        """Remove the next chunk and wake one producer that may now have room."""
        raise NotImplementedError

    def _all_view(self) -> list[Chunk]:
        raise NotImplementedError

    def _clear(self) -> None:
        raise NotImplementedError

    def _wake_all_producers(self) -> None:
        raise NotImplementedError

    # -- public ---------------------------------------------------------------
    def put(self, chunk: Chunk, timeout: float | None = None) -> bool:
        """Block until there is room, then add the chunk.

        A failure marker (``chunk.failure``) never waits for room: a failing
        worker must not be held up by a full channel, and it adds one marker.

        Returns:
            True if added; False if the channel was closed (or the timeout passed).
        """
        with self._lock:
            not_full = self._not_full_for(chunk)
            marker = chunk.failure is not None
            if not not_full.wait_for(lambda: self._closed or marker or self._has_room(chunk),
                                     timeout):
                return False
            if self._closed:
                return False
            self._push(chunk)
            self._not_empty.notify()
            return True

    def get_ready(self, timeout: float | None = None, want_rows: int = 1) -> list[Chunk]:
        """Chunks that can leave now, in channel order, waiting for at least one.

        Takes chunks until they hold ``want_rows`` rows or none is ready, so the
        consumer holds no more than its next batch needs.

        Returns:
            The chunks; empty on timeout or once closed.
        """
        with self._lock:
            if not self._not_empty.wait_for(lambda: self._closed or self._ready(), timeout):
                return []
            if self._closed:
                return []
            out = []
            rows = 0
            while rows < want_rows and self._ready():
                chunk = self._pop()
                rows += chunk.rows
                out.append(chunk)
            return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._wake_all_producers()

    def drain(self) -> list[Chunk]:
        """Remove and return everything still buffered."""
        with self._lock:
            left = self._all_view()
            self._clear()
            self._wake_all_producers()
            return left

    def depth(self) -> int:
        """Chunks buffered.  Takes no lock: ``stats()`` reads it, and a signal
        handler calling ``stop()`` may interrupt that read (rule 7, ``_core/coordinator.py``)."""
        return self._count()

    def _count(self) -> int:
        raise NotImplementedError

    def waiting_for(self) -> int | None:
        """The worker whose chunk the consumer needs next, if only one will do (else None)."""
        return None


class FifoChannel(ChunkChannel):
    """Arrival order, at most ``capacity`` chunks buffered."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self._capacity = capacity
        self._items: collections.deque[Chunk] = collections.deque()
        self._not_full = threading.Condition(self._lock)

    def _not_full_for(self, chunk: Chunk) -> threading.Condition:
        return self._not_full

    def _has_room(self, chunk: Chunk) -> bool:
        return len(self._items) < self._capacity

    def _push(self, chunk: Chunk) -> None:
        self._items.append(chunk)

    def _ready(self) -> bool:
        return bool(self._items)

    def _pop(self) -> Chunk:
        self._not_full.notify()  # one slot freed: one producer may proceed
        return self._items.popleft()

    def _all_view(self) -> list[Chunk]:
        return list(self._items)

    def _count(self) -> int:
        return len(self._items)  # atomic under the GIL

    def _clear(self) -> None:
        self._items.clear()

    def _wake_all_producers(self) -> None:
        self._not_full.notify_all()


class RoundRobinChannel(ChunkChannel):
    """One chunk per worker in turn, ``capacity_per_worker`` buffered per worker.

    Each worker has its own "not full" condition: room in worker A's buffer must
    wake A, and waking B instead (who may still be full) would lose the wake-up.
    """

    def __init__(self, worker_ids: Sequence[int], capacity_per_worker: int) -> None:
        super().__init__()
        self._order = list(worker_ids)
        self._turn = 0
        self._capacity = capacity_per_worker
        self._items: dict[int, collections.deque[Chunk]] = {w: collections.deque() for w in self._order}
        self._not_full: dict[int, threading.Condition] = {
            w: threading.Condition(self._lock) for w in self._order}

    def _not_full_for(self, chunk: Chunk) -> threading.Condition:
        return self._not_full[chunk.worker_id]

    def _has_room(self, chunk: Chunk) -> bool:
        return len(self._items[chunk.worker_id]) < self._capacity

    def _push(self, chunk: Chunk) -> None:
        self._items[chunk.worker_id].append(chunk)

    def _ready(self) -> bool:
        return bool(self._items[self._order[self._turn]])

    def _pop(self) -> Chunk:
        worker = self._order[self._turn]
        self._turn = (self._turn + 1) % len(self._order)
        self._not_full[worker].notify()
        return self._items[worker].popleft()

    def _all_view(self) -> list[Chunk]:
        return [c for w in self._order for c in self._items[w]]

    def _count(self) -> int:
        return sum(len(q) for q in list(self._items.values()))  # keys never change

    def _clear(self) -> None:
        for q in self._items.values():
            q.clear()

    def _wake_all_producers(self) -> None:
        for cond in self._not_full.values():
            cond.notify_all()

    def waiting_for(self) -> int | None:
        with self._lock:
            worker = self._order[self._turn]
            return None if self._items[worker] else worker
