"""``ResetWorkspace()`` stops the inputs that live in the workspace it resets.

NOTE [ Shutdown and error protocol ], rule 9 (``_core/coordinator.py``).  Resetting
a Caffe2 workspace frees its blobs and nets at once; an enqueuer writing into
a scratch blob's memory, or blocked inside the enqueue net, would then write
to freed memory and crash the interpreter.  So the first input built wraps
Caffe2's ``reset_workspace`` binding (which ``workspace.ResetWorkspace``
calls) once: before the reset runs, every input of that workspace is stopped,
joined and cleaned up, with one warning naming them.  If one cannot be
joined (its enqueuer is stuck), the reset is refused with ``RuntimeError``
instead of crashing.  ``SwitchWorkspace`` needs nothing: inputs keep running
in their own workspace, through the handle captured at init.
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from typing import Any, Callable

from caffe2.python import workspace

__all__ = ["install", "watch"]

logger = logging.getLogger(__name__)

_lock = threading.RLock()
_installed = False
#: Objects with ``release_workspace(name)``: the registries of inputs.
_registries: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _guarded(reset: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(reset)
    def reset_workspace(*args: Any, **kwargs: Any) -> Any:
        name = workspace.C.current_workspace()
        for registry in list(_registries):
            registry.release_workspace(name)
        return reset(*args, **kwargs)

    reset_workspace.__wrapped_by_data_workers__ = True  # type: ignore[attr-defined]
    return reset_workspace


def install() -> None:
    """Wrap Caffe2's ``reset_workspace`` binding, once per process."""
    global _installed
    with _lock:
        if _installed:
            return
        original = workspace.C.reset_workspace
        if not getattr(original, "__wrapped_by_data_workers__", False):
            workspace.C.reset_workspace = _guarded(original)
        _installed = True


def watch(registry: Any) -> None:
    """Have ``registry.release_workspace(name)`` called before a reset of ``name``."""
    install()
    _registries.add(registry)
