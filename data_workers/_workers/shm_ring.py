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
    [32:40)   capacity: the ring bytes in use, set by the child from its first
              chunk (at most the mapped size; 0 until then)
    [40:48)   sent: data messages the child has sent (child writes); the
              parent's count of those it read gives the batches waiting
    [64:...)  the ring, up to the mapped size

Sizing.  The memfd is mapped at its full size (a fixed size the user chose, or
a large virtual one), but a child whose size was not chosen uses only
``RING_BATCHES`` batches of it, decided from its first chunk; pages never
written cost nothing.

Lending.  The parent may hand a whole-batch chunk to Caffe2 without copying
(``_caffe2.feed.Caffe2Feed.lend``); Caffe2 releases it ``LEND_LAG`` enqueues later,
and releases may come out of order.  The parent therefore tracks chunks in
write order and advances ``released`` only over a prefix of released chunks,
and it lends only from a ring that always has room for the batches whose
enqueues make Caffe2 let go (``lend``); otherwise the trainer copies.
An op in the user's net that keeps a second reference to an input blob's
memory past the next iteration would hold the ring up; plain Caffe2 ops copy.

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

import collections
import ctypes
import math
import mmap
import os
import threading
import time
import weakref
from typing import Callable
from collections.abc import Sequence

import numpy as np

__all__ = ["ShmArena", "ArrayLayout", "RingClaim", "HEADER_BYTES", "ALIGN", "RING_BATCHES",
           "unmap_inherited"]

HEADER_BYTES = 64
# Header slots (uint64 each; the layout in the module docstring).
_RELEASED, _STOP, _BATCH_SIZE, _EXITED, _CAPACITY, _SENT = range(6)
ALIGN = 64
#: Batches a ring holds when its size was not chosen by the user.
RING_BATCHES = 10
#: Enqueues after which Caffe2 has dropped a lent batch: the queue's 4 slots,
#: then the net's output blob hands it back to a slot, which the 5th enqueue
#: after it swaps into a scratch blob, where the 6th replaces it
#: (``_caffe2.feed.Caffe2Feed.lend``).
LEND_LAG = 6
#: The smallest ring a child sizes for itself.
MIN_RING_BYTES = 64 << 20

#: (dtype string, shape, byte offset in the ring) of one array in a chunk.
ArrayLayout = tuple[str, tuple[int, ...], int]


#: The arenas this process created whose mapping may still be there (not closed,
#: or closed while views of it were alive), for ``unmap_inherited``.
_CREATED: "weakref.WeakSet[ShmArena]" = weakref.WeakSet()


def unmap_inherited() -> None:
    """In a worker just forked from the trainer: unmap every ring the trainer had mapped.

    Never called where those rings are in use: the Python objects that refer to
    them stay behind (``fork.py`` freezes them) and must not be touched again.
    """
    munmap = ctypes.CDLL(None, use_errno=True).munmap
    munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    for arena in list(_CREATED):
        munmap(arena._address, HEADER_BYTES + arena.size)
    _CREATED.clear()


#: numpy dtypes by their string, for ``views`` (which runs on every batch).
_DTYPES: dict[str, np.dtype] = {}


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class RingClaim:
    """One chunk's hold on ring bytes (``nbytes``, padding included), tracked by
    the parent until released."""

    __slots__ = ("nbytes", "released")

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.released = False


class ShmArena:
    """One worker's ring.  Created by the parent, re-opened in the child from its fd.

    Args:
        size: bytes mapped for the ring.
        fixed: the user chose ``size``: the ring uses all of it.  Otherwise the
            child sizes its ring from its first chunk (``size_for_batch``).
    """

    def __init__(self, size: int, fd: int | None = None, name: str = "data_workers",
                 fixed: bool = True) -> None:
        self.size = size
        self.fixed = fixed
        created = fd is None
        if fd is None:
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.fd = fd
        try:
            if created:
                os.ftruncate(fd, HEADER_BYTES + size)
            self._map: mmap.mmap | None = mmap.mmap(fd, HEADER_BYTES + size)
        except BaseException:
            if created:  # e.g. mmap's ENOMEM: no ring, and no fd left behind
                os.close(fd)
            raise
        # uint64 fields as Python ints: cheaper per access than numpy scalars.
        self._header: memoryview = memoryview(self._map)[:48].cast("Q")
        self._owner_pid = os.getpid()
        # The enqueuer, a receiver, Caffe2's release callbacks and the stopping
        # thread release (reentrant: NOTE [ Shutdown and error protocol ], rule 7).
        self._release_lock = threading.RLock()
        self._claims: collections.deque[RingClaim] = collections.deque()  # parent: in write order
        self._ring = np.frombuffer(self._map, np.uint8, size, HEADER_BYTES)
        #: Where the mapping starts (``unmap_inherited``).
        self._address = int(self._ring.__array_interface__["data"][0]) - HEADER_BYTES
        if created:
            _CREATED.add(self)
        self.written = 0  # child side: total bytes handed out, padding included
        if fixed:
            self._header[_CAPACITY] = size

    @property
    def capacity(self) -> int:
        """Ring bytes in use (the mapped size until the child sized its ring)."""
        header = self._header
        return self.size if header is None or not header[_CAPACITY] else int(header[_CAPACITY])

    def size_for_batch(self, batch_bytes: int) -> None:
        """Child side, at the first chunk: use ``RING_BATCHES`` batches of the mapping."""
        if not self._header[_CAPACITY]:
            self._header[_CAPACITY] = min(self.size, max(MIN_RING_BYTES, RING_BATCHES * batch_bytes))

    # -- child side -------------------------------------------------------
    def chunk_bytes(self, arrays: Sequence[np.ndarray]) -> int:
        return sum(_aligned(a.nbytes) for a in arrays)

    def layout_bytes(self, layouts: Sequence[tuple[str, tuple[int, ...]]]) -> int:
        """Ring bytes that arrays of these ``(dtype, shape)`` pairs take, alignment included."""
        return sum(_aligned(math.prod(shape) * np.dtype(dtype).itemsize)
                   for dtype, shape in layouts)

    def reserve(self, layouts: Sequence[tuple[str, tuple[int, ...]]],
                keep_waiting: Callable[[], bool]) -> tuple[int, list[ArrayLayout]] | None:
        """Claim contiguous ring space for arrays of these ``(dtype, shape)`` pairs.

        Waits for room while ``keep_waiting()``.

        Returns:
            ``(span, layouts)``: bytes consumed (padding included, to be released
            in order) and where each array goes; None if told to stop waiting.
        """
        sizes = [math.prod(shape) * np.dtype(dtype).itemsize for dtype, shape in layouts]
        need = sum(_aligned(n) for n in sizes)
        if need > self.capacity:  # an empty ring takes anything: keep callers honest
            raise ValueError("%d bytes can never fit a ring of %d" % (need, self.capacity))
        pos = self.written % self.capacity
        pad = self.capacity - pos if pos + need > self.capacity else 0
        span = pad + need
        pause = 0.0002
        while True:
            in_use = self.written - self._header[_RELEASED]
            if in_use == 0 or self.capacity - in_use >= span:
                break
            if not keep_waiting():
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.005)
        offset = (pos + pad) % self.capacity
        placed: list[ArrayLayout] = []
        for (dtype, shape), nbytes in zip(layouts, sizes):
            placed.append((np.dtype(dtype).str, tuple(shape), offset))
            offset += _aligned(nbytes)
        self.written += span
        return span, placed

    def unreserve(self, span: int) -> None:
        """Give back the latest ``reserve`` (nothing was reserved after it), unsent."""
        self.written -= span

    def write(self, arrays: Sequence[np.ndarray],
              keep_waiting: Callable[[], bool]) -> tuple[int, list[ArrayLayout]] | None:
        """Copy ``arrays`` into newly reserved ring space (see ``reserve``)."""
        reserved = self.reserve([(a.dtype.str, a.shape) for a in arrays], keep_waiting)
        if reserved is None:
            return None
        for dest, arr in zip(self.views(reserved[1]), arrays):
            np.copyto(dest, arr, casting="no")
        return reserved

    # -- both sides -------------------------------------------------------
    def views(self, layouts: Sequence[ArrayLayout]) -> list[np.ndarray]:
        """Numpy arrays over the ring memory described by ``layouts`` (no copy)."""
        ring = self._ring
        out: list[np.ndarray] = []
        for dtype_str, shape, offset in layouts:
            dtype = _DTYPES.get(dtype_str)
            if dtype is None:
                dtype = _DTYPES[dtype_str] = np.dtype(dtype_str)
            if offset < 0 or offset + math.prod(shape) * dtype.itemsize > len(ring):
                raise ValueError("array %s %s at %d is outside a ring of %d bytes"
                                 % (dtype_str, shape, offset, len(ring)))
            out.append(np.ndarray(shape, dtype, ring, offset))
        return out

    # -- parent side ------------------------------------------------------
    def _owned(self) -> bool:
        return self._header is not None and os.getpid() == self._owner_pid

    def track(self, nbytes: int) -> RingClaim:
        """Record a chunk the child wrote (call in the order the child wrote them)."""
        claim = RingClaim(nbytes)
        with self._release_lock:
            self._claims.append(claim)
        return claim

    def release(self, claim: RingClaim) -> None:
        """Give a chunk's bytes back; the child sees them once every older chunk is back."""
        with self._release_lock:
            if claim.released:
                return
            claim.released = True
            freed = 0
            while self._claims and self._claims[0].released:
                freed += self._claims.popleft().nbytes
            if freed and self._owned():
                self._header[_RELEASED] += freed

    def may_lend(self, claim: RingClaim) -> bool:
        """Whether the whole batch ``claim`` holds may go to Caffe2 uncopied: the
        ring can wait for it.

        Caffe2 drops a lent batch ``LEND_LAG`` enqueues later, in the order it
        took them, and holds at most ``LEND_LAG + 1`` of them.  The ring reuses
        space in write order, so with every buffered chunk consumed its
        unreleased part spans at most ``LEND_LAG + 1`` batches: a ring of
        ``LEND_LAG + 2`` batches always has room for the next one, the child
        always gets to write the batches whose enqueues make Caffe2 let go.  A
        smaller ring never lends: the caller copies.
        """
        return not claim.released and (LEND_LAG + 2) * claim.nbytes <= self.capacity

    # -- control block ----------------------------------------------------------
    def request_stop(self) -> None:
        if self._owned():
            self._header[_STOP] = 1

    def mark_exit(self) -> None:
        """Child side: record that this worker ends because it was asked to."""
        if self._header is not None:
            self._header[_EXITED] = 1

    @property
    def exited_when_asked(self) -> bool:
        """Parent side: the child recorded that it ended because it was asked to."""
        return self._header is not None and bool(self._header[_EXITED])

    def count_sent(self) -> None:
        """Child side: one more data message sent."""
        self._header[_SENT] += 1

    @property
    def sent(self) -> int:
        """Data messages the child has sent so far."""
        header = self._header
        return 0 if header is None else int(header[_SENT])

    @property
    def stop_requested(self) -> bool:
        return bool(self._header[_STOP])

    @property
    def batch_size(self) -> int:
        return int(self._header[_BATCH_SIZE])

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if self._owned():
            self._header[_BATCH_SIZE] = value

    def close(self) -> None:
        """Unmap and close the fd.  Views still alive keep the memory until collected."""
        self._header = self._ring = None  # type: ignore[assignment]
        if self._map is not None:
            try:
                self._map.close()
                _CREATED.discard(self)
            except BufferError:
                pass  # a view is still referenced; the mapping goes with it
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
