"""``Loader(dataset, ...)``: DataLoader's signature and meaning over our engine.

The stream of batches and how workers walk it: ``_torch/dataset.py``.  This
module is the training thread's side: epochs, the order check, resume, and
the *run* -- one ``fetch_fun`` Loader (the unchanged engine) whose
``DatasetFetch`` starts at a given (epoch, batch).

Epochs and runs (map-style datasets)::

    iter(loader)   -> epoch e: batches (e, 0) .. (e, len(loader) - 1)
    the run keeps going across the boundary (its workers prefetch epoch e + 1),
    so the next iter() continues the same run; a new run starts only where
    the stream would not continue: an epoch left midway, load_state_dict, or
    the first iter().

An iterable dataset gets one run per epoch: each worker iterates its own copy
(``get_worker_info()`` tells it which), then returns end-of-data markers until
every worker has reached its end.

Skipped samples (``max_fetch_failures``, map-style datasets): a worker leaves
a failing sample out of its batch and reports it with the batch
(``_torch/dataset.py``); the training thread charges each to the run's
``FetchFailureBudget`` in stream order, when the batch's turn comes, so the
skips and the failure beyond the budget come where an uninterrupted run has
them.  A batch left with no sample takes its position and hands out nothing.

Failure and shutdown of a run: NOTE [ Shutdown and error protocol ] in
``_core/coordinator.py``; ``close()`` closes the current run.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.utils.data
# Public as torch.utils.data.default_collate from torch 1.11 on; here in 1.10 too.
from torch.utils.data._utils.collate import default_collate, default_convert

from .._core.args import (check_int, check_max_fetch_failures, check_positive_int,
                          check_positive_seconds)
from .._core.build import check_start_method, check_worker_type
from .._core.budget import FetchFailureBudget
from .._core.errors import FetcherError, RemoteTraceback
from .._core.metrics import InputCounters, InputStats, Metrics
from .._workers.pickling import check_picklable
from .dataset import (BATCH, END_OF_DATA, ERROR, SKIPPED, WITH_FAILURES, DatasetFetch,
                      EpochPlanner, SampleFailure, ShuffledIndices, Template,
                      install_thread_worker_info, is_iterable_dataset, leaf_names, load_samples,
                      make_template, unflatten)
from .sink import check_pin_memory

__all__ = ["DatasetLoader", "DATASET_STATE_VERSION"]

DATASET_STATE_VERSION = 1
#: ``timeout=0`` (DataLoader: wait forever) as the engine's positive timeout: ~31 years.
_FOREVER = 1e9


def draw_seed(generator: torch.Generator | None) -> int:
    """A base seed drawn as DataLoader draws its own: from ``generator``, else torch's RNG."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


class DatasetLoader:
    """The dataset form of ``data_workers.torch.Loader`` (documented there)."""

    def __init__(self, dataset: Any, batch_size: int | None = 1, shuffle: bool | None = None,
                 sampler: Any | None = None, batch_sampler: Any | None = None,
                 num_workers: int = 0, collate_fn: Callable[[Any], Any] | None = None,
                 pin_memory: bool = False, drop_last: bool = False, timeout: float = 0,
                 worker_init_fn: Callable[[int], None] | None = None,
                 multiprocessing_context: Any = None,
                 generator: torch.Generator | None = None, *,
                 prefetch_factor: int | None = None, persistent_workers: bool = False,
                 pin_memory_device: str = "", in_order: bool = True, worker_type: str | None = None,
                 seed: int | None = None,
                 name: str = "loader", stall_warning_secs: float | None = None,
                 shm_bytes_per_worker: int | None = None,
                 external_loggers: Sequence[Any] | None = None,
                 log_interval_secs: float | None = None, max_fetch_failures: Any = 0) -> None:
        self.dataset = dataset
        self.max_fetch_failures = check_max_fetch_failures(max_fetch_failures)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        start_method = self._start_method(multiprocessing_context, self.num_workers, worker_type)
        if worker_type is None:  # a start method asks for processes, as in DataLoader
            worker_type = "thread" if multiprocessing_context is None else "process"
        check_worker_type(worker_type)
        if prefetch_factor is not None:
            if self.num_workers == 0:
                raise ValueError("prefetch_factor=%r counts batches per worker, and "
                                 "num_workers=0 loads in the calling thread: leave "
                                 "prefetch_factor unset, or pass num_workers >= 1"
                                 % (prefetch_factor,))
            prefetch_factor = check_positive_int("prefetch_factor", prefetch_factor)
        if persistent_workers and self.num_workers == 0:
            raise ValueError("persistent_workers=True keeps workers between epochs, and "
                             "num_workers=0 has none: pass num_workers >= 1 or leave it False")
        if timeout is None or isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or timeout < 0:
            raise ValueError("timeout must be a number of seconds >= 0 (0: wait as long as it "
                             "takes), got %r" % (timeout,))
        if pin_memory_device not in ("", "cuda"):
            raise ValueError("pin_memory_device: batches are pinned for CUDA alone, got %r"
                             % (pin_memory_device,))
        check_pin_memory(pin_memory)
        if worker_init_fn is not None and not callable(worker_init_fn):
            raise TypeError("worker_init_fn must be callable, got %r" % (worker_init_fn,))
        if collate_fn is not None and not callable(collate_fn):
            raise TypeError("collate_fn must be callable, got %r" % (collate_fn,))
        self.iterable = is_iterable_dataset(dataset)
        self._batch_size, self.drop_last = batch_size, bool(drop_last)
        self.sampler, self.batch_sampler = self._samplers(
            dataset, batch_size, shuffle, sampler, batch_sampler, drop_last)
        if batch_sampler is not None:
            self._batch_size, self.drop_last = None, False
        elif batch_size is not None:
            self._batch_size = check_positive_int("batch_size", batch_size)
        auto_batch = self.batch_sampler is not None or (self.iterable and batch_size is not None)
        self.collate_fn = collate_fn if collate_fn is not None else (
            default_collate if auto_batch else default_convert)
        self.generator = generator
        self.seed = check_int("seed", seed) if seed is not None else draw_seed(generator)
        if isinstance(self.sampler, ShuffledIndices):
            self.sampler.seed = self.seed
        self.planner = None if self.iterable else EpochPlanner(
            self.batch_sampler, self.sampler, self.seed)
        self.worker_type = worker_type
        self.worker_init_fn = worker_init_fn
        self.timeout = float(timeout)
        self.pin_memory = pin_memory
        self.prefetch_factor = 2 if prefetch_factor is None else prefetch_factor
        self.persistent_workers = bool(persistent_workers)
        self.in_order = bool(in_order)
        self.name = name
        self._engine_options: dict[str, Any] = {
            "stall_warning_secs": stall_warning_secs, "shm_bytes_per_worker": shm_bytes_per_worker,
            "external_loggers": external_loggers, "start_method": start_method}
        if log_interval_secs is not None:
            self._engine_options["log_interval_secs"] = check_positive_seconds(
                "log_interval_secs", log_interval_secs)
        if worker_type == "process" and self.num_workers > 0:
            check_picklable(dataset)
        # Position: the epoch being iterated (or about to be), and how many of
        # its batches were handed out; _open: iter() has begun this epoch.
        self._epoch = 0
        self._taken = 0
        self._open = False
        self._generation = 0
        self._template: tuple[Template, int, int] | None = None
        self._run: Any | None = None   # the engine: a fetch_fun Loader
        self._run_next: tuple[int, int] | None = None  # tag its next batch must carry
        self._closed = False
        # The current run's budget (None until a sample fails) and the samples
        # it has seen, failed ones included: both start afresh with each run.
        self._budget: FetchFailureBudget | None = None
        self._samples_seen = 0

    @staticmethod
    def _samplers(dataset: Any, batch_size: int | None, shuffle: bool | None,
                  sampler: Any | None, batch_sampler: Any | None,
                  drop_last: bool) -> tuple[Any, Any]:
        """The (sampler, batch_sampler) pair, by DataLoader's rules (in our words)."""
        if is_iterable_dataset(dataset):
            for option, value, unset in (("shuffle", shuffle, shuffle in (None, False)),
                                         ("sampler", sampler, sampler is None),
                                         ("batch_sampler", batch_sampler, batch_sampler is None)):
                if not unset:
                    raise ValueError(
                        "%s=%r: an iterable dataset decides its own order, so it takes no %s; "
                        "shuffle or sample inside the dataset's __iter__" % (option, value, option))
            return None, None
        if sampler is not None and shuffle:
            raise ValueError("shuffle=True and a sampler both choose the order; pass one of "
                             "them (a sampler that shuffles, or shuffle=True alone)")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("a batch_sampler decides each batch itself, so batch_size, "
                                 "shuffle, sampler and drop_last must keep their defaults "
                                 "beside it")
            return None, batch_sampler
        if batch_size is None and drop_last:
            raise ValueError("batch_size=None hands out single samples, so there is no last "
                             "batch for drop_last=True to drop; pass one or the other")
        if sampler is None:
            sampler = ShuffledIndices(len(dataset)) if shuffle else \
                torch.utils.data.SequentialSampler(dataset)
        if batch_size is None:
            return sampler, None
        return sampler, torch.utils.data.BatchSampler(
            sampler, check_positive_int("batch_size", batch_size), bool(drop_last))

    @property
    def batch_size(self) -> int | None:
        """Samples per batch; None with ``batch_sampler`` or ``batch_size=None``."""
        return self._batch_size

    @property
    def names(self) -> tuple[str, ...]:
        """The batch's tensors, as errors name them (``batch[0]``, ``batch['image']``)."""
        return () if self._template is None else tuple(leaf_names(self._template[0]))

    def __next__(self) -> Any:
        raise TypeError("a Loader over a dataset is iterable, not an iterator (as DataLoader): "
                        "use iter(loader), or `for batch in loader`")

    # -- size ---------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches in one epoch (as ``len(DataLoader)``)."""
        if self.iterable:
            length = len(self.dataset)  # TypeError if the dataset has no __len__
            if self._batch_size is None:
                return length
            return length // self._batch_size if self.drop_last else -(-length // self._batch_size)
        source = self.batch_sampler if self.batch_sampler is not None else self.sampler
        return len(source)

    # -- iteration ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        """One epoch: ``len(self)`` batches; each ``iter()`` starts the next epoch."""
        if self._closed:
            raise RuntimeError("loader %r was closed" % self.name)
        if self._open:
            if self.num_workers == 0 and not self.iterable and self._taken < len(self):
                # An epoch left midway: where workers would start a new run, the
                # budget starts afresh here too.
                self._budget, self._samples_seen = None, 0
            self._epoch += 1
            self._taken = 0
        self._open = True
        self._generation += 1
        return self._epoch_batches(self._generation)

    def _epoch_batches(self, generation: int) -> Iterator[Any]:
        if self.iterable:
            yield from self._iterable_epoch(generation)
            return
        length = len(self)
        while self._taken < length:
            self._check_current(generation)
            if self.num_workers == 0:
                kind, batch = self._load_here(self._epoch, self._taken)
            else:
                kind, batch = self._from_run(self._epoch, self._taken)
            self._taken += 1
            if kind != SKIPPED:  # else every sample failed: the position passes, no batch
                yield batch

    def _check_current(self, generation: int) -> None:
        if generation != self._generation:
            raise RuntimeError("this iterator of loader %r was superseded: a later iter() "
                               "started another epoch" % self.name)

    def _load_here(self, epoch: int, k: int) -> tuple[int, Any]:
        """``num_workers=0``: the batch's kind (BATCH or SKIPPED) and the batch, loaded
        in the calling thread."""
        if self.planner is None:  # invariant: map-style
            raise RuntimeError("internal error: self.planner is unset (map-style)")
        indices = self.planner.plan(epoch)[k]
        single = self.batch_sampler is None
        if self.max_fetch_failures != 0:
            samples, failures = load_samples(self.dataset, indices, single, "in the calling thread (num_workers=0)")
            self._charge(failures, len(samples) + len(failures), epoch, k)
            if not samples:
                return SKIPPED, None
            return BATCH, self.collate_fn(samples[0] if single else samples)
        if single:
            return BATCH, self.collate_fn(self.dataset[indices])
        return BATCH, self.collate_fn([self.dataset[i] for i in indices])

    def _charge(self, failures: Sequence[SampleFailure], samples: int, epoch: int,
                k: int) -> None:
        """Skip the failed samples of batch ``k`` of ``epoch`` (``samples`` in all) within
        the budget, each logged and counted.

        Raises:
            FetcherError: one failure beyond the budget (its exception is the
                cause); the run is closed.
        """
        self._samples_seen += samples
        if not failures:
            return
        if self._budget is None:
            self._budget = FetchFailureBudget(
                self.max_fetch_failures, self.name, *self._run_counters(),
                unit="samples")
        for index, original, type_name, text, where, tb_text in failures:
            remote = RemoteTraceback(tb_text)
            if original is not None:
                original.__cause__ = remote  # logged with the worker's traceback
            if self._budget.charge(0, original if original is not None else remote,
                                   calls=self._samples_seen,
                                   what="dataset[%r] %s" % (index, where)):
                continue
            note = self._budget.note()
            self._close_run()
            err = FetcherError(
                "Caught %s %s of loader %r, loading sample %r of batch %d of epoch %d: %s%s\n"
                "Original %s" % (type_name, where, self.name, index, k, epoch, text, note,
                                 tb_text))
            raise err from (original if original is not None else remote)

    def _run_counters(self) -> tuple[InputCounters, Metrics]:
        """Where the budget counts a skipped sample: the run's counters and metrics
        (``stats().fetch_failures``, external loggers), or, with no run
        (``num_workers=0``, whose ``stats()`` is None), counters of its own that
        only the log lines show."""
        if self._run is None:
            return InputCounters(), Metrics()
        return self._engine_counters(self._run)

    def _engine_counters(self, run: Any) -> tuple[InputCounters, Metrics]:
        """The counters and metrics of ``run`` (the public class knows the engine)."""
        raise NotImplementedError("data_workers.torch.Loader provides the engine")

    def _from_run(self, epoch: int, k: int) -> tuple[int, Any]:
        if self._run is None or self._run_next != (epoch, k):
            self._start_run((epoch, k))
        tag, kind, value = self._decode(self._take(epoch, k), k)
        if tag != (epoch, k):
            raise RuntimeError(
                "loader %r: expected batch %d of epoch %d, got batch %d of epoch %d: the "
                "sampler yields another number of batches than len(loader) = %d, or its "
                "order is not a function of the seed and the epoch"
                % (self.name, k, epoch, tag[1], tag[0], len(self)))
        self._run_next = (epoch, k + 1) if k + 1 < len(self) else (epoch + 1, 0)
        return kind, value

    def _take(self, epoch: int, k: int) -> Sequence[Any]:
        """The run's next message, with a timeout worded for this loader.

        Raises:
            TimeoutError: none came within ``timeout`` seconds (the loader stays usable).
        """
        if self._run is None:  # invariant: the caller started it
            raise RuntimeError("internal error: self._run is unset (the caller started it)")
        try:
            return next(self._run)
        except TimeoutError:
            raise TimeoutError(
                "loader %r timed out after %g seconds waiting for batch %d of epoch %d "
                "(worker %d's turn): a slow or stuck __getitem__ or collate_fn? "
                "stall_warning_secs=... logs where the workers are"
                % (self.name, self.timeout, k, epoch, k % max(1, self.num_workers))) from None

    def _decode(self, arrays: Sequence[Any], turn: int) -> tuple[tuple[int, int], int, Any]:
        """A worker's message: its (epoch, batch) tag, its kind, and the batch.

        Raises:
            FetcherError: the worker's dataset or collate_fn raised making this
                batch (the original exception is the cause); the run is closed.
        """
        epoch, k, kind = (int(v) for v in arrays[0][0])
        if self._template is None:  # invariant: set by _start_run
            raise RuntimeError("internal error: self._template is unset (set by _start_run)")
        template, count, _ = self._template
        payload = pickle.loads(arrays[1 + count][0])
        if kind & WITH_FAILURES:
            kind &= ~WITH_FAILURES
            payload, samples, failures = payload
            self._charge(failures, samples, epoch, k)
        if kind == BATCH:
            return (epoch, k), kind, unflatten(template, arrays[1:1 + count], payload)
        if kind != ERROR:
            return (epoch, k), kind, payload
        original, type_name, text, where, tb_text = payload
        self._close_run()
        err = FetcherError("loader %r: making batch %d of epoch %d %s raised %s: %s\n"
                           "Where it was raised: %s" % (self.name, k, epoch, where, type_name,
                                                        text, tb_text))
        raise err from (original if original is not None else RemoteTraceback(tb_text))

    def _iterable_epoch(self, generation: int) -> Iterator[Any]:
        if self.num_workers == 0:
            fetch = self._fetch((self._epoch, 0), 1, "here")
            while True:
                self._check_current(generation)
                _, kind, batch = self._decode(fetch(0, 0), 0)
                if kind == END_OF_DATA:
                    return
                self._taken += 1
                yield batch
        self._start_run((self._epoch, 0))
        done: set[int] = set()
        turn = 0
        try:
            while len(done) < self.num_workers:
                self._check_current(generation)
                _, kind, batch = self._decode(self._take(self._epoch, self._taken), turn)
                worker = turn % self.num_workers  # the channel's strict round robin
                turn += 1
                if kind == END_OF_DATA:
                    done.add(worker)
                    continue
                self._taken += 1
                yield batch
        finally:
            if len(done) == self.num_workers or generation != self._generation:
                self._close_run()

    # -- runs ---------------------------------------------------------------------------
    def _fetch(self, start: tuple[int, int], workers: int, where: str) -> DatasetFetch:
        if self._template is None:
            self._template = make_template(self._probe())
        return DatasetFetch(
            self.dataset, self.planner, self.collate_fn, self._template[0], workers, start,
            self.seed, self.worker_init_fn, where, self._batch_size, self.drop_last,
            skip_failures=self.max_fetch_failures != 0 and not self.iterable)

    def _probe(self) -> Any:
        """One sample collated in this thread: the batch's structure (how many arrays)."""
        if self.iterable:
            first = next(iter(self.dataset))
            return self.collate_fn([first]) if self._batch_size is not None \
                else self.collate_fn(first)
        if self.planner is None:  # invariant: map-style
            raise RuntimeError("internal error: self.planner is unset (map-style)")
        plan = self.planner.plan(self._epoch)
        if not plan:
            raise ValueError("loader %r: the sampler yields no batch" % self.name)
        single = self.batch_sampler is None
        if self.max_fetch_failures == 0:
            first = plan[0]
            return self.collate_fn(self.dataset[first] if single else [self.dataset[first[0]]])
        # Failing samples may be skipped: the first sample of the epoch that
        # loads shows the structure (the failed ones are charged at their turn).
        for indices in plan:
            samples, _ = load_samples(self.dataset, indices, single, "in the calling thread (num_workers=0)")
            if samples:
                return self.collate_fn(samples[0] if single else samples[:1])
        raise ValueError("loader %r: no sample of epoch %d loads (every __getitem__ raised); "
                         "fix the dataset" % (self.name, self._epoch))

    @staticmethod
    def _start_method(context: Any, num_workers: int, worker_type: str | None) -> str:
        """The engine's ``start_method`` for DataLoader's ``multiprocessing_context``:
        None, ``"spawn"``, ``"fork"``, or a ``multiprocessing`` context of either."""
        if context is None:
            return "spawn"
        method = context.get_start_method() if hasattr(context, "get_start_method") else context
        check_start_method(method, worker_type or "process", arg="multiprocessing_context")
        if num_workers == 0:
            raise ValueError("multiprocessing_context=%r starts worker processes, and "
                             "num_workers=0 loads in the calling thread: pass num_workers "
                             ">= 1 or leave it None" % (context,))
        return str(method)

    def _start_run(self, start: tuple[int, int]) -> None:
        self._close_run()
        in_process = self.worker_type == "process"
        fetch = self._fetch(start, self.num_workers, self.worker_type)
        if self._template is None:  # invariant: set by _fetch
            raise RuntimeError("internal error: self._template is unset (set by _fetch)")
        template, count, objects = self._template
        names = ["batch_position"] + leaf_names(template) + ["objects"]
        if not in_process:
            install_thread_worker_info()
        self._run = self._make_run(
            fetch, frozenset({names[0], names[-1]}), 1, self.num_workers,
            worker_type=self.worker_type, deterministic=True,
            seed=self.seed, dont_rebatch=True,
            max_buffered_batches=self.prefetch_factor * self.num_workers,
            timeout=self.timeout or _FOREVER, pin_memory=self.pin_memory, names=names,
            name=self.name, **self._engine_options)
        self._run_next = start

    def _make_run(self, fetch: DatasetFetch, hidden_arrays: frozenset[str], *args: Any,
                  **kwargs: Any) -> Any:
        """A ``fetch_fun`` Loader over ``fetch`` (the public class builds the engine),
        whose description of the first batch leaves out ``hidden_arrays``."""
        raise NotImplementedError("data_workers.torch.Loader provides the engine")

    def _close_run(self) -> None:
        run, self._run, self._run_next = self._run, None, None
        self._budget, self._samples_seen = None, 0
        if run is not None:
            run.close()

    def close(self, timeout: float | None = None) -> bool:
        """Stop the workers and release their memory; idempotent (see ``Loader.close``)."""
        self._closed = True
        run, self._run, self._run_next = self._run, None, None
        return True if run is None else run.close(timeout)

    def __enter__(self) -> "DatasetLoader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def stats(self) -> InputStats | None:
        """The current run's counters (one batch per chunk); None when no worker runs."""
        return None if self._run is None else self._run.stats()

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out, as StatefulDataLoader means it.

        Independent of ``num_workers`` and ``worker_type``: a loader built with
        other ones resumes from it exactly.

        Raises:
            TypeError: the dataset is iterable (its position is its own).
        """
        if self.iterable:
            raise TypeError("state_dict() needs a map-style dataset: an iterable dataset's "
                            "position is inside its own iterators")
        epoch, taken = self._epoch, self._taken
        if self._open and taken >= len(self):
            epoch, taken = epoch + 1, 0  # the epoch is complete: the next iter() starts epoch + 1
        return {"version": DATASET_STATE_VERSION, "epoch": epoch, "batches_taken": taken,
                "seed": self.seed, "batches_per_epoch": len(self)}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue from ``state_dict``: the next ``iter()`` resumes its epoch at its batch.

        Raises:
            ValueError: ``state_dict`` is not a dataset loader's, or its epoch
                length differs from this loader's (another dataset or batch size).
        """
        if self.iterable:
            raise TypeError("load_state_dict() needs a map-style dataset")
        if not isinstance(state_dict, Mapping) or state_dict.get("version") != \
                DATASET_STATE_VERSION or "epoch" not in state_dict:
            raise ValueError("state_dict must come from a dataset Loader's state_dict() "
                             "(version %d), got %r" % (DATASET_STATE_VERSION, state_dict))
        if state_dict["batches_per_epoch"] != len(self):
            raise ValueError("state_dict was saved by a loader with %d batches per epoch, this "
                             "one has %d: another dataset, batch_size or drop_last"
                             % (state_dict["batches_per_epoch"], len(self)))
        self._close_run()
        self.seed = check_int("seed", state_dict["seed"])
        if isinstance(self.sampler, ShuffledIndices):
            self.sampler.seed = self.seed
        self.planner = EpochPlanner(self.batch_sampler, self.sampler, self.seed)
        self._epoch = check_int("epoch", state_dict["epoch"], minimum=0)
        self._taken = check_int("batches_taken", state_dict["batches_taken"], minimum=0)
        self._open = False
        self._generation += 1

    def __repr__(self) -> str:
        return "Loader(%s, batch_size=%r, num_workers=%d, worker_type=%r)" % (
            type(self.dataset).__name__, self._batch_size, self.num_workers, self.worker_type)
