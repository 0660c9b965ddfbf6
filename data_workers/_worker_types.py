"""Choosing an input's fetcher backend from ``worker_type``.

Shared by the Caffe2 input (``_api.py``) and the PyTorch loader (``torch.py``);
Caffe2-free.  The process backend is imported only when asked for.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable

from ._backend import BackendSpec, FetcherBackend, FetcherHost
from ._thread_workers import ThreadFetchers

__all__ = ["WORKER_TYPES", "check_picklable", "backend_factory"]

WORKER_TYPES = ("thread", "process")


def check_picklable(fetch_fun: Any) -> None:
    """Raise TypeError unless ``fetch_fun`` can be sent to a worker process."""
    try:
        pickle.dumps(fetch_fun)
    except Exception as exc:
        raise TypeError(
            "worker_type='process' sends fetch_fun to spawned worker processes, so it must be "
            "picklable (a module-level function, or an instance of a module-level class); "
            "%r is not: %s" % (fetch_fun, exc)) from exc


def backend_factory(worker_type: str, spec: BackendSpec) -> Callable[[FetcherHost], FetcherBackend]:
    """What builds the backend of an input, given the input as its host."""
    if worker_type == "process":
        from ._process_workers import ProcessFetchers  # not imported by thread-only scripts

        return lambda host: ProcessFetchers(host, spec)
    return lambda host: ThreadFetchers(host, spec)
