"""Workload 4: start-up, from ``coord.start()`` to the first batch out of the net.

The net is created before ``start()``; the clock starts right before ``start()``
and stops when the first ``RunNet`` returns (the first batch dequeued), so it
includes starting the workers (spawning processes for ``worker_type="process"``),
the first fetches and the first re-batch + enqueue. Fetcher: the small-chunks one
(1-64 rows per call, batch 32). Each repeat is a fresh interpreter; the table
shows the median over repeats, and ``stop()`` time alongside.
"""

from __future__ import annotations

import time
from typing import Any, List, Sequence

from benchmarks import _harness as h
from benchmarks.small_chunks import SmallChunkFetcher

BATCH = 32
WORKERS = 2
REPEATS = (1, 5)  # (quick, full)
TITLE = "4. Start-up: start() to the first batch in the net (2 workers, batch 32)"
CONFIGS = [
    (h.UPSTREAM, "2 threads", {}),
    (h.OURS, "2 threads", {"worker_type": "thread"}),
    (h.OURS, "2 processes", {"worker_type": "process"}),
]


def plan(quick: bool, timing: h.Timing, timeout_s: float) -> List[h.Case]:
    return [h.Case("startup", side, label, {"timing": timing.__dict__, "dw_kwargs": kwargs},
                   timeout_s)
            for side, label, kwargs in CONFIGS]


def _first_batch(consumer: h.Consumer, t_start: float) -> h.Result:
    consumer.run(1)
    return {"first_batch_s": time.perf_counter() - t_start}


def measure(ctx: h.ChildContext) -> h.Result:
    return h.run_pipeline(
        ctx,
        blobs=["data", "label"],
        fetch_fun=SmallChunkFetcher(),
        batch_size=BATCH,
        num_workers=WORKERS,
        measure=_first_batch,
    )


def summarize(results: Sequence[h.Result]) -> h.Summary:
    """``results`` are merged over repeats (see ``_harness.merge_repeats``)."""
    up = h.find(results, h.UPSTREAM, "2 threads")
    up_first = h.value(up, "first_batch_s")
    rows, notes, values, labels, kinds = [], [], [], [], []
    for r in results:
        good = h.ok(r, "first_batch_s")
        first = r.get("first_batch_s") if good else None
        per = [x * 1e3 for x in r.get("per_repeat", {}).get("first_batch_s", [])]
        rows.append([
            r["side"], r["label"],
            h.fmt_num(_ms(first), 1) if good else "failed",
            f"{min(per):.1f}-{max(per):.1f}" if per else "-",
            h.fmt_num(_ms(r.get("start_call_s")), 1),
            h.fmt_num(_ms(r.get("stop_s")), 1),
            h.fmt_num(_ms(r.get("import_s")), 0),
            f"{r['ok_repeats']}/{r['repeats']}",
            h.fmt_ratio(h.ratio(first, up_first)),
            h.load_cell(r),
        ])
        for e in ([r["error"]] if "error" in r else []) + r.get("repeat_errors", []):
            notes.append(f"{r['key']}: {e}")
        labels.append(f"{r['side']}\n{r['label']}")
        values.append(_ms(first))
        kinds.append("upstream" if r["side"] == h.UPSTREAM
                     else ("ours-process" if "process" in r["label"] else "ours"))
    notes.append("import = GlobalInit + importing the side's module, before start(); "
                 "time ratio: lower is faster")
    chart = {"labels": labels, "values": values, "kinds": kinds}
    return h.Summary(TITLE, ["side", "config", "first batch ms", "repeats min-max",
                             "start() ms", "stop() ms", "import ms", "ok", "time ours/upstream",
                             "other load"],
                     rows, [], chart, notes)


def _ms(x: Any) -> Any:
    return None if x is None else x * 1e3


def plot(ax: Any, s: h.Summary) -> None:
    c = s.chart
    h.bar_panel(ax, c["labels"], c["values"], [h.SIDE_COLORS[k] for k in c["kinds"]],
                "Start-up: start() to first batch (median)", "ms (lower is better)",
                fmt="{:.0f} ms")
