"""One warning when a net waits on an input that was never started.

The ``DequeueBlobs`` op is in the user's net, so forgetting
``coordinator.start()`` used to mean a silent wait of ``timeout`` seconds (600
by default).  The stall watchdog cannot see it: it starts with the input.
This watch exists from ``init_data_input_workers`` on::

    init_data_input_workers --watch()--> start watch thread (one per process)
                                             | every POLL_SECS, for each input still CREATED:
    user's net: DequeueBlobs --reads--> Caffe2 queue statistics (a read attempt
                                             | lowers <queue>/queue_balance)
                                             v
                               a read attempt, still no start() after WARN_SECS:
                               one warning naming the input and the missing call

Caffe2 keeps the statistics per queue name for the life of the process
(``Caffe2Feed.read_attempts``, a difference from the value at init).  The
thread holds inputs weakly, forgets an input once it leaves CREATED or its
registry, and ends when it watches nothing, so it never outlives the inputs
it exists for; ``settle()`` (called by the registry's start() and stop())
makes that happen before it returns, so thread counts do not lag.
An input that was stopped needs no watch: its closed queue makes the dequeue
fail at once, and the op's name (``feed.dequeue_op_name``) says why.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Callable, Optional

from .._core.lifecycle import Lifecycle

__all__ = ["watch", "settle", "WARN_SECS", "POLL_SECS"]

logger = logging.getLogger(__name__)

#: Seconds a read attempt on a never-started input may wait before the warning
#: (a start() racing the net's first run from another thread is not a mistake).
WARN_SECS = 1.0
#: How often the watch looks.
POLL_SECS = 0.25

_lock = threading.Lock()
_Entry = tuple["weakref.ref[Any]", Callable[[Any], bool], list[Optional[float]]]
#: (input coordinator, whether its registry still holds it, when a read
#: attempt was first seen) per watched input.
_watched: list[_Entry] = []
_thread: threading.Thread | None = None
#: Set to make the thread look now (settle()).
_wake = threading.Event()


def watch(coordinator: Any, registered: Callable[[Any], bool]) -> None:
    """Watch ``coordinator`` (an ``InputCoordinator`` feeding a ``Caffe2Feed``) while it
    is CREATED and ``registered(coordinator)``."""
    global _thread
    with _lock:
        _watched.append((weakref.ref(coordinator), registered, [None]))
        if _thread is None:
            _thread = threading.Thread(target=_run, daemon=True, name="data_workers start watch")
            _thread.start()


def _watched_input(entry: _Entry) -> Any | None:
    """The entry's input if it is still to be watched, else None."""
    coordinator = entry[0]()
    if coordinator is None or coordinator.lifecycle is not Lifecycle.CREATED \
            or not entry[1](coordinator):
        return None
    return coordinator


def settle() -> None:
    """Forget inputs that were started or stopped; if none is left, end the thread now."""
    with _lock:
        _watched[:] = [e for e in _watched if _watched_input(e) is not None]
        thread = _thread if not _watched else None
    _wake.set()
    if thread is not None and thread is not threading.current_thread():
        thread.join(1.0)  # it wakes at once and, watching nothing, returns


def _run() -> None:
    global _thread
    while True:
        _wake.wait(POLL_SECS)
        _wake.clear()
        with _lock:
            entries = list(_watched)
        done = []
        for entry in entries:
            coordinator = _watched_input(entry)
            if coordinator is None:
                done.append(entry)
                continue
            try:
                if _check(coordinator, entry[2]):
                    done.append(entry)
            except Exception:  # the watch must never take anything down
                logger.debug("start watch of input %r failed", coordinator.name, exc_info=True)
                done.append(entry)
            del coordinator
        with _lock:
            for entry in done:
                if entry in _watched:
                    _watched.remove(entry)
            if not _watched:
                _thread = None
                return


def _check(coordinator: Any, seen: list[float | None]) -> bool:
    """Warn if a net has tried to dequeue from ``coordinator`` for WARN_SECS; True once warned."""
    feed = coordinator.feeder.sink
    if feed.read_attempts() <= 0:
        return False
    now = time.monotonic()
    if seen[0] is None:
        seen[0] = now
        return False
    if now - seen[0] < WARN_SECS:
        return False
    scope = coordinator.feeder.namescope
    logger.warning(
        "input %r%s: a net has been waiting %.1f s to dequeue a batch from it, but "
        "coordinator.start() was never called; call start() before running the net "
        "(the dequeue waits up to timeout=%g s, then fails)",
        coordinator.config.input_source, " (scope %r)" % scope if scope else "",
        now - seen[0] + POLL_SECS, coordinator.config.timeout)
    return True
