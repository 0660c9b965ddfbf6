"""Thread fetchers: ``fetch_fun`` runs on threads of the training process.

The default backend (contract: ``_core/backend.py``).  Cheap to start and free to
share memory with the trainer, but a fetcher that holds the GIL (pure-Python
decoding) cannot use a second core; use ``worker_type="process"`` for those.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .._core.backend import BackendSpec, FetcherBackend, FetcherHost, FetchFun
from .._core.metrics import Metrics
from .._core.thread_util import join_threads, thread_stack
from .._core.worker import Worker, run_worker

__all__ = ["DataWorker", "ThreadFetchers"]


class DataWorker(Worker):
    """Calls ``fetch_fun(worker_id, batch_size)`` once per ``run()`` and feeds the result."""

    def __init__(self, coordinator: Any, worker_id: int, worker_fun: FetchFun,
                 metrics: Metrics, batch_size: int, batch_feeder: FetcherHost) -> None:
        # Upstream's signature.  ``batch_size`` is unused: the live size is the
        # host's (run() reads it each call, so reset_data_input applies), and
        # ``batch_feeder`` is the input seen as a ``FetcherHost``.
        super().__init__(coordinator, worker_id, worker_fun=worker_fun, metrics=metrics)
        self._batch_feeder = batch_feeder

    def run(self) -> None:
        fetch: FetchFun = self._worker_fun  # type: ignore[assignment]
        try:
            output = fetch(self._worker_id, self._batch_feeder.batch_size)
        except Exception as exc:
            if self._batch_feeder.skip_fetch_failure(self._worker_id, exc):
                return  # max_fetch_failures: counted and logged; the next call follows
            raise
        self._batch_feeder.put(output, self._worker_id)

    def describe(self) -> str:
        host = self._batch_feeder
        return host.words.worker_of(self._worker_id, host.name)

    def handle_exception(self, e: BaseException) -> None:
        """Fail the input behind the chunks this fetcher queued before (NOTE
        [ Shutdown and error protocol ], rule 10, ``_core/coordinator.py``)."""
        note = self._batch_feeder.fetch_failure_note()
        self._batch_feeder.put_failure(self.as_failure(e, note), self._worker_id)

    def finish(self) -> None:
        self._metrics.put_metric("fetcher_time", time.monotonic() - self._start_time)


class ThreadFetchers(FetcherBackend):
    """One thread per worker id, each running ``run_worker`` over a ``DataWorker``."""

    def __init__(self, host: FetcherHost, spec: BackendSpec) -> None:
        self._host = host
        self._ids = list(host.worker_ids)
        self.threads: list[threading.Thread] = [
            threading.Thread(
                target=run_worker,
                name="data_workers %s %s %d" % (spec.input_source, host.words.worker, wid),
                args=(host, DataWorker(host, wid, spec.fetch_fun, host.metrics,
                                       host.batch_size, host)),
                daemon=True)
            for wid in self._ids
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def halt(self) -> None:
        """Nothing to signal: fetchers see the lifecycle change and the closed channel."""

    def join(self, deadline: float, started: float) -> bool:
        return join_threads(self.threads, deadline, self._host.name, started)

    def close(self) -> None:
        """Threads hold no OS resources of their own."""

    def locations(self, only: int | None = None) -> str:
        worker = self._host.words.worker
        return "".join("\n%s thread %r is at:\n%s" % (worker, t.name, thread_stack(t))
                       for wid, t in zip(self._ids, self.threads)
                       if t.is_alive() and only in (None, wid))
