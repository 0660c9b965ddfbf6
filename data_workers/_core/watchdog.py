"""The stall watchdog: one warning, naming the stuck stage, when no batch moves.

Enabled per input with ``init_data_input_workers(..., stall_warning_secs=S)``.
A daemon thread of the input reads a frozen ``StallProbe`` of it::

    fetchers --rows_fetched--> re-batcher --batches_enqueued--> sink --> consumer
       ^ "fetchers produced nothing"  ^ "re-batcher is waiting"   ^ "consumer has not taken"

When ``batches_enqueued`` has not moved for ``S`` seconds it logs ONE warning
(``logging.WARNING`` on ``data_workers._core.watchdog``) that names the stage:

* the enqueuer is blocked pushing a batch: the sink is full, so its consumer
  has not taken a batch (the sink's ``full_hint`` says what to check: a Caffe2
  net that no longer runs, a loop that no longer calls ``next()``);
* fetchers returned rows during the stall, but fewer than a batch: the
  re-batcher is waiting for rows (it says how many it has of how many);
* fetchers returned nothing during the stall: with thread workers the warning
  includes every fetcher thread's current stack, i.e. where the user's
  ``fetch_fun`` is stuck (process workers: their pids);
* ``deterministic=True`` and the round-robin waits for one fetcher while the
  others' chunks queue up: the warning names that fetcher (and its stack).

The watchdog re-arms once a batch moves again, so a second, separate stall
gets its own warning.  It never raises and never stops the input: a stall may
be legitimate (a paused training loop), only the user can tell.  Its thread is
woken by ``halt()`` (NOTE [ Shutdown and error protocol ] in
``_core/coordinator.py``), so it never delays ``stop()``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Callable

from .words import FETCHER_WORDS, Words

__all__ = ["StallWatchdog", "StallProbe", "STALL_FETCHERS", "STALL_REBATCHER", "STALL_CONSUMER"]

logger = logging.getLogger(__name__)

#: Stage names used in the warning (tests and log filters match on them).  The
#: first names the workers in the sink's words: "workers produced nothing" for a loader.
STALL_NOTHING = "%ss produced nothing"
STALL_FETCHERS = STALL_NOTHING % FETCHER_WORDS.worker
STALL_REBATCHER = "the re-batcher is waiting for rows"
STALL_CONSUMER = "the consumer has not taken a batch"


@dataclasses.dataclass(frozen=True)
class StallProbe:
    """One input's progress and waits at one moment."""

    #: False once the input halted: the watchdog ends.
    active: bool
    batches_enqueued: int
    rows_fetched: int
    #: monotonic time the enqueuer began waiting on a full sink, else None.
    enqueue_blocked_since: float | None
    rows_buffered: int
    batch_size: int
    chunks_queued: int
    #: deterministic order: the worker whose chunk is needed next, if only one will do.
    waiting_for: int | None
    input_source: str
    #: The sink's scope (a Caffe2 name scope), or "".
    scope: str


class StallWatchdog:
    """Watches one input; see the module docstring.

    Args:
        thread_name: name of the watchdog thread.
        group: the input's name, for messages.
        probe: returns the input's current ``StallProbe``.
        locations: where the fetchers are (argument: one worker id, or None for all).
        stall_secs: seconds without a batch moving before the warning.
        full_hint: the sink's words for a consumer that stopped taking batches.
        words: the sink's nouns (``_core/words.py``).
    """

    def __init__(self, thread_name: str, group: str, probe: Callable[[], StallProbe],
                 locations: Callable[[int | None], str], stall_secs: float,
                 full_hint: str, words: Words = FETCHER_WORDS) -> None:
        self._group = group
        self._words = words
        self._nothing = STALL_NOTHING % words.worker
        self._full_hint = full_hint
        self._probe = probe
        self._locations = locations
        self.stall_secs = float(stall_secs)
        self._halted = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=thread_name + " watchdog")

    def start(self) -> None:
        self.thread.start()

    def halt(self) -> None:
        """Wake the watchdog thread so it ends; idempotent, never blocks."""
        self._halted.set()

    def _poll_secs(self) -> float:
        return min(max(self.stall_secs / 4.0, 0.01), 1.0)

    def _run(self) -> None:
        probe = self._probe()
        last_batches = probe.batches_enqueued
        last_rows = probe.rows_fetched
        last_move = time.monotonic()
        warned = False
        while not self._halted.wait(self._poll_secs()):
            probe = self._probe()
            if not probe.active:
                return
            now = time.monotonic()
            if probe.batches_enqueued != last_batches:
                last_batches = probe.batches_enqueued
                last_rows = probe.rows_fetched
                last_move = now
                warned = False  # re-arm: the next stall gets its own warning
                continue
            if warned or now - last_move < self.stall_secs:
                continue
            warned = True
            try:
                self._warn(probe, now - last_move, probe.rows_fetched - last_rows)
            except Exception:  # the watchdog must never take the input down
                logger.exception("stall watchdog of %s failed", self._words.input_named(self._group))

    def _warn(self, probe: StallProbe, stalled: float, rows_during_stall: int) -> None:
        where = "%s%s" % (self._words.input_named(probe.input_source),
                          " (scope %r)" % probe.scope if probe.scope else "")
        if probe.enqueue_blocked_since is not None:
            logger.warning(
                "%s: no batch moved for %.1f s: %s: %s (the enqueuer has been waiting "
                "%.1f s to push a batch)", where, stalled, STALL_CONSUMER, self._full_hint,
                time.monotonic() - probe.enqueue_blocked_since)
            return
        if probe.waiting_for is not None and probe.chunks_queued > 0:
            # deterministic=True: other workers' chunks wait for this one's turn.
            logger.warning(
                "%s: no batch moved for %.1f s: %s: deterministic order waits for %s "
                "%d while %d chunks of other %ss are queued.%s",
                where, stalled, self._nothing, self._words.worker, probe.waiting_for,
                probe.chunks_queued, self._words.worker, self._locations(probe.waiting_for))
            return
        if rows_during_stall > 0 or probe.rows_buffered > 0:
            logger.warning(
                "%s: no batch moved for %.1f s: %s (it has %d of %d rows; %ss "
                "returned %d rows meanwhile, %d chunks queued)",
                where, stalled, STALL_REBATCHER, probe.rows_buffered, probe.batch_size,
                self._words.worker, rows_during_stall, probe.chunks_queued)
            return
        logger.warning("%s: no batch moved for %.1f s: %s in that time.%s",
                       where, stalled, self._nothing, self._locations(None))
