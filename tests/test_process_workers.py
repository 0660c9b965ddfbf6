"""Process workers: dead workers fail fast, nothing outlives stop(), seeding, determinism."""

from __future__ import annotations

import socket
import threading
import time
from multiprocessing.connection import Connection

import numpy as np
import pytest
from caffe2.python import workspace

import data_workers
from fault_util import PROMPT_SECS, wait_for_failure
from util import (RandomValues, SelfDestruct, TaggedFetcher, check_tagged, init_tagged, make_net,
                  open_fds, run_and_collect, shm_segments)

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("how,exitcode,signal_name", [
    ("kill", -9, "SIGKILL"), ("segfault", -11, "SIGSEGV"), ("exit", 3, None)])
def test_dead_worker_is_reported_and_fails_the_net_fast(ws, how, exitcode, signal_name):
    net = make_net()
    coord = init_tagged(net, fetch_fun=SelfDestruct(how), worker_type="process",
                        num_worker_threads=1, batch_size=4, timeout=600, input_source_name="p")
    shm_before = shm_segments()
    coord.start()
    pid = coord.stats()[0].worker_pids[0]
    wait_for_failure(coord)
    workspace.CreateNet(net, overwrite=True)
    with pytest.raises(RuntimeError):
        for _ in range(10):  # the three good chunks may still be queued
            started = time.monotonic()
            workspace.RunNet(net.Proto().name)
    assert time.monotonic() - started < PROMPT_SECS  # not the 600 s timeout
    with pytest.raises(data_workers.WorkerDiedError) as info:
        coord.stop()
    err = info.value
    assert err.pid == pid and err.exitcode == exitcode and err.signal_name == signal_name
    assert "fetcher %d (pid %d) of input 'p'" % (err.worker_id, pid) in str(err)
    assert shm_segments() <= shm_before


def test_ten_start_stop_cycles_leave_nothing_behind(ws):
    shm_before = shm_segments()
    fds_before = open_fds()
    for i in range(10):  # 50 more cycles, mostly threads: test_shutdown_attacks.py
        net = make_net("cycle%d" % i)
        coord = init_tagged(net, worker_type="process", num_worker_threads=2)
        coord.start()
        if i % 3 == 0:
            check_tagged(run_and_collect(net, 2))
        assert coord.stop() is True
    assert shm_segments() <= shm_before
    assert open_fds() <= fds_before + 2  # the conftest checks processes and threads


def test_each_process_seeds_differently_and_reproducibly(ws):
    def collect(seed):
        net = make_net("seed%s" % seed)
        coord = data_workers.init_data_input_workers(
            net, ["data", "label"], RandomValues(), 8, num_worker_threads=2, timeout=10,
            worker_type="process", seed=seed, deterministic=True)
        coord.start()
        out = run_and_collect(net, 4)
        coord.stop()
        return out

    a, b = collect(7), collect(7)
    for (da, la), (db, lb) in zip(a, b):
        np.testing.assert_array_equal(da, db)
    # Round-robin: batches alternate between the two workers, whose streams differ.
    assert a[0][1][0] != a[1][1][0]
    assert not np.array_equal(a[0][0], a[1][0])


def _expected_round_robin(worker_ids, fetcher, batch_size, batches):
    """The batch stream deterministic mode must produce: one chunk per worker in turn."""
    rows = []
    while len(rows) < batch_size * batches:
        for wid in worker_ids:
            data, label = fetcher(wid, batch_size)
            rows.extend(zip(data, label))
    rows = rows[:batch_size * batches]
    return [rows[i * batch_size:(i + 1) * batch_size] for i in range(batches)]


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_deterministic_stream_is_a_function_of_fetcher_outputs(ws, worker_type):
    net = make_net()
    coord = init_tagged(net, fetch_fun=TaggedFetcher(seed=3), worker_type=worker_type,
                        num_worker_threads=3, deterministic=True, max_buffered_batches=3)
    ids = coord.inputs()[0].get_worker_ids()
    coord.start()
    got = run_and_collect(net, 40)
    coord.stop()
    expected = _expected_round_robin(ids, TaggedFetcher(seed=3), 32, 40)
    for (data, label), want in zip(got, expected):
        np.testing.assert_array_equal(data, np.stack([r[0] for r in want]))
        np.testing.assert_array_equal(label, np.array([r[1] for r in want]))


@pytest.mark.parametrize("deterministic", [False, True])
def test_chunk_larger_than_shared_memory_is_a_clear_error(ws, deterministic):
    """Whole batches are made in the ring by default (a batch of 32 rows of 520
    bytes cannot fit 4 KiB); deterministic mode sends chunks (one of 8+ such
    rows cannot).  Either way: a clear error, never a stall."""
    net = make_net()
    coord = init_tagged(net, worker_type="process", num_worker_threads=1,
                        shm_bytes_per_worker=4096, deterministic=deterministic,
                        fetch_fun=TaggedFetcher(max_rows=200, width=64, seed=3),
                        timeout=600)
    coord.start()
    wait_for_failure(coord)
    with pytest.raises(data_workers.ChunkValueError, match="shm_bytes_per_worker"):
        coord.stop()


def test_bad_output_in_a_process_names_worker_and_blob(ws):
    net = make_net()
    coord = data_workers.init_data_input_workers(
        net, ["data", "label"], _returns_list_for_label, 4, num_worker_threads=1,
        worker_type="process", timeout=600)
    coord.start()
    wait_for_failure(coord)
    with pytest.raises(data_workers.ChunkTypeError, match="list for blob 'label'"):
        coord.stop()


def _returns_list_for_label(worker_id, batch_size):
    return [np.zeros((4, 3)), [0, 1, 2, 3]]


class _WholeBatches:
    """Tagged rows, one whole batch of ``rows`` rows (about 64 KiB) per call."""

    def __init__(self, rows: int = 32) -> None:
        self.rows = rows
        self.seq = {}

    def __call__(self, worker_id, batch_size):
        start = self.seq.get(worker_id, 0)
        self.seq[worker_id] = start + self.rows
        data = np.zeros((self.rows, 256), np.float64)
        data[:, 0] = worker_id
        data[:, 1] = np.arange(start, start + self.rows)
        data[:, 2:] = data[:, 1:2]  # every value of a row carries its tag
        return [data, np.arange(start, start + self.rows).astype(np.int32)]


@pytest.mark.parametrize("ring_batches", [4, None])
def test_whole_batches_lent_to_caffe2_arrive_intact(ws, ring_batches):
    """Whole batches go to Caffe2 uncopied, out of the worker's ring (the default
    ring of ten batches); a ring too small to wait for Caffe2 to let go (here four
    batches) is copied from instead.  Either way every row arrives once and in
    order with every value intact, and the ring keeps turning: a batch Caffe2
    still holds is never overwritten, and released memory comes back, or one
    worker making 200 batches would stall."""
    batch_bytes = 32 * (256 * 8 + 4)
    net = make_net()
    coord = init_tagged(net, fetch_fun=_WholeBatches(), worker_type="process",
                        num_worker_threads=1, batch_size=32, max_buffered_batches=4,
                        shm_bytes_per_worker=None if ring_batches is None
                        else ring_batches * (batch_bytes + 128))
    coord.start()
    batches = []
    workspace.CreateNet(net, overwrite=True)
    for _ in range(200):
        workspace.RunNet(net.Proto().name)
        data, label = workspace.FetchBlob("data"), workspace.FetchBlob("label")
        np.testing.assert_array_equal(data[:, 2:], np.repeat(data[:, 1:2], 254, axis=1))
        batches.append([data[:, :3], label])
    stats = coord.stats()[0]
    assert coord.stop() is True
    assert sum(check_tagged(batches).values()) == 200 * 32
    if ring_batches is None:
        assert stats.batches_lent > 0.9 * stats.batches_enqueued
    else:
        assert stats.batches_lent == 0


@pytest.mark.parametrize("deterministic", [False, True])
def test_whole_batches_are_read_by_the_enqueuer_without_receiver_threads(ws, deterministic):
    """Whole batches (the default) go from the workers' sockets to the enqueuer with no
    receiver thread between; chunk mode (deterministic) keeps one per worker.  Either
    way every row arrives exactly once."""
    net = make_net("reader%s" % deterministic)
    coord = init_tagged(net, worker_type="process", num_worker_threads=2,
                        deterministic=deterministic)
    coord.start()
    check_tagged(run_and_collect(net, 6))
    receivers = [t.name for t in threading.enumerate() if "receiver" in t.name]
    assert len(receivers) == (2 if deterministic else 0), receivers
    assert coord.stop() is True


def test_data_socket_reads_every_message_whatever_the_reads_cut():
    """The trainer's end of a data socket parses multiprocessing's framing itself, one
    read per wake-up: messages cut across reads, several in one read, and frames
    larger than its buffer all come out whole and in order."""
    from data_workers._workers.processes import _DataSocket

    ours, theirs = socket.socketpair()
    sender = Connection(theirs.detach())
    reader = _DataSocket(ours)
    messages = [("chunk", i, "x" * (i * 997)) for i in range(120)]
    messages.append(("big", np.arange(300000)))  # 2.4 MB: many reads, buffer grows

    def send() -> None:
        for message in messages:
            sender.send(message)
        sender.close()

    thread = threading.Thread(target=send)
    thread.start()
    got: list = []
    try:
        with pytest.raises(EOFError):
            while True:
                got.extend(reader.read())
    finally:
        thread.join()
        reader.close()
    assert [m[:2] for m in got[:-1]] == [m[:2] for m in messages[:-1]]
    assert [m[2] for m in got[:-1]] == [m[2] for m in messages[:-1]]
    np.testing.assert_array_equal(got[-1][1], messages[-1][1])


@pytest.mark.parametrize("size", [0, 7, 16384, 16385, 3 << 20])
def test_worker_framing_matches_multiprocessing_connection(size):
    # A worker speaks multiprocessing's framing without importing it
    # (_workers/wire.py); the trainer reads with Connection and _DataSocket.
    from data_workers._workers.processes import _DataSocket
    from data_workers._workers.wire import FramedSocket

    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    ours, theirs = socket.socketpair()
    worker = FramedSocket(theirs.detach())
    trainer = Connection(ours.detach())
    try:
        for message in (payload, ("chunk", payload)):
            sender = threading.Thread(target=worker.send, args=(message,))
            sender.start()  # a large frame fills the socket: read while it is sent
            assert trainer.recv() == message
            sender.join()
        sender = threading.Thread(target=trainer.send_bytes, args=(payload,))
        sender.start()
        assert worker.recv_bytes() == payload
        sender.join()
        trainer.send(("ready", size))
        assert worker.recv() == ("ready", size)
        data_ours, data_theirs = socket.socketpair()
        reader = _DataSocket(data_ours)
        data_worker = FramedSocket(data_theirs.detach())
        sender = threading.Thread(target=lambda: [data_worker.send(("chunk", payload, i))
                                                  for i in range(3)])
        sender.start()
        got = []
        while len(got) < 3:
            got.extend(reader.read())
        sender.join()
        assert got == [("chunk", payload, i) for i in range(3)]
        data_worker.close()
        with pytest.raises(EOFError):
            reader.read()
        reader.close()
        trainer.close()  # the trainer's end closes: the worker sees it both ways
        with pytest.raises(EOFError):
            worker.recv_bytes()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            worker.send_bytes(payload + b"!")
    finally:
        trainer.close()
        worker.close()
    with pytest.raises(OSError):
        worker.fileno()
