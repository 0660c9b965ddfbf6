"""``python -m data_workers profile FILE_OR_MODULE:FUNC``: where a fetcher's time goes.

Steps, each ``--seconds`` long::

    FUNC alone, in this thread          rows/s, seconds per call, bytes per row,
                                        and how much of a call holds the GIL
    Loader, thread workers, 1..N        rows/s  (N: the usable cores, or --max-workers)
    Loader, process workers, 1..N       rows/s, and the workers' memory

How much of a call holds the GIL is estimated with a probe thread that counts
pure-Python steps while FUNC runs, against its count alone: a fetcher that
never lets go of the GIL leaves the probe half of its steps (the interpreter
switches between the two), one that always lets go (I/O, big numpy copies)
leaves it all.  The recommendation is the fastest setting, or a cheaper one
(threads before processes, fewer workers) within 10% of it.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import sys
import threading
import time
from typing import Any, Callable
from collections.abc import Sequence

import numpy as np

__all__ = ["run_profile", "load_target", "loader_rows_per_sec"]

#: A setting within this share of the fastest counts as just as good.
_GOOD_ENOUGH = 0.9


@dataclasses.dataclass(frozen=True)
class Measured:
    """One row of the table."""

    worker_type: str  # "alone", "thread" or "process"
    num_workers: int
    rows_per_sec: float
    #: Resident memory of the worker processes together (process workers only).
    workers_rss_mb: float | None = None


def load_target(target: str) -> Callable[[int, int], Any]:
    """The function ``FILE_OR_MODULE:FUNC`` names.

    A file is loaded as a module of its own and sent to process workers by
    value (cloudpickle), so it needs no ``__main__`` guard and need not be
    importable from the workers.

    Raises:
        ValueError: no ``:FUNC``, or FUNC is missing or not callable.
        ImportError: the module cannot be imported.
    """
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise ValueError("expected FILE_OR_MODULE:FUNC (e.g. train.py:fetch), got %r" % target)
    if where.endswith(".py") or os.sep in where:
        path = os.path.abspath(where)
        if not os.path.exists(path):
            raise ImportError("no such file: %s" % path)
        module_name = "data_workers_profile_" + os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ImportError("cannot load %s as a Python module" % path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        sys.path.insert(0, os.path.dirname(path))  # its own imports, as `python FILE` would
        spec.loader.exec_module(module)
        import cloudpickle

        cloudpickle.register_pickle_by_value(module)
    else:
        module = importlib.import_module(where)
    func = getattr(module, name, None)
    if not callable(func):
        raise ValueError("%s has no callable %r" % (where, name))
    return func


def _probe_steps(seconds: float, busy: Callable[[], None]) -> int:
    """Pure-Python steps a probe thread makes in ``seconds`` while ``busy`` runs here."""
    done = threading.Event()
    count = [0]

    def probe() -> None:
        n = 0
        while not done.is_set():
            for _ in range(200):
                pass
            n += 1
        count[0] = n

    thread = threading.Thread(target=probe, name="data_workers profile probe", daemon=True)
    thread.start()
    try:
        busy()
    finally:
        done.set()
        thread.join()
    return count[0]


def measure_alone(fetch: Callable[[int, int], Any], batch_size: int,
                  seconds: float) -> dict[str, Any]:
    """FUNC called in this thread for ``seconds``: rows/s, per call, bytes per row, GIL."""
    first = fetch(0, batch_size)
    arrays = [np.asarray(a) for a in first] if isinstance(first, (list, tuple)) else []
    if not arrays:
        raise ValueError("FUNC(0, %d) returned %r; a fetcher returns a list of numpy arrays"
                         % (batch_size, type(first).__name__))
    rows_first = int(arrays[0].shape[0]) if arrays[0].ndim else 1
    bytes_per_row = sum(a.nbytes for a in arrays) / max(rows_first, 1)
    stats = {"calls": 0, "rows": 0, "secs": 0.0}

    def busy(window: float) -> None:
        stats.update(calls=0, rows=0)
        started = time.perf_counter()
        while time.perf_counter() - started < window:
            out = fetch(0, batch_size)
            stats["calls"] += 1
            stats["rows"] += int(np.asarray(out[0]).shape[0]) if out is not None else 0
        stats["secs"] = time.perf_counter() - started

    # The GIL estimate first, in a window of its own: the probe slows the fetcher.
    window = min(seconds, 0.5)
    idle = _probe_steps(window, lambda: time.sleep(window)) / window
    steps = _probe_steps(window, lambda: busy(window)) / max(stats["secs"], 1e-9)
    busy(seconds)
    # Alone the probe gets every step; against a fetcher that always holds the
    # GIL, about half (the interpreter switches every 5 ms).
    gil = min(1.0, max(0.0, 2.0 * (1.0 - steps / idle))) if idle > 0 else 0.0
    return {
        "arrays": len(arrays),
        "rows_per_call": stats["rows"] / max(stats["calls"], 1),
        "secs_per_call": stats["secs"] / max(stats["calls"], 1),
        "rows_per_sec": stats["rows"] / max(stats["secs"], 1e-9),
        "bytes_per_row": bytes_per_row,
        "gil_held": gil,
    }


def _rss_mb(pids: Sequence[int]) -> float | None:
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/statm" % pid, encoding="ascii") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None
    return total / float(1 << 20)


def loader_rows_per_sec(fetch: Callable[[int, int], Any], batch_size: int, workers: int,
                        worker_type: str, seconds: float, arrays: int) -> Measured:
    """Rows/s a ``torch.Loader`` delivers over ``seconds``, after its first batch."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 1.10 imports pkg_resources, which warns
        from ..torch import Loader

    with Loader(fetch, batch_size, workers, worker_type=worker_type,
                names=["array%d" % i for i in range(arrays)], name="profile") as loader:
        next(loader)  # start-up is not throughput
        batches = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            next(loader)
            batches += 1
        elapsed = time.perf_counter() - started
        rss = _rss_mb(loader.stats().worker_pids) if worker_type == "process" else None
    return Measured(worker_type, workers, batches * batch_size / elapsed, rss)


def recommend(table: Sequence[Measured]) -> Measured:
    """The fastest setting, or the cheapest within ``_GOOD_ENOUGH`` of it."""
    pooled = [m for m in table if m.worker_type != "alone"]
    best = max(pooled, key=lambda m: m.rows_per_sec)
    cheap = sorted(pooled, key=lambda m: (m.worker_type != "thread", m.num_workers))
    return next(m for m in cheap if m.rows_per_sec >= _GOOD_ENOUGH * best.rows_per_sec)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_profile(target: str, batch_size: int, seconds: float, max_workers: int | None,
                as_json: bool) -> int:
    """The ``profile`` command; returns the exit status."""
    try:
        fetch = load_target(target)
        alone = measure_alone(fetch, batch_size, seconds)
    except Exception as exc:
        print("profile: %s: %s" % (type(exc).__name__, exc), file=sys.stderr)
        return 2
    top = max_workers or usable_cores()
    table: list[Measured] = [Measured("alone", 1, alone["rows_per_sec"])]
    for worker_type in ("thread", "process"):
        for n in range(1, top + 1):
            table.append(loader_rows_per_sec(fetch, batch_size, n, worker_type, seconds,
                                             alone["arrays"]))
    pick = recommend(table)
    one_thread = next(m for m in table if m.worker_type == "thread")
    line = ("use worker_type=%r, num_workers=%d: %.0f rows/s, %.1fx one thread worker "
            "(the fetcher alone: %.0f rows/s, holding the GIL ~%.0f%% of a call)" % (
                pick.worker_type, pick.num_workers, pick.rows_per_sec,
                pick.rows_per_sec / max(one_thread.rows_per_sec, 1e-9), alone["rows_per_sec"],
                100 * alone["gil_held"]))
    if as_json:
        print(json.dumps({
            "worker_type": pick.worker_type, "num_workers": pick.num_workers,
            "rows_per_sec": pick.rows_per_sec, "recommendation": line,
            "batch_size": batch_size, "seconds": seconds, "alone": alone,
            "table": [dataclasses.asdict(m) for m in table]}, indent=1))
        return 0
    print("%s, batch %d, %.1f s per measurement" % (target, batch_size, seconds))
    print("alone: %.0f rows/s, %.2f ms and %.1f rows per call, %.0f bytes per row, GIL held "
          "~%.0f%% of a call" % (alone["rows_per_sec"], 1e3 * alone["secs_per_call"],
                                 alone["rows_per_call"], alone["bytes_per_row"],
                                 100 * alone["gil_held"]))
    print("%-8s %7s %12s %14s" % ("workers", "count", "rows/s", "workers' RSS"))
    for m in table:
        print("%-8s %7d %12.0f %14s" % (m.worker_type, m.num_workers, m.rows_per_sec,
                                        "-" if m.workers_rss_mb is None
                                        else "%.0f MB" % m.workers_rss_mb))
    print(line)
    return 0
