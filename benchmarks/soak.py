"""Soak: days of feeding compressed into minutes, watching for leaks and lost rows.

Usage::

    .venv/bin/python -m benchmarks.soak               # full: 1,000,000 small + 10,000 large batches
    .venv/bin/python -m benchmarks.soak --quick       # smoke run, < 60 s
    .venv/bin/python -m benchmarks.soak --json out.json

Data flow (one interpreter; process workers are its children)::

    plan: phases (small/large x thread/process) -> cycles
      cycle: init_data_input_workers -> start -> RunNet loop (check every row) -> stop
             every FAIL_EVERY-th cycle a fetcher raises (process: or dies) mid-cycle
      sampler: every --interval s: batches/s, RSS, open fds, threads,
               child processes, /dev/shm entries  -> one table line
      after each stop(): threads, fds, children, /dev/shm must be back at baseline

Every row carries ``[worker_id, sequence number]``; a cycle checks each worker's
rows arrive as 0, 1, 2, ... with no gap (a gap is a lost row, a repeat a
duplicate).  Exit status 1 if a row is lost, an unexpected error occurs, a
resource is not back to its baseline after a cycle, or resident memory keeps
growing (within a phase, the later half of its cycles vs the earlier half).

Top-level imports are light (stdlib + numpy): worker processes import this
module to unpickle the fetchers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/soak.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Within one phase, RSS after its later cycles may exceed its earlier cycles' by this much.
RSS_GROWTH_LIMIT = 64 << 20
#: A fetcher failure is injected into every FAIL_EVERY-th cycle.
FAIL_EVERY = 4
#: Batches the full run must deliver, per phase name (thread and process together).
TARGETS = {"small": 1000000, "large": 10000}


class InjectedFailure(RuntimeError):
    """What a soak fetcher raises on purpose."""


class SoakFetcher:
    """Tagged chunks of 1..max_rows rows, with ``trailing`` extra dims of float32.

    ``fail_at``: (worker position, chunk number, how) -- raise (or, in a process,
    ``os._exit``) at that chunk; None for a healthy cycle.
    """

    def __init__(self, first_worker_id: int, max_rows: int, trailing: tuple,
                 fail_at: Optional[tuple] = None, seed: int = 0) -> None:
        self.first = first_worker_id
        self.max_rows = max_rows
        self.trailing = trailing
        self.fail_at = fail_at
        self.seed = seed
        self.state: Dict[int, list] = {}

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        st = self.state.get(worker_id)
        if st is None:
            st = self.state[worker_id] = [np.random.RandomState([self.seed, worker_id]), 0, 0]
        rng, calls, seq = st
        if self.fail_at is not None and self.fail_at[:2] == (worker_id - self.first, calls):
            if self.fail_at[2] == "exit":
                os._exit(7)
            raise InjectedFailure("injected failure in worker %d at chunk %d" % (worker_id, calls))
        rows = int(rng.randint(1, self.max_rows + 1))
        tags = np.empty((rows, 2), np.int64)
        tags[:, 0] = worker_id
        tags[:, 1] = np.arange(seq, seq + rows)
        st[1], st[2] = calls + 1, seq + rows
        out = [tags]
        if self.trailing:
            data = np.empty((rows,) + self.trailing, np.float32)
            data[...] = tags[:, 1].reshape((rows,) + (1,) * len(self.trailing))
            out.append(data)
        return out


@dataclasses.dataclass
class Phase:
    name: str
    worker_type: str
    batch_size: int
    max_rows: int
    trailing: tuple
    cycles: int
    batches_per_cycle: int
    workers: int = 2


def plan(quick: bool) -> List[Phase]:
    if quick:
        return [
            Phase("small", "thread", 4, 8, (), cycles=4, batches_per_cycle=2000),
            Phase("small", "process", 4, 8, (), cycles=4, batches_per_cycle=1000),
            Phase("large", "thread", 32, 32, (3, 64, 64), cycles=4, batches_per_cycle=60),
            Phase("large", "process", 32, 32, (3, 64, 64), cycles=4, batches_per_cycle=40),
        ]
    return [
        # Cycles with an injected failure end about half-way: nominal counts are
        # ~15% above the targets (TARGETS) so that the delivered counts reach them.
        Phase("small", "thread", 4, 8, (), cycles=32, batches_per_cycle=25000),
        Phase("small", "process", 4, 8, (), cycles=16, batches_per_cycle=25000),
        Phase("large", "thread", 32, 32, (3, 64, 64), cycles=6, batches_per_cycle=1000),
        Phase("large", "process", 32, 32, (3, 64, 64), cycles=6, batches_per_cycle=1000),
    ]


# --------------------------------------------------------------------------- probes


def _children() -> int:
    import psutil

    n = 0
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                n += 1
        except psutil.NoSuchProcess:
            pass
    return n


def _shm() -> int:
    try:
        return len(os.listdir("/dev/shm"))
    except OSError:
        return 0


def resources() -> Dict[str, int]:
    import psutil

    return {
        "rss_mb": psutil.Process().memory_info().rss >> 20,
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": threading.active_count(),
        "children": _children(),
        "shm": _shm(),
    }


class Sampler:
    """Prints (and keeps) one line of counters every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.batches = 0  # written by the main loop only
        self.phase = ""
        self.samples: List[Dict[str, Any]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak sampler", daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> None:
        print("%7s %-16s %10s %9s %7s %5s %7s %8s %4s" % (
            "t(s)", "phase", "batches", "batch/s", "rss MB", "fds", "threads", "children", "shm"),
            flush=True)
        self._thread.start()

    def _run(self) -> None:
        last_t, last_b = time.monotonic(), 0
        while not self._done.wait(self.interval):
            now, b = time.monotonic(), self.batches
            s = dict(t=round(now - self._t0, 1), phase=self.phase, batches=b,
                     rate=round((b - last_b) / (now - last_t)), **resources())
            self.samples.append(s)
            print("%7.1f %-16s %10d %9d %7d %5d %7d %8d %4d" % (
                s["t"], s["phase"], b, s["rate"], s["rss_mb"], s["fds"], s["threads"],
                s["children"], s["shm"]), flush=True)
            last_t, last_b = now, b

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


# --------------------------------------------------------------------------- the loop


class RowChecker:
    """Per worker, rows must arrive as 0, 1, 2, ... within one cycle."""

    def __init__(self) -> None:
        self.next: Dict[int, int] = {}
        self.rows = 0

    def check(self, tags: np.ndarray) -> None:
        for wid, seq in tags.tolist():
            want = self.next.get(wid, 0)
            if seq != want:
                raise AssertionError("worker %d: row %d arrived, expected %d (%s)" % (
                    wid, seq, want, "lost rows" if seq > want else "duplicate"))
            self.next[wid] = seq + 1
        self.rows += len(tags)


def run_cycle(phase: Phase, cycle: int, sampler: Sampler,
              failures: Dict[str, int]) -> Dict[str, Any]:
    import data_workers
    from caffe2.python import core, workspace

    workspace.ResetWorkspace()
    inject = cycle % FAIL_EVERY == FAIL_EVERY - 1
    fail_at = None
    if inject:
        dies = phase.worker_type == "process" and cycle % (2 * FAIL_EVERY) == FAIL_EVERY - 1
        how = "exit" if dies else "raise"
        # About a quarter into the cycle (chunks average max_rows / 2 rows).
        chunk = phase.batches_per_cycle * phase.batch_size // (2 * phase.max_rows * phase.workers)
        fail_at = (cycle % phase.workers, max(1, chunk), how)
    first = data_workers.global_coordinator.next_worker_id
    blobs = ["tags"] + (["data"] if phase.trailing else [])
    net = core.Net("soak")
    coord = data_workers.init_data_input_workers(
        net, blobs, SoakFetcher(first, phase.max_rows, phase.trailing, fail_at, seed=cycle),
        phase.batch_size, num_worker_threads=phase.workers, input_source_name="soak",
        max_buffered_batches=64, timeout=60, worker_type=phase.worker_type)
    workspace.CreateNet(net)
    checker = RowChecker()
    name = net.Proto().name
    started = time.monotonic()
    coord.start()
    outcome = "completed"
    # With a failure injected, consume until it surfaces (the worker it is meant
    # for may not reach its call within the cycle's batches), within a bound.
    limit = phase.batches_per_cycle if fail_at is None else 50 * phase.batches_per_cycle
    try:
        for _ in range(limit):
            try:
                workspace.RunNet(name)
            except RuntimeError:
                if fail_at is None:
                    raise
                outcome = "net failed"
                break
            tags = workspace.FetchBlob("tags")
            if len(tags) != phase.batch_size:
                raise AssertionError("batch of %d rows, expected %d"
                                     % (len(tags), phase.batch_size))
            if phase.trailing and sampler.batches % 16 == 0:
                data = workspace.FetchBlob("data")
                if not (data[:, 0, 0, 0] == tags[:, 1]).all():
                    raise AssertionError("data and tags out of step")
            checker.check(tags)
            sampler.batches += 1
    finally:
        try:
            ok = coord.stop()
        except (data_workers.FetcherError, data_workers.WorkerDiedError) as exc:
            if fail_at is None:
                raise
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            # (If it struck just as the cycle ended, only stop() saw it: fine.)
            outcome = "failed as injected"
            ok = True
    if fail_at is not None and outcome != "failed as injected":
        # Either it never happened, or the net failed and stop() lost the error.
        raise AssertionError("the injected failure %r was not raised by stop() (%s)"
                             % (fail_at, outcome))
    if not ok:
        raise AssertionError("stop() returned False: a worker did not end")
    return dict(rows=checker.rows, secs=time.monotonic() - started, outcome=outcome)


def settle(baseline: Dict[str, int]) -> Dict[str, int]:
    """Resources after a cycle; children may take a moment to be reaped."""
    deadline = time.monotonic() + 5
    while True:
        now = resources()
        if all(now[k] <= baseline[k] for k in ("fds", "threads", "children", "shm")) \
                or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run, < 60 s")
    parser.add_argument("--interval", type=float, default=None, help="seconds between samples")
    parser.add_argument("--json", default=None, help="write samples and results here")
    args = parser.parse_args(argv)

    import logging

    from caffe2.python import workspace

    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    # The injected failures are logged by the library at ERROR; keep the table readable.
    logging.basicConfig(level=logging.CRITICAL)

    phases = plan(args.quick)
    sampler = Sampler(args.interval or (1.0 if args.quick else 5.0))
    problems: List[str] = []
    failures: Dict[str, int] = {}
    results: List[Dict[str, Any]] = []
    post_cycle: List[Dict[str, int]] = []
    baseline: Optional[Dict[str, int]] = None
    t0 = time.monotonic()
    sampler.start()
    try:
        for phase in phases:
            sampler.phase = "%s/%s" % (phase.name, phase.worker_type)
            phase_batches, phase_secs = 0, 0.0
            for cycle in range(phase.cycles):
                try:
                    r = run_cycle(phase, cycle, sampler, failures)
                except Exception as exc:  # a lost row, a lost error, an unexpected one
                    problems.append("%s cycle %d: %s: %s" % (sampler.phase, cycle,
                                                            type(exc).__name__, exc))
                    continue
                phase_batches += r["rows"] // phase.batch_size
                phase_secs += r["secs"]
                now = settle(baseline) if baseline is not None else resources()
                if baseline is None:
                    baseline = dict(now)  # after the first cycle: lazily created things exist
                for k in ("fds", "threads", "children", "shm"):
                    if now[k] > baseline[k]:
                        problems.append("%s cycle %d: %s %d > baseline %d" % (
                            sampler.phase, cycle, k, now[k], baseline[k]))
                now["phase"] = sampler.phase  # type: ignore[assignment]
                post_cycle.append(now)
            secs = phase_secs or float("inf")
            results.append(dict(phase=sampler.phase, kind=phase.name, batches=phase_batches,
                                batches_per_sec=round(phase_batches / secs),
                                rows_per_sec=round(phase_batches * phase.batch_size / secs),
                                cycles=phase.cycles))
    finally:
        sampler.stop()
    total = time.monotonic() - t0

    rss = [p["rss_mb"] for p in post_cycle]
    for r in results:
        # Within a phase (same batch shapes): the later half of its cycles may
        # not hold more memory than the earlier half (cycle 0 is warm-up).
        own = [p["rss_mb"] for p in post_cycle if p["phase"] == r["phase"]][1:]
        half = max(1, len(own) // 2)
        r["rss_growth_mb"] = (max(own[-half:]) - max(own[:half])) if len(own) >= 2 else 0
        if r["rss_growth_mb"] << 20 > RSS_GROWTH_LIMIT:
            problems.append("%s: resident memory grew %d MB from its first to its second half"
                            % (r["phase"], r["rss_growth_mb"]))

    print("\nphase              batches   batches/s     rows/s  cycles  rss growth MB")
    for r in results:
        print("%-16s %9d %11d %10d %7d %14d" % (r["phase"], r["batches"], r["batches_per_sec"],
                                                r["rows_per_sec"], r["cycles"], r["rss_growth_mb"]))
    for kind, target in TARGETS.items():
        done = sum(r["batches"] for r in results if r["kind"] == kind)
        print("%s batches delivered: %d%s" % (kind, done, "" if args.quick else
                                             " (target %d)" % target))
        if not args.quick and done < target:
            problems.append("only %d %s batches delivered, target %d" % (done, kind, target))
    print("injected failures surfaced as: %s" % (
        ", ".join("%s x%d" % kv for kv in sorted(failures.items())) or "none"))
    print("baseline after first cycle: %s" % baseline)
    print("after last cycle:           %s" % (
        {k: v for k, v in post_cycle[-1].items() if k != "phase"} if post_cycle else None))
    print("rss after each cycle (MB):  min %s, max %s" % (min(rss) if rss else "-",
                                                         max(rss) if rss else "-"))
    print("total %.1f s" % total)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(results=results, samples=sampler.samples, post_cycle=post_cycle,
                           failures=failures, problems=problems, total_secs=total,
                           quick=args.quick), f, indent=1)
    if problems:
        print("\nFAIL:\n  " + "\n  ".join(problems))
        return 1
    print("OK: no row lost, nothing leaked, memory flat")
    return 0


if __name__ == "__main__":
    sys.exit(main())
