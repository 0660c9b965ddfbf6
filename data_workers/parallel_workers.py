"""Drop-in replacement for ``caffe2.python.parallel_workers``.

Runs ``worker_fun(worker_id)`` in a loop on several threads until stopped::

    from data_workers import parallel_workers
    coordinator = parallel_workers.init_workers(my_worker_fun, worker_name="train")
    coordinator.start()
    ...
    coordinator.stop()

Same names and signatures as upstream.  Differences: a worker's exception is
logged once with its traceback and re-raised by ``stop()`` / ``check()``
instead of printed; ``stop()`` is bounded and idempotent; no exit hook is
registered at import; ``State`` really is abstract.
"""

from __future__ import annotations

import abc
import threading
import time
from typing import Any, Callable, Iterable, Optional

from ._args import check_positive_int
from ._coordinator import GlobalWorkerCoordinator, InitFun, WorkerCoordinator
from ._errors import DataInputError, FetcherError
from ._metrics import ExternalLogger, Metrics

__all__ = [
    "init_workers",
    "Metrics",
    "State",
    "WorkerCoordinator",
    "GlobalWorkerCoordinator",
    "Worker",
    "run_worker",
    "global_coordinator",
]


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

    def __init__(self, coordinator: WorkerCoordinator, worker_id: int,
                 worker_fun: Optional[Callable[..., Any]] = None,
                 metrics: Optional[Metrics] = None) -> None:
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
        raised by user code is wrapped in ``FetcherError`` with it as the cause.
        """
        if isinstance(e, DataInputError):
            err = e
        else:
            err = FetcherError("%s %d of %r raised %s: %s" % (
                self.describe_as, self._worker_id, self._coordinator.name, type(e).__name__, e))
            err.__cause__ = e
        self._coordinator.fail(err.where(self._coordinator.name, self._worker_id))

    def finish(self) -> None:
        self._metrics.put_metric("worker_time", time.monotonic() - self._start_time)
        self._metrics.log_metrics()


def run_worker(coordinator: WorkerCoordinator, worker: Worker) -> None:
    """The loop of a worker thread: run until the group stops or fails."""
    while coordinator.is_active():
        worker.start()
        try:
            worker.run()
        except Exception as e:
            worker.handle_exception(e)
        finally:
            worker.finish()


global_coordinator = GlobalWorkerCoordinator()


def init_workers(worker_fun: Callable[[int], Any], num_worker_threads: int = 2,
                 worker_name: str = "train", init_fun: Optional[InitFun] = None,
                 external_loggers: Optional[Iterable[ExternalLogger]] = None,
                 shutdown_fun: Optional[Callable[[], None]] = None) -> GlobalWorkerCoordinator:
    """Create a group of ``num_worker_threads`` threads running ``worker_fun``.

    Returns:
        The module's global coordinator (the same object every call).

    Raises:
        TypeError / ValueError: ``worker_fun`` is not callable or the count is not positive.
    """
    if not callable(worker_fun):
        raise TypeError("worker_fun must be callable, got %r" % (worker_fun,))
    num_worker_threads = check_positive_int("num_worker_threads", num_worker_threads)
    metrics = Metrics(external_loggers)
    worker_ids = [global_coordinator.get_new_worker_id() for _ in range(num_worker_threads)]
    coordinator = WorkerCoordinator(worker_name, worker_ids, init_fun, shutdown_fun=shutdown_fun)
    coordinator.threads = [
        threading.Thread(target=run_worker,
                         name="parallel_workers %s worker %d" % (worker_name, wid),
                         args=(coordinator, Worker(coordinator, wid, worker_fun, metrics)))
        for wid in worker_ids
    ]
    global_coordinator.add(coordinator)
    return global_coordinator
