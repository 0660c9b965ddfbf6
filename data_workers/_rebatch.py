"""Cutting a stream of chunks into batches of exactly ``batch_size`` rows.

The re-batcher never concatenates.  It keeps the chunks it has been given,
with a read offset into the oldest, and when asked to fill a batch it copies
rows straight from those chunks into the destination arrays (which, on the CPU
path, are views of the Caffe2 blobs that will be enqueued).  Each byte a
fetcher returned is therefore copied exactly once.  Leftover rows stay here
for the next batch: nothing is dropped, and rows leave in the order they came.

Upstream instead grew the batch with ``np.append`` (a full copy per chunk) and
pushed leftovers back into a full queue, where they were dropped.
"""

from __future__ import annotations

import collections
from typing import Deque, List, Optional, Sequence, Tuple

import numpy as np

from ._validate import Chunk

__all__ = ["Rebatcher"]


class Rebatcher:
    """Buffers chunks and fills batches from them.  Used by one thread only.

    Args:
        batch_columns: the batch dimension of each blob.
        batch_size: rows per batch; may be changed between batches.
        dont_rebatch: if True every chunk becomes one batch as it is.
    """

    def __init__(self, batch_columns: Sequence[int], batch_size: int, dont_rebatch: bool) -> None:
        self.batch_columns = list(batch_columns)
        self.batch_size = batch_size
        self.dont_rebatch = dont_rebatch
        # Index prefix per blob, (slice(None),) * column: built once, not per copy.
        self._prefixes = [(slice(None),) * column for column in self.batch_columns]
        self._pending: Deque[Chunk] = collections.deque()
        self._offset = 0  # rows of _pending[0] already copied out
        self._rows = 0  # rows buffered, not yet copied out

    @property
    def rows_buffered(self) -> int:
        return self._rows

    def add(self, chunk: Chunk) -> None:
        if chunk.rows == 0:
            chunk.done()
            return
        self._pending.append(chunk)
        self._rows += chunk.rows

    def next_batch_rows(self) -> Optional[int]:
        """Rows in the next batch if one can be filled now, else None."""
        if not self._pending:
            return None
        if self.dont_rebatch:
            return self._pending[0].rows
        return self.batch_size if self._rows >= self.batch_size else None

    def batch_layout(self, rows: int) -> List[Tuple[Tuple[int, ...], np.dtype]]:
        """Shape and dtype of each blob of the next batch of ``rows`` rows."""
        head = self._pending[0].arrays
        layout = []
        for arr, column in zip(head, self.batch_columns):
            shape = list(arr.shape)
            shape[column] = rows
            layout.append((tuple(shape), arr.dtype))
        return layout

    def fill(self, dests: Sequence[np.ndarray], rows: int) -> List[Tuple[int, int]]:
        """Copy the next ``rows`` rows into ``dests`` (one array per blob).

        Returns:
            The provenance of the batch: ``(worker_id, rows)`` per source piece,
            in order.  Chunks fully copied out are released.
        """
        filled = 0
        provenance: List[Tuple[int, int]] = []
        while filled < rows:
            chunk = self._pending[0]
            offset = self._offset
            take = min(rows - filled, chunk.rows - offset)
            into = slice(filled, filled + take)
            out_of = slice(offset, offset + take)
            for dest, src, prefix in zip(dests, chunk.arrays, self._prefixes):
                dest[prefix + (into,)] = src[prefix + (out_of,)]
            provenance.append((chunk.worker_id, take))
            filled += take
            self._offset += take
            self._rows -= take
            if self._offset == chunk.rows:
                self._pending.popleft()
                self._offset = 0
                chunk.done()
        return provenance

    def release_all(self) -> int:
        """Drop every buffered chunk (on shutdown), releasing their memory.

        Returns:
            The number of rows that were still buffered.
        """
        rows = self._rows
        while self._pending:
            self._pending.popleft().done()
        self._offset = 0
        self._rows = 0
        return rows
