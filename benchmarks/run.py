"""Run the benchmark suite: ours against upstream, and against our peers.

Usage::

    .venv/bin/python -m benchmarks.run                 # everything, ~12 min on 2 cores
    .venv/bin/python -m benchmarks.run --quick         # smoke run of everything, ~2-3 min
    .venv/bin/python -m benchmarks.run --out docs      # what `make bench` runs
    .venv/bin/python -m benchmarks.run --only peers    # one suite (or workload)
    .venv/bin/python benchmarks/run.py --only small,gil
    .venv/bin/python -m benchmarks.run --render docs --out docs   # redraw, measure nothing

Three suites, each case in a fresh interpreter, each written to ``--out``:

    small, large,   data_workers vs caffe2.python.data_workers, side by side
    gil, startup    (one case = one interpreter; see _harness.py)
                    -> benchmarks.json, benchmarks.png
    peers           our process and thread workers vs torch's DataLoader + FeedBlob,
                    three workloads (peers.py; one case = one interpreter)
                    -> peers.json, peers.png
    torch           data_workers.torch.Loader vs DataLoader (torch_loader.py; the
                    whole run in one fresh interpreter, both sides alternating)
                    -> torch_loader.json

Prints every suite's tables (and the targets with PASS/MISS). A missed target never
changes the exit status; a case that crashed or hung does (status 1), since the
numbers are then incomplete. ``benchmarks.doc_tables`` renders the docs' tables from
the JSON files (``make bench`` runs it after this).
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
from typing import Any, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _harness as h  # noqa: E402
from benchmarks import gil_bound, large_batches, peers, small_chunks, startup  # noqa: E402

#: The upstream-vs-ours workloads (benchmarks.json, benchmarks.png).
WORKLOADS = {
    "small": small_chunks,
    "large": large_batches,
    "gil": gil_bound,
    "startup": startup,
}
#: The suites against peers, each with its own JSON file.
SUITES = {"peers": "peers.json", "torch": "torch_loader.json"}
#: The torch suite run on the modern leg (.venv311: torch 2.x), beside the Caffe2
#: leg's torch_loader.json (torch 1.10.2); docs/torch.md shows the two side by side.
TORCH2_JSON = "torch_loader_torch2.json"
CHOICES = list(WORKLOADS) + list(SUITES)
DEFAULT_OUT = os.path.join(h.REPO_ROOT, "benchmarks", "results")
TORCH_TIMEOUT_S = (300.0, 900.0)  # (quick, full): the whole torch_loader run


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="data_workers vs caffe2.python.data_workers, and vs torch's DataLoader.",
    )
    p.add_argument("--quick", action="store_true",
                   help="smoke mode: fewer cases, fewer repeats, shorter windows")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help="directory for the JSON files and charts (default: %(default)s)")
    p.add_argument("--only", default=",".join(CHOICES),
                   help="comma-separated subset of: " + ", ".join(CHOICES)
                        + " (upstream-vs-ours workloads, then the suites against peers); "
                        "peers.WORKLOAD selects one of " + ", ".join(peers.CASES))
    p.add_argument("--ours-module", default=os.environ.get("DW_BENCH_OURS", h.OURS_MODULE),
                   help="module measured as 'ours' against upstream (default: %(default)s; "
                        f"env DW_BENCH_OURS); '{h.UPSTREAM_MODULE}' runs upstream on both "
                        "sides, for developing the harness")
    p.add_argument("--markdown", action="store_true",
                   help="also print the upstream tables as Markdown (the docs' tables: "
                        "make docs-tables)")
    p.add_argument("--repeat", type=int, default=None,
                   help="fresh-process repeats per configuration (default: per workload, "
                        "fewer with --quick)")
    p.add_argument("--window", type=float, default=None, metavar="SECONDS",
                   help="every measurement window this long (default: per suite)")
    p.add_argument("--warmup", type=float, default=None, metavar="SECONDS",
                   help="every warm-up this long (default: per suite)")
    p.add_argument("--wait-quiet", type=float, default=None, metavar="SECONDS",
                   help="total time the run may spend, before cases (at most 15 s each), "
                        "waiting for other programs to use < 15%% of the CPUs "
                        "(default: 60; 0 with --quick)")
    p.add_argument("--render", metavar="PATH",
                   help="measure nothing: re-render the tables, JSON and charts of an earlier "
                        "run into --out; PATH is its directory or one of its JSON files")
    p.add_argument("--no-chart", action="store_true", help="skip the PNGs")
    p.add_argument("--torch-json", default=SUITES["torch"], metavar="NAME",
                   help="file name of the torch suite's JSON in --out (make bench writes the "
                        "modern leg's run, torch 2.x, as %s)" % TORCH2_JSON)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    peer_names = [f"peers.{w}" for w in peers.CASES]
    unknown = [n for n in names if n not in CHOICES and n not in peer_names]
    if unknown:
        p.error(f"--only: unknown workload(s) {unknown}; choose from {CHOICES + peer_names}")
    chosen = [n.split(".", 1)[1] for n in names if n in peer_names]
    args.peer_workloads = list(peers.CASES) if "peers" in names or not chosen else \
        [w for w in peers.CASES if w in chosen]
    selected = set(names) | ({"peers"} if chosen else set())
    args.only = [n for n in CHOICES if n in selected]  # in the order they run
    for opt in ("repeat", "window", "warmup"):
        v = getattr(args, opt)
        if v is not None and not v > 0:
            p.error(f"--{opt} must be > 0, got {v}")
    return args


def plan(args: argparse.Namespace, calib: Optional[dict]) -> List[h.Case]:
    timing = h.QUICK_TIMING if args.quick else h.FULL_TIMING
    timeout_s = 25.0 if args.quick else 90.0
    dequeue_timeout = 10 if args.quick else 30
    cases: List[h.Case] = []
    overrides = {k: v for k, v in (("window_s", args.window), ("warmup_s", args.warmup))
                 if v is not None}
    for name in args.only:
        if name not in WORKLOADS:
            continue
        mod = WORKLOADS[name]
        if mod is gil_bound:
            planned = mod.plan(args.quick, timing, timeout_s, calib)
        else:
            planned = mod.plan(args.quick, timing, timeout_s)
        planned = [dataclasses.replace(c, params=dict(
            c.params, timing=dict(c.params["timing"], **overrides))) for c in planned]
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


class QuietGate:
    """Before each case: wait (at most 15 s, and ``budget_s`` over the whole run) for
    other programs to use < 15% of the CPUs. Every suite of one run shares the budget."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s

    def __call__(self) -> Optional[float]:
        """Waits; returns the last load seen (None when the budget is spent)."""
        if self.budget_s <= 0:
            return None
        t_wait = time.monotonic()
        load = h.wait_quiet(min(15.0, self.budget_s))
        self.budget_s -= time.monotonic() - t_wait
        if load is not None and load > h.NOISY_LOAD:
            progress(f"       other programs use {100 * load:.0f}% of the CPUs; "
                     "measuring anyway")
        return load


def measure(args: argparse.Namespace,
            gate: QuietGate) -> Tuple[h.Result, List[h.Result], Optional[dict]]:
    """Run every planned upstream-vs-ours case; returns (machine info, case results,
    GIL calibration)."""
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
    results: List[h.Result] = []
    with tempfile.TemporaryDirectory(prefix="dw_bench_") as workdir:
        for i, case in enumerate(cases, 1):
            gate()
            r = h.run_case(case, ours_module=args.ours_module, workdir=workdir, index=i)
            results.append(r)
            progress(f"[{i:2d}/{len(cases)}] {case.key:<40} {describe(r)}  ({r['wall_s']:.1f} s)")
    return info, results, calib


def report_upstream(args: argparse.Namespace, only: Sequence[str], info: h.Result,
                    results: List[h.Result], calib: Optional[dict], elapsed: float) -> int:
    """Print the upstream-vs-ours tables; write benchmarks.json (and .png) into --out.

    Returns:
        1 if a case failed, else 0.
    """
    summaries = summarize(only, results, calib)
    ours_module = info["ours_module"]
    head = (f"data_workers benchmarks ({info['mode']}): ours = {ours_module}, "
            f"upstream = {h.UPSTREAM_MODULE}; {info['cpu_count']} cores, {info.get('cpu', '?')}, "
            f"Python {info['python']}, numpy {info['numpy']}")
    print()
    print(head)
    if ours_module == h.UPSTREAM_MODULE:
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
                                        ours_module == h.UPSTREAM_MODULE else ""))
        h.write_chart([(mod.plot, s) for _, mod, s in summaries], png, sub)
        written.append(png)

    if args.markdown:
        print()
        print(markdown_tables(summaries))
    print()
    print(f"wrote {', '.join(written)}")
    if failed:
        progress(f"{len(failed)} upstream-vs-ours case(s) failed: {', '.join(failed)}")
        return 1
    return 0


def report_peers(args: argparse.Namespace, doc: Dict[str, Any],
                 source: Optional[str] = None) -> int:
    """Print the peers tables; write peers.json (unless it is ``source``) and peers.png
    into --out.

    Returns:
        1 if a case failed, else 0.
    """
    print()
    print("== Process workers against their peers (batches/s and trainer CPU per batch)")
    print(peers.markdown(doc))
    written = [_write_doc(args.out, SUITES["peers"], doc, source)]
    if not args.no_chart:
        png = os.path.join(args.out, "peers.png")
        peers.write_chart(doc, png)
        written.append(png)
    print(f"wrote {', '.join(written)}")
    failed = peers.failed_cases(doc["results"])
    if failed:
        progress(f"{len(failed)} peers case(s) failed: {', '.join(failed)}")
        return 1
    return 0


def report_torch(args: argparse.Namespace, doc: Dict[str, Any],
                 source: Optional[str] = None) -> int:
    """Print the torch Loader table; write torch_loader.json (unless it is ``source``)
    into --out."""
    from benchmarks import torch_loader

    print()
    print("== data_workers.torch.Loader against torch.utils.data.DataLoader")
    print(torch_loader.markdown(doc))
    print(f"wrote {_write_doc(args.out, args.torch_json, doc, source)}")
    return 0


def _write_doc(out: str, name: str, doc: Dict[str, Any], source: Optional[str] = None) -> str:
    """Write ``doc`` as ``out/name``, unless it is ``source`` itself (a re-render in place)."""
    path = os.path.join(out, name)
    if source is None or not (os.path.exists(path) and os.path.samefile(source, path)):
        h.write_json(path, doc)
    return path


def run_torch(args: argparse.Namespace, gate: QuietGate) -> Optional[Dict[str, Any]]:
    """The torch Loader benchmark, whole, in one fresh interpreter (its own discipline:
    both sides alternate in one process). Returns its document, None if it failed."""
    cmd = ["-m", "benchmarks.torch_loader"]
    if args.quick:
        cmd.append("--quick")
    for opt, v in (("--repeats", args.repeat), ("--window", args.window),
                   ("--warmup", args.warmup)):
        if v is not None:
            cmd += [opt, str(v)]
    timeout_s = TORCH_TIMEOUT_S[0 if args.quick else 1]
    gate()
    progress(f"torch: Loader vs DataLoader in one interpreter ({' '.join(cmd[1:])})")
    with tempfile.TemporaryDirectory(prefix="dw_torch_") as workdir:
        json_path, log_path = os.path.join(workdir, "out.json"), os.path.join(workdir, "log")
        t0 = time.monotonic()
        proc, timed_out = h.run_isolated(cmd + ["--json", json_path], log_path=log_path,
                                         timeout_s=timeout_s)
        leaked = not timed_out and h.reap_leftovers(proc.pid)
        if timed_out or proc.returncode != 0 or not os.path.exists(json_path):
            why = f"timed out after {timeout_s:.0f} s" if timed_out \
                else f"exited with status {proc.returncode}"
            progress(f"torch: FAILED ({why}); its output ends with:\n{h.log_tail(log_path)}")
            return None
        with open(json_path) as f:
            doc: Dict[str, Any] = json.load(f)
    if leaked:
        doc["leaked_processes"] = True
        progress("torch: processes outlived the run (killed)")
    progress(f"torch: done ({time.monotonic() - t0:.1f} s)")
    return doc


def doc_kind(doc: Dict[str, Any]) -> str:
    """Which suite wrote a JSON document: a key of ``SUITES``, or ``"upstream"``."""
    if "cases" in doc:
        return "upstream"
    if "results" in doc:
        return "peers"
    if "settings" in doc and "workloads" in doc:
        return "torch"
    raise SystemExit("--render: not a benchmarks.json, peers.json or torch_loader.json")


def render(args: argparse.Namespace) -> int:
    """``--render PATH``: every selected suite's earlier run, re-rendered into --out."""
    if os.path.isdir(args.render):
        paths = [os.path.join(args.render, n) for n in ["benchmarks.json", *SUITES.values()]]
        paths = [p for p in paths if os.path.exists(p)]
    else:
        paths = [args.render]
    status, rendered = 0, []
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        kind = doc_kind(doc)
        if kind == "upstream":
            present = {r["workload"] for r in doc["cases"]}
            only = [n for n, m in WORKLOADS.items()
                    if m.__name__.rsplit(".", 1)[1] in present and n in args.only]
            if not only:
                continue
            info = doc["machine"]
            status |= report_upstream(args, only, info, doc["cases"],
                                      info.get("gil_calibration"), doc.get("elapsed_s", 0.0))
        elif kind not in args.only:
            continue
        elif kind == "peers":
            status |= report_peers(args, doc, source=path)
        else:
            status |= report_torch(args, doc, source=path)
        rendered.append(path)
    if not rendered:
        raise SystemExit(f"--render: nothing selected by --only in {args.render}")
    print(f"(re-rendered from {', '.join(rendered)}; nothing measured)")
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the running case's process group is killed
    # and the scratch directory removed (run_isolated).
    signal.signal(signal.SIGTERM, _terminate)
    os.makedirs(args.out, exist_ok=True)
    if args.render:
        return render(args)

    t_begin = time.monotonic()
    gate = QuietGate(args.wait_quiet if args.wait_quiet is not None
                     else (0.0 if args.quick else 60.0))
    status = 0
    upstream = [n for n in args.only if n in WORKLOADS]
    if upstream:
        t0 = time.monotonic()
        info, results, calib = measure(args, gate)
        status |= report_upstream(args, upstream, info, results, calib, time.monotonic() - t0)
    if "peers" in args.only:
        timing = peers.QUICK_TIMING if args.quick else peers.FULL_TIMING
        timing = dataclasses.replace(timing, **{k: v for k, v in (
            ("repeats", args.repeat), ("window_s", args.window), ("warmup_s", args.warmup))
            if v is not None})
        doc = peers.run(timing, workloads=args.peer_workloads,
                        mode="quick" if args.quick else "full", log=progress, before_case=gate)
        status |= report_peers(args, doc)
    if "torch" in args.only:
        torch_doc = run_torch(args, gate)
        status |= 1 if torch_doc is None else report_torch(args, torch_doc)
    print()
    print(f"{', '.join(args.only)}: {time.monotonic() - t_begin:.0f} s"
          + (" (some cases failed)" if status else ""))
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}); the running case was stopped", file=sys.stderr)
        sys.exit(130)
