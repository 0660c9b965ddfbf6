"""Pins the upstream internal names kept in data_workers/_compat.py."""

from __future__ import annotations

import pytest

import data_workers
from util import init_tagged, make_net

pytestmark = pytest.mark.timeout(30)


def test_global_coordinator_internals(ws):
    gc = data_workers.global_coordinator
    before = gc._fetcher_id_seq
    init_tagged(make_net(), num_worker_threads=3)
    assert gc._fetcher_id_seq == before + 3 == gc.next_worker_id
    assert gc._worker_ids[-3:] == [before, before + 1, before + 2]
    assert gc._coordinators is gc.groups
    gc._coordinators = []
    assert gc.groups == []
    gc.register_shutdown_handler()  # kept callable; registers our single lazy hook


def test_input_coordinator_internals(ws):
    coord = init_tagged(make_net(), input_source_name="src", batch_size=8)
    c = coord._coordinators[0]
    assert c._worker_name == "src" == c.name
    assert c._worker_ids == c.get_worker_ids()
    assert c._state is c.feeder
    assert c._workers == c.threads and len(c._workers) == 3  # 2 fetchers + enqueuer
    feeder = c._state
    assert feeder._inputs == 0
    assert feeder._namescope == "" and feeder._batch_size == 8
    assert feeder._input_blob_names == ["data", "label"]
    assert feeder._input_source_name == "src"
    feeder._batch_size = 4
    assert feeder.batch_size == 4 and feeder.rebatcher.batch_size == 4
    c._start()
    c._stop()
    assert c._wait_finish() is True


def test_upstream_module_level_names_exist():
    for name in ["init_data_input_workers", "global_coordinator", "BatchFeeder", "GlobalCoordinator",
                 "DataWorker", "enqueuer", "get_worker_ids", "Metrics", "State",
                 "WorkerCoordinator", "GlobalWorkerCoordinator", "Worker", "run_worker",
                 "LOG_INT_SECS"]:
        assert hasattr(data_workers, name), name
    assert data_workers.get_worker_ids(3) == [0, 1, 2]
    pw = data_workers.parallel_workers
    for name in ["init_workers", "Metrics", "State", "WorkerCoordinator",
                 "GlobalWorkerCoordinator", "Worker", "run_worker", "global_coordinator"]:
        assert hasattr(pw, name), name


def test_what_scripts_that_subclass_or_check_types_see(ws):
    """The upstream classes sit on top of the core's: an input built by
    init_data_input_workers is both an upstream WorkerCoordinator and our
    InputCoordinator, and a script's own WorkerCoordinator subclass still runs."""
    coord = init_tagged(make_net(), batch_size=8)
    c = coord._coordinators[0]
    assert isinstance(c, data_workers.WorkerCoordinator)
    assert isinstance(c, data_workers.InputCoordinator)
    assert isinstance(c._state, data_workers.BatchFeeder)
    assert isinstance(coord, data_workers.GlobalWorkerCoordinator)
    assert isinstance(data_workers.parallel_workers.global_coordinator,
                      data_workers.GlobalWorkerCoordinator)

    started = []

    class Mine(data_workers.WorkerCoordinator):
        def _start_workers(self):
            started.append(self._worker_name)

    mine = Mine("mine", [0], None)
    mine._start()
    assert started == ["mine"] and mine._wait_finish() is True
