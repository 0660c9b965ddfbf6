"""``max_fetch_failures``: fetcher exceptions skipped within a budget, for both front ends.

Rules: ``data_workers/_core/budget.py``.  Each body runs over both worker types.
"""

from __future__ import annotations

import logging
from typing import Any, List

import numpy as np
import pytest
from caffe2.python import core, workspace

import data_workers
from data_workers import ShardedSource
from data_workers.torch import Loader
from fault_util import (CorruptRecords, FailAfterChunks, FlakyDiskError, RandomBadOutput,
                        make_input, run_until_error, wait_for, worker_type)  # noqa: F401
from util import check_tagged

pytestmark = pytest.mark.usefixtures("ws")

#: 2000 records in blocks of 4, in dataset order (shuffle=False, so the next epoch's
#: first blocks, which the fetchers run ahead into, hold no corrupt record): 500
#: blocks, of which these five records spoil five, 1% of the calls.
N, BATCH = 2000, 4
CORRUPT = (101, 402, 1003, 1504, 1905)
GOOD_BATCHES = N // BATCH - len(CORRUPT)


def _source(resume: Any = None) -> ShardedSource:
    return ShardedSource(CorruptRecords(N, CORRUPT), BATCH, shuffle=False, seed=3, resume=resume)


def _labels(net: core.Net, steps: int) -> List[int]:
    workspace.CreateNet(net, overwrite=True)
    out: List[int] = []
    for _ in range(steps):
        workspace.RunNet(net.Proto().name)
        out.extend(workspace.FetchBlob("label").tolist())
    return out


def _attach(source: ShardedSource, worker_type: str, name: str) -> Any:
    net = core.Net(name)
    coord = source.attach(net, ["data", "label"], num_workers=2, worker_type=worker_type,
                          max_fetch_failures=0.05, input_source_name=name,
                          max_buffered_batches=2, timeout=30)
    return net, coord


def test_an_epoch_with_corrupt_records_delivers_exactly_the_good_ones(worker_type: str) -> None:
    """The goal of issue 23: 1% of calls raise, max_fetch_failures=0.05."""
    net, coord = _attach(_source(), worker_type, "epoch")
    coord.start()
    labels = _labels(net, GOOD_BATCHES)
    bad_blocks = {r // BATCH for r in CORRUPT}
    assert labels == [i for i in range(N) if i // BATCH not in bad_blocks]
    stats = coord.stats()[0]
    wait_for(lambda: coord.stats()[0].fetch_failures >= len(CORRUPT), 10, "the last skip")
    assert coord.stats()[0].fetch_failures == len(CORRUPT)
    assert stats.state == "running" and stats.failure is None
    assert coord.stop() is True


def test_resume_mid_epoch_skips_the_same_records(worker_type: str) -> None:
    """A checkpoint after 200 steps (two corrupt blocks behind it) resumes at the block
    after the 200th delivered one: the rows of both runs are the uninterrupted run's."""
    bad_blocks = {r // BATCH for r in CORRUPT}
    expected = [i for i in range(N) if i // BATCH not in bad_blocks]
    source = _source()
    net, coord = _attach(source, worker_type, "first")
    coord.start()
    first = _labels(net, 200)
    checkpoint = source.checkpoint(200)
    assert coord.stop() is True
    assert checkpoint.offset == 202 * BATCH  # 200 good blocks and the 2 skipped before them
    net, coord = _attach(_source(resume=checkpoint), worker_type, "resumed")
    coord.start()
    rest = _labels(net, GOOD_BATCHES - 200)
    wait_for(lambda: coord.stats()[0].fetch_failures >= 3, 10, "the last skip")
    assert coord.stats()[0].fetch_failures == 3  # blocks 250, 376 and 476 only
    assert coord.stop() is True
    assert first + rest == expected


def test_loader_state_dict_counts_the_skipped_blocks() -> None:
    loader = Loader(_source(), BATCH, 2, names=["data", "label"], deterministic=True,
                    max_fetch_failures=0.05, timeout=30)
    first = [int(x) for _ in range(30) for x in next(loader)[1]]
    state = loader.state_dict()
    assert loader.close() is True
    resumed = Loader(_source(), BATCH, 2, names=["data", "label"], deterministic=True,
                     max_fetch_failures=0.05, timeout=30)
    resumed.load_state_dict(state)
    rest = [int(x) for _ in range(10) for x in next(resumed)[1]]
    assert resumed.close() is True
    block_25 = set(range(100, 104))  # record 101 spoils block 25
    expected = [i for i in range(41 * BATCH) if i not in block_25]
    assert first + rest == expected


def test_one_exception_beyond_the_budget_fails_the_input_saying_how_many_were_skipped(
        worker_type: str, caplog: Any) -> None:
    net = core.Net("over_budget")
    coord = make_input(net, FailAfterChunks(6, 4), batch_size=8, num_worker_threads=1,
                       worker_type=worker_type, max_fetch_failures=2)
    with caplog.at_level(logging.WARNING, logger="data_workers"):
        coord.start()
        batches, net_error, _ = run_until_error(net)
    assert net_error is not None
    (worker,) = coord.get_worker_ids()[-1:]
    assert check_tagged(batches, batch_size=8) == {worker: 24}  # 6 chunks before, in order
    stats = coord.stats()[0]
    assert stats.fetch_failures == 2
    with pytest.raises(data_workers.FetcherError,
                       match=r"after 2 fetcher exceptions skipped; max_fetch_failures=2") as info:
        coord.stop()
    assert isinstance(info.value.__cause__, FlakyDiskError)
    skips = [r for r in caplog.records if "skipped (" in r.getMessage()]
    assert len(skips) == 1, "rate-limited: one line for both skips"
    assert "fetcher %d raised FlakyDiskError" % worker in skips[0].getMessage()
    assert skips[0].exc_info is not None
    if worker_type == "process":  # the child's traceback, as text
        assert isinstance(skips[0].exc_info[1].__cause__, data_workers.RemoteTraceback)


def test_bad_output_is_never_skipped(worker_type: str) -> None:
    net = core.Net("bad_output")
    coord = make_input(net, RandomBadOutput("rows_mismatch", p=0.3, seed=5), batch_size=8,
                       num_worker_threads=1, worker_type=worker_type, max_fetch_failures=100)
    coord.start()
    _, net_error, _ = run_until_error(net)
    assert net_error is not None
    assert coord.stats()[0].fetch_failures == 0
    with pytest.raises(data_workers.ChunkValueError):
        coord.stop()


def test_loader_skips_within_the_budget(worker_type: str) -> None:
    with Loader(FailAfterChunks(6, 4), 8, 1, worker_type=worker_type, names=["data", "label"],
                max_fetch_failures=3, timeout=30) as loader:
        got = []
        with pytest.raises(data_workers.FetcherError, match="after 3 fetch_fun exceptions"):
            while True:
                got.append(next(loader))
        assert loader.stats().fetch_failures == 3
        assert len(got) == 3


@pytest.mark.parametrize("value, error", [
    (True, TypeError), ("1", TypeError), (None, TypeError), (-1, ValueError),
    (1.0, ValueError), (0.0, ValueError), (float("nan"), ValueError), (1.5, ValueError),
])
def test_max_fetch_failures_is_checked_on_both_front_ends(value: Any, error: type) -> None:
    with pytest.raises(error, match="max_fetch_failures must be an int >= 0"):
        make_input(core.Net("checked"), FailAfterChunks(1), max_fetch_failures=value)
    with pytest.raises(error, match="max_fetch_failures must be an int >= 0"):
        Loader(FailAfterChunks(1), 8, names=["data", "label"], max_fetch_failures=value)
    assert data_workers.global_coordinator.stats() == ()


def test_counts_reach_external_loggers() -> None:
    seen: List[dict] = []

    class Collect:
        def log(self, metrics: dict) -> None:
            seen.append(metrics)

    net = core.Net("logged")
    coord = make_input(net, FailAfterChunks(4, 4), batch_size=8, num_worker_threads=1,
                       max_fetch_failures=np.int64(2), external_loggers=[Collect()])
    coord.start()
    run_until_error(net)
    with pytest.raises(data_workers.FetcherError):
        coord.stop()
    assert sum(m.get("fetch_failures", 0) for m in seen) == 2
