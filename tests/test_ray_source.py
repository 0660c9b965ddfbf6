"""RayDataSource: Caffe2 nets fed from ray.data on a local, loopback-only Ray cluster.

One Ray cluster per module (2 CPUs, a small object store, a temp folder of the test's
own, no dashboard), shut down at the end. Skipped when Ray is not installed.
"""

from __future__ import annotations

import gc
import importlib.util
import ipaddress
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from caffe2.python import core, workspace

import data_workers
from fault_util import in_call, wait_for

HAVE_RAY = importlib.util.find_spec("ray") is not None
requires_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray[data] is not installed")

# One worker runs the module: its fixture starts one Ray cluster for all tests.
pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("ray")]

workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])

ROOT = Path(__file__).resolve().parent.parent
#: How long something already stopped may take to finish exiting.
EXIT_GRACE_SECS = 10.0
#: The first batch waits for Ray Data to start its workers: seconds when idle, more
#: than 30 s on a loaded 2-core CI machine.
DEQUEUE_TIMEOUT_SECS = 90


def test_core_does_not_import_ray() -> None:
    code = (
        "import sys, data_workers, data_workers.sharding, data_workers.ray_source; "
        "assert 'ray' not in sys.modules, 'data_workers imported ray'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not HAVE_RAY:
        pytest.skip("ray[data] is not installed")
    import ray
    import ray.data

    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")
    psutil = pytest.importorskip("psutil")
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    temp = tmp_path_factory.mktemp("ray")
    # Opt in to Ray's future accelerator behaviour (silences its FutureWarning).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    ray.init(
        address="local",  # always a new local cluster, never RAY_ADDRESS
        num_cpus=2,
        object_store_memory=96 * 1024 * 1024,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(temp),
        log_to_driver=False,
        configure_logging=False,
        # Ray runs its workers at nice 15: beside two busy loops the split test took
        # 162 s instead of 7 s (docs/ray.md, "Ray's workers yield the CPU").
        _system_config={"worker_niceness": 0},
    )
    # Ray workers cannot import this test module: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield ray
    finally:
        # Ray Datasets the tests dropped shut their executors down in __del__,
        # which calls into Ray: let them run now, while Ray is up.  Left to a
        # later garbage collection, they ran after ray.shutdown() in whatever
        # test this worker ran next (a "cannot join current thread" warning
        # from Dataset.__del__ was seen; the worker that ran this module is the
        # one that crashed, 3 full runs in 7 beside two busy loops).
        gc.collect()
        ray.shutdown()
        gc.collect()
    # Everything Ray started must be gone once it is shut down.
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in children_before]
    _gone, alive = psutil.wait_procs(left, timeout=EXIT_GRACE_SECS)
    assert not alive, f"Ray left processes running: {[p.pid for p in alive]}"


@pytest.fixture
def fresh_workspace() -> Iterator[None]:
    prev = workspace.CurrentWorkspace()
    workspace.SwitchWorkspace("test_ray_source", True)
    workspace.ResetWorkspace()
    try:
        yield
    finally:
        workspace.ResetWorkspace()
        workspace.SwitchWorkspace(prev)


def _ours() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("data_workers")}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Per test: no data_workers thread left running.

    Overrides the suite-wide check: the module's Ray cluster keeps its own worker
    processes and threads between tests by design. ``ray_cluster`` checks at module end
    that ``ray.shutdown()`` left no child process behind.
    """
    before = _ours()
    yield
    data_workers.global_coordinator.stop(raise_failure=False)
    deadline = time.monotonic() + EXIT_GRACE_SECS
    leaked = []
    for t in _ours() - before:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive():
            leaked.append(t.name)
    assert not leaked, f"leaked threads: {leaked}"


def _preprocess(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ids = batch["id"].astype(np.int64)
    feats = np.stack([ids, ids * 2, ids * 3], axis=1).astype(np.float32)
    return {"id": ids, "x": feats}


def _started_input(ds: Any, name: str, batch: int, **kwargs: Any) -> tuple[Any, Any, Any]:
    """A started input ``name`` feeding blobs ``id`` and ``x`` of a new net from ``ds``:
    (its RayDataSource, the net, the coordinator)."""
    from data_workers.ray_source import RayDataSource

    source = RayDataSource(ds, ["id", "x"], batch_size=batch)
    net = core.Net(name)
    coord = source.attach(net, ["id", "x"], input_source_name=name,
                          timeout=DEQUEUE_TIMEOUT_SECS, **kwargs)
    workspace.CreateNet(net, overwrite=True)
    coord.start()
    return source, net, coord


def _failing_preprocess(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if (batch["id"] == 37).any():
        raise ValueError("corrupt record 37")
    return _preprocess(batch)


@requires_ray
def test_cluster_is_loopback_only(ray_cluster: Any) -> None:
    psutil = pytest.importorskip("psutil")
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    addrs = set()
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        for conn in conns:
            addrs.add(conn.laddr.ip)
            if conn.raddr:
                addrs.add(conn.raddr.ip)
    assert addrs, "expected Ray's sockets"
    for ip in addrs:
        assert ipaddress.ip_address(ip.replace("::ffff:", "")).is_loopback, ip


@requires_ray
def test_two_consumers_get_disjoint_rows_covering_the_dataset(
    ray_cluster: Any, fresh_workspace: None
) -> None:
    from data_workers.ray_source import RayDataSource

    n, batch = 192, 8
    ds = ray_cluster.data.range(n, override_num_blocks=8).map_batches(_preprocess)
    sources = RayDataSource.split(ds, ["id", "x"], batch_size=batch, n=2, num_epochs=1)
    nets = []
    for i, source in enumerate(sources):
        net = core.Net(f"ray_consumer_{i}")
        coord = source.attach(net, [f"id{i}", f"x{i}"], input_source_name=f"ray{i}",
                              max_buffered_batches=4, timeout=DEQUEUE_TIMEOUT_SECS)
        workspace.CreateNet(net, overwrite=True)
        nets.append(net)
    seen: list[list[int]] = [[], []]
    coord.start()
    try:
        for _ in range(n // 2 // batch):
            for i, net in enumerate(nets):
                workspace.RunNet(net.Proto().name)
                ids = workspace.FetchBlob(f"id{i}")
                assert ids.shape == (batch,)  # exact batches
                np.testing.assert_array_equal(workspace.FetchBlob(f"x{i}")[:, 2], 3 * ids)
                seen[i].extend(ids.tolist())
    finally:
        ok = coord.stop()
        for source in sources:
            source.close()
    assert ok
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(n))


@requires_ray
def test_backpressure_bounds_what_is_pulled_from_ray(
    ray_cluster: Any, fresh_workspace: None
) -> None:
    batch, buffered, steps = 4, 2, 5
    ds = ray_cluster.data.range(4000, override_num_blocks=20).map_batches(_preprocess)
    source, net, coord = _started_input(ds, "ray_bp", batch, max_buffered_batches=buffered)
    try:
        for _ in range(steps):
            workspace.RunNet(net.Proto().name)
        # The net stops consuming here: what the fetcher pulled from Ray is bounded by
        # what the input's queues hold, not by the dataset's size.
    finally:
        ok = coord.stop()
        source.close()
    assert ok
    # consumed + chunk channel + Caffe2 queue (4) + one in the fetcher's hands, with slack
    assert source.rows_delivered <= (steps + buffered + 4 + 2) * batch * 2
    assert source.rows_delivered < 4000


@requires_ray
def test_failure_in_a_ray_task_reaches_the_training_loop(
    ray_cluster: Any, fresh_workspace: None
) -> None:
    from data_workers.ray_source import RayDataError

    ds = ray_cluster.data.range(200, override_num_blocks=4).map_batches(_failing_preprocess)
    source, net, coord = _started_input(ds, "ray_fail", 10)
    with pytest.raises(data_workers.FetcherError) as info:
        try:
            for _ in range(20):  # 200 rows: the failing block is reached well before
                workspace.RunNet(net.Proto().name)
                coord.check()
        finally:
            try:
                coord.stop()
            finally:
                source.close()
    err = info.value
    assert err.input_source == "ray_fail"
    cause = err.__cause__
    assert isinstance(cause, RayDataError)
    assert cause.user_error == "ValueError: corrupt record 37"
    assert "ValueError: corrupt record 37" in str(err)
    assert isinstance(cause.__cause__, ray_cluster.exceptions.RayTaskError)


#: How long the slow dataset's one task sleeps: a fetcher waits inside Ray meanwhile.
SLOW_TASK_SECS = 8.0


def _slow_preprocess(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    time.sleep(SLOW_TASK_SECS)
    return _preprocess(batch)


def _slow_failing_preprocess(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    time.sleep(SLOW_TASK_SECS)
    raise ValueError("corrupt block, found after the source was closed")


@requires_ray
@pytest.mark.parametrize("task", [_slow_preprocess, _slow_failing_preprocess],
                         ids=["answers_a_batch", "answers_an_error"])
def test_close_does_not_wait_for_a_fetcher_inside_ray(
    ray_cluster: Any, fresh_workspace: None, task: Any
) -> None:
    """stop() gives up on a fetcher that Ray keeps waiting; close() must not hang on it,
    and the fetcher ends by itself once Ray answers, delivering nothing more: neither
    the batch nor a failed task's error (the input is stopped, the source closed)."""
    ds = ray_cluster.data.range(16, override_num_blocks=1).map_batches(task)
    source, _, coord = _started_input(ds, "ray_slow", 8)
    fetcher = next(t for t in _ours() if t.name.startswith("data_workers ray_slow fetcher"))
    # Once it is in next_batch, it waits on Ray: the task sleeps for seconds.
    wait_for(lambda: in_call(fetcher, "next_batch"), DEQUEUE_TIMEOUT_SECS,
             "the fetcher to ask the source for a batch")
    assert not coord.stop(timeout=0.5)  # the fetcher could not be joined
    assert fetcher.is_alive() and source.rows_delivered == 0  # read without waiting
    source.close()
    assert fetcher.is_alive(), "close() waited for Ray to answer the fetcher"
    fetcher.join(SLOW_TASK_SECS + DEQUEUE_TIMEOUT_SECS)
    assert not fetcher.is_alive()
    assert source.rows_delivered == 0  # the batch Ray answered with went nowhere
    assert coord.stop()  # the second stop() finishes the job, and raises nothing


@requires_ray
def test_misuse_is_refused_clearly(ray_cluster: Any) -> None:
    import pickle

    from data_workers.ray_source import RayDataSource

    source = RayDataSource(ray_cluster.data.range(10), ["id"], batch_size=2, num_epochs=1)
    with pytest.raises(TypeError, match="thread"):
        pickle.dumps(source)
    with pytest.raises(ValueError, match="worker_type='thread'"):
        source.attach(core.Net("x"), ["id"], worker_type="process")
    with pytest.raises(ValueError, match="one blob per column"):
        source.attach(core.Net("x"), ["id", "extra"])
    with pytest.raises(ValueError, match="batch_size"):
        source(0, 3)
    # exhausting the data: batches, then None (no data) without raising.  Ray Data
    # may finish blocks out of order (preserve_order is off), so compare rows as a set.
    got = [source(0, 2) for _ in range(6)]
    assert all(g is not None and len(g[0]) == 2 for g in got[:5]) and got[5] is None
    assert sorted(row for g in got[:5] for row in g[0].tolist()) == list(range(10))
    source.close()


@requires_ray
def test_preserve_order_gives_dataset_order(ray_cluster: Any) -> None:
    """The recipe for a fixed row order in docs/ray.md."""
    from data_workers.ray_source import RayDataSource

    ctx = ray_cluster.data.DataContext.get_current()
    before = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        ds = ray_cluster.data.range(40, override_num_blocks=8).map_batches(_preprocess)
        source = RayDataSource(ds, ["id"], batch_size=4, num_epochs=1)
        try:
            got = [source(0, 4) for _ in range(11)]
        finally:
            source.close()
    finally:
        ctx.execution_options.preserve_order = before
    assert got[10] is None
    assert [row for g in got[:10] for row in g[0].tolist()] == list(range(40))
