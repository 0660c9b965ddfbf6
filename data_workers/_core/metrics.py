"""Counters, the upstream metrics dict for external loggers, and frozen stats.

Two views of the same numbers:

* ``Metrics``: upstream's accumulate-and-flush dict (``put_metric`` /
  ``log_metrics`` / ``reset_metrics``), handed to external loggers with the
  upstream keys.  Unlike upstream, every mutation holds one lock, and a logger
  receives a copy it may keep.
* ``InputStats``: an immutable snapshot returned by ``stats()``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, NamedTuple, Protocol
from collections.abc import Iterable

logger = logging.getLogger(__name__)

__all__ = ["Metrics", "ExternalLogger", "InputStats", "InputCounters", "CounterSnapshot"]


class ExternalLogger(Protocol):
    """Anything with a ``log(metrics)`` method, e.g. a TensorBoard writer wrapper.

    Pass a list of them as ``external_loggers=``.

    Usage::

        class PrintRate:
            def log(self, metrics):
                print("inputs/s:", metrics.get("inputs_per_sec"))

        data_workers.init_data_input_workers(net, ["data", "label"], fetch, 32,
                                             external_loggers=[PrintRate()])
    """

    def log(self, metrics: dict[str, Any]) -> None:
        """Receive the metrics gathered since the last call, every ``log_interval_secs``.

        Called from the input's flusher thread.  An exception is logged and the
        logger is called again next time; it never stops the input.

        Args:
            metrics: a new dict the logger may keep: the upstream keys
                ``inputs_per_sec``, ``queue_size``, ``time_elapsed``,
                ``fetcher_time``, ``enqueue_time``, ``worker_time`` and their
                ``_count`` keys (sums and counts since the last call).
        """


class Metrics:
    """Accumulates numeric metrics and flushes them to external loggers.

    Keys follow upstream: ``put_metric("fetcher_time", 0.01)`` adds to
    ``fetcher_time`` and increments ``fetcher_time_count``.

    Args:
        external_loggers: objects with a ``log(dict)`` method, or None.
    """

    def __init__(self, external_loggers: Iterable[ExternalLogger] | None = None) -> None:
        # Reentrant: NOTE [ Shutdown and error protocol ], rule 7 (_core/coordinator.py).
        self._lock = threading.RLock()
        self._metrics: dict[str, float] = {}
        self._external_loggers = list(external_loggers or [])

    def put_metric(self, key: str, value: float, count: bool = True) -> None:
        with self._lock:
            self._metrics[key] = self._metrics.get(key, 0) + value
            if count:
                count_key = key + "_count"
                self._metrics[count_key] = self._metrics.get(count_key, 0) + 1

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._metrics)

    def reset_metrics(self) -> None:
        with self._lock:
            self._metrics = {}

    def take(self) -> dict[str, float]:
        """Return the accumulated metrics and start afresh, in one step.

        One lock for both: a ``put_metric`` from a fetcher between a separate
        read and reset would be lost.
        """
        with self._lock:
            current, self._metrics = self._metrics, {}
            return current

    def flush(self) -> None:
        """Hand the metrics accumulated since the last flush to the loggers, then reset."""
        self._send(self.take())

    def log_metrics(self) -> None:
        """Hand a copy of the current metrics to each external logger (upstream name).

        A logger that raises is logged and skipped; it never stops the input.
        """
        if self._external_loggers:
            self._send(self.snapshot())

    def _send(self, current: dict[str, float]) -> None:
        for ext in self._external_loggers:
            try:
                ext.log(dict(current))
            except Exception:
                logger.exception("external logger %r failed", ext)


@dataclasses.dataclass(frozen=True)
class InputStats:
    """A frozen snapshot of one input's counters, returned by ``stats()``."""

    #: The ``input_source_name`` given to ``init_data_input_workers``.
    input_source: str
    #: The Caffe2 name scope captured at init (e.g. ``"gpu_0/"``), or ``""``.
    namescope: str
    #: Lifecycle state name: created, running, broken, stopping or stopped.
    state: str
    #: ``"thread"`` or ``"process"``.
    worker_type: str
    #: Number of fetcher workers.
    workers: int
    #: Process ids of the worker processes (``()`` for thread workers or before start).
    worker_pids: tuple[int, ...]
    #: Chunks returned by fetchers and accepted (not None, not empty).
    chunks_fetched: int
    #: Rows in those chunks.
    rows_fetched: int
    #: Chunks skipped because a fetcher returned None or zero rows.
    chunks_skipped: int
    #: Fetcher exceptions skipped under ``max_fetch_failures``.
    fetch_failures: int
    #: Batches pushed into the Caffe2 queue.
    batches_enqueued: int
    #: Rows in those batches.
    rows_enqueued: int
    #: Of those batches, how many went to the sink uncopied (process workers:
    #: whole batches lent from a worker's shared memory).
    batches_lent: int
    #: Chunks waiting between the fetchers and the re-batcher.
    chunk_queue_depth: int
    #: The most chunks that may wait there (``max_buffered_batches``).
    max_buffered_batches: int
    #: Rows held by the re-batcher for the next batch.
    rows_buffered: int
    #: Rows enqueued per second since start().
    inputs_per_sec: float
    #: Seconds since start() (0 before).
    elapsed_secs: float
    #: ``repr`` of the failure that broke the input, if any.
    failure: str | None
    #: Share of the recent past (the last one to two ``log_interval_secs``, or
    #: since start) in which the consumer -- the net's dequeue, the loop's
    #: ``next()`` -- waited for a batch: near 0 the input keeps up, near 1
    #: training waits on input (more or other workers: ``python -m data_workers profile``).
    input_bound: float = 0.0

    def __repr__(self) -> str:
        return ("InputStats(%r, %s, %d %s workers, %d batches, %.0f rows/s, input-bound %.0f%%%s)"
                % (self.input_source, self.state, self.workers, self.worker_type,
                   self.batches_enqueued, self.inputs_per_sec, 100 * self.input_bound,
                   "" if self.failure is None else ", failure=" + self.failure))


class InputCounters:
    """Mutable counters behind ``InputStats``.

    Writers (fetchers, the enqueuer) serialise on one lock and publish a new
    immutable tuple; readers (``stats()``, the flusher, the watchdog) take no
    lock at all.  A reader may be the main thread interrupted by a signal
    handler that calls ``stop()``: had it held the writers' lock, every fetcher
    and the flusher would block on it and stop() would wait out its deadline
    (NOTE [ Shutdown and error protocol ], rule 7, ``_core/coordinator.py``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # writers only
        self._values = _Counts()
        self.started_at: float | None = None

    def started(self) -> None:
        self.started_at = time.monotonic()

    def _add(self, **deltas: int) -> None:
        with self._lock:
            values = self._values
            self._values = values._replace(
                **{name: getattr(values, name) + delta for name, delta in deltas.items()})

    def fetched(self, rows: int, chunks: int = 1) -> None:
        self._add(chunks_fetched=chunks, rows_fetched=rows)

    def skipped(self) -> None:
        self._add(chunks_skipped=1)

    def fetch_failed(self) -> None:
        self._add(fetch_failures=1)

    def enqueued(self, rows: int, lent: bool = False) -> None:
        self._add(batches_enqueued=1, rows_enqueued=rows, batches_lent=int(lent))

    def snapshot(self) -> "CounterSnapshot":
        """A consistent snapshot, without a lock (one read of the published tuple)."""
        values = self._values
        started_at = self.started_at
        elapsed = 0.0 if started_at is None else time.monotonic() - started_at
        return CounterSnapshot(
            **values._asdict(), elapsed_secs=elapsed,
            inputs_per_sec=values.rows_enqueued / elapsed if elapsed > 0 else 0.0)


class _Counts(NamedTuple):
    """The published counter values: replaced whole, never mutated."""

    chunks_fetched: int = 0
    rows_fetched: int = 0
    chunks_skipped: int = 0
    fetch_failures: int = 0
    batches_enqueued: int = 0
    rows_enqueued: int = 0
    batches_lent: int = 0


@dataclasses.dataclass(frozen=True)
class CounterSnapshot:
    """The counters of ``InputCounters`` at one moment (fields as in ``InputStats``)."""

    chunks_fetched: int
    rows_fetched: int
    chunks_skipped: int
    fetch_failures: int
    batches_enqueued: int
    rows_enqueued: int
    batches_lent: int
    elapsed_secs: float
    inputs_per_sec: float
