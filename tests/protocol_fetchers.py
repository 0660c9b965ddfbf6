"""Fetchers and loggers for the protocol attacks (``test_protocol_matrix.py``,
``test_shutdown_attacks.py``).

Module-level and picklable (except where a ``threading.Event`` is held, which
only thread workers get), importing only numpy and the standard library, so a
spawned worker process unpickles them quickly.

Cross-process synchronisation goes through files in a directory the test
owns: a fetcher *announces* a step by creating a file, and *waits* for the
test's go-ahead by polling for one.  The poll is the injected fault's own
wait, inside user code, never the test synchronising by sleeping.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from fault_fetchers import tagged_chunk

__all__ = ["FETCHER_FAULTS", "PROCESS_ONLY_FAULTS", "LOGGER_FAULTS", "InjectedError",
           "strike", "MatrixFetcher", "MatrixLogger", "DieAfter", "ForkThenDie",
           "CountingFetcher", "ChunkFetcher", "announce", "wait_file"]

#: Faults injected into fetch_fun.
FETCHER_FAULTS = ("exception", "base_exception", "hang", "exit", "sigkill", "sigsegv")
#: Faults that only a worker process can survive having (a thread would take pytest down).
PROCESS_ONLY_FAULTS = ("exit", "sigkill", "sigsegv")
#: Faults injected into an external logger.
LOGGER_FAULTS = ("logger_raises", "logger_hangs")

#: How long an injected wait for the test's go-ahead may last before giving up.
_GIVE_UP_SECS = 30.0


class InjectedError(ValueError):
    """What the ``exception`` fault raises (picklable: crosses from a child process)."""


def announce(directory: str, name: str) -> None:
    """Create ``directory/name`` holding the ``time.monotonic()`` of now (system-wide
    on Linux, so the trainer can compare it with its own clock)."""
    tmp = os.path.join(directory, name + ".tmp")
    with open(tmp, "w") as f:
        f.write(repr(time.monotonic()))
    os.replace(tmp, os.path.join(directory, name))


def wait_file(directory: str, name: str, timeout: float = _GIVE_UP_SECS) -> Optional[float]:
    """Poll for ``directory/name`` (created by ``announce``); its timestamp, or None."""
    path = os.path.join(directory, name)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.002)
    with open(path) as f:
        return float(f.read())


def strike(fault: str, release: Optional[threading.Event] = None) -> None:
    """Commit ``fault`` here and now."""
    if fault == "exception":
        raise InjectedError("injected fault")
    if fault == "base_exception":
        sys.exit(7)
    if fault == "hang":
        if release is not None:  # a thread: blocked until the test lets it go
            release.wait()
            return
        while True:  # a process: stop() has to terminate it
            time.sleep(3600)
    if fault == "exit":
        os._exit(3)
    if fault == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "sigsegv":
        ctypes.string_at(0)  # reads address 0
    raise AssertionError("unknown fault %r" % fault)


class MatrixFetcher:
    """Steady 4-row tagged chunks, except ``faulty_id`` (set after init, before
    start) which commits ``fault`` at ``point``:

    * ``first_fetch``: on its first call;
    * ``mid_run``: once the test creates the file ``go`` (the channel is full by then);
    * ``during_stop`` / ``during_reset``: after one good chunk it announces
      ``entered``, then commits the fault once the test creates ``go`` (the test
      does so once stop() or the reset began).

    Before striking it announces ``fault`` (the time of the fault).
    """

    def __init__(self, fault: str, point: str, directory: str,
                 release: Optional[threading.Event] = None) -> None:
        self.fault = fault
        self.point = point
        self.directory = directory
        self.release = release
        self.faulty_id = -1
        self.calls: Dict[int, int] = {}

    def __call__(self, worker_id: int, batch_size: int) -> Optional[List[np.ndarray]]:
        calls = self.calls.get(worker_id, 0)
        self.calls[worker_id] = calls + 1
        if worker_id == self.faulty_id and not (self.point in ("during_stop", "during_reset")
                                                and calls == 0):
            if self.point == "mid_run" or calls == 1:
                if calls == 1:
                    announce(self.directory, "entered")
                if wait_file(self.directory, "go") is None:
                    return None  # the test gave up on us
            announce(self.directory, "fault")
            strike(self.fault, self.release)
            return None  # a released hang
        return tagged_chunk(worker_id, calls * 4, 4)


class MatrixLogger:
    """An external logger that commits ``fault`` (``logger_raises`` / ``logger_hangs``)
    on the first call for which ``armed()`` is true, and behaves after that."""

    def __init__(self, fault: str, armed: Callable[[], bool], release: threading.Event) -> None:
        self.fault = fault
        self.armed = armed
        self.release = release
        self.struck = threading.Event()
        self.calls = 0

    def log(self, metrics: Dict[str, Any]) -> None:
        self.calls += 1
        if self.struck.is_set() or not self.armed():
            return
        self.struck.set()
        if self.fault == "logger_raises":
            raise InjectedError("logger on fire")
        self.release.wait()


class DieAfter:
    """Worker ``faulty_id`` serves ``good`` chunks, announces ``fault`` and
    ``os._exit(3)``s; every other worker serves 4-row chunks forever."""

    def __init__(self, directory: str, good: int = 3) -> None:
        self.directory = directory
        self.good = good
        self.faulty_id = -1
        self.calls = 0

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        self.calls += 1
        if worker_id == self.faulty_id and self.calls > self.good:
            announce(self.directory, "fault")
            os._exit(3)
        return tagged_chunk(worker_id, (self.calls - 1) * 4, 4)


class ForkThenDie:
    """Worker ``faulty_id`` forks a helper process that inherits its sockets and
    lives on (sleeping), then dies with ``os._exit(3)``: end-of-file never comes
    on the sockets, only the process itself says it died.  The helper's pid is
    announced as the file ``helper-<pid>`` so the test can reap it."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.faulty_id = -1
        self.calls = 0

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        self.calls += 1
        if worker_id == self.faulty_id and self.calls > 2:
            pid = os.fork()
            if pid == 0:
                try:
                    time.sleep(60)  # the helper: holds every inherited fd
                finally:
                    os._exit(0)
            open(os.path.join(self.directory, "helper-%d" % pid), "w").close()
            announce(self.directory, "fault")
            os._exit(3)
        return tagged_chunk(worker_id, (self.calls - 1) * 4, 4)


class CountingFetcher:
    """Thread workers: 4-row chunks, each call's ``time.monotonic()`` recorded."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.call_times: List[float] = []

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        with self.lock:
            self.call_times.append(time.monotonic())
        if self.delay:
            time.sleep(self.delay)  # a slow disk: the injected workload, not synchronisation
        return tagged_chunk(worker_id, 0, 4)


class ChunkFetcher:
    """Chunks of exactly ``rows`` rows, forever (picklable)."""

    def __init__(self, rows: int = 4) -> None:
        self.rows = rows

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        return tagged_chunk(worker_id, 0, self.rows)
