"""Worker processes forked from the trainer: ``start_method="fork"`` (DataLoader's default on Linux).

Why offer it: a fresh interpreter (``start_method="spawn"``, the default)
imports numpy, the modules ``fetch_fun`` refers to and, for a torch Dataset,
torch itself before its first fetch: 0.2 s to 2 s of start-up that a fork,
which has all of them already, does not pay.  Why it is not the default: the
trainer runs threads (ours, Caffe2's, torch's, the user's) when workers start,
and a fork copies only the forking thread; a lock another thread held at that
moment stays held in the child forever.  The worker itself takes none of the
trainer's locks, but ``fetch_fun`` may (``docs/process-workers.md``, "Start
method").

What the forked child does before it becomes a worker, and why:

* a session of its own, as a spawned worker has (Ctrl-C goes to the trainer);
* Python signal handlers back to their defaults and no signal blocked: a
  SIGTERM handler of the trainer's would otherwise keep ``terminate()`` from
  ending the worker;
* every inherited descriptor but its own three and 0-2 pointed at
  ``/dev/null``: a sibling holding the trainer's end of another worker's
  socket would keep that worker from seeing end-of-file when its trainer
  closes the socket or dies.  The numbers stay taken, so an inherited object
  that closes "its" descriptor cannot close one the worker opened;
* the trainer's other rings unmapped (``shm_ring.unmap_inherited``): shared
  memory goes back to the system when its input closes it, not when the last
  worker that happened to inherit a mapping ends;
* ``gc.freeze()``: the trainer's objects copied into the child are never
  collected there, so no finalizer of theirs closes or unmaps what the child
  does not own;
* fresh ``sys.stdout``/``sys.stderr`` over descriptors 1 and 2: the trainer's
  may be locked by a thread that does not exist here.

Then it runs ``boot.run``, exactly as a spawned worker does, and ends with
``os._exit`` whatever happens: the trainer's ``atexit`` handlers and
finalizers must not run in a worker.
"""

from __future__ import annotations

import gc
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from . import boot
from .shm_ring import unmap_inherited

__all__ = ["ForkedProcess", "fork_worker"]

#: The signals a worker cannot have a handler for.
_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}


class ForkedProcess:
    """The trainer's handle on a forked worker: what ``processes.py`` uses of
    ``subprocess.Popen`` (``pid``, ``returncode``, ``poll``, ``wait``,
    ``terminate``, ``kill``), safe to call from several threads."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        # Reaping and signalling under one lock: a pid is never signalled
        # after it was reaped (the number may belong to another process then).
        self._lock = threading.Lock()

    def poll(self) -> int | None:
        with self._lock:
            if self.returncode is None:
                try:
                    pid, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:  # reaped by someone else (SIGCHLD ignored)
                    self.returncode = 0
                else:
                    if pid:
                        self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """The exit code; raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while True:
            code = self.poll()
            if code is not None:
                return code
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired("forked worker %d" % self.pid, timeout or 0.0)
            delay = min(delay * 2, 0.05)
            time.sleep(delay if left is None else min(delay, left))

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self.returncode is None:
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def fork_worker(argv: Sequence[str], keep_fds: Sequence[int]) -> ForkedProcess:
    """Fork a worker that runs ``boot.run(argv)``, keeping only ``keep_fds`` (and 0-2)."""
    for stream in (sys.stdout, sys.stderr):
        try:  # what is buffered now would otherwise be written by the child too
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    pid = os.fork()
    if pid:
        return ForkedProcess(pid)
    try:
        _become_worker(set(keep_fds) | {0, 1, 2})
        boot.run(list(argv))
    except BaseException:  # noqa: B902 - nothing of the trainer's may run here
        try:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: B902
            pass
    finally:
        os._exit(1)  # boot.run exits with the worker's code; only a failure gets here


def _become_worker(keep: set[int]) -> None:
    """The child's side of the fork: see the module docstring, one step per bullet."""
    os.setsid()
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for sig in signal.valid_signals():
        if sig in _UNCATCHABLE:
            continue
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # a real-time signal Python cannot set
    signal.set_wakeup_fd(-1)
    _replace_inherited_fds(keep)
    unmap_inherited()
    gc.freeze()
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True,
                                  errors="backslashreplace")


def _replace_inherited_fds(keep: set[int]) -> None:
    try:
        inherited = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: every number up to the limit
        inherited = list(range(os.sysconf("SC_OPEN_MAX")))
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for fd in inherited:
        if fd in keep or fd == null:
            continue
        try:
            os.fstat(fd)
        except OSError:
            continue  # not open (e.g. the listing's own, closed by now)
        os.dup2(null, fd, inheritable=False)
    os.close(null)
