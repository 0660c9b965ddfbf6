"""Shared fixtures: a quiet Caffe2, a fresh workspace, and leak checks on every test.

Every test proves it leaked nothing: threads started during the test must be
gone when it ends (after a bounded grace period), and so must child processes.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from caffe2.python import workspace

workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])

import data_workers  # noqa: E402  (after GlobalInit)
from data_workers import parallel_workers  # noqa: E402

_GRACE_SECS = 10.0


def _children() -> set:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is pinned in requirements.txt
        return set()
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves threads or child processes behind."""
    threads_before = set(threading.enumerate())
    children_before = _children()
    yield
    # Stop whatever the test left registered, without judging its failures.
    data_workers.global_coordinator.stop(raise_failure=False)
    parallel_workers.global_coordinator.stop(raise_failure=False)
    deadline = time.monotonic() + _GRACE_SECS
    leaked = []
    for t in set(threading.enumerate()) - threads_before:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            leaked.append(t.name)
    assert not leaked, "threads leaked by the test: %s" % leaked
    while time.monotonic() < deadline and _children() - children_before:
        time.sleep(0.05)
    assert not (_children() - children_before), "child processes leaked by the test"


@pytest.fixture
def ws():
    """A reset Caffe2 workspace.

    Inputs a failed test left running are stopped before the reset: resetting the
    workspace under a running enqueue is undefined in Caffe2 and would turn one
    failure into a hung enqueuer and a second, misleading leak error.
    """
    workspace.ResetWorkspace()
    yield workspace
    data_workers.global_coordinator.stop(raise_failure=False)
    workspace.ResetWorkspace()
