"""What a new user meets first (issue 24): no silent waits, quiet when all is well,
a failure reported once, ``dtypes=``, ``input_bound``, one-line reprs, the progress
logger, and the ``doctor`` / ``profile`` commands.

Real Caffe2 nets and queues, real torch loops, real processes.  Commands and
whole training scripts run as subprocesses: what they print is the behaviour.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from legs import core, workspace  # None on the modern leg (no Caffe2)

import data_workers
from data_workers.torch import Loader

from fault_util import make_input, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)] + list(args),
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def rows(worker_id: int, batch_size: int):
    return [np.full((4, 3), worker_id, np.float32), np.arange(4, dtype=np.int32)]


def int64_labels(worker_id: int, batch_size: int):
    return [np.zeros((4, 3), np.float32), np.arange(4)]  # numpy's default int64


def slow_rows(worker_id: int, batch_size: int):
    import time

    time.sleep(0.02)  # the workload: a slow fetcher, so the consumer waits
    return rows(worker_id, batch_size)


# ----------------------------------------------------------------------------- no silent waits


def test_net_waiting_on_an_input_never_started_gets_a_warning(ws, caplog):
    net = core.Net("never_started")
    coord = make_input(net, rows, input_source_name="forgot", timeout=30)
    workspace.CreateNet(net)
    outcome = []

    def run() -> None:
        try:
            workspace.RunNet(net.Proto().name)
            outcome.append("batch")
        except RuntimeError as exc:
            outcome.append(exc)

    caplog.set_level(logging.WARNING, logger="data_workers")
    consumer = threading.Thread(target=run, name="test consumer")
    consumer.start()
    try:
        wait_for(lambda: any("start()" in r.getMessage() for r in caplog.records), 10,
                 "the warning about the missing start()")
        warning = [r.getMessage() for r in caplog.records if "start()" in r.getMessage()]
        assert len(warning) == 1 and "'forgot'" in warning[0] and "never called" in warning[0]
    finally:
        coord.start()  # the waiting net gets its batch now
        consumer.join(30)
    assert outcome == ["batch"]
    assert coord.stop() is True


def test_dequeue_op_names_the_input_and_the_calls_to_check(ws):
    net = core.Net("named")
    coord = make_input(net, rows, input_source_name="src")
    ops = [op for op in net.Proto().op if op.type == "DequeueBlobs"]
    assert len(ops) == 1
    assert "'src'" in ops[0].name and "coordinator.start()" in ops[0].name
    assert "coordinator.stop()" in ops[0].name
    coord.stop()


def test_started_input_gets_no_start_warning(ws, caplog):
    net = core.Net("started")
    caplog.set_level(logging.WARNING, logger="data_workers")
    with make_input(net, rows) as coord:
        workspace.CreateNet(net)
        for _ in range(5):
            workspace.RunNet(net.Proto().name)
    assert coord.stats() == ()
    assert not [r for r in caplog.records if "start()" in r.getMessage()]


def test_next_on_a_closed_loader_says_what_happened():
    loader = Loader(rows, 4, 1, names=["data", "label"])
    next(loader)
    loader.close()
    with pytest.raises(data_workers.InputClosedError, match="was closed.*build a new Loader"):
        next(loader)


# ----------------------------------------------------------------------------- quiet, once


@pytest.mark.caffe2
def test_clean_stop_prints_nothing_at_caffe2s_most_verbose_level():
    result = _python("""
        import numpy as np
        from caffe2.python import core, workspace
        workspace.GlobalInit(["caffe2", "--caffe2_log_level=0"])
        import data_workers

        def fetch(worker_id, batch_size):
            return [np.zeros((4, 3), np.float32), np.zeros(4, np.int32)]

        for worker_type in ("thread", "process"):
            net = core.Net("quiet_" + worker_type)
            coord = data_workers.init_data_input_workers(
                net, ["data", "label"], fetch, 8, worker_type=worker_type, timeout=30)
            coord.start()
            workspace.CreateNet(net)
            for _ in range(20):
                workspace.RunNet(net.Proto().name)
            assert coord.stop() is True
        print("done")
        """)
    assert result.returncode == 0, result.stderr
    # GlobalInit's own CPU-feature notes are Caffe2's start-up, not ours.
    noise = [line for line in result.stderr.splitlines() if "init_intrinsics_check" not in line]
    assert noise == [] and result.stdout == "done\n"


@pytest.mark.caffe2
def test_a_failure_is_reported_once_with_the_fetch_fun_frame_first():
    result = _python("""
        import numpy as np
        from caffe2.python import core, workspace
        workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
        import data_workers

        def wrong_count(worker_id, batch_size):
            return [np.zeros((4, 3), np.float32)]

        net = core.Net("once")
        coord = data_workers.init_data_input_workers(
            net, ["data", "label"], wrong_count, 8, timeout=30)
        coord.start()
        workspace.CreateNet(net)
        try:
            workspace.RunNet(net.Proto().name)
        except RuntimeError:
            pass
        coord.stop()
        """)
    assert result.returncode == 1
    err = result.stderr
    assert err.count("returned 1 arrays; expected 2") == 1, err  # raised, not also logged
    # The traceback shows the user's fetcher, where it is defined.
    frames = [line.strip() for line in err.splitlines() if line.strip().startswith("File ")]
    user = [i for i, f in enumerate(frames) if f.endswith("in wrong_count")]
    library = [i for i, f in enumerate(frames) if "_core/validate.py" in f]
    assert user and library and user[0] < library[0], err


def test_a_failure_nothing_raises_is_logged_once(ws, caplog):
    net = core.Net("unraised")
    coord = make_input(net, int64_labels, dtypes={"label": np.int32})
    caplog.set_level(logging.ERROR, logger="data_workers")
    coord.start()
    wait_for(lambda: coord.stats()[0].failure is not None, 10, "the input to fail")
    assert caplog.records == []  # nothing logged while a later stop() may raise it
    coord.stop(raise_failure=False)
    errors = [r for r in caplog.records if "int64" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None


# ----------------------------------------------------------------------------- dtypes=


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_dtypes_mismatch_is_a_chunk_type_error_naming_blob_got_and_expected(ws, worker_type):
    net = core.Net("dtypes_" + worker_type)
    coord = make_input(net, int64_labels, worker_type=worker_type,
                       dtypes={"data": np.float32, "label": np.int32})
    coord.start()
    wait_for(lambda: coord.stats()[0].failure is not None, 30, "the input to fail")
    with pytest.raises(data_workers.ChunkTypeError) as info:
        coord.stop()
    message = str(info.value)
    assert "'label'" in message and "int64" in message and "expected int32" in message
    assert coord.stats() == ()


def test_dtypes_on_the_torch_loader():
    with pytest.raises(data_workers.ChunkTypeError, match="'label' as int64.*expected int32"):
        with Loader(int64_labels, 4, 1, names=["data", "label"],
                    dtypes={"label": np.int32}) as loader:
            next(loader)


def test_matching_dtypes_feed_the_net_and_the_first_batch_is_described(ws, caplog):
    net = core.Net("dtypes_ok")
    caplog.set_level(logging.INFO, logger="data_workers")
    with make_input(net, rows, dtypes={"data": "float32", "label": np.int32}):
        workspace.CreateNet(net)
        workspace.RunNet(net.Proto().name)
        assert workspace.FetchBlob("label").dtype == np.int32
    lines = [r.getMessage() for r in caplog.records if "first batch" in r.getMessage()]
    assert lines == ["input 'train': first batch: data float32 (8, 3), label int32 (8,); "
                     "128 bytes per batch"]


@pytest.mark.parametrize("dtypes, error, match", [
    ({"lable": np.int32}, ValueError, "'lable', which is not one of the blobs"),
    ({"label": None}, TypeError, r"dtypes\['label'\].*None"),
    ({"label": "not a dtype"}, TypeError, r"dtypes\['label'\]"),
    ([np.int32], TypeError, "dict from blob name to dtype"),
])
def test_bad_dtypes_argument_is_refused_on_both_front_ends(ws, dtypes, error, match):
    with pytest.raises(error, match=match):
        make_input(core.Net("bad_dtypes"), rows, dtypes=dtypes)
    with pytest.raises(error, match=match):
        Loader(rows, 4, 1, names=["data", "label"], dtypes=dtypes)


# ----------------------------------------------------------------------------- input_bound


def test_input_bound_caffe2_net_waiting_on_a_slow_fetcher(ws, caplog):
    net = core.Net("bound")
    caplog.set_level(logging.INFO, logger="data_workers")
    coord = make_input(net, slow_rows, num_worker_threads=1, log_interval_secs=0.3)
    coord.start()
    workspace.CreateNet(net)

    def logged_bound() -> bool:
        workspace.RunNet(net.Proto().name)
        return any("input-bound" in r.getMessage() for r in caplog.records)

    wait_for(logged_bound, 30, "a log line with input-bound", interval=0)
    # The net waits for nearly every batch: the fetcher sleeps 20 ms per 4 rows.
    assert coord.stats()[0].input_bound > 0.5
    line = repr(coord)
    assert "\n" not in line and "'train' running" in line and "input-bound" in line
    stats_line = repr(coord.stats()[0])
    assert "\n" not in stats_line and stats_line.startswith("InputStats('train', running")
    coord.stop()


def test_input_bound_torch_loop_waiting_on_a_slow_fetcher():
    with Loader(slow_rows, 4, 1, names=["data", "label"]) as slow:
        for _ in zip(range(30), slow):
            pass
        assert slow.stats().input_bound > 0.5


def test_progress_logger_draws_a_line(ws, caplog, monkeypatch):
    import io

    import tqdm

    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)  # tqdm's own thread would outlive us

    caplog.set_level(logging.INFO, logger="data_workers")
    progress = data_workers.ProgressLogger(desc="train", use_tqdm=False)
    bar_file = io.StringIO()
    bar = data_workers.ProgressLogger(desc="bar", use_tqdm=True, file=bar_file)
    net = core.Net("progress")
    with make_input(net, rows, external_loggers=[progress, bar], log_interval_secs=0.2):
        workspace.CreateNet(net)

        def drawn() -> bool:
            workspace.RunNet(net.Proto().name)
            return progress.rows > 0 and bar.rows > 0

        wait_for(drawn, 30, "a progress line", interval=0)
    bar.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train: ")]
    assert lines and "rows/s" in lines[0] and "input-bound" in lines[0]
    assert "bar" in bar_file.getvalue() and "input-bound" in bar_file.getvalue()


# ----------------------------------------------------------------------------- the commands


def test_doctor_reports_and_self_tests():
    result = _python("""
        import sys
        from data_workers._cli import main
        sys.exit(main(["doctor", "--seconds", "0.3"]))
        """)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for word in ("python", "numpy", "torch", "caffe2", "cores", "/dev/shm", "memfd", "pidfd"):
        assert word in out, out
    assert "2 thread workers" in out and "2 process workers" in out and "all well" in out


def test_doctor_without_caffe2_reports_it_as_information():
    result = _python("""
        import sys
        sys.modules["caffe2"] = None  # as on a machine with a torch build without Caffe2
        from data_workers._cli import main
        sys.exit(main(["doctor", "--seconds", "0.2"]))
        """)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "caffe2     absent (info" in result.stdout and "all well" in result.stdout


FETCHER = """
import numpy as np

def fetch(worker_id, batch_size):
    return [np.ones((batch_size, 8), np.float32), np.zeros(batch_size, np.int32)]
"""


def test_profile_json_recommends_and_imports_no_caffe2(tmp_path):
    path = tmp_path / "my_fetcher.py"
    path.write_text(FETCHER)
    result = _python("""
        import json, sys
        from data_workers._cli import main
        rc = main(["profile", sys.argv[1] + ":fetch", "--seconds", "0.3", "--max-workers", "1",
                   "--batch-size", "16", "--json"])
        assert "caffe2" not in sys.modules, "profile imported Caffe2"
        sys.exit(rc)
        """, str(path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["worker_type"] in ("thread", "process") and report["num_workers"] == 1
    assert {(m["worker_type"], m["num_workers"]) for m in report["table"]} == {
        ("alone", 1), ("thread", 1), ("process", 1)}
    assert all(m["rows_per_sec"] > 0 for m in report["table"])
    assert report["alone"]["bytes_per_row"] == 8 * 4 + 4
    assert 0.0 <= report["alone"]["gil_held"] <= 1.0


def test_profile_text_line_and_bad_target(tmp_path):
    path = tmp_path / "my_fetcher.py"
    path.write_text(FETCHER)
    ok = subprocess.run(
        [sys.executable, "-m", "data_workers", "profile", "%s:fetch" % path, "--seconds", "0.2",
         "--max-workers", "1"], capture_output=True, text=True, timeout=120, cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[-1].startswith("use worker_type=")
    bad = _python("""
        import sys
        from data_workers._cli import main
        sys.exit(main(["profile", sys.argv[1] + ":nope", "--seconds", "0.2"]))
        """, str(path))
    assert bad.returncode == 2 and "no callable 'nope'" in bad.stderr


# ----------------------------------------------------------------------------- first batch


@pytest.mark.caffe2
def test_process_workers_copy_until_torch_is_imported_then_lend():
    # A script that never imports torch itself: the first batches are copied while
    # torch is imported on a thread of its own, then batches are lent, and every
    # row arrives intact across the switch.
    result = _python("""
        import sys, time
        import numpy as np
        from caffe2.python import core, workspace
        workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
        import data_workers

        class Counting:
            def __init__(self):
                self.seq = 0
            def __call__(self, worker_id, batch_size):
                rows = np.arange(self.seq, self.seq + batch_size)
                self.seq += batch_size
                return [np.stack([np.full(batch_size, worker_id), rows], 1).astype(np.float32),
                        rows.astype(np.int32)]

        net = core.Net("lend")
        coord = data_workers.init_data_input_workers(
            net, ["data", "label"], Counting(), 16, worker_type="process",
            num_worker_threads=1, timeout=60)
        coord.start()
        workspace.CreateNet(net)
        expected = 0
        deadline = time.monotonic() + 90
        while coord.stats()[0].batches_lent < 5 and time.monotonic() < deadline:
            workspace.RunNet(net.Proto().name)
            label = workspace.FetchBlob("label")
            assert list(label) == list(range(expected, expected + 16)), (expected, label)
            expected += 16
        stats = coord.stats()[0]
        coord.stop()
        print(stats.batches_lent >= 5, stats.batches_enqueued > stats.batches_lent)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]  # some copied first, then lent


def _stand_in_torch(directory, body):
    """A package ``torch`` in ``directory`` whose import runs ``body``, then fails."""
    (directory / "torch").mkdir()
    (directory / "torch" / "__init__.py").write_text(
        body + "raise ImportError('the stand-in torch')\n")


@pytest.mark.caffe2
def test_the_script_exits_after_the_background_torch_import_ends(tmp_path):
    # A script that ends while torch is still being imported on the library's
    # thread once crashed with SIGSEGV in the interpreter's finalization (that
    # import races the final garbage collection).  A stand-in torch that takes
    # a second to import, and a script that ends at once: the import completes,
    # then the process exits cleanly.
    _stand_in_torch(tmp_path, "import time\n"
                              "time.sleep(1.0)\n"
                              "print('IMPORTED', flush=True)\n")
    result = _python("""
        import sys
        import numpy as np
        sys.path.insert(0, sys.argv[1])
        from caffe2.python import core, workspace
        workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
        import data_workers

        def fetch(worker_id, batch_size):
            return [np.zeros((4, 2), np.float32), np.zeros(4, np.int32)]

        net = core.Net("exit_early")
        coord = data_workers.init_data_input_workers(
            net, ["data", "label"], fetch, 4, worker_type="process", num_worker_threads=1,
            timeout=60)
        workspace.CreateNet(net)
        coord.start()
        workspace.RunNet(net.Proto().name)
        workspace.RunNet(net.Proto().name)  # the second batch starts the import
        coord.stop()
        print("STOPPED", "torch" in sys.modules, flush=True)
        """, str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["STOPPED", "True", "IMPORTED"], result.stdout


@pytest.mark.caffe2
def test_a_slow_torch_import_holds_up_neither_batches_nor_a_failure(tmp_path):
    # torch is imported on a thread of its own; the enqueuer must never wait for
    # that import (it once did, from the import's first line to its last).  A
    # stand-in torch whose import never ends unless told to makes it last forever.
    _stand_in_torch(tmp_path, "import os, time\n"
                              "while not os.path.exists(%r):\n"
                              "    time.sleep(0.01)\n" % str(tmp_path / "release"))
    result = _python("""
        import os, sys
        import numpy as np
        sys.path.insert(0, sys.argv[1])
        from caffe2.python import core, workspace
        workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
        import data_workers

        class DiesAfter40:
            def __init__(self):
                self.calls = 0
            def __call__(self, worker_id, batch_size):
                self.calls += 1
                if self.calls > 40:
                    os._exit(3)
                rows = np.arange((self.calls - 1) * 16, self.calls * 16)
                return [rows.reshape(16, 1).astype(np.float32), rows.astype(np.int32)]

        net = core.Net("slow_torch")
        coord = data_workers.init_data_input_workers(
            net, ["data", "label"], DiesAfter40(), 16, worker_type="process",
            num_worker_threads=1, timeout=60)
        coord.start()
        workspace.CreateNet(net)
        labels = []
        try:
            while True:
                workspace.RunNet(net.Proto().name)
                labels.extend(workspace.FetchBlob("label"))
        except RuntimeError:
            pass
        try:
            coord.stop()
        except data_workers.WorkerDiedError as err:
            print(type(err).__name__, err.exitcode)
        print(labels == list(range(640)), "torch" in sys.modules)
        sys.stdout.flush()
        os._exit(0)  # the stand-in torch's import never ends
        """, str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["WorkerDiedError", "3", "True", "True"], result.stdout
