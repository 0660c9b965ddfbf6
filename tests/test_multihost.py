"""Two trainer processes as two hosts: Gloo on loopback, sharded input, kill and resume.

Runs ``examples/multihost_gloo.py`` twice per host: a first run that checkpoints after
step 8, keeps training to step 12 and is then SIGKILLed (its input still running), and a
resumed run with a different number of fetchers that continues from the checkpoint.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "multihost_gloo.py"
WORLD = 2
DEVICES = 2
BATCH = 4
NUM_SAMPLES = 200
SEED = 1234
CKPT_AT = 8
FIRST_STEPS = 12
RESUMED_STEPS = 10
PROC_TIMEOUT = 45.0

pytestmark = [pytest.mark.timeout(120), pytest.mark.caffe2]  # the example trains a Caffe2 net


def _start(rank: int, tmp: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, str(EXAMPLE), "--rank", str(rank), "--world-size", str(WORLD),
        "--store-dir", str(tmp / "store"), "--checkpoint", str(tmp / "ckpt.minidb"),
        "--devices", str(DEVICES), "--batch-size", str(BATCH), "--num-samples",
        str(NUM_SAMPLES), "--seed", str(SEED), "--policy", "wrap", "--timeout", "30", *extra,
    ]
    log_path = tmp / f"rank{rank}.{len(list(tmp.glob(f'rank{rank}.*')))}.log"
    with open(log_path, "wb") as log:
        # A session of its own, so the whole process group (fetcher processes included)
        # can be killed at once.
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def _wait_for_files(paths: list[Path], procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + PROC_TIMEOUT
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"trainer {proc.args!r} exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"trainers did not write {paths} in {PROC_TIMEOUT} s")
        time.sleep(0.1)  # polling another process's output file; nothing to wait on


def _inet_addresses(pid: int) -> set[str]:
    psutil = pytest.importorskip("psutil")
    addrs: set[str] = set()
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for conn in proc.net_connections(kind="inet"):
            addrs.add(conn.laddr.ip)
            if conn.raddr:
                addrs.add(conn.raddr.ip)
    return addrs


def _global_stream(records: list[dict[str, Any]], steps: range) -> np.ndarray:
    """Rows of each step in shard order (rank-major, then device), concatenated."""
    by_rank = {r["rank"]: r for r in records}
    return np.concatenate([
        np.asarray(by_rank[rank]["steps"][str(s)][str(d)], dtype=np.int64)
        for s in steps for rank in range(WORLD) for d in range(DEVICES)
    ])


def _global_hosts(num_steps: int) -> np.ndarray:
    """The host that delivered each row of ``_global_stream`` over ``num_steps`` steps."""
    per_step = np.repeat(np.arange(WORLD), DEVICES * BATCH)
    return np.tile(per_step, num_steps)


def _reference_stream(num_steps: int) -> np.ndarray:
    from data_workers.sharding import ShardedSource

    ref = ShardedSource([np.arange(NUM_SAMPLES)], BATCH * WORLD * DEVICES, seed=SEED, policy="wrap")
    return np.concatenate([ref.block_indices(s) for s in range(num_steps)])


def _params_in_sync(record: dict[str, Any], other: dict[str, Any]) -> None:
    p0 = np.asarray(record["param"]["0"])
    for rec in (record, other):
        for d in range(DEVICES):
            np.testing.assert_allclose(np.asarray(rec["param"][str(d)]), p0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_two_hosts_disjoint_in_sync_and_resume_exactly(tmp_path: Path, worker_type: str) -> None:
    first = [tmp_path / f"first{r}.json" for r in range(WORLD)]
    procs = [
        _start(r, tmp_path, "--steps", str(FIRST_STEPS), "--checkpoint-at", str(CKPT_AT),
               "--num-workers", "2", "--worker-type", worker_type, "--record", str(first[r]),
               "--run-id", "1", "--hang-after")
        for r in range(WORLD)
    ]
    try:
        _wait_for_files(first, procs)
        # Gloo and the file store talk over loopback only.
        for proc in procs:
            addrs = _inet_addresses(proc.pid)
            assert addrs, "expected the trainer's Gloo connections"
            for ip in addrs:
                assert ipaddress.ip_address(ip).is_loopback, f"trainer socket on {ip}"
    finally:
        for proc in procs:  # the crash: SIGKILL with fetchers still running
            _kill_group(proc)
    assert (tmp_path / "ckpt.minidb").exists()

    resumed = [tmp_path / f"resumed{r}.json" for r in range(WORLD)]
    procs = [
        _start(r, tmp_path, "--resume", "--run-id", "2", "--steps", str(RESUMED_STEPS),
               "--num-workers", "3", "--worker-type", worker_type, "--record", str(resumed[r]))
        for r in range(WORLD)
    ]
    try:
        for proc in procs:
            assert proc.wait(timeout=PROC_TIMEOUT) == 0, "resumed trainer failed"
    finally:
        for proc in procs:
            _kill_group(proc)

    first_recs = [json.loads(p.read_text()) for p in first]
    resumed_recs = [json.loads(p.read_text()) for p in resumed]
    assert all(r["start_step"] == CKPT_AT for r in resumed_recs)

    # Within a step, the four device shards (2 hosts x 2 devices) are disjoint (steps
    # of epoch 0; with the wrap policy, step 12 holds the end of epoch 0 and the start
    # of epoch 1, which may share rows).
    for step in range(NUM_SAMPLES // (BATCH * WORLD * DEVICES)):
        recs = first_recs if step < CKPT_AT else resumed_recs
        rows = _global_stream(recs, range(step, step + 1))
        assert len(set(rows.tolist())) == rows.size

    # Steps before the checkpoint from the first run, the rest from the resumed run,
    # form one uninterrupted stream: the reference order, no row repeated or skipped.
    total = CKPT_AT + RESUMED_STEPS
    stream = np.concatenate([
        _global_stream(first_recs, range(CKPT_AT)),
        _global_stream(resumed_recs, range(CKPT_AT, total)),
    ])
    np.testing.assert_array_equal(stream, _reference_stream(total))
    epoch0 = stream[:NUM_SAMPLES]
    assert sorted(epoch0.tolist()) == list(range(NUM_SAMPLES)), "epoch 0 not exactly once"
    # Hosts see disjoint data that together covers the epoch.
    hosts = np.concatenate([
        _global_hosts(CKPT_AT), _global_hosts(RESUMED_STEPS)
    ])[:NUM_SAMPLES]
    seen = [set(epoch0[hosts == h].tolist()) for h in range(WORLD)]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(NUM_SAMPLES))

    # The steps redone after the crash see exactly the data the lost steps saw.
    lost = _global_stream(first_recs, range(CKPT_AT, FIRST_STEPS))
    redone = _global_stream(resumed_recs, range(CKPT_AT, FIRST_STEPS))
    np.testing.assert_array_equal(lost, redone)

    # Parameters stay in sync across hosts and devices, before and after the restart.
    _params_in_sync(first_recs[0], first_recs[1])
    _params_in_sync(resumed_recs[0], resumed_recs[1])


def test_launch_mode_runs_all_hosts_and_checks_itself(tmp_path: Path) -> None:
    """``--launch`` runs both hosts, restarts them, and verifies its own output."""
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "--launch", "--world-size", "2", "--timeout", "30"],
        capture_output=True, text=True, timeout=PROC_TIMEOUT * 2, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 rows seen by more than one host" in out.stdout
    assert "saw the same rows as before it: True" in out.stdout
    assert "max difference 0" in out.stdout
