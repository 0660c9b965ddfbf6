"""start/stop: idempotent, bounded, ordered; nothing outlives stop()."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from caffe2.python import workspace

import data_workers
from data_workers import Lifecycle
from util import TaggedFetcher, check_tagged, init_tagged, make_net, run_and_collect

pytestmark = pytest.mark.timeout(60)


def test_stop_twice_and_stop_before_start(ws):
    net = make_net()
    coord = init_tagged(net)
    assert coord.stats()[0].state == Lifecycle.CREATED.value
    assert coord.stop() is True
    assert coord.stop() is True
    assert coord.stats() == ()


def test_start_twice_is_harmless(ws):
    net = make_net()
    coord = init_tagged(net)
    coord.start()
    coord.start()
    check_tagged(run_and_collect(net, 5))
    assert coord.stop() is True


def test_stop_is_bounded_when_consumer_stopped_consuming(ws):
    """Fetchers blocked on a full channel and an enqueuer blocked on a full queue."""
    net = make_net()
    coord = init_tagged(net, max_buffered_batches=2, num_worker_threads=4)
    coord.start()
    run_and_collect(net, 2)
    deadline = time.monotonic() + 10
    while coord.stats()[0].chunk_queue_depth < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    assert coord.stop() is True
    assert time.monotonic() - started < 2.0


def test_stop_gives_up_on_a_fetcher_stuck_in_user_code(ws, caplog, monkeypatch):
    from data_workers._core import coordinator as _coordinator

    monkeypatch.setattr(_coordinator, "STOP_TIMEOUT_SECS", 0.5)
    release = threading.Event()
    net = make_net()

    def stuck(worker_id, batch_size):
        release.wait(30)
        return None

    coord = data_workers.init_data_input_workers(net, ["data", "label"], stuck, 4,
                                                 num_worker_threads=1, timeout=5)
    coord.start()
    time.sleep(0.1)  # let the fetcher enter user code
    started = time.monotonic()
    assert coord.stop() is False  # reported, not hung
    assert time.monotonic() - started < 2.0
    assert any("did not end" in r.getMessage() and "release.wait" in r.getMessage()
               for r in caplog.records)
    release.set()  # let the thread finish so the leak check passes


def test_stop_from_another_thread_while_net_waits(ws):
    net = make_net()
    coord = data_workers.init_data_input_workers(
        net, ["data", "label"], lambda w, b: (time.sleep(0.05), None)[1], 4, timeout=600)
    coord.start()
    workspace.CreateNet(net, overwrite=True)
    stopper = threading.Timer(0.3, coord.stop)
    stopper.start()
    started = time.monotonic()
    with pytest.raises(RuntimeError):
        workspace.RunNet(net.Proto().name)  # the closed queue ends the wait
    assert time.monotonic() - started < 2.0
    stopper.join()


def test_stopped_input_cannot_be_restarted(ws):
    net = make_net()
    coord = init_tagged(net)
    group = coord.inputs()[0]
    coord.stop()
    with pytest.raises(data_workers.InputClosedError):
        group.start()


def test_context_manager(ws):
    net = make_net()
    with init_tagged(net) as coord:
        check_tagged(run_and_collect(net, 3))
    assert coord.stats() == ()


def test_stop_coordinator_only_stops_that_source(ws):
    train, val = make_net("train"), make_net("val")
    coord = init_tagged(train, input_source_name="train")
    init_tagged(val, input_source_name="val")
    coord.start()
    coord.stop_coordinator("val")
    assert [s.input_source for s in coord.stats()] == ["train"]
    check_tagged(run_and_collect(train, 5))
    coord.stop()
