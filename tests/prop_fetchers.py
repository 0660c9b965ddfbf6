"""A fetcher driven by a drawn specification, for the property tests.

Module-level and numpy-only, so process workers can pickle and import it.

Every row carries a tag ``worker_id * TAG_BASE + n`` (n: the row's number in
that worker's stream).  Blob 0 is int64 and holds the tag in every element of
the row; every other blob holds ``value_of(tag, blob index)`` cast to its
dtype.  Rows may lie along any axis (the blob's batch column).
"""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["TAG_BASE", "BlobDesc", "StreamSpec", "SpecFetcher", "values_of", "rows_of",
           "expected_stream"]

TAG_BASE = 10 ** 6


@dataclasses.dataclass(frozen=True)
class BlobDesc:
    dtype: str
    trailing: Tuple[int, ...]  # shape without the batch column
    column: int  # batch column: 0 .. len(trailing)


@dataclasses.dataclass(frozen=True)
class StreamSpec:
    blobs: Tuple[BlobDesc, ...]
    #: per worker (by position in the input's worker ids): chunk sizes, cycled;
    #: -1 means the fetcher returns None.
    sizes: Tuple[Tuple[int, ...], ...]
    #: (worker position, chunk index, kind) of one malformed chunk, or None.
    bad: Optional[Tuple[int, int, str]] = None


def values_of(tags: np.ndarray, index: int, dtype: np.dtype) -> np.ndarray:
    if index == 0:
        return tags.astype(np.int64)
    if dtype.kind == "b":
        return (tags % 2).astype(bool)
    return ((tags * (index + 3)) % 100).astype(dtype)


def _layout(desc: BlobDesc, rows: int) -> Tuple[int, ...]:
    return desc.trailing[:desc.column] + (rows,) + desc.trailing[desc.column:]


def make_blob(desc: BlobDesc, index: int, tags: np.ndarray) -> np.ndarray:
    dtype = np.dtype(desc.dtype)
    per_row = values_of(tags, index, dtype)
    full = np.broadcast_to(per_row.reshape((-1,) + (1,) * len(desc.trailing)),
                           (len(tags),) + desc.trailing)
    return np.ascontiguousarray(np.moveaxis(full, 0, desc.column))


def rows_of(arr: np.ndarray, desc: BlobDesc) -> np.ndarray:
    """(rows, elements per row) view of a delivered blob, rows first."""
    moved = np.moveaxis(arr, desc.column, 0)
    return moved.reshape(moved.shape[0], -1)


def malformed(kind: str, arrays: List[np.ndarray], spec: StreamSpec) -> Any:
    if kind == "not_a_list":
        return arrays[0]
    if kind == "wrong_count":
        return arrays + [arrays[0]]
    if kind == "bad_dtype":
        return [arrays[0].astype(np.complex64)] + arrays[1:]
    if kind == "no_batch_column":
        return [np.zeros(())] + arrays[1:]
    if kind == "rows_mismatch":
        desc = spec.blobs[0]
        extra = make_blob(desc, 0, np.zeros(1, np.int64))
        return [np.concatenate([arrays[0], extra], axis=desc.column)] + arrays[1:]
    if kind == "shape_change":
        a = arrays[0]
        return [np.concatenate([a, a], axis=(spec.blobs[0].column + 1) % a.ndim)
                if a.ndim > 1 else a.reshape(a.shape + (1,))] + arrays[1:]
    if kind == "dtype_change":
        return [arrays[0].astype(np.int32)] + arrays[1:]
    raise ValueError(kind)


class SpecFetcher:
    """Fetcher for ``StreamSpec``; ``worker_ids`` maps positions to global ids."""

    def __init__(self, spec: StreamSpec, worker_ids: Sequence[int]) -> None:
        self.spec = spec
        self.position = {w: i for i, w in enumerate(worker_ids)}
        self.state = {}  # worker id -> [chunk index, rows so far]

    def __call__(self, worker_id: int, batch_size: int) -> Any:
        pos = self.position[worker_id]
        k, n = self.state.setdefault(worker_id, [0, 0])
        sizes = self.spec.sizes[pos]
        size = sizes[k % len(sizes)]
        self.state[worker_id][0] = k + 1
        if size < 0:
            arrays: Any = None
        else:
            tags = worker_id * TAG_BASE + np.arange(n, n + size, dtype=np.int64)
            self.state[worker_id][1] = n + size
            arrays = [make_blob(d, i, tags) for i, d in enumerate(self.spec.blobs)]
        if self.spec.bad is not None and self.spec.bad[:2] == (pos, k):
            if arrays is None or size == 0:  # an empty chunk would be skipped unchecked
                tags = worker_id * TAG_BASE + np.arange(n, n + 2, dtype=np.int64)
                arrays = [make_blob(d, i, tags) for i, d in enumerate(self.spec.blobs)]
            return malformed(self.spec.bad[2], arrays, self.spec)
        return arrays


def expected_stream(spec: StreamSpec, worker_ids: Sequence[int],
                    chunks_per_worker: int) -> List[List[int]]:
    """Deterministic mode: the chunks (as tag lists) in round-robin order."""
    out: List[List[int]] = []
    counters = [0] * len(worker_ids)
    for k in range(chunks_per_worker):
        for pos, wid in enumerate(worker_ids):
            sizes = spec.sizes[pos]
            size = sizes[k % len(sizes)]
            if size > 0:
                n = counters[pos]
                out.append([wid * TAG_BASE + n + i for i in range(size)])
                counters[pos] = n + size
    return out
