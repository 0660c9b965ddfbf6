"""Thread fetchers: ``fetch_fun`` runs on threads of the training process.

The default backend.  Cheap to start and free to share memory with the
trainer, but a fetcher that holds the GIL (pure-Python decoding) cannot use a
second core; use ``worker_type="process"`` for those.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List, TYPE_CHECKING

from ._coordinator import join_threads
from ._metrics import Metrics
from .parallel_workers import Worker, run_worker

if TYPE_CHECKING:
    from ._input import BatchFeeder, InputCoordinator

__all__ = ["DataWorker", "ThreadFetchers"]

FetchFun = Callable[[int, int], Any]


class DataWorker(Worker):
    """Calls ``fetch_fun(worker_id, batch_size)`` once per ``run()`` and feeds the result."""

    describe_as = "fetcher"

    def __init__(self, coordinator: "InputCoordinator", worker_id: int, worker_fun: FetchFun,
                 metrics: Metrics, batch_size: int, batch_feeder: "BatchFeeder") -> None:
        # ``batch_size`` stays in upstream's signature, but the live size is the
        # feeder's (run() reads it each call, so reset_data_input applies).
        super().__init__(coordinator, worker_id, worker_fun=worker_fun, metrics=metrics)
        self._batch_feeder = batch_feeder

    def run(self) -> None:
        fetch: FetchFun = self._worker_fun  # type: ignore[assignment]
        output = fetch(self._worker_id, self._batch_feeder.batch_size)
        self._batch_feeder.put(output, self._coordinator, self._worker_id)

    def finish(self) -> None:
        self._metrics.put_metric("fetcher_time", time.monotonic() - self._start_time)


class ThreadFetchers:
    """One thread per worker id, each running ``run_worker`` over a ``DataWorker``."""

    def __init__(self, coordinator: "InputCoordinator", fetch_fun: FetchFun,
                 metrics: Metrics, feeder: "BatchFeeder") -> None:
        self.threads: List[threading.Thread] = [
            threading.Thread(
                target=run_worker,
                name="data_workers %s fetcher %d" % (feeder.input_source, wid),
                args=(coordinator, DataWorker(coordinator, wid, fetch_fun, metrics,
                                              feeder.batch_size, feeder)),
                daemon=True)
            for wid in coordinator.worker_ids
        ]
        self._group = feeder.input_source

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def halt(self) -> None:
        """Nothing to signal: fetchers see the lifecycle change and the closed channel."""

    def join(self, deadline: float) -> bool:
        return join_threads(self.threads, deadline, self._group)
