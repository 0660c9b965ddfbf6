"""``data_workers.torch.Loader`` against ``torch.utils.data.DataLoader``, in one run.

Two workloads, 2 workers each, batch 32::

    one sample per call    fetch_fun returns [rand(1, 64) float32, label (1,) int64];
                           DataLoader: map-style Dataset, one sample per __getitem__,
                           batch_size=32 (default collate).  Ours: process workers.
    GIL-bound              ~10 ms of pure Python (holding the GIL) per chunk of 32 rows;
                           DataLoader: a Dataset whose items are such chunks,
                           batch_size=None (one item is one batch: the same Python
                           work and one hand-off per batch on both sides).  Ours:
                           process workers (threads would share one GIL).

Each repeat builds a fresh loader per side (alternating which goes first, so drift
of a shared machine hits both), consumes ``warmup`` seconds of batches, then
counts batches over ``window`` seconds.  The reported ratio is ours / DataLoader
per repeat: median and min-max over repeats.  Time to the first batch (worker
start-up: spawn for ours, fork for DataLoader's default) is reported separately.

Part of ``benchmarks.run`` (``make bench``), which runs this module in a fresh
interpreter, writes ``torch_loader.json``, and renders its table into docs/torch.md
(``benchmarks.doc_tables``)::

    python -m benchmarks.run --only torch              # full: 5 repeats x 3 s, ~2 min
    python -m benchmarks.run --only torch --quick      # 3 repeats x 1 s, ~30 s
    python -m benchmarks.torch_loader --json out.json  # the run itself, as benchmarks.run starts it

Module level imports stay light (stdlib + numpy): spawned workers import this
module to unpickle the fetchers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/torch_loader.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _harness as h  # noqa: E402

BATCH = 32
WIDTH = 64
WORKERS = 2
GIL_FETCH_S = 0.010


spin = h.spin


# ----------------------------------------------------------------------------- fetchers


def one_sample(worker_id: int, batch_size: int) -> List[np.ndarray]:
    """One row per call: the cost is all per-call overhead."""
    return [np.random.rand(1, WIDTH).astype(np.float32), np.array([worker_id], np.int64)]


class OneSampleDataset:
    """The same sample, map-style, for DataLoader (no torch import: duck-typed)."""

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int) -> Any:
        return np.random.rand(WIDTH).astype(np.float32), index % 2


class BusyChunks:
    """Spins ~GIL_FETCH_S of pure Python, then returns one chunk of BATCH rows.

    Callable as a fetch_fun and indexable as a Dataset, so both sides run the
    very same code.
    """

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def _chunk(self, tag: int) -> List[np.ndarray]:
        spin(self.iterations)
        return [np.full((BATCH, 16), tag, np.float32), np.arange(BATCH, dtype=np.int64)]

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        return self._chunk(worker_id)

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int) -> List[np.ndarray]:
        return self._chunk(index % WORKERS)


# ----------------------------------------------------------------------------- sides


def _ours(workload: str, spin_iterations: int) -> Any:
    from data_workers.torch import Loader

    # Process workers for both: per-sample Python fetchers are what they are for
    # (each worker assembles whole batches; one hand-off per batch).
    fetch = one_sample if workload == "one_sample" else BusyChunks(spin_iterations)
    return Loader(fetch, BATCH, WORKERS, worker_type="process", names=["data", "label"])


class _DataLoaderSide:
    """A DataLoader and its iterator, closed like a Loader (workers shut down)."""

    def __init__(self, workload: str, spin_iterations: int) -> None:
        from torch.utils.data import DataLoader

        if workload == "one_sample":
            self.loader = DataLoader(OneSampleDataset(), batch_size=BATCH, num_workers=WORKERS)
        else:
            self.loader = DataLoader(BusyChunks(spin_iterations), batch_size=None,
                                     num_workers=WORKERS)
        self.it: Optional[Iterator[Any]] = iter(self.loader)

    def __next__(self) -> Any:
        assert self.it is not None
        return next(self.it)

    def close(self) -> None:
        shutdown = getattr(self.it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self.it = None


def measure_side(side: str, workload: str, spin_iterations: int, warmup_s: float,
                 window_s: float) -> Dict[str, float]:
    """Build one loader, wait for its first batch, warm up, count batches in a window."""
    t0 = time.perf_counter()
    source: Any = _ours(workload, spin_iterations) if side == "ours" \
        else _DataLoaderSide(workload, spin_iterations)
    try:
        batch = next(source)
        first = time.perf_counter() - t0
        if len(batch[0]) != BATCH:
            raise RuntimeError("%s %s: batch of %d rows" % (side, workload, len(batch[0])))
        end = time.perf_counter() + warmup_s
        while time.perf_counter() < end:
            next(source)
        count = 0
        t1 = time.perf_counter()
        end = t1 + window_s
        while True:
            next(source)
            count += 1
            now = time.perf_counter()
            if now >= end:
                break
        return {"batches_per_s": count / (now - t1), "first_batch_s": first}
    finally:
        source.close()


# ----------------------------------------------------------------------------- run


def run(quick: bool, repeats: Optional[int] = None, window_s: Optional[float] = None,
        log: Callable[[str], None] = print, warmup_s: Optional[float] = None) -> Dict[str, Any]:
    import torch

    torch.set_num_threads(1)  # the consumer does no math; keep the cores for workers
    repeats = repeats or (3 if quick else 5)
    window_s = window_s or (1.0 if quick else 3.0)
    warmup_s = min(1.0, window_s / 2) if warmup_s is None else warmup_s
    calibration = h.calibrate_spin(GIL_FETCH_S)
    spin_iterations = int(calibration["spin_iterations"])
    spin_s = calibration["spin_s"]
    results: Dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_avg_start": os.getloadavg()[0]},
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "mode": "quick" if quick else "full",
        "settings": {"batch": BATCH, "workers": WORKERS, "repeats": repeats,
                     "window_s": window_s, "warmup_s": warmup_s,
                     "gil_fetch_s": GIL_FETCH_S, "spin_iterations": spin_iterations,
                     "spin_s": spin_s},
        "workloads": {},
    }
    for workload in ("one_sample", "gil_bound"):
        runs: Dict[str, List[Dict[str, float]]] = {"ours": [], "dataloader": []}
        for r in range(repeats):
            order = ("ours", "dataloader") if r % 2 == 0 else ("dataloader", "ours")
            for side in order:
                runs[side].append(measure_side(side, workload, spin_iterations, warmup_s,
                                               window_s))
            log("  %s repeat %d: ours %.0f, DataLoader %.0f batches/s" % (
                workload, r + 1, runs["ours"][-1]["batches_per_s"],
                runs["dataloader"][-1]["batches_per_s"]))
        ratios = [o["batches_per_s"] / d["batches_per_s"]
                  for o, d in zip(runs["ours"], runs["dataloader"])]
        results["workloads"][workload] = {
            "runs": runs,
            "ratios": ratios,
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
    results["machine"]["load_avg_end"] = os.getloadavg()[0]
    return results


def _side_figures(workload: Dict[str, Any]) -> Tuple[Callable[[str], str], Callable[[str], float]]:
    """For one workload of a run: each side's batches/s as "median (min-max)", and
    its median time to the first batch."""
    def rates(side: str) -> str:
        v = [r["batches_per_s"] for r in workload["runs"][side]]
        return "%.0f (%.0f-%.0f)" % (statistics.median(v), min(v), max(v))

    def first(side: str) -> float:
        return statistics.median(r["first_batch_s"] for r in workload["runs"][side])

    return rates, first


def report(results: Dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        "Loader vs DataLoader: %d workers each, batch %d, %d repeats of %.1f s (after %.1f s "
        "warm-up); GIL-bound spin %.1f ms (calibrated; median %.1f ms just after)"
        % (s["workers"], s["batch"], s["repeats"], s["window_s"], s["warmup_s"],
           s["gil_fetch_s"] * 1e3, s["spin_s"] * 1e3),
        "%-12s %-22s %-22s %-20s %s" % ("workload", "ours batches/s", "DataLoader batches/s",
                                        "ratio median (min-max)", "first batch ours/DL"),
    ]
    for name, w in results["workloads"].items():
        rates, first = _side_figures(w)
        lines.append("%-12s %-22s %-22s %-20s %.2f s / %.2f s" % (
            name, rates("ours"), rates("dataloader"),
            "%.2fx (%.2f-%.2f)" % (w["ratio_median"], w["ratio_min"], w["ratio_max"]),
            first("ours"), first("dataloader")))
    m = results["machine"]
    lines.append("machine: %s CPUs, load average %.1f -> %.1f; python %s, torch %s" % (
        m["cpus"], m["load_avg_start"], m["load_avg_end"], m["python"], m["torch"]))
    return "\n".join(lines)


TITLES = {"one_sample": "one sample per call", "gil_bound": "GIL-bound"}


def markdown(results: Dict[str, Any]) -> str:
    """One run (``torch_loader.json``) as Markdown: the run line, then one table."""
    s, m = results["settings"], results["machine"]
    mode = ", %s mode" % results["mode"] if results.get("mode", "full") != "full" else ""
    lines = [
        "Run of %s%s: %d %s of %.1f s windows (after %.1f s of warm-up), a fresh "
        "loader per side and repeat, sides alternating; GIL-bound fetch %.1f ms "
        "(calibrated; median %.1f ms just after); %s CPUs, load average %.1f -> %.1f, "
        "Python %s, torch %s." % (
            results.get("date_utc", "?"), mode, s["repeats"],
            "repeat" if s["repeats"] == 1 else "repeats", s["window_s"], s["warmup_s"],
            s["gil_fetch_s"] * 1e3, s["spin_s"] * 1e3, m["cpus"], m["load_avg_start"],
            m["load_avg_end"], m["python"], m["torch"]),
        "",
        "| workload | ours batches/s | DataLoader batches/s | ours / DataLoader "
        "| first batch, ours / DataLoader |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, w in results["workloads"].items():
        rates, first = _side_figures(w)
        lines.append("| %s | %s | %s | %.2fx (%.2f-%.2f) | %.2f s / %.2f s |" % (
            TITLES.get(name, name), rates("ours"), rates("dataloader"), w["ratio_median"],
            w["ratio_min"], w["ratio_max"], first("ours"), first("dataloader")))
    lines.append("")
    lines.append("Batches/s and ratios: median (min-max) over the repeats; a ratio pairs "
                 "the two sides of one repeat.")
    return "\n".join(lines) + "\n"


#: The goal for ours / DataLoader on each workload, on torch 2.x (issue 21).
GOAL_RATIO = 1.5


def markdown_legs(docs: Sequence[Dict[str, Any]]) -> str:
    """Runs on several torch versions (one per test leg) as one table, side by side,
    each run's own line first; then the goal, checked on the newest torch's run."""
    lines = []
    for results in docs:
        lines += ["- torch %s: " % results["machine"]["torch"] + _run_line(results)]
    lines += [
        "",
        "| workload | torch | ours batches/s | DataLoader batches/s | ours / DataLoader "
        "| first batch, ours / DataLoader |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name in docs[0]["workloads"]:
        for results in docs:
            w = results["workloads"][name]
            rates, first = _side_figures(w)
            lines.append("| %s | %s | %s | %s | %.2fx (%.2f-%.2f) | %.2f s / %.2f s |" % (
                TITLES.get(name, name), results["machine"]["torch"], rates("ours"),
                rates("dataloader"), w["ratio_median"], w["ratio_min"], w["ratio_max"],
                first("ours"), first("dataloader")))
    lines += ["", "Batches/s and ratios: median (min-max) over the repeats; a ratio pairs "
              "the two sides of one repeat.", ""]
    newest = docs[-1]
    lines += ["| goal on torch %s | measured median (min-max) | goal | result |"
              % newest["machine"]["torch"], "| --- | ---: | ---: | --- |"]
    for name, w in newest["workloads"].items():
        lines.append("| %s: ours / DataLoader | %.2fx (%.2f-%.2f) | >= %.1fx | %s |" % (
            TITLES.get(name, name), w["ratio_median"], w["ratio_min"], w["ratio_max"],
            GOAL_RATIO, "PASS" if w["ratio_median"] >= GOAL_RATIO else "MISS"))
    return "\n".join(lines) + "\n"


def _run_line(results: Dict[str, Any]) -> str:
    s, m = results["settings"], results["machine"]
    mode = ", %s mode" % results["mode"] if results.get("mode", "full") != "full" else ""
    return ("run of %s%s, %d %s of %.1f s windows (after %.1f s of warm-up); GIL-bound "
            "fetch %.1f ms (median %.1f ms just after); %s CPUs, load average %.1f -> %.1f, "
            "Python %s." % (
                results.get("date_utc", "?"), mode, s["repeats"],
                "repeat" if s["repeats"] == 1 else "repeats", s["window_s"], s["warmup_s"],
                s["gil_fetch_s"] * 1e3, s["spin_s"] * 1e3, m["cpus"], m["load_avg_start"],
                m["load_avg_end"], m["python"]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats of 1 s windows")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--window", type=float, default=None, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of warm-up per loader (default: half the window, <= 1)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = run(args.quick, args.repeats, args.window, warmup_s=args.warmup)
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
