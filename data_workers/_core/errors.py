"""Exceptions raised by data_workers, named by what went wrong.

Hierarchy::

    DataInputError                     base of everything an input reports
     +-- FetcherError                  the user's fetch_fun or init_fun raised
     +-- WorkerDiedError               a worker process ended without saying why
     +-- ChunkTypeError (TypeError)    a fetcher returned the wrong kind of thing
     +-- ChunkValueError (ValueError)  a fetcher returned arrays of the wrong shape/dtype
     +-- PipelineError                 the re-batching / Caffe2 enqueue stage failed
     +-- InputClosedError              the input was used after stop() (you closed it)

A failure inside a worker thread or process is caught there, turned into one of
these (the original exception attached as ``__cause__``) and handed to the
input's coordinator, which stops the input and re-raises the error where the
training loop waits: ``check()`` or ``stop()``.  See NOTE [ Shutdown and error
protocol ] in ``_core/coordinator.py``.
"""

from __future__ import annotations

import os
import types
from typing import Any, TypeVar

__all__ = [
    "DataInputError",
    "FetcherError",
    "WorkerDiedError",
    "ChunkTypeError",
    "ChunkValueError",
    "PipelineError",
    "InputClosedError",
    "RemoteTraceback",
]


E = TypeVar("E", bound="DataInputError")


class DataInputError(Exception):
    """Base class: an input source could not deliver data.

    Attributes:
        input_source: the ``input_source_name`` of the failed input, if known.
        worker_id: the global worker id involved, if any.
    """

    input_source: str | None = None
    worker_id: int | None = None

    def where(self, input_source: str | None, worker_id: int | None) -> "DataInputError":
        """Attach the location of the failure and return self (for chaining)."""
        self.input_source = input_source
        self.worker_id = worker_id
        return self

    @classmethod
    def wrapping(cls: type[E], exc: BaseException, context: str, input_source: str | None,
                 worker_id: int | None, note: str = "") -> E:
        """A new error of this class for ``exc``, which becomes its ``__cause__``.

        The message is ``context`` followed by the exception's type and text, then
        ``note``: ``context="fetcher 3 of input 'train' raised"`` gives
        ``"fetcher 3 of input 'train' raised ValueError: bad row"``.
        """
        err = cls("%s %s: %s%s" % (context, type(exc).__name__, exc, note))
        err.__cause__ = exc
        err.where(input_source, worker_id)
        return err


class FetcherError(DataInputError):
    """The user's ``fetch_fun`` (or ``init_fun``) raised; the original is ``__cause__``."""


class WorkerDiedError(DataInputError):
    """A worker process exited unexpectedly (killed, crashed, ``os._exit``).

    Attributes:
        pid: the process id of the dead worker.
        exitcode: its exit code (negative: killed by that signal).
        signal_name: e.g. ``"SIGKILL"`` when killed by a signal, else ``None``.
    """

    def __init__(self, message: str, pid: int | None = None,
                 exitcode: int | None = None, signal_name: str | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal_name = signal_name


class ChunkTypeError(DataInputError, TypeError):
    """A fetcher returned something that is not a list of numpy arrays, one per blob."""


class ChunkValueError(DataInputError, ValueError):
    """A fetcher returned arrays whose shapes, row counts or dtypes do not fit."""


class PipelineError(DataInputError):
    """The re-batching or Caffe2 enqueue stage failed (e.g. the workspace was reset)."""


class InputClosedError(DataInputError):
    """An input was started or fed after it had been stopped."""


class RemoteTraceback(Exception):
    """Carries a traceback formatted in a worker process, as text.

    Set as the ``__cause__`` of the error re-raised in the trainer, so the
    printed traceback shows where the worker failed.
    """

    def __init__(self, tb_text: str) -> None:
        super().__init__(tb_text)
        self.tb_text = tb_text

    def __str__(self) -> str:
        return "\n\"\"\"\n%s\"\"\"" % self.tb_text


# Tracebacks and reprs show the import path to use, ``data_workers.FetcherError``
# rather than ``data_workers._core.errors.FetcherError``. Pickling still works: it looks
# the class up as ``data_workers.<name>``, which the package resolves lazily.
for _name in __all__:
    globals()[_name].__module__ = "data_workers"
del _name


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def point_at_fetcher(err: BaseException, fetch_fun: Any) -> None:
    """Make ``err``'s traceback begin at the definition of ``fetch_fun``.

    A chunk the validator refuses was built by the user's ``fetch_fun``, whose
    frame is gone by the time its output is checked: without this the
    traceback shows library frames only, and not which function (in which
    file) returned the bad chunk.  A frame at ``fetch_fun``'s ``def`` line is
    put in front of the validator's frames.  Functions of this package (e.g.
    a ``ShardedSource``) are left alone.
    """
    func = getattr(fetch_fun, "__func__", fetch_fun)
    code = getattr(func, "__code__", None)
    if code is None:  # a callable object: its __call__
        call = getattr(type(fetch_fun), "__call__", None)
        code = getattr(call, "__code__", None)
    if not isinstance(code, types.CodeType) \
            or os.path.abspath(code.co_filename).startswith(_PACKAGE_DIR + os.sep):
        return
    # A module whose one statement sits on the def line, compiled under the
    # user's file name: linecache then prints the user's own source line.
    stub = compile("\n" * max(code.co_firstlineno - 1, 0) + "raise __error__",
                   code.co_filename, "exec").replace(co_name=code.co_name)
    try:
        exec(stub, {"__error__": err})
    except BaseException as raised:  # noqa: B902 - it is err itself
        # Raising an exception object puts the new frames in front of the
        # traceback it already had: here -> the stub's frame -> the validator's.
        here = raised.__traceback__
    if here is not None and here.tb_next is not None:
        err.__traceback__ = here.tb_next  # without this function's frame
