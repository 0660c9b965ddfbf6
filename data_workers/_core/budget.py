"""The fetch-failure budget of one input (``max_fetch_failures``).

Real data has corrupt records: one truncated JPEG in millions, a malformed
line.  By default a fetcher exception fails the input (NOTE [ Shutdown and
error protocol ], ``_core/coordinator.py``); with a budget the input skips it,
logs it and counts it, and only an exception beyond the budget fails it::

    0            no exception is skipped (the default)
    N (int > 0)  up to N exceptions are skipped; the next one fails the input
    f (0 < f < 1)  an exception is skipped while the exceptions so far, this one
                 included, are at most f * max(calls, 100): a fraction of the
                 fetch calls made so far, the first 100 calls counting as 100

Only exceptions ``fetch_fun`` raises (``Exception`` subclasses) are skipped.  A
worker process that dies, output that fails validation (``ChunkTypeError`` /
``ChunkValueError``) and ``SystemExit`` / ``KeyboardInterrupt`` are never
skipped: they are not a bad record but a broken fetcher.

A skipped call keeps the position exact: in deterministic order it still is
that worker's turn (an empty turn marker), and the input records which turn
it was, so that a ``ShardedSource`` checkpoint counts the block it skipped.

``Loader(dataset, ...)`` charges one failing ``__getitem__`` (one sample) at a
time, with its own count of calls (samples loaded) and wording (``unit``,
``what``); the rules above are the same.

Caffe2-free; the budget is kept in the trainer, for all workers together.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Union

from .metrics import InputCounters, Metrics
from .words import FETCHER_WORDS, Words

__all__ = ["FetchFailureBudget", "FractionOrCount"]

logger = logging.getLogger(__name__)

#: ``max_fetch_failures``: a count (int) or a fraction of fetch calls (float).
FractionOrCount = Union[int, float]

#: A fraction is taken of at least this many calls: the first failures of a run
#: are not judged against a handful of calls.
MIN_CALLS = 100
#: At most one log line per this many seconds about skipped failures.
LOG_EVERY_SECS = 10.0


class FetchFailureBudget:
    """Decides, counts and logs the fetcher exceptions an input skips.

    Args:
        limit: ``max_fetch_failures`` as checked by ``check_max_fetch_failures``.
        input_source: names the input in log lines.
        counters: where a skipped exception is counted (``stats().fetch_failures``).
        metrics: where it is counted for external loggers (``fetch_failures``).
        unit: what one skipped exception is, in log lines and ``note()``
            (default: ``words.exceptions``).
        words: the sink's nouns (``_core/words.py``).
    """

    def __init__(self, limit: FractionOrCount, input_source: str, counters: InputCounters,
                 metrics: Metrics, unit: str | None = None,
                 words: Words = FETCHER_WORDS) -> None:
        self.limit = limit
        self.unit = unit or words.exceptions
        self._input_source = input_source
        self._words = words
        self._counters = counters
        self._metrics = metrics
        self._lock = threading.Lock()
        self._skipped = 0
        self._last_log = -math.inf
        self._unlogged = 0

    @property
    def enabled(self) -> bool:
        return self.limit != 0

    def charge(self, worker_id: int, exc: BaseException, calls: int | None = None,
               what: str | None = None) -> bool:
        """Count one exception of ``fetch_fun``; True if it is skipped (within budget).

        ``exc`` carries the remote traceback as ``__cause__`` for process workers;
        it is logged with it, at most once per ``LOG_EVERY_SECS``.  ``calls``:
        the calls made so far, this one included (default: the fetch calls the
        counters saw); ``what``: who raised, for the log line (default: the fetcher).
        """
        if not self.enabled or not isinstance(exc, Exception):
            return False
        with self._lock:
            if calls is None:
                snap = self._counters.snapshot()
                calls = snap.chunks_fetched + snap.chunks_skipped + snap.fetch_failures + 1
            if isinstance(self.limit, float):
                allowed = self.limit * max(calls, MIN_CALLS)
            else:
                allowed = self.limit
            if self._skipped + 1 > allowed:
                return False
            self._skipped += 1
            self._counters.fetch_failed()
            now = time.monotonic()
            log = now - self._last_log >= LOG_EVERY_SECS
            unlogged = self._unlogged
            if log:
                self._last_log, self._unlogged = now, 0
            else:
                self._unlogged += 1
        self._metrics.put_metric("fetch_failures", 1)
        if log:
            logger.warning(
                "%s: %s raised %s: %s; skipped (%d %s skipped so far, "
                "max_fetch_failures=%r%s)", self._words.input_named(self._input_source),
                "%s %d" % (self._words.worker, worker_id) if what is None else what,
                type(exc).__name__, exc, self._skipped, self.unit, self.limit,
                "; %d more since the last such line" % unlogged if unlogged else "",
                exc_info=exc)
        return True

    def note(self) -> str:
        """What a failure beyond the budget adds to its message ("" without a budget)."""
        if not self.enabled:
            return ""
        return " (after %d %s skipped; max_fetch_failures=%r)" % (
            self._skipped, self.unit, self.limit)
