"""``data_workers.torch.Loader``: the engine's guarantees, seen from a PyTorch loop.

Exactly-once and in-order rows per fetcher, failures raised at the next batch,
close() leaving nothing behind (the autouse ``no_leaks`` fixture checks threads
and processes), kept tensors never overwritten, state_dict resume, and an
import path free of Caffe2.  Each body runs over both fetcher backends.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any, List, Tuple

import numpy as np
import psutil
import pytest
import torch

import data_workers
from data_workers.torch import Loader
from fault_fetchers import (BlockingFetcher, FlakyDiskError, RandomRaiser, SteadyFetcher, SuddenDeath,
                            tagged_chunk)
from fault_util import WORKER_TYPES, shm_segments, wait_for
from util import check_tagged

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
NAMES = ["data", "label"]


def as_numpy(batches: List[Tuple[torch.Tensor, ...]]) -> List[List[np.ndarray]]:
    return [[t.numpy() for t in batch] for batch in batches]


def take(loader: Loader, n: int) -> List[Tuple[torch.Tensor, ...]]:
    return [batch for _, batch in zip(range(n), loader)]


@pytest.fixture(params=WORKER_TYPES)
def worker_type(request: Any) -> str:
    return request.param


# ----------------------------------------------------------------------------- import path


def test_no_caffe2_module_and_the_exit_hook_stops_a_loader_nobody_closed(tmp_path: Path) -> None:
    """One child interpreter (importing torch costs seconds): it imports and runs
    loaders of both kinds, checks ``sys.modules``, and exits with a process
    loader still running, which the exit hook must stop."""
    script = tmp_path / "forgot_close.py"
    script.write_text(textwrap.dedent("""
        import sys

        # No __main__ guard: process workers never import this file.
        import data_workers.torch
        from fault_fetchers import SteadyFetcher

        with data_workers.torch.Loader(SteadyFetcher(), 4, names=["d", "l"]) as loader:
            for _, (data, label) in zip(range(5), loader):
                assert data.shape == (4, 3)
        loader = data_workers.torch.Loader(SteadyFetcher(), 4, 2, worker_type="process",
                                           names=["d", "l"])
        next(loader)
        loaded = sorted(m for m in sys.modules if m.startswith("caffe2"))
        if loaded:
            sys.exit("caffe2 modules loaded: %s" % loaded)
        print(" ".join(str(p) for p in loader.stats().worker_pids))
    """))
    env = {"PYTHONPATH": "%s:%s" % (REPO_ROOT, TESTS), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    pids = [int(p) for p in result.stdout.split()]
    assert len(pids) == 2
    for pid in pids:
        try:
            assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass


# ----------------------------------------------------------------------------- delivery


def test_every_row_exactly_once_in_order_per_worker(worker_type: str) -> None:
    with Loader(SteadyFetcher(max_rows=16), 8, 2, worker_type=worker_type, names=NAMES,
                timeout=10) as loader:
        batches = take(loader, 120)
        stats = loader.stats()
    assert all(isinstance(t, torch.Tensor) for batch in batches for t in batch)
    assert batches[0][0].dtype == torch.float64 and batches[0][1].dtype == torch.int32
    seen = check_tagged(as_numpy(batches), batch_size=8)
    assert sum(seen.values()) == 120 * 8
    assert stats.worker_type == worker_type and stats.batches_enqueued >= 120


def test_deterministic_stream_is_the_round_robin_of_fetcher_outputs(worker_type: str) -> None:
    with Loader(SteadyFetcher(max_rows=16, seed=3), 8, 3, worker_type=worker_type,
                deterministic=True, names=NAMES, timeout=10) as loader:
        got = np.concatenate([b[0].numpy() for b in take(loader, 40)])
    reference = SteadyFetcher(max_rows=16, seed=3)
    chunks = []
    while sum(len(c) for c in chunks) < len(got):
        for worker_id in range(3):
            chunks.append(reference(worker_id, 8)[0])
    np.testing.assert_array_equal(got, np.concatenate(chunks)[:len(got)])


def test_a_lambda_feeds_process_workers_which_do_not_import_torch() -> None:
    """The lambda goes by value with what it uses (numpy, sys), not this module (torch)."""
    seq: dict = {}

    def tagged(worker_id: int) -> List[np.ndarray]:
        start = seq.get(worker_id, 0)
        seq[worker_id] = start + 4
        data = np.zeros((4, 3))
        data[:, 0] = worker_id
        data[:, 1] = np.arange(start, start + 4)
        data[:, 2] = "torch" in sys.modules
        return [data, np.arange(start, start + 4).astype(np.int32)]

    with Loader(lambda w, b: tagged(w), 8, 2, worker_type="process", names=NAMES,
                timeout=10) as loader:
        batches = as_numpy(take(loader, 30))
    assert sum(check_tagged([[d[:, :2], label] for d, label in batches], batch_size=8).values()) \
        == 30 * 8
    assert not any(d[:, 2].any() for d, _ in batches), "a worker imported torch"


def test_batch_columns_and_dont_rebatch() -> None:
    def time_major(worker_id: int, batch_size: int) -> List[np.ndarray]:
        return [np.zeros((5, 3, 2), np.float32), np.zeros(3, np.int64)]

    with Loader(time_major, 4, 1, batch_columns=[1, 0]) as loader:
        data, label = next(loader)
        assert loader.names == ("array0", "array1")
    assert data.shape == (5, 4, 2) and label.shape == (4,)
    with Loader(time_major, 4, 1, batch_columns=[1, 0], dont_rebatch=True) as loader:
        data, label = next(loader)
    assert data.shape == (5, 3, 2) and label.shape == (3,)


def test_string_arrays_come_as_numpy_object_arrays() -> None:
    def text(worker_id: int, batch_size: int) -> List[np.ndarray]:
        return [np.arange(2, dtype=np.int64), np.array(["a", "b"], dtype=object)]

    with Loader(text, 3, 1, names=["id", "text"]) as loader:
        ids, words = next(loader)
    assert isinstance(ids, torch.Tensor) and isinstance(words, np.ndarray)
    assert list(words) == ["a", "b", "a"]


# ----------------------------------------------------------------------------- buffers


def test_kept_tensors_are_never_overwritten_and_released_buffers_are_reused() -> None:
    with Loader(SteadyFetcher(max_rows=16), 8, 2, names=NAMES, timeout=10) as loader:
        kept = take(loader, 6)
        copies = [tuple(t.clone() for t in batch) for batch in kept]
        # Also keep a derived view only: it must pin its buffer just the same.
        sliced = next(loader)[0][2:5]
        sliced_copy = sliced.clone()
        addresses = set()
        for _, (data, _label) in zip(range(60), loader):
            addresses.add(data.data_ptr())
            del data, _label  # released: its buffer may serve a later batch
    for batch, copy in zip(kept, copies):
        for tensor, expected in zip(batch, copy):
            assert torch.equal(tensor, expected)
    assert torch.equal(sliced, sliced_copy)
    assert not addresses & {b[0].data_ptr() for b in kept}
    assert len(addresses) <= 8, "released buffers were not reused: %d distinct" % len(addresses)


def test_dtype_without_a_tensor_type_is_a_clear_error() -> None:
    def unsigned16(worker_id: int, batch_size: int) -> List[np.ndarray]:
        return [np.zeros((4, 2), np.uint16)]

    # Refused at the first chunk, by the torch sink's own rule (a Caffe2 blob takes uint16).
    with pytest.raises(data_workers.ChunkTypeError,
                       match="worker 0 of loader 'loader' returned dtype uint16 for array "
                             "'pixels', which a torch tensor "
                             "cannot hold; supported are .*float32"):
        with Loader(unsigned16, 4, 1, names=["pixels"]) as loader:
            next(loader)


#: Words a PyTorch user never wrote: a loader's message must not need them.
CAFFE2_WORDS = ("fetcher", "blob", "input '", "RunNet", "Caffe2")


def _no_caffe2_words(text: str) -> None:
    assert not [w for w in CAFFE2_WORDS if w in text], text


def slow_chunks(worker_id: int, batch_size: int) -> List[np.ndarray]:
    import time

    time.sleep(1.0)  # longer than stall_warning_secs: the input stalls
    return tagged_chunk(worker_id, 0, 4)


def test_errors_and_warnings_speak_pytorch(worker_type: str, caplog: Any) -> None:
    def two_arrays_then_three(worker_id: int, batch_size: int) -> List[np.ndarray]:
        return [np.zeros((4, 2), np.float32), np.zeros((4,), np.int64)] + (
            [np.zeros(4)] if worker_id == 0 else [])

    with pytest.raises(data_workers.ChunkTypeError) as info:
        with Loader(two_arrays_then_three, 4, 1, names=["image", "target"],
                    worker_type=worker_type) as loader:
            next(loader)
    assert "worker 0 of loader 'loader' returned 3 arrays; expected 2, one per array " \
        "['image', 'target']" in str(info.value)
    _no_caffe2_words(str(info.value))

    caplog.set_level("WARNING", logger="data_workers")
    with Loader(slow_chunks, 4, 1, names=NAMES, worker_type=worker_type,
                stall_warning_secs=0.2, name="train") as loader:
        next(loader)  # a second late: the warning came first
    stall = [r.getMessage() for r in caplog.records if "no batch moved" in r.getMessage()][0]
    assert stall.startswith("loader 'train': no batch moved for") and \
        "workers produced nothing" in stall, stall
    _no_caffe2_words(stall)


def test_a_dead_worker_is_named_in_pytorch_words() -> None:
    loader = Loader(SuddenDeath("sigkill", p=1.0), 4, 1, names=NAMES, worker_type="process")
    with pytest.raises(data_workers.WorkerDiedError) as info:
        for _ in loader:
            pass
    pid = info.value.pid
    assert str(info.value) == "worker 0 (pid %d) of loader 'loader' was killed by SIGKILL" % pid
    loader.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pin_memory_hands_out_pinned_tensors() -> None:
    with Loader(SteadyFetcher(), 8, 2, names=NAMES, pin_memory=True, timeout=10) as loader:
        batches = take(loader, 5)
    assert all(t.is_pinned() for batch in batches for t in batch)
    check_tagged(as_numpy(batches), batch_size=8)
    moved = [t.cuda(non_blocking=True) for t in batches[-1]]
    torch.cuda.synchronize()
    assert torch.equal(moved[0].cpu(), batches[-1][0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_pin_memory_without_cuda_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="pin_memory=True .* torch.cuda.is_available"):
        Loader(SteadyFetcher(), 8, names=NAMES, pin_memory=True)


# ----------------------------------------------------------------------------- failures


def test_fetcher_failure_is_raised_at_the_next_batch(worker_type: str) -> None:
    loader = Loader(RandomRaiser(p=0.3), 4, 2, worker_type=worker_type, names=NAMES,
                    timeout=10)
    rows: List[Tuple[torch.Tensor, ...]] = []
    with pytest.raises(data_workers.FetcherError) as info:
        for batch in loader:
            rows.append(batch)
    assert info.value.input_source == "loader"
    assert "FlakyDiskError" in str(info.value) or "FlakyDiskError" in repr(info.value.__cause__)
    check_tagged(as_numpy(rows), batch_size=4)  # what came before the failure is intact
    with pytest.raises(data_workers.InputClosedError, match="failed earlier") as again:
        next(loader)
    assert again.value.__cause__ is info.value
    assert loader.close() is True  # raised once, by iteration; close() does not repeat it


class FailWhenTold:
    """Thread workers: eight tagged chunks of 4 rows, then waits for ``fail`` and
    raises (it never blocks on a full pipeline, where it could not see ``fail``)."""

    def __init__(self, fail: threading.Event) -> None:
        self.fail = fail
        self.seq = 0

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        if self.seq >= 32:
            self.fail.wait(10)
        if self.fail.is_set():
            raise OSError("told to fail")
        self.seq += 4
        return tagged_chunk(worker_id, self.seq - 4, 4)


def test_failure_comes_after_the_batches_before_it() -> None:
    """NOTE [ Shutdown and error protocol ], rule 10: known at once, raised after the
    batches the fetcher made before it (its eight chunks: eight batches of 4)."""
    fail = threading.Event()
    with Loader(FailWhenTold(fail), 4, 1, names=NAMES, timeout=10) as loader:
        got = [next(loader)]
        wait_for(lambda: loader.stats().batches_enqueued >= 3, 10, "batches waiting")
        fail.set()
        wait_for(lambda: loader.stats().failure is not None, 10, "the failure")
        with pytest.raises(data_workers.FetcherError, match="told to fail"):
            while True:
                got.append(next(loader))
        assert len(got) == 8
        check_tagged(as_numpy(got), batch_size=4)


class _FailsAfterFirstBatch:
    """One good row, then waits for ``go`` and raises: the consumer has its batch first."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.calls = 0

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        self.calls += 1
        if self.calls > 1:
            self.go.wait(10)
            raise FlakyDiskError("sector 1 of shard %d unreadable" % worker_id)
        return tagged_chunk(worker_id, 0, 1)


def test_failure_not_seen_by_iteration_is_raised_by_close() -> None:
    fetch = _FailsAfterFirstBatch()
    loader = Loader(fetch, 1, 1, names=NAMES, timeout=10)
    next(loader)
    fetch.go.set()
    wait_for(lambda: loader.stats().failure is not None, 10, "the failure")
    with pytest.raises(data_workers.FetcherError):
        loader.close()
    loader.close()  # idempotent, raises nothing more


@pytest.mark.parametrize("worker_type", WORKER_TYPES[1:])
def test_worker_death_is_raised_at_the_next_batch(worker_type: str) -> None:
    with Loader(SuddenDeath("sigkill", worker_to_die=1), 4, 2, worker_type=worker_type,
                names=NAMES, timeout=10) as loader:
        with pytest.raises(data_workers.WorkerDiedError) as info:
            for _ in loader:
                pass
    assert info.value.signal_name == "SIGKILL"


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_process_workers_are_spawned_or_forked_as_asked(start_method: str) -> None:
    """A spawned worker runs the library's boot module in a fresh interpreter; a
    forked one is a copy of this process (its command line is ours); both feed
    the loop, and a forked one that dies is named."""
    with Loader(SteadyFetcher(), 4, 2, worker_type="process", names=NAMES, timeout=30,
                start_method=start_method) as loader:
        next(loader)
        pids = [p for p in loader.stats().worker_pids if p is not None]
        commands = [" ".join(psutil.Process(p).cmdline()) for p in pids]
        assert len(commands) == 2
        booted = ["data_workers._workers.boot" in c for c in commands]
        assert booted == [start_method == "spawn"] * 2, commands
        for _ in range(20):
            next(loader)
    with Loader(SuddenDeath("sigkill", worker_to_die=1), 4, 2, worker_type="process",
                names=NAMES, timeout=10, start_method=start_method) as loader:
        with pytest.raises(data_workers.WorkerDiedError) as info:
            for _ in loader:
                pass
    assert info.value.signal_name == "SIGKILL" and info.value.worker_id == 1


def test_a_stuck_fetcher_is_a_timeout_not_a_hang() -> None:
    release = threading.Event()
    loader = Loader(BlockingFetcher(release), 4, 1, names=NAMES, timeout=0.3)
    try:
        with pytest.raises(TimeoutError, match="no batch within timeout=0.3s"):
            next(loader)
    finally:
        release.set()
        loader.close()


# ----------------------------------------------------------------------------- lifecycle


def test_close_with_workers_blocked_on_a_full_pipeline_leaves_nothing(worker_type: str) -> None:
    shm_before = shm_segments()
    loader = Loader(SteadyFetcher(), 2, 2, worker_type=worker_type, names=NAMES,
                    max_buffered_batches=4, timeout=10)
    next(loader)
    wait_for(lambda: loader.stats().chunk_queue_depth >= 4, 10, "a full chunk channel")
    assert loader.close(timeout=5) is True
    assert loader.stats().state == "stopped"
    assert loader.close() is True
    with pytest.raises(data_workers.InputClosedError, match="was closed"):
        next(loader)
    assert shm_segments() <= shm_before


def test_close_before_start_and_iterating_a_closed_loader() -> None:
    Loader(SteadyFetcher(), 2, names=NAMES).close()
    with Loader(SteadyFetcher(), 2, names=NAMES) as loader:
        pass
    with pytest.raises(data_workers.InputClosedError):
        next(loader)


def test_a_dropped_loader_halts_its_workers() -> None:
    loader = Loader(SteadyFetcher(), 2, 2, names=NAMES)
    next(loader)
    threads = [t for t in threading.enumerate() if "data_workers loader" in t.name]
    assert threads
    del loader
    gc.collect()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)


def _closure_over_a_lock() -> Any:
    lock = threading.Lock()
    return lambda worker_id, batch_size: lock


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(fetch_fun=42), TypeError, "fetch_fun must be callable"),
    (dict(batch_size=0), ValueError, "batch_size must be a positive int"),
    (dict(num_workers=True), TypeError, "num_workers must be a positive int"),
    (dict(worker_type="fiber"), ValueError, "worker_type must be one of"),
    (dict(timeout=-1), ValueError, "timeout must be a positive number"),
    (dict(names="data"), TypeError, "names must be a non-empty list"),
    (dict(names=None), TypeError, "pass names=.* or batch_columns"),
    (dict(batch_columns=[0]), ValueError, "batch_columns must list one non-negative int"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(worker_type="process", fetch_fun=_closure_over_a_lock()), TypeError,
     r"fetch_fun .*cannot pickle '_thread.lock' object"),
])
def test_bad_arguments_name_the_parameter(kwargs: Any, error: type, match: str) -> None:
    args = dict(fetch_fun=SteadyFetcher(), batch_size=4, names=NAMES)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        Loader(**args)


def test_numpy_numbers_are_counts_as_for_the_caffe2_input() -> None:
    """The rules of data_workers/_core/args.py: integral numpy values work, stored as int."""
    with Loader(SteadyFetcher(), np.int64(4), np.int32(1), names=NAMES, seed=np.int64(3),
                batch_columns=[np.int64(0), np.int64(0)], timeout=np.float64(10)) as loader:
        data, _ = next(loader)
        assert data.shape[0] == 4
        assert type(loader.stats().workers) is int


# ----------------------------------------------------------------------------- checkpoints


def _source(**kwargs: Any) -> data_workers.ShardedSource:
    rows = np.arange(200, dtype=np.int64)
    return data_workers.ShardedSource([rows[:, None].astype(np.float32), rows], batch_size=8,
                                      seed=7, policy="wrap", **kwargs)


def test_state_dict_resumes_the_exact_stream(worker_type: str) -> None:
    with Loader(_source(), 8, 2, worker_type=worker_type, deterministic=True, names=NAMES,
                timeout=10) as loader:
        take(loader, 20)  # crosses an epoch boundary (25 steps of 8 per epoch of 200)
        state = loader.state_dict()
        expected = [b[1].numpy().copy() for b in take(loader, 12)]
    assert state["source"]["step"] == 20
    # A new job: new source, other worker count and backend, same position.
    with Loader(_source(), 8, 3, deterministic=True, names=NAMES, timeout=10) as resumed:
        resumed.load_state_dict(state)
        assert resumed.state_dict() == state
        got = [b[1].numpy() for b in take(resumed, 12)]
    for want, have in zip(expected, got):
        np.testing.assert_array_equal(want, have)


def test_state_dict_needs_a_sharded_source_deterministic_and_not_started() -> None:
    with pytest.raises(TypeError, match="ShardedSource"):
        Loader(SteadyFetcher(), 8, names=NAMES, deterministic=True).state_dict()
    with pytest.raises(ValueError, match="deterministic=True"):
        Loader(_source(), 8, names=NAMES).state_dict()
    with pytest.raises(ValueError, match="batch_size 4 differs"):
        Loader(_source(), 4, names=NAMES)
    with Loader(_source(), 8, names=NAMES, deterministic=True) as loader:
        state = loader.state_dict()
        with pytest.raises(ValueError, match="must come from Loader.state_dict"):
            loader.load_state_dict({"step": 3})
        next(loader)
        with pytest.raises(RuntimeError, match="before the first batch"):
            loader.load_state_dict(state)
    other = dict(state, source=dict(state["source"], seed=8))
    with pytest.raises(ValueError, match="does not belong"):
        Loader(_source(), 8, names=NAMES, deterministic=True).load_state_dict(other)
