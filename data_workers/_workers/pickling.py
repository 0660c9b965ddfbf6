"""Sending ``fetch_fun`` to worker processes: cloudpickle, checked up front.

Caffe2-free; cloudpickle is imported only when a process input is built.
"""

from __future__ import annotations

import io
from typing import Any, Protocol

__all__ = ["check_picklable", "pickle_fetch_fun"]


class _Writer(Protocol):
    """What pickling writes to: a binary file."""

    def write(self, data: bytes) -> int: ...


class _Discard:
    """A file that keeps nothing it is given: checking a large fetch_fun costs no memory."""

    def write(self, data: bytes) -> int:
        return memoryview(data).nbytes


def _dump(fetch_fun: Any, file: _Writer) -> None:
    """Pickle ``fetch_fun`` into ``file`` as process workers receive it, or raise TypeError.

    cloudpickle sends by value what no worker could import by name -- functions
    and classes of ``__main__``, lambdas, closures, with the globals they use --
    and by reference (``module.name``) what an importable module defines.
    """
    import cloudpickle  # only process workers need it

    try:
        cloudpickle.dump(fetch_fun, file)
    except Exception as exc:
        raise TypeError(
            "worker_type='process' sends fetch_fun to each worker process, pickled with "
            "cloudpickle together with the globals it uses, so all of it must be picklable; "
            "%r is not: %s: %s.  Keep locks, open files, sockets, threads and the like out of "
            "fetch_fun and its globals (create them in the worker, at the first call), or use "
            "worker_type='thread'" % (fetch_fun, type(exc).__name__, exc)) from exc


def check_picklable(fetch_fun: Any) -> None:
    """Raise TypeError unless ``fetch_fun`` can be sent to a worker process.

    Raises:
        TypeError: naming ``fetch_fun`` and what in it does not pickle.
    """
    _dump(fetch_fun, _Discard())


def pickle_fetch_fun(fetch_fun: Any) -> bytes:
    """``fetch_fun`` as process workers receive it (``pickle.loads`` reads it back).

    Raises:
        TypeError: as ``check_picklable``.
    """
    buffer = io.BytesIO()
    _dump(fetch_fun, buffer)
    return buffer.getvalue()
