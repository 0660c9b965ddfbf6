"""The one interpreter-exit hook: stop every registered coordinator, once.

Registered lazily, at the first ``start()`` (never at import), and only acts
in the process that registered it: a child forked by the trainer
(``os.fork()``, multiprocessing's fork start method) inherits the registry,
but its exit must not stop the trainer's inputs, whose shared memory and
sockets it also inherited.  See NOTE [ Shutdown and error protocol ] in
``_core/coordinator.py``, rule 8.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import Any

__all__ = ["register_exit_hook"]

logger = logging.getLogger(__name__)

# Reentrant: a signal handler that calls stop() may interrupt a frame holding it.
_lock = threading.RLock()
_registered: "weakref.WeakSet[Any]" = weakref.WeakSet()
_owner_pid = -1


def _stop_all_at_exit() -> None:
    if os.getpid() != _owner_pid:
        return  # a forked child: the registered coordinators are its parent's
    for coordinator in list(_registered):
        try:
            coordinator.stop(raise_failure=False)
        except BaseException:
            logger.exception("stopping inputs at interpreter exit failed")


def _forget_in_child() -> None:
    global _lock, _registered
    # The parent's lock may have been held by another thread at fork time.
    _lock = threading.RLock()
    _registered = weakref.WeakSet()


def register_exit_hook(coordinator: Any) -> None:
    """Stop ``coordinator`` (``stop(raise_failure=False)``) at interpreter exit."""
    global _owner_pid
    with _lock:
        if _owner_pid != os.getpid():
            _owner_pid = os.getpid()
            atexit.register(_stop_all_at_exit)
            os.register_at_fork(after_in_child=_forget_in_child)
        _registered.add(coordinator)
