"""Profile one benchmark configuration with py-spy and say where the time goes.

Usage::

    .venv/bin/pip install py-spy        # not a project requirement
    .venv/bin/python -m benchmarks.profile small ours "2 threads"
    .venv/bin/python -m benchmarks.profile large upstream "2 threads" --gil
    .venv/bin/python -m benchmarks.profile gil ours "2 processes" --subprocesses

Runs the case exactly as ``benchmarks.run`` does (fresh interpreter, same
parameters, longer windows) under ``py-spy record --threads`` and prints, from
py-spy's collapsed stacks: samples per thread, the functions with the most
self time, and the most inclusive time, each as % of all samples (``--gil``:
only samples where the thread holds the GIL, i.e. what serialises Python
threads). ``--native`` adds C/C++ frames (Caffe2 copies, numpy).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _harness as h  # noqa: E402
from benchmarks import gil_bound  # noqa: E402
from benchmarks.run import WORKLOADS  # noqa: E402

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``: lines merged per function."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m.group("file")
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{m.group('func')} ({short})"


def parse_collapsed(path: str) -> List[Tuple[str, List[str], int]]:
    """py-spy ``--format raw`` lines -> (thread, frames root-first, samples)."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            thread = frames[0]
            out.append((thread, [_short(fr) for fr in frames[1:]], int(count)))
    return out


# Not the pipeline: harness-only work in the child (CPU probe, memcpy reference)
# and module imports (interpreter start-up, lazy imports on first use).
_EXCLUDED = ("cpu_probe (", "memcpy_bandwidth (", "calibrate (", "_find_and_load (")


def drop_harness(stacks: Sequence[Tuple[str, List[str], int]]) -> list:
    kept = [s for s in stacks if not any(fr.startswith(_EXCLUDED) for fr in s[1])]
    dropped = sum(s[2] for s in stacks) - sum(s[2] for s in kept)
    if dropped:
        print(f"({dropped} samples of imports / harness-only work excluded)")
    return kept


def _thread_name(raw: str) -> str:
    # "thread (12687): data_workers bench fetcher 1" / "process 123:..." -> readable
    name = raw.split(": ", 1)[1] if ": " in raw else raw
    return re.sub(r"\d+", "N", name) if "fetcher" in name or "worker" in name else name


def report(stacks: Sequence[Tuple[str, List[str], int]], top: int = 25) -> str:
    total = sum(c for _, _, c in stacks) or 1
    per_thread: "collections.Counter[str]" = collections.Counter()
    self_t: "collections.Counter[str]" = collections.Counter()
    incl: "collections.Counter[str]" = collections.Counter()
    self_by_thread: "Dict[str, collections.Counter[str]]" = collections.defaultdict(
        collections.Counter)
    for thread, frames, c in stacks:
        tname = _thread_name(thread)
        per_thread[tname] += c
        if frames:
            self_t[frames[-1]] += c
            self_by_thread[tname][frames[-1]] += c
        for fr in set(frames):
            incl[fr] += c
    lines = [f"{total} samples"]
    lines.append("\nsamples per thread:")
    for t, c in sorted(per_thread.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {100 * c / total:5.1f}%  {t}")
    lines.append(f"\ntop {top} self time (leaf frame), % of all samples:")
    for fr, c in self_t.most_common(top):
        lines.append(f"  {100 * c / total:5.1f}%  {fr}")
    lines.append(f"\ntop {top} inclusive, % of all samples:")
    for fr, c in incl.most_common(top):
        lines.append(f"  {100 * c / total:5.1f}%  {fr}")
    for t, counter in sorted(self_by_thread.items(), key=lambda kv: -per_thread[kv[0]])[:6]:
        lines.append(f"\n[{t}] top self, % of all samples:")
        for fr, c in counter.most_common(8):
            lines.append(f"  {100 * c / total:5.1f}%  {fr}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=[w for w in WORKLOADS if w != "startup"])
    p.add_argument("side", choices=[h.UPSTREAM, h.OURS])
    p.add_argument("label", help='configuration label as in the tables, e.g. "2 threads"')
    p.add_argument("--ours-module", default=os.environ.get("DW_BENCH_OURS", h.OURS_MODULE))
    p.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    p.add_argument("--native", action="store_true", help="include native frames")
    p.add_argument("--idle", action="store_true",
                   help="also count samples of threads that wait (blocked in a lock or syscall)")
    p.add_argument("--subprocesses", action="store_true", help="also profile worker processes")
    p.add_argument("--rate", type=int, default=250, help="samples per second")
    p.add_argument("--seconds", type=float, default=6.0, help="measured seconds")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--raw", help="keep py-spy's collapsed stacks in this file")
    args = p.parse_args(argv)

    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(pyspy):
        p.error("py-spy not found; `.venv/bin/pip install py-spy`")
    mod = WORKLOADS[args.workload]
    timing = h.Timing(warmup_s=1.0, window_s=0.5, windows=max(1, int(args.seconds / 0.5)))
    if mod is gil_bound:
        cases = mod.plan(False, timing, 120.0, gil_bound.calibrate())
    else:
        cases = mod.plan(False, timing, 120.0)
    match = [c for c in cases if c.side == args.side and c.label == args.label]
    if not match:
        p.error("no such configuration; choose from: "
                + "; ".join(f"{c.side} {c.label!r}" for c in cases))
    case = match[0]
    with tempfile.TemporaryDirectory(prefix="dw_prof_") as tmp:
        spec_path = os.path.join(tmp, "spec.json")
        out_path = os.path.join(tmp, "out.json")
        raw = args.raw or os.path.join(tmp, "stacks.txt")
        with open(spec_path, "w") as f:
            json.dump({"workload": case.workload, "side": case.side, "label": case.label,
                       "params": dict(case.params, dequeue_timeout=30),
                       "module": h.UPSTREAM_MODULE if case.side == h.UPSTREAM
                       else args.ours_module}, f)
        cmd = [pyspy, "record", "-r", str(args.rate), "-f", "raw", "-o", raw, "--threads"]
        cmd += ["--gil"] * args.gil + ["--native"] * args.native + ["--idle"] * args.idle
        cmd += ["--subprocesses"] * args.subprocesses
        cmd += ["--", sys.executable, "-m", "benchmarks._child", spec_path, out_path]
        env = dict(os.environ, PYTHONPATH=h.REPO_ROOT)
        # py-spy has been seen to spin forever on the large-batch workload (the
        # traced child stays stopped): bound the run, then take both down.
        proc = subprocess.Popen(cmd, cwd=h.REPO_ROOT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=args.seconds * 4 + 60)
        except subprocess.TimeoutExpired:
            print("py-spy did not finish in time; killed", file=sys.stderr)
            h._kill_group(proc.pid)
            proc.wait()
        result = {}
        if os.path.exists(out_path):
            with open(out_path) as f:
                result = json.load(f)
        print(f"\n{case.key} under py-spy ({args.rate} Hz"
              f"{', GIL holder only' if args.gil else ''}): ", end="")
        if "batches_per_s" in result:
            print(f"{result['batches_per_s']:,.1f} batches/s (profiling slows it down)")
        else:
            print(result.get("error", "no result"))
        if os.path.exists(raw):
            print(report(drop_harness(parse_collapsed(raw)), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
