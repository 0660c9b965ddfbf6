"""Workload 3: GIL-bound fetchers, ~5 ms of pure Python per call.

The fetcher spins a pure-Python loop (holding the GIL throughout) calibrated in
the parent, before any case runs, to take ``FETCH_S`` on this machine; the
iteration count is passed to every case, so both sides do identical work. Each
call then returns one full batch (32 x 16 float32 + 32 int32 labels, generated
once per worker), so batches/s equals fetcher calls/s. Upstream runs 1..4
threads; ours runs 1..4 processes (``worker_type="process"``) and, for
reference, 1..4 threads. The target compares ours with 2 processes against
upstream's best thread count.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

import numpy as np

from benchmarks import _harness as h

BATCH = 32
FETCH_S = 0.005
REPEATS = (1, 2)  # (quick, full)
TITLE = "3. GIL-bound fetchers: ~5 ms pure Python per call, one batch per call"


spin = h.spin


def calibrate(target_s: float = FETCH_S) -> Dict[str, float]:
    """``_harness.calibrate_spin`` for this workload's ~5 ms fetch."""
    return h.calibrate_spin(target_s)


class BusyFetcher:
    """Picklable fetcher: spin, then return this worker's pre-generated batch."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self._cache: Dict[int, List[np.ndarray]] = {}

    def __getstate__(self) -> Dict[str, Any]:
        return {"iterations": self.iterations}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.iterations = state["iterations"]
        self._cache = {}

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        spin(self.iterations)
        batch = self._cache.get(worker_id)
        if batch is None:  # each worker only ever touches its own key
            data = np.full((BATCH, 16), worker_id, dtype=np.float32)
            batch = self._cache[worker_id] = [data, np.arange(BATCH, dtype=np.int32)]
        return list(batch)


def _label(n: int, kind: str) -> str:
    return f"{n} {kind}" if n == 1 else f"{n} {kind}es" if kind == "process" else f"{n} {kind}s"


def plan(quick: bool, timing: h.Timing, timeout_s: float, calib: Dict[str, float]) -> List[h.Case]:
    if not quick:
        # Fewer, longer windows: with GIL-bound threads the batch stream comes in
        # bursts of ~100 ms (GIL hand-offs), which short windows would sample.
        timing = h.Timing(warmup_s=timing.warmup_s, window_s=0.8, windows=5)
    cases = []
    counts = (1, 2) if quick else (1, 2, 3, 4)
    for n in counts:
        p = {"timing": timing.__dict__, "workers": n, "spin_iterations": calib["spin_iterations"]}
        cases.append(h.Case("gil_bound", h.UPSTREAM, _label(n, "thread"),
                            dict(p, dw_kwargs={}), timeout_s))
        if n == 2 or not quick:
            cases.append(h.Case("gil_bound", h.OURS, _label(n, "process"),
                                dict(p, dw_kwargs={"worker_type": "process"}), timeout_s))
        if not quick:
            cases.append(h.Case("gil_bound", h.OURS, _label(n, "thread"),
                                dict(p, dw_kwargs={"worker_type": "thread"}), timeout_s))
    return cases


def measure(ctx: h.ChildContext) -> h.Result:
    return h.run_pipeline(
        ctx,
        blobs=["data", "label"],
        fetch_fun=BusyFetcher(ctx.params["spin_iterations"]),
        batch_size=BATCH,
        num_workers=ctx.params["workers"],
        measure=lambda consumer, t0: h.measure_steady(consumer, ctx.timing),
    )


def summarize(results: Sequence[h.Result], calib: Dict[str, float]) -> h.Summary:
    up_rates = {r["label"]: r["batches_per_s"] for r in results
                if r["side"] == h.UPSTREAM and h.ok(r)}
    best_label = max(up_rates, key=lambda k: up_rates[k]) if up_rates else None
    best = up_rates[best_label] if best_label else None
    cores = os.cpu_count() or 1
    rows, notes = [], []
    for r in results:
        good = h.ok(r)
        n = r["params"]["workers"]
        ideal = min(n, cores) / calib["spin_s"]
        rows.append([
            r["side"], r["label"],
            h.fmt_num(r["batches_per_s"]) if good else "failed",
            h.spread(r),
            h.fmt_num(ideal),
            h.fmt_ratio(h.ratio(r["batches_per_s"] if good else None, best)),
            h.cpu_cell(r),
            h.load_cell(r),
        ])
        for e in ([r["error"]] if "error" in r else []) + r.get("repeat_errors", []):
            notes.append(f"{r['key']}: {e}")
    ours = h.find(results, h.OURS, "2 processes")
    for rr in (h.find(results, h.UPSTREAM, best_label) if best_label else None, ours,
               h.find(results, h.OURS, "2 threads")):
        note = h.thread_note(rr)
        if note:
            notes.append(note)
    target = h.Target(
        "GIL-bound: ours (2 processes) / upstream best threads",
        h.ratio(h.value(ours), best), 1.8,
        note="; ".join(x for x in [
            f"upstream best: {best_label}" if best_label else "",
            h.noise_note([r for r in results if r["side"] == h.UPSTREAM] + [ours])] if x))
    notes.append(f"spin calibrated to {calib['spin_s'] * 1e3:.2f} ms "
                 f"({calib['spin_iterations']:,} iterations); "
                 f"'ideal' = min(workers, {cores} cores) / spin time, ignoring the consumer")
    series: Dict[str, List[List[float]]] = {}
    for r in results:
        if h.ok(r):
            kind = "processes" if "process" in r["label"] else "threads"
            series.setdefault(f"{r['side']} {kind}", []).append(
                [r["params"]["workers"], r["batches_per_s"]])
    chart = {"series": series, "best": best, "ratio": target.measured}
    return h.Summary(TITLE, ["side", "config", "batches/s", "window min-max", "ideal",
                             "vs upstream best", "trainer CPU us/batch", "other load"], rows, [target], chart, notes)


def plot(ax: Any, s: h.Summary) -> None:
    c = s.chart
    styles = {"upstream threads": ("#9e9e9e", "o"), "ours processes": ("#ff7f0e", "s"),
              "ours threads": ("#1f77b4", "^")}
    for name, pts in sorted(c["series"].items()):
        pts = sorted(pts)
        color, marker = styles.get(name, ("k", "x"))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color,
                label=name)
    if c.get("best"):
        ax.axhline(1.8 * c["best"], color="k", lw=1, ls="--", label="target 1.8x upstream best")
    # Room above the highest point for the legend, so it covers no line.
    tallest = max([p[1] for pts in c["series"].values() for p in pts] or [1.0])
    ax.set_ylim(0, tallest * 1.45)
    ax.set_xticks([1, 2, 3, 4])
    ax.set_xlabel("workers")
    ax.set_ylabel("batches/s (higher is better)")
    title = "GIL-bound fetchers (~5 ms pure Python per batch)"
    if c.get("ratio"):
        title += f": 2 procs {c['ratio']:.2f}x"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
