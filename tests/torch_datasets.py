"""Datasets for the dataset-form ``Loader`` tests, importable by worker processes."""

from __future__ import annotations

import collections
import os
import threading
from typing import Any, Iterator, List

import numpy as np
import torch
import torch.utils.data

Pair = collections.namedtuple("Pair", ["left", "right"])


class Indexed(torch.utils.data.Dataset):
    """Sample i is (float features of i, int64 label i): batches show which indices they hold."""

    def __init__(self, length: int = 50, width: int = 3) -> None:
        self.length = length
        self.width = width

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return np.full(self.width, index, np.float32), index


class Mixed(torch.utils.data.Dataset):
    """Every kind of leaf default_collate knows: dict, namedtuple, str, float, tensor, array,
    and tensors of dtypes numpy has no twin for (bfloat16, complex)."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> Any:
        return {"image": torch.full((2, 2), float(index)), "name": "item%d" % index,
                "pair": Pair(np.arange(3, dtype=np.int32) + index, float(index) / 2),
                "tags": [index, index + 1],
                "odd": (torch.full((2,), index, dtype=torch.bfloat16),
                        torch.tensor([index], dtype=torch.complex64))}


class Numeric(torch.utils.data.Dataset):
    """Numbers only, in every container and leaf type a process worker collates
    straight into its ring: tensors, arrays, numpy scalars, bool, int, float, a
    named tuple and a list.  ``ragged`` (an index): that sample's image has another
    shape, ``wide`` (an index): its count is beyond int64 (default_collate raises)."""

    def __init__(self, length: int = 24, ragged: int = -1, wide: int = -1) -> None:
        self.length, self.ragged, self.wide = length, ragged, wide

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        side = 3 if index == self.ragged else 2
        return {"image": torch.arange(side * side * 3, dtype=torch.float32).reshape(3, side, side)
                + index,
                "mask": np.full((2, 2), index % 2 == 0),
                "pair": Pair(np.arange(3, dtype=np.int16) + index, np.float32(index) / 4),
                "label": index, "weight": index / 8, "flag": index % 3 == 0,
                "count": 1 << 70 if index == self.wide else np.int64(index * 7),
                "list": [torch.tensor(index, dtype=torch.int8), np.uint8(index)]}


class WhereAmI(torch.utils.data.Dataset):
    """Sample i tells which thread and which worker (``get_worker_info``) loaded it."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> Any:
        info = torch.utils.data.get_worker_info()
        return {"index": index, "thread": threading.get_ident(),
                "worker": -1 if info is None else info.id,
                "workers": 0 if info is None else info.num_workers,
                "seed": -1 if info is None else info.seed % (1 << 62),
                "torch_threads": torch.get_num_threads(), "pid": os.getpid()}


class FailsAt(torch.utils.data.Dataset):
    """Raises KeyError for one index."""

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> Any:
        if index == self.bad:
            raise KeyError("no sample %d" % index)
        return np.float32(index)


class Counting(torch.utils.data.Dataset):
    """Counts ``__getitem__`` calls (thread workers share the counter)."""

    def __init__(self, length: int = 400) -> None:
        self.length = length
        self.calls = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        with self._lock:
            self.calls += 1
        return index


class Shards(torch.utils.data.IterableDataset):
    """Yields ``range(length)``, split across workers as the PyTorch docs show."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        info = torch.utils.data.get_worker_info()
        if info is None:
            return iter(range(self.length))
        return iter(range(info.id, self.length, info.num_workers))


def record_init(worker_id: int) -> None:
    """A worker_init_fn: records its call in the dataset ``get_worker_info()`` names."""
    info = torch.utils.data.get_worker_info()
    assert info is not None and info.id == worker_id
    info.dataset.inits.append(worker_id)


class InitSeen(torch.utils.data.Dataset):
    """Sample i reports the worker_init_fn calls its dataset copy saw (process workers
    each have a copy; thread workers share the loader's dataset)."""

    def __init__(self) -> None:
        self.inits: List[int] = []

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> Any:
        # The loader's probe reads one sample in the calling thread, before any init.
        return index, len(self.inits), self.inits[0] if self.inits else -1


def plain_batches(batches: List[Any]) -> List[Any]:
    """Batches as nested python lists, for equality across loaders."""
    def plain(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return ("tensor", str(x.dtype), x.tolist())
        if isinstance(x, np.ndarray):
            return ("ndarray", str(x.dtype), x.tolist())
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, tuple) and hasattr(x, "_fields"):
            return (type(x).__name__,) + tuple(plain(v) for v in x)
        if isinstance(x, (list, tuple)):
            return type(x)(plain(v) for v in x)
        return x
    return [plain(b) for b in batches]




class Gate(torch.utils.data.Dataset):
    """Sample ``blocked`` waits for ``opened`` (thread workers: the test's own event)."""

    def __init__(self, blocked: int) -> None:
        self.blocked = blocked
        self.opened = threading.Event()

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> Any:
        if index == self.blocked:
            self.opened.wait()
        return index


class DiesAt(torch.utils.data.Dataset):
    """The worker process loading sample ``fatal`` ends at once (no exception, no message)."""

    def __init__(self, fatal: int) -> None:
        self.fatal = fatal

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> Any:
        if index == self.fatal:
            import os
            os._exit(3)
        return index


class BrokenShards(torch.utils.data.IterableDataset):
    """Worker 1's iterator raises after its first sample."""

    def __iter__(self) -> Iterator[int]:
        info = torch.utils.data.get_worker_info()
        yield 100 * (0 if info is None else info.id)
        if info is not None and info.id == 1:
            raise OSError("shard 1 unreadable")
        yield 1


class BadSamples(Indexed):
    """``Indexed``, whose ``__getitem__`` raises ValueError for the indices in ``bad``
    (a corrupt record each)."""

    def __init__(self, length: int, bad: Any) -> None:
        super().__init__(length)
        self.bad = frozenset(bad)

    def __getitem__(self, index: int) -> Any:
        if index in self.bad:
            raise ValueError("record %d is truncated" % index)
        return super().__getitem__(index)
