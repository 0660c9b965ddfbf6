"""The input boundary, side by side with upstream: the drop-in contract and its differences.

Each row of ``ROWS`` is one ``init_data_input_workers`` call (or one chunk its
fetcher returns), with the outcome upstream (``caffe2.python.data_workers``)
gives and the outcome ours gives.  Both are run here.  Outcomes:

* ``RUNS``: accepted; the net receives batches.
* ``refused(E)``: ``init_data_input_workers`` raises ``E`` and has changed
  nothing (no worker id used, no queue created, no op added to the net).
* ``fails_later(E)``: accepted at init, then the net fails.  Ours fails at once
  (the input's failure closes its queue) and ``stop()`` raises ``E``, naming
  the fetcher, the blob and the fix; upstream's net waits out its timeout and
  nothing says why.
* ``NOT_UPSTREAM``: not an upstream argument.

Where the two columns differ, ``why`` gives the reason; those rows are the
deliberate differences listed in the migration guide.  Tests below the table
cover what one call cannot show: a second live input on the same queue, the
limits measured in Caffe2 itself (dtypes, the dequeue timeout), process
workers, and ``timeout=float("inf")``.

Upstream runs are slow to stop (its threads poll every 0.5 s), so the
``upstream_outcomes`` fixture runs every row's upstream call at once, with one
start and one stop, and each row's test checks its part.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import pytest
from caffe2.python import core, scope, workspace

import data_workers
from data_workers import parallel_workers
from data_workers._caffe2 import dtypes as _dtypes
from data_workers._caffe2 import feed as _enqueue
from data_workers.sharding import ShardedSource
from fault_util import PROMPT_SECS, WORKER_TYPES

pytestmark = [
    pytest.mark.timeout(60),
    # Upstream's enqueuer thread dies with an unhandled exception on a chunk
    # Caffe2 cannot hold: that is the upstream behaviour the table records.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
    pytest.mark.xdist_group("boundary"),  # one upstream run for every row
]

#: Dequeue timeout of upstream rows expected to fail: how long their net waits for nothing.
UPSTREAM_FAIL_TIMEOUT = 0.2
#: Dequeue timeout of rows expected to run: a cap that is never waited out.
RUN_TIMEOUT = 20.0


# ----------------------------------------------------------------------------- fetchers
# Module-level classes: process workers pickle them.


class Rows:
    """``data`` (rows, 3) of ``data_dtype`` beside ``label`` (rows,) of ``label_dtype``."""

    def __init__(self, data_dtype: Any = np.float32, label_dtype: Any = np.int32,
                 rows: int = 4, blobs: int = 2) -> None:
        self.data_dtype, self.label_dtype, self.rows, self.blobs = (
            data_dtype, label_dtype, rows, blobs)

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        data = np.arange(self.rows * 3).reshape(self.rows, 3).astype(self.data_dtype)
        label = np.arange(self.rows).astype(self.label_dtype)
        return [data, label] + [label.copy() for _ in range(self.blobs - 2)]


class Objects:
    """``data`` (n, 3) float32 beside an object array ``label`` holding ``values``."""

    def __init__(self, values: Sequence[Any]) -> None:
        self.values = list(values)

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        label = np.empty(len(self.values), dtype=object)
        label[:] = self.values
        return [np.zeros((len(self.values), 3), np.float32), label]


class Sparse:
    """The sparse-feature layout: ``lengths`` (4,) beside ``values`` (sum of lengths,)."""

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        lengths = np.array([1, 2, 3, 4], np.int32)
        return [lengths, np.arange(10, dtype=np.float32)]


class WithScalar:
    """``dont_rebatch`` with a 0-d blob: a per-batch scalar beside the rows."""

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        return [np.zeros((4, 3), np.float32), np.array(0.5, np.float32)]


def nothing(worker_id: int, batch_size: int) -> None:
    """A fetcher with no data yet: the queue stays empty."""
    return None


# ----------------------------------------------------------------------------- outcomes


@dataclasses.dataclass(frozen=True)
class Outcome:
    kind: str  # "runs", "refused", "fails later"
    error: Optional[Type[BaseException]] = None
    #: Words our message must contain (unchecked for upstream).
    words: Tuple[str, ...] = ()


RUNS = Outcome("runs")
NOT_UPSTREAM = None


def refused(error: Type[BaseException], *words: str) -> Outcome:
    return Outcome("refused", error, words)


def fails_later(error: Optional[Type[BaseException]] = None, *words: str) -> Outcome:
    return Outcome("fails later", error, words)


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    upstream: Optional[Outcome]
    ours: Outcome
    #: Arguments besides the base call (blobs ["data", "label"], a Rows() fetcher, batch size 8).
    kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    fetch: Callable[[int, int], Any] = dataclasses.field(default_factory=Rows)
    blobs: Any = ("data", "label")
    batch_size: Any = 8
    #: Shapes our net must receive, blob by blob (RUNS rows).
    shapes: Optional[Sequence[Tuple[int, ...]]] = None
    #: The fetcher upstream is probed with, where the row's own would make its outcome racy.
    upstream_fetch: Optional[Callable[[int, int], Any]] = None
    #: Why the columns differ (every row where they do says why).
    why: str = ""


ROWS: List[Row] = [
    # -- counts: any integral number but bool --------------------------------------------
    Row("batch_size np.int64", RUNS, RUNS, batch_size=np.int64(8), shapes=[(8, 3), (8,)]),
    Row("num_worker_threads np.int32", RUNS, RUNS,
        kwargs=dict(num_worker_threads=np.int32(2)), shapes=[(8, 3), (8,)]),
    Row("max_buffered_batches np.int64", refused(AssertionError), RUNS,
        kwargs=dict(max_buffered_batches=np.int64(4)),
        why="upstream asserts isinstance(max_buffered_batches, int)"),
    Row("batch_columns np.int64", RUNS, RUNS, kwargs=dict(batch_columns=[np.int64(0), 0])),
    Row("batch_size True", RUNS, refused(TypeError, "batch_size must be a positive int, got bool"),
        batch_size=True, why="a bool is not a count (upstream makes batches of 1 row)"),
    Row("batch_size '2'", fails_later(), refused(TypeError, "batch_size", "'2'"),
        batch_size="2", why="upstream's enqueuer thread dies comparing int < str"),
    Row("batch_size 2.5", fails_later(), refused(TypeError, "batch_size", "2.5"),
        batch_size=2.5, why="upstream cannot split 2.5 rows; its enqueuer thread dies"),
    Row("batch_size 0", RUNS, refused(ValueError, "batch_size must be a positive int, got 0"),
        batch_size=0, why="upstream delivers empty batches"),
    Row("num_worker_threads 0", fails_later(),
        refused(ValueError, "num_worker_threads must be a positive int, got 0"),
        kwargs=dict(num_worker_threads=0), why="upstream starts no fetcher; the net waits it out"),
    # -- blob names ------------------------------------------------------------------------
    Row("input_blob_names 'data'", RUNS, refused(TypeError, "input_blob_names"),
        blobs="data", fetch=Rows(blobs=4),
        why="upstream feeds one blob per character: 'd', 'a', 't', 'a'"),
    Row("input_blob_names duplicated", RUNS,
        refused(ValueError, "names blob 'data' twice"), blobs=("data", "data"),
        why="upstream runs, but both arrays go through one queue into 'data' (the label "
            "rows overwrite the data)"),
    # -- timeout -----------------------------------------------------------------------------
    Row("timeout 0", RUNS, refused(ValueError, "float('inf')"), kwargs=dict(timeout=0),
        why="Caffe2 waits without a deadline for 0 (and for negatives, NaN); we spell that "
            "float('inf')"),
    Row("timeout inf", fails_later(), RUNS, kwargs=dict(timeout=float("inf")),
        upstream_fetch=nothing, shapes=[(8, 3), (8,)],
        why="upstream passes inf to Caffe2, whose millisecond count overflows: every dequeue "
            "on an empty queue fails at once; ours waits until a batch comes or the input "
            "stops"),
    Row("timeout 1e7", fails_later(), refused(ValueError, "2147483.5", "float('inf')"),
        kwargs=dict(timeout=1e7), upstream_fetch=nothing,
        why="above 2147483.5 s Caffe2's wait overflows (see test_caffe2_dequeue_timeout_limit)"),
    Row("timeout 2147483.5", RUNS, RUNS, kwargs=dict(timeout=2147483.5)),
    Row("timeout 'x'", refused(ValueError), refused(TypeError, "timeout"),
        kwargs=dict(timeout="x"), why="a wrong type is a TypeError"),
    # -- our extra arguments -------------------------------------------------------------------
    Row("log_interval_secs 'soon'", NOT_UPSTREAM, refused(TypeError, "log_interval_secs"),
        kwargs=dict(log_interval_secs="soon")),
    Row("log_interval_secs -1", NOT_UPSTREAM, refused(ValueError, "log_interval_secs"),
        kwargs=dict(log_interval_secs=-1)),
    Row("log_interval_secs 0", NOT_UPSTREAM, refused(ValueError, "log_interval_secs"),
        kwargs=dict(log_interval_secs=0)),
    Row("log_interval_secs np.float32", NOT_UPSTREAM, RUNS,
        kwargs=dict(log_interval_secs=np.float32(30))),
    Row("stall_warning_secs 0", NOT_UPSTREAM, refused(ValueError, "stall_warning_secs"),
        kwargs=dict(stall_warning_secs=0)),
    Row("stall_warning_secs 'x'", NOT_UPSTREAM, refused(TypeError, "stall_warning_secs"),
        kwargs=dict(stall_warning_secs="x")),
    Row("seed 'abc'", NOT_UPSTREAM, refused(TypeError, "seed must be an int"),
        kwargs=dict(seed="abc")),
    Row("seed 1.5", NOT_UPSTREAM, refused(TypeError, "seed must be an int"),
        kwargs=dict(seed=1.5)),
    Row("seed np.int64, negative", NOT_UPSTREAM, RUNS, kwargs=dict(seed=np.int64(-7))),
    Row("shm_bytes_per_worker with threads", NOT_UPSTREAM,
        refused(ValueError, "only applies to worker_type='process'"),
        kwargs=dict(shm_bytes_per_worker=1 << 20)),
    Row("worker_type 'fiber'", NOT_UPSTREAM, refused(ValueError, "worker_type must be one of"),
        kwargs=dict(worker_type="fiber")),
    # -- chunks: dont_rebatch keeps each blob's shape ---------------------------------------
    Row("dont_rebatch lengths (4,) values (10,)", RUNS, RUNS, blobs=("lengths", "values"),
        fetch=Sparse(), kwargs=dict(dont_rebatch=True), batch_size=4, shapes=[(4,), (10,)]),
    Row("dont_rebatch 0-d blob", RUNS, RUNS, blobs=("data", "lr"), fetch=WithScalar(),
        kwargs=dict(dont_rebatch=True), batch_size=4, shapes=[(4, 3), ()]),
    # -- chunks: dtypes (the table in data_workers/_caffe2/dtypes.py) -------------------------------
    Row("dtypes float16 + uint16", RUNS, RUNS, fetch=Rows(np.float16, np.uint16)),
    Row("dtypes int8 + bool", RUNS, RUNS, fetch=Rows(np.int8, np.bool_)),
    Row("dtype uint32", fails_later(), fails_later(data_workers.ChunkTypeError, "dtype uint32"),
        fetch=Rows(label_dtype=np.uint32)),
    Row("dtype uint64", fails_later(), fails_later(data_workers.ChunkTypeError, "dtype uint64"),
        fetch=Rows(label_dtype=np.uint64)),
    Row("dtype float128", fails_later(),
        fails_later(data_workers.ChunkTypeError, "dtype float128"),
        fetch=Rows(np.longdouble)),
    Row("dtype complex64", fails_later(),
        fails_later(data_workers.ChunkTypeError, "dtype complex64"), fetch=Rows(np.complex64)),
    Row("dtype datetime64", fails_later(),
        fails_later(data_workers.ChunkTypeError, "dtype datetime64[s]"),
        fetch=Rows(label_dtype="datetime64[s]")),
    Row("dtype timedelta64", fails_later(),
        fails_later(data_workers.ChunkTypeError, "dtype timedelta64[s]"),
        fetch=Rows(label_dtype="timedelta64[s]")),
    Row("dtype void", fails_later(), fails_later(data_workers.ChunkTypeError, "dtype |V4"),
        fetch=Rows(label_dtype="V4")),
    Row("dtype big-endian float64", RUNS,
        fails_later(data_workers.ChunkTypeError, "dtype >f8", ".astype('<f8')"),
        fetch=Rows(">f8"),
        why="upstream's net receives the bytes read as little-endian: garbage values"),
    Row("dtype <U3 (fixed-width str)", RUNS,
        fails_later(data_workers.ChunkTypeError, "dtype <U3", ".astype(object)"),
        fetch=Rows(label_dtype="U3"),
        why="the width is part of the dtype: chunks of 'a' and 'abcd' could not be stacked"),
    Row("object array: non-ASCII str", RUNS, RUNS, fetch=Objects(["é", "b", "c", "d"])),
    Row("object array: lone surrogate", fails_later(),
        fails_later(data_workers.ChunkTypeError, "'label'", "not valid UTF-8"),
        fetch=Objects(["a", "\udc80", "c", "d"])),
    Row("object array: ints", fails_later(),
        fails_later(data_workers.ChunkTypeError, "element of type int"),
        fetch=Objects([1, 2, 3, 4])),
]

for _row in ROWS:
    assert _row.upstream is NOT_UPSTREAM or _row.upstream.kind == _row.ours.kind \
        or _row.why, "row %r differs from upstream without saying why" % _row.id


# ----------------------------------------------------------------------------- running a row


def _blobs(row: Row) -> List[str]:
    return list(row.blobs)


def _call(module: Any, row: Row, net: core.Net, fetch: Any, source: str, timeout: float) -> Any:
    kwargs: Dict[str, Any] = dict(input_source_name=source, timeout=timeout,
                                  max_buffered_batches=4)
    kwargs.update(row.kwargs)
    blobs = row.blobs if isinstance(row.blobs, str) else list(row.blobs)
    return module.init_data_input_workers(net, blobs, fetch, row.batch_size, **kwargs)


def _run_net(net: core.Net, blobs: Sequence[str], times: int = 2) -> Tuple[Optional[list], float]:
    """RunNet ``times`` times: the last batch's blobs, or None if it failed (and how long that took)."""
    workspace.CreateNet(net, overwrite=True)
    batch = None
    for _ in range(times):
        started = time.monotonic()
        try:
            workspace.RunNet(net.Proto().name)
        except RuntimeError:
            return None, time.monotonic() - started
        batch = [workspace.FetchBlob(b) for b in blobs]
    return batch, 0.0


@pytest.fixture(scope="module")
def upstream_outcomes() -> Dict[str, Tuple[str, Optional[BaseException]]]:
    """Each upstream row's (outcome kind, error at init), all run under one start/stop."""
    from caffe2.python import data_workers as upstream

    workspace.ResetWorkspace()
    outcomes: Dict[str, Tuple[str, Optional[BaseException]]] = {}
    started = []
    for i, row in enumerate(ROWS):
        if row.upstream is NOT_UPSTREAM:
            continue
        net = core.Net("boundary_upstream_%d" % i)
        timeout = UPSTREAM_FAIL_TIMEOUT if row.upstream.kind == "fails later" else RUN_TIMEOUT
        try:
            _call(upstream, row, net, row.upstream_fetch or row.fetch,
                  "boundary_upstream_%d" % i, timeout)
        except Exception as exc:
            outcomes[row.id] = ("refused", exc)
            continue
        started.append((row, net))
    try:
        upstream.global_coordinator.start()
        for row, net in started:
            blobs = list(row.blobs)
            batch, _ = _run_net(net, blobs)
            outcomes[row.id] = ("runs" if batch is not None else "fails later", None)
    finally:
        upstream.global_coordinator.stop()
        workspace.ResetWorkspace()
    return outcomes


def _footprint(net: core.Net) -> Tuple[int, int, List[str], int]:
    gc = data_workers.global_coordinator
    return gc.next_worker_id, len(gc.inputs()), sorted(workspace.Blobs()), len(net.Proto().op)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_boundary_row(ws, upstream_outcomes, row):
    # Upstream's column.
    if row.upstream is not NOT_UPSTREAM:
        kind, error = upstream_outcomes[row.id]
        assert kind == row.upstream.kind, "upstream: %s" % (error,)
        if row.upstream.error is not None:
            assert isinstance(error, row.upstream.error), error
    # Our column.
    net = core.Net("boundary_ours")
    before = _footprint(net)
    want = row.ours
    try:
        coord = _call(data_workers, row, net, row.fetch, "train", RUN_TIMEOUT)
    except Exception as exc:
        assert want.kind == "refused", "refused unexpectedly: %r" % exc
        assert type(exc) is want.error, exc
        for words in want.words:
            assert words in str(exc), str(exc)
        assert _footprint(net) == before, "a refused call changed something"
        return
    assert want.kind != "refused", "accepted; expected %s" % want.error.__name__
    coord.start()
    batch, secs = _run_net(net, _blobs(row))
    if want.kind == "runs":
        try:
            assert batch is not None, "the net failed"
        finally:
            coord.stop()
        if row.shapes is not None:
            assert [b.shape for b in batch] == list(row.shapes)
        return
    assert batch is None and secs < PROMPT_SECS, "the net did not fail at once"
    with pytest.raises(want.error) as info:
        coord.stop()
    message = str(info.value)
    assert "fetcher %d of input 'train'" % info.value.worker_id in message, message
    for words in want.words:
        assert words in message, message
    if want.error is data_workers.ChunkTypeError and "element" not in message \
            and "UTF-8" not in message:
        assert _dtypes.SUPPORTED_DTYPES_TEXT in message  # says what IS supported


# ----------------------------------------------------------------------------- dont_rebatch, both backends


@pytest.mark.parametrize("worker_type", WORKER_TYPES)
def test_dont_rebatch_sparse_layout_reaches_a_real_net(ws, worker_type):
    """lengths (4,) beside values (10,): each blob arrives whole, and a real op uses both."""
    net = core.Net("sparse_" + worker_type)
    coord = data_workers.init_data_input_workers(
        net, ["lengths", "values"], Sparse(), 4, num_worker_threads=1, dont_rebatch=True,
        timeout=RUN_TIMEOUT, worker_type=worker_type)
    net.LengthsSum(["values", "lengths"], ["sums"])
    coord.start()
    try:
        workspace.CreateNet(net, overwrite=True)
        for _ in range(3):
            workspace.RunNet(net.Proto().name)
            np.testing.assert_array_equal(workspace.FetchBlob("lengths"), [1, 2, 3, 4])
            np.testing.assert_array_equal(workspace.FetchBlob("values"), np.arange(10))
            np.testing.assert_array_equal(workspace.FetchBlob("sums"), [0, 3, 12, 30])
        stats = coord.stats()[0]
    finally:
        assert coord.stop()
    assert stats.rows_enqueued % 4 == 0  # rows counted by the first blob


@pytest.mark.parametrize("kind,fetch,words", [
    ("dtype", Rows(label_dtype=np.uint32), "dtype uint32"),
    ("utf8", Objects(["a", "\udc80", "c", "d"]), "not valid UTF-8"),
])
def test_process_workers_refuse_what_caffe2_cannot_hold(ws, kind, fetch, words):
    """The same ChunkTypeError when the check runs in a worker process."""
    net = core.Net("refuse_" + kind)
    coord = data_workers.init_data_input_workers(
        net, ["data", "label"], fetch, 4, num_worker_threads=1, timeout=RUN_TIMEOUT,
        worker_type="process")
    coord.start()
    batch, secs = _run_net(net, ["data", "label"])
    assert batch is None and secs < PROMPT_SECS
    with pytest.raises(data_workers.ChunkTypeError, match="'label'") as info:
        coord.stop()
    assert words in str(info.value) and info.value.worker_id is not None


# ----------------------------------------------------------------------------- a second live input


def test_second_live_input_on_the_same_queue(ws):
    """Upstream accepts two live inputs with one queue (their rows then cross nets);
    ours refuses the second, names the first and the fix, and forgets it once stopped."""
    from caffe2.python import data_workers as upstream

    up = [upstream.init_data_input_workers(core.Net("twin_up_%d" % i), ["data", "label"],
                                           Rows(), 8, input_source_name="twin_upstream",
                                           timeout=RUN_TIMEOUT)
          for i in range(2)]
    assert up[0] is up[1]  # both accepted
    upstream.global_coordinator.start()
    upstream.global_coordinator.stop()

    first = data_workers.init_data_input_workers(core.Net("twin_a"), ["data", "label"], Rows(), 8,
                                                 timeout=RUN_TIMEOUT)
    net = core.Net("twin_b")
    before = _footprint(net)
    with pytest.raises(ValueError) as info:
        data_workers.init_data_input_workers(net, ["data", "label"], Rows(), 8,
                                             timeout=RUN_TIMEOUT)
    message = str(info.value)
    assert "live input 'train'" in message and "data_label_c2queue_train" in message
    assert "another input_source_name" in message and "stop()" in message
    assert _footprint(net) == before
    # Overlapping scratch blobs count too ("data_scratch_train").
    with pytest.raises(ValueError, match="data_scratch_train"):
        data_workers.init_data_input_workers(net, ["data"], Rows(), 8, timeout=RUN_TIMEOUT)
    # Another source, or another name scope, is another queue.
    data_workers.init_data_input_workers(net, ["data", "label"], Rows(), 8,
                                         input_source_name="val", timeout=RUN_TIMEOUT)
    with scope.NameScope("gpu_1"):
        data_workers.init_data_input_workers(net, ["data", "label"], Rows(), 8,
                                             timeout=RUN_TIMEOUT)
    first.stop()  # forgets every input
    data_workers.init_data_input_workers(net, ["data", "label"], Rows(), 8, timeout=RUN_TIMEOUT)
    assert len(first.inputs()) == 1
    first.stop()


def test_queue_and_scratch_names_come_from_one_function(ws):
    net = core.Net("names")
    with scope.NameScope("gpu_0"):
        coord = data_workers.init_data_input_workers(net, ["data", "label"], Rows(), 8,
                                                     input_source_name="val", timeout=RUN_TIMEOUT)
    names = _enqueue.caffe2_names(["data", "label"], "gpu_0/", "val")
    assert names.queue == "gpu_0/data_label_c2queue_val"
    assert set(names.all_blobs()) <= set(workspace.Blobs())  # the blobs the input created
    coord.stop()


# ----------------------------------------------------------------------------- counts elsewhere


def _ray_source() -> Any:
    from data_workers.ray_source import RayDataSource

    return RayDataSource


@pytest.mark.parametrize("make", [
    lambda n: parallel_workers.init_workers(lambda wid: None, num_worker_threads=n),
    lambda n: ShardedSource([np.arange(8.0)], batch_size=n, world_size=n),
    lambda n: data_workers.global_coordinator.reset_data_input("", "none", core.Net("r"), n),
    pytest.param(lambda n: _ray_source()(None, ["x"], batch_size=n),
                 marks=pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                          reason="ray is not installed")),
], ids=["parallel_workers.init_workers", "ShardedSource", "reset_data_input", "RayDataSource"])
def test_every_entry_point_takes_numpy_counts(ws, make):
    make(np.int64(2))
    with pytest.raises(TypeError, match="got bool True"):
        make(True)
    with pytest.raises(TypeError, match="got str '2'"):
        make("2")
    with pytest.raises(ValueError, match="got 0"):
        make(0)
    parallel_workers.global_coordinator.stop()


def test_counts_are_stored_as_plain_ints(ws):
    coord = data_workers.init_data_input_workers(
        core.Net("plain"), ["data", "label"], Rows(), np.int64(8),
        num_worker_threads=np.int32(1), batch_columns=[np.int8(0), 0], seed=np.int64(2 ** 40),
        timeout=np.float32(20))
    config = coord.inputs()[0].config
    values = [config.batch_size, config.num_workers, config.max_buffered_batches, config.seed,
              *config.batch_columns]
    assert all(type(v) is int for v in values) and type(config.timeout) is float
    coord.stop()


# ----------------------------------------------------------------------------- measured in Caffe2


_NUMERIC = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
            np.uint64, np.float16, np.float32, np.float64, np.longdouble, np.complex64,
            np.complex128, "datetime64[s]", "timedelta64[s]", "V4", [("a", "<i4")]]


def test_dtype_table_matches_feedblob(ws):
    """Every dtype in the table round-trips through FeedBlob; every other numeric one is
    refused by it.  (Big-endian and U/S arrays FeedBlob accepts; we refuse them by choice.)"""
    for spec in _NUMERIC:
        dtype = np.dtype(spec)
        try:
            workspace.FeedBlob("probe", np.zeros((2, 3), dtype))
            fed = workspace.FetchBlob("probe").dtype
        except RuntimeError:
            fed = None
        if dtype in _dtypes.TENSOR_DTYPES:
            assert fed == dtype, dtype
            assert _enqueue.caffe2_dtype(dtype) is not None
        else:
            assert fed is None, "FeedBlob takes %s: add it to the table" % dtype
    for text, ok in [("é", True), ("\udc80", False)]:
        fed_ok = True
        try:
            workspace.FeedBlob("probe", np.array([text], dtype=object))
        except RuntimeError:
            fed_ok = False
        assert fed_ok is ok and (_dtypes.unsupported_element(text) is None) is ok


def _dequeue_in_thread(timeout_secs: float) -> Tuple[threading.Thread, List[bool]]:
    """Run DequeueBlobs(timeout_secs) on the empty queue "q" in a thread; [success] when done."""
    net = core.Net("probe_dequeue")
    net.DequeueBlobs(["q"], ["out"], timeout_secs=timeout_secs)
    return _run_net_in_thread(net)


def test_caffe2_dequeue_timeout_limit(ws):
    """Caffe2 keeps timeout_secs as float32 and waits int32(timeout_secs * 1000) ms: just
    above MAX_DEQUEUE_TIMEOUT_SECS an empty queue fails at once; at it, the dequeue waits."""
    limit = _enqueue.MAX_DEQUEUE_TIMEOUT_SECS
    workspace.RunOperatorOnce(core.CreateOperator("CreateBlobsQueue", [], ["q"], num_blobs=1,
                                                  capacity=1))
    above = float(np.nextafter(np.float32(limit), np.float32(np.inf)))
    thread, result = _dequeue_in_thread(above)
    thread.join(PROMPT_SECS)
    assert result == [False], "an overflowing wait fails at once"
    thread, result = _dequeue_in_thread(limit)
    thread.join(0.3)  # an overflowing wait would have failed within milliseconds
    assert thread.is_alive(), "the dequeue at the limit did not wait"
    workspace.FeedBlob("item", np.ones(2, np.float32))
    workspace.RunOperatorOnce(core.CreateOperator("EnqueueBlobs", ["q", "item"], ["item"]))
    thread.join(PROMPT_SECS)
    assert result == [True]


class Gate:
    """A fetcher that returns nothing until the test opens the gate."""

    def __init__(self) -> None:
        self.open = threading.Event()

    def __call__(self, worker_id: int, batch_size: int) -> Optional[List[np.ndarray]]:
        if not self.open.wait(0.05):
            return None
        return Rows()(worker_id, batch_size)


def _run_net_in_thread(net: core.Net) -> Tuple[threading.Thread, List[bool]]:
    """One RunNet of ``net`` in a thread; [success] once it returned."""
    workspace.CreateNet(net, overwrite=True)
    result: List[bool] = []

    def run() -> None:
        try:
            workspace.RunNet(net.Proto().name)
            result.append(True)
        except RuntimeError:
            result.append(False)

    thread = threading.Thread(target=run, name="boundary net")
    thread.start()
    return thread, result


@pytest.mark.parametrize("then", ["data comes", "input stops"])
def test_timeout_inf_waits_until_a_batch_comes_or_the_input_stops(ws, then):
    gate = Gate()
    net = core.Net("forever")
    coord = data_workers.init_data_input_workers(net, ["data", "label"], gate, 8,
                                                 num_worker_threads=1, timeout=float("inf"))
    op = [o for o in net.Proto().op if o.type == "DequeueBlobs"][0]
    assert [a.f for a in op.arg if a.name == "timeout_secs"] == [0.0]  # Caffe2: no deadline
    coord.start()
    thread, result = _run_net_in_thread(net)
    try:
        thread.join(0.3)  # an overflowing wait would have failed within milliseconds
        assert thread.is_alive(), "the net did not wait for data"
        if then == "data comes":
            gate.open.set()
        else:
            coord.stop()
        thread.join(PROMPT_SECS)
    finally:
        coord.stop()
        thread.join(PROMPT_SECS)
    assert result == [then == "data comes"]
