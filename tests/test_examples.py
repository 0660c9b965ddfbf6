"""The examples and the digits demo, run in their fast modes against real Caffe2.

Most tests call each script's ``main(argv)`` in this process, so that the autouse
``no_leaks`` fixture in ``conftest.py`` can prove that no thread and no worker process
outlived the run. One test runs the demo as ``make demo`` does, as a file in a child
interpreter, because that is the case where spawned workers must find `digits_data`
through the script's folder.

These tests run against this repository's `data_workers`, never the upstream
`caffe2.python.data_workers`. The in-process digits runs share one PNG cache per test
worker (writing the 1,797 PNGs costs about 3 s of CPU), and run on one worker
(``DIGITS``) so that they make it once; the child-interpreter run and
``test_digits_fetcher_pickles_and_returns_varying_chunks`` write their own.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = REPO_ROOT / "examples"
for path in (str(REPO_ROOT), str(EXAMPLES)):
    if path not in sys.path:
        sys.path.insert(0, path)

import data_workers  # noqa: E402  (needs REPO_ROOT on sys.path)


#: The tests that share the ``digits_png`` cache: one test worker runs them all.
DIGITS = pytest.mark.xdist_group("digits")


@pytest.fixture(scope="session")
def digits_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits PNG cache made once per test worker (the demos reuse a complete one)."""
    folder = tmp_path_factory.mktemp("digits_png")
    importlib.import_module("digits_data").prepare_digits_png(folder)
    return folder


@pytest.mark.caffe2
def test_examples_use_this_repository_data_workers() -> None:
    assert Path(data_workers.__file__).resolve().is_relative_to(REPO_ROOT)
    for name in ("minimal", "digits_train"):
        module = importlib.import_module(name)
        assert module.data_workers is data_workers


@pytest.mark.caffe2
def test_minimal(capsys: pytest.CaptureFixture[str]) -> None:
    assert importlib.import_module("minimal").main(["--fast"]) == 0
    assert "rows stayed aligned" in capsys.readouterr().out


@pytest.mark.caffe2
def test_rnn_time_major(capsys: pytest.CaptureFixture[str]) -> None:
    assert importlib.import_module("rnn_time_major").main(["--fast"]) == 0
    out = capsys.readouterr().out
    assert "LSTM output (12, 16, 8)" in out and "rows stayed aligned" in out


@pytest.mark.caffe2
def test_train_and_val(capsys: pytest.CaptureFixture[str]) -> None:
    assert importlib.import_module("train_and_val").main(["--fast"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "val accuracy" in line]
    assert len(lines) == 3
    final_accuracy = float(lines[-1].rsplit(" ", 1)[1])
    assert final_accuracy > 0.8  # three well-separated clusters, 30 SGD steps


@pytest.mark.caffe2
def test_process_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert importlib.import_module("process_workers").main(["--fast"]) == 0
    out = capsys.readouterr().out
    assert "thread workers x2" in out and "process workers x2" in out


@pytest.mark.caffe2
@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_handle_fetcher_failure(worker_type: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module("handle_fetcher_failure")
    assert module.main(["--fast", "--worker-type", worker_type]) == 0
    out = capsys.readouterr().out
    assert "RunNet failed at iteration" in out
    assert "input 'flaky' failed in fetcher worker" in out
    assert "CorruptRecordError: record" in out


@pytest.mark.caffe2
@DIGITS
def test_digits_demo_fast(tmp_path: Path, digits_png: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """Thread workers, in this process; process workers: the next test (``make demo``'s way)."""
    demo = importlib.import_module("digits_demo")
    chart = tmp_path / "chart.png"
    status = demo.main(["--fast", "--no-progress", "--worker-type", "thread",
                        "--out-dir", str(tmp_path), "--data-dir", str(digits_png),
                        "--chart", str(chart)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "held-out accuracy" in out
    assert chart.read_bytes().startswith(b"\x89PNG")


@pytest.mark.caffe2
def test_digits_demo_as_a_file_like_make_demo(tmp_path: Path) -> None:
    """The way `make demo` runs it: a child interpreter, process workers, the CLI."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "digits_demo.py"), "--fast", "--no-progress",
         "--out-dir", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "held-out accuracy" in result.stdout
    assert re.search(r": \d+ process ", result.stdout), result.stdout  # the default
    assert (tmp_path / "digits_demo.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "digits_png" / "manifest.csv").exists()


@pytest.mark.caffe2
@DIGITS
def test_digits_demo_exits_1_below_min_accuracy(tmp_path: Path, digits_png: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    demo = importlib.import_module("digits_demo")
    status = demo.main(["--fast", "--no-progress", "--worker-type", "thread",
                        "--iterations", "2", "--min-accuracy", "1.01",
                        "--out-dir", str(tmp_path), "--data-dir", str(digits_png)])
    assert status == 1
    assert "below --min-accuracy" in capsys.readouterr().err


def test_digits_fetcher_pickles_and_returns_varying_chunks(tmp_path: Path) -> None:
    digits_data = importlib.import_module("digits_data")
    split = digits_data.prepare_digits_png(tmp_path)
    assert len(split.train) + len(split.val) == 1797
    assert not {s.path for s in split.train} & {s.path for s in split.val}
    fetcher = pickle.loads(pickle.dumps(digits_data.DigitsFetcher(split.train, augment=True)))
    sizes = set()
    for _ in range(20):
        data, label = fetcher(3, 8)
        assert data.dtype == np.float32 and data.shape[1:] == (1, 8, 8)
        assert label.dtype == np.int32 and label.shape == (data.shape[0],)
        sizes.add(len(label))
    assert min(sizes) >= 1 and max(sizes) <= 16 and len(sizes) > 1
    manifest = tmp_path / "manifest.csv"
    written = manifest.stat().st_mtime_ns
    assert digits_data.prepare_digits_png(tmp_path) == split  # reused, not rewritten
    assert manifest.stat().st_mtime_ns == written


@DIGITS
def test_digits_torch_fast(tmp_path: Path, digits_png: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    """The digits fetchers, unchanged, train the CNN in PyTorch (data_workers.torch)."""
    status = importlib.import_module("digits_torch").main(
        ["--fast", "--worker-type", "process", "--out-dir", str(tmp_path),
         "--data-dir", str(digits_png)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "held-out accuracy" in out and "2 process workers" in out
