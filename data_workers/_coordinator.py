"""Coordinators: the lifecycle, failure and shutdown logic shared by every worker group.

``WorkerCoordinator`` runs one named group of workers (for data inputs, one
input source in one name/device scope); ``GlobalWorkerCoordinator`` is the
registry the training loop talks to (``start`` / ``stop`` / ``check``).

NOTE [ Shutdown and error protocol ]
------------------------------------
Every module that waits or fails points here.

1. Failures become values.  An exception in a fetcher (thread or process), in
   ``init_fun`` or in the re-batch/enqueue stage is caught at the top of that
   worker's loop, wrapped in a ``DataInputError`` subclass that says where it
   happened (worker id, input source; the original is ``__cause__``) and handed
   to ``WorkerCoordinator.fail``.  Nothing is printed and dropped.
2. ``fail`` keeps the first failure only (later ones are usually its
   consequences and are logged at debug level), logs it once with its
   traceback, moves the group RUNNING -> BROKEN and *halts* it.
3. Halting is the same for a failure and for ``stop()``, downstream first:
   close the Caffe2 queue (a blocked enqueue returns; the net's dequeue still
   receives every batch already queued, then fails at once instead of waiting
   out its timeout), close the chunk channel (fetchers blocked on a full
   channel return), and signal the workers (threads check a flag between
   fetches, processes get an event).  Halting is idempotent and never blocks.
4. ``stop()`` halts, then joins everything it started against one deadline
   (``STOP_TIMEOUT_SECS``), escalating for processes (terminate, then kill),
   releases chunks still buffered (their shared memory goes back) and the
   scratch blobs.  A thread stuck inside user code cannot be interrupted: stop
   logs where it is stuck and returns False instead of hanging.
5. The failure is raised once, where the training loop waits: by
   ``check()`` if called, else by ``stop()`` after everything is stopped (so a
   ``try/finally: coordinator.stop()`` surfaces the real cause).  ``start()``
   raises an ``init_fun`` failure itself, as upstream did.
6. Every wait is woken by a close or bounded by a timeout that rechecks the
   lifecycle; nothing waits on a dead producer.  At interpreter exit one
   ``atexit`` hook, registered lazily at the first ``start()``, stops
   everything without raising.
"""

from __future__ import annotations

import atexit
import logging
import sys
import threading
import time
import traceback
import weakref
from typing import Any, Callable, List, Optional

from ._compat import GlobalCoordinatorInternals, WorkerCoordinatorInternals
from ._errors import DataInputError, FetcherError, InputClosedError
from ._lifecycle import Lifecycle

__all__ = ["WorkerCoordinator", "GlobalWorkerCoordinator", "STOP_TIMEOUT_SECS"]

logger = logging.getLogger(__name__)

#: How long ``stop()`` waits for all of a group's workers together.
STOP_TIMEOUT_SECS = 5.0

InitFun = Callable[[Any, Any], None]


def thread_stack(thread: threading.Thread) -> str:
    """The current stack of a running thread, for 'stuck here' messages."""
    frame = sys._current_frames().get(thread.ident or -1)
    return "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)\n"


class WorkerCoordinator(WorkerCoordinatorInternals):
    """One named group of workers with a lifecycle and a failure slot.

    Subclasses add their own workers through ``_start_workers`` / ``_halt`` /
    ``_join``.  This base runs plain threads (``parallel_workers``).

    Args:
        worker_name: the group's name (upstream: ``worker_name`` /
            ``input_source_name``).
        worker_ids: global ids of its workers.
        init_fun: called as ``init_fun(coordinator, global_coordinator)`` once,
            before any worker of any group starts.
        state: an object with ``start`` / ``stop`` / ``cleanup`` (upstream ``State``).
        shutdown_fun: called once when a started group stops.
    """

    def __init__(self, worker_name: str, worker_ids: List[int], init_fun: Optional[InitFun],
                 state: Any = None, shutdown_fun: Optional[Callable[[], None]] = None) -> None:
        self.name = worker_name
        self.worker_ids = list(worker_ids)
        self.init_fun = init_fun
        self.state = state
        self.shutdown_fun = shutdown_fun
        self.threads: List[threading.Thread] = []
        self.lifecycle = Lifecycle.CREATED
        self._lock = threading.RLock()
        self._failure: Optional[DataInputError] = None
        self._failure_raised = False
        self._initialized = False

    # -- queries --------------------------------------------------------
    def is_active(self) -> bool:
        """True while workers should keep working."""
        return self.lifecycle.accepts_work

    def get_worker_ids(self) -> List[int]:
        return list(self.worker_ids)

    @property
    def failure(self) -> Optional[DataInputError]:
        return self._failure

    # -- lifecycle --------------------------------------------------------
    def init(self, global_coordinator: Any) -> None:
        """Run ``init_fun`` once; its exception breaks the group and is raised."""
        if self.init_fun is None or self._initialized:
            return
        self._initialized = True
        try:
            self.init_fun(self, global_coordinator)
        except Exception as exc:
            err = FetcherError("init_fun of %r raised %s: %s" % (self.name, type(exc).__name__, exc))
            err.__cause__ = exc
            self.fail(err.where(self.name, None))
            self._failure_raised = True
            raise err

    def start(self) -> None:
        """CREATED -> RUNNING.  No-op when running or broken; error once stopped."""
        with self._lock:
            if self.lifecycle is Lifecycle.STOPPED:
                raise InputClosedError("%r was stopped; build a new one with init_*()" % self.name)
            if self.lifecycle is not Lifecycle.CREATED:
                return
            self.lifecycle = Lifecycle.RUNNING
        if self.state is not None:
            self.state.start()
        self._start_workers()

    def fail(self, err: DataInputError) -> None:
        """Record a failure (the first one wins), log it once, halt the group.

        See NOTE [ Shutdown and error protocol ].
        """
        with self._lock:
            if self._failure is not None or self.lifecycle is Lifecycle.STOPPED:
                logger.debug("%r: further failure after the first: %r", self.name, err)
                return
            self._failure = err
            if self.lifecycle in (Lifecycle.CREATED, Lifecycle.RUNNING):
                self.lifecycle = Lifecycle.BROKEN
        logger.error("input %r failed: %s", self.name, err, exc_info=err)
        self._halt()

    def stop(self) -> bool:
        """Halt and join.  Idempotent.  Returns True if every worker ended."""
        with self._lock:
            if self.lifecycle is Lifecycle.STOPPED:
                return True
            was_started = self.lifecycle in (Lifecycle.RUNNING, Lifecycle.BROKEN)
            self.lifecycle = Lifecycle.STOPPED
        self._halt()
        if was_started and self.shutdown_fun is not None:
            try:
                self.shutdown_fun()
            except Exception:
                logger.exception("shutdown_fun of %r failed", self.name)
        deadline = time.monotonic() + STOP_TIMEOUT_SECS
        success = self._join(deadline)
        if self.state is not None and success:
            self.state.cleanup()
        logger.debug("%r stopped (all workers ended: %s)", self.name, success)
        return success

    def check(self) -> None:
        """Raise the group's failure, once (see NOTE [ Shutdown and error protocol ])."""
        with self._lock:
            if self._failure is None or self._failure_raised:
                return
            self._failure_raised = True
            err = self._failure
        raise err

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

    def _join(self, deadline: float) -> bool:
        return join_threads(self.threads, deadline, self.name)


def join_threads(threads: List[threading.Thread], deadline: float, group: str) -> bool:
    """Join threads against one deadline; log the stack of any that did not end."""
    me = threading.current_thread()
    success = True
    for t in threads:
        if t is me or t.ident is None:
            continue
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            success = False
            logger.warning("%r: thread %s did not end within %.1f s; it is at:\n%s",
                           group, t.name, STOP_TIMEOUT_SECS, thread_stack(t))
    return success


_exit_hook_lock = threading.Lock()
_exit_hooked: "weakref.WeakSet[GlobalWorkerCoordinator]" = weakref.WeakSet()
_exit_hook_registered = False


def _stop_all_at_exit() -> None:
    for gc in list(_exit_hooked):
        try:
            gc.stop(raise_failure=False)
        except Exception:
            logger.exception("stopping workers at exit failed")


def _register_exit_hook(gc: "GlobalWorkerCoordinator") -> None:
    global _exit_hook_registered
    with _exit_hook_lock:
        _exit_hooked.add(gc)
        if not _exit_hook_registered:
            atexit.register(_stop_all_at_exit)
            _exit_hook_registered = True


class GlobalWorkerCoordinator(GlobalCoordinatorInternals):
    """The registry of worker groups that ``init_*`` returns (the same object each call)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.groups: List[WorkerCoordinator] = []
        self.next_worker_id = 0
        self.worker_ids: List[int] = []

    def add(self, coordinator: WorkerCoordinator) -> None:
        with self._lock:
            self.groups.append(coordinator)

    def get_new_worker_id(self) -> int:
        with self._lock:
            worker_id = self.next_worker_id
            self.next_worker_id += 1
            self.worker_ids.append(worker_id)
            return worker_id

    def get_worker_ids(self) -> List[int]:
        return list(self.worker_ids)

    def start(self) -> None:
        """Run every group's ``init_fun`` serially, then start every group.

        Raises:
            FetcherError: an ``init_fun`` raised; no group was started.
        """
        with self._lock:
            groups = list(self.groups)
        _register_exit_hook(self)
        for c in groups:
            c.init(self)
        for c in groups:
            c.start()

    def check(self) -> None:
        """Raise the first failure of any group that has not been raised yet."""
        with self._lock:
            groups = list(self.groups)
        for c in groups:
            c.check()

    def _stop_groups(self, groups: List[WorkerCoordinator], raise_failure: bool) -> bool:
        for c in groups:
            c._halt()
        success = True
        for c in groups:
            success = c.stop() and success
        if raise_failure:
            for c in groups:
                c.check()
        return success

    def stop(self, raise_failure: bool = True) -> bool:
        """Stop every group and forget them.

        Returns:
            True if every worker ended within the timeout.

        Raises:
            DataInputError: the first failure of any group, unless already raised
                by ``check()`` (or ``raise_failure=False``).
        """
        with self._lock:
            groups, self.groups = list(self.groups), []
        return self._stop_groups(groups, raise_failure)

    def stop_coordinator(self, worker_name: str) -> bool:
        """Stop and forget the groups named ``worker_name``."""
        with self._lock:
            groups = [c for c in self.groups if c.name == worker_name]
            self.groups = [c for c in self.groups if c.name != worker_name]
        return self._stop_groups(groups, raise_failure=True)

    def __enter__(self) -> "GlobalWorkerCoordinator":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        # Raise the input's failure even when the body raised: a net that
        # failed on a closed queue is a consequence, the failure is the cause.
        self.stop()
