"""Scripts written for caffe2.python.data_workers run unchanged but for the import line.

The bodies below are written the way upstream's own unit test and typical
training scripts use the module, including the internals they peek at.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from caffe2.python import model_helper, workspace

import data_workers
from data_workers import parallel_workers

pytestmark = pytest.mark.timeout(60)


def dummy_fetcher(fetcher_id, batch_size):
    n = np.random.randint(64) + 1
    data = np.zeros((n, 3))
    labels = []
    for j in range(n):
        data[j, :] *= (j + fetcher_id)
        labels.append(data[j, 0])
    return [np.array(data), np.array(labels)]


def dummy_fetcher_rnn(fetcher_id, batch_size):
    T, N, D = 20, batch_size, 33
    data = np.random.rand(T, N, D)
    label = np.random.randint(N, size=(T, N))
    seq_lengths = np.random.randint(N, size=(N))
    return [data, label, seq_lengths]


def test_non_parallel_model_script():
    workspace.ResetWorkspace()
    model = model_helper.ModelHelper(name="test")
    old_seq_id = data_workers.global_coordinator._fetcher_id_seq
    coordinator = data_workers.init_data_input_workers(
        model, ["data", "label"], dummy_fetcher, 32, 2, input_source_name="unittest")
    new_seq_id = data_workers.global_coordinator._fetcher_id_seq
    assert new_seq_id == old_seq_id + 2
    coordinator.start()
    workspace.RunNetOnce(model.param_init_net)
    workspace.CreateNet(model.net)
    for _ in range(200):
        workspace.RunNet(model.net.Proto().name)
        data = workspace.FetchBlob("data")
        labels = workspace.FetchBlob("label")
        assert data.shape[0] == labels.shape[0] == 32
        for j in range(32):
            assert labels[j] == data[j, 0] == data[j, 1] == data[j, 2]
    coordinator.stop_coordinator("unittest")
    assert coordinator._coordinators == []


def test_rnn_input_script_stops_while_enqueuer_blocked():
    workspace.ResetWorkspace()
    model = model_helper.ModelHelper(name="rnn_test")
    coordinator = data_workers.init_data_input_workers(
        model, ["data1", "label1", "seq_lengths1"], dummy_fetcher_rnn, 32, 2,
        dont_rebatch=False, batch_columns=[1, 1, 0])
    coordinator.start()
    workspace.RunNetOnce(model.param_init_net)
    workspace.CreateNet(model.net)
    deadline = time.monotonic() + 20
    while coordinator._coordinators[0]._state._inputs < 100:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    workspace.RunNet(model.net.Proto().name)
    workspace.RunNet(model.net.Proto().name)
    assert workspace.FetchBlob("data1").shape == (20, 32, 33)
    assert workspace.FetchBlob("seq_lengths1").shape == (32,)
    # Nobody dequeues any more: the enqueuer blocks on the full queue; stop must succeed.
    assert coordinator.stop()


def test_reset_data_input_and_worker_name():
    workspace.ResetWorkspace()
    model = model_helper.ModelHelper(name="reset_test")
    coordinator = data_workers.init_data_input_workers(
        model, ["data", "label"], dummy_fetcher, 32, 2, input_source_name="train")
    assert coordinator._coordinators[0]._worker_name == "train"
    assert coordinator._coordinators[0]._state._namescope == ""
    coordinator.start()
    workspace.RunNetOnce(model.param_init_net)
    workspace.CreateNet(model.net)
    workspace.RunNet(model.net.Proto().name)
    coordinator.reset_data_input("", "train", model.net, 16)
    coordinator.reset_data_input("", "train", model.net, 16)  # no duplicate dequeue op
    assert sum(op.type == "DequeueBlobs" for op in model.net.Proto().op) == 1
    workspace.CreateNet(model.net, overwrite=True)
    sizes = set()
    for _ in range(8):
        workspace.RunNet(model.net.Proto().name)
        sizes.add(workspace.FetchBlob("data").shape[0])
    assert 16 in sizes and sizes <= {16, 32}  # at most the batches already queued are 32
    assert coordinator.stop()


def test_upstream_parallel_workers_script():
    done = []

    def worker_fun(worker_id):
        done.append(worker_id)
        time.sleep(0.001)

    coordinator = parallel_workers.init_workers(worker_fun, num_worker_threads=2,
                                                worker_name="pw")
    ids = coordinator._coordinators[-1]._worker_ids
    coordinator.start()
    deadline = time.monotonic() + 10
    while len(done) < 20:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert coordinator.stop()
    assert set(done) <= set(ids) and coordinator._coordinators == []
