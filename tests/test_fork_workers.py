"""Process workers forked from the trainer (``start_method="fork"``), attacked.

A fork copies the trainer: its signal handlers, every descriptor it holds (other
workers' sockets, other inputs' rings), its buffered output and the thread that
forked.  Each test takes one of those and shows the worker does not inherit it
in a way that breaks a promise: batches arrive whole, deaths and errors are
reported, ``terminate()`` ends a worker, end-of-file reaches each worker alone,
memory goes back when its input stops, and a killed trainer leaves no worker.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

import numpy as np
import pytest

import data_workers
from fault_util import kill_trainer_and_check_its_workers_end, wait_for, wait_for_failure
from util import SelfDestruct, check_tagged, init_tagged, make_net, open_fds, run_and_collect

pytestmark = pytest.mark.timeout(120)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
_PATH = [os.path.dirname(TESTS_DIR)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in _PATH if p))


def fds_of(pid: int) -> list[str]:
    """What each descriptor of ``pid`` points at (``socket:[123]``, ``/memfd:...``)."""
    out = []
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            out.append(os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        except OSError:
            continue
    return out


def test_forked_workers_feed_a_net_and_leave_nothing_behind(ws):
    fds_before = open_fds()
    for i in range(3):
        net = make_net("fork%d" % i)
        coord = init_tagged(net, worker_type="process", num_worker_threads=2,
                            start_method="fork")
        coord.start()
        check_tagged(run_and_collect(net, 20))
        assert len(set(coord.stats()[0].worker_pids)) == 2
        assert coord.stop() is True
    assert open_fds() <= fds_before + 2  # the conftest checks processes and threads


@pytest.mark.parametrize("how,exitcode,signal_name", [
    ("kill", -9, "SIGKILL"), ("segfault", -11, "SIGSEGV"), ("exit", 3, None)])
def test_a_forked_worker_that_dies_is_named_with_its_pid_and_signal(ws, how, exitcode,
                                                                    signal_name):
    net = make_net()
    coord = init_tagged(net, fetch_fun=SelfDestruct(how), worker_type="process",
                        num_worker_threads=1, batch_size=4, timeout=600,
                        input_source_name="f", start_method="fork")
    coord.start()
    pid = coord.stats()[0].worker_pids[0]
    wait_for_failure(coord)
    with pytest.raises(data_workers.WorkerDiedError) as info:
        coord.stop()
    err = info.value
    assert err.pid == pid and err.exitcode == exitcode and err.signal_name == signal_name
    assert "fetcher %d (pid %d) of input 'f'" % (err.worker_id, pid) in str(err)


class Raises:
    def __call__(self, worker_id, batch_size):
        raise KeyError("record 17")


def test_a_forked_workers_exception_comes_back_with_its_traceback(ws):
    net = make_net()
    coord = init_tagged(net, fetch_fun=Raises(), worker_type="process", num_worker_threads=1,
                        start_method="fork")
    coord.start()
    wait_for_failure(coord)
    with pytest.raises(data_workers.FetcherError, match="record 17") as info:
        coord.stop()
    assert isinstance(info.value.__cause__, KeyError)


class Sleeps:
    def __call__(self, worker_id, batch_size):
        time.sleep(3600)


def test_the_trainers_sigterm_handler_does_not_keep_a_worker_alive(ws, tmp_path):
    """stop() ends a worker stuck in fetch_fun with SIGTERM; a handler the trainer
    installed must not run in the worker instead (it would outlive SIGTERM)."""
    ran = tmp_path / "handler_ran"

    def handler(signum, frame):
        with open(ran, "a") as f:
            f.write("%d\n" % os.getpid())

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        net = make_net()
        coord = init_tagged(net, fetch_fun=Sleeps(), worker_type="process",
                            num_worker_threads=2, start_method="fork")
        coord.start()
        wait_for(lambda: all(p is not None for p in coord.stats()[0].worker_pids), 10,
                 "the workers to start")
        time.sleep(0.5)  # inside fetch_fun
        started = time.monotonic()
        coord.stop()
        took = time.monotonic() - started
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not ran.exists(), "the trainer's handler ran in: %s" % ran.read_text()
    assert took < 12  # the stop deadline and SIGTERM, not SIGKILL after a wait


def test_each_forked_worker_holds_only_its_own_sockets_and_ring(ws):
    """A worker holding the trainer's end of a sibling's socket would keep that
    sibling from seeing end-of-file; one mapping another input's ring would keep
    that memory after its input stopped."""
    other = init_tagged(make_net("other"), worker_type="process", num_worker_threads=1,
                        input_source_name="other")
    net = make_net()
    coord = init_tagged(net, worker_type="process", num_worker_threads=3,
                        input_source_name="forked", start_method="fork")
    other_inputs = data_workers.global_coordinator
    other_inputs.start()
    try:
        run_and_collect(net, 5)
        pids = [p for s in coord.stats() if s.input_source == "forked" for p in s.worker_pids]
        assert len(pids) == 3
        for pid in pids:
            links = fds_of(pid)
            assert sum(l.startswith("socket:") for l in links) == 2, links
            memfds = [l for l in links if "memfd:" in l]
            # Its ring (the descriptor it was given, and the one its mapping holds).
            assert len(set(memfds)) == 1 and "data_workers-forked" in memfds[0], links
            with open("/proc/%d/maps" % pid) as f:
                mapped = f.read()
            assert "data_workers-other" not in mapped
        # Every trainer end appears in exactly one worker: its own.
        socket_owners: dict[str, int] = {}
        for pid in pids:
            for link in fds_of(pid):
                if link.startswith("socket:"):
                    assert link not in socket_owners
                    socket_owners[link] = pid
    finally:
        assert other_inputs.stop() is True
    del other


@pytest.mark.parametrize("fetcher", ["steady", "stuck"])
@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_a_killed_trainer_leaves_no_forked_worker(fetcher, started_from, tmp_path):
    """Started from another thread, no parent-death signal applies: each worker
    must see end-of-file on its own sockets, which no sibling may hold."""
    kill_trainer_and_check_its_workers_end(tmp_path / "trainer.py", [fetcher, "fork", started_from],
                                           TESTS_DIR, CHILD_ENV)


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_a_lock_held_at_the_fork_is_a_stall_warning_and_a_clean_stop(ws, start_method, caplog):
    """Fork's hazard, met on purpose: a trainer thread holds a lock that fetch_fun
    takes when the workers fork.  A forked worker waits on it forever; the input
    says so (the stall warning) and stop() ends the worker.  A spawned worker
    imports the lock anew and feeds the net."""
    from fault_fetchers import SHARED_LOCK, NeedsTheSharedLock

    net = make_net()
    coord = init_tagged(net, fetch_fun=NeedsTheSharedLock(), worker_type="process",
                        num_worker_threads=1, batch_size=4, timeout=2, start_method=start_method,
                        stall_warning_secs=1)
    with SHARED_LOCK:  # held by this thread while the worker starts
        coord.start()
        wait_for(lambda: coord.stats()[0].worker_pids[0] is not None, 10, "the worker")
        time.sleep(0.2)
    if start_method == "spawn":
        run_and_collect(net, 3)
    else:
        with caplog.at_level(logging.WARNING, logger="data_workers"):
            wait_for(lambda: any("no batch moved" in r.getMessage() for r in caplog.records),
                     20, "the stall warning")
    started = time.monotonic()
    assert coord.stop(timeout=1) is (start_method == "spawn")  # False: it had to be ended
    assert time.monotonic() - started < 5


def test_start_method_is_checked(ws):
    with pytest.raises(ValueError, match="start_method must be one of"):
        init_tagged(make_net(), worker_type="process", start_method="forkserver")
    with pytest.raises(ValueError, match="worker_type='process' too"):
        init_tagged(make_net(), start_method="fork")


def test_forked_workers_seed_differently_and_reproducibly(ws):
    def values(seed):
        net = make_net("seed%d" % seed)
        coord = data_workers.init_data_input_workers(
            net, ["data", "label"], lambda w, b: [np.random.rand(8, 2), np.full(8, w, np.int32)],
            8, num_worker_threads=2, worker_type="process", seed=seed, timeout=5,
            dont_rebatch=True, deterministic=True, start_method="fork")
        coord.start()
        out = [d for d, _ in run_and_collect(net, 4)]
        assert coord.stop() is True
        return out

    first, again = values(7), values(7)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # worker 0 and worker 1
