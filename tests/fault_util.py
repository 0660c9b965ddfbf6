"""Fault-injection test helpers: a worker_type parameter, net helpers, leak probes.

The misbehaving fetchers live in ``fault_fetchers.py`` (light imports, for
spawned children); this module re-exports them.
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from typing import Any, List, Optional, Sequence, Set, Tuple

import pytest
from legs import core, workspace  # None on the modern leg (no Caffe2)

from fault_fetchers import *  # noqa: F401,F403  (re-exported for the tests)
from fault_fetchers import tagged_chunk  # noqa: F401

try:
    import psutil
except ImportError:  # pragma: no cover - pinned in requirements.txt
    psutil = None

try:
    from data_workers._workers import processes as _process_workers  # noqa: F401

    HAVE_PROCESS_WORKERS = True
except ImportError:  # pragma: no cover - only while process workers were being written
    HAVE_PROCESS_WORKERS = False

#: Parametrize a test over both backends; "process" skips while it cannot be imported.
WORKER_TYPES = [
    "thread",
    pytest.param("process", marks=pytest.mark.skipif(
        not HAVE_PROCESS_WORKERS, reason="data_workers._workers.processes is not importable yet")),
]
#: The "process" parameter alone, for faults only a process can have.
PROCESS_ONLY = WORKER_TYPES[1:]

#: How long a blocked RunNet may take to fail once its input failed or stopped
#: (the contract says ~1 s; generous for loaded 2-core CI machines).
PROMPT_SECS = 5.0


# ----------------------------------------------------------------------------- nets


def make_input(net: core.Net, fetch_fun: Any, batch_size: int = 8, **kwargs: Any) -> Any:
    """``init_data_input_workers`` on the tagged blobs, small timeouts by default."""
    import data_workers

    kwargs.setdefault("timeout", 30)  # long: a test passing quickly proves it did not wait it out
    return data_workers.init_data_input_workers(net, ["data", "label"], fetch_fun, batch_size,
                                                **kwargs)


def run_until_error(net: core.Net, max_iters: int = 10000,
                    blobs: Sequence[str] = ("data", "label"),
                    ) -> Tuple[list, Optional[BaseException], float]:
    """RunNet until it raises.

    Returns:
        (batches before the error, the error or None, seconds the failing RunNet took).
    """
    workspace.CreateNet(net, overwrite=True)
    batches = []
    name = net.Proto().name
    for _ in range(max_iters):
        started = time.monotonic()
        try:
            workspace.RunNet(name)
        except RuntimeError as exc:
            return batches, exc, time.monotonic() - started
        batches.append([workspace.FetchBlob(b) for b in blobs])
    return batches, None, 0.0


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.01) -> None:
    """Poll ``predicate`` (a state with no event to wait on, e.g. counters) until true.

    On a timeout the error carries a snapshot of this process's threads and its
    child processes: a failure seen once under CI's load must be explainable
    from the log alone.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s\n%s"
                                 % (timeout, what, process_snapshot()))
        time.sleep(interval)


def wait_for_failure(coord: Any, timeout: float = 20.0) -> None:
    """Wait until the coordinator's (first) input has recorded a failure."""
    wait_for(lambda: coord.stats()[0].failure is not None, timeout, "the failure to be recorded")


def process_snapshot() -> str:
    """Every Python thread's stack here, and the state of each child process."""
    import traceback

    lines = ["-- threads of pid %d:" % os.getpid()]
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        lines.append("thread %r:" % names.get(ident, ident))
        lines.extend("  " + entry.rstrip().replace("\n", "\n  ")
                     for entry in traceback.format_stack(frame)[-8:])
    lines.append("-- children:")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
            with open("/proc/%s/wchan" % entry) as f:
                wchan = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == os.getpid():  # fields: state, ppid, ...
            lines.append("pid %s %s state %s wchan %s" % (
                entry, stat[stat.index("("):stat.rindex(")") + 1], fields[0], wchan or "-"))
    return "\n".join(lines)


#: A trainer with 2 process workers that prints ``BUFFERED CHILDREN pid pid`` and
#: waits to be killed.  argv: ``steady`` (workers blocked on a full ring) or
#: ``stuck`` (inside fetch_fun), the start method, and ``main`` or ``thread`` (the
#: thread that calls start(): the kernel's parent-death signal needs the main one).
#: ``BUFFERED`` is still in stdout's buffer when the workers start: it must come
#: out once.
KILLED_TRAINER = textwrap.dedent("""
    import sys, threading, time
    import numpy as np
    from caffe2.python import core, workspace
    import data_workers

    def fetch(worker_id, batch_size):
        if sys.argv[1] == "stuck":
            time.sleep(3600)  # the trainer dies while fetch_fun is busy
        return [np.ones((3, 2), np.float32), np.zeros(3, np.int32)]

    def main():
        workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
        net = core.Net("killed")
        coord = data_workers.init_data_input_workers(
            net, ["data", "label"], fetch, 4, num_worker_threads=2, timeout=30,
            worker_type="process", start_method=sys.argv[2])
        workspace.CreateNet(net)
        sys.stdout.write("BUFFERED ")
        if sys.argv[3] == "thread":
            starter = threading.Thread(target=coord.start)
            starter.start()
            starter.join()
        else:
            coord.start()
        if sys.argv[1] != "stuck":
            workspace.RunNet(net.Proto().name)  # busy workers, blocked on a full ring
        import psutil
        deadline = time.monotonic() + 30
        while len(psutil.Process().children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        print("CHILDREN", " ".join(str(p.pid) for p in psutil.Process().children()), flush=True)
        time.sleep(3600)

    if __name__ == "__main__":
        main()
""")


def kill_trainer_and_check_its_workers_end(script: Any, args: Sequence[str], cwd: str,
                                           env: Any) -> None:
    """Run ``KILLED_TRAINER`` (written to the path ``script``) with ``args``,
    SIGKILL it once its workers run, and assert they end within 10 s."""
    import subprocess

    import psutil

    first_line = "BUFFERED CHILDREN"
    script.write_text(KILLED_TRAINER)
    proc = subprocess.Popen([sys.executable, str(script)] + list(args), cwd=cwd, env=env,
                            stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline().decode()  # type: ignore[union-attr]
        pids = [int(p) for p in line[len(first_line):].split()]
        assert line.startswith(first_line) and len(pids) == 2, line
        workers = [psutil.Process(p) for p in pids]
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
    gone, alive = psutil.wait_procs(workers, timeout=10)
    for p in alive:  # do not leave them behind even when the test fails
        p.kill()
    assert not alive, "worker processes outlived their killed trainer: %s" % alive


def in_call(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` is inside a call of ``function`` now (its Python stack):
    for attacks that must strike while a thread is at a given step."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


# ----------------------------------------------------------------------------- leak probes


def shm_segments() -> Set[str]:
    """Named POSIX shared-memory segments that this library or Python could create."""
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:  # pragma: no cover
        return set()
    return {n for n in names if n.startswith(("psm_", "data_workers", "sem.mp-", "wnsm_"))}


def fetcher_processes() -> List[Any]:
    """Our live child processes, minus multiprocessing's resource tracker (one per
    interpreter, started by the first semaphore, by design outliving any input)."""
    if psutil is None:  # pragma: no cover
        return []
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                out.append(p)
                continue
            if "resource_tracker" in " ".join(p.cmdline()):
                continue
        except psutil.NoSuchProcess:
            continue
        out.append(p)
    return out


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_shm_leak():
    """Fail a test that leaves a named shared-memory segment behind."""
    before = shm_segments()
    yield
    deadline = time.monotonic() + 5.0
    while shm_segments() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    left = shm_segments() - before
    assert not left, "shared-memory segments leaked: %s" % sorted(left)


@pytest.fixture(params=WORKER_TYPES)
def worker_type(request: Any) -> str:
    return request.param


def count_dequeue_ops(net: core.Net) -> int:
    return sum(1 for op in net.Proto().op if op.type == "DequeueBlobs")
