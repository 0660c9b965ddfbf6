"""Drop-in replacement for ``caffe2.python.parallel_workers``.

Runs ``worker_fun(worker_id)`` in a loop on several threads until stopped::

    from data_workers import parallel_workers
    coordinator = parallel_workers.init_workers(my_worker_fun, worker_name="train")
    coordinator.start()
    ...
    coordinator.stop()

Same names and signatures as upstream.  Differences: a worker's exception
(any type, ``SystemExit`` included) is logged once and re-raised by
``stop()`` / ``check()`` instead of printed; ``stop()`` is bounded and idempotent; no exit hook is
registered at import; ``State`` really is abstract.
"""

from __future__ import annotations

import threading
from typing import Any, Callable
from collections.abc import Iterable

from ._core.args import check_positive_int
from ._compat import GlobalWorkerCoordinator, WorkerCoordinator
from ._core.coordinator import InitFun
from ._core.metrics import ExternalLogger, Metrics
from ._core.worker import State, Worker, run_worker

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


global_coordinator = GlobalWorkerCoordinator()


def init_workers(worker_fun: Callable[[int], Any], num_worker_threads: int = 2,
                 worker_name: str = "train", init_fun: InitFun | None = None,
                 external_loggers: Iterable[ExternalLogger] | None = None,
                 shutdown_fun: Callable[[], None] | None = None) -> GlobalWorkerCoordinator:
    """Create a group of ``num_worker_threads`` threads running ``worker_fun``.

    Args:
        worker_fun: called as ``worker_fun(worker_id)`` in each thread, over and
            over, until the group stops.  An exception stops the group; ``check()``
            or ``stop()`` re-raises it as a ``FetcherError`` (cause attached).
        num_worker_threads: threads to start; their ids are global across groups.
        worker_name: names the group (logs, ``stop_coordinator(worker_name)``).
        init_fun: called once as ``init_fun(worker_coordinator,
            global_coordinator)`` by ``start()``, before the threads start.
        external_loggers: objects with a ``log(metrics: dict)`` method, given the
            group's metrics.
        shutdown_fun: called once, with no argument, when a started group stops.

    Returns:
        The module's global coordinator (the same object every call).

    Raises:
        TypeError, ValueError: ``worker_fun`` is not callable or the count is not positive.
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
