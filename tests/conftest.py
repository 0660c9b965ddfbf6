"""Shared fixtures: a quiet Caffe2, a fresh workspace, and leak checks on every test.

Every test proves it leaked nothing: threads started during the test must be
gone when it ends (after a bounded grace period), and so must child processes.

The suite has two legs (``legs.py``).  A test that needs Caffe2 carries the
``caffe2`` marker: by a ``@pytest.mark.caffe2`` of its own, by using the ``ws``
fixture, or by living in a module of ``CAFFE2_MODULES`` (modules that import
Caffe2 at the top).  The modern leg, which has no Caffe2, runs
``pytest -m "not caffe2"``; there the modules of ``CAFFE2_MODULES`` are not
collected, selecting a ``caffe2`` test is a usage error (never a silent skip),
and each module of ``MODERN_MODULES`` must contribute tests.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, List

import pytest

from legs import HAVE_CAFFE2, workspace

if HAVE_CAFFE2:
    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    # torch now, as a script that uses it has it: a process input otherwise starts
    # importing it on a thread of its own at its first batch (_caffe2/feed.py), and
    # that import (seconds under load, ~110 MB) outlives the test that started it,
    # landing in a later test's thread, memory or timing checks.  The background
    # import is tested in fresh interpreters (test_first_minutes.py).
    import torch  # noqa: F401

import data_workers  # noqa: E402  (after GlobalInit)
from data_workers import parallel_workers  # noqa: E402

#: Modules that need Caffe2 in every test (most import it at the top; test_docs
#: builds the site, whose API reference imports the Caffe2 API): the modern leg
#: does not collect them.  tests/test_legs.py keeps this list and
#: MODERN_MODULES honest against the files in tests/.
CAFFE2_MODULES = frozenset({
    "test_boundary.py", "test_compat_internals.py", "test_delivery.py", "test_docs.py",
    "test_errors.py",
    "test_failure_order.py", "test_faults.py", "test_fetch_failures.py", "test_fork_workers.py",
    "test_hostile_input.py", "test_lifecycle.py", "test_metrics.py", "test_multihost.py",
    "test_process_main.py", "test_process_workers.py", "test_properties.py",
    "test_protocol_matrix.py", "test_ray_source.py", "test_scopes.py",
    "test_shutdown_attacks.py", "test_upstream_compat.py", "test_upstream_defects.py",
    "test_watchdog.py",
})
#: Every other module: each runs on both legs, and must bring at least one test
#: to the modern leg (a module whose tests all became caffe2 belongs above).
MODERN_MODULES = frozenset({
    "test_benchmarks_smoke.py", "test_examples.py",
    "test_exported_members.py", "test_first_minutes.py", "test_layers.py", "test_legs.py",
    "test_packaging.py", "test_parallel_workers.py", "test_sharding.py",
    "test_torch_dataset.py", "test_torch_loader.py", "test_typing.py",
})
#: Fixtures that only Caffe2 can provide: a test using one is marked caffe2.
_CAFFE2_FIXTURES = frozenset({"ws"})

collect_ignore: List[str] = [] if HAVE_CAFFE2 else sorted(CAFFE2_MODULES)


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: Any, items: List[Any]) -> None:
    for item in items:
        name = Path(str(item.fspath)).name
        if name in CAFFE2_MODULES or _CAFFE2_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.caffe2)


def pytest_collection_finish(session: Any) -> None:
    """On the modern leg: nothing that needs Caffe2 selected, and no module left empty."""
    if HAVE_CAFFE2 or session.config.option.collectonly:
        return
    needs = [item.nodeid for item in session.items if item.get_closest_marker("caffe2")]
    if needs:
        raise pytest.UsageError(
            "%d selected tests need Caffe2, which this environment lacks (first: %s); "
            "run the modern leg with -m \"not caffe2\" (make test does)" % (len(needs), needs[0]))
    if session.config.args_source is not pytest.Config.ArgsSource.TESTPATHS:
        return  # hand-picked paths: only the whole modern leg must be complete
    present = {Path(str(item.fspath)).name for item in session.items}
    empty = sorted(MODERN_MODULES - present)
    if empty:
        raise pytest.UsageError("modules with no test on the modern leg: %s" % ", ".join(empty))


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
    if HAVE_CAFFE2:  # data_workers.global_coordinator is the Caffe2 API's registry
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
