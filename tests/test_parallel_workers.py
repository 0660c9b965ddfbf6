"""The generic parallel_workers module: drop-in names, loud failures, bounded stop."""

from __future__ import annotations

import threading

import pytest

import data_workers
from data_workers import parallel_workers

pytestmark = pytest.mark.timeout(30)


def test_worker_exception_is_reraised_by_stop():
    def boom(worker_id):
        raise KeyError("missing shard")

    coordinator = parallel_workers.init_workers(boom, num_worker_threads=2, worker_name="pw")
    coordinator.start()
    group = coordinator._coordinators[0]
    deadline = threading.Event()
    while group.failure is None:
        deadline.wait(0.01)
    with pytest.raises(data_workers.FetcherError, match="worker .* of 'pw' raised KeyError") as info:
        coordinator.stop()
    assert isinstance(info.value.__cause__, KeyError)


def test_shutdown_fun_and_init_fun_called_once():
    calls = []
    coordinator = parallel_workers.init_workers(
        lambda wid: threading.Event().wait(0.001), num_worker_threads=1, worker_name="hooks",
        init_fun=lambda c, g: calls.append("init"), shutdown_fun=lambda: calls.append("shutdown"))
    coordinator.start()
    coordinator.stop()
    coordinator.stop()
    assert calls == ["init", "shutdown"]


def test_state_is_really_abstract():
    with pytest.raises(TypeError):
        parallel_workers.State()  # type: ignore[abstract]


def test_arguments_validated():
    with pytest.raises(TypeError, match="worker_fun must be callable"):
        parallel_workers.init_workers(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_worker_threads"):
        parallel_workers.init_workers(lambda w: None, num_worker_threads=0)
