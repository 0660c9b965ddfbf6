"""The benchmark and soak commands run end to end (quick modes).

Speed is never asserted here: benchmarks report ratios, tests only check that
the commands work and that the soak's own checks (no lost row, no leak) pass.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_module(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root; it must exit 0."""
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


# Smoke runs of the suites: one repeat of 0.1 s windows, so only the
# wiring is checked (a fresh interpreter per case, the JSON, the chart, the tables).
SHORT = ("--quick", "--repeat", "1", "--window", "0.1", "--warmup", "0.1")


def _run_bench(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return _run_module("benchmarks.run", *args, timeout=timeout)


@pytest.mark.caffe2
@pytest.mark.timeout(240)
def test_benchmarks_quick_run(tmp_path):
    result = _run_bench("--only", "small,startup", *SHORT, "--out", str(tmp_path), "--no-chart",
                        timeout=220)
    assert "upstream" in result.stdout and "ours" in result.stdout
    assert (tmp_path / "benchmarks.json").exists()
    json.loads((tmp_path / "benchmarks.json").read_text())


@pytest.mark.caffe2
@pytest.mark.timeout(240)
def test_soak_quick_run(tmp_path):
    out = tmp_path / "soak.json"
    _run_module("benchmarks.soak", "--quick", "--json", str(out), timeout=220)
    assert out.exists()


@pytest.mark.timeout(120)
def test_copy_threads_runs():
    result = _run_module("benchmarks.copy_threads", "--rounds", "1", timeout=100)
    assert "rotating 2 threads" in result.stdout




@pytest.mark.caffe2
@pytest.mark.timeout(90)
def test_peers_suite_runs(tmp_path):
    result = _run_bench("--only", "peers.one_sample", *SHORT, "--out", str(tmp_path),
                        timeout=80)
    doc = json.loads((tmp_path / "peers.json").read_text())
    assert doc["mode"] == "quick" and doc["failed_cases"] == []
    runs = doc["results"]["one_sample"]
    assert set(runs) == {"ours-process", "ours-thread", "dataloader"}
    assert all(len(r) == 1 and r[0]["batches_per_s"] > 0 for r in runs.values())
    assert (tmp_path / "peers.png").read_bytes().startswith(b"\x89PNG")
    assert "one_sample: ours-process / dataloader" in result.stdout
    assert not (tmp_path / "benchmarks.json").exists()  # --only: that suite alone


@pytest.mark.timeout(60)
def test_torch_loader_suite_runs(tmp_path):
    result = _run_bench("--only", "torch", *SHORT, "--out", str(tmp_path), timeout=50)
    doc = json.loads((tmp_path / "torch_loader.json").read_text())
    assert set(doc["workloads"]) == {"one_sample", "gil_bound"}
    assert doc["settings"]["repeats"] == 1 and doc["settings"]["window_s"] == 0.1
    assert "one sample per call" in result.stdout and "GIL-bound" in result.stdout


@pytest.mark.timeout(60)
def test_render_redraws_every_chart_from_the_committed_json(tmp_path):
    # Charts come from the JSON alone: nothing is measured here.
    result = _run_bench("--render", os.path.join(ROOT, "docs"), "--out", str(tmp_path),
                        timeout=50)
    assert "nothing measured" in result.stdout
    for name in ("benchmarks.png", "peers.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name
    for name in ("benchmarks.json", "peers.json", "torch_loader.json"):
        assert (tmp_path / name).exists(), name
    with open(os.path.join(ROOT, "docs", "peers.json")) as f:
        committed = json.load(f)
    assert json.loads((tmp_path / "peers.json").read_text()) == committed


def test_only_selects_suites_and_peer_workloads():
    from benchmarks import run

    args = run.parse_args(["--only", "peers.gil_bound,small"])
    assert args.only == ["small", "peers"] and args.peer_workloads == ["gil_bound"]
    args = run.parse_args([])
    assert args.only == list(run.CHOICES) and args.peer_workloads == list(run.peers.CASES)
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "peers.nonesuch"])


def test_peers_tables_show_a_failed_case():
    from benchmarks import peers

    ok = {"batches_per_s": 100.0, "trainer_cpu_ms_per_batch": 1.0}
    doc = {"date_utc": "today", "machine": "here", "repeats": 2, "window_secs": 1.0,
           "results": {"one_sample": {"ours-process": [ok, {"error": "boom"}],
                                      "ours-thread": [ok, ok],
                                      "dataloader": [{"error": "boom"}, {"error": "boom"}]}}}
    assert peers.failed_cases(doc["results"]) == ["one_sample/ours-process",
                                                   "one_sample/dataloader",
                                                   "one_sample/dataloader"]
    text = peers.markdown(doc, tables=False)
    assert "| one_sample | 100 (100-100) | 100 (100-100) | failed |" in text
    assert "| one_sample: ours-process / dataloader | - | >= 1.5x | N/A |" in text


@pytest.mark.caffe2
@pytest.mark.timeout(120)
def test_worker_start_benchmark_runs(tmp_path):
    out = tmp_path / "worker_start.json"
    result = _run_module("benchmarks.worker_start", "--repeats", "1", "--workers", "2",
                         "--json", str(out), timeout=100)
    assert "workers' USS, total MB" in result.stdout
    record = json.loads(out.read_text())["records"][0]
    assert len(record["worker_uss"]) == 2 and record["first_batch_s"] > 0


@pytest.mark.caffe2
@pytest.mark.timeout(60)
def test_trainer_floor_runs(tmp_path):
    out = tmp_path / "floor.json"
    result = _run_module("benchmarks.trainer_floor", "--repeats", "1", "--rounds", "5",
                         "--json", str(out), timeout=50)
    figures = json.loads(out.read_text())["us_per_round"]
    assert set(figures) == {"warm", "cold"}
    assert all(len(runs) == 1 and runs[0] > 0 for runs in figures.values())
    assert "cold/warm" in result.stdout
