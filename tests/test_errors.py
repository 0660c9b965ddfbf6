"""Failures are fast and loud: the net fails within a second, stop()/check() raise the cause."""

from __future__ import annotations

import logging
import re
import threading
import time

import numpy as np
import pytest
from caffe2.python import workspace

import data_workers
from fault_util import PROMPT_SECS, wait_for_failure
from data_workers import parallel_workers
from data_workers.sharding import ShardedSource
from util import failing_fetcher, init_tagged, make_net

pytestmark = pytest.mark.timeout(60)


def _net_fails_within(net, seconds: float, coord=None) -> float:
    """Once the input has failed, the net's next dequeue must fail within ``seconds``."""
    if coord is not None:
        wait_for_failure(coord)
    workspace.CreateNet(net, overwrite=True)
    for _ in range(10):  # batches queued before the failure are still delivered
        started = time.monotonic()
        try:
            workspace.RunNet(net.Proto().name)
        except RuntimeError:
            took = time.monotonic() - started
            assert took < seconds, "the failing dequeue took %.2f s" % took
            return took
    raise AssertionError("the net never failed")


def test_blocked_dequeue_fails_within_a_second_of_the_failure(ws):
    net = make_net()
    go = threading.Event()
    failed_at = []

    def fetch(worker_id, batch_size):
        go.wait(10)
        failed_at.append(time.monotonic())
        raise OSError("network share vanished")

    coord = data_workers.init_data_input_workers(net, ["data", "label"], fetch, 32,
                                                 num_worker_threads=1, timeout=600)
    coord.start()
    workspace.CreateNet(net, overwrite=True)
    timer = threading.Timer(0.3, go.set)
    timer.start()
    with pytest.raises(RuntimeError):
        workspace.RunNet(net.Proto().name)  # blocked in DequeueBlobs when the fetcher fails
    returned_at = time.monotonic()
    timer.join()
    assert returned_at - failed_at[0] < PROMPT_SECS  # not the 600 s timeout
    with pytest.raises(data_workers.FetcherError, match="network share vanished"):
        coord.stop()


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_fetcher_exception_fails_net_fast_and_stop_reraises(ws, caplog, worker_type):
    net = make_net()
    coord = init_tagged(net, fetch_fun=failing_fetcher, timeout=600, worker_type=worker_type,
                        num_worker_threads=1, input_source_name="src")
    with caplog.at_level(logging.ERROR, logger="data_workers"):
        coord.start()
        _net_fails_within(net, 1.0, coord)
        with pytest.raises(data_workers.FetcherError) as info:
            coord.stop()
    err = info.value
    assert isinstance(err.__cause__, ValueError) and "disk on fire" in str(err.__cause__)
    assert err.input_source == "src" and err.worker_id == coord.get_worker_ids()[-1]
    assert "fetcher" in str(err) and "'src'" in str(err)
    # Reported once: raised by stop(), so not logged as well.
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR and "disk on fire" in r.getMessage()]
    assert failures == []
    if worker_type == "process":
        assert isinstance(err.__cause__.__cause__, data_workers.RemoteTraceback)
        assert "failing_fetcher" in err.__cause__.__cause__.tb_text


def test_check_raises_once_then_stop_is_quiet(ws):
    net = make_net()
    coord = init_tagged(net, fetch_fun=failing_fetcher)
    coord.start()
    _net_fails_within(net, 1.0, coord)
    with pytest.raises(data_workers.FetcherError):
        coord.check()
    coord.check()  # raised once only
    assert coord.stop() is True


def test_init_fun_failure_raised_by_start(ws):
    net = make_net()

    def init_fun(input_coordinator, global_coordinator):
        raise RuntimeError("no credentials")

    coord = init_tagged(net, init_fun=init_fun)
    with pytest.raises(data_workers.FetcherError, match="init_fun") as info:
        coord.start()
    assert isinstance(info.value.__cause__, RuntimeError)
    _net_fails_within(net, 1.0, coord)
    assert coord.stop() is True  # already raised by start()


def test_init_fun_runs_once_before_workers(ws):
    net = make_net()
    calls = []

    def init_fun(input_coordinator, global_coordinator):
        calls.append((input_coordinator.get_worker_ids(), global_coordinator))
        assert input_coordinator.stats().rows_fetched == 0

    coord = init_tagged(net, init_fun=init_fun)
    coord.start()
    coord.start()
    coord.stop()
    assert len(calls) == 1 and calls[0][1] is coord


def test_shape_change_between_chunks(ws):
    """Upstream's enqueuer died silently here and the net waited out its timeout."""
    net = make_net()
    state = {"n": 0}

    def fetch(worker_id, batch_size):
        state["n"] += 1
        width = 3 if state["n"] < 5 else 4
        return [np.zeros((10, width)), np.zeros((10,), np.int32)]

    coord = data_workers.init_data_input_workers(net, ["data", "label"], fetch, 32,
                                                 num_worker_threads=1, timeout=600)
    coord.start()
    _net_fails_within(net, 1.0, coord)
    with pytest.raises(data_workers.ChunkValueError) as info:
        coord.stop()
    msg = str(info.value)
    assert "fetcher" in msg and "'data'" in msg and "(10, 4)" in msg and "(3,)" in msg
    assert isinstance(info.value, ValueError)


BAD_OUTPUTS = [
    ("not a list", lambda: np.zeros((4, 3)), data_workers.ChunkTypeError, "expected a list of 2"),
    ("wrong count", lambda: [np.zeros((4, 3))], data_workers.ChunkTypeError, "1 arrays; expected 2"),
    ("non-array", lambda: [np.zeros((4, 3)), [1, 2, 3, 4]], data_workers.ChunkTypeError,
     "list for blob 'label'"),
    ("row mismatch", lambda: [np.zeros((4, 3)), np.zeros((5,), np.int32)],
     data_workers.ChunkValueError, "5 rows for blob 'label'"),
    ("0-d array", lambda: [np.zeros((4, 3)), np.array(3)], data_workers.ChunkValueError,
     "no batch column 0"),
    ("complex dtype", lambda: [np.zeros((4, 3), np.complex64), np.zeros((4,), np.int32)],
     data_workers.ChunkTypeError, "dtype complex64 for blob 'data'"),
]


@pytest.mark.parametrize("case,make,exc,fragment", BAD_OUTPUTS, ids=[b[0] for b in BAD_OUTPUTS])
def test_bad_fetcher_output_gets_precise_error(ws, case, make, exc, fragment):
    net = make_net()
    coord = data_workers.init_data_input_workers(
        net, ["data", "label"], lambda w, b: make(), 32, num_worker_threads=1,
        input_source_name="bad", timeout=600)
    coord.start()
    _net_fails_within(net, 1.0, coord)
    with pytest.raises(exc) as info:
        coord.stop()
    assert fragment in str(info.value)
    assert "fetcher %d of input 'bad'" % coord.get_worker_ids()[-1] in str(info.value)


def test_batch_columns_out_of_range(ws):
    net = make_net()
    coord = data_workers.init_data_input_workers(
        net, ["data", "label"], lambda w, b: [np.zeros((4, 3)), np.zeros((4,), np.int32)], 4,
        num_worker_threads=1, batch_columns=[0, 1], timeout=600)
    coord.start()
    _net_fails_within(net, 1.0, coord)
    with pytest.raises(data_workers.ChunkValueError, match="blob 'label'.*no batch column 1"):
        coord.stop()


def test_none_and_empty_chunks_are_skipped_and_counted(ws, caplog):
    net = make_net()
    calls = {"n": 0}

    def fetch(worker_id, batch_size):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            return None
        if calls["n"] % 3 == 1:
            return [np.zeros((0, 3)), np.zeros((0,), np.int32)]
        return [np.ones((8, 3)), np.ones((8,), np.int32)]

    coord = data_workers.init_data_input_workers(net, ["data", "label"], fetch, 8,
                                                 num_worker_threads=1, timeout=5)
    with caplog.at_level(logging.WARNING, logger="data_workers"):
        coord.start()
        workspace.CreateNet(net, overwrite=True)
        for _ in range(5):
            workspace.RunNet(net.Proto().name)
        stats = coord.stats()[0]
        coord.stop()
    assert stats.chunks_skipped >= 8
    assert any("returned None; skipped" in r.getMessage() for r in caplog.records)


def _closure_over_a_lock():
    lock = threading.Lock()
    return lambda worker_id, batch_size: lock


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(num_worker_threads=0), "num_worker_threads"),
    (dict(max_buffered_batches=2.5), "max_buffered_batches"),
    (dict(batch_columns=[0]), "batch_columns must list one"),
    (dict(worker_type="fiber"), "worker_type must be one of"),
    (dict(timeout=0), "timeout must be a positive"),
    (dict(input_blob_names="data"), "input_blob_names must be a non-empty list"),
    (dict(fetch_fun=None), "fetch_fun must be callable"),
    (dict(init_fun=5), "init_fun must be None or callable"),
    (dict(input_source_name=3), "input_source_name must be a str"),
    (dict(worker_type="process", fetch_fun=_closure_over_a_lock()),
     r"fetch_fun .*cannot pickle '_thread.lock' object"),
])
def test_invalid_arguments_rejected_at_init(ws, kwargs, fragment):
    args = dict(net=make_net(), input_blob_names=["data", "label"],
                fetch_fun=lambda w, b: None, batch_size=4)
    args.update(kwargs)
    with pytest.raises((TypeError, ValueError), match=fragment):
        data_workers.init_data_input_workers(**args)


@pytest.mark.parametrize("make,error,message", [
    (lambda: parallel_workers.init_workers(lambda wid: None, num_worker_threads=True),
     TypeError, "num_worker_threads must be a positive int, got bool True"),
    (lambda: parallel_workers.init_workers(lambda wid: None, num_worker_threads=0),
     ValueError, "num_worker_threads must be a positive int, got 0"),
    (lambda: ShardedSource([np.arange(8.0)], batch_size=True),
     TypeError, "batch_size must be a positive int, got bool True"),
    (lambda: ShardedSource([np.arange(8.0)], batch_size=2, world_size=0),
     ValueError, "world_size must be a positive int, got 0"),
])
def test_counts_are_checked_alike_by_every_entry_point(make, error, message):
    """One rule for counts everywhere: positive integral numbers, and a bool is not a
    count (a wrong type is a TypeError, a wrong value a ValueError)."""
    with pytest.raises(error, match=re.escape(message)):
        make()
