"""What a fetcher may return, checked at the boundary where user data enters.

A fetcher returns a list with one numpy array per input blob.  ``ChunkValidator``
turns that into a ``Chunk`` or raises ``ChunkTypeError`` / ``ChunkValueError``
naming the worker, the blob, what was expected and what came.  ``None`` and
zero-row chunks keep upstream's lenient behaviour: skipped (and counted).

Which dtypes are supported is the sink's rule (``DtypeRule``): a Caffe2 blob
holds other types than a torch tensor.  The rule is plain data, so worker
processes apply it too without importing the sink.

In re-batching mode the first accepted chunk fixes each blob's dtype and
trailing shape (every dimension but the batch column); a later chunk that
differs is an error, because it could not be stacked into one tensor.

With ``dont_rebatch=True`` a chunk is a batch as it is: each blob keeps its
own shape (``lengths`` of 4 rows beside ``values`` of 10, or a 0-d scalar);
only the structure and the dtypes are checked.  Its row count, for the
counters and the zero-rows rule, is that of the first blob (1 if it is 0-d).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Any, Callable
from collections.abc import Sequence

import numpy as np

from .chunk import Chunk
from .errors import ChunkTypeError, ChunkValueError
from .words import FETCHER_WORDS, Words

__all__ = ["Chunk", "BlobSpec", "ChunkValidator", "DtypeRule"]

#: Fraction of physical memory one chunk, or one batch built from its rows,
#: may need.  Sizes are *virtual*: a broadcast view counts as the array it
#: becomes once copied, so a fetcher cannot make the re-batcher allocate (and
#: the OOM killer end the trainer) more than this.
MEMORY_BUDGET_FRACTION = 0.5


def default_memory_budget() -> int:
    """Bytes allowed per chunk or batch: ``MEMORY_BUDGET_FRACTION`` of physical memory."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 16 << 30
    return int(total * MEMORY_BUDGET_FRACTION)


def _gib(n: int) -> str:
    return "%.1f GiB" % (n / float(1 << 30))


@dataclasses.dataclass(frozen=True)
class BlobSpec:
    """What every chunk of one blob must look like once the first one arrived."""

    dtype: np.dtype
    #: The shape with the batch column removed.
    trailing_shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class DtypeRule:
    """The arrays a sink can take, checked at the first chunk (in whichever process
    validates it).  Plain data: it is pickled to worker processes.
    """

    #: What a batch array becomes, for messages: "a Caffe2 blob", "a torch tensor".
    holder: str
    #: The numeric dtypes taken, native byte order (``np.dtype(">f8")`` is not one).
    dtypes: frozenset[np.dtype]
    #: What object arrays become, for messages; "" if object arrays are refused.
    object_arrays: str = ""
    #: Why one element of an object array cannot be taken, or None if it can;
    #: None: any element.  A module-level function (it is pickled by name).
    object_element: Callable[[Any], str | None] | None = None

    def supported_text(self) -> str:
        names = ", ".join(str(d) for d in sorted(self.dtypes, key=lambda d: (d.kind, d.itemsize)))
        extra = ", and object arrays (%s)" % self.object_arrays if self.object_arrays else ""
        return "supported are native-byte-order %s%s" % (names, extra)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return "ndarray of shape %s and dtype %s" % (value.shape, value.dtype)
    return type(value).__name__


def _without(shape: tuple[int, ...], column: int) -> tuple[int, ...]:
    return shape[:column] + shape[column + 1:]


def _conversion_hint(dtype: np.dtype) -> str:
    if dtype.kind in "US":
        return " (convert fixed-width strings with .astype(object))"
    if dtype.byteorder == ">":
        return " (convert with .astype(%r))" % dtype.newbyteorder("=").str
    return ""


class ChunkValidator:
    """Checks fetcher output for one input.  Thread-safe.

    Args:
        blob_names: the input's blob names, in fetcher output order.
        batch_columns: the batch dimension of each blob.
        dont_rebatch: if True, chunks are batches of their own; only their
            structure is checked, shapes may vary.
        input_source: used in error messages.
        dtypes: the dtype each blob must have (None: any), from the ``dtypes=``
            argument (``_core/args.py: check_dtypes``); None: no expectation.
        words: the sink's nouns for the messages (``_core/words.py``).
    """

    def __init__(self, blob_names: Sequence[str], batch_columns: Sequence[int],
                 dont_rebatch: bool, input_source: str, dtype_rule: DtypeRule,
                 dtypes: Sequence[np.dtype | None] | None = None,
                 words: Words = FETCHER_WORDS) -> None:
        self.blob_names = list(blob_names)
        self.words = words
        self.dtype_rule = dtype_rule
        self.dtypes = list(dtypes) if dtypes is not None else [None] * len(self.blob_names)
        self.batch_columns = list(batch_columns)
        self.dont_rebatch = dont_rebatch
        self.input_source = input_source
        self._lock = threading.Lock()
        self._specs: list[BlobSpec] | None = None
        self._spec_keys: list[tuple[np.dtype, tuple[int, ...]]] | None = None
        #: Bytes of one row of every blob under the recorded spec; None while no
        #: spec is recorded or when it holds object arrays (never fast-pathed).
        self._row_bytes: int | None = None
        #: Bytes one chunk, or one batch of its rows, may need (see MEMORY_BUDGET_FRACTION).
        self.max_bytes = default_memory_budget()

    def _where(self, worker_id: int) -> str:
        return self.words.worker_of(worker_id, self.input_source)

    def check(self, worker_id: int, output: Any, batch_size: int | None = None) -> Chunk | None:
        """Validate one fetcher result.

        Args:
            batch_size: if given (re-batching mode), a batch of that many rows
                shaped like this chunk must also fit in ``max_bytes``.

        Returns:
            The chunk, or None when the fetcher returned None or zero rows.

        Raises:
            ChunkTypeError: not a list/tuple of supported numpy arrays, one per blob.
            ChunkValueError: row counts differ between blobs, a batch column is out
                of range, a dtype / trailing shape changed since the first chunk, or
                the chunk (or a batch of its rows) is larger than ``max_bytes``.
        """
        chunk = self._matching_chunk(worker_id, output, batch_size)
        if chunk is not None:
            return chunk
        arrays = self.check_structure(worker_id, output)
        if arrays is None:
            return None
        rows = self.rows_of(arrays)
        if rows == 0:
            return None
        self._check_budget(worker_id, arrays, rows, None if self.dont_rebatch else batch_size)
        if not self.dont_rebatch:
            self._check_spec(worker_id, arrays)
        return Chunk(worker_id, arrays, rows)

    def check_fast(self, worker_id: int, output: Any,
                   batch_size: int | None = None) -> Chunk | None:
        """The chunk if ``output`` matches the recorded layout exactly, else None.

        The hot path of worker processes, which call ``check`` only when this
        returns None (``check`` then decides and words any error).
        """
        return self._matching_chunk(worker_id, output, batch_size)

    def _matching_chunk(self, worker_id: int, output: Any,
                        batch_size: int | None) -> Chunk | None:
        """The chunk, if ``output`` is exactly what the recorded spec allows; else None.

        The per-chunk hot path once the first chunk fixed every blob's dtype and
        trailing shape: plain ``np.ndarray`` objects (no subclasses), the recorded
        dtypes and trailing shapes, equal non-zero row counts, within the memory
        budget.  Anything else (including every error) returns None and gets the
        full checks, which decide and word the error.
        """
        keys = self._spec_keys
        row_bytes = self._row_bytes
        if keys is None or row_bytes is None:
            return None
        if type(output) not in (list, tuple) or len(output) != len(keys):
            return None
        rows = -1
        for arr, column, (dtype, trailing) in zip(output, self.batch_columns, keys):
            if type(arr) is not np.ndarray or arr.dtype != dtype:
                return None
            shape = arr.shape
            if len(shape) != len(trailing) + 1 or shape[:column] + shape[column + 1:] != trailing:
                return None
            if rows < 0:
                rows = shape[column]
            elif shape[column] != rows:
                return None
        if rows <= 0 or rows * row_bytes > self.max_bytes:
            return None
        if batch_size is not None and batch_size * row_bytes > self.max_bytes:
            return None
        return Chunk(worker_id, list(output), rows)

    def rows_of(self, arrays: Sequence[np.ndarray]) -> int:
        """Rows of a chunk that passed ``check_structure``: the first blob's, along its batch column.

        With ``dont_rebatch`` the first blob may be 0-d: one row.
        """
        shape = arrays[0].shape
        column = self.batch_columns[0]
        return shape[column] if len(shape) > column else 1

    def check_structure(self, worker_id: int, output: Any) -> list[np.ndarray] | None:
        """The checks that need no memory of earlier chunks (also run in child processes)."""
        if output is None:
            return None
        n = len(self.blob_names)
        if not isinstance(output, (list, tuple)):
            raise ChunkTypeError(
                "%s returned %s; expected a list of %d numpy arrays, one per %s %s"
                % (self._where(worker_id), _describe(output), n, self.words.array,
                   self.blob_names))
        if len(output) != n:
            raise ChunkTypeError(
                "%s returned %d arrays; expected %d, one per %s %s"
                % (self._where(worker_id), len(output), n, self.words.array, self.blob_names))
        for name, column, want, arr in zip(self.blob_names, self.batch_columns, self.dtypes,
                                           output):
            if not isinstance(arr, np.ndarray):
                raise ChunkTypeError(
                    "%s returned %s for %s; expected a numpy array"
                    % (self._where(worker_id), _describe(arr), self.words.array_named(name)))
            if want is not None and arr.dtype != want:
                raise ChunkTypeError(
                    "%s returned %s as %s (shape %s); expected %s (dtypes=); cast it in "
                    "fetch_fun, e.g. arr.astype(np.%s)"
                    % (self._where(worker_id), self.words.array_named(name), arr.dtype, arr.shape, want,
                       want.name))
            if isinstance(arr, np.ma.MaskedArray):
                # Copying a masked array's rows would silently drop its mask.
                raise ChunkTypeError(
                    "%s returned a masked array for %s; its mask would be lost. "
                    "Return arr.filled(value) or a separate mask %s"
                    % (self._where(worker_id), self.words.array_named(name), self.words.array))
            rule = self.dtype_rule
            if arr.dtype.kind == "O" and not rule.object_arrays \
                    or arr.dtype.kind != "O" and arr.dtype not in rule.dtypes:
                raise ChunkTypeError(
                    "%s returned dtype %s for %s, which %s cannot hold; %s%s"
                    % (self._where(worker_id), arr.dtype, self.words.array_named(name), rule.holder,
                       rule.supported_text(), _conversion_hint(arr.dtype)))
            if arr.ndim <= column and not self.dont_rebatch:
                raise ChunkValueError(
                    "%s returned shape %s for %s, which has no batch column %d "
                    "(batch_columns)" % (self._where(worker_id), arr.shape, self.words.array_named(name),
                                         column))
            if arr.dtype.kind == "O" and rule.object_element is not None:
                for item in arr.flat:
                    if type(item) is bytes:
                        continue
                    problem = rule.object_element(item)
                    if problem is not None:
                        raise ChunkTypeError(
                            "%s returned an object array for %s holding %s; object "
                            "arrays become %s" % (self._where(worker_id), self.words.array_named(name),
                                                  problem, rule.object_arrays))
        if not self.dont_rebatch:
            rows = output[0].shape[self.batch_columns[0]]
            for name, column, arr in zip(self.blob_names, self.batch_columns, output):
                if arr.shape[column] != rows:
                    raise ChunkValueError(
                        "%s returned %d rows for %s (shape %s) but %d rows for %s "
                        "(shape %s); every %s of a chunk needs the same number of rows "
                        "along its batch column"
                        % (self._where(worker_id), arr.shape[column], self.words.array_named(name),
                           arr.shape, rows, self.words.array_named(self.blob_names[0]), output[0].shape,
                           self.words.array))
        return list(output)

    def _check_budget(self, worker_id: int, arrays: list[np.ndarray], rows: int,
                      batch_size: int | None) -> None:
        # Virtual sizes (size * itemsize): a broadcast view of 1 TiB is 1 TiB
        # once the re-batcher copies it.  Python ints: no overflow.
        chunk_bytes = sum(int(a.size) * a.dtype.itemsize for a in arrays)
        batch_bytes = 0
        batch_clause = ""
        if batch_size is not None:
            batch_bytes = sum(int(a.size) * a.dtype.itemsize // rows for a in arrays) * batch_size
            if batch_bytes > self.max_bytes:
                batch_clause = " and a batch of %d such rows would need %s" % (
                    batch_size, _gib(batch_bytes))
        if max(chunk_bytes, batch_bytes) > self.max_bytes:
            raise ChunkValueError(
                "%s returned a chunk of %d rows needing %s%s; that is more than the memory "
                "budget of %s per chunk or batch (%.0f%% of physical memory); return smaller "
                "rows or chunks (shapes %s)"
                % (self._where(worker_id), rows, _gib(chunk_bytes), batch_clause,
                   _gib(self.max_bytes), MEMORY_BUDGET_FRACTION * 100,
                   [a.shape for a in arrays]))

    def _check_spec(self, worker_id: int, arrays: list[np.ndarray]) -> None:
        # Hot path (every chunk): plain (dtype, trailing shape) tuple compares;
        # BlobSpec objects and messages are built only when something differs.
        keys = self._spec_keys
        if keys is not None:
            for arr, column, (dtype, trailing) in zip(arrays, self.batch_columns, keys):
                shape = arr.shape
                if arr.dtype != dtype or shape[:column] + shape[column + 1:] != trailing:
                    break
            else:
                return
        got = [BlobSpec(a.dtype, _without(a.shape, c)) for a, c in zip(arrays, self.batch_columns)]
        with self._lock:
            if self._specs is None:
                self._specs = got
                if all(spec.dtype.kind != "O" for spec in got):
                    # Set before _spec_keys: the fast path reads them in that order.
                    self._row_bytes = sum(spec.dtype.itemsize * int(np.prod(spec.trailing_shape))
                                          for spec in got)
                self._spec_keys = [(spec.dtype, spec.trailing_shape) for spec in got]
                return
            expected = self._specs
        for name, column, want, have, arr in zip(
                self.blob_names, self.batch_columns, expected, got, arrays):
            if want != have:
                raise ChunkValueError(
                    "%s returned %s as %s with shape %s, but earlier chunks had dtype %s "
                    "and shape %s outside batch column %d; chunks of one %s must agree "
                    "to be stacked into batches"
                    % (self._where(worker_id), self.words.array_named(name), have.dtype, arr.shape,
                       want.dtype, want.trailing_shape, column, self.words.input))
