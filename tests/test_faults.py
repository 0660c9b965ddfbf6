"""Fault injection: misbehaving fetchers and training loops, for threads and processes.

Each test asserts the outcome a user wants -- a clear error naming where it
happened, or carrying on -- and, through ``conftest.no_leaks`` plus
``no_shm_leak``, that no thread, child process or shared-memory segment is
left behind.  Dequeue timeouts are long (30 s) on purpose: a test that passes
in a few seconds proves nothing waited one out.  Every test has a timeout.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from caffe2.python import core, workspace

import data_workers
from data_workers._core import coordinator as _coordinator
from fault_util import (
    BAD_OUTPUTS,
    PROMPT_SECS,
    PROCESS_ONLY,
    BlockingFetcher,
    FlakyDiskError,
    GatedFetcher,
    RandomBadOutput,
    RandomRaiser,
    SleepForever,
    SlowFetcher,
    SteadyFetcher,
    SuddenDeath,
    TrickleFetcher,
    count_dequeue_ops,
    fetcher_processes,
    kill_trainer_and_check_its_workers_end,
    make_input,
    no_shm_leak,  # noqa: F401  (fixture)
    open_fds,
    run_until_error,
    wait_for,
    worker_type,  # noqa: F401  (fixture)
)
from util import check_tagged

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("ws", "no_shm_leak")]

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
#: For child interpreters: the package from this checkout, whatever is installed.
_PATH = [os.path.dirname(TESTS_DIR)] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
CHILD_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in _PATH if p))


def _stop_raises(coord, error_type):
    with pytest.raises(error_type) as info:
        coord.stop()
    # Raised once: a second stop() is quiet and succeeds.
    assert coord.stop() is True
    return info.value


# ----------------------------------------------------------------------------- fetchers


def test_fetcher_raises_at_random(worker_type):
    net = core.Net("raises")
    coord = make_input(net, RandomRaiser(p=0.05, seed=3), num_worker_threads=3,
                       worker_type=worker_type)
    coord.start()
    batches, net_error, secs = run_until_error(net)
    assert net_error is not None, "the net kept running although a fetcher raised"
    assert secs < PROMPT_SECS, "RunNet waited %.1f s for a failed input" % secs
    err = _stop_raises(coord, data_workers.FetcherError)
    assert err.input_source == "train"
    assert err.worker_id in coord.get_worker_ids()
    assert "FlakyDiskError" in str(err) and "sector" in str(err)
    cause = err.__cause__
    assert isinstance(cause, FlakyDiskError)
    if worker_type == "process":
        # The child's traceback travels as text, chained under the original.
        assert isinstance(cause.__cause__, data_workers.RemoteTraceback)
        assert "fault_fetchers.py" in cause.__cause__.tb_text
    # What was delivered before the failure is whole, in order, lossless.
    check_tagged(batches, batch_size=8)
    assert coord.stats() == ()  # stop() forgot the input


@pytest.mark.parametrize("kind", sorted(BAD_OUTPUTS))
def test_fetcher_returns_bad_output_at_random_thread(kind):
    _bad_output_case(kind, "thread")


@pytest.mark.parametrize("kind", ["not_a_list", "rows_mismatch", "dtype_change"])
@pytest.mark.parametrize("wt", PROCESS_ONLY)
def test_fetcher_returns_bad_output_at_random_process(kind, wt):
    _bad_output_case(kind, wt)


def _bad_output_case(kind, worker_type):
    net = core.Net("bad_" + kind)
    coord = make_input(net, RandomBadOutput(kind, p=0.1, seed=5), num_worker_threads=2,
                       worker_type=worker_type)
    coord.start()
    batches, net_error, secs = run_until_error(net)
    assert net_error is not None and secs < PROMPT_SECS
    err = _stop_raises(coord, getattr(data_workers, BAD_OUTPUTS[kind]))
    assert isinstance(err, TypeError if BAD_OUTPUTS[kind] == "ChunkTypeError" else ValueError)
    assert err.input_source == "train" and err.worker_id in coord.get_worker_ids()
    assert "fetcher %d of input 'train'" % err.worker_id in str(err)
    check_tagged(batches, batch_size=8)  # never a partial batch


def test_thread_fetcher_hangs_forever(monkeypatch, caplog):
    """A fetcher thread stuck in user code cannot be interrupted: stop() must not
    hang on it, must say where it is stuck, and must return False."""
    monkeypatch.setattr(_coordinator, "STOP_TIMEOUT_SECS", 0.5)
    release = threading.Event()
    entered = threading.Event()
    net = core.Net("hangs")
    coord = make_input(net, BlockingFetcher(release, good=2, entered=entered), timeout=0.5,
                       num_worker_threads=1)
    try:
        coord.start()
        assert entered.wait(10)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="data_workers"):
            assert coord.stop() is False
        assert time.monotonic() - started < PROMPT_SECS
        stuck = [r.getMessage() for r in caplog.records if "did not end" in r.getMessage()]
        assert stuck and "fetcher" in stuck[0] and "in __call__" in stuck[0] \
            and "release.wait()" in stuck[0], stuck
    finally:
        release.set()  # the user code returns at last; the thread then ends


@pytest.mark.parametrize("wt", PROCESS_ONLY)
def test_process_fetcher_hangs_forever(wt, monkeypatch, caplog, tmp_path):
    """A hung worker process is terminated by stop(), which reports it and returns False."""
    monkeypatch.setattr(_coordinator, "STOP_TIMEOUT_SECS", 0.5)
    net = core.Net("hangs_p")
    coord = make_input(net, SleepForever(good=3, marker_dir=str(tmp_path)), num_worker_threads=2,
                       worker_type=wt)
    coord.start()
    workspace.CreateNet(net, overwrite=True)
    workspace.RunNet(net.Proto().name)  # 6 chunks of >= 1 row: at least one batch
    wait_for(lambda: len(os.listdir(str(tmp_path))) == 2, 20, "both workers to hang")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="data_workers"):
        assert coord.stop() is False
    assert time.monotonic() - started < PROMPT_SECS + 2
    assert any("terminating" in r.getMessage() for r in caplog.records)
    assert not fetcher_processes()


def test_fetcher_sleeps_past_dequeue_timeout(worker_type):
    """A fetcher slower than the dequeue timeout: RunNet times out (Caffe2's error),
    the input is not broken, and the loop carries on with nothing lost."""
    net = core.Net("slow")
    coord = make_input(net, SlowFetcher(delay=0.4, max_rows=8), batch_size=8, timeout=0.1,
                       num_worker_threads=1, worker_type=worker_type)
    coord.start()
    workspace.CreateNet(net, overwrite=True)
    batches, timeouts = [], 0
    deadline = time.monotonic() + 30
    while len(batches) < 4 and time.monotonic() < deadline:
        try:
            workspace.RunNet(net.Proto().name)
        except RuntimeError:
            timeouts += 1
            coord.check()  # nothing failed: does not raise
            continue
        batches.append([workspace.FetchBlob("data"), workspace.FetchBlob("label")])
    assert timeouts > 0 and len(batches) == 4
    assert coord.stats()[0].state == "running"
    assert coord.stop() is True
    check_tagged(batches, batch_size=8)


@pytest.mark.parametrize("how,signal_name,exitcode", [
    ("sigkill", "SIGKILL", -signal.SIGKILL),
    ("segfault", "SIGSEGV", -signal.SIGSEGV),
    ("exit", None, 3),
])
@pytest.mark.parametrize("wt", PROCESS_ONLY)
def test_process_fetcher_dies(wt, how, signal_name, exitcode):
    net = core.Net("dies_" + how)
    coord = make_input(net, SuddenDeath(how, p=0.2, seed=1), num_worker_threads=2, worker_type=wt)
    coord.start()
    batches, net_error, secs = run_until_error(net)
    assert net_error is not None and secs < PROMPT_SECS
    err = _stop_raises(coord, data_workers.WorkerDiedError)
    assert err.exitcode == exitcode and err.signal_name == signal_name
    assert err.pid and err.worker_id in coord.get_worker_ids()
    assert "pid %d" % err.pid in str(err)
    check_tagged(batches, batch_size=8)
    assert not fetcher_processes()


@pytest.mark.parametrize("wt", PROCESS_ONLY)
def test_process_fetcher_killed_from_outside(wt):
    """The OOM killer picks a worker process: WorkerDiedError(SIGKILL), the rest stop cleanly."""
    net = core.Net("oom")
    coord = make_input(net, SteadyFetcher(), num_worker_threads=2, worker_type=wt)
    coord.start()
    workspace.CreateNet(net, overwrite=True)
    workspace.RunNet(net.Proto().name)
    victims = fetcher_processes()
    assert len(victims) == 2
    victims[0].kill()
    batches, net_error, secs = run_until_error(net)
    assert net_error is not None and secs < PROMPT_SECS
    err = _stop_raises(coord, data_workers.WorkerDiedError)
    assert err.pid == victims[0].pid and err.signal_name == "SIGKILL"
    assert not fetcher_processes()


# ----------------------------------------------------------------------------- training loop


def test_loop_stops_consuming_mid_stream(worker_type):
    """The loop stops calling RunNet with every buffer full: stop() is prompt and clean."""
    net = core.Net("abandon")
    coord = make_input(net, SteadyFetcher(max_rows=4), batch_size=4, max_buffered_batches=3,
                       num_worker_threads=2, worker_type=worker_type)
    coord.start()
    workspace.CreateNet(net, overwrite=True)
    for _ in range(3):
        workspace.RunNet(net.Proto().name)
    # Everything backs up: Caffe2 queue full, enqueuer blocked, channel full.
    wait_for(lambda: coord.stats()[0].chunk_queue_depth >= 3, 20, "the channel to fill")
    started = time.monotonic()
    assert coord.stop() is True
    assert time.monotonic() - started < PROMPT_SECS


def test_stop_from_another_thread_wakes_runnet(worker_type):
    """stop() on another thread while RunNet waits: RunNet fails promptly, not after timeout=30."""
    net = core.Net("stop_other")
    coord = make_input(net, TrickleFetcher(delay=0.02), batch_size=100000,
                       num_worker_threads=1, worker_type=worker_type)
    coord.start()
    workspace.CreateNet(net, overwrite=True)
    results = []
    stopper = threading.Timer(0.3, lambda: results.append(coord.stop()))
    stopper.start()
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError):
            workspace.RunNet(net.Proto().name)
        assert time.monotonic() - started < PROMPT_SECS
    finally:
        stopper.join()
    assert results == [True]
    assert coord.stop() is True  # a second stop: quiet


def test_start_twice_is_harmless(worker_type):
    net = core.Net("start2")
    coord = make_input(net, SteadyFetcher(), num_worker_threads=2, worker_type=worker_type)
    coord.start()
    threads = set(threading.enumerate())
    procs = {p.pid for p in fetcher_processes()}
    coord.start()
    assert set(threading.enumerate()) == threads
    assert {p.pid for p in fetcher_processes()} == procs
    batches = []
    workspace.CreateNet(net, overwrite=True)
    for _ in range(10):
        workspace.RunNet(net.Proto().name)
        batches.append([workspace.FetchBlob("data"), workspace.FetchBlob("label")])
    check_tagged(batches, batch_size=8)
    assert coord.stop() is True


def test_stop_twice_and_failure_raised_once(worker_type):
    net = core.Net("stop2")
    coord = make_input(net, RandomRaiser(p=1.0), num_worker_threads=1, worker_type=worker_type)
    coord.start()
    _, net_error, _ = run_until_error(net)
    assert net_error is not None
    with pytest.raises(data_workers.FetcherError):
        coord.stop()
    assert coord.stop() is True
    assert coord.stop() is True
    # A stopped input is gone; starting the coordinator again starts nothing.
    coord.start()
    assert coord.stats() == ()


def test_stop_races_start(worker_type):
    """start() and stop() on two threads, racing: never a hang, never a leak;
    start() either succeeds (and stop() stopped it) or raises InputClosedError."""
    for i in range(4 if worker_type == "process" else 20):
        net = core.Net("race")
        coord = make_input(net, SteadyFetcher(), num_worker_threads=2, worker_type=worker_type)
        errors = []

        def starter():
            try:
                coord.start()
            except data_workers.InputClosedError as exc:
                errors.append(exc)

        t = threading.Thread(target=starter)
        t.start()
        if i % 2:
            time.sleep(0.001 * i)  # vary the interleaving; not synchronisation
        assert coord.stop() in (True, False)
        t.join(20)
        assert not t.is_alive()
        coord.stop()
        wait_for(lambda: not fetcher_processes(), 10, "fetcher processes to exit")
        workspace.ResetWorkspace()


def test_keyboard_interrupt_inside_runnet(worker_type):
    """Ctrl-C while RunNet waits for a batch: KeyboardInterrupt reaches the loop as
    soon as RunNet returns, and the loop's finally: stop() is prompt and clean.
    Ctrl-C reaches the terminal's foreground process group: the trainer, and
    any worker process in its group (process workers run in a session of their
    own, so none is); the trainer stops the workers."""
    net = core.Net("ctrl_c")
    coord = make_input(net, TrickleFetcher(delay=0.05), batch_size=8, num_worker_threads=1,
                       worker_type=worker_type, timeout=5)
    workspace.CreateNet(net, overwrite=True)
    children = []

    def ctrl_c():
        # As a terminal would: SIGINT to every process of the trainer's group
        # (without signalling the group itself: it may hold the test runner's parent).
        for p in children:
            if os.getpgid(p.pid) == os.getpgrp():
                p.send_signal(signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, ctrl_c)
    iterations = 0
    stop_secs = None
    try:
        coord.start()
        children.extend(fetcher_processes())
        with pytest.raises(KeyboardInterrupt):
            try:
                timer.start()
                for iterations in range(1, 200):
                    workspace.RunNet(net.Proto().name)  # ~0.4 s per batch: blocked when hit
            finally:
                started = time.monotonic()
                assert coord.stop() is True
                stop_secs = time.monotonic() - started
    finally:
        timer.cancel()
        timer.join()
        signal.signal(signal.SIGINT, previous)
    assert iterations < 10
    assert stop_secs is not None and stop_secs < PROMPT_SECS
    assert all(not p.is_running() or p.status() == "zombie" for p in children)


_EXIT_SCRIPT = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np
    from caffe2.python import core, workspace
    import data_workers

    def fetch(worker_id, batch_size):
        if MODE == "hung_fetcher" and worker_id == 0:
            threading.Event().wait()  # stuck in user code, forever
        return [np.ones((3, 2), np.float32), np.zeros(3, np.int32)]

    MODE = sys.argv[1]
    WORKER_TYPE = sys.argv[2]

    def main():
        workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
        if MODE == "split_copies":  # every piece copied by two threads
            from data_workers._core import rebatch as _rebatch
            _rebatch.SPLIT_COPY_MIN_BYTES = 1
        net = core.Net("exit_test")
        coord = data_workers.init_data_input_workers(
            net, ["data", "label"], fetch, 4, num_worker_threads=2, timeout=30,
            worker_type=WORKER_TYPE)
        workspace.CreateNet(net)
        coord.start()
        for _ in range(5 if MODE != "hung_fetcher" else 1):
            workspace.RunNet(net.Proto().name)
        import psutil
        kids = [p.pid for p in psutil.Process().children()
                if "resource_tracker" not in " ".join(p.cmdline())]
        print("CHILDREN", " ".join(map(str, kids)), flush=True)
        if MODE == "raise":
            raise SystemExit("trainer crashed")
        if MODE == "sys_exit":
            sys.exit(0)
        # MODE "fall_off" / "hung_fetcher" / "split_copies": the script just ends,
        # workers running

    if __name__ == "__main__":
        main()
""")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode,rc", [("fall_off", 0), ("sys_exit", 0), ("raise", 1),
                                     ("hung_fetcher", 0), ("split_copies", 0)])
def test_interpreter_exit_without_stop(worker_type, tmp_path, mode, rc):
    """The script ends (or crashes) with workers running: exit within seconds,
    no worker process left behind."""
    if mode == "hung_fetcher" and worker_type == "process":
        pytest.skip("covered by test_process_fetcher_hangs_forever (processes are terminated)")
    script = tmp_path / "trainer.py"
    script.write_text(_EXIT_SCRIPT)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), mode, worker_type], cwd=TESTS_DIR,
                          env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=60)
    elapsed = time.monotonic() - started
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == rc, out
    assert elapsed < 45, "exit took %.1f s" % elapsed
    if mode == "split_copies":  # the copy helper's shutdown at exit is no input failure
        assert "Traceback" not in out and "failed" not in out, out
    line = [l for l in out.splitlines() if l.startswith("CHILDREN")]
    assert line, out
    pids = [int(p) for p in line[0].split()[1:]]
    assert len(pids) == (2 if worker_type == "process" else 0)
    import psutil
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                             for p in pids), 10, "worker processes to exit")


@pytest.mark.parametrize("fetcher", ["steady", "stuck"])
@pytest.mark.parametrize("wt", PROCESS_ONLY)
def test_trainer_killed_leaves_no_worker_process(wt, fetcher, tmp_path):
    """The OOM killer picks the *trainer*: its worker processes end within
    seconds, even those busy inside fetch_fun, instead of living on as orphans."""
    kill_trainer_and_check_its_workers_end(tmp_path / "killed_trainer.py",
                                           [fetcher, "spawn", "main"], TESTS_DIR, CHILD_ENV)


# ----------------------------------------------------------------------------- Caffe2 side


def test_two_nets_share_blob_names_with_different_sources(worker_type):
    """Train and val nets both read blobs "data"/"label", from two inputs:
    each net gets only its own input's rows, each stream lossless and in order."""
    train_net, val_net = core.Net("train_net"), core.Net("val_net")
    coord = make_input(train_net, SteadyFetcher(seed=1, marker=1.0), input_source_name="train",
                       worker_type=worker_type)
    make_input(val_net, SteadyFetcher(seed=2, marker=2.0), input_source_name="val",
               batch_size=5, worker_type=worker_type)
    coord.start()
    workspace.CreateNet(train_net, overwrite=True)
    workspace.CreateNet(val_net, overwrite=True)
    got = {"train": [], "val": []}
    for i in range(30):
        for source, net in (("train", train_net), ("val", val_net)):
            if source == "val" and i % 3:
                continue
            workspace.RunNet(net.Proto().name)
            got[source].append([workspace.FetchBlob("data"), workspace.FetchBlob("label")])
    assert coord.stop() is True
    assert all((d[:, 2] == 1.0).all() for d, _ in got["train"])
    assert all((d[:, 2] == 2.0).all() for d, _ in got["val"])
    check_tagged(got["train"], batch_size=8)
    check_tagged(got["val"], batch_size=5)


def test_reset_data_input_new_batch_size_mid_run(worker_type):
    """reset_data_input(…, batch_size=5) mid-run: one dequeue op (no duplicate),
    old-size batches already queued come first, then only new-size batches,
    and every row arrives once, in order."""
    net = core.Net("resize")
    coord = make_input(net, SteadyFetcher(max_rows=7), batch_size=8, num_worker_threads=2,
                       worker_type=worker_type)
    coord.start()
    workspace.CreateNet(net, overwrite=True)
    batches = []

    def run(n):
        for _ in range(n):
            workspace.RunNet(net.Proto().name)
            batches.append([workspace.FetchBlob("data"), workspace.FetchBlob("label")])

    run(10)
    coord.reset_data_input("", "train", net, 5)
    coord.reset_data_input("", "train", net, 5)  # twice: still one dequeue op
    assert count_dequeue_ops(net) == 1
    workspace.CreateNet(net, overwrite=True)
    run(30)
    other = core.Net("resize_other")
    coord.reset_data_input("", "train", other, 3)
    assert count_dequeue_ops(other) == 1 and count_dequeue_ops(net) == 1
    workspace.CreateNet(other, overwrite=True)
    for _ in range(20):
        workspace.RunNet(other.Proto().name)
        batches.append([workspace.FetchBlob("data"), workspace.FetchBlob("label")])
    assert coord.stop() is True
    sizes = [len(label) for _, label in batches]
    # Sizes only ever step down 8 -> 5 -> 3, after at most a few queued batches.
    assert sizes == sorted(sizes, reverse=True) and set(sizes) <= {8, 5, 3}
    assert sizes[-1] == 3 and sizes[:10] == [8] * 10 and 5 in sizes
    check_tagged(batches, batch_size=None)


def test_start_stop_cycles_leak_nothing(worker_type):
    """Repeated init/start/consume/stop cycles: threads, fds and processes return
    to their level after the first cycle."""
    levels = []
    for cycle in range(3 if worker_type == "process" else 8):
        net = core.Net("cycle")
        coord = make_input(net, SteadyFetcher(seed=cycle), num_worker_threads=2,
                           worker_type=worker_type)
        coord.start()
        workspace.CreateNet(net, overwrite=True)
        for _ in range(5):
            workspace.RunNet(net.Proto().name)
        assert coord.stop() is True
        wait_for(lambda: not fetcher_processes(), 10, "fetcher processes to exit")
        levels.append((threading.active_count(), open_fds()))
        workspace.ResetWorkspace()
    assert len(set(levels[1:])) == 1, levels
