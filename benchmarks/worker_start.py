"""Process workers' start-up and memory, for a training script that imports Caffe2.

Each repeat runs ``benchmarks/worker_start_script.py`` (imports Caffe2 and numpy,
defines its fetcher in ``__main__``) in a fresh interpreter with ``--workers``
process workers, and reports:

- first batch: ``coordinator.start()`` to the first batch out of the net, and
  beside it torch's ``DataLoader`` (same fetcher and worker count, default start
  method) from ``iter(loader)`` to its first batch, in a fresh interpreter of
  the same repeat, and the ratio of the two (goal: at most 3x); and our
  ``torch.Loader``'s first batch (process workers) in a third interpreter;
- every worker: ``start()`` until every worker's first batch came out of the net;
- worker RSS and USS (private pages: ``Private_*`` of ``/proc/PID/smaps_rollup``),
  summed over the workers, read then.

The trainer imports torch on a thread of its own at its first batch (batches are
copied, not lent, until it is imported); ``--torch-first`` imports it before the
clock starts, so that the first batch measures the workers' start-up alone.

Median and min-max over repeats; "other load" is the share of the CPUs other
programs used just before each repeat (the harness's ``foreign_load``).  Standalone,
not part of ``benchmarks.run``::

    python -m benchmarks.worker_start                      # 7 repeats, 4 workers: ~30 s
    python -m benchmarks.worker_start --torch-first
    python -m benchmarks.worker_start --start-method fork  # our workers forked
    python -m benchmarks.worker_start --repeats 1 --json out.json

The ``data_workers`` measured is this checkout's, unless ``PYTHONPATH`` names another
one: ``PYTHONPATH=/path/to/other/checkout python -m benchmarks.worker_start`` measures
that version with the same script (the output says which one ran).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # `python benchmarks/worker_start.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _harness as h  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker_start_script.py")
MB = 1 << 20


def run_once(workers: int, torch_first: bool, timeout_s: float,
             start_method: str = "spawn") -> Dict[str, Any]:
    """The script in a fresh interpreter, then its DataLoader mode in another: one record."""
    load = h.foreign_load(0.5)
    ours = ["fork"] if start_method == "fork" else []
    record = _run_script(workers, (["torch-first"] if torch_first else []) + ours, timeout_s)
    record.update(_run_script(workers, ["dataloader"], timeout_s))
    record.update(_run_script(workers, ["loader"] + ours, timeout_s))
    record["foreign_load"] = load
    return record


def _run_script(workers: int, mode: List[str], timeout_s: float) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="dw_worker_start_") as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, SCRIPT, str(workers), out] + mode
        # This checkout's data_workers, unless PYTHONPATH names another one first.
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), h.REPO_ROOT) if p)
        result = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                                timeout=timeout_s)
        if result.returncode != 0 or not os.path.exists(out):
            raise RuntimeError("%s failed with exit status %d:\n%s"
                               % (SCRIPT, result.returncode, result.stderr[-3000:]))
        with open(out, encoding="utf-8") as f:
            record: Dict[str, Any] = json.load(f)
    return record


def _stat(values: Sequence[float], scale: float, digits: int) -> str:
    scaled = [v / scale for v in values]
    return "%.*f (%.*f-%.*f)" % (digits, statistics.median(scaled), digits, min(scaled),
                                 digits, max(scaled))


def summarize(records: Sequence[Dict[str, Any]]) -> List[List[str]]:
    first = [r["first_batch_s"] for r in records]
    rss = [sum(r["worker_rss"]) for r in records]
    uss = [sum(r["worker_uss"]) for r in records]
    per_rss = [v for r in records for v in r["worker_rss"]]
    per_uss = [v for r in records for v in r["worker_uss"]]
    loads = [r["foreign_load"] for r in records if isinstance(r.get("foreign_load"), float)]
    return [
        ["first batch, ms", _stat(first, 1e-3, 0)],
        ["DataLoader first batch, ms",
         _stat([r["dataloader_first_batch_s"] for r in records], 1e-3, 0)],
        ["first batch / DataLoader's (same repeat)",
         _stat([r["first_batch_s"] / r["dataloader_first_batch_s"] for r in records], 1, 1)],
        ["torch.Loader first batch, ms",
         _stat([r["loader_first_batch_s"] for r in records], 1e-3, 0)],
        ["every worker's first batch, ms", _stat([r["every_worker_s"] for r in records], 1e-3, 0)],
        ["start() call, ms", _stat([r["start_call_s"] for r in records], 1e-3, 0)],
        ["workers' RSS, total MB", _stat(rss, MB, 0)],
        ["workers' USS, total MB", _stat(uss, MB, 0)],
        ["RSS per worker, MB", _stat(per_rss, MB, 1)],
        ["USS per worker, MB", _stat(per_uss, MB, 1)],
        ["trainer RSS, MB", _stat([r["trainer_rss"] for r in records], MB, 0)],
        ["other load", "-" if not loads else "%.0f%% (%.0f-%.0f%%)" % (
            100 * statistics.median(loads), 100 * min(loads), 100 * max(loads))],
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worker_start",
                                description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="fresh interpreters (default: 7)")
    p.add_argument("--workers", type=int, default=4, help="process workers (default: 4)")
    p.add_argument("--torch-first", action="store_true",
                   help="import torch in the trainer before the clock starts")
    p.add_argument("--start-method", choices=("spawn", "fork"), default="spawn",
                   help="how our process workers start (default: spawn)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per repeat")
    p.add_argument("--json", metavar="PATH", help="also write every repeat's record here")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.workers < 1:
        p.error("--repeats and --workers must be at least 1")
    records = [run_once(args.workers, args.torch_first, args.timeout, args.start_method)
               for _ in range(args.repeats)]
    print("%d process workers (start_method=%r), %d repeats%s, data_workers from %s"
          % (args.workers, args.start_method, args.repeats,
             ", torch imported first" if args.torch_first else "", records[0]["data_workers"]))
    print("median (min-max)")
    print(h.format_table(["measure", "value"], summarize(records)))
    if args.json:
        h.write_json(args.json, {"machine": h.machine_info(h.OURS_MODULE), "records": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
