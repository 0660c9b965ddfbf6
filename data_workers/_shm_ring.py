"""A shared-memory ring through which one worker process hands arrays to the trainer.

Each worker owns one arena: an anonymous ``memfd`` (no name in ``/dev/shm``,
so nothing can be left behind, even when a process is killed) mapped by both
sides.  The child writes each chunk's arrays contiguously at the ring's head
and tells the parent where (a small pipe message); the parent wraps numpy views
around that memory, the re-batcher copies the rows out (the one copy), and the
parent then *releases* the chunk by advancing a counter in the arena header.
Chunks of one worker are released in the order they were written -- the
re-batcher consumes each worker's chunks in order -- so a single counter says
how much of the ring is free again.

Layout (the header doubles as the control block)::

    [0:8)     released: total bytes the parent has released (uint64, parent writes)
    [8:16)    stop: nonzero once the parent asks the child to stop (parent writes)
    [16:24)   batch size hint for fetch_fun (parent writes)
    [24:32)   exit: nonzero once the child ended because it was asked to (child writes)
    [64:...)  the ring, ``capacity`` bytes

A chunk is written contiguously; one that does not fit before the ring's end
starts at its beginning, and the skipped tail is counted in its span.  When
the ring is empty any chunk up to ``capacity`` is placed, so the ring can
always take a chunk that fits its capacity (waiting for ``pad + need`` bytes
of an empty ring could otherwise wait forever).

Only the process that created the arena writes the parent's fields: a child
the trainer forked inherits the mapping, and its writes would stop or
corrupt the real workers (NOTE [ Shutdown and error protocol ], rule 8).

Race note: the child only reads ``released`` and the parent only writes it
(under a lock: several parent threads release);
an aligned 8-byte store is atomic on the platforms we support, and the parent
finishes reading a chunk before it publishes the release, so the child can
never overwrite rows that are still being copied.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["ShmArena", "ArrayLayout", "HEADER_BYTES", "ALIGN"]

HEADER_BYTES = 64
ALIGN = 64

#: (dtype string, shape, byte offset in the ring) of one array in a chunk.
ArrayLayout = Tuple[str, Tuple[int, ...], int]


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class ShmArena:
    """One worker's ring.  Created by the parent, re-opened in the child from its fd."""

    def __init__(self, capacity: int, fd: Optional[int] = None, name: str = "data_workers") -> None:
        self.capacity = capacity
        created = fd is None
        if fd is None:
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.fd = fd
        try:
            if created:
                os.ftruncate(fd, HEADER_BYTES + capacity)
            self._map: Optional[mmap.mmap] = mmap.mmap(fd, HEADER_BYTES + capacity)
        except BaseException:
            if created:  # e.g. mmap's ENOMEM: no ring, and no fd left behind
                os.close(fd)
            raise
        self._header = np.frombuffer(self._map, np.uint64, 4, 0)
        self._owner_pid = os.getpid()
        # The enqueuer, a receiver and the stopping thread may release (reentrant:
        # NOTE [ Shutdown and error protocol ], rule 7, in _coordinator.py).
        self._release_lock = threading.RLock()
        self._ring = np.frombuffer(self._map, np.uint8, capacity, HEADER_BYTES)
        self.written = 0  # child side: total bytes handed out, padding included

    # -- child side -------------------------------------------------------
    def chunk_bytes(self, arrays: Sequence[np.ndarray]) -> int:
        return sum(_aligned(a.nbytes) for a in arrays)

    def write(self, arrays: Sequence[np.ndarray],
              keep_waiting: Callable[[], bool]) -> Optional[Tuple[int, List[ArrayLayout]]]:
        """Copy ``arrays`` into the ring, waiting for room while ``keep_waiting()``.

        Returns:
            ``(span, layouts)``: bytes consumed (padding included, to be released
            in order) and where each array is; None if told to stop waiting.
        """
        need = self.chunk_bytes(arrays)
        pos = self.written % self.capacity
        pad = self.capacity - pos if pos + need > self.capacity else 0
        span = pad + need
        pause = 0.0002
        while True:
            in_use = self.written - int(self._header[0])
            if in_use == 0 or self.capacity - in_use >= span:
                break
            if not keep_waiting():
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.005)
        offset = (pos + pad) % self.capacity
        layouts: List[ArrayLayout] = []
        for arr in arrays:
            dest = self._ring[offset:offset + arr.nbytes].view(arr.dtype).reshape(arr.shape)
            np.copyto(dest, arr, casting="no")
            layouts.append((arr.dtype.str, tuple(arr.shape), offset))
            offset += _aligned(arr.nbytes)
        self.written += span
        return span, layouts

    # -- parent side ------------------------------------------------------
    def views(self, layouts: Sequence[ArrayLayout]) -> List[np.ndarray]:
        """Numpy arrays over the ring memory described by ``layouts`` (no copy)."""
        out = []
        for dtype_str, shape, offset in layouts:
            dtype = np.dtype(dtype_str)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            out.append(self._ring[offset:offset + nbytes].view(dtype).reshape(shape))
        return out

    def _owned(self) -> bool:
        return self._header is not None and os.getpid() == self._owner_pid

    def release(self, span: int) -> None:
        """Hand ``span`` bytes back to the child (call in write order, one thread at a time)."""
        with self._release_lock:
            if self._owned():
                self._header[0] += np.uint64(span)

    # -- control block ----------------------------------------------------------
    def request_stop(self) -> None:
        if self._owned():
            self._header[1] = 1

    def mark_exit(self) -> None:
        """Child side: record that this worker ends because it was asked to."""
        if self._header is not None:
            self._header[3] = 1

    @property
    def exited_when_asked(self) -> bool:
        """Parent side: the child recorded that it ended because it was asked to."""
        return self._header is not None and bool(self._header[3])

    @property
    def stop_requested(self) -> bool:
        return bool(self._header[1])

    @property
    def batch_size(self) -> int:
        return int(self._header[2])

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if self._owned():
            self._header[2] = value

    def close(self) -> None:
        """Unmap and close the fd.  Views still alive keep the memory until collected."""
        self._header = self._ring = None  # type: ignore[assignment]
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # a view is still referenced; the mapping goes with it
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
