"""The generic worker loop (upstream's ``State`` / ``Worker`` / ``run_worker``).

Core code: thread fetchers run ``DataWorker`` through ``run_worker``, and
``parallel_workers`` re-exports these names for upstream scripts.
"""

from __future__ import annotations

import abc
import time
from typing import TYPE_CHECKING, Any, Callable

from .errors import DataInputError, FetcherError
from .metrics import Metrics

if TYPE_CHECKING:
    from .coordinator import WorkerGroup

__all__ = ["State", "Worker", "run_worker"]


class State(abc.ABC):
    """Per-group state with a start/stop/cleanup life (upstream's ``State``)."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    @abc.abstractmethod
    def cleanup(self) -> None: ...


class Worker:
    """One worker: ``run()`` is called in a loop by ``run_worker`` while the group runs."""

    #: How error messages name this kind of worker.
    describe_as = "worker"

    def __init__(self, coordinator: "WorkerGroup", worker_id: int,
                 worker_fun: Callable[..., Any] | None = None,
                 metrics: Metrics | None = None) -> None:
        self._coordinator = coordinator
        self._worker_id = worker_id
        self._worker_fun = worker_fun
        self._metrics = metrics if metrics is not None else Metrics(None)
        self._start_time = time.monotonic()

    def start(self) -> None:
        self._start_time = time.monotonic()

    def run(self) -> None:
        if self._worker_fun is not None:
            self._worker_fun(self._worker_id)

    def handle_exception(self, e: BaseException) -> None:
        """Hand the exception to the coordinator, which stops the group and re-raises it later.

        Our own errors (e.g. ``ChunkTypeError``) pass as they are; anything else
        raised by user code -- ``SystemExit`` and ``KeyboardInterrupt``
        included -- is wrapped in ``FetcherError`` with it as the cause.
        """
        self._coordinator.fail(self.as_failure(e))

    def as_failure(self, e: BaseException, note: str = "") -> DataInputError:
        """``e`` as this worker's failure: our own errors as they are, else a ``FetcherError``
        (``note`` ends its message)."""
        name = self._coordinator.name
        if isinstance(e, DataInputError):
            return e.where(name, self._worker_id)
        return FetcherError.wrapping(e, "%s raised" % self.describe(), name, self._worker_id,
                                     note=note)

    def describe(self) -> str:
        """This worker, as messages name it: ``worker 3 of 'pw'``."""
        return "%s %d of %r" % (self.describe_as, self._worker_id, self._coordinator.name)

    def finish(self) -> None:
        self._metrics.put_metric("worker_time", time.monotonic() - self._start_time)
        self._metrics.log_metrics()


def run_worker(coordinator: "WorkerGroup", worker: Worker) -> None:
    """The loop of a worker thread: run until the group stops or fails.

    Every exception type ends the loop as the group's failure: a thread has no
    caller to propagate ``SystemExit`` to, so letting it escape would end the
    thread silently (NOTE [ Shutdown and error protocol ], rule 1).
    """
    while coordinator.is_active():
        worker.start()
        try:
            worker.run()
        except BaseException as e:  # noqa: B902 - see the docstring
            worker.handle_exception(e)
            return
        finally:
            worker.finish()
