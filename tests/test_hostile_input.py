"""Hostile fetcher output: each form has one documented outcome, tested here.

A fetcher is user code and may return anything.  The outcomes (also in
docs/reliability.md, "Hostile fetcher output"):

===========================  =====================================================
fetcher returns              outcome
===========================  =====================================================
strided / Fortran-order /    accepted; rows copied out exactly (the one copy)
negative-stride / zero-
stride (broadcast) views
read-only arrays             accepted (the library only reads them)
ndarray subclasses           accepted as plain arrays (np.matrix, custom
(matrix, custom, memmap)     subclasses); the net gets ordinary tensors
np.ma.MaskedArray            ChunkTypeError: the mask would be silently dropped
different dtypes per blob    accepted; each blob keeps its own dtype
NaN / inf                    accepted as data
object arrays of bytes/str   accepted; Caffe2 string tensors (bytes)
object arrays of anything    ChunkTypeError naming the blob and the element type
else, or of str that is not  (or the string)
valid UTF-8 (lone surrogate)
0-d arrays                   ChunkValueError: no batch column (accepted with
                             dont_rebatch=True: each blob keeps its shape)
numpy scalars, lists         ChunkTypeError: not a numpy array
dtypes a Caffe2 blob cannot  ChunkTypeError: unsupported dtype, naming what is
hold (uint32/64, float128,   supported (the table in data_workers/_caffe2/dtypes.py;
complex, datetime, void/     str/bytes: .astype(object))
structured), str/bytes
dtypes, big-endian
dtype/trailing shape change  ChunkValueError (re-batching needs one layout)
huge (virtual size > budget) ChunkValueError before anything is allocated:
                             threads: more than MEMORY_BUDGET_FRACTION (50%) of
                             physical memory for the chunk or for one batch of its
                             rows; processes: first the shared-memory arena
                             (shm_bytes_per_worker, default 64 MiB), then the same
                             budget for a batch
===========================  =====================================================

Ownership: with thread workers the library keeps a reference to the returned
arrays until their rows are copied into a batch; a fetcher must not modify an
array after returning it (process workers copy it into shared memory first).
"""

from __future__ import annotations

import os

import numpy as np
import psutil
import pytest
from caffe2.python import core, workspace

import data_workers
from data_workers._caffe2.dtypes import CAFFE2_DTYPE_RULE
from data_workers._core import validate as _validate
from fault_util import (
    PROCESS_ONLY,
    PROMPT_SECS,
    BigRowFetcher,
    HostileFetcher,
    RealBigFetcher,
    hostile_output,
    make_input,
    no_shm_leak,  # noqa: F401  (fixture)
    run_until_error,
    worker_type,  # noqa: F401  (fixture)
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("ws", "no_shm_leak"),
    # np.matrix is deprecated-pending; it is exactly the kind of thing users return.
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]

ACCEPTED = ["strided", "transposed", "negative_strides", "readonly", "broadcast_rows", "matrix",
            "subclass", "mixed_dtypes", "nan_inf"]
REJECTED = {
    "masked": (data_workers.ChunkTypeError, "masked array"),
    "object_mixed": (data_workers.ChunkTypeError, "element of type dict"),
    "zero_d": (data_workers.ChunkValueError, "no batch column"),
    "numpy_scalar": (data_workers.ChunkTypeError, "expected a numpy array"),
    "python_list": (data_workers.ChunkTypeError, "expected a numpy array"),
    "big_endian": (data_workers.ChunkTypeError, "dtype >f8"),
    "unicode": (data_workers.ChunkTypeError, "dtype <U8"),
    "bytes_dtype": (data_workers.ChunkTypeError, "dtype |S8"),
    "complex": (data_workers.ChunkTypeError, "dtype complex128"),
    "datetime": (data_workers.ChunkTypeError, "datetime64"),
    "uint32": (data_workers.ChunkTypeError, "dtype uint32"),
    "surrogate": (data_workers.ChunkTypeError, "not valid UTF-8"),
    "structured": (data_workers.ChunkTypeError, "supported are"),
    "huge_virtual": (data_workers.ChunkValueError, None),
    "huge_rows": (data_workers.ChunkValueError, None),
}


def _collect(net, n):
    workspace.CreateNet(net, overwrite=True)
    out = []
    for _ in range(n):
        workspace.RunNet(net.Proto().name)
        out.append([workspace.FetchBlob("data"), workspace.FetchBlob("label")])
    return out


@pytest.mark.parametrize("kind", ACCEPTED)
def test_accepted_forms_arrive_exactly(worker_type, kind):
    net = core.Net("hostile_ok")
    coord = make_input(net, HostileFetcher(kind), batch_size=6, num_worker_threads=1,
                       worker_type=worker_type)
    coord.start()
    batches = _collect(net, 6)
    assert coord.stop() is True
    want_data, want_label = hostile_output(kind, 0, 0)  # dtypes of this form
    rows = np.concatenate([d for d, _ in batches])
    labels = np.concatenate([l for _, l in batches])
    assert type(rows) is np.ndarray and rows.dtype == np.asarray(want_data).dtype
    assert labels.dtype == want_label.dtype
    seqs = np.arange(36)
    if kind == "nan_inf":
        assert (rows[:, 0] == seqs).all()
        assert np.isnan(rows[:, 1]).all() and np.isinf(rows[:, 2]).all()
    else:
        np.testing.assert_array_equal(rows, np.repeat(seqs[:, None], 3, axis=1).astype(rows.dtype))
    np.testing.assert_array_equal(labels, seqs.astype(labels.dtype))


@pytest.mark.parametrize("kind", ["object_bytes", "object_str"])
def test_object_arrays_of_strings_become_string_tensors(worker_type, kind):
    net = core.Net("hostile_obj")
    coord = make_input(net, HostileFetcher(kind), batch_size=6, num_worker_threads=1,
                       worker_type=worker_type)
    coord.start()
    batches = _collect(net, 3)
    assert coord.stop() is True
    labels = [x for _, l in batches for x in l]
    assert labels == [b"r%d" % i for i in range(18)]


@pytest.mark.parametrize("kind", sorted(REJECTED))
def test_rejected_forms_raise_documented_error(worker_type, kind):
    error, words = REJECTED[kind]
    rss_before = psutil.Process().memory_info().rss
    net = core.Net("hostile_bad")
    coord = make_input(net, HostileFetcher(kind), batch_size=6, num_worker_threads=1,
                       worker_type=worker_type)
    coord.start()
    batches, net_error, secs = run_until_error(net, max_iters=10)
    assert batches == [] and net_error is not None and secs < PROMPT_SECS
    with pytest.raises(error) as info:
        coord.stop()
    msg = str(info.value)
    assert "fetcher %d of input 'train'" % info.value.worker_id in msg
    if words is not None:
        assert words in msg, msg
    else:  # the memory budget is the first limit, also for process workers, which
        # check it before cutting rows into their ring (the ring's own limit:
        # test_process_chunk_over_arena)
        assert "memory budget" in msg, msg
    # Nothing was materialised: no out-of-memory kill, no big allocation.
    assert psutil.Process().memory_info().rss - rss_before < 200 << 20


def _assert_refused(coord, net, match):
    """Start the input: the net fails, and stop() raises the ChunkValueError."""
    coord.start()
    _, net_error, _ = run_until_error(net, max_iters=5)
    assert net_error is not None
    with pytest.raises(data_workers.ChunkValueError, match=match):
        coord.stop()


def test_batch_of_big_rows_over_budget(worker_type):
    """Each chunk fits (one 8 MiB row; fits a process arena too) but a batch of
    100000 such rows would not: refused before the re-batcher allocates it."""
    net = core.Net("hostile_rows")
    coord = make_input(net, BigRowFetcher(), batch_size=100000, num_worker_threads=1,
                       worker_type=worker_type)
    _assert_refused(coord, net, "a batch of 100000 such rows")


def test_real_array_over_lowered_budget(monkeypatch):
    """Thread workers with a (monkeypatched) small budget: a real 8 MiB chunk is refused."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    monkeypatch.setattr(_validate, "MEMORY_BUDGET_FRACTION", (4 << 20) / total)
    net = core.Net("hostile_budget")
    coord = make_input(net, RealBigFetcher(), batch_size=2, num_worker_threads=1)
    _assert_refused(coord, net, "memory budget of 0.0 GiB")


@pytest.mark.parametrize("wt", PROCESS_ONLY)
def test_process_chunk_over_arena(wt):
    net = core.Net("hostile_arena")
    coord = make_input(net, RealBigFetcher(), batch_size=2, num_worker_threads=1,
                       worker_type=wt, shm_bytes_per_worker=1 << 20)
    _assert_refused(coord, net, "shm_bytes_per_worker")


def test_memmap_subclass_is_read_as_plain_array(tmp_path):
    path = str(tmp_path / "rows.bin")
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(12, 2))
    mm[:] = np.arange(24, dtype=np.float32).reshape(12, 2)
    mm.flush()
    net = core.Net("hostile_memmap")
    coord = make_input(net, MemmapFetcher(path), batch_size=4, num_worker_threads=1)
    coord.start()
    batches = _collect(net, 3)
    assert coord.stop() is True
    np.testing.assert_array_equal(np.concatenate([d for d, _ in batches]), np.asarray(mm))


class MemmapFetcher:
    def __init__(self, path):
        self.path = path
        self.pos = 0

    def __call__(self, worker_id, batch_size):
        mm = np.memmap(self.path, dtype=np.float32, mode="r", shape=(12, 2))
        start, self.pos = self.pos, (self.pos + 4) % 12
        return [mm[start:start + 4], np.arange(start, start + 4, dtype=np.int32)]


def _primed_validator() -> _validate.ChunkValidator:
    """A validator that has recorded the (4, 3) float64 + (4,) int32 layout."""
    validator = _validate.ChunkValidator(["data", "label"], [0, 0], False, "train", CAFFE2_DTYPE_RULE)
    assert validator.check(0, hostile_output("nan_inf", 0, 0), 6) is not None
    return validator


@pytest.mark.parametrize("kind", sorted(REJECTED))
def test_recorded_layout_never_lets_a_rejected_form_through(kind):
    """Once a layout is recorded, chunks matching it take a short path; every
    rejected form must still get the full checks and the very same error."""
    output = hostile_output(kind, 0, 0)
    fresh = _validate.ChunkValidator(["data", "label"], [0, 0], False, "train", CAFFE2_DTYPE_RULE)
    with pytest.raises(REJECTED[kind][0]) as want:
        fresh.check(0, output, 6)
    with pytest.raises(REJECTED[kind][0]) as got:
        _primed_validator().check(0, output, 6)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("kind", [k for k in ACCEPTED if k != "mixed_dtypes"])
def test_recorded_layout_accepts_the_same_forms(kind):
    output = hostile_output(kind, 0, 4)
    chunk = _primed_validator().check(1, output, 6)
    assert chunk is not None and chunk.rows == 4 and chunk.worker_id == 1
    for got, given in zip(chunk.arrays, output):
        assert got is given  # validation never copies


def test_recorded_layout_refuses_a_layout_change():
    with pytest.raises(data_workers.ChunkValueError, match="earlier chunks had dtype float64"):
        _primed_validator().check(0, hostile_output("mixed_dtypes", 0, 0), 6)
