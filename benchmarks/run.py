"""Run the benchmark suite: ``data_workers`` vs ``caffe2.python.data_workers``.

Usage::

    .venv/bin/python -m benchmarks.run                 # full run, ~4-6 min on 2 cores
    .venv/bin/python -m benchmarks.run --quick         # smoke run, < 60 s
    .venv/bin/python -m benchmarks.run --out docs      # docs/benchmarks.{json,png}
    .venv/bin/python benchmarks/run.py --only small,gil

Every case runs in a fresh interpreter (upstream and ours never share a process).
Prints one table per workload and the targets with PASS/MISS; writes
``<out>/benchmarks.json`` and ``<out>/benchmarks.png``. A missed target never
changes the exit status; a case that crashed or hung does (status 1), since the
numbers are then incomplete.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
from types import ModuleType
from typing import List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _harness as h  # noqa: E402
from benchmarks import gil_bound, large_batches, small_chunks, startup  # noqa: E402

WORKLOADS = {
    "small": small_chunks,
    "large": large_batches,
    "gil": gil_bound,
    "startup": startup,
}
DEFAULT_OUT = os.path.join(h.REPO_ROOT, "benchmarks", "results")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="data_workers vs caffe2.python.data_workers, side by side in one run.",
    )
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: fewer cases, shorter windows (< 60 s)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="directory for benchmarks.json and benchmarks.png (default: %(default)s)")
    p.add_argument("--only", default=",".join(WORKLOADS),
                   help="comma-separated subset of: " + ", ".join(WORKLOADS))
    p.add_argument("--ours-module", default=os.environ.get("DW_BENCH_OURS", h.OURS_MODULE),
                   help="module measured as 'ours' (default: %(default)s; env DW_BENCH_OURS); "
                        f"'{h.UPSTREAM_MODULE}' runs upstream on both sides, for developing "
                        "the harness")
    p.add_argument("--markdown", action="store_true",
                   help="also print the tables as Markdown (the docs' tables: make docs-tables)")
    p.add_argument("--repeat", type=int, default=None,
                   help="fresh-process repeats per configuration (default: per workload, "
                        "1 with --quick)")
    p.add_argument("--wait-quiet", type=float, default=None, metavar="SECONDS",
                   help="total time the run may spend, before cases (at most 15 s each), "
                        "waiting for other programs to use < 15%% of the CPUs "
                        "(default: 60; 0 with --quick)")
    p.add_argument("--render", metavar="JSON",
                   help="measure nothing: re-render the tables, JSON and chart of an earlier "
                        "run's benchmarks.json into --out")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        p.error(f"--only: unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    args.only = names
    return args


def plan(args: argparse.Namespace, calib: Optional[dict]) -> List[h.Case]:
    timing = h.QUICK_TIMING if args.quick else h.FULL_TIMING
    timeout_s = 25.0 if args.quick else 90.0
    dequeue_timeout = 10 if args.quick else 30
    cases: List[h.Case] = []
    for name in args.only:
        mod = WORKLOADS[name]
        if mod is gil_bound:
            planned = mod.plan(args.quick, timing, timeout_s, calib)
        else:
            planned = mod.plan(args.quick, timing, timeout_s)
        # Repeats interleave configurations (A B C A B C): this VM's CPU speed and
        # memory bandwidth drift over seconds, and alternating spreads the drift.
        repeats = mod.REPEATS[0 if args.quick else 1] if args.repeat is None else args.repeat
        for k in range(repeats):
            cases += [dataclasses.replace(c, params=dict(c.params, dequeue_timeout=dequeue_timeout,
                                                         repeat=k))
                      for c in planned]
    return cases


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def describe(r: h.Result) -> str:
    if "error" in r:
        return "FAILED: " + r["error"].splitlines()[0][:200]
    parts = []
    if "batches_per_s" in r:
        parts.append(f"{r['batches_per_s']:,.1f} batches/s")
    if "gb_per_s" in r:
        parts.append(f"{r['gb_per_s']:.2f} GB/s = {r['fraction_of_memcpy']:.2f}x memcpy "
                     f"({r['memcpy_gb_per_s']:.2f} GB/s)")
    if "first_batch_s" in r:
        parts.append(f"first batch {r['first_batch_s'] * 1e3:.1f} ms")
    if isinstance(r.get("foreign_load"), float) and r["foreign_load"] > h.NOISY_LOAD:
        parts.append(f"other load {100 * r['foreign_load']:.0f}%")
    for flag in ("warning", "leaked_processes", "stop_error"):
        if flag in r:
            parts.append(f"{flag}: {r[flag]}")
    return ", ".join(parts)


Summaries = List[Tuple[str, ModuleType, h.Summary]]


def summarize(only: Sequence[str], results: Sequence[h.Result],
              calib: Optional[dict]) -> Summaries:
    """One summary per workload: its table, targets and chart data (medians over repeats).

    The tables printed, the chart and the Markdown tables in the docs all come from
    these summaries (``benchmarks.doc_tables`` renders the docs' tables from a
    committed ``benchmarks.json`` through this function).
    """
    summaries = []
    for name in only:
        mod = WORKLOADS[name]
        rs = h.merge_repeats(
            [r for r in results if r["workload"] == mod.__name__.rsplit(".", 1)[1]])
        s = mod.summarize(rs, calib) if mod is gil_bound else mod.summarize(rs)
        summaries.append((name, mod, s))
    return summaries


def targets_markdown(summaries: Summaries) -> str:
    """The targets of every workload as one Markdown table ("" when there are none)."""
    targets = [t for _, _, s in summaries for t in s.targets]
    if not targets:
        return ""
    return h.format_markdown(["target", "measured", "goal", "result", "note"],
                             h.targets_table(targets), right=(1, 2))


def markdown_tables(summaries: Summaries) -> str:
    """Every workload's table (titled), then the targets, as Markdown."""
    parts = [f"**{s.title}**\n\n" + h.format_markdown(s.headers, s.rows)
             for _, _, s in summaries]
    targets = targets_markdown(summaries)
    if targets:
        parts.append(targets)
    return "\n\n".join(parts) + "\n"


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def measure(args: argparse.Namespace) -> Tuple[h.Result, List[h.Result], Optional[dict]]:
    """Run every planned case; returns (machine info, case results, GIL calibration)."""
    info = h.machine_info(args.ours_module)
    info["mode"] = "quick" if args.quick else "full"
    load = h.foreign_load(0.5)
    info["other_load_at_start"] = load
    if load is not None and load > h.NOISY_LOAD:
        progress(f"other programs use {100 * load:.0f}% of the CPUs: results will be noisy")
    calib = None
    if "gil" in args.only:
        calib = gil_bound.calibrate()  # robust to load (see calibrate)
        info["gil_calibration"] = calib
        progress(f"calibrated GIL-bound fetcher: {calib['spin_iterations']:,} iterations "
                 f"= {calib['spin_s'] * 1e3:.2f} ms")

    cases = plan(args, calib)
    wait_budget = args.wait_quiet if args.wait_quiet is not None else (0.0 if args.quick else 60.0)
    results: List[h.Result] = []
    with tempfile.TemporaryDirectory(prefix="dw_bench_") as workdir:
        for i, case in enumerate(cases, 1):
            load = None
            if wait_budget > 0:
                t_wait = time.monotonic()
                load = h.wait_quiet(min(15.0, wait_budget))
                wait_budget -= time.monotonic() - t_wait
            if load is not None and load > h.NOISY_LOAD:
                progress(f"       other programs use {100 * load:.0f}% of the CPUs; "
                         "measuring anyway (results marked)")
            r = h.run_case(case, ours_module=args.ours_module, workdir=workdir, index=i)
            results.append(r)
            progress(f"[{i:2d}/{len(cases)}] {case.key:<40} {describe(r)}  ({r['wall_s']:.1f} s)")
    return info, results, calib


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the running case's process group is killed
    # and the scratch directory removed (run_case).
    signal.signal(signal.SIGTERM, _terminate)
    t_begin = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    if args.render:
        with open(args.render) as f:
            old = json.load(f)
        info, results = old["machine"], old["cases"]
        calib = info.get("gil_calibration")
        present = {r["workload"] for r in results}
        args.only = [n for n, m in WORKLOADS.items() if m.__name__.rsplit(".", 1)[1] in present]
        args.ours_module = info["ours_module"]
        elapsed_measuring = old.get("elapsed_s", 0.0)
    else:
        info, results, calib = measure(args)
        elapsed_measuring = time.perf_counter() - t_begin

    summaries = summarize(args.only, results, calib)

    head = (f"data_workers benchmarks ({info['mode']}): ours = {args.ours_module}, "
            f"upstream = {h.UPSTREAM_MODULE}; {info['cpu_count']} cores, {info.get('cpu', '?')}, "
            f"Python {info['python']}, numpy {info['numpy']}")
    print()
    print(head)
    if args.ours_module == h.UPSTREAM_MODULE:
        print("NOTE: 'ours' is upstream here (dev mode); ours-only options are dropped.")
    for _, _, s in summaries:
        print()
        print("== " + s.title)
        print(h.format_table(s.headers, s.rows))
        for n in s.notes:
            print("   " + n)

    targets = [t for _, _, s in summaries for t in s.targets]
    if targets:
        print()
        print("== Targets (ratios measured in this run; reported, never asserted)")
        print(h.format_table(["target", "measured", "goal", "result", "note"],
                             h.targets_table(targets)))

    elapsed = elapsed_measuring
    failed = [r["key"] for r in results if "error" in r]
    doc = {
        "machine": info,
        "elapsed_s": elapsed,
        "targets": [t.as_dict() for t in targets],
        "workloads": {name: s.as_dict() for name, _, s in summaries},
        "markdown": {name: h.format_markdown(s.headers, s.rows) for name, _, s in summaries},
        "cases": results,  # every repeat; the tables use their per-configuration medians
        "failed_cases": failed,
    }
    json_path = os.path.join(args.out, "benchmarks.json")
    h.write_json(json_path, doc)
    written = [json_path]
    if not args.no_chart:
        png = os.path.join(args.out, "benchmarks.png")
        sub = (f"{info['cpu_count']} cores {info.get('cpu', '')}, {info['date_utc']}, "
               f"{info['mode']} run" + (", ours=upstream (dev)" if
                                        args.ours_module == h.UPSTREAM_MODULE else ""))
        h.write_chart([(mod.plot, s) for _, mod, s in summaries], png, sub)
        written.append(png)

    if args.markdown:
        print()
        print(markdown_tables(summaries))
    print()
    print(f"wrote {', '.join(written)}"
          + (f" (re-rendered from {args.render})" if args.render else f" in {elapsed:.0f} s"))
    if failed:
        print(f"{len(failed)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}); the running case was stopped", file=sys.stderr)
        sys.exit(130)
