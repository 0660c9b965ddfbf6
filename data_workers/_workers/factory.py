"""Choosing an input's fetcher backend from ``worker_type`` (``_core/build.py`` calls it).

Caffe2-free.  The process backend, and cloudpickle, are imported only when asked for.
"""

from __future__ import annotations

from typing import Callable

from .._core.backend import WORKER_TYPES, BackendSpec, FetcherBackend, FetcherHost
from .pickling import check_picklable
from .threads import ThreadFetchers

__all__ = ["WORKER_TYPES", "backend_factory"]


def backend_factory(worker_type: str, spec: BackendSpec) -> Callable[[FetcherHost], FetcherBackend]:
    """What builds the backend of an input, given the input as its host.

    Raises:
        TypeError: process workers, and ``spec.fetch_fun`` does not pickle (the
            message names what in it does not).
    """
    if worker_type == "process":
        check_picklable(spec.fetch_fun)
        from .processes import ProcessFetchers  # not imported by thread-only scripts

        return lambda host: ProcessFetchers(host, spec)
    return lambda host: ThreadFetchers(host, spec)
