"""A worker process's entry point: the parent-death signal first, then the worker.

``python -m data_workers._workers.boot DATA_FD CONTROL_FD ARENA_FD PARENT DEATH_SIGNAL``
(``processes._ProcessWorker.launch``).

A worker stopped (SIGSTOP) when its trainer dies can only be ended by the
kernel's parent-death signal: no thread of it runs.  Until the worker has asked
for that signal it would outlive the trainer, stopped, so the request comes
before anything slow: this module imports only the standard library's ctypes,
and importing the worker (numpy and ``child.py``) takes 100-250 ms.  What is
left is the interpreter's own start-up, tens of milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, death_signal: int) -> None:
    """Ask the kernel to send ``death_signal`` when the spawning thread dies; exit
    at once if the trainer is gone already (it died before the request took effect).

    ``death_signal`` 0: none was asked for (the trainer spawned this worker from
    a thread other than its main one, which may end before the trainer does).
    """
    if death_signal:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # not Linux: the watcher thread and this ppid check remain
    if os.getppid() != parent:
        os._exit(1)


def run(argv: list[str]) -> None:
    die_with_parent(int(argv[3]), int(argv[4]))
    from .child import main

    code = main(argv)
    # Everything is reported and released: skip the interpreter's teardown, as
    # multiprocessing's children do (with torch imported it takes seconds, which
    # the trainer's stop() would spend waiting for this process to end).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run(sys.argv[1:])
