"""Cutting a stream of chunks into batches of exactly ``batch_size`` rows.

The re-batcher never concatenates.  It keeps the chunks it has been given,
with a read offset into the oldest, and when asked to fill a batch it copies
rows straight from those chunks into the destination arrays (which, on the CPU
path, are views of the Caffe2 blobs that will be enqueued).  Each byte a
fetcher returned is therefore copied exactly once.  Leftover rows stay here
for the next batch: nothing is dropped, and rows leave in the order they came.

Upstream instead grew the batch with ``np.append`` (a full copy per chunk) and
pushed leftovers back into a full queue, where they were dropped.

Large pieces are copied by two threads: numpy releases the GIL while it copies,
and one thread writing into rotating, cache-cold batch tensors leaves memory
bandwidth unused.  A piece of at least ``SPLIT_COPY_MIN_BYTES`` is cut in two
along the batch column; a helper thread (started on first use, ended by
``close_helper``, which the input's ``stop()`` joins like its other threads)
copies one half while the enqueuer copies the other.  Still one copy per byte,
and the batch is complete before ``fill`` returns.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable
from collections.abc import Sequence

import numpy as np

from .chunk import Chunk

__all__ = ["Rebatcher", "SPLIT_COPY_MIN_BYTES"]

#: Pieces (rows of one chunk going into one batch, all blobs) at least this big
#: are copied by two threads.  Below it the hand-off costs more than it saves.
SPLIT_COPY_MIN_BYTES = 4 << 20


class _CopyHelper:
    """One thread that runs one copy at a time for the enqueuer.

    Its own thread rather than a ``ThreadPoolExecutor``: ``stop()`` must be
    able to join it (NOTE [ Shutdown and error protocol ], rule 4), and an
    executor's ``shutdown(wait=False)`` leaves its thread running unseen.
    """

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._job: tuple[Callable[..., None], tuple[Any, ...]] | None = None
        self._closed = False
        self._done = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[..., None], *args: Any) -> bool:
        """Start ``fn(*args)`` on the helper; False (nothing started) once closed."""
        with self._lock:
            if self._closed:
                return False
            self._done.clear()
            self._error = None
            self._job = (fn, args)
            self._wake.notify()
            return True

    def wait(self) -> BaseException | None:
        """Wait for the submitted copy; return what it raised, if anything."""
        self._done.wait()
        return self._error

    def close(self) -> None:
        """End the thread once its current copy (if any) is done.  Never blocks."""
        with self._lock:
            self._closed = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._wake.wait_for(lambda: self._job is not None or self._closed)
                job, self._job = self._job, None
            if job is None:
                return  # closed, and no copy left to make
            try:
                job[0](*job[1])
            except BaseException as exc:  # noqa: B902 - handed to the enqueuer, which raises it
                self._error = exc
            finally:
                self._done.set()


class Rebatcher:
    """Buffers chunks and fills batches from them.  Used by one thread only.

    Args:
        batch_columns: the batch dimension of each blob.
        batch_size: rows per batch; may be changed between batches.
        dont_rebatch: if True every chunk becomes one batch as it is.
        name: names the helper thread that copies half of large pieces.
    """

    def __init__(self, batch_columns: Sequence[int], batch_size: int, dont_rebatch: bool,
                 name: str = "data_workers") -> None:
        self.batch_columns = list(batch_columns)
        self.batch_size = batch_size
        self.dont_rebatch = dont_rebatch
        # Index prefix per blob, (slice(None),) * column: built once, not per copy.
        self._prefixes = [(slice(None),) * column for column in self.batch_columns]
        self._pending: collections.deque[Chunk] = collections.deque()
        self._offset = 0  # rows of _pending[0] already copied out
        self._rows = 0  # rows buffered, not yet copied out
        self._name = name
        self._helper: _CopyHelper | None = None
        self._helper_closed = False
        # close_helper (stop()) may race the enqueuer starting the helper.
        self._helper_lock = threading.Lock()

    @property
    def rows_buffered(self) -> int:
        return self._rows

    def add(self, chunk: Chunk) -> None:
        if chunk.rows == 0:
            chunk.done()
            return
        self._pending.append(chunk)
        self._rows += chunk.rows

    def next_batch_rows(self) -> int | None:
        """Rows in the next batch if one can be filled now, else None."""
        if not self._pending:
            return None
        if self.dont_rebatch:
            return self._pending[0].rows
        return self.batch_size if self._rows >= self.batch_size else None

    def lendable_head(self, rows: int) -> Chunk | None:
        """The oldest chunk, if it alone is the next batch of ``rows`` rows and may be lent."""
        if not self._pending or self._offset:
            return None
        head = self._pending[0]
        return head if head.rows == rows and head.lend is not None else None

    def pop_head(self) -> Chunk:
        """Remove the oldest chunk whole (it was lent to the sink)."""
        chunk = self._pending.popleft()
        self._rows -= chunk.rows
        return chunk

    def batch_layout(self, rows: int) -> list[tuple[tuple[int, ...], np.dtype]]:
        """Shape and dtype of each blob of the next batch of ``rows`` rows.

        With ``dont_rebatch`` each blob keeps its own shape: the sparse layout
        (``lengths`` of 4 rows beside ``values`` of 10) goes through as it is.
        """
        head = self._pending[0].arrays
        if self.dont_rebatch:
            return [(arr.shape, arr.dtype) for arr in head]
        layout = []
        for arr, column in zip(head, self.batch_columns):
            shape = list(arr.shape)
            shape[column] = rows
            layout.append((tuple(shape), arr.dtype))
        return layout

    def fill(self, dests: Sequence[np.ndarray], rows: int) -> list[tuple[int, int]]:
        """Copy the next ``rows`` rows into ``dests`` (one array per blob).

        Returns:
            The provenance of the batch: ``(worker_id, rows)`` per source piece,
            in order.  Chunks fully copied out are released.
        """
        if self.dont_rebatch:
            return self._fill_whole(dests)
        filled = 0
        provenance: list[tuple[int, int]] = []
        # Bytes of one batch row over all blobs: a piece of n rows is n * row_bytes.
        row_bytes = sum([d.nbytes for d in dests]) // max(rows, 1)
        while filled < rows:
            chunk = self._pending[0]
            offset = self._offset
            take = min(rows - filled, chunk.rows - offset)
            if take >= 2 and take * row_bytes >= SPLIT_COPY_MIN_BYTES:
                self._copy_split(dests, chunk.arrays, filled, offset, take)
            else:
                self._copy(dests, chunk.arrays, filled, offset, take)
            provenance.append((chunk.worker_id, take))
            filled += take
            self._offset += take
            self._rows -= take
            if self._offset == chunk.rows:
                self._pending.popleft()
                self._offset = 0
                chunk.done()
        return provenance

    def _fill_whole(self, dests: Sequence[np.ndarray]) -> list[tuple[int, int]]:
        """``dont_rebatch``: copy the oldest chunk, every blob whole, and release it."""
        chunk = self._pending[0]
        for dest, src in zip(dests, chunk.arrays):
            dest[...] = src
        self._pending.popleft()
        self._rows -= chunk.rows
        chunk.done()
        return [(chunk.worker_id, chunk.rows)]

    def _copy(self, dests: Sequence[np.ndarray], srcs: Sequence[np.ndarray],
              into: int, out_of: int, rows: int) -> None:
        """Copy ``rows`` rows from ``srcs`` at ``out_of`` into ``dests`` at ``into``."""
        to_rows = slice(into, into + rows)
        from_rows = slice(out_of, out_of + rows)
        for dest, src, prefix in zip(dests, srcs, self._prefixes):
            dest[prefix + (to_rows,)] = src[prefix + (from_rows,)]

    def _copy_split(self, dests: Sequence[np.ndarray], srcs: Sequence[np.ndarray],
                    into: int, out_of: int, rows: int) -> None:
        """Like ``_copy``, with the second half of the rows copied by the helper thread."""
        half = rows // 2
        helper = self._helper or self._start_helper()
        if helper is None or not helper.submit(
                self._copy, dests, srcs, into + half, out_of + half, rows - half):
            # The input is stopping (the helper was closed): copy everything here.
            self._copy(dests, srcs, into, out_of, rows)
            return
        try:
            self._copy(dests, srcs, into, out_of, half)
        finally:
            failed = helper.wait()  # the batch is complete before fill returns
        if failed is not None:
            raise failed

    def _start_helper(self) -> _CopyHelper | None:
        with self._helper_lock:
            if self._helper is None and not self._helper_closed:
                try:
                    self._helper = _CopyHelper("%s copier_0" % self._name)
                except RuntimeError:  # the interpreter is exiting: no new threads
                    self._helper_closed = True
            return self._helper

    def close_helper(self) -> threading.Thread | None:
        """End the copy helper (on shutdown): no new one starts after this.

        Returns:
            Its thread, for the caller to join (it ends once its current copy,
            if any, is done), or None if none was started.
        """
        with self._helper_lock:
            self._helper_closed = True
            helper = self._helper
        if helper is None:
            return None
        helper.close()
        return helper.thread

    def release_all(self) -> int:
        """Drop every buffered chunk and end the copy helper (on shutdown).

        Returns:
            The number of rows that were still buffered.
        """
        self.close_helper()
        rows = self._rows
        while self._pending:
            self._pending.popleft().done()
        self._offset = 0
        self._rows = 0
        return rows
