"""``data_workers.torch``: the same fetchers feed a PyTorch training loop.

For teams moving a model off Caffe2 one model at a time: the ``fetch_fun``,
``ShardedSource`` and checkpoints written for ``init_data_input_workers`` feed
``Loader``, unchanged, and keep what made them trustworthy there (exactly-once
rows, loud failures, process workers, determinism, resumable position).

Usage::

    from data_workers.torch import Loader

    with Loader(fetch_fun, batch_size=32, num_workers=2, names=["data", "label"]) as loader:
        for step, (data, label) in zip(range(steps), loader):
            loss = criterion(model(data), label)
            ...

The pipeline is the one drawn in ``data_workers/__init__.py``, with a
different sink at its end::

    fetch_fun(worker_id, batch_size)   thread or process fetchers (same backends)
            v
    ChunkValidator -> ChunkChannel -> Rebatcher     (same engine, one copy per row)
            v
    TorchSink (enqueuer thread)        bounded hand-off, 4 batches, pooled buffers
            v                          (``_torch/sink.py``)
    Loader.__next__                    the training loop's thread: tensors sharing
                                       the batch buffers' memory

Nothing on this path imports Caffe2, so it runs with any PyTorch build.  A
``Loader`` is one input with its own coordinator (not the Caffe2
``global_coordinator`` registry) and follows NOTE [ Shutdown and error
protocol ] in ``_core/coordinator.py``.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any
from collections.abc import Iterable, Mapping, Sequence

import torch

from ._core.args import check_positive_seconds
from ._core.backend import FetchFun
from ._core.budget import FractionOrCount
from ._core.build import ArgNames, build_input, check_blob_names, check_input_args
from ._core.coordinator import GroupRegistry
from ._core.errors import InputClosedError
from ._core.lifecycle import Lifecycle
from ._core.metrics import ExternalLogger, InputCounters, InputStats, Metrics
from ._core.pipeline import LOG_INT_SECS
from ._torch.dataset import is_dataset
from ._torch.dataset_loader import DatasetLoader
from ._torch.sink import TorchSink, check_pin_memory
from ._workers.factory import backend_factory
from .sharding import InputCheckpoint, ShardedSource

__all__ = ["Loader"]

logger = logging.getLogger(__name__)

#: Longest single wait for a batch before the loader rechecks its input.
_POLL_SECS = 0.5
_STATE_VERSION = 1

# Started loaders' groups, until close() finished them: the exit hook holds its
# coordinators weakly, and a loader its user dropped without close() must still
# be stopped (and its shared memory released) at interpreter exit.
_running_lock = threading.RLock()
_running: set[GroupRegistry] = set()


class Loader:
    """``torch.utils.data.DataLoader`` over our workers, or the Caffe2 ``fetch_fun`` input.

    **Dataset form** (the first argument is a ``torch.utils.data.Dataset``, or
    a non-callable with ``__getitem__`` + ``__len__`` or ``__iter__``)::

        Loader(dataset, batch_size=1, shuffle=False, sampler=None, batch_sampler=None,
               num_workers=0, collate_fn=None, pin_memory=False, drop_last=False,
               timeout=0, worker_init_fn=None, multiprocessing_context=None,
               generator=None, *, prefetch_factor=2, persistent_workers=False,
               pin_memory_device="", in_order=True, worker_type=None,
               seed=None, name="loader", stall_warning_secs=None,
               shm_bytes_per_worker=None, external_loggers=None, log_interval_secs=None,
               max_fetch_failures=0)

    DataLoader's names, defaults and meanings; each ``iter()`` is one epoch of
    ``len(loader)`` batches in the sampler's order whatever the workers, and
    ``state_dict()`` / ``load_state_dict()`` resume exactly, with any worker
    count or type.  ``seed`` fixes every epoch's order (default: drawn from
    ``generator``, else from torch's RNG).  What differs from DataLoader:
    ``docs/torch.md``.  Implemented in ``_torch/dataset_loader.py``.

    ``max_fetch_failures`` (not DataLoader's; the rules of the fetch_fun form,
    counted in samples): ``0`` raises a failing ``__getitem__`` at its batch's
    turn; ``N`` or a fraction of the samples loaded skips failing samples
    within that budget.  A skipped sample is left out of its batch, which is
    collated from the rest; every other batch keeps its place, so resume stays
    exact.  A batch whose every sample fails is skipped, and that epoch yields
    fewer than ``len(loader)`` batches.  Each skip is logged and counted in
    ``stats().fetch_failures``; the failure beyond the budget raises
    ``FetcherError`` at its batch's turn, saying how many were skipped.  The
    count starts afresh with each run of workers (first ``iter()``,
    ``load_state_dict()``, an epoch left midway).  Never skipped: ``collate_fn``
    errors, dead workers, and an iterable dataset's failing ``__next__`` (its
    iterator cannot go on, so it is raised as without a budget).

    **fetch_fun form**: an endless iterable of batches from ``fetch_fun``, as
    tuples of ``torch.Tensor``.

    Each batch holds one tensor per array ``fetch_fun`` returns, each with exactly
    ``batch_size`` rows along its batch column (with ``dont_rebatch``, the rows of
    one chunk).  The fetchers start at the first ``next()``; iterating again
    continues the same stream (there are no epochs: the fetchers decide what
    comes next, e.g. a ``ShardedSource`` walks epoch after epoch).  Take a fixed
    number of steps with ``zip(range(steps), loader)`` or ``itertools.islice``.

    The tensors share memory with the loader's batch buffers; a buffer is
    written again only after every tensor sharing it is gone, so a batch may be
    kept.  Object (string) arrays have no tensor type and come as numpy arrays.
    One thread iterates a loader.

    Args:
        fetch_fun: ``fetch_fun(worker_id, batch_size)`` returning a list of numpy
            arrays (or None to skip), exactly as for ``init_data_input_workers``.
            Worker ids are ``0 .. num_workers - 1``.  A ``ShardedSource`` gets its
            worker ids bound at start and makes ``state_dict()`` available.
        batch_size: rows per batch.
        num_workers: fetcher threads or processes.
        worker_type: ``"thread"`` or ``"process"`` (worker processes, arrays
            through shared memory; ``fetch_fun`` is sent to them with cloudpickle,
            so lambdas and closures work, and it must not hold locks, open files
            and the like).
        deterministic: take one chunk from each worker in turn, so the batch
            stream depends on the fetchers' outputs alone; needed for
            ``state_dict()``.
        seed: the i-th process worker seeds ``random`` and numpy with ``seed + i``.
        batch_columns: the batch dimension of each array (default 0 for all).
        dont_rebatch: every chunk is a batch as it is.
        max_buffered_batches: chunks buffered between fetchers and batching.
        timeout: seconds one ``next()`` waits for a batch before ``TimeoutError``.
        pin_memory: allocate batches in pinned memory, for fast (asynchronous)
            copies to a CUDA device.  Needs CUDA: without it the constructor raises
            ``ValueError`` rather than silently handing out unpinned memory.
        names: one name per array ``fetch_fun`` returns (the ``input_blob_names``
            of the Caffe2 input being migrated); they fix how many arrays a chunk
            must have and name them in errors.  If omitted, ``batch_columns``
            gives the count; one of the two is required.
        name: names this input in errors, logs and threads.
        dtypes: the dtype some or all arrays must have, by name (``names``, or
            ``array0``, ``array1``...), e.g. ``{"data": np.float32}``: another
            dtype is a ``ChunkTypeError`` at the first chunk.
        stall_warning_secs: seconds without a batch moving before one warning
            names the stuck stage (default: off), as for
            ``init_data_input_workers``.
        shm_bytes_per_worker: bytes of shared memory per process worker
            (default: ten batches, at least 64 MiB), as for
            ``init_data_input_workers``.
        external_loggers: objects with a ``log(metrics: dict)`` method, called
            every ``log_interval_secs``, as for ``init_data_input_workers``.
        log_interval_secs: seconds between inputs/sec log lines and
            external-logger calls.
        max_fetch_failures: fetch_fun exceptions to skip (bad records) instead of
            failing the loader: ``0`` (default) none, an int N up to N, a float
            in (0, 1) that fraction of fetch calls; as for
            ``init_data_input_workers``.
        start_method: how process workers start, ``"spawn"`` (default) or
            ``"fork"``, as for ``init_data_input_workers``; the dataset form
            takes DataLoader's ``multiprocessing_context`` for it.

    Raises:
        TypeError, ValueError: an argument is invalid (the message names it).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "Loader":
        # The first argument picks the form: a dataset gets DataLoader's
        # signature and epochs (_torch/dataset_loader.py), a callable is a fetch_fun.
        first = args[0] if args else kwargs.get("dataset", kwargs.get("fetch_fun"))
        if cls is Loader and "fetch_fun" not in kwargs and is_dataset(first):
            return super().__new__(_DatasetLoader)
        return super().__new__(cls)

    def __init__(
        self,
        fetch_fun: FetchFun,
        batch_size: int,
        num_workers: int = 2,
        *,
        worker_type: str = "thread",
        deterministic: bool = False,
        seed: int | None = None,
        batch_columns: Sequence[int] | None = None,
        dont_rebatch: bool = False,
        max_buffered_batches: int = 800,
        timeout: float = 600,
        pin_memory: bool = False,
        names: Sequence[str] | None = None,
        name: str = "loader",
        stall_warning_secs: float | None = None,
        shm_bytes_per_worker: int | None = None,
        external_loggers: Iterable[ExternalLogger] | None = None,
        log_interval_secs: float = LOG_INT_SECS,
        dtypes: Mapping[str, Any] | None = None,
        max_fetch_failures: FractionOrCount = 0,
        start_method: str = "spawn",
    ) -> None:
        blob_names = _check_loader_args(names, name, batch_columns, pin_memory)
        config = check_input_args(
            fetch_fun=fetch_fun, blob_names=blob_names, batch_size=batch_size,
            num_workers=num_workers, input_source=name, worker_type=worker_type,
            max_buffered_batches=max_buffered_batches, batch_columns=batch_columns,
            dont_rebatch=dont_rebatch, deterministic=deterministic, seed=seed,
            timeout=check_positive_seconds("timeout", timeout),
            log_interval_secs=log_interval_secs, stall_warning_secs=stall_warning_secs,
            shm_bytes_per_worker=shm_bytes_per_worker, dtypes=dtypes,
            max_fetch_failures=max_fetch_failures, start_method=start_method,
            names=_ARG_NAMES)
        self._fetch_fun_type = type(fetch_fun).__name__
        self._source = fetch_fun if isinstance(fetch_fun, ShardedSource) else None
        if self._source is not None and self._source.batch_size != config.batch_size:
            raise ValueError("batch_size %d differs from the ShardedSource's batch_size %d"
                             % (config.batch_size, self._source.batch_size))
        self._config = config
        self._sink = TorchSink(blob_names, pin_memory=pin_memory)
        self._input = build_input(
            config, fetch_fun, self._sink, backend_factory,
            worker_ids=list(range(config.num_workers)),
            init_fun=None if self._source is None else self._source.init_fun,
            external_loggers=external_loggers)
        # A registry of its own: one stop() deadline, the lazy exit hook, and
        # nothing shared with the Caffe2 inputs of the same process.
        self._group = GroupRegistry()
        self._group.add(self._input)
        self._batches_taken = 0
        # Reentrant: close() may run from a signal handler interrupting _start().
        self._lock = threading.RLock()
        # Dropped without close(): halt the workers (never blocks); the exit hook
        # joins and cleans up.  The coordinator never refers back to the loader.
        self._finalizer = weakref.finalize(self, self._input.begin_stop)
        self._finalizer.atexit = False

    # -- iteration -------------------------------------------------------------
    def __iter__(self) -> "Loader":
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        """The next batch.

        Raises:
            DataInputError: the input failed (``FetcherError``, ``WorkerDiedError``,
                ``ChunkTypeError``, ...), raised at the first ``next()`` after the
                failure; later calls raise ``InputClosedError`` from it.
            InputClosedError: the loader was closed.
            TimeoutError: no batch came within ``timeout`` seconds.
        """
        if self._input.lifecycle is Lifecycle.CREATED:
            self._start()
        deadline = time.monotonic() + self._config.timeout
        while True:
            halted = self._input.lifecycle.halted
            if halted and self._input.failure is None:
                raise InputClosedError(
                    "loader %r was closed (by close() or the end of its with-block) and hands "
                    "out no more batches; build a new Loader to read again"
                    % self._config.input_source)
            left = deadline - time.monotonic()
            # Batches handed over before a failure come first (NOTE [ Shutdown and
            # error protocol ], rule 10); a failure or close() closes the sink,
            # which wakes this wait at once.
            batch = self._sink.take(0.0 if halted else max(0.0, min(left, _POLL_SECS)))
            if batch is not None:
                self._batches_taken += 1
                return batch
            if halted:
                self._raise_failure()
            if left <= 0:
                stats = self.stats()
                raise TimeoutError(
                    "loader %r: no batch within timeout=%gs (%d chunks fetched, %d rows waiting "
                    "for a batch of %d); a slow or stuck fetch_fun? stall_warning_secs names the "
                    "stuck stage" % (self._config.input_source, self._config.timeout,
                                     stats.chunks_fetched, stats.rows_buffered,
                                     self._config.batch_size))

    def _raise_failure(self) -> None:
        """Raise the failure that halted the input (the first time itself, then
        ``InputClosedError`` from it)."""
        failure = self._input.failure
        self._input.check()  # first time: raised here, so close() will not raise it again
        err = InputClosedError("loader %r failed earlier: %s" % (self._config.input_source, failure))
        raise err from failure

    def _start(self) -> None:
        with self._lock:
            if self._input.lifecycle is not Lifecycle.CREATED:
                return
            with _running_lock:
                _running.add(self._group)
            self._group.start()  # registers the exit hook; binds a ShardedSource's ids

    # -- lifecycle ---------------------------------------------------------------
    def close(self, timeout: float | None = None) -> bool:
        """Stop the fetchers, join them and release every buffer.  Idempotent.

        NOTE [ Shutdown and error protocol ] (``_core/coordinator.py``): halts, joins
        against one deadline, cleans up, then raises the input's failure unless
        iteration raised it already.  Tensors already handed out stay valid.

        Args:
            timeout: seconds to wait for the workers (default ``STOP_TIMEOUT_SECS``).

        Returns:
            True if every worker ended within ``timeout``.

        Raises:
            DataInputError: the input's failure, if not raised by iteration yet.
        """
        self._finalizer.detach()
        try:
            return self._group.stop(raise_failure=True, timeout=timeout)
        finally:
            if self._input.lifecycle is Lifecycle.STOPPED:
                # Interrupted midway (Ctrl-C), it stays listed for the exit hook (rule 5).
                with _running_lock:
                    _running.discard(self._group)

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        # Raises the input's failure even when the body raised: it is the cause.
        self.close()

    # -- observation ---------------------------------------------------------------
    def stats(self) -> InputStats:
        """A frozen snapshot of the input's counters (``batches_enqueued``: handed to the sink)."""
        return self._input.stats()

    @property
    def batch_size(self) -> int:
        return self._config.batch_size

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._config.blob_names)

    def __repr__(self) -> str:
        return "Loader(%r, batch_size=%d, %d %s workers, %s)" % (
            self._config.input_source, self._config.batch_size, self._config.num_workers,
            self._config.worker_type, self._input.lifecycle.value)

    # -- checkpoints (the names torchdata's StatefulDataLoader uses) ----------------
    def state_dict(self) -> dict[str, Any]:
        """The position after the batches taken so far, as a plain dict.

        Save it with the model's ``state_dict()`` of the same step; a new loader
        over an equal ``ShardedSource`` given it by ``load_state_dict`` continues
        with exactly the batch that would have come next.

        Raises:
            TypeError: ``fetch_fun`` is not a ``ShardedSource`` (nothing else
                records its position).
            ValueError: ``deterministic`` is False: batches are not taken in
                block order, so no position describes the stream.
        """
        source = self._resumable("state_dict")
        return {"version": _STATE_VERSION,
                "source": source.checkpoint(self._batches_taken).to_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue from ``state_dict`` (from ``state_dict()``); before the first batch.

        Args:
            state_dict: what ``state_dict()`` returned, e.g. read back with
                ``torch.load`` beside the model's checkpoint.

        Raises:
            TypeError, ValueError: as for ``state_dict()``, or ``state_dict`` is not
                one of ours or belongs to another data set, seed or policy.
            RuntimeError: the loader has started (the fetchers already run).
        """
        source = self._resumable("load_state_dict")
        if not isinstance(state_dict, Mapping) or state_dict.get("version") != _STATE_VERSION \
                or not isinstance(state_dict.get("source"), Mapping):
            raise ValueError("state_dict must come from Loader.state_dict() (version %d), got %r"
                             % (_STATE_VERSION, state_dict))
        checkpoint = InputCheckpoint.from_dict(state_dict["source"])
        with self._lock:
            if self._input.lifecycle is not Lifecycle.CREATED:
                raise RuntimeError("load_state_dict() must be called before the first batch "
                                   "is taken; build a new Loader to resume")
            source.restore(checkpoint)
            self._batches_taken = 0

    def _resumable(self, what: str) -> ShardedSource:
        if self._source is None:
            raise TypeError("%s() needs fetch_fun to be a data_workers.ShardedSource, which "
                            "records its position; got %s" % (what, self._fetch_fun_type))
        if not self._config.deterministic:
            raise ValueError("%s() needs Loader(..., deterministic=True): otherwise batches "
                             "are not cut in block order and no position describes the stream"
                             % what)
        return self._source


# DatasetLoader's methods win (it comes first): epochs instead of an endless
# stream, so __iter__, batch_size and stats() differ from the fetch_fun form's.
class _DatasetLoader(DatasetLoader, Loader):  # type: ignore[misc]
    """``Loader(dataset, ...)``: ``DatasetLoader``'s behaviour, a ``Loader`` to ``isinstance``."""

    def _make_run(self, fetch: Any, hidden_arrays: frozenset[str], *args: Any,
                  **kwargs: Any) -> Loader:
        run = Loader(fetch, *args, **kwargs)
        run._sink.hidden_arrays = hidden_arrays
        return run

    def _engine_counters(self, run: Any) -> tuple[InputCounters, Metrics]:
        return run._input.feeder.counters, run._input.metrics


#: The Loader's spelling of the parameters the Caffe2 front end names otherwise.
_ARG_NAMES = ArgNames(blob_names="names", num_workers="num_workers")


def _check_loader_args(names: Any, name: Any, batch_columns: Any,
                       pin_memory: Any) -> tuple[str, ...]:
    """The checks only the Loader has; ``check_input_args`` makes the shared ones.

    Returns:
        One name per array ``fetch_fun`` returns (``names``, else generated from
        the number of ``batch_columns``).
    """
    if not isinstance(name, str) or not name:
        raise TypeError("name must be a non-empty str, got %r" % (name,))
    if names is None and batch_columns is None:
        raise TypeError("Loader needs to know how many arrays fetch_fun returns: pass "
                        "names=[...] (one per array, e.g. the Caffe2 input_blob_names) or "
                        "batch_columns=[...]")
    if names is not None:
        blob_names = check_blob_names(names, "names", noun="array")
    else:
        count = len(batch_columns) if isinstance(batch_columns, (list, tuple)) else 0
        blob_names = tuple("array%d" % i for i in range(count))
    if not blob_names:
        raise ValueError("batch_columns must list one non-negative int per array, got %r"
                         % (batch_columns,))
    check_pin_memory(pin_memory)
    return blob_names
