"""The stall watchdog: one warning per stall, naming the stuck stage.

Waiting for a warning is event-driven (a logging handler sets an Event);
proving there is only *one* warning needs a bounded wait for a second one that
must not come.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from caffe2.python import core, workspace

from data_workers._core import coordinator as _coordinator
from data_workers._core import watchdog as _watchdog
from fault_util import (
    PROCESS_ONLY,
    BlockingFetcher,
    SleepForever,
    SteadyFetcher,
    StuckWorkerFetcher,
    make_input,
    no_shm_leak,  # noqa: F401  (fixture)
    worker_type,  # noqa: F401  (fixture)
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("ws", "no_shm_leak")]

STALL = 0.3


class WarningCatcher(logging.Handler):
    """Collects the watchdog's warnings; ``wait(n)`` blocks until n have arrived."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages = []
        self._cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._cond:
            self.messages.append(record.getMessage())
            self._cond.notify_all()

    def wait(self, n: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.messages) >= n, timeout)


@pytest.fixture
def watchdog_log():
    catcher = WarningCatcher()
    log = logging.getLogger(_watchdog.__name__)
    log.addHandler(catcher)
    try:
        yield catcher
    finally:
        log.removeHandler(catcher)


def test_fetchers_produced_nothing_names_stage_and_stack(watchdog_log, caplog):
    release, entered = threading.Event(), threading.Event()
    net = core.Net("wd_fetch")
    coord = make_input(net, BlockingFetcher(release, good=0, entered=entered),
                       num_worker_threads=2, stall_warning_secs=STALL)
    try:
        with caplog.at_level(logging.WARNING, logger="data_workers"):
            coord.start()
            assert watchdog_log.wait(1, 10)
            assert not watchdog_log.wait(2, 4 * STALL), "more than one warning for one stall"
        msg = watchdog_log.messages[0]
        assert _watchdog.STALL_FETCHERS in msg and "input 'train'" in msg
        # Where each fetcher thread is: in the user's fetch_fun, waiting.
        assert msg.count("fetcher thread") == 2
        assert "fault_fetchers.py" in msg and "release.wait()" in msg
        # caplog sees the same single record, at WARNING.
        recs = [r for r in caplog.records if r.name == _watchdog.__name__]
        assert len(recs) == 1 and recs[0].levelno == logging.WARNING
    finally:
        release.set()
    assert coord.stop() is True


@pytest.mark.parametrize("wt", PROCESS_ONLY)
def test_process_fetchers_produced_nothing(wt, watchdog_log, monkeypatch):
    monkeypatch.setattr(_coordinator, "STOP_TIMEOUT_SECS", 0.5)  # the child sleeps forever
    net = core.Net("wd_fetch_p")
    coord = make_input(net, SleepForever(good=0), num_worker_threads=1, worker_type=wt,
                       stall_warning_secs=STALL)
    coord.start()
    assert watchdog_log.wait(1, 20)
    msg = watchdog_log.messages[0]
    assert _watchdog.STALL_FETCHERS in msg and "Fetcher processes:" in msg
    assert "receiver" not in msg  # no parent-side thread stacks for process workers
    coord.stop()


def test_rebatcher_waiting_for_rows(watchdog_log):
    release = threading.Event()
    net = core.Net("wd_rebatch")
    # 2 workers x 1 good chunk of <= 16 rows each: never 1000 rows.
    coord = make_input(net, BlockingFetcher(release, good=1), batch_size=1000,
                       stall_warning_secs=STALL)
    try:
        coord.start()
        assert watchdog_log.wait(1, 10)
        msg = watchdog_log.messages[0]
        assert _watchdog.STALL_REBATCHER in msg and "of 1000 rows" in msg, msg
    finally:
        release.set()
    assert coord.stop() is True


def test_net_not_dequeuing(worker_type, watchdog_log):
    net = core.Net("wd_net")
    coord = make_input(net, SteadyFetcher(), stall_warning_secs=STALL, worker_type=worker_type,
                       max_buffered_batches=4)
    coord.start()
    workspace.CreateNet(net, overwrite=True)
    workspace.RunNet(net.Proto().name)
    # (Worker processes may take longer than STALL to start: that stall, before
    # the first batch, is reported as "fetchers produced nothing".)
    seen = len(watchdog_log.messages)
    assert all(_watchdog.STALL_FETCHERS in m for m in watchdog_log.messages)
    # ... and the training loop goes away (evaluation, checkpointing, a bug).
    assert watchdog_log.wait(seen + 1, 20)
    msg = watchdog_log.messages[seen]
    assert _watchdog.STALL_CONSUMER in msg and "Caffe2 queue is full" in msg and "RunNet" in msg, msg
    assert not watchdog_log.wait(seen + 2, 4 * STALL)
    # The loop comes back: batches move, the watchdog re-arms, and a second,
    # separate stall gets its own warning.
    for _ in range(6):
        workspace.RunNet(net.Proto().name)
    assert watchdog_log.wait(seen + 2, 20)
    assert _watchdog.STALL_CONSUMER in watchdog_log.messages[seen + 1]
    assert coord.stop() is True


def test_deterministic_order_waiting_for_one_fetcher(watchdog_log):
    """deterministic=True and one fetcher stuck: the others' chunks pile up, and
    the warning names the fetcher whose turn it is, with its stack only."""
    import data_workers

    release = threading.Event()
    first = data_workers.global_coordinator.next_worker_id
    net = core.Net("wd_turn")
    coord = make_input(net, StuckWorkerFetcher(release, stuck_id=first + 1), num_worker_threads=3,
                       deterministic=True, max_buffered_batches=6, stall_warning_secs=STALL)
    try:
        coord.start()
        assert watchdog_log.wait(1, 10)
        msg = watchdog_log.messages[0]
        assert _watchdog.STALL_FETCHERS in msg and "waits for fetcher %d" % (first + 1) in msg, msg
        assert msg.count("fetcher thread") == 1 and "fetcher %d'" % (first + 1) in msg, msg
    finally:
        release.set()
    assert coord.stop() is True


def test_no_warning_while_batches_flow(watchdog_log):
    net = core.Net("wd_flow")
    coord = make_input(net, SteadyFetcher(), stall_warning_secs=STALL)
    coord.start()
    workspace.CreateNet(net, overwrite=True)
    deadline = time.monotonic() + 4 * STALL
    while time.monotonic() < deadline:
        workspace.RunNet(net.Proto().name)
    assert coord.stop() is True
    assert watchdog_log.messages == []


def test_watchdog_never_delays_stop():
    net = core.Net("wd_stop")
    coord = make_input(net, SteadyFetcher(), stall_warning_secs=3600)
    coord.start()
    started = time.monotonic()
    assert coord.stop() is True
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("bad,error", [(0, ValueError), (-1, ValueError), ("5", TypeError),
                                       (True, TypeError)])
def test_stall_warning_secs_is_validated(bad, error):
    with pytest.raises(error, match="stall_warning_secs"):
        make_input(core.Net("wd_bad"), SteadyFetcher(), stall_warning_secs=bad)
