"""The stall watchdog: one warning, naming the stuck stage, when no batch moves.

Enabled per input with ``init_data_input_workers(..., stall_warning_secs=S)``.
A daemon thread of the input watches its counters::

    fetchers --rows_fetched--> re-batcher --batches_enqueued--> Caffe2 queue --> net
       ^ "fetchers produced nothing"  ^ "re-batcher is waiting"   ^ "net has not dequeued"

When ``batches_enqueued`` has not moved for ``S`` seconds it logs ONE warning
(``logging.WARNING`` on ``data_workers._watchdog``) that names the stage:

* the enqueuer is blocked pushing a batch: the Caffe2 queue is full, so the
  net has not dequeued (the training loop stopped calling ``RunNet``, or is slow);
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
``_coordinator.py``), so it never delays ``stop()``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, List, Optional

from ._coordinator import join_threads, thread_stack

if TYPE_CHECKING:
    from ._input import InputCoordinator

__all__ = ["StallWatchdog", "STALL_FETCHERS", "STALL_REBATCHER", "STALL_NET"]

logger = logging.getLogger(__name__)

#: Stage names used in the warning (tests and log filters match on them).
STALL_FETCHERS = "fetchers produced nothing"
STALL_REBATCHER = "the re-batcher is waiting for rows"
STALL_NET = "the net has not dequeued: the Caffe2 queue is full"


class StallWatchdog:
    """Watches one input; see the module docstring.

    Args:
        coordinator: the input to watch.
        stall_secs: seconds without a batch moving before the warning.
    """

    def __init__(self, coordinator: "InputCoordinator", stall_secs: float) -> None:
        self._coordinator = coordinator
        self.stall_secs = float(stall_secs)
        self._halted = threading.Event()
        #: Warnings logged so far (one per stall), for tests and stats.
        self.warnings = 0
        self.thread = threading.Thread(
            target=self._run, daemon=True,
            name="data_workers %s%s watchdog" % (coordinator.config.namescope,
                                                 coordinator.config.input_source))

    def start(self) -> None:
        self.thread.start()

    def halt(self) -> None:
        """Wake the watchdog thread so it ends; idempotent, never blocks."""
        self._halted.set()

    def join(self, deadline: float) -> bool:
        return join_threads([self.thread], deadline, self._coordinator.name)

    def _poll_secs(self) -> float:
        return min(max(self.stall_secs / 4.0, 0.01), 1.0)

    def _run(self) -> None:
        feeder = self._coordinator.feeder
        values = feeder.counters.values()
        last_batches = values["batches_enqueued"]
        last_rows = values["rows_fetched"]
        last_move = time.monotonic()
        warned = False
        while not self._halted.wait(self._poll_secs()):
            if not self._coordinator.is_active():
                return
            values = feeder.counters.values()
            now = time.monotonic()
            if values["batches_enqueued"] != last_batches:
                last_batches = values["batches_enqueued"]
                last_rows = values["rows_fetched"]
                last_move = now
                warned = False  # re-arm: the next stall gets its own warning
                continue
            if warned or now - last_move < self.stall_secs:
                continue
            warned = True
            self.warnings += 1
            try:
                self._warn(now - last_move, values["rows_fetched"] - last_rows)
            except Exception:  # the watchdog must never take the input down
                logger.exception("stall watchdog of input %r failed", self._coordinator.name)

    def _warn(self, stalled: float, rows_during_stall: int) -> None:
        config = self._coordinator.config
        feeder = self._coordinator.feeder
        where = "input %r%s" % (config.input_source,
                                " (scope %r)" % config.namescope if config.namescope else "")
        if feeder.enqueue_blocked_since is not None:
            logger.warning(
                "%s: no batch moved for %.1f s: %s (the enqueuer has been waiting %.1f s "
                "to push a batch; is the training loop still calling RunNet?)",
                where, stalled, STALL_NET, time.monotonic() - feeder.enqueue_blocked_since)
            return
        buffered = feeder.rebatcher.rows_buffered
        turn = feeder.channel.waiting_for()
        if turn is not None and feeder.channel.depth() > 0:
            # deterministic=True: other workers' chunks wait for this one's turn.
            logger.warning(
                "%s: no batch moved for %.1f s: %s: deterministic order waits for fetcher "
                "%d while %d chunks of other fetchers are queued.%s",
                where, stalled, STALL_FETCHERS, turn, feeder.channel.depth(),
                self._fetcher_locations(only=turn))
            return
        if rows_during_stall > 0 or buffered > 0:
            logger.warning(
                "%s: no batch moved for %.1f s: %s (it has %d of %d rows; fetchers "
                "returned %d rows meanwhile, %d chunks queued)",
                where, stalled, STALL_REBATCHER, buffered, feeder.batch_size,
                rows_during_stall, feeder.channel.depth())
            return
        logger.warning("%s: no batch moved for %.1f s: %s in that time.%s",
                       where, stalled, STALL_FETCHERS, self._fetcher_locations())

    def _fetcher_locations(self, only: Optional[int] = None) -> str:
        """Where the fetchers are (``only``: that worker id): thread stacks, or pids."""
        fetchers = self._coordinator.fetchers
        ids = self._coordinator.worker_ids
        if self._coordinator.config.worker_type == "thread":
            threads: List[threading.Thread] = list(getattr(fetchers, "threads", None) or [])
            return "".join("\nfetcher thread %r is at:\n%s" % (t.name, thread_stack(t))
                           for wid, t in zip(ids, threads)
                           if t.is_alive() and only in (None, wid))
        pids: Optional[List[Optional[int]]] = getattr(fetchers, "pids", None)
        if pids:
            return " Fetcher processes: %s." % ", ".join(
                "%s (worker %d)" % (p, wid) for wid, p in zip(ids, pids) if only in (None, wid))
        return ""
