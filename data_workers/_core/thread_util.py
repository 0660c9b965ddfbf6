"""Joining threads against a deadline, and saying where a stuck one is."""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Iterable

__all__ = ["thread_stack", "join_threads"]

logger = logging.getLogger(__name__)


def thread_stack(thread: threading.Thread) -> str:
    """The current stack of a running thread, for 'stuck here' messages."""
    frame = sys._current_frames().get(thread.ident or -1)
    return "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)\n"


def join_threads(threads: Iterable[threading.Thread], deadline: float, group: str,
                 started: float) -> bool:
    """Join ``threads`` against one ``deadline`` (``time.monotonic`` seconds).

    Threads that never started, and the calling thread itself, count as ended.
    A thread still alive at the deadline is logged with its stack.

    Args:
        started: when the caller's stop began, for the message.

    Returns:
        True if every thread ended.
    """
    me = threading.current_thread()
    success = True
    for t in threads:
        if t is me or t.ident is None:
            continue
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            success = False
            logger.warning("%r: thread %s did not end within %.1f s; it is at:\n%s",
                           group, t.name, time.monotonic() - started, thread_stack(t))
    return success
