"""One data input: its configuration, its re-batch/enqueue stage and its coordinator.

Threads of one input (the whole pipeline is drawn once, in ``data_workers/__init__.py``)::

    fetcher threads, or receiver threads of worker processes
        --put()--> ChunkChannel --get_ready()--> enqueuer thread: Rebatcher -> sink
    or, when worker processes send whole batches (``FetcherBackend.batch_source``):
        worker sockets --get_ready()--> enqueuer thread: Rebatcher -> sink
    flusher thread: every log_interval_secs, metrics to the external loggers
    watchdog thread (optional): one warning when no batch moves

``BatchStage`` is everything between the fetchers and the sink;
``InputCoordinator`` owns its threads, its backend and its lifecycle.
Caffe2-free: the Caffe2 queue is one sink (``_caffe2/feed.py``) among others.

Failure and shutdown: NOTE [ Shutdown and error protocol ] in ``_core/coordinator.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from types import TracebackType
from typing import Any, Callable
from collections.abc import Sequence

import numpy as np

from .backend import ChunkSource, FetcherBackend, FetcherHost
from .budget import FetchFailureBudget, FractionOrCount
from .channel import ChunkChannel, FifoChannel, RoundRobinChannel
from .chunk import Chunk
from .coordinator import InitFun, WorkerGroup
from .errors import ChunkTypeError, ChunkValueError, DataInputError, PipelineError, point_at_fetcher
from .metrics import InputCounters, InputStats, Metrics
from .rebatch import Rebatcher
from .sink import BatchLayout, BatchSink, LendingSink
from .thread_util import join_threads
from .validate import ChunkValidator
from .watchdog import StallProbe, StallWatchdog
from .worker import State
from .words import byte_size

__all__ = ["InputConfig", "BatchStage", "InputCoordinator", "enqueuer", "LOG_INT_SECS"]

logger = logging.getLogger(__name__)

#: Seconds between inputs/sec log lines and external-logger flushes (upstream: 60).
LOG_INT_SECS = 60.0
#: How long the enqueuer waits for a chunk before rechecking the lifecycle.
_POLL_SECS = 0.5


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """What a front end was told about one input, checked (``_core/build.py``).

    Only what the engine needs: where batches go, and in which device or name
    scope, is the sink's business.  ``batch_size`` is the size at creation; the
    feeder's ``batch_size`` follows ``set_batch_size``.
    """

    blob_names: Sequence[str]
    batch_size: int
    input_source: str
    num_workers: int
    max_buffered_batches: int
    dont_rebatch: bool
    batch_columns: Sequence[int]
    timeout: float
    worker_type: str
    deterministic: bool
    seed: int | None
    log_interval_secs: float = LOG_INT_SECS
    shm_bytes_per_worker: int | None = None
    stall_warning_secs: float | None = None
    #: Fetcher exceptions to skip: a count, or a fraction of calls (``_core/budget.py``).
    max_fetch_failures: FractionOrCount = 0
    #: The dtype each blob must have (None: any); None: no ``dtypes=`` given.
    dtypes: tuple[np.dtype | None, ...] | None = None
    #: How process workers start (``_core/backend.py``, ``START_METHODS``).
    start_method: str = "spawn"


class BatchStage(State):
    """The re-batch/enqueue stage of one input (upstream's ``BatchFeeder`` role;
    ``data_workers.BatchFeeder`` adds upstream's attribute names, ``_compat.py``).

    Fetchers ``put`` their output here; the enqueuer thread calls ``pump`` in
    a loop, which moves chunks from its source (the channel, or the backend's
    ``batch_source``) through the re-batcher into the sink.
    """

    def __init__(self, config: InputConfig, worker_ids: Sequence[int], metrics: Metrics,
                 sink: BatchSink) -> None:
        self.config = config
        self.blob_names = list(config.blob_names)
        self.namescope = sink.scope
        self.input_source = config.input_source
        self.batch_size = config.batch_size
        #: Called with the new size by set_batch_size (process workers share it).
        self.batch_size_hooks: list[Callable[[int], None]] = []
        self.metrics = metrics
        self.counters = InputCounters()
        #: The sink's nouns, for every message about this input.
        self.words = sink.words
        self.budget = FetchFailureBudget(config.max_fetch_failures, config.input_source,
                                         self.counters, metrics, words=sink.words)
        # Deterministic order: the turn (place in the round-robin stream) of each
        # worker's next call, and the turns whose call raised and was skipped.
        # Each worker's count has one writer (its fetcher or receiver thread).
        self._index = {w: i for i, w in enumerate(worker_ids)}
        self._calls: dict[int, int] = {w: 0 for w in worker_ids}
        self.skipped_turns: list[int] = []
        self.validator = ChunkValidator(self.blob_names, config.batch_columns,
                                        config.dont_rebatch, config.input_source, sink.dtype_rule,
                                        config.dtypes, sink.words)
        self.rebatcher = Rebatcher(config.batch_columns, config.batch_size, config.dont_rebatch,
                                   name="data_workers %s%s" % (sink.scope, config.input_source))
        self.channel: ChunkChannel
        if config.deterministic:
            per_worker = max(1, -(-config.max_buffered_batches // max(1, len(worker_ids))))
            self.channel = RoundRobinChannel(worker_ids, per_worker)
        else:
            self.channel = FifoChannel(config.max_buffered_batches)
        #: Where the enqueuer takes chunks from: the channel, unless the backend
        #: hands batches over itself (``read_from``).
        self.source: ChunkSource = self.channel
        self.sink = sink
        self._lender = sink if isinstance(sink, LendingSink) else None
        self._last_log = time.monotonic()
        self._logged_rows = 0
        #: monotonic time the enqueuer began pushing a batch it has not pushed
        #: yet (the sink is full), else None; read by the stall watchdog.
        self.enqueue_blocked_since: float | None = None
        #: A worker's failure the enqueuer has taken from its source: raised
        #: once the rows queued before it make no further whole batch (rule 10).
        self.failure_due: DataInputError | None = None
        #: The first batch's layout has been logged (once per input).
        self._described = False
        #: (monotonic time, sink.consumer_wait_secs()) at the last two log
        #: intervals, oldest first: ``input_bound`` is measured from the older.
        self._wait_marks: list[tuple[float, float]] = []
        self._wait_sampled = 0.0

    def read_from(self, source: ChunkSource) -> None:
        """Take chunks from ``source`` instead of the channel (before start)."""
        self.source = source

    # -- State ------------------------------------------------------------
    def start(self) -> None:
        self.counters.started()
        self._last_log = time.monotonic()
        self._wait_marks = [(self._last_log, self._consumer_wait())]

    def _consumer_wait(self) -> float:
        try:
            return float(self.sink.consumer_wait_secs())
        except Exception:  # a sink that cannot tell: never input-bound
            logger.debug("input %r: consumer wait unknown", self.input_source, exc_info=True)
            return 0.0

    def input_bound(self, now: float | None = None) -> float:
        """Share of the recent past (the last one to two log intervals, or since
        start) in which the consumer waited for a batch: 0 (input keeps up) to 1."""
        marks = self._wait_marks
        if not marks:
            return 0.0
        since, waited = marks[0]
        now = time.monotonic() if now is None else now
        span = now - since
        if span <= 0:
            return 0.0
        return min(1.0, max(0.0, (self._consumer_wait() - waited) / span))

    def stop(self) -> None:
        """Halt, downstream first; never blocks (NOTE [ Shutdown and error protocol ])."""
        self.sink.close()
        self.channel.close()
        if self.source is not self.channel:
            self.source.close()

    def cleanup(self) -> None:
        """Release what is still buffered, and what the sink holds."""
        self.release_buffers()
        self.sink.cleanup()

    def release_buffers(self, include_rebatcher: bool = True) -> DataInputError | None:
        """Give back the memory of chunks that will never be batched (on stop).

        Returns:
            The first worker failure queued behind them (a failure marker the
            enqueuer never reached), or None: stop() must still raise it.
        """
        left = self.channel.drain()
        if self.source is not self.channel:
            left += self.source.drain()
        dropped = sum(c.rows for c in left)
        failure = self.failure_due
        for chunk in left:
            if failure is None:
                failure = chunk.failure
            chunk.done()
        if include_rebatcher:
            dropped += self.rebatcher.release_all()
        if dropped:
            logger.debug("input %r stopped with %d rows not yet batched", self.input_source, dropped)
        return failure

    # -- fetcher side -----------------------------------------------------
    def accept(self, worker_id: int, output: Any, chunks: int = 1) -> Chunk | None:
        """Validate fetcher output and count it (``chunks``: fetcher results a
        worker process assembled into this one).  Raises ChunkTypeError/ChunkValueError."""
        chunk = self.validator.check(worker_id, output, self.batch_size)
        if self.config.deterministic and worker_id in self._calls:
            self._calls[worker_id] += 1
        if chunk is None:
            self.counters.skipped()
            logger.warning("%s returned %s; skipped",
                           self.words.worker_of(worker_id, self.input_source),
                           "None" if output is None else "no rows")
            return None
        self.counters.fetched(chunk.rows, chunks)
        return chunk

    def put(self, output: Any, coordinator: WorkerGroup | None = None,
            worker_id: int = -1) -> bool:
        """Validate one fetcher result and queue it for re-batching.

        ``coordinator`` is ignored (kept from upstream's signature).  Blocks
        while the channel is full.  Returns False if the input stopped.
        """
        chunk = self.accept(worker_id, output)
        if chunk is None:
            if not self.config.deterministic:
                return True
            chunk = Chunk(worker_id, [], 0)  # keeps this worker's turn
        return self.put_chunk(chunk)

    def put_chunk(self, chunk: Chunk) -> bool:
        if not self.channel.put(chunk):
            chunk.done()
            return False
        return True

    def skip_fetch_failure(self, worker_id: int, exc: BaseException) -> bool:
        """Skip one exception of ``fetch_fun`` if the budget allows (``_core/budget.py``).

        In deterministic order the skipped call still is the worker's turn: an
        empty turn marker takes its place (blocks while the channel is full), and
        its turn is recorded for ``ShardedSource`` checkpoints.

        Returns:
            True if skipped; False: the caller fails the input with it.
        """
        if not self.budget.charge(worker_id, exc):
            return False
        if self.config.deterministic and worker_id in self._calls:
            calls = self._calls[worker_id]
            self._calls[worker_id] = calls + 1
            self.skipped_turns.append(calls * len(self._index) + self._index[worker_id])
            self.put_chunk(Chunk(worker_id, [], 0))
        return True

    def put_failure(self, err: DataInputError, worker_id: int) -> bool:
        """Queue a worker's failure behind every chunk it queued before (rule 10).

        Never waits for room.  Returns False if the input stopped: the caller
        then fails the input directly.
        """
        return self.channel.put(Chunk(worker_id, [], 0, failure=err))

    def set_batch_size(self, batch_size: int) -> None:
        """Change the batch size; applies from the next batch, no row is lost."""
        self.batch_size = batch_size
        self.rebatcher.batch_size = batch_size
        for hook in self.batch_size_hooks:
            hook(batch_size)

    # -- enqueuer side ----------------------------------------------------
    def pump(self, coordinator: WorkerGroup) -> None:
        """One step of the enqueuer: push one batch if the buffered rows make one,
        else take from the source only the chunks the next batch needs.

        Taking no more than needed keeps the stated memory bound: at most
        ``max_buffered_batches`` chunks in the channel plus the chunks of the
        batch being cut.  (A backend's own source is bounded by its workers'
        shared memory instead: they wait for ring space.)
        """
        now = time.monotonic()
        if now - self._wait_sampled >= _POLL_SECS:
            # A sink's wait counter may wrap (Caffe2Feed.consumer_wait_secs): read it often.
            self._wait_sampled = now
            self._consumer_wait()
        rows = self.rebatcher.next_batch_rows()
        if rows is None:
            if self.failure_due is not None:
                # Every whole batch queued before the failure is in the sink.
                raise self.failure_due
            need = 1 if self.config.dont_rebatch else self.batch_size - self.rebatcher.rows_buffered
            for chunk in self.source.get_ready(timeout=_POLL_SECS, want_rows=need):
                if self.failure_due is not None:
                    chunk.done()  # after the failure: never batched
                elif chunk.failure is not None:
                    self.failure_due = chunk.failure
                else:
                    self.rebatcher.add(chunk)
            return
        started = time.monotonic()
        head = None if self._lender is None else self.rebatcher.lendable_head(rows)
        lent = False
        if (head is not None and self._lender is not None and self._lender.can_lend(head.arrays)
                and head.lend is not None and head.lend()):
            # A whole batch in a worker's shared memory: the sink takes it uncopied.
            self.rebatcher.pop_head()
            lent = True
            arrays, head.arrays = head.arrays, []
            if not self._described:
                self._describe([(a.shape, a.dtype) for a in arrays])
            self.enqueue_blocked_since = started
            try:
                pushed = self._lender.lend(arrays, head.done)
            finally:
                self.enqueue_blocked_since = None
                del arrays, head
        else:
            layout = self.rebatcher.batch_layout(rows)
            if not self._described:
                self._describe(layout)
            dests = self.sink.destinations(layout)
            self.rebatcher.fill(dests, rows)
            self.enqueue_blocked_since = started
            try:
                pushed = self.sink.enqueue(dests)
            finally:
                self.enqueue_blocked_since = None
        if pushed:
            self.counters.enqueued(rows, lent)
            self.metrics.put_metric("enqueue_time", time.monotonic() - started)

    def _describe(self, layout: BatchLayout) -> None:
        """Log, once, what the batches look like: a wrong dtype or shape shows here
        first, and the bytes of a batch turn the buffering bounds, counted in
        batches, into memory."""
        self._described = True
        hidden = self.sink.hidden_arrays
        shown = [(name, shape, np.dtype(dtype))
                 for name, (shape, dtype) in zip(self.blob_names, layout) if name not in hidden]
        nbytes = sum(math.prod(shape) * dtype.itemsize
                     for _, shape, dtype in shown if dtype.kind != "O")
        objects = any(dtype.kind == "O" for _, _, dtype in shown)
        logger.info("%s: first batch: %s; %s per batch%s",
                    self.words.input_named(self.input_source),
                    ", ".join("%s %s %s" % (name, dtype.name, tuple(shape))
                              for name, shape, dtype in shown),
                    byte_size(nbytes), " and its objects" if objects else "")

    def log_interval(self) -> None:
        """Log inputs/sec and hand the metrics to the external loggers (flusher thread)."""
        now = time.monotonic()
        delta = now - self._last_log
        rows = self.counters.snapshot().rows_enqueued
        per_sec = int((rows - self._logged_rows) / delta) if delta > 0 else 0
        depth = self.source.depth()
        marks = self._wait_marks
        waited = self._consumer_wait()
        bound = (min(1.0, max(0.0, (waited - marks[-1][1]) / delta))
                 if marks and delta > 0 else 0.0)
        self._wait_marks = (marks[-1:] if marks else []) + [(now, waited)]
        logger.info("%s/%s: %d inputs/sec, %d chunks queued, input-bound %.0f%% (the consumer "
                    "waited for batches %.0f%% of the last %.1f s)", self.input_source,
                    self.namescope, per_sec, depth, 100 * bound, 100 * bound, delta)
        self.metrics.put_metric("inputs_per_sec", per_sec, False)
        self.metrics.put_metric("input_bound", bound, False)
        self.metrics.put_metric("queue_size", depth, False)
        self.metrics.put_metric("time_elapsed", delta, False)
        self.metrics.flush()
        self._logged_rows = rows
        self._last_log = now


def enqueuer(coordinator: WorkerGroup, batch_feeder: BatchStage) -> None:
    """The enqueuer thread: move batches into the sink until the input stops or fails.

    Every exception type becomes the input's failure (NOTE [ Shutdown and
    error protocol ], rule 1).
    """
    try:
        while coordinator.is_active():
            batch_feeder.pump(coordinator)
        if batch_feeder.failure_due is not None:
            # Stopped before it was raised: stop() still raises it (rule 10).
            raise batch_feeder.failure_due
    except DataInputError as e:
        # A backend's batch source has named the worker whose message failed.
        coordinator.fail(e if e.input_source is not None
                         else e.where(batch_feeder.input_source, e.worker_id))
    except BaseException as e:  # noqa: B902 - a thread has nobody to raise to
        coordinator.fail(PipelineError.wrapping(
            e, "re-batching/enqueue of %s failed:"
            % batch_feeder.words.input_named(batch_feeder.input_source),
            batch_feeder.input_source, None))


class InputCoordinator(WorkerGroup):
    """Coordinates one input: its fetcher backend, its enqueuer, flusher and watchdog.

    Implements ``FetcherHost`` (``_core/backend.py``) for its backend.

    Args:
        make_backend: builds the fetcher backend for this input (its host).
        fetch_fun: the user's fetcher; a chunk it returned that the validator
            refuses gets a traceback that begins at its definition.
    """

    def __init__(self, config: InputConfig, worker_ids: list[int], init_fun: InitFun | None,
                 feeder: BatchStage,
                 make_backend: Callable[[FetcherHost], FetcherBackend],
                 fetch_fun: Callable[..., Any] | None = None) -> None:
        super().__init__(config.input_source, worker_ids, init_fun, state=feeder)
        self.words = feeder.words
        self.config = config
        self._fetch_fun = fetch_fun
        #: The first refused chunk's error and its traceback from the fetch_fun on.
        self._pointed: tuple[DataInputError, TracebackType | None] | None = None
        self.feeder = feeder
        prefix = "data_workers %s%s" % (feeder.namescope, config.input_source)
        self.enqueuer_thread = threading.Thread(
            target=enqueuer, args=(self, feeder), daemon=True, name=prefix + " enqueuer")
        self._flush_halted = threading.Event()
        self.flusher_thread = threading.Thread(
            target=self._flush_loop, daemon=True, name=prefix + " flusher")
        self.watchdog: StallWatchdog | None = None
        if config.stall_warning_secs is not None:
            self.watchdog = StallWatchdog(
                prefix, self.name, self.probe, self._fetcher_locations, config.stall_warning_secs,
                feeder.sink.full_hint, feeder.words)
        self.backend: FetcherBackend = make_backend(self)
        source = self.backend.batch_source()
        if source is not None:
            feeder.read_from(source)
        self.threads = list(self.backend.threads) + [self.enqueuer_thread]

    # -- FetcherHost ------------------------------------------------------
    @property
    def metrics(self) -> Metrics:
        return self.feeder.metrics

    @property
    def batch_size(self) -> int:
        return self.feeder.batch_size

    def add_batch_size_hook(self, hook: Callable[[int], None]) -> None:
        self.feeder.batch_size_hooks.append(hook)

    def accept(self, worker_id: int, output: Any, chunks: int = 1) -> Chunk | None:
        return self.feeder.accept(worker_id, output, chunks)

    def put(self, output: Any, worker_id: int) -> bool:
        return self.feeder.put(output, None, worker_id)

    def put_chunk(self, chunk: Chunk) -> bool:
        return self.feeder.put_chunk(chunk)

    def skip_fetch_failure(self, worker_id: int, exc: BaseException) -> bool:
        return self.feeder.skip_fetch_failure(worker_id, exc)

    def fetch_failure_note(self) -> str:
        return self.feeder.budget.note()

    def skipped_turns(self) -> tuple[int, ...]:
        """Deterministic order: the turns (0, 1, ... in round-robin order since
        start) whose fetch call raised and was skipped (``max_fetch_failures``)."""
        return tuple(sorted(self.feeder.skipped_turns))

    def put_failure(self, err: DataInputError, worker_id: int) -> None:
        err.where(self.name, worker_id)
        self._point_at_fetcher(err)
        self.note_failure(err)
        if not self.feeder.put_failure(err, worker_id):
            self.fail(err)  # stopped or failed already: recorded or logged (rule 2)

    # -- WorkerGroup hooks ---------------------------------------------
    def fail(self, err: DataInputError) -> None:
        self._point_at_fetcher(err)
        super().fail(err)

    def _point_at_fetcher(self, err: DataInputError) -> None:
        """Begin a refused chunk's traceback at the user's ``fetch_fun`` (``errors.py``).

        Done where the worker reports it; when the enqueuer raises it again
        later (queued behind earlier data, rule 10), the frames it adds are
        dropped: the worker's are the ones that say where the chunk came from.
        """
        if not isinstance(err, (ChunkTypeError, ChunkValueError)) or self._fetch_fun is None:
            return
        pointed = self._pointed
        if pointed is not None and pointed[0] is err:
            err.__traceback__ = pointed[1]
            return
        point_at_fetcher(err, self._fetch_fun)
        if pointed is None:
            self._pointed = (err, err.__traceback__)

    def _start_workers(self) -> None:
        self.enqueuer_thread.start()
        self.flusher_thread.start()
        self.backend.start()
        if self.watchdog is not None:
            self.watchdog.start()

    def _halt(self) -> None:
        super()._halt()  # feeder.stop(): close the sink, then the channel
        self.backend.halt()
        self._flush_halted.set()
        if self.watchdog is not None:
            self.watchdog.halt()

    def _join(self, deadline: float, started: float) -> bool:
        ok = join_threads([self.enqueuer_thread], deadline, self.name, started)
        # The re-batcher's copy helper works only inside the enqueuer's fill:
        # closed now, it ends once a stuck enqueuer's copy (if any) is done.
        copier = self.feeder.rebatcher.close_helper()
        if copier is not None:
            ok = join_threads([copier], deadline, self.name, started) and ok
        ok = self.backend.join(deadline, started) and ok
        threads = [self.flusher_thread] + ([self.watchdog.thread] if self.watchdog else [])
        return join_threads(threads, deadline, self.name, started) and ok

    def _cleanup(self, joined: bool) -> None:
        # The re-batcher's chunks are given back unless the enqueuer (their
        # only user) is stuck; then their shared memory stays mapped (close()
        # leaves a mapping that still has views).
        queued_failure = self.feeder.release_buffers(
            include_rebatcher=not self.enqueuer_thread.is_alive())
        if queued_failure is not None:
            self.fail(queued_failure)
        if not self.enqueuer_thread.is_alive():
            self.feeder.sink.cleanup()  # drops lent batches: their shared memory goes back
        self.backend.close()

    def _flush_loop(self) -> None:
        """The flusher thread: the only caller of the external loggers.

        It never waits on the pipeline, so loggers are called on time even while
        the net is slower than the fetchers; a final flush runs at halt.
        """
        try:
            while not self._flush_halted.wait(self.config.log_interval_secs):
                self.feeder.log_interval()
            self.feeder.log_interval()
        except BaseException:  # noqa: B902 - a logging failure never stops the input
            logger.exception("flushing metrics of %s failed", self.words.input_named(self.name))

    # -- observation ----------------------------------------------------------
    def probe(self) -> StallProbe:
        """What the stall watchdog needs to name a stuck stage, in one snapshot."""
        feeder = self.feeder
        counters = feeder.counters.snapshot()
        return StallProbe(
            active=self.is_active(),
            batches_enqueued=counters.batches_enqueued,
            rows_fetched=counters.rows_fetched,
            enqueue_blocked_since=feeder.enqueue_blocked_since,
            rows_buffered=feeder.rebatcher.rows_buffered,
            batch_size=feeder.batch_size,
            chunks_queued=feeder.source.depth(),
            waiting_for=feeder.source.waiting_for(),
            input_source=self.config.input_source,
            scope=self.feeder.namescope)

    def _fetcher_locations(self, only: int | None) -> str:
        return self.backend.locations(only)

    def stats(self) -> InputStats:
        counters = self.feeder.counters.snapshot()
        failure = self.failure
        return InputStats(
            input_source=self.config.input_source,
            namescope=self.feeder.namescope,
            state=self.lifecycle.value,
            worker_type=self.config.worker_type,
            workers=len(self.worker_ids),
            worker_pids=tuple(p for p in self.backend.pids() if p is not None),
            **dataclasses.asdict(counters),
            chunk_queue_depth=self.feeder.source.depth(),
            rows_buffered=self.feeder.rebatcher.rows_buffered,
            max_buffered_batches=self.config.max_buffered_batches,
            failure=None if failure is None else repr(failure),
            input_bound=self.feeder.input_bound(),
        )

    def describe(self) -> str:
        stats = self.stats()
        return "%r %s, %d %s workers, %d batches, input-bound %.0f%%%s" % (
            self.name, stats.state, stats.workers, stats.worker_type, stats.batches_enqueued,
            100 * stats.input_bound, "" if self.failure is None else ", failed")
