"""The upstream classes and internals that existing Caffe2 scripts reach into.

The compatibility layer, on top of the core and kept in one place.  Scripts
written for ``caffe2.python.data_workers`` / ``parallel_workers`` subclass
``WorkerCoordinator`` and read private names; ours are spelled differently
(``name``, ``groups``, ``next_worker_id``, ``feeder``, ``stats()``).  The
classes below are the core's (``WorkerGroup``, ``GroupRegistry``,
``BatchStage``, ``InputCoordinator``) with upstream's spelling added; the
upstream front ends (``init_data_input_workers``, ``parallel_workers``) build
these, the torch ``Loader`` builds the core's.  New code should use the public
names; every alias here is pinned by ``tests/test_compat_internals.py``.

========================================  =====================================
upstream spelling                         ours
========================================  =====================================
``global_coordinator._coordinators``      ``global_coordinator.groups``
``global_coordinator._fetcher_id_seq``    ``global_coordinator.next_worker_id``
``global_coordinator._worker_ids``        ``global_coordinator.worker_ids``
``coordinator._worker_name``              ``coordinator.name``
``coordinator._worker_ids``               ``coordinator.worker_ids``
``coordinator._workers``                  ``coordinator.threads``
``coordinator._state``                    ``coordinator.state`` (the BatchFeeder)
``coordinator._start()/_stop()``          ``coordinator.start()/stop()``
``coordinator._wait_finish()``            (part of ``stop()``; returns success)
``batch_feeder._inputs``                  rows accepted from fetchers
``batch_feeder._namescope``               ``batch_feeder.namescope``
``batch_feeder._batch_size``              ``batch_feeder.batch_size``
``batch_feeder._input_blob_names``        ``batch_feeder.blob_names``
``batch_feeder._input_source_name``       ``batch_feeder.input_source``
========================================  =====================================
"""

from __future__ import annotations

from typing import Any

from ._core.coordinator import GroupRegistry, WorkerGroup
from ._core.exit_hook import register_exit_hook
from ._core.pipeline import BatchStage, InputCoordinator

__all__ = ["WorkerCoordinator", "GlobalWorkerCoordinator", "BatchFeeder", "UpstreamInput"]


class _WorkerCoordinatorNames:
    """Upstream ``WorkerCoordinator`` attribute names."""

    name: str
    worker_ids: list[int]
    threads: list[Any]
    state: Any

    @property
    def _worker_name(self) -> str:
        return self.name

    @property
    def _worker_ids(self) -> list[int]:
        return self.worker_ids

    @property
    def _state(self) -> Any:
        return self.state

    @property
    def _workers(self) -> list[Any]:
        return self.threads

    @_workers.setter
    def _workers(self, threads: list[Any]) -> None:
        self.threads = list(threads)

    def _start(self) -> None:
        self.start()  # type: ignore[attr-defined]

    def _stop(self, reason: str | None = None) -> None:
        self.begin_stop()  # type: ignore[attr-defined]

    def _wait_finish(self, cleanup: Any = None) -> bool:
        return bool(self.stop())  # type: ignore[attr-defined]


class _GlobalCoordinatorNames:
    """Upstream ``GlobalWorkerCoordinator`` attribute names."""

    groups: list[Any]
    next_worker_id: int
    worker_ids: list[int]

    @property
    def _coordinators(self) -> list[Any]:
        return self.groups

    @_coordinators.setter
    def _coordinators(self, groups: list[Any]) -> None:
        self.groups = list(groups)

    @property
    def _fetcher_id_seq(self) -> int:
        return self.next_worker_id

    @property
    def _worker_ids(self) -> list[int]:
        return self.worker_ids

    def register_shutdown_handler(self) -> None:
        """Upstream registered an exit hook per coordinator at import; ours is
        registered once, lazily, at the first ``start()``.  Kept callable."""
        register_exit_hook(self)


class _BatchFeederNames:
    """Upstream ``BatchFeeder`` attribute names."""

    namescope: str
    batch_size: int
    blob_names: list[str]
    input_source: str

    @property
    def _inputs(self) -> int:
        return int(self.counters.snapshot().rows_fetched)  # type: ignore[attr-defined]

    @property
    def _namescope(self) -> str:
        return self.namescope

    @property
    def _batch_size(self) -> int:
        return self.batch_size

    @_batch_size.setter
    def _batch_size(self, value: int) -> None:
        self.set_batch_size(value)  # type: ignore[attr-defined]

    @property
    def _input_blob_names(self) -> list[str]:
        return self.blob_names

    @property
    def _input_source_name(self) -> str:
        return self.input_source


class WorkerCoordinator(WorkerGroup, _WorkerCoordinatorNames):
    """Upstream's ``WorkerCoordinator``: a ``WorkerGroup`` with upstream's names."""


class GlobalWorkerCoordinator(GroupRegistry, _GlobalCoordinatorNames):
    """Upstream's ``GlobalWorkerCoordinator``: a ``GroupRegistry`` with upstream's names."""


class BatchFeeder(BatchStage, _BatchFeederNames):
    """Upstream's ``BatchFeeder``: the core's ``BatchStage`` with upstream's names."""


class UpstreamInput(InputCoordinator, WorkerCoordinator):
    """An input built by ``init_data_input_workers``: what
    ``global_coordinator._coordinators`` holds, with upstream's names."""
