"""``python -m data_workers doctor``: is this machine ready for data_workers?

Reports versions (Python, numpy, torch, Caffe2 or its absence), cores,
``/dev/shm``, ``memfd_create`` and ``pidfd`` support, then feeds a few
batches through thread and process workers.  Every problem is printed with
its fix, and makes the exit status 1.  Caffe2's absence is not a problem:
``data_workers.torch.Loader`` needs no Caffe2.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings
from typing import Callable

import numpy as np

from .profile import loader_rows_per_sec, usable_cores

__all__ = ["run_doctor"]

#: Less free ``/dev/shm`` than this is reported (torch's DataLoader and many
#: libraries use it; our process workers use memfd instead).
_SHM_LOW_BYTES = 64 << 20


def _self_test_fetch(worker_id: int, batch_size: int) -> list[np.ndarray]:
    rows = 1 + worker_id % 3
    return [np.full((rows, 4), worker_id, np.float32), np.arange(rows, dtype=np.int32)]


def _versions() -> list[tuple[str, str]]:
    lines = [("python", "%s (%s)" % (platform.python_version(), sys.executable)),
             ("numpy", np.__version__)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 1.10 imports pkg_resources
            import torch
        lines.append(("torch", torch.__version__))
    except ImportError:
        lines.append(("torch", "absent"))
    try:
        from caffe2.python import workspace  # noqa: F401

        lines.append(("caffe2", "present (caffe2.python imports)"))
    except ImportError as exc:
        lines.append(("caffe2", "absent (info: data_workers.torch.Loader works without it; "
                                "init_data_input_workers needs it): %s" % exc))
    return lines


def _check_memfd() -> str:
    fd = os.memfd_create("data_workers_doctor", os.MFD_CLOEXEC)
    os.close(fd)
    return "yes"


def _check_pidfd() -> str:
    fd = os.pidfd_open(os.getpid())
    os.close(fd)
    return "yes"


def run_doctor(seconds: float) -> int:
    """The ``doctor`` command; returns the exit status (0: all well, 1: a problem)."""
    problems: list[str] = []
    for name, value in _versions():
        print("%-10s %s" % (name, value))
    print("%-10s %d usable of %s" % ("cores", usable_cores(), os.cpu_count()))
    try:
        st = os.statvfs("/dev/shm")
        free, size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        print("%-10s %.0f MiB, %.0f MiB free" % ("/dev/shm", size / 2**20, free / 2**20))
        if free < _SHM_LOW_BYTES:
            print("  note: little free /dev/shm; torch's DataLoader needs it (our process "
                  "workers use memfd). In Docker: --shm-size=1g")
    except OSError as exc:
        print("%-10s missing (%s)" % ("/dev/shm", exc))
    checks: list[tuple[str, Callable[[], str], str, bool]] = [
        ("memfd", _check_memfd, "process workers need os.memfd_create (Linux 3.17+, Python "
         "3.8+): use worker_type='thread' here, or a newer kernel", True),
        ("pidfd", _check_pidfd, "without pidfd_open (Linux 5.3+) a dead worker process is "
         "noticed by polling, a little later; nothing to fix", False),
    ]
    for name, check, fix, required in checks:
        try:
            print("%-10s %s" % (name, check()))
        except (AttributeError, OSError) as exc:
            print("%-10s no (%s)" % (name, exc))
            if required:
                problems.append(fix)
            else:
                print("  note: " + fix)
    for worker_type in ("thread", "process"):
        try:
            m = loader_rows_per_sec(_self_test_fetch, 8, 2, worker_type, seconds, 2)
            print("%-10s ok, %.0f rows/s through 2 %s workers" % (
                "self-test", m.rows_per_sec, worker_type))
        except Exception as exc:
            print("%-10s FAILED with 2 %s workers: %s: %s" % (
                "self-test", worker_type, type(exc).__name__, exc))
            problems.append("%s workers failed their self-test: run the test suite or "
                            "report the error above" % worker_type)
    if problems:
        print("\n%d problem(s):" % len(problems))
        for p in problems:
            print("- " + p)
        return 1
    print("\nall well")
    return 0
