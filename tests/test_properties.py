"""Property tests (hypothesis): whatever the chunking, every row arrives once, in order.

Drawn: chunk sizes per worker (including empty chunks and None), dtypes,
trailing shapes, batch columns, ``dont_rebatch``, ``deterministic``, worker
counts, buffer sizes and batch sizes.  Checked, from tags carried by every row
(see ``prop_fetchers.py``):

* per fetcher, the concatenation of delivered rows is a prefix of the
  concatenation of that fetcher's chunks (nothing lost, duplicated or reordered);
* with ``deterministic=True``, the whole stream is the round-robin order;
* every batch is exactly ``batch_size`` along each blob's batch column (or,
  with ``dont_rebatch``, exactly one fetched chunk), every blob of a row in step;
* a malformed chunk anywhere gives the documented error (``ChunkTypeError`` /
  ``ChunkValueError``, re-raised by ``stop()``) after only whole batches --
  never a hang, never a partial batch.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Dict, List

import numpy as np
import pytest
from caffe2.python import core, workspace
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import data_workers
from fault_util import HAVE_PROCESS_WORKERS, fetcher_processes, wait_for
from prop_fetchers import (TAG_BASE, BlobDesc, SpecFetcher, StreamSpec, expected_stream, rows_of,
                           values_of)

pytestmark = pytest.mark.timeout(120)

DTYPES = ["float32", "float64", "float16", "int32", "int64", "int16", "int8", "uint8",
          "uint16", "bool"]
TYPE_ERRORS = ["not_a_list", "wrong_count", "bad_dtype"]
VALUE_ERRORS = ["no_batch_column", "rows_mismatch", "shape_change", "dtype_change"]

PROPERTY_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                HealthCheck.too_slow])
requires_process = pytest.mark.skipif(not HAVE_PROCESS_WORKERS,
                                      reason="data_workers._workers.processes is not importable yet")


@st.composite
def blob_descs(draw: Any, first: bool) -> BlobDesc:
    trailing = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    column = draw(st.integers(0, len(trailing)))
    dtype = "int64" if first else draw(st.sampled_from(DTYPES))
    return BlobDesc(dtype, trailing, column)


@st.composite
def cases(draw: Any, bad: bool = False) -> Dict[str, Any]:
    n_blobs = draw(st.integers(1, 3))
    blobs = tuple([draw(blob_descs(True))] + [draw(blob_descs(False)) for _ in range(n_blobs - 1)])
    workers = draw(st.integers(1, 3))
    sizes = []
    for _ in range(workers):
        s = draw(st.lists(st.one_of(st.integers(1, 12), st.sampled_from([0, -1])),
                          min_size=1, max_size=5))
        if not any(x > 0 for x in s):
            s.append(draw(st.integers(1, 12)))
        sizes.append(tuple(s))
    dont_rebatch = draw(st.booleans())
    bad_spec = None
    if bad:
        kinds = list(TYPE_ERRORS)
        if not dont_rebatch:
            # With dont_rebatch each blob keeps its own shape, 0-d included (as upstream).
            kinds += ["no_batch_column", "shape_change", "dtype_change"] + (
                ["rows_mismatch"] if n_blobs > 1 else [])
        kind = draw(st.sampled_from(sorted(kinds)))
        position = draw(st.integers(0, workers - 1))
        index = draw(st.integers(0, 5))
        if kind in ("shape_change", "dtype_change"):
            # A change is only a change after a good chunk has fixed the layout:
            # put it after this worker's first chunk with rows (validated first).
            first_rows = next(i for i, n in enumerate(sizes[position]) if n > 0)
            index += first_rows + 1
        bad_spec = (position, index, kind)
    return dict(
        spec=StreamSpec(blobs, tuple(sizes), bad_spec),
        workers=workers,
        batch_size=draw(st.integers(1, 9)),
        buffered=draw(st.integers(1, 4)),
        dont_rebatch=dont_rebatch,
        deterministic=draw(st.booleans()),
        batches=draw(st.integers(1, 12)),
    )


def _start(case: Dict[str, Any], worker_type: str) -> Any:
    workspace.ResetWorkspace()
    names = ["b%d" % i for i in range(len(case["spec"].blobs))]
    first = data_workers.global_coordinator.next_worker_id
    ids = list(range(first, first + case["workers"]))
    net = core.Net("prop")
    coord = data_workers.init_data_input_workers(
        net, names, SpecFetcher(case["spec"], ids), case["batch_size"],
        num_worker_threads=case["workers"], max_buffered_batches=case["buffered"],
        dont_rebatch=case["dont_rebatch"], batch_columns=[b.column for b in case["spec"].blobs],
        timeout=20, worker_type=worker_type, deterministic=case["deterministic"], seed=0)
    assert coord.inputs()[-1].get_worker_ids() == ids
    workspace.CreateNet(net)
    coord.start()
    return net, names, coord, ids


def _check_batch(case: Dict[str, Any], arrays: List[np.ndarray]) -> List[int]:
    """Shapes, dtypes and per-row consistency of one batch; returns its row tags."""
    spec = case["spec"]
    tags = None
    for i, (arr, desc) in enumerate(zip(arrays, spec.blobs)):
        assert arr.dtype == np.dtype(desc.dtype), (i, arr.dtype, desc)
        trailing = arr.shape[:desc.column] + arr.shape[desc.column + 1:]
        assert trailing == desc.trailing, (i, arr.shape, desc)
        if not case["dont_rebatch"]:
            assert arr.shape[desc.column] == case["batch_size"], (i, arr.shape, desc)
        rows = rows_of(arr, desc)
        if i == 0:
            assert (rows == rows[:, :1]).all(), "a row's elements disagree"
            tags = rows[:, 0].astype(np.int64)
        else:
            assert rows.shape[0] == len(tags), "blobs of a batch out of step"
            want = values_of(tags, i, arr.dtype)
            assert (rows == want[:, None]).all(), "blob %d does not match its row tags" % i
    return [int(t) for t in tags]


def _check_stream(case: Dict[str, Any], ids: List[int], batches: List[List[int]]) -> None:
    per_worker: Dict[int, List[int]] = collections.defaultdict(list)
    for tags in batches:
        for t in tags:
            per_worker[t // TAG_BASE].append(t % TAG_BASE)
    assert set(per_worker) <= set(ids)
    for wid, seqs in per_worker.items():
        assert seqs == list(range(len(seqs))), "worker %d: rows lost or reordered" % wid
    if case["deterministic"]:
        # Each worker's size cycle holds at least one row: enough chunks for every row.
        cycle = max(len(s) for s in case["spec"].sizes)
        chunks = expected_stream(case["spec"], ids, cycle * (1 + sum(len(b) for b in batches)))
        if case["dont_rebatch"]:
            assert batches == chunks[:len(batches)]
        else:
            flat = [t for c in chunks for t in c]
            got = [t for b in batches for t in b]
            assert got == flat[:len(got)]
    elif case["dont_rebatch"]:
        # Each batch is exactly one non-empty chunk of one worker, in that worker's order.
        for tags in batches:
            assert len({t // TAG_BASE for t in tags}) == 1


def _delivery(case: Dict[str, Any], worker_type: str) -> None:
    assert case["spec"].bad is None
    net, names, coord, ids = _start(case, worker_type)
    batches = []
    try:
        for _ in range(case["batches"]):
            workspace.RunNet(net.Proto().name)
            batches.append(_check_batch(case, [workspace.FetchBlob(n) for n in names]))
    finally:
        assert coord.stop() is True
    _check_stream(case, ids, batches)


def _malformed(case: Dict[str, Any], worker_type: str) -> None:
    kind = case["spec"].bad[2]
    expected = data_workers.ChunkTypeError if kind in TYPE_ERRORS else data_workers.ChunkValueError
    net, names, coord, ids = _start(case, worker_type)
    batches = []
    try:
        for _ in range(5000):
            try:
                workspace.RunNet(net.Proto().name)
            except RuntimeError:
                break
            batches.append(_check_batch(case, [workspace.FetchBlob(n) for n in names]))
        else:
            pytest.fail("the malformed chunk never stopped the input")
    except BaseException:
        coord.stop(raise_failure=False)
        raise
    with pytest.raises(expected):
        coord.stop()
    _check_stream(case, ids, batches)


@pytest.fixture
def quiet_skips(caplog):
    # None / empty chunks are logged at WARNING each time; keep the report short.
    caplog.set_level(logging.ERROR, logger="data_workers")


@settings(max_examples=100, **PROPERTY_SETTINGS)
@given(case=cases())
def test_delivery_threads(case, quiet_skips):
    _delivery(case, "thread")


@settings(max_examples=60, **PROPERTY_SETTINGS)
@given(case=cases(bad=True))
def test_malformed_chunk_threads(case, quiet_skips):
    _malformed(case, "thread")


@requires_process
@settings(max_examples=8, **PROPERTY_SETTINGS)
@given(case=cases())
def test_delivery_processes(case, quiet_skips):
    _delivery(case, "process")
    wait_for(lambda: not fetcher_processes(), 10, "worker processes to exit")


@requires_process
@settings(max_examples=8, **PROPERTY_SETTINGS)
@given(case=cases(bad=True))
def test_malformed_chunk_processes(case, quiet_skips):
    _malformed(case, "process")
    wait_for(lambda: not fetcher_processes(), 10, "worker processes to exit")
