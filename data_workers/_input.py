"""One data input: its configuration, its re-batch/enqueue stage and its coordinator.

Threads of one input (the whole pipeline is drawn once, in ``data_workers/__init__.py``)::

    fetcher threads, or receiver threads of worker processes
        --put()--> ChunkChannel --get()--> enqueuer thread: Rebatcher -> Caffe2Feed -> BlobsQueue

``BatchFeeder`` is everything between the fetchers and the Caffe2 queue;
``InputCoordinator`` owns its threads and its lifecycle.

Failure and shutdown: NOTE [ Shutdown and error protocol ] in ``_coordinator.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from caffe2.proto import caffe2_pb2

from ._channel import ChunkChannel, FifoChannel, RoundRobinChannel
from ._compat import BatchFeederInternals
from ._coordinator import InitFun, WorkerCoordinator, join_threads
from ._enqueue import Caffe2Feed
from ._errors import DataInputError, PipelineError
from ._metrics import InputCounters, InputStats, Metrics
from ._rebatch import Rebatcher
from ._validate import Chunk, ChunkValidator
from ._watchdog import StallWatchdog
from .parallel_workers import State

__all__ = ["InputConfig", "BatchFeeder", "InputCoordinator", "enqueuer"]

logger = logging.getLogger(__name__)

#: Seconds between inputs/sec log lines and external-logger flushes (upstream: 60).
LOG_INT_SECS = 60.0
#: How long the enqueuer waits for a chunk before rechecking the lifecycle.
_POLL_SECS = 0.5


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """Everything ``init_data_input_workers`` was told about one input, validated."""

    blob_names: Sequence[str]
    batch_size: int
    input_source: str
    namescope: str
    device_option: caffe2_pb2.DeviceOption
    num_workers: int
    max_buffered_batches: int
    dont_rebatch: bool
    batch_columns: Sequence[int]
    timeout: float
    worker_type: str
    deterministic: bool
    seed: Optional[int]
    log_interval_secs: float = LOG_INT_SECS
    shm_bytes_per_worker: Optional[int] = None


class BatchFeeder(State, BatchFeederInternals):
    """The re-batch/enqueue stage of one input (upstream's ``BatchFeeder`` role).

    Fetchers ``put`` their output here; the enqueuer thread calls
    ``_enqueue_batch`` in a loop, which moves chunks from the channel through
    the re-batcher into the Caffe2 queue.
    """

    def __init__(self, config: InputConfig, worker_ids: Sequence[int], metrics: Metrics) -> None:
        self.config = config
        self.blob_names = list(config.blob_names)
        self.namescope = config.namescope
        self.input_source = config.input_source
        self.batch_size = config.batch_size
        #: Called with the new size by set_batch_size (process workers share it).
        self.batch_size_hooks: List[Callable[[int], None]] = []
        self.metrics = metrics
        self.counters = InputCounters()
        self.validator = ChunkValidator(self.blob_names, config.batch_columns,
                                        config.dont_rebatch, config.input_source)
        self.rebatcher = Rebatcher(config.batch_columns, config.batch_size, config.dont_rebatch,
                                   name="data_workers %s%s" % (config.namescope, config.input_source))
        self.channel: ChunkChannel
        if config.deterministic:
            per_worker = max(1, -(-config.max_buffered_batches // max(1, len(worker_ids))))
            self.channel = RoundRobinChannel(worker_ids, per_worker)
        else:
            self.channel = FifoChannel(config.max_buffered_batches)
        self.caffe2 = Caffe2Feed(self.blob_names, config.namescope, config.input_source,
                                 config.device_option, config.timeout)
        self._last_log = time.monotonic()
        self._logged_inputs = 0
        #: monotonic time the enqueuer began pushing a batch it has not pushed
        #: yet (the Caffe2 queue is full), else None; read by the stall watchdog.
        self.enqueue_blocked_since: Optional[float] = None

    # -- State ------------------------------------------------------------
    def start(self) -> None:
        self.counters.started()
        self._last_log = time.monotonic()

    def stop(self) -> None:
        """Halt, downstream first; never blocks (NOTE [ Shutdown and error protocol ])."""
        self.caffe2.close()
        self.channel.close()

    def cleanup(self) -> None:
        """Release what is still buffered and the scratch blobs; flush metrics."""
        self.release_buffers()
        self.caffe2.cleanup()
        self._log_interval(force=True)

    def release_buffers(self, include_rebatcher: bool = True) -> None:
        """Give back the memory of chunks that will never be batched (on stop)."""
        left = self.channel.drain()
        dropped = sum(c.rows for c in left)
        for chunk in left:
            chunk.done()
        if include_rebatcher:
            dropped += self.rebatcher.release_all()
        if dropped:
            logger.debug("input %r stopped with %d rows not yet batched", self.input_source, dropped)

    # -- fetcher side -----------------------------------------------------
    def accept(self, worker_id: int, output: Any) -> Optional[Chunk]:
        """Validate fetcher output and count it.  Raises ChunkTypeError/ChunkValueError."""
        chunk = self.validator.check(worker_id, output, self.batch_size)
        if chunk is None:
            self.counters.skipped()
            logger.warning("fetcher %d of input %r returned %s; skipped", worker_id,
                           self.input_source, "None" if output is None else "no rows")
            return None
        self.counters.fetched(chunk.rows)
        return chunk

    def put(self, output: Any, coordinator: Optional[WorkerCoordinator] = None,
            worker_id: int = -1) -> bool:
        """Validate one fetcher result and queue it for re-batching.

        Blocks while the channel is full.  Returns False if the input stopped.
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

    def set_batch_size(self, batch_size: int) -> None:
        """Change the batch size; applies from the next batch, no row is lost."""
        self.batch_size = batch_size
        self.rebatcher.batch_size = batch_size
        for hook in self.batch_size_hooks:
            hook(batch_size)

    # -- enqueuer side ----------------------------------------------------
    def _enqueue_batch(self, coordinator: WorkerCoordinator) -> None:
        """One step of the enqueuer: take the ready chunks, push every batch they complete."""
        for chunk in self.channel.get_ready(timeout=_POLL_SECS):
            self.rebatcher.add(chunk)
        while coordinator.is_active():
            rows = self.rebatcher.next_batch_rows()
            if rows is None:
                break
            started = time.monotonic()
            dests = self.caffe2.destinations(self.rebatcher.batch_layout(rows))
            self.rebatcher.fill(dests, rows)
            self.enqueue_blocked_since = started
            try:
                pushed = self.caffe2.enqueue(dests)
            finally:
                self.enqueue_blocked_since = None
            if not pushed:
                return  # queue closed: the input is stopping
            self.counters.enqueued(rows)
            self.metrics.put_metric("enqueue_time", time.monotonic() - started)
        self._log_interval()

    def _log_interval(self, force: bool = False) -> None:
        now = time.monotonic()
        delta = now - self._last_log
        if delta < self.config.log_interval_secs and not force:
            return
        rows = self.counters.values()["rows_enqueued"]
        per_sec = int((rows - self._logged_inputs) / delta) if delta > 0 else 0
        depth = self.channel.depth()
        logger.info("%s/%s: %d inputs/sec, %d chunks queued",
                    self.input_source, self.namescope, per_sec, depth)
        self.metrics.put_metric("inputs_per_sec", per_sec, False)
        self.metrics.put_metric("queue_size", depth, False)
        self.metrics.put_metric("time_elapsed", delta, False)
        self.metrics.log_metrics()
        self.metrics.reset_metrics()
        self._logged_inputs = rows
        self._last_log = now


def enqueuer(coordinator: WorkerCoordinator, batch_feeder: BatchFeeder) -> None:
    """The enqueuer thread: move batches into Caffe2 until the input stops or fails."""
    try:
        while coordinator.is_active():
            batch_feeder._enqueue_batch(coordinator)
    except DataInputError as e:
        coordinator.fail(e.where(batch_feeder.input_source, None))
    except Exception as e:
        err = PipelineError("re-batching/enqueue of input %r failed: %s: %s"
                            % (batch_feeder.input_source, type(e).__name__, e))
        err.__cause__ = e
        coordinator.fail(err.where(batch_feeder.input_source, None))


class InputCoordinator(WorkerCoordinator):
    """Coordinates one input: its fetchers, its enqueuer thread and its feeder."""

    def __init__(self, config: InputConfig, worker_ids: List[int], init_fun: Optional[InitFun],
                 feeder: BatchFeeder) -> None:
        super().__init__(config.input_source, worker_ids, init_fun, state=feeder)
        self.config = config
        self.feeder = feeder
        self.fetchers: Any = None  # ThreadFetchers or ProcessFetchers, set by the builder
        self.watchdog: Optional[StallWatchdog] = None  # set by the builder if asked for
        self.enqueuer_thread = threading.Thread(
            target=enqueuer, args=(self, feeder), daemon=True,
            name="data_workers %s%s enqueuer" % (config.namescope, config.input_source))

    def _start_workers(self) -> None:
        self.enqueuer_thread.start()
        self.fetchers.start()
        if self.watchdog is not None:
            self.watchdog.start()

    def _halt(self) -> None:
        super()._halt()  # feeder.stop(): close the Caffe2 queue and the channel
        if self.fetchers is not None:
            self.fetchers.halt()
        if self.watchdog is not None:
            self.watchdog.halt()

    def _join(self, deadline: float) -> bool:
        ok = join_threads([self.enqueuer_thread], deadline, self.name)
        ok = self.fetchers.join(deadline) and ok
        if self.watchdog is not None:
            ok = self.watchdog.join(deadline) and ok
        if not ok:
            self.release_leftovers()  # cleanup() is skipped when something is stuck
        return ok

    def release_leftovers(self) -> None:
        """Give back the chunks in the channel, and the re-batcher's unless the
        enqueuer thread (the re-batcher's only user) is still running, i.e. stuck."""
        self.feeder.release_buffers(include_rebatcher=not self.enqueuer_thread.is_alive())

    def stats(self) -> InputStats:
        values: Dict[str, Any] = self.feeder.counters.values()
        failure = self.failure
        return InputStats(
            input_source=self.config.input_source,
            namescope=self.config.namescope,
            state=self.lifecycle.value,
            worker_type=self.config.worker_type,
            workers=len(self.worker_ids),
            chunk_queue_depth=self.feeder.channel.depth(),
            rows_buffered=self.feeder.rebatcher.rows_buffered,
            failure=None if failure is None else repr(failure),
            **values,
        )
