"""Process workers against their peers: our threads and torch's DataLoader.

Three workloads, each case in a fresh interpreter, repeated, in one run::

    one_sample   fetch_fun returns ONE row per call ([1 x 64 float32, int32 label]),
                 batch 32, 2 workers
    gil_bound    ~10 ms of pure Python per call, then one whole batch
                 (32 x 16 float32 + labels), 2 workers
    big_batches  one 32x3x224x224 float32 batch per call (19.3 MB, made once
                 per worker), 2 workers

Cases: ``ours-process`` and ``ours-thread`` (``init_data_input_workers``, the
net dequeues each batch) and ``dataloader`` (``torch.utils.data.DataLoader``
with 2 worker processes; each batch is fed with ``FeedBlob`` and the same net
runs, as a Caffe2 script using DataLoader would).  For ``gil_bound`` the
compute limit is measured too: 2 cores x one uncontended fetcher's rate.

Reported per case: batches/s (median, min-max over repeats) and the trainer
process's own CPU time per batch (workers excluded).  Ratios are of medians.

Part of ``benchmarks.run`` (``make bench``), which writes ``peers.json`` and the
chart ``peers.png``::

    python -m benchmarks.run --only peers            # 3 repeats x (3 s warm-up + 4 s window)
    python -m benchmarks.run --only peers --quick    # 1 repeat x (1 s + 1 s): a smoke run

Module level imports stay light (stdlib + numpy): process workers import this
module to unpickle the fetchers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/peers.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _harness as h  # noqa: E402

WORKERS = 2
BATCH = 32
SPIN_SECS = 0.010
BIG_SHAPE = (BATCH, 3, 224, 224)


spin = h.spin


class OneSample:
    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        return [np.random.rand(1, 64).astype(np.float32), np.zeros((1,), np.int32)]


class GilBound:
    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.batch = [np.random.rand(BATCH, 16).astype(np.float32), np.zeros((BATCH,), np.int32)]

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        spin(self.iterations)
        return self.batch


class BigBatch:
    def __init__(self) -> None:
        self.batch: List[np.ndarray] = []

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        if not self.batch:
            rng = np.random.RandomState(worker_id)
            self.batch = [rng.standard_normal(BIG_SHAPE).astype(np.float32),
                          rng.randint(0, 1000, size=BATCH).astype(np.int32)]
        return self.batch


def _fetcher(workload: str, iterations: int) -> Any:
    if workload == "one_sample":
        return OneSample()
    if workload == "gil_bound":
        return GilBound(iterations)
    return BigBatch()


class _Dataset:
    """The same work as a map-style torch Dataset (``batch_size=None`` for whole batches)."""

    def __init__(self, workload: str, iterations: int) -> None:
        self.fetch = _fetcher(workload, iterations)

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int) -> Any:
        arrays = self.fetch(0, BATCH)
        if isinstance(self.fetch, OneSample):
            return arrays[0][0], arrays[1][0]
        return arrays[0], arrays[1]


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long each peers case runs.

    Attributes:
        repeats: fresh-interpreter repeats per case, interleaved across cases.
        warmup_s: seconds of batches consumed and thrown away first.
        window_s: the measured window.
    """

    repeats: int
    warmup_s: float
    window_s: float


# Full warm-up: workers start, and the first uncopied batch imports torch (about a
# second) while the workers run ahead; measuring then would count that backlog
# draining.  After three seconds the buffers are back to steady state.
FULL_TIMING = Timing(repeats=3, warmup_s=3.0, window_s=4.0)
QUICK_TIMING = Timing(repeats=1, warmup_s=1.0, window_s=1.0)  # a smoke run: wiring, not figures
CASE_TIMEOUT_S = 300.0


def _measure(step: Callable[[], None], warmup_s: float, window_s: float) -> Dict[str, float]:
    deadline = time.monotonic() + warmup_s
    while time.monotonic() < deadline:
        step()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < window_s:
        step()
        n += 1
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"batches_per_s": n / wall, "trainer_cpu_ms_per_batch": 1e3 * cpu / max(n, 1)}


def run_case(workload: str, case: str, warmup_s: float, window_s: float,
             iterations: int) -> Dict[str, float]:
    """One case; runs in a fresh interpreter (``child_main``)."""
    from caffe2.python import core, workspace

    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    if case == "compute_limit":
        fetch = GilBound(iterations)
        t0, n = time.monotonic(), 0
        while time.monotonic() - t0 < window_s:
            fetch(0, BATCH)
            n += 1
        return {"batches_per_s": WORKERS * n / (time.monotonic() - t0),
                "trainer_cpu_ms_per_batch": float("nan")}
    net = core.Net("consumer")
    if case == "dataloader":
        import torch.utils.data

        loader = torch.utils.data.DataLoader(
            _Dataset(workload, iterations), num_workers=WORKERS,
            batch_size=BATCH if workload == "one_sample" else None, prefetch_factor=4)
        batches = iter(loader)
        workspace.CreateNet(net)  # empty: the loop feeds the blobs the net would read

        def step() -> None:
            data, label = next(batches)
            workspace.FeedBlob("data", data.numpy())
            workspace.FeedBlob("label", label.numpy())
            workspace.RunNet(net.Proto().name)

        try:
            return _measure(step, warmup_s, window_s)
        finally:
            del batches
    import data_workers

    coord = data_workers.init_data_input_workers(
        net, ["data", "label"], _fetcher(workload, iterations), BATCH,
        num_worker_threads=WORKERS, worker_type=case.split("-")[1], timeout=60,
        max_buffered_batches=8 if workload == "big_batches" else 800)
    workspace.CreateNet(net)  # the dequeue alone: what the pipeline costs the trainer
    coord.start()
    try:
        return _measure(lambda: workspace.RunNet(net.Proto().name), warmup_s, window_s)
    finally:
        coord.stop()


def child_main(spec_path: str, out_path: str) -> int:
    """Body of one case's interpreter: spec JSON in, result JSON out; the exit status."""
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        result: Dict[str, Any] = run_case(spec["workload"], spec["case"], spec["warmup_s"],
                                          spec["window_s"], spec["iterations"])
    except BaseException as e:
        import traceback

        h.write_json(out_path, {"error": f"{type(e).__name__}: {e}",
                                "traceback": traceback.format_exc()})
        return 1
    h.write_json(out_path, result)
    return 0


_CHILD = ("import sys; from benchmarks.peers import child_main; "
          "sys.exit(child_main(sys.argv[1], sys.argv[2]))")


CASES = {
    "one_sample": ["ours-process", "ours-thread", "dataloader"],
    "gil_bound": ["ours-process", "ours-thread", "dataloader", "compute_limit"],
    "big_batches": ["ours-process", "ours-thread", "dataloader"],
}


def _run_child(workload: str, case: str, timing: Timing, iterations: int,
               stem: str) -> Dict[str, Any]:
    """One case in a fresh interpreter, in its own session (killed as a group on timeout)."""
    spec_path, out_path, log_path = stem + ".spec.json", stem + ".out.json", stem + ".log"
    with open(spec_path, "w") as f:
        json.dump({"workload": workload, "case": case, "warmup_s": timing.warmup_s,
                   "window_s": timing.window_s, "iterations": iterations}, f)
    proc, timed_out = h.run_isolated(["-c", _CHILD, spec_path, out_path], log_path=log_path,
                                     timeout_s=CASE_TIMEOUT_S)
    leaked = not timed_out and h.reap_leftovers(proc.pid)
    result: Dict[str, Any] = {}
    if os.path.exists(out_path):
        with open(out_path) as f:
            result = json.load(f)
    if timed_out:
        result = {"error": f"timed out after {CASE_TIMEOUT_S:.0f} s"}
    elif proc.returncode != 0 and "error" not in result:
        result = {"error": f"child exited with status {proc.returncode}"}
    result.pop("traceback", None)
    if "error" in result:
        result["log_tail"] = h.log_tail(log_path)
    if leaked:
        result["leaked_processes"] = True
    return result


def run(timing: Timing, *, workloads: Sequence[str] = tuple(CASES), mode: str = "full",
        log: Callable[[str], None] = print,
        before_case: Optional[Callable[[], object]] = None) -> Dict[str, Any]:
    """Every case of ``workloads``, ``timing.repeats`` times, interleaved.

    Args:
        timing: repeats, warm-up and window of every case.
        workloads: a subset of ``CASES``.
        mode: recorded in the result (``"full"`` or ``"quick"``).
        log: receives one progress line per case.
        before_case: called before each case (``benchmarks.run`` waits for a quiet
            machine there).

    Returns:
        The document ``benchmarks.run`` writes as ``peers.json``: per workload, per
        case, one record per repeat (``batches_per_s``, ``trainer_cpu_ms_per_batch``;
        ``error`` and ``log_tail`` instead when the case failed).
    """
    t_begin = time.monotonic()
    iterations = int(h.calibrate_spin(SPIN_SECS)["spin_iterations"])
    results: Dict[str, Dict[str, List[Dict[str, Any]]]] = {}
    total = sum(len(CASES[w]) for w in workloads) * timing.repeats
    done = 0
    with tempfile.TemporaryDirectory(prefix="dw_peers_") as workdir:
        for workload in workloads:
            results[workload] = {case: [] for case in CASES[workload]}
            for k in range(timing.repeats):  # interleaved, so drift hits every case alike
                for case in CASES[workload]:
                    if before_case is not None:
                        before_case()
                    done += 1
                    t0 = time.monotonic()
                    r = _run_child(workload, case, timing, iterations,
                                   os.path.join(workdir, f"{done:03d}_{workload}_{case}"))
                    results[workload][case].append(r)
                    log(f"[{done:2d}/{total}] peers {workload} {case} #{k}: {_describe(r)}  "
                        f"({time.monotonic() - t0:.1f} s)")
    return {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": "%d cores, Python %s" % (os.cpu_count() or 0, sys.version.split()[0]),
            "mode": mode, "repeats": timing.repeats, "window_secs": timing.window_s,
            "warmup_secs": timing.warmup_s, "elapsed_s": time.monotonic() - t_begin,
            "results": results, "failed_cases": failed_cases(results)}


def _describe(r: Dict[str, Any]) -> str:
    if "error" in r:
        return "FAILED: " + r["error"]
    cpu = _number(r.get("trainer_cpu_ms_per_batch"))
    return f"{r['batches_per_s']:,.1f} batches/s" + (
        "" if cpu is None else f", trainer CPU {cpu:.2f} ms/batch")


def failed_cases(results: Dict[str, Dict[str, List[Dict[str, Any]]]]) -> List[str]:
    """``workload/case`` of every repeat that failed."""
    return [f"{w}/{c}" for w, cases in results.items() for c, runs in cases.items()
            for r in runs if "error" in r]


# ----------------------------------------------------------------------------- reporting


def _number(v: Any) -> Optional[float]:
    """A float, or None for a missing value or NaN (the compute limit's trainer CPU)."""
    return float(v) if isinstance(v, (int, float)) and not math.isnan(v) else None


def _values(runs: Sequence[Dict[str, Any]], field: str) -> List[float]:
    """``field`` of every repeat that did not fail (NaN and missing left out)."""
    out = [_number(r.get(field)) for r in runs if "error" not in r]
    return [v for v in out if v is not None]


def _stats(runs: Sequence[Dict[str, Any]],
           field: str = "batches_per_s") -> Optional[Tuple[float, float, float]]:
    """(median, min, max) of ``field`` over the repeats, None when none succeeded."""
    v = _values(runs, field)
    return (statistics.median(v), min(v), max(v)) if v else None


def _spread(runs: Sequence[Dict[str, Any]]) -> str:
    s = _stats(runs)
    return "failed" if s is None else "%.0f (%.0f-%.0f)" % s


#: Trainer CPU per big batch with process workers, the issue's goal.
CPU_GOAL_MS = 0.2
#: Goals from the process-workers issue: (workload, numerator, denominator, goal).
GOALS = [
    ("one_sample", "ours-process", "dataloader", 1.5),
    ("gil_bound", "ours-process", "dataloader", 1.5),
    ("big_batches", "ours-process", "dataloader", 1.5),
    ("one_sample", "ours-process", "ours-thread", 0.8),
    ("big_batches", "ours-process", "ours-thread", 0.9),
    ("gil_bound", "ours-process", "compute_limit", 0.8),
]


def run_line(doc: Dict[str, Any]) -> str:
    """What ran: date, mode, repeats, windows, machine."""
    warmup = (" (after %.1f s of warm-up)" % doc["warmup_secs"]) if "warmup_secs" in doc else ""
    mode = ", %s mode" % doc["mode"] if doc.get("mode", "full") != "full" else ""
    return ("Run of %s%s: %d fresh-interpreter %s of %.1f s windows%s per case, "
            "interleaved; %s." % (doc.get("date_utc", "?"), mode, doc["repeats"],
                                  "repeat" if doc["repeats"] == 1 else "repeats",
                                  doc["window_secs"], warmup, doc.get("machine", "?")))


def figures_table(doc: Dict[str, Any]) -> str:
    """Batches/s of every workload (rows) and case (columns): median (min-max)."""
    results = doc["results"]
    cases: List[str] = []
    for workload_cases in results.values():
        cases += [c for c in workload_cases if c not in cases]
    rows = ["| batches/s, median (min-max) | %s |" % " | ".join(cases),
            "| --- |" + " ---: |" * len(cases)]
    for workload, runs in results.items():
        rows.append("| %s | %s |" % (workload, " | ".join(
            _spread(runs[c]) if c in runs else "-" for c in cases)))
    return "\n".join(rows)


def goals_table(doc: Dict[str, Any]) -> str:
    """The issue's goals: ratios of medians, and the trainer CPU per big batch."""
    results = doc["results"]
    rows = ["| ratio | measured | goal | result |", "| --- | ---: | ---: | --- |"]
    for workload, num, den, goal in GOALS:
        if workload not in results:
            continue
        a, b = _stats(results[workload][num]), _stats(results[workload][den])
        if a is None or b is None:
            rows.append("| %s: %s / %s | - | >= %.1fx | N/A |" % (workload, num, den, goal))
            continue
        ratio = a[0] / b[0]
        rows.append("| %s: %s / %s | %.2fx | >= %.1fx | %s |" % (
            workload, num, den, ratio, goal, "PASS" if ratio >= goal else "MISS"))
    if "big_batches" in results:
        cpu = _stats(results["big_batches"]["ours-process"], "trainer_cpu_ms_per_batch")
        rows.append("| big_batches: trainer CPU per batch, ours-process | %s | <= %.1f ms "
                    "| %s |" % ("-" if cpu is None else "%.2f ms" % cpu[0], CPU_GOAL_MS,
                                "N/A" if cpu is None
                                else "PASS" if cpu[0] <= CPU_GOAL_MS else "MISS"))
    return "\n".join(rows)


def markdown(doc: Dict[str, Any], tables: bool = True) -> str:
    """One run (``peers.json``) as Markdown.

    Args:
        doc: the run.
        tables: every workload's own table, with the trainer's CPU per batch (for
            docs/benchmarks.md), instead of one table of batches/s (for the README).

    Returns:
        The run line, the figures, then the goals.
    """
    parts = [run_line(doc)]
    if tables:
        for workload, cases in doc["results"].items():
            rows = ["| case | batches/s, median (min-max) | trainer CPU ms/batch |",
                    "| --- | ---: | ---: |"]
            for case, runs in cases.items():
                cpu = _stats(runs, "trainer_cpu_ms_per_batch")
                rows.append("| %s | %s | %s |" % (
                    case, _spread(runs), "-" if cpu is None else "%.2f" % cpu[0]))
            parts.append("**%s**\n\n%s" % (workload, "\n".join(rows)))
    else:
        parts.append(figures_table(doc))
    parts.append(goals_table(doc))
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- chart

CASE_COLORS = {"ours-process": "#ff7f0e", "ours-thread": "#1f77b4", "dataloader": "#d62728",
               "compute_limit": "#9e9e9e"}
LABELS = {"ours-process": "ours\nprocesses", "ours-thread": "ours\nthreads",
          "dataloader": "DataLoader\n+ FeedBlob", "compute_limit": "compute limit\n(2 x 1 fetcher)"}
TITLES = {
    "one_sample": "one sample per call (batch 32)",
    "gil_bound": "GIL-bound: ~10 ms pure Python per batch",
    "big_batches": "whole 19.3 MB batches (32x3x224x224 float32)",
}


def _plot_workload(ax: Any, item: Tuple[str, Dict[str, List[Dict[str, Any]]]]) -> None:
    workload, cases = item
    stats = {c: _stats(runs) for c, runs in cases.items()}
    title = TITLES.get(workload, workload)
    p, d = stats.get("ours-process"), stats.get("dataloader")
    if p is not None and d is not None:
        title += ": ours-process %.1fx DataLoader" % (p[0] / d[0])
    h.bar_panel(ax, [LABELS.get(c, c) for c in cases],
                [None if s is None else s[0] for s in stats.values()],
                [CASE_COLORS.get(c, "k") for c in cases], title,
                "batches/s: median, whiskers min-max (higher is better)",
                spans=[None if s is None else (s[1], s[2]) for s in stats.values()])


def _plot_cpu(ax: Any, results: Dict[str, Dict[str, List[Dict[str, Any]]]]) -> None:
    cases = [c for c in CASE_COLORS if c != "compute_limit"]
    width = 0.8 / len(cases)
    workloads = list(results)
    for i, case in enumerate(cases):
        xs, heights = [], []
        for j, workload in enumerate(workloads):
            s = _stats(results[workload].get(case, []), "trainer_cpu_ms_per_batch")
            if s is not None:
                xs.append(j + (i - (len(cases) - 1) / 2) * width)
                heights.append(s[0])
        bars = ax.bar(xs, heights, width, color=CASE_COLORS[case],
                      label=LABELS[case].replace("\n", " "))
        for b, v in zip(bars, heights):
            ax.annotate("%.2f" % v, (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                        textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads, fontsize=8)
    ax.set_ylabel("ms per batch, median (lower is better)")
    ax.set_title("trainer process CPU per batch (worker processes excluded)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.margins(y=0.25)


def write_chart(doc: Dict[str, Any], path: str) -> None:
    """``peers.png``: batches/s per workload with the repeats' min-max, then the trainer's
    CPU per batch; drawn from the run's document alone (no measuring)."""
    results = doc["results"]
    panels: List[Tuple[Any, Any]] = [(_plot_workload, item) for item in results.items()]
    panels.append((_plot_cpu, results))
    subtitle = "%s, %s; %d x %.1f s per case%s" % (
        doc.get("machine", "?"), doc.get("date_utc", "?"), doc["repeats"], doc["window_secs"],
        ", %s run" % doc["mode"] if "mode" in doc else "")
    h.write_chart(panels, path, subtitle,
                  title="process workers vs thread workers vs torch DataLoader + FeedBlob "
                        "(same run, 2 workers each)")

