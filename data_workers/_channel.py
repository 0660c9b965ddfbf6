"""Bounded, closable hand-over of chunks from fetchers to the re-batcher.

Two orders:

* ``FifoChannel`` (default): chunks leave in the order they arrived, whichever
  worker made them -- the fastest order.  Each worker's own chunks stay in order.
* ``RoundRobinChannel`` (``deterministic=True``): one chunk from each worker in
  turn, in worker-id order, so the stream depends on the fetchers' outputs
  alone.  Turn markers (rows == 0) keep a worker's place when it returned
  nothing.

``close()`` wakes every waiter; ``put`` then returns False and ``get`` None.
Nothing is dropped silently: ``drain()`` returns what was left so the owner can
release it (see NOTE [ Shutdown and error protocol ] in ``_coordinator.py``).
"""

from __future__ import annotations

import collections
import threading
from typing import Deque, Dict, List, Optional, Sequence

from ._validate import Chunk

__all__ = ["ChunkChannel", "FifoChannel", "RoundRobinChannel"]


class ChunkChannel:
    """Base: one condition variable guards the buffers and the closed flag."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._closed = False

    def _has_room(self, chunk: Chunk) -> bool:
        raise NotImplementedError

    def _push(self, chunk: Chunk) -> None:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _pop(self) -> Chunk:
        raise NotImplementedError

    def _all(self) -> List[Chunk]:
        raise NotImplementedError

    def put(self, chunk: Chunk, timeout: Optional[float] = None) -> bool:
        """Block until there is room, then add the chunk.

        Returns:
            True if added; False if the channel was closed (or the timeout passed).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed or self._has_room(chunk), timeout):
                return False
            if self._closed:
                return False
            self._push(chunk)
            self._cond.notify_all()
            return True

    def get(self, timeout: Optional[float] = None) -> Optional[Chunk]:
        """Next chunk in channel order; None on timeout or once closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed or self._ready(), timeout):
                return None
            if self._closed:
                return None
            chunk = self._pop()
            self._cond.notify_all()
            return chunk

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> List[Chunk]:
        """Remove and return everything still buffered."""
        with self._cond:
            left = self._all()
            self._cond.notify_all()
            return left

    def depth(self) -> int:
        with self._cond:
            return len(self._all_view())

    def _all_view(self) -> List[Chunk]:
        raise NotImplementedError


class FifoChannel(ChunkChannel):
    """Arrival order, at most ``capacity`` chunks buffered."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self._capacity = capacity
        self._items: Deque[Chunk] = collections.deque()

    def _has_room(self, chunk: Chunk) -> bool:
        return len(self._items) < self._capacity

    def _push(self, chunk: Chunk) -> None:
        self._items.append(chunk)

    def _ready(self) -> bool:
        return bool(self._items)

    def _pop(self) -> Chunk:
        return self._items.popleft()

    def _all(self) -> List[Chunk]:
        left = list(self._items)
        self._items.clear()
        return left

    def _all_view(self) -> List[Chunk]:
        return list(self._items)


class RoundRobinChannel(ChunkChannel):
    """One chunk per worker in turn, ``capacity_per_worker`` buffered per worker."""

    def __init__(self, worker_ids: Sequence[int], capacity_per_worker: int) -> None:
        super().__init__()
        self._order = list(worker_ids)
        self._turn = 0
        self._capacity = capacity_per_worker
        self._items: Dict[int, Deque[Chunk]] = {w: collections.deque() for w in self._order}

    def _has_room(self, chunk: Chunk) -> bool:
        return len(self._items[chunk.worker_id]) < self._capacity

    def _push(self, chunk: Chunk) -> None:
        self._items[chunk.worker_id].append(chunk)

    def _ready(self) -> bool:
        return bool(self._items[self._order[self._turn]])

    def _pop(self) -> Chunk:
        chunk = self._items[self._order[self._turn]].popleft()
        self._turn = (self._turn + 1) % len(self._order)
        return chunk

    def _all(self) -> List[Chunk]:
        left = self._all_view()
        for q in self._items.values():
            q.clear()
        return left

    def _all_view(self) -> List[Chunk]:
        return [c for w in self._order for c in self._items[w]]
