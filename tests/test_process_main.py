"""fetch_fun travels by value: the training script's own callables, lambdas, closures.

Process workers get ``fetch_fun`` pickled with cloudpickle and never import the
training script, so a script needs no ``__main__`` guard; what an importable
module defines is still sent by reference and imported by the worker.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from caffe2.python import workspace

import data_workers
from fault_util import wait_for_failure
from util import check_tagged, init_tagged, make_net

pytestmark = pytest.mark.timeout(90)

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

# No __main__ guard, and its fetchers live in __main__.  Each kind feeds its own
# net from two workers, in turn (deterministic: both are sure to deliver); a row
# is [worker id, sequence number, Caffe2 loaded in the worker?, script run in the worker?].
UNGUARDED_SCRIPT = '''
import functools
import os
import sys
import time

import numpy as np
from caffe2.python import core, workspace

import data_workers
from util import check_tagged

MARKER = sys.argv[1]
with open(MARKER, "a") as f:  # a top-level side effect: must happen once, here
    f.write("script ran in %d\\n" % os.getpid())
workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
STEP = np.arange(5)  # a global of the script, sent by value with the fetchers
SEQ = {}


def rows(worker_id, start):
    data = np.zeros((len(STEP), 4))
    data[:, 0] = worker_id
    data[:, 1] = start + STEP
    data[:, 2] = any(m.startswith("caffe2") for m in sys.modules)
    data[:, 3] = "MARKER" in sys.modules["__main__"].__dict__
    return [data, (start + STEP).astype(np.int32)]


def next_rows(first, worker_id, batch_size):
    start = SEQ.get(worker_id, first)
    SEQ[worker_id] = start + len(STEP)
    return rows(worker_id, start)


class Reader:
    def __init__(self):
        self.seq = {}

    def __call__(self, worker_id, batch_size):
        start = self.seq.get(worker_id, 0)
        self.seq[worker_id] = start + len(STEP)
        return rows(worker_id, start)

    def method(self, worker_id, batch_size):
        return self(worker_id, batch_size)


def closure():
    seq = {}

    def fetch(worker_id, batch_size):
        start = seq.get(worker_id, 0)
        seq[worker_id] = start + len(STEP)
        return rows(worker_id, start)
    return fetch


class DiskOnFire(Exception):
    pass


def on_fire(worker_id, batch_size):
    raise DiskOnFire("worker %d" % worker_id)


KINDS = [
    ("lambda", lambda w, b: next_rows(0, w, b)),
    ("closure", closure()),
    ("main_class", Reader()),
    ("bound_method", Reader().method),
    ("partial", functools.partial(next_rows, 0)),
]
for name, fetch_fun in KINDS:
    net = core.Net(name)
    coord = data_workers.init_data_input_workers(
        net, ["data", "label"], fetch_fun, 10, 2, worker_type="process", timeout=10,
        deterministic=True, input_source_name=name)
    coord.start()
    workspace.CreateNet(net)
    batches = []
    for _ in range(8):
        workspace.RunNet(name)
        batches.append([workspace.FetchBlob("data"), workspace.FetchBlob("label")])
    coord.stop()
    seen = check_tagged([[d[:, :2], l] for d, l in batches], batch_size=10)
    flags = np.concatenate([d[:, 2:] for d, _ in batches])
    print(name, sum(seen.values()), len(seen), "caffe2:", flags[:, 0].any(),
          "script:", flags[:, 1].any(), flush=True)

net = core.Net("fire")
coord = data_workers.init_data_input_workers(
    net, ["data", "label"], on_fire, 10, 1, worker_type="process", timeout=10,
    input_source_name="fire")
coord.start()
deadline = time.monotonic() + 30
while coord.stats()[0].failure is None and time.monotonic() < deadline:
    time.sleep(0.01)
try:
    coord.stop()
except data_workers.FetcherError as err:
    print("cause is the script's class:", type(err.__cause__) is DiskOnFire, flush=True)
'''


def _run_script(tmp_path: Path, text: str, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "train.py"
    script.write_text(text)
    env = {"PYTHONPATH": "%s:%s" % (REPO_ROOT, TESTS), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(script), *args], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=80, env=env)


def test_unguarded_script_feeds_nets_from_its_own_callables_and_is_run_once(tmp_path):
    marker = tmp_path / "marker.txt"
    result = _run_script(tmp_path, UNGUARDED_SCRIPT, str(marker))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for kind in ("lambda", "closure", "main_class", "bound_method", "partial"):
        # Eight batches of ten rows from two workers, each row once and in order
        # per worker; no worker imported Caffe2 or ran the script.
        assert "%s 80 2 caffe2: False script: False" % kind in lines, result.stdout + result.stderr
    assert len(marker.read_text().splitlines()) == 1, marker.read_text()
    # The class was sent by value and came back as itself (cloudpickle keeps its identity).
    assert "cause is the script's class: True" in lines, result.stdout + result.stderr


# A module that starts process workers when imported, and whose fetch_fun the
# script uses by reference: each worker imports it, which would start workers
# again.  The safety net in ProcessFetchers.start() makes that a clear error.
SELF_STARTING_MODULE = '''
import numpy as np
from caffe2.python import core

import data_workers


def fetch(worker_id, batch_size):
    return [np.zeros((4, 3)), np.zeros((4,), np.int32)]


net = core.Net("at_import")
coord = data_workers.init_data_input_workers(
    net, ["data", "label"], lambda w, b: [np.zeros((4, 3)), np.zeros((4,), np.int32)], 4, 1,
    worker_type="process", timeout=5, input_source_name="at_import")
coord.start()
'''

USES_SELF_STARTING = '''
from caffe2.python import core, workspace
workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
import data_workers
import self_starting

net = core.Net("n")
coord = data_workers.init_data_input_workers(net, ["data", "label"], self_starting.fetch, 4, 1,
                                             worker_type="process", timeout=5)
coord.start()
workspace.CreateNet(net)
try:
    workspace.RunNet("n")
except RuntimeError:
    pass
try:
    coord.stop()
except data_workers.FetcherError as err:
    print("FetcherError:", err)
self_starting.coord.stop()
'''


def test_workers_started_by_a_module_a_worker_imports_are_a_clear_error(tmp_path):
    (tmp_path / "self_starting.py").write_text(SELF_STARTING_MODULE)
    result = _run_script(tmp_path, USES_SELF_STARTING)
    assert "FetcherError:" in result.stdout, result.stdout + result.stderr
    assert "inside a worker process" in result.stdout
    assert "unpickling fetch_fun in the worker process failed" in result.stdout


# ----------------------------------------------------------------------------- in-process


def _closure_over_a_lock():
    lock = threading.Lock()

    def fetch(worker_id, batch_size):
        with lock:
            return [np.zeros((4, 3)), np.zeros((4,), np.int32)]
    return fetch


def test_unpicklable_fetch_fun_is_a_type_error_at_init_naming_it(ws):
    with pytest.raises(TypeError, match=r"fetch_fun.*cannot pickle '_thread.lock' object"):
        init_tagged(make_net(), fetch_fun=_closure_over_a_lock(), worker_type="process")
    # Threads share the lock: nothing to pickle.
    coord = init_tagged(make_net("t"), fetch_fun=_closure_over_a_lock(), worker_type="thread",
                        num_worker_threads=1)
    coord.stop()


UNFINDABLE_MODULE = '''
import numpy as np


def fetch(worker_id, batch_size):
    data = np.zeros((4, 3))
    data[:, 0] = worker_id
    data[:, 1] = np.arange(4)
    return [data, np.arange(4, dtype=np.int32)]
'''


def _load_unfindable(tmp_path: Path, name: str):
    """A module the trainer loaded from a file that is not on sys.path."""
    import importlib.util

    path = tmp_path / ("%s.py" % name)
    path.write_text(UNFINDABLE_MODULE)
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_module_the_worker_cannot_import_is_a_clear_error_or_sent_by_value(ws, tmp_path):
    import cloudpickle

    name = "dw_unfindable_%d" % id(tmp_path)
    module = _load_unfindable(tmp_path, name)
    try:
        net = make_net()
        coord = init_tagged(net, batch_size=4, fetch_fun=module.fetch, worker_type="process",
                            num_worker_threads=1, timeout=30)
        coord.start()
        wait_for_failure(coord)
        with pytest.raises(data_workers.FetcherError,
                           match="unpickling fetch_fun in the worker process failed: "
                                 "ModuleNotFoundError.*register_pickle_by_value"):
            coord.stop()
        # The fix the message names: send the module by value.
        cloudpickle.register_pickle_by_value(module)
        try:
            net = make_net("by_value")
            coord = init_tagged(net, batch_size=4, fetch_fun=module.fetch,
                                worker_type="process", num_worker_threads=1, timeout=10)
            coord.start()
            workspace.CreateNet(net, overwrite=True)
            workspace.RunNet(net.Proto().name)
            assert workspace.FetchBlob("label").tolist() == [0, 1, 2, 3]
            assert coord.stop() is True
        finally:
            cloudpickle.unregister_pickle_by_value(module)
    finally:
        del sys.modules[name]


def test_a_global_is_sent_as_it_is_at_start_not_at_init(ws):
    """By value means a copy taken at start(): later changes in the trainer don't reach workers."""
    net = make_net()
    state = {"value": 1}
    fetch = _fetch_state_value(state)
    coord = init_tagged(net, batch_size=4, fetch_fun=fetch, worker_type="process",
                        num_worker_threads=1, timeout=10)
    state["value"] = 2  # after init, before start: sent
    coord.start()
    state["value"] = 3  # after start: not seen
    workspace.CreateNet(net, overwrite=True)
    workspace.RunNet(net.Proto().name)
    assert workspace.FetchBlob("data")[0, 2] == 2
    assert coord.stop() is True


def _fetch_state_value(state):
    seq = {}

    def fetch(worker_id, batch_size):
        start = seq.get(worker_id, 0)
        seq[worker_id] = start + 4
        data = np.zeros((4, 3))
        data[:, 0] = worker_id
        data[:, 1] = np.arange(start, start + 4)
        data[:, 2] = state["value"]
        return [data, np.arange(start, start + 4).astype(np.int32)]
    return fetch


def test_closure_rows_arrive_exactly_once(ws):
    net = make_net()
    coord = init_tagged(net, batch_size=4, fetch_fun=_fetch_state_value({"value": 0}),
                        worker_type="process", num_worker_threads=2, timeout=10)
    coord.start()
    workspace.CreateNet(net, overwrite=True)
    batches = []
    for _ in range(20):
        workspace.RunNet(net.Proto().name)
        batches.append([workspace.FetchBlob("data")[:, :2], workspace.FetchBlob("label")])
    assert coord.stop() is True
    assert sum(check_tagged(batches, batch_size=4).values()) == 80
