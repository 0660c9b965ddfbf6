"""Datasets on the engine: epoch plans, worker-side batch assembly, flatten/unflatten.

``data_workers.torch.Loader(dataset, ...)`` (``_torch/dataset_loader.py``) runs a
map-style dataset as one deterministic stream of batches over the unchanged
engine (a ``fetch_fun`` Loader with ``deterministic=True, dont_rebatch=True``)::

    Loader (training thread)            positions p = 0, 1, 2, ... from the start point
      epoch plans: plan(e) = list(batch_sampler) for epoch e, a pure function of
                   (seed, e) (shuffle: randperm seeded by both)
            v
    DatasetFetch, worker w              takes positions p with p % num_workers == w, in
      samples = [dataset[i] for i in plan(e)[k]]    order; one call = one whole batch
      collate_fn(samples) -> flatten -> [tag, arrays..., pickled other leaves]
            v
    RoundRobinChannel -> TorchSink      one chunk per worker in turn: the stream
            v                           comes back in position order
    unflatten(template, tensors)        the batch, as collate_fn built it

Why workers walk the plans themselves instead of being sent indices: a worker
process gets its ``fetch_fun`` once, at start, and the plans of later epochs
are a function of (seed, epoch), so every worker computes the same plan and
no message per batch goes to the workers.  The tag (epoch, batch, kind)
travels with each batch, so the training thread checks the order it relies on;
the kind says whether the slot holds a batch, a batch pickled whole, an
exception raised making it (raised in the batch's turn), or an iterable
worker's end of data.

With ``max_fetch_failures`` (map-style datasets), a worker leaves a sample
whose ``__getitem__`` raised out of its batch and collates the rest; every
message then also carries the batch's sample count and those failures (the
``WITH_FAILURES`` flag), and the loader's budget decides, in stream order,
whether they are skipped.  A batch whose every sample failed is a ``SKIPPED``
message: its position is taken, no batch is handed out for it.

Imports torch (this is the torch sink's layer), never Caffe2.
"""

from __future__ import annotations

import collections.abc
import pickle
import threading
import traceback
from typing import Any, Callable, Optional
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.utils.data
from torch.utils.data import _utils as _data_utils

from torch.utils.data._utils.collate import default_collate  # public from torch 1.11 on

from .._core.backend import OutputBuffers
from .collate_in_place import collate_into, tensor_leaves_only
from .sink import TORCH_DTYPE_RULE

__all__ = ["is_dataset", "is_iterable_dataset", "EpochPlanner", "DatasetFetch", "Template",
           "make_template", "flatten", "unflatten", "leaf_names", "epoch_seed", "BATCH", "PICKLED",
           "ERROR", "END_OF_DATA", "SKIPPED", "WITH_FAILURES", "SampleFailure", "load_samples",
           "install_thread_worker_info", "ShuffledIndices"]

#: What a worker's message holds, the third column of its tag (epoch, batch, kind):
#: a flattened batch; a batch pickled whole (its structure is not the probe's);
#: an exception raised making the batch; an iterable dataset's worker is
#: exhausted (every later turn of it, until its run is closed).
BATCH, PICKLED, ERROR, END_OF_DATA = 0, 1, 2, 3
#: Every sample of the batch failed and was left out (``max_fetch_failures``).
SKIPPED = 4
#: A flag on the kind: the pickled element is (payload, samples, failures) --
#: the batch's sample count and a ``SampleFailure`` per sample left out.  With
#: ``max_fetch_failures`` set, every BATCH, PICKLED and SKIPPED message of a
#: map-style dataset has it (an ERROR may not); without it, none has.
WITH_FAILURES = 8

#: A sample left out of its batch: (index, the exception if it pickles else
#: None, its type's name, its text, where it was raised, its traceback as text).
SampleFailure = tuple[Any, Optional[Exception], str, str, str, str]

# 64-bit odd multiplier (the golden ratio's): epochs of nearby seeds do not
# share permutations.
_MIX = 0x9E3779B97F4A7C15
_MASK63 = (1 << 63) - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s shuffle, from the loader's base ``seed``."""
    return ((seed * _MIX) ^ (epoch * 0xBF58476D1CE4E5B9 + 1)) & _MASK63


def is_iterable_dataset(obj: Any) -> bool:
    """True for an ``IterableDataset``, or an iterable without ``__getitem__``."""
    if isinstance(obj, torch.utils.data.IterableDataset):
        return True
    return hasattr(obj, "__iter__") and not hasattr(obj, "__getitem__")


def is_dataset(obj: Any) -> bool:
    """True if ``obj`` is a dataset, False if it is a ``fetch_fun``.

    A ``torch.utils.data.Dataset`` is a dataset; otherwise a callable is a
    ``fetch_fun(worker_id, batch_size)``, and a non-callable with
    ``__getitem__`` + ``__len__`` (map-style) or ``__iter__`` (iterable) is a
    dataset.
    """
    if isinstance(obj, torch.utils.data.Dataset):
        return True
    if callable(obj):
        return False
    return (hasattr(obj, "__getitem__") and hasattr(obj, "__len__")) or hasattr(obj, "__iter__")


class ShuffledIndices(torch.utils.data.Sampler):
    """``shuffle=True``'s sampler: a permutation that is a function of (seed, epoch) alone.

    Unlike ``RandomSampler`` it draws nothing from the global RNG, so any
    worker (or a resumed loader) computes the same order for an epoch.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self.seed = 0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


# Seeding the global torch RNG to list a user's sampler is done under this lock
# and inside fork_rng, so two thread workers never interleave their seeds.
_PLAN_LOCK = threading.Lock()


class EpochPlanner:
    """The index batches of every epoch, each a pure function of (seed, epoch).

    Args:
        batch_sampler: yields one list of indices per batch (``BatchSampler``
            over the sampler, or the user's ``batch_sampler``); None for
            ``batch_size=None``, where ``sampler`` yields one index per batch.
        sampler: the sampler (its ``set_epoch(epoch)`` is called if it has one).
        seed: the loader's base seed.
    """

    def __init__(self, batch_sampler: Any | None, sampler: Any, seed: int) -> None:
        self.batch_sampler = batch_sampler
        self.sampler = sampler
        self.seed = seed
        self._cache: dict[int, Sequence[Any]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # A worker process computes its own plans: send neither the cache nor the lock.
        return {"batch_sampler": self.batch_sampler, "sampler": self.sampler, "seed": self.seed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["batch_sampler"], state["sampler"], state["seed"])  # type: ignore[misc]

    def plan(self, epoch: int) -> Sequence[Any]:
        """The batches of ``epoch``, in order (cached: the last two epochs)."""
        with self._lock:
            found = self._cache.get(epoch)
            if found is not None:
                return found
            plan = self._compute(epoch)
            self._cache[epoch] = plan
            for old in [e for e in self._cache if e < epoch - 1]:
                del self._cache[old]
            return plan

    def _compute(self, epoch: int) -> Sequence[Any]:
        setter = getattr(self.sampler, "set_epoch", None)
        if callable(setter):
            setter(epoch)
        source = self.batch_sampler if self.batch_sampler is not None else self.sampler
        if isinstance(source, torch.utils.data.BatchSampler) and type(source) is \
                torch.utils.data.BatchSampler and \
                isinstance(self.sampler, (ShuffledIndices, torch.utils.data.SequentialSampler)):
            # Our own orders draw nothing from the global RNG; cut lazily, so a
            # worker starts without listing every batch of a large epoch.
            order: Sequence[int] = range(len(self.sampler)) if isinstance(
                self.sampler, torch.utils.data.SequentialSampler) else list(self.sampler)
            return _Batches(order, source.batch_size, source.drop_last)
        # A user's sampler may draw from torch's global RNG (RandomSampler
        # without a generator does, once per epoch): seed it from (seed, epoch)
        # and give the caller's RNG state back afterwards.
        with _PLAN_LOCK, torch.random.fork_rng(devices=[]):
            torch.manual_seed(epoch_seed(self.seed, epoch))
            return list(source)


class _Batches(collections.abc.Sequence):
    """``BatchSampler``'s batches of ``order``, cut when asked for."""

    def __init__(self, order: Sequence[int], batch_size: int, drop_last: bool) -> None:
        self._order = order
        self._size = batch_size
        self._len = len(order) // batch_size if drop_last else -(-len(order) // batch_size)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, k: Any) -> Any:
        if not isinstance(k, int) or not 0 <= k < self._len:
            raise IndexError(k)
        return list(self._order[k * self._size:(k + 1) * self._size])


# -- flatten / unflatten --------------------------------------------------------------

#: How a batch is rebuilt from its flat arrays: nested tuples of
#: ("T", i, dtype) a tensor leaf (array i), ("N", i, dtype) a numpy leaf, ("O", j) the j-th
#: object leaf, ("tuple"|"list", children), ("dict", keys, children),
#: ("named", type, children).
Template = tuple[Any, ...]


# Tensors of other dtypes (bfloat16, complex, ...) have no numpy twin the sink
# takes: they travel as object leaves, pickled.
_NUMPY_OF = {torch.from_numpy(np.empty(0, d)).dtype: d for d in TORCH_DTYPE_RULE.dtypes}


def _has_array(obj: Any) -> bool:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return True
    if isinstance(obj, collections.abc.Mapping):
        return any(_has_array(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return any(_has_array(v) for v in obj)
    return False


def flatten(batch: Any, arrays: list[np.ndarray], objects: list[Any]) -> Template:
    """Append ``batch``'s array leaves to ``arrays``, other leaves to ``objects``.

    Tensors become numpy views of their memory (no copy for a CPU tensor);
    a container with no array inside (a list of str), and a tensor or array of
    a dtype the torch sink cannot hold (bfloat16), is one object leaf.

    Returns:
        The template ``unflatten`` rebuilds the batch from.
    """
    if isinstance(batch, torch.Tensor) and batch.dtype in _NUMPY_OF:
        tensor = batch.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        arrays.append(tensor.numpy())
        return ("T", len(arrays) - 1, arrays[-1].dtype.str)
    if isinstance(batch, np.ndarray) and batch.dtype in TORCH_DTYPE_RULE.dtypes:
        arrays.append(batch)
        return ("N", len(arrays) - 1, batch.dtype.str)
    if not isinstance(batch, (torch.Tensor, np.ndarray)) and _has_array(batch):
        if isinstance(batch, collections.abc.Mapping):
            keys = tuple(batch.keys())
            return ("dict", keys, tuple(flatten(batch[k], arrays, objects) for k in keys))
        children = tuple(flatten(v, arrays, objects) for v in batch)
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):
            return ("named", type(batch), children)
        return ("tuple" if isinstance(batch, tuple) else "list", children)
    objects.append(batch)
    return ("O", len(objects) - 1)


def make_template(batch: Any) -> tuple[Template, int, int]:
    """``batch``'s template, with its numbers of array and object leaves."""
    arrays: list[np.ndarray] = []
    objects: list[Any] = []
    template = flatten(batch, arrays, objects)
    return template, len(arrays), len(objects)


def leaf_names(template: Template, path: str = "batch") -> list[str]:
    """A name per array leaf, in order (``batch[0]``, ``batch['image']``), for errors."""
    kind = template[0]
    if kind in ("T", "N"):
        return [path]
    if kind == "O":
        return []
    if kind == "dict":
        return [n for key, child in zip(template[1], template[2])
                for n in leaf_names(child, "%s[%r]" % (path, key))]
    children = template[2] if kind == "named" else template[1]
    return [n for i, child in enumerate(children) for n in leaf_names(child, "%s[%d]" % (path, i))]


def leaf_dtypes(template: Template) -> list[str]:
    """The dtype of each array leaf, in order."""
    kind = template[0]
    if kind in ("T", "N"):
        return [template[2]]
    if kind == "O":
        return []
    children = template[2] if kind in ("dict", "named") else template[1]
    return [d for child in children for d in leaf_dtypes(child)]


def unflatten(template: Template, arrays: Sequence[Any], objects: Sequence[Any]) -> Any:
    """The batch ``flatten`` took apart, with tensors for ``arrays``."""
    kind = template[0]
    if kind == "T":
        return arrays[template[1]]
    if kind == "N":
        return arrays[template[1]].numpy()
    if kind == "O":
        return objects[template[1]]
    if kind == "dict":
        return {k: unflatten(c, arrays, objects) for k, c in zip(template[1], template[2])}
    if kind == "named":
        return template[1](*(unflatten(c, arrays, objects) for c in template[2]))
    values = [unflatten(c, arrays, objects) for c in template[1]]
    return tuple(values) if kind == "tuple" else values


# -- the worker side ---------------------------------------------------------------------

_thread_info = threading.local()
_patch_lock = threading.Lock()
_patched = False


def _worker_info_here() -> Any | None:
    """``torch.utils.data.get_worker_info()`` that also answers inside our worker threads."""
    info = getattr(_thread_info, "info", None)
    if info is not None:
        return info
    return _ORIGINAL_GET_WORKER_INFO()


_ORIGINAL_GET_WORKER_INFO: Callable[[], Any] = torch.utils.data.get_worker_info


def install_thread_worker_info() -> None:
    """Make ``torch.utils.data.get_worker_info()`` answer inside thread workers.

    torch keeps one module global per process (right for its worker
    processes); our thread workers share a process, so the function is
    replaced, once, by one that looks at the calling thread first and asks
    torch's own otherwise.  Done at the first thread-worker start, not at import.
    """
    global _patched
    with _patch_lock:
        if _patched:
            return
        torch.utils.data.get_worker_info = _worker_info_here
        _data_utils.worker.get_worker_info = _worker_info_here
        _patched = True


def _message_head(kind: int, epoch: int, k: int) -> np.ndarray:
    """A batch message's first array: where the batch belongs, and what it holds."""
    return np.array([[epoch, k, kind]], np.int64)


def _message_payload(payload: Any) -> np.ndarray:
    """A batch message's last array: its non-array leaves (or error), pickled."""
    return np.array([pickle.dumps(payload, pickle.HIGHEST_PROTOCOL)], object)


class DatasetFetch:
    """The ``fetch_fun`` of a dataset loader: each call returns one whole batch.

    Sent to worker processes whole (cloudpickle), shared by thread workers;
    what differs per worker lives in ``_states``, keyed by worker id.

    Args:
        dataset: the dataset.
        planner: the epochs' index batches (map-style); None for an iterable dataset.
        collate: ``collate_fn`` (or torch's default).
        template: the batch layout found by the loader's probe.
        num_workers: workers sharing the stream (position p goes to p % num_workers).
        start: (epoch, batch) of position 0.
        seed: base seed; worker w's ``WorkerInfo.seed`` is ``seed + w``.
        worker_init_fn: called once in each worker with its id, before its first batch.
        where: ``"process"`` (seed torch there; set torch's own worker-info
            global), ``"thread"`` (worker info for the calling thread alone), or
            ``"here"`` (``num_workers=0``: no worker, ``get_worker_info()`` stays None).
        batch_size, drop_last: an iterable dataset's batching.
        skip_failures: ``max_fetch_failures`` is set: leave failing samples out
            of their batch and report them (map-style datasets only).
    """

    def __init__(self, dataset: Any, planner: EpochPlanner | None, collate: Callable[[Any], Any],
                 template: Template, num_workers: int, start: tuple[int, int], seed: int,
                 worker_init_fn: Callable[[int], None] | None, where: str,
                 batch_size: int | None, drop_last: bool, skip_failures: bool = False) -> None:
        self.dataset = dataset
        self.skip_failures = skip_failures
        self.planner = planner
        self.collate = collate
        self.template = template
        self.num_workers = num_workers
        self.start = start
        self.seed = seed
        self.worker_init_fn = worker_init_fn
        self.where = where
        self.batch_size = batch_size
        self.drop_last = drop_last
        self._states: dict[int, Iterator[list[np.ndarray]]] = {}
        #: Ring memory a process worker lends (``use_output_buffers``), and the
        #: template's leaf dtypes the batches written there must have.
        self._buffers: OutputBuffers | None = None
        self._leaf_dtypes: list[str] = []

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_states"] = {}
        state["_buffers"] = None
        return state

    def use_output_buffers(self, buffers: OutputBuffers) -> None:
        """In a process worker: batches of the default collate are written
        straight into the worker's ring (``collate_in_place.py``)."""
        if self.collate is default_collate and tensor_leaves_only(self.template):
            self._buffers = buffers
            self._leaf_dtypes = leaf_dtypes(self.template)

    def __call__(self, worker_id: int, batch_size: int) -> list[np.ndarray]:
        batches = self._states.get(worker_id)
        if batches is None:
            self._enter_worker(worker_id)
            batches = self._states[worker_id] = (
                self._map_batches(worker_id) if self.planner is not None
                else self._iterable_batches(worker_id))
        return next(batches)

    def _enter_worker(self, worker_id: int) -> None:
        if self.where == "here":
            return
        info = _data_utils.worker.WorkerInfo(
            id=worker_id, num_workers=self.num_workers, seed=self.seed + worker_id,
            dataset=self.dataset)
        if self.where == "process":
            # As in DataLoader's workers: one intra-op thread, so a collate's
            # torch.stack does not spin up a pool on cores the other workers use.
            torch.set_num_threads(1)
            torch.manual_seed(self.seed + worker_id)
            _data_utils.worker._worker_info = info
        else:
            _thread_info.info = info
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)

    def _map_batches(self, worker_id: int) -> Iterator[list[np.ndarray]]:
        planner = self.planner
        if planner is None:  # invariant: only called for map-style datasets
            raise RuntimeError("internal error: planner is unset (only called for map-style datasets)")
        epoch, k = self.start
        position = 0
        while True:
            plan = planner.plan(epoch)
            if not plan:
                raise ValueError("the sampler of epoch %d yields no batch" % epoch)
            while k < len(plan):
                if position % self.num_workers == worker_id:
                    try:
                        indices = plan[k]
                        single = planner.batch_sampler is None
                        if self.skip_failures:
                            packed = self._skipping(indices, single, epoch, k, worker_id)
                        elif single:
                            packed = self._pack(self.collate(self.dataset[indices]), epoch, k)
                        else:
                            packed = self._collated([self.dataset[i] for i in indices], epoch, k)
                    except Exception as exc:  # in-band: raised at this batch's turn
                        packed = self._error(exc, epoch, k, worker_id)
                    yield packed
                position += 1
                k += 1
            epoch += 1
            k = 0

    def _collated(self, samples: list[Any], epoch: int, k: int) -> list[np.ndarray]:
        """The message of a batch of ``samples``: written into lent memory where it can be."""
        if self._buffers is not None:
            arrays = collate_into(self._buffers, self.template, self._leaf_dtypes, samples,
                                  _message_head(BATCH, epoch, k))
            if arrays is not None:
                return arrays + [_message_payload([])]  # no object leaves: tensors alone
        return self._pack(self.collate(samples), epoch, k)

    def _where(self, worker_id: int) -> str:
        return ("in %s worker %d" % (self.where, worker_id) if self.where != "here"
                else "in the calling thread (num_workers=0)")

    def _skipping(self, indices: Any, single: bool, epoch: int, k: int,
                  worker_id: int) -> list[np.ndarray]:
        """The batch of ``indices`` without its failing samples, and which those were.

        Raises what ``collate_fn`` raises (never skipped: the caller sends it in-band).
        """
        samples, failures = load_samples(self.dataset, indices, single, self._where(worker_id))
        count = len(samples) + len(failures)
        if not samples:
            return self._message(SKIPPED, epoch, k, None, (count, failures))
        batch = self.collate(samples[0] if single else samples)
        return self._pack(batch, epoch, k, (count, failures))

    def _iterable_batches(self, worker_id: int) -> Iterator[list[np.ndarray]]:
        epoch = self.start[0]
        k = 0
        try:
            samples: list[Any] = []
            for sample in self.dataset:
                if self.batch_size is None:
                    yield self._pack(self.collate(sample), epoch, k)
                    k += 1
                    continue
                samples.append(sample)
                if len(samples) == self.batch_size:
                    yield self._pack(self.collate(samples), epoch, k)
                    samples = []
                    k += 1
            if samples and not self.drop_last:
                yield self._pack(self.collate(samples), epoch, k)
            end = self._message(END_OF_DATA, epoch, k, [])
        except Exception as exc:  # in-band; the iterator cannot go on after it
            end = self._error(exc, epoch, k, worker_id)
        while True:  # every later turn of this worker: nothing more this epoch
            yield end

    def _pack(self, batch: Any, epoch: int, k: int,
              failures: tuple[int, list[SampleFailure]] | None = None) -> list[np.ndarray]:
        """``batch`` as a message; ``failures``: (samples, failures) to send with it."""
        arrays: list[np.ndarray] = []
        objects: list[Any] = []
        template = flatten(batch, arrays, objects)
        if template != self.template:
            # Another structure than the probe's (a list as long as the batch):
            # the whole batch travels pickled.
            return self._message(PICKLED, epoch, k, batch, failures)
        # Object arrays carry str or bytes alone (what every sink accepts): the
        # non-array leaves travel pickled, in one element.
        return self._with_tail(BATCH, epoch, k, arrays, objects, failures)

    def _message(self, kind: int, epoch: int, k: int, payload: Any,
                 failures: tuple[int, list[SampleFailure]] | None = None) -> list[np.ndarray]:
        """A batch slot holding no arrays: ``payload`` pickled, empty leaves of the right dtypes."""
        leaves = [np.zeros((0,), np.dtype(d)) for d in leaf_dtypes(self.template)]
        return self._with_tail(kind, epoch, k, leaves, payload, failures)

    @staticmethod
    def _with_tail(kind: int, epoch: int, k: int, arrays: list[np.ndarray], payload: Any,
                   failures: tuple[int, list[SampleFailure]] | None) -> list[np.ndarray]:
        """[tag, arrays..., pickled payload]; with ``failures``, the kind has
        ``WITH_FAILURES`` and the payload is (payload, samples, failures)."""
        if failures is not None:
            kind |= WITH_FAILURES
            payload = (payload,) + tuple(failures)
        return [_message_head(kind, epoch, k)] + arrays + [_message_payload(payload)]

    def _error(self, exc: Exception, epoch: int, k: int, worker_id: int) -> list[np.ndarray]:
        """``exc`` as a value, raised by the loader when this batch's turn comes (as
        DataLoader's ``ExceptionWrapper``): the batches before it are not lost."""
        return self._message(ERROR, epoch, k, exception_payload(exc, self._where(worker_id)))


def exception_payload(exc: Exception, where: str) -> tuple[Exception | None, str, str, str,
                                                             str]:
    """``exc`` as values that survive pickling: (itself or None, type name, text, where,
    traceback text)."""
    try:
        pickle.dumps(exc)
        original: Exception | None = exc
    except Exception:
        original = None
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return original, type(exc).__name__, str(exc), where, text


def load_samples(dataset: Any, indices: Any, single: bool,
                 where: str) -> tuple[list[Any], list[SampleFailure]]:
    """The samples of one batch, leaving out (and describing) each whose ``__getitem__`` raised.

    ``single``: ``indices`` is one index (``batch_size=None``), not a list.
    Only ``Exception`` subclasses are left out; anything else propagates.
    """
    samples: list[Any] = []
    failures: list[SampleFailure] = []
    for index in ([indices] if single else indices):
        try:
            samples.append(dataset[index])
        except Exception as exc:
            failures.append((index,) + exception_payload(exc, where))
    return samples, failures


def _describe(template: Template) -> str:
    kind = template[0]
    if kind in ("T", "N", "O"):
        return {"T": "tensor", "N": "ndarray", "O": "object"}[kind]
    if kind == "dict":
        return "{%s}" % ", ".join("%r: %s" % (k, _describe(c))
                                  for k, c in zip(template[1], template[2]))
    children = template[2] if kind == "named" else template[1]
    inner = ", ".join(_describe(c) for c in children)
    if kind == "named":
        return "%s(%s)" % (template[1].__name__, inner)
    return ("(%s)" if kind == "tuple" else "[%s]") % inner
