"""Workload 1: small variable chunks re-batched to 32 rows, 2 workers.

The fetcher mirrors upstream's unit-test fetcher (``data_workers_test.dummy_fetcher``):
each call returns ``n`` in 1..64 rows of shape ``(n, 3)`` float64 plus ``n`` float64
labels equal to ``data[:, 0]``. The chunks are generated once per worker (a pool
of 256, cycled) so the fetcher costs ~nothing and the numbers measure the
re-batching, enqueueing and dequeueing path. The consumer is a Caffe2 net made
only of the DequeueBlobs ops, run with ``RunNet`` in a loop.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np

from benchmarks import _harness as h

BATCH = 32
WORKERS = 2
POOL = 256
REPEATS = (1, 2)  # (quick, full)
TITLE = "1. Small variable chunks: 1-64 rows of (n, 3) float64 + labels, batch 32, 2 workers"


class SmallChunkFetcher:
    """Picklable fetcher; chunk pools are built lazily in whichever process calls it."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._state: Dict[int, list] = {}

    def __getstate__(self) -> Dict[str, Any]:
        return {"seed": self.seed}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.seed = state["seed"]
        self._state = {}

    def _pool(self, worker_id: int) -> List[List[np.ndarray]]:
        rng = np.random.RandomState(self.seed + worker_id)
        pool = []
        for _ in range(POOL):
            n = int(rng.randint(1, 65))
            labels = np.arange(n, dtype=np.float64) + worker_id
            data = np.repeat(labels[:, None], 3, axis=1)
            pool.append([data, labels])
        return pool

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        state = self._state.get(worker_id)
        if state is None:  # each worker only ever touches its own key
            state = self._state[worker_id] = [self._pool(worker_id), 0]
        pool, i = state
        state[1] = (i + 1) % POOL
        return list(pool[i])


def plan(quick: bool, timing: h.Timing, timeout_s: float) -> List[h.Case]:
    return h.upstream_vs_ours_cases("small_chunks", quick, timing, timeout_s)


def measure(ctx: h.ChildContext) -> h.Result:
    result = h.run_pipeline(
        ctx,
        blobs=["data", "label"],
        fetch_fun=SmallChunkFetcher(),
        batch_size=BATCH,
        num_workers=WORKERS,
        measure=lambda consumer, t0: h.measure_steady(consumer, ctx.timing),
    )
    result["bytes_per_batch"] = BATCH * 3 * 8 + BATCH * 8
    return result


def summarize(results: Sequence[h.Result]) -> h.Summary:
    up = h.find(results, h.UPSTREAM, "2 threads")
    up_rate = h.value(up)
    rows, notes = [], []
    for r in results:
        rate = h.value(r)
        rows.append([
            r["side"], r["label"],
            h.fmt_num(rate) if rate is not None else "failed",
            h.spread(r),
            h.fmt_ratio(h.ratio(rate, up_rate)),
            h.cpu_cell(r),
            h.load_cell(r),
        ])
        for e in ([r["error"]] if "error" in r else []) + r.get("repeat_errors", []):
            notes.append(f"{r['key']}: {e}")
    notes += [n for n in (h.thread_note(r) for r in results) if n]
    ours = h.find(results, h.OURS, "2 threads")
    ours_rate = h.value(ours)
    target = h.Target("small chunks: ours (2 threads) / upstream batches/s",
                      h.ratio(ours_rate, up_rate), 10.0, note=h.noise_note([up, ours]))
    chart = {
        "labels": [f"{r['side']}\n{r['label']}" for r in results],
        "values": [h.value(r) for r in results],
        "kinds": [_kind(r) for r in results],
        "ratio": target.measured,
    }
    return h.Summary(TITLE, ["side", "config", "batches/s", "window min-max", "ours/upstream",
                            "trainer CPU us/batch", "other load"],
                     rows, [target], chart, notes)


def _kind(r: h.Result) -> str:
    if r["side"] == h.UPSTREAM:
        return "upstream"
    return "ours-process" if "process" in r["label"] else "ours"


def plot(ax: Any, s: h.Summary) -> None:
    c = s.chart
    h.bar_panel(ax, c["labels"], c["values"], [h.SIDE_COLORS[k] for k in c["kinds"]],
                "Small variable chunks (batch 32, 2 workers)"
                + (f": {c['ratio']:.1f}x upstream (target 10x)" if c["ratio"] else ""),
                "batches/s (higher is better)")
