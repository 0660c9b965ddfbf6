"""Every fetched row reaches the net exactly once, in order per fetcher, in exact batches."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from caffe2.python import core, workspace

import data_workers
from data_workers._core import rebatch as _rebatch
from data_workers._core.validate import Chunk
from util import TaggedFetcher, check_tagged, init_tagged, make_net, run_and_collect

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("worker_type", ["thread", "process"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_exactly_once_in_order_under_back_pressure(ws, worker_type, deterministic):
    net = make_net()
    coord = init_tagged(net, max_buffered_batches=2, num_worker_threads=3,
                        worker_type=worker_type, deterministic=deterministic)
    coord.start()
    batches = run_and_collect(net, 150)
    assert coord.stop() is True
    seen = check_tagged(batches)
    assert sum(seen.values()) == 150 * 32
    assert set(seen) <= set(coord.get_worker_ids())


def test_small_queue_slow_consumer_loses_nothing(ws):
    net = make_net()
    coord = init_tagged(net, max_buffered_batches=2, fetch_fun=TaggedFetcher(max_rows=100))
    coord.start()
    workspace.CreateNet(net, overwrite=True)
    batches = []
    for i in range(60):
        if i % 10 == 0:
            # Let the fetchers run into a full channel and a full Caffe2 queue.
            stats = coord.stats()[0]
            assert stats.chunk_queue_depth <= 2
        workspace.RunNet(net.Proto().name)
        batches.append([workspace.FetchBlob("data"), workspace.FetchBlob("label")])
    coord.stop()
    check_tagged(batches)


class TimeMajorFetcher:
    """(T, N, D) data, (T, N) labels and (N,) lengths; rows tagged along N."""

    def __init__(self) -> None:
        self.seq = {}

    def __call__(self, worker_id, batch_size):
        n = np.random.randint(1, 50)
        start = self.seq.get(worker_id, 0)
        self.seq[worker_id] = start + n
        tags = np.arange(start, start + n)
        data = np.zeros((4, n, 2), np.float32)
        data[:, :, 0] = worker_id
        data[:, :, 1] = tags
        label = np.tile(tags.astype(np.int32), (4, 1))
        lengths = (tags % 7).astype(np.int32)
        return [data, label, lengths]


def _copier_threads():
    return [t for t in threading.enumerate() if "copier" in t.name]


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_pieces_copied_by_two_threads_arrive_exactly_once_in_order(ws, monkeypatch, worker_type):
    """Large pieces are split between the enqueuer and a helper thread (here: every
    piece of 2+ rows); rows still arrive exactly once and in order, and the helper
    ends with the input."""
    monkeypatch.setattr(_rebatch, "SPLIT_COPY_MIN_BYTES", 1)
    net = make_net()
    # deterministic: process workers then send chunks, which the trainer copies
    # (by default they send whole batches, which Caffe2 takes uncopied).
    coord = init_tagged(net, max_buffered_batches=2, fetch_fun=TaggedFetcher(max_rows=100),
                        worker_type=worker_type, deterministic=True)
    coord.start()
    batches = run_and_collect(net, 60)
    assert _copier_threads(), "no piece was split"
    assert coord.stop() is True
    check_tagged(batches)
    assert not _copier_threads(), "stop() returned True while a copier thread ran"


class _BigRows:
    """Chunks of 8 rows of 1 MiB each (float64), tagged in column 0: every batch
    piece is split between the enqueuer and its copier thread."""

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, worker_id, batch_size):
        data = np.empty((8, 1 << 17), np.float64)
        data[:, 0] = np.arange(self.seq, self.seq + 8)
        self.seq += 8
        return [data, np.arange(self.seq - 8, self.seq).astype(np.int32)]


@pytest.mark.parametrize("worker_type, cycles", [("thread", 30), ("process", 6)])
def test_stop_returns_true_only_after_the_copier_thread_ended(ws, worker_type, cycles):
    """Issue 23: in 1 of 10 cycles stop() returned True while ``copier_0`` still ran.
    Cycles stop at varied points: before any batch, and after 1 or 2 large batches.
    (Process workers in deterministic order send chunks, which the trainer copies.)"""
    for cycle in range(cycles):
        net = core.Net("copier_cycle")
        coord = data_workers.init_data_input_workers(
            net, ["data", "label"], _BigRows(), 16, max_buffered_batches=2, timeout=30,
            input_source_name="copier_cycle", worker_type=worker_type,
            deterministic=worker_type == "process")
        coord.start()
        if cycle % 3:
            run_and_collect(net, cycle % 3)
        assert coord.stop() is True, cycle
        assert not _copier_threads(), "cycle %d: stop() returned True while %s ran" % (
            cycle, [t.name for t in _copier_threads()])


@pytest.mark.parametrize("split_copies", [False, True])
def test_batch_columns_time_major(ws, monkeypatch, split_copies):
    if split_copies:  # splits along batch column 1 of data and label, 0 of lengths
        monkeypatch.setattr(_rebatch, "SPLIT_COPY_MIN_BYTES", 1)
    net = make_net()
    coord = data_workers.init_data_input_workers(
        net, ["data", "label", "lengths"], TimeMajorFetcher(), 32,
        num_worker_threads=2, batch_columns=[1, 1, 0], max_buffered_batches=2, timeout=5)
    coord.start()
    out = run_and_collect(net, 40, blobs=("data", "label", "lengths"))
    coord.stop()
    expect = {}
    for data, label, lengths in out:
        assert data.shape == (4, 32, 2) and label.shape == (4, 32) and lengths.shape == (32,)
        np.testing.assert_array_equal(data[0, :, 1].astype(np.int32), label[0])
        np.testing.assert_array_equal(label[0] % 7, lengths)
        for wid, tag in zip(data[0, :, 0].astype(int), data[0, :, 1].astype(int)):
            assert tag == expect.get(wid, 0)
            expect[wid] = tag + 1


def test_dont_rebatch_passes_chunks_through(ws):
    net = make_net()

    def fetch(worker_id, batch_size):
        n = np.random.randint(1, 10)
        return [np.full((n, 2), n, np.float32), np.full((n,), n, np.int32)]

    coord = data_workers.init_data_input_workers(
        net, ["data", "label"], fetch, 32, num_worker_threads=1, dont_rebatch=True, timeout=5)
    coord.start()
    out = run_and_collect(net, 20)
    coord.stop()
    for data, label in out:
        n = data.shape[0]
        assert (data == n).all() and (label == n).all() and label.shape == (n,)


def test_dtypes_preserved_and_no_python_copy_of_exact_batches(ws):
    net = make_net()
    data = np.arange(32 * 5, dtype=np.float16).reshape(32, 5)
    label = np.arange(32, dtype=np.uint8)

    coord = data_workers.init_data_input_workers(
        net, ["data", "label"], lambda w, b: [data, label], 32, num_worker_threads=1, timeout=5)
    coord.start()
    (got_data, got_label), = run_and_collect(net, 1)
    coord.stop()
    assert got_data.dtype == np.float16 and got_label.dtype == np.uint8
    np.testing.assert_array_equal(got_data, data)
    np.testing.assert_array_equal(got_label, label)


def test_data_and_label_never_out_of_step_across_restarts(ws):
    """All blobs of a batch travel as one queue entry, also when input stops mid-stream."""
    for _ in range(3):
        net = make_net()
        coord = init_tagged(net, max_buffered_batches=2)
        coord.start()
        check_tagged(run_and_collect(net, 10))
        coord.stop()


def test_new_run_never_sees_old_batches(ws):
    net = make_net()

    def old(worker_id, batch_size):
        return [np.full((32, 3), -1.0), np.full((32,), -1, np.int32)]

    coord = data_workers.init_data_input_workers(net, ["data", "label"], old, 32, timeout=5)
    coord.start()
    run_and_collect(net, 2)
    coord.stop()

    net2 = make_net("net2")
    coord = init_tagged(net2)
    coord.start()
    batches = run_and_collect(net2, 20)
    coord.stop()
    check_tagged(batches)  # a leftover -1 row would fail the tag check


def test_split_copy_falls_back_to_one_thread_when_the_helper_refuses(monkeypatch):
    """Once the helper is closed (the input is stopping) it takes no new work: the
    enqueuer copies alone."""
    monkeypatch.setattr(_rebatch, "SPLIT_COPY_MIN_BYTES", 1)
    rebatcher = _rebatch.Rebatcher([0, 0], 4, False)
    assert rebatcher.close_helper() is None  # none was started, and none will be
    rebatcher.add(Chunk(0, [np.arange(16.0).reshape(8, 2), np.arange(8)], 8))
    for start in (0, 4):
        dests = [np.empty((4, 2)), np.empty(4, np.int64)]
        assert rebatcher.fill(dests, 4) == [(0, 4)]
        np.testing.assert_array_equal(dests[0], np.arange(start * 2, start * 2 + 8.0).reshape(4, 2))
        np.testing.assert_array_equal(dests[1], np.arange(start, start + 4))
    rebatcher.release_all()
