"""Workload 2: large batches, 32x3x224x224 float32 images + 32 int32 labels.

Every fetcher call returns exactly one batch (~19.3 MB), from arrays generated
once per worker, so the fetcher costs ~nothing and the pipeline's copies are
what is measured. The machine's single-thread ``np.copyto`` bandwidth for the
same bytes is measured in the same child, after every measurement window while
the consumer pauses (the workers idle on full buffers), because this VM's memory
bandwidth drifts by 2x or more over seconds; ``of memcpy`` is the median over
windows of (window GB/s / the memcpy GB/s measured right after it).
Both sides get ``max_buffered_batches=8`` (the default 800 would allow ~15 GB of
buffered batches in a buffering implementation).
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import statistics
import time

import numpy as np

from benchmarks import _harness as h

BATCH = 32
SHAPE = (BATCH, 3, 224, 224)
WORKERS = 2
MAX_BUFFERED = 8
PAUSE_S = 0.15  # consumer pause before each memcpy window: producers refill, then idle
REPEATS = (1, 2)  # (quick, full)
TITLE = "2. Large batches: 32x3x224x224 float32 + int32 labels (19.3 MB/batch), 2 workers"


def make_batch(worker_id: int) -> List[np.ndarray]:
    rng = np.random.RandomState(worker_id)
    data = rng.standard_normal(SHAPE).astype(np.float32)
    labels = rng.randint(0, 1000, size=BATCH).astype(np.int32)
    return [data, labels]


class LargeBatchFetcher:
    """Picklable fetcher returning a per-worker batch generated once."""

    def __init__(self) -> None:
        self._cache: Dict[int, List[np.ndarray]] = {}

    def __getstate__(self) -> Dict[str, Any]:
        return {}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self._cache = {}

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        batch = self._cache.get(worker_id)
        if batch is None:  # each worker only ever touches its own key
            batch = self._cache[worker_id] = make_batch(worker_id)
        return list(batch)


def plan(quick: bool, timing: h.Timing, timeout_s: float) -> List[h.Case]:
    return h.upstream_vs_ours_cases("large_batches", quick, timing, timeout_s)


def measure(ctx: h.ChildContext) -> h.Result:
    sample = make_batch(0)
    nbytes = sum(a.nbytes for a in sample)
    dsts = [np.empty_like(a) for a in sample]
    before = h.memcpy_bandwidth(sample, 0.1, windows=3, dsts=dsts)["memcpy_gb_per_s"]

    def memcpy_now() -> float:
        time.sleep(PAUSE_S)
        return h.memcpy_bandwidth(sample, ctx.timing.window_s / 2, 1, dsts)["memcpy_gb_per_s"]

    result = h.run_pipeline(
        ctx,
        blobs=["data", "label"],
        fetch_fun=LargeBatchFetcher(),
        batch_size=BATCH,
        num_workers=WORKERS,
        extra_kwargs={"max_buffered_batches": MAX_BUFFERED},
        measure=lambda consumer, t0: h.measure_steady(consumer, ctx.timing,
                                                      after_window=memcpy_now),
    )
    memcpy = result.pop("after_window")
    window_gb = [rate * nbytes / 1e9 for rate in result["window_rates"]]
    result.update(
        bytes_per_batch=nbytes,
        memcpy_before_gb_per_s=before,
        memcpy_window_gb_per_s=memcpy,
        memcpy_gb_per_s=statistics.median(memcpy),
        gb_per_s=result["batches_per_s"] * nbytes / 1e9,
        window_gb_per_s=window_gb,
        fraction_of_memcpy=statistics.median(g / m for g, m in zip(window_gb, memcpy)),
    )
    return result


def summarize(results: Sequence[h.Result]) -> h.Summary:
    up = h.find(results, h.UPSTREAM, "2 threads")
    up_rate = h.value(up)
    rows, notes = [], []
    for r in results:
        good = h.ok(r)
        rows.append([
            r["side"], r["label"],
            h.fmt_num(r["batches_per_s"], 1) if good else "failed",
            h.fmt_num(r.get("gb_per_s"), 2) if good else "-",
            h.fmt_num(r.get("memcpy_gb_per_s"), 2),
            h.fmt_ratio(r.get("fraction_of_memcpy")) if good else "-",
            h.fmt_ratio(h.ratio(h.value(r), up_rate)),
            h.cpu_cell(r),
            h.load_cell(r),
        ])
        for e in ([r["error"]] if "error" in r else []) + r.get("repeat_errors", []):
            notes.append(f"{r['key']}: {e}")
    ours = h.find(results, h.OURS, "2 threads")
    up_frac = h.value(up, "fraction_of_memcpy")
    target = h.Target(
        "large batches: ours (2 threads) GB/s / memcpy GB/s",
        h.value(ours, "fraction_of_memcpy"), 0.7,
        note="; ".join(x for x in [
            "" if up_frac is None else f"upstream {up_frac:.2f}x",
            h.noise_note([ours])] if x),
    )
    chart = {
        "labels": [f"{r['side']}\n{r['label']}" for r in results],
        "values": [h.value(r, "fraction_of_memcpy") for r in results],
        "gb": [h.value(r, "gb_per_s") for r in results],
        "kinds": ["upstream" if r["side"] == h.UPSTREAM
                  else ("ours-process" if "process" in r["label"] else "ours") for r in results],
    }
    return h.Summary(
        TITLE,
        ["side", "config", "batches/s", "GB/s", "memcpy GB/s", "of memcpy", "ours/upstream",
         "trainer CPU us/batch", "other load"],
        rows, [target], chart, notes)


def plot(ax: Any, s: h.Summary) -> None:
    c = s.chart
    labels = [f"{lab}\n{gb:.1f} GB/s" if gb is not None else lab
              for lab, gb in zip(c["labels"], c["gb"])]
    h.bar_panel(ax, labels, c["values"], [h.SIDE_COLORS[k] for k in c["kinds"]],
                "Large batches (19.3 MB): GB/s as a fraction of np.copyto",
                "pipeline GB/s / memcpy GB/s (higher is better)", fmt="{:.2f}x")
    # The reference lines are labelled where they start, left of the first bar, and the
    # axis leaves room above the tallest bar for its value: no legend over the bars.
    ax.axhline(1.0, color="k", lw=1)
    ax.axhline(0.7, color="k", lw=1, ls="--")
    for y, text in ((1.0, "np.copyto, same bytes = 1.0"), (0.7, "target 0.7x")):
        ax.annotate(text, (-0.45, y), ha="left", va="bottom", fontsize=7,
                    xytext=(0, 1), textcoords="offset points")
    tallest = max([v for v in c["values"] if v is not None] + [1.0])
    ax.set_ylim(0, tallest * 1.18)
