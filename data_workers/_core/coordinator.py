"""Coordinators: the lifecycle, failure and shutdown logic shared by every worker group.

``WorkerGroup`` runs one named group of workers (for data inputs, one
input source in one name/device scope); ``GroupRegistry`` is the
registry the training loop talks to (``start`` / ``stop`` / ``check``).

NOTE [ Shutdown and error protocol ]
------------------------------------
Every module that waits, fails or cleans up points here.  Each rule names the
attack it answers.

1. Failures become values.  Every exception type raised in a worker thread
   (``SystemExit`` and ``KeyboardInterrupt`` included: a thread has nobody to
   propagate them to), in a worker process, in ``init_fun`` or in the
   re-batch/enqueue stage is caught at the top of that worker's loop, wrapped
   in a ``DataInputError`` subclass that says where (worker id, input source;
   the original is ``__cause__``) and handed to ``WorkerGroup.fail``.
2. ``fail`` keeps the first failure (later ones are usually its consequences:
   logged at debug level), moves RUNNING -> BROKEN and *halts*.  It is
   reported once: raised (rule 6), or, when the group is forgotten without
   anything raising it (``stop(raise_failure=False)``, the exit hook, a
   workspace reset, a second group's failure in the same ``stop()``), logged
   then, with its traceback.  A failure found while stopping (a worker process
   that died before it was asked to stop) is still recorded and raised by
   that ``stop()``.
3. Halting never blocks, is idempotent and is the same for a failure and for
   ``stop()``, downstream first: close the sink (a blocked enqueue returns; the
   net still receives every batch already in the Caffe2 queue, then its
   dequeue fails at once instead of waiting out its timeout), close the chunk
   channel (fetchers blocked on a full channel return), signal the workers
   (threads see the lifecycle, processes a flag in shared memory; a process
   that died is noticed by watching the process itself, never only through
   its data socket, which a backlog or an inheriting grandchild can hold up).
4. ``stop()`` has one deadline for the whole call (``timeout``, default
   ``STOP_TIMEOUT_SECS``): it first halts *every* group (STOPPING: nothing
   keeps fetching while another group is joined), then joins them all
   against that deadline, escalating for processes (terminate, then kill,
   each wait bounded), then cleans each group up: chunks still buffered are
   given back (their shared memory returns), the Caffe2 queue is drained and
   the scratch blobs and enqueue net are removed.  An error in one group's
   cleanup is recorded and the others are still cleaned.  A thread stuck
   inside user code (a fetcher, an external logger) cannot be interrupted:
   stop() logs where it is and returns False instead of hanging.
5. The registry forgets a group only once stop() ran to its end for it.  An
   exception that escapes stop() midway (Ctrl-C) leaves the group STOPPING and
   registered, so the next stop() finishes it; every cleanup step is idempotent.
6. The failure is raised once, where the training loop waits: by ``check()``
   if called, else by ``stop()`` after everything is stopped (so a
   ``try/finally: coordinator.stop()`` surfaces the real cause).  ``start()``
   raises an ``init_fun`` failure itself, as upstream did.
7. Every wait is woken by a close or bounded by a timeout that rechecks the
   lifecycle.  Every lock that ``stop()`` takes is reentrant, so ``stop()``
   called from a signal handler cannot deadlock on a lock the interrupted
   frame holds (a channel operation, ``start()``), and ``stats()`` reads the
   counters without a lock.  (If the handler interrupts ``check()`` or
   ``start()`` inside the group's lock, a worker that fails meanwhile waits for
   that lock: ``stop()`` then returns False at its deadline, never hangs.)  start() and
   stop() serialise on the group's lock: no thread starts after stop() began.
8. Only the process that built an input touches it.  A child forked by the
   trainer inherits its objects, shared memory and exit hook; there every
   shared-memory write, stop and exit hook is a no-op (owner pid checks,
   ``_core/exit_hook.py``).  One ``atexit`` hook, registered lazily at the first
   ``start()``, stops everything without raising.
9. A Caffe2 workspace outlives its inputs.  An input does all its Caffe2 work
   in the workspace that was current when it was built (captured then, never
   looked up per batch), and ``ResetWorkspace()`` of that workspace first
   stops the inputs that live in it, with a warning naming them
   (``_caffe2/workspace_guard.py``), and waits (up to ``STOP_TIMEOUT_SECS``) for any
   enqueuer there that outlived a ``stop()``'s deadline, or refuses the reset
   if one still runs: a reset can never free blob memory an enqueuer is
   writing to.  (A lend that finds its queue closed touches no blob at all;
   torch, which lending needs, is imported on a thread of its own.)  The reset forgets those
   inputs, so a failure one of them had is logged (rule 2), not raised by a
   later ``stop()``.
10. Data before failure.  What a worker (thread or process, in either order)
   produced before it failed reaches the consumer before its failure: every
   whole batch of those rows, in order, then the failure (the rows of a batch
   left incomplete are dropped with it).  A worker's failure travels in-band,
   as a failure marker queued behind its chunks (``Chunk.failure``; the
   channel takes it even when full, so a failing worker never waits on the
   consumer); a process's error report or death, seen at once by the process
   watcher, is held until the data path has read every message the child
   sent before it (``arena.sent`` at that moment), and at most
   ``FAILURE_GRACE_SECS`` (``_workers/processes.py``): past that the watcher
   fails the input itself, so a data path that never returns to that socket
   cannot hold a failure back.  The enqueuer, on taking a
   marker, drops what comes after it, pushes the whole batches before it and
   then raises the failure (rule 2).  The failure is known (``failure``,
   ``stats()``) from the moment it happens; ``check()`` raises it, and the
   sink closes, only from then on.  A marker never reached before a
   ``stop()`` is still that stop()'s failure, and a marker that finds the
   input halted fails it at once.  Only the consumer's pace delays a failure:
   once the batches before it are taken, the next dequeue fails promptly.
"""

from __future__ import annotations

import logging
import numbers
import os
import threading
import time
from typing import Any, Callable

from .errors import DataInputError, FetcherError, InputClosedError, PipelineError
from .exit_hook import register_exit_hook
from .lifecycle import Lifecycle
from .thread_util import join_threads
from .words import FETCHER_WORDS, Words

__all__ = ["WorkerGroup", "GroupRegistry", "STOP_TIMEOUT_SECS"]

logger = logging.getLogger(__name__)

#: How long ``stop()`` waits for every worker of every group together, unless
#: given ``timeout``.
STOP_TIMEOUT_SECS = 5.0

InitFun = Callable[[Any, Any], None]


class WorkerGroup:
    """One named group of workers with a lifecycle and a failure slot.

    Subclasses add their own workers through ``_start_workers`` / ``_halt`` /
    ``_join`` / ``_cleanup``.  This base runs plain threads (``parallel_workers``).

    Args:
        worker_name: the group's name (upstream: ``worker_name`` /
            ``input_source_name``).
        worker_ids: global ids of its workers.
        init_fun: called as ``init_fun(coordinator, global_coordinator)`` once,
            before any worker of any group starts.
        state: an object with ``start`` / ``stop`` / ``cleanup`` (upstream ``State``).
        shutdown_fun: called once when a started group stops.
    """

    #: The nouns of this group's messages; an input takes its sink's (``_core/words.py``).
    words: Words = FETCHER_WORDS

    def __init__(self, worker_name: str, worker_ids: list[int], init_fun: InitFun | None,
                 state: Any = None, shutdown_fun: Callable[[], None] | None = None) -> None:
        self.name = worker_name
        self.worker_ids = list(worker_ids)
        self.init_fun = init_fun
        self.state = state
        self.shutdown_fun = shutdown_fun
        self.threads: list[threading.Thread] = []
        self.lifecycle = Lifecycle.CREATED
        # Reentrant: see NOTE [ Shutdown and error protocol ], rule 7.
        self._lock = threading.RLock()
        self._init_lock = threading.Lock()
        self._failure: DataInputError | None = None
        #: A worker's failure on its way behind the data before it (rule 10).
        self._pending_failure: DataInputError | None = None
        self._failure_raised = False
        self._initialized = False
        self._was_started = False
        self._cleaned = False
        self._owner_pid = os.getpid()

    # -- queries --------------------------------------------------------
    def is_active(self) -> bool:
        """True while workers should keep working."""
        return self.lifecycle.accepts_work

    def get_worker_ids(self) -> list[int]:
        """Every worker id handed out so far, in order.

        Returns:
            A new list of ints.
        """
        return list(self.worker_ids)

    @property
    def failure(self) -> DataInputError | None:
        """The group's failure, or a worker's failure still behind its data (rule 10)."""
        return self._failure or self._pending_failure

    def note_failure(self, err: DataInputError) -> None:
        """Make a worker's failure known (``failure``, ``stats()``) before it fails
        the group, once the data before it is delivered (rule 10).  Never blocks."""
        if self._pending_failure is None:
            self._pending_failure = err

    @property
    def failure_unreported(self) -> bool:
        """True if the group failed and its failure was neither raised nor logged yet."""
        return self._failure is not None and not self._failure_raised

    def owned_here(self) -> bool:
        """False in a child forked by the process that built this group (rule 8)."""
        return os.getpid() == self._owner_pid

    # -- lifecycle --------------------------------------------------------
    def init(self, global_coordinator: Any) -> None:
        """Run ``init_fun`` once; its exception breaks the group and is raised."""
        # Its own lock: concurrent start() calls run init_fun once, and a stop()
        # meanwhile need not wait for init_fun (start() then raises InputClosedError).
        with self._init_lock:
            if self.init_fun is None or self._initialized:
                return
            self._initialized = True
            try:
                self.init_fun(self, global_coordinator)
            except BaseException as exc:  # noqa: B902 - rule 1: SystemExit too; else the
                # group would stay CREATED and a later start() would run its workers
                err = FetcherError.wrapping(exc, "init_fun of %r raised" % self.name, self.name, None)
                self.fail(err)
                self._failure_raised = True
                raise err

    def start(self) -> None:
        """CREATED -> RUNNING.  No-op when running or broken; error once stopping."""
        with self._lock:  # a stop() racing us waits until every worker started
            if self.lifecycle in (Lifecycle.STOPPING, Lifecycle.STOPPED):
                raise InputClosedError("%r was stopped; build a new one with init_*()" % self.name)
            if self.lifecycle is not Lifecycle.CREATED:
                return
            self.lifecycle = Lifecycle.RUNNING
            self._was_started = True
            if self.state is not None:
                self.state.start()
            self._start_workers()

    def fail(self, err: DataInputError) -> None:
        """Record a failure (the first one wins), log it once, halt the group.

        See NOTE [ Shutdown and error protocol ], rule 2.
        """
        with self._lock:
            if self._failure is not None or self.lifecycle is Lifecycle.STOPPED:
                logger.debug("%r: further failure after the first: %r", self.name, err)
                return
            self._failure = err
            if self.lifecycle in (Lifecycle.CREATED, Lifecycle.RUNNING):
                self.lifecycle = Lifecycle.BROKEN
        # Not logged here: raised once where the loop waits (rule 6), or
        # logged by report_unraised() if nothing will raise it.
        logger.debug("input %r failed: %s", self.name, err)
        self._halt()

    def begin_stop(self, halt: bool = True) -> None:
        """Halt the group for good (-> STOPPING).  Never blocks; idempotent.

        ``halt=False`` only moves the lifecycle (workers stop starting new
        work at once); the halting actions follow in a later call.
        """
        with self._lock:
            if self.lifecycle is Lifecycle.STOPPED:
                return
            self.lifecycle = Lifecycle.STOPPING
        if halt:
            self._halt()

    def finish_stop(self, deadline: float, started: float) -> bool:
        """Join against ``deadline``, then clean up (-> STOPPED).  Idempotent.

        Returns:
            True if every worker ended by itself.
        """
        if self.lifecycle is Lifecycle.STOPPED:
            return True
        self.begin_stop()
        if self._was_started and self.shutdown_fun is not None:
            shutdown_fun, self.shutdown_fun = self.shutdown_fun, None
            try:
                shutdown_fun()
            except Exception as exc:
                self._cleanup_failed("shutdown_fun", exc)
        success = self._join(deadline, started)
        if not self._cleaned:
            try:
                self._cleanup(success)
            except Exception as exc:
                self._cleanup_failed("cleanup", exc)
            self._cleaned = True
        with self._lock:
            self.lifecycle = Lifecycle.STOPPED
        logger.debug("%r stopped (all workers ended: %s)", self.name, success)
        return success

    def _cleanup_failed(self, what: str, exc: Exception) -> None:
        logger.error("%s of %r failed", what, self.name, exc_info=exc)
        err = PipelineError.wrapping(exc, "%s of %r failed while stopping:" % (what, self.name),
                                     self.name, None)
        with self._lock:
            if self._failure is None:
                self._failure = err

    def stop(self, timeout: float | None = None) -> bool:
        """Halt, join and clean up this group alone.  Idempotent.

        Returns:
            True if every worker ended within ``timeout`` (default ``STOP_TIMEOUT_SECS``).
        """
        started = time.monotonic()
        self.begin_stop()
        return self.finish_stop(started + _timeout(timeout), started)

    def _take_unreported(self) -> DataInputError | None:
        """The failure if nobody reported it yet, marking it reported; else None."""
        with self._lock:
            if self._failure is None or self._failure_raised:
                return None
            self._failure_raised = True
            return self._failure

    def report_unraised(self) -> None:
        """Log the group's failure if nothing raised it and nothing will (rule 2)."""
        err = self._take_unreported()
        if err is not None:
            logger.error("%s failed: %s", self.words.input_named(self.name), err, exc_info=err)

    def check(self) -> None:
        """Raise the group's failure, once (see NOTE [ Shutdown and error protocol ])."""
        err = self._take_unreported()
        if err is not None:
            raise err

    def describe(self) -> str:
        """One line for ``repr`` of the registry."""
        return "%r %s, %d workers%s" % (self.name, self.lifecycle.value, len(self.worker_ids),
                                        "" if self._failure is None else ", failed")

    # -- hooks for subclasses ------------------------------------------
    def _start_workers(self) -> None:
        for t in self.threads:
            t.daemon = True
            t.start()

    def _halt(self) -> None:
        if self.state is not None:
            try:
                self.state.stop()
            except Exception:
                logger.exception("stopping state of %r failed", self.name)

    def _join(self, deadline: float, started: float) -> bool:
        return join_threads(self.threads, deadline, self.name, started)

    def _cleanup(self, joined: bool) -> None:
        if self.state is not None and joined:
            self.state.cleanup()


def _timeout(timeout: float | None) -> float:
    if timeout is None:
        return STOP_TIMEOUT_SECS
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError("timeout must be a number of seconds >= 0 or None, got %s %r"
                        % (type(timeout).__name__, timeout))
    if not timeout >= 0:
        raise ValueError("timeout must be a number of seconds >= 0 or None, got %r" % (timeout,))
    return float(timeout)


class GroupRegistry:
    """The registry of worker groups that ``init_*`` returns (the same object each call)."""

    def __init__(self) -> None:
        # Reentrant: see NOTE [ Shutdown and error protocol ], rule 7.
        self._lock = threading.RLock()
        self.groups: list[WorkerGroup] = []
        self.next_worker_id = 0
        self.worker_ids: list[int] = []

    def add(self, coordinator: WorkerGroup) -> None:
        """Register a group (upstream internal; ``init_*`` calls it).

        Args:
            coordinator: the group to start and stop with the others.
        """
        with self._lock:
            self.groups.append(coordinator)

    def get_new_worker_id(self) -> int:
        """The next unused worker id: ids are unique across every group (upstream internal).

        Returns:
            0 for the first worker ever created, then 1, 2, ...
        """
        with self._lock:
            worker_id = self.next_worker_id
            self.next_worker_id += 1
            self.worker_ids.append(worker_id)
            return worker_id

    def get_worker_ids(self) -> list[int]:
        """Every worker id handed out so far, in order.

        Returns:
            A new list of ints.
        """
        return list(self.worker_ids)

    def _live_groups(self) -> list[WorkerGroup]:
        with self._lock:
            return [c for c in self.groups if c.owned_here()]

    def start(self) -> None:
        """Run every group's ``init_fun`` serially, then start every group.

        Call it once, after every ``init_*`` call and ``workspace.CreateNet``; the
        first call also registers the exit hook that stops workers still running
        when the interpreter exits.  ``with coordinator:`` calls it on entry.

        Raises:
            FetcherError: an ``init_fun`` raised; no group was started.
        """
        groups = self._live_groups()
        register_exit_hook(self)
        for c in groups:
            c.init(self)
        for c in groups:
            c.start()

    def check(self) -> None:
        """Raise the first failure of any group that has not been raised yet.

        Cheap enough to call every step.  Each failure is raised once: by
        ``check()`` or by ``stop()``, whichever comes first.

        Raises:
            DataInputError: the input's failure (``FetcherError``,
                ``WorkerDiedError``, ``ChunkTypeError``, ...).
        """
        for c in self._live_groups():
            c.check()

    def _stop_groups(self, groups: list[WorkerGroup], raise_failure: bool,
                     timeout: float | None) -> bool:
        """NOTE [ Shutdown and error protocol ], rules 4-6: halt all, join all, clean, forget."""
        started = time.monotonic()
        deadline = started + _timeout(timeout)
        # Every lifecycle first (cheap), then the halting actions (closing a
        # Caffe2 queue runs an operator): no group keeps fetching meanwhile.
        for c in groups:
            c.begin_stop(halt=False)
        for c in groups:
            c.begin_stop()
        success = True
        for c in groups:
            success = c.finish_stop(deadline, started) and success
            with self._lock:
                if c in self.groups:
                    self.groups.remove(c)
        first = next((c for c in groups if c.failure_unreported), None) if raise_failure else None
        for c in groups:
            if c is not first:
                c.report_unraised()
        if first is not None:
            first.check()
        return success

    def stop(self, raise_failure: bool = True, timeout: float | None = None) -> bool:
        """Stop every group and forget them.

        Halts every group, then waits for all of them against one deadline,
        however many are stuck.  Idempotent: a second call returns ``True`` at
        once.  ``with coordinator:`` calls it on exit, raising the input's failure
        even when the body raised.

        Args:
            raise_failure: raise the first failure not raised yet.
            timeout: seconds for the whole call to wait for workers (default
                5 s); a thread stuck in your code is left running, its stack
                logged; stuck process workers are then
                terminated and killed, which adds at most about 2 s.

        Returns:
            True if every worker ended within the timeout.

        Raises:
            DataInputError: the first failure of any group, unless already raised
                by ``check()`` (or ``raise_failure=False``).
        """
        with self._lock:
            if any(not c.owned_here() for c in self.groups):
                # A forked child: the groups are the parent's (rule 8).
                self.groups = [c for c in self.groups if c.owned_here()]
        return self._stop_groups(self._live_groups(), raise_failure, timeout)

    def stop_coordinator(self, worker_name: str) -> bool:
        """Stop and forget the groups named ``worker_name``; the others keep running.

        Args:
            worker_name: the ``input_source_name`` (``worker_name`` for
                ``parallel_workers``) of the groups to stop, e.g. ``"val"``.

        Returns:
            True if every worker of those groups ended within 5 s.

        Raises:
            DataInputError: the first failure of those groups not raised yet.
        """
        groups = [c for c in self._live_groups() if c.name == worker_name]
        return self._stop_groups(groups, raise_failure=True, timeout=None)

    def __repr__(self) -> str:
        groups = self._live_groups()
        return "%s(%s)" % (type(self).__name__, "; ".join(c.describe() for c in groups)
                           if groups else "no inputs")

    def __enter__(self) -> "GroupRegistry":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        # Raise the input's failure even when the body raised: a net that
        # failed on a closed queue is a consequence, the failure is the cause.
        self.stop()
