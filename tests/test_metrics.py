"""External loggers get upstream's metric keys; stats() is a frozen snapshot."""

from __future__ import annotations

import dataclasses
import threading

import pytest

import data_workers
from data_workers import parallel_workers
from fault_util import wait_for
from util import check_tagged, init_tagged, make_net, run_and_collect

pytestmark = pytest.mark.timeout(30)


class RecordingLogger:
    def __init__(self):
        self.calls = []

    def log(self, metrics):
        self.calls.append(metrics)


class BrokenLogger:
    def log(self, metrics):
        raise IOError("metrics server down")


def test_external_loggers_receive_upstream_keys(ws, caplog):
    rec = RecordingLogger()
    net = make_net()
    coord = init_tagged(net, external_loggers=[BrokenLogger(), rec], log_interval_secs=0.05)
    coord.start()
    check_tagged(run_and_collect(net, 30))
    coord.stop()
    keys = set().union(*rec.calls)
    for key in ["inputs_per_sec", "queue_size", "time_elapsed", "fetcher_time",
                "fetcher_time_count", "enqueue_time", "enqueue_time_count"]:
        assert key in keys, key
    assert any("external logger" in r.getMessage() for r in caplog.records)


def test_parallel_workers_worker_time_metric():
    rec = RecordingLogger()
    seen = threading.Event()
    coordinator = parallel_workers.init_workers(lambda wid: seen.set(), num_worker_threads=1,
                                                worker_name="metrics", external_loggers=[rec])
    coordinator.start()
    seen.wait(5)
    coordinator.stop()
    assert any("worker_time" in c and "worker_time_count" in c for c in rec.calls)


def test_stats_is_a_frozen_snapshot(ws):
    net = make_net()
    coord = init_tagged(net)
    coord.start()
    try:
        run_and_collect(net, 10)
        # The enqueuer counts a batch after its enqueue returns, so the net can
        # dequeue the tenth batch a moment before the counter says 10.
        wait_for(lambda: coord.stats()[0].batches_enqueued >= 10, 10, "the counter to catch up")
        stats = coord.stats()[0]
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.rows_enqueued = 0  # type: ignore[misc]
        assert stats.rows_enqueued == stats.batches_enqueued * 32
        assert stats.rows_fetched >= stats.rows_enqueued
        assert stats.state == "running" and stats.worker_type == "thread" and stats.workers == 2
        assert stats.inputs_per_sec > 0 and stats.failure is None
    finally:
        coord.stop()


def test_metrics_are_thread_safe():
    m = data_workers.Metrics(None)

    def bump():
        for _ in range(10000):
            m.put_metric("x", 1)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.snapshot() == {"x": 40000, "x_count": 40000}
