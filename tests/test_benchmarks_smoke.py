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


@pytest.mark.timeout(240)
def test_benchmarks_quick_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path), "--no-chart",
         "--only", "small,startup"],
        cwd=ROOT, capture_output=True, text=True, timeout=220)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "upstream" in result.stdout and "ours" in result.stdout
    assert (tmp_path / "benchmarks.json").exists()
    json.loads((tmp_path / "benchmarks.json").read_text())


@pytest.mark.timeout(240)
def test_soak_quick_run(tmp_path):
    out = tmp_path / "soak.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--quick", "--json", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=220)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert out.exists()


@pytest.mark.timeout(120)
def test_copy_threads_runs():
    result = subprocess.run([sys.executable, "-m", "benchmarks.copy_threads", "--rounds", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rotating 2 threads" in result.stdout


@pytest.mark.timeout(60)
def test_torch_loader_benchmark_runs(tmp_path):
    out = tmp_path / "torch_loader.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.torch_loader", "--repeats", "1", "--window", "0.1",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "one_sample" in result.stdout and "gil_bound" in result.stdout
    assert set(json.loads(out.read_text())["workloads"]) == {"one_sample", "gil_bound"}
