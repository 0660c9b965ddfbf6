"""GIL-heavy preprocessing: Ray Data vs local process (and thread) fetchers.

Every batch of ``BATCH`` rows costs a calibrated amount of pure-Python work (a loop that
holds the GIL), done either

* ``process``: in ``data_workers`` process fetchers (``worker_type="process"``),
* ``thread``: in ``data_workers`` thread fetchers (the GIL-bound baseline),
* ``ray``: in Ray Data tasks (``map_batches``) on a local Ray cluster, consumed through
  ``RayDataSource`` by one fetcher thread,

and a trivial Caffe2 net dequeues the batches. For each per-row cost the script reports:

* the time to the first batch (worker start-up; for Ray, after ``ray.init``),
* the steady rows/s over a window, and the CPU time per row of the whole process tree
  (trainer, workers, Ray's processes), which hardly depends on other load,
* the crossover with local processes on this machine: the number of rows after which
  Ray's total time (``ray.init`` + first batch + rows / rate) beats theirs, or "never"
  when its steady rate is not higher,
* an estimate for a larger Ray cluster: the cores it needs to out-run the two local
  process workers, ``2 x (Ray CPU/row) / (local CPU/row)`` (same per-core speed).

Run (default ~2 minutes on 2 cores)::

    python benchmarks/bench_ray.py [--costs-us 5,50,500,2000] [--window 3] [--json out.json]

Everything stays on this machine: Ray is started on 127.0.0.1 with a small object store
and a temporary folder, and shut down at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BATCH = 64
TASK_S = 0.1
WIDTH = 16
WORKERS = 2


def spin(iterations: int) -> int:
    """Pure-Python busy loop that holds the GIL for its whole duration."""
    x = 0
    for k in range(iterations):
        x = (x * 31 + k) % 1000003
    return x


def _median_us_per_row(iterations: int, reps: int = 9) -> float:
    ids = np.arange(BATCH, dtype=np.int64)
    samples = []
    for _ in range(reps):
        t0 = time.thread_time()  # CPU time: the same whatever else the machine runs
        preprocess(ids, iterations)
        samples.append(time.thread_time() - t0)
    return statistics.median(samples) * 1e6 / BATCH


def calibrate(cost_us: float) -> tuple[int, float]:
    """Iterations per row that make :func:`preprocess` cost ``cost_us`` CPU per row here.

    Returns:
        (iterations per row, measured microseconds per row with them).
    """
    spin(2_000_000)  # let the CPU settle first
    iters = max(1, int(cost_us * 8))
    for _ in range(4):
        measured = _median_us_per_row(iters)
        iters = max(0, int(iters * cost_us / max(measured, 1e-3)))
    return iters, _median_us_per_row(iters)


def preprocess(ids: np.ndarray, iterations_per_row: int) -> tuple[np.ndarray, np.ndarray]:
    """The GIL-heavy step: spin per row, then build float features and labels."""
    for _ in range(len(ids)):
        spin(iterations_per_row)
    feats = (ids[:, None].astype(np.float32) * np.ones((1, WIDTH), np.float32))
    return feats, (ids % 10).astype(np.int32)


class LocalFetcher:
    """Picklable fetcher: each call preprocesses the next ``BATCH`` ids of its worker."""

    def __init__(self, iterations_per_row: int) -> None:
        self.iterations_per_row = iterations_per_row
        self._next: dict[int, int] = {}

    def __call__(self, worker_id: int, batch_size: int) -> list[np.ndarray]:
        start = self._next.get(worker_id, 0)
        self._next[worker_id] = start + batch_size
        ids = np.arange(start, start + batch_size, dtype=np.int64) * 1000 + worker_id
        return list(preprocess(ids, self.iterations_per_row))


def ray_preprocess(batch: dict[str, np.ndarray], iterations_per_row: int) -> dict[str, np.ndarray]:
    feats, labels = preprocess(batch["id"], iterations_per_row)
    return {"data": feats, "label": labels}


def _consume(net_name: str, coord: Any, warmup_s: float, window_s: float) -> dict[str, float]:
    """Start the input, time the first batch, then the steady rate over a window."""
    from caffe2.python import workspace

    t0 = time.monotonic()
    coord.start()
    try:
        workspace.RunNet(net_name)
        first = time.monotonic() - t0
        end_warm = time.monotonic() + warmup_s
        while time.monotonic() < end_warm:
            workspace.RunNet(net_name)
        steps = 0
        cpu0 = _tree_cpu_seconds()
        w0 = time.monotonic()
        while time.monotonic() - w0 < window_s:
            workspace.RunNet(net_name)
            steps += 1
        rate = steps * BATCH / (time.monotonic() - w0)
        cpu_us_per_row = (_tree_cpu_seconds() - cpu0) * 1e6 / (steps * BATCH)
    finally:
        coord.stop()
    return {"first_batch_s": first, "rows_per_s": rate, "cpu_us_per_row": cpu_us_per_row}


def _tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and all its descendants (Ray included).

    Unlike rows/s, CPU per row hardly depends on what else the machine is running.
    """
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:  # exited meanwhile
            continue
        total += t.user + t.system
    return total


def run_local(kind: str, iterations_per_row: int, warmup_s: float, window_s: float) -> dict[str, float]:
    from caffe2.python import core, workspace

    import data_workers

    workspace.ResetWorkspace()
    net = core.Net(f"bench_{kind}")
    coord = data_workers.init_data_input_workers(
        net, ["data", "label"], LocalFetcher(iterations_per_row), BATCH,
        num_worker_threads=WORKERS, input_source_name=f"bench_{kind}",
        max_buffered_batches=16, timeout=120, worker_type=kind,
    )
    workspace.CreateNet(net, overwrite=True)
    return _consume(net.Proto().name, coord, warmup_s, window_s)


def run_ray(
    ray: Any, iterations_per_row: int, cost_us: float, warmup_s: float, window_s: float
) -> dict[str, float]:
    from caffe2.python import core, workspace

    from data_workers.ray_source import RayDataSource

    workspace.ResetWorkspace()
    # Each block is one Ray task. Blocks of ~TASK_S of work keep the per-task overhead
    # small without delaying the first batch by much; enough rows for the whole run at
    # the best possible rate.
    cpus = os.cpu_count() or 2
    block_rows = max(BATCH, int(TASK_S * 1e6 / max(cost_us, 1.0)) // BATCH * BATCH)
    best_rate = cpus * 1e6 / max(cost_us, 1.0)
    blocks = max(16, int(best_rate * (warmup_s + window_s + 10) * 2) // block_rows)
    ds = ray.data.range(blocks * block_rows, override_num_blocks=blocks).map_batches(
        ray_preprocess, batch_size=block_rows, fn_kwargs={"iterations_per_row": iterations_per_row}
    )
    source = RayDataSource(ds, ["data", "label"], batch_size=BATCH, prefetch_batches=4)
    net = core.Net("bench_ray")
    coord = source.attach(net, ["data", "label"], input_source_name="bench_ray",
                          max_buffered_batches=16, timeout=120)
    workspace.CreateNet(net, overwrite=True)
    try:
        return _consume(net.Proto().name, coord, warmup_s, window_s)
    finally:
        source.close()


def start_ray(temp_dir: str) -> tuple[Any, float]:
    import ray
    import ray.data

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    t0 = time.monotonic()
    ray.init(
        address="local", num_cpus=os.cpu_count() or 2, object_store_memory=256 * 1024 * 1024,
        include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp_dir,
        log_to_driver=False, configure_logging=False,
        # Process workers run at the trainer's priority; Ray's default is nice 15
        # (docs/ray.md): the same priority for both, or the trainer's own CPU use
        # would count against Ray alone.
        _system_config={"worker_niceness": 0},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray, time.monotonic() - t0


def crossover_rows(a: dict[str, float], b: dict[str, float], b_extra_s: float) -> float | None:
    """Rows after which ``b`` (with ``b_extra_s`` more start-up) finishes before ``a``.

    Total time is ``first_batch_s (+ extra) + rows / rows_per_s``; None if ``b`` never
    catches up (its steady rate is not higher).
    """
    ra, rb = a["rows_per_s"], b["rows_per_s"]
    if rb <= ra:
        return None
    gap = (b["first_batch_s"] + b_extra_s) - a["first_batch_s"]
    return max(0.0, gap / (1.0 / ra - 1.0 / rb))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--costs-us", default="5,50,500,2000",
                   help="pure-Python CPU work per row, microseconds (comma-separated)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    p.add_argument("--window", type=float, default=3.0, help="measurement window, seconds")
    p.add_argument("--kinds", default="thread,process,ray")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from caffe2.python import workspace

    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    costs = [float(c) for c in args.costs_us.split(",")]
    kinds = args.kinds.split(",")
    results: dict[str, Any] = {
        "cpus": os.cpu_count(), "batch": BATCH, "workers": WORKERS, "cases": [],
    }
    results["loadavg_start"] = os.getloadavg()
    print(f"{os.cpu_count()} CPUs; batch {BATCH} rows; {WORKERS} local workers; "
          f"Ray with num_cpus={os.cpu_count()}; load average {os.getloadavg()[0]:.1f} "
          "(other work on the machine skews every figure)")

    ray_mod, ray_init_s = None, 0.0
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as temp:
        if "ray" in kinds:
            ray_mod, ray_init_s = start_ray(temp)
            results["ray_init_s"] = ray_init_s
            print(f"ray.init (local cluster): {ray_init_s:.2f} s")
        try:
            for cost in costs:
                iters, measured = calibrate(cost)
                row: dict[str, Any] = {
                    "cost_us_per_row": cost, "measured_us_per_row": measured,
                    "iterations_per_row": iters,
                }
                runners: dict[str, Callable[[], dict[str, float]]] = {
                    "thread": lambda: run_local("thread", iters, args.warmup, args.window),
                    "process": lambda: run_local("process", iters, args.warmup, args.window),
                    "ray": lambda: run_ray(ray_mod, iters, cost, args.warmup, args.window),
                }
                for kind in kinds:
                    row[kind] = runners[kind]()
                    print(f"  cost {measured:7.1f} us/row  {kind:8s} first batch "
                          f"{row[kind]['first_batch_s']:6.2f} s   steady "
                          f"{row[kind]['rows_per_s']:9.0f} rows/s   CPU "
                          f"{row[kind]['cpu_us_per_row']:8.1f} us/row", flush=True)
                if "process" in row and "ray" in row:
                    # CPU per row does not depend on contention: the extra CPU Ray spends
                    # per row, and how many cores a Ray cluster needs to out-run the
                    # local process workers (same per-core speed assumed).
                    cp, cr = row["process"]["cpu_us_per_row"], row["ray"]["cpu_us_per_row"]
                    row["ray_cpu_overhead_us_per_row"] = cr - cp
                    row["ray_cores_to_match_local"] = WORKERS * cr / cp
                    print(f"  -> Ray spends {cr - cp:+.1f} us CPU/row vs local processes; "
                          f"a Ray cluster needs > {WORKERS * cr / cp:.1f} cores to out-run "
                          f"{WORKERS} local process workers", flush=True)
                    x = crossover_rows(row["process"], row["ray"], ray_init_s)
                    row["ray_beats_process_after_rows"] = x
                    ideal = 1e6 / measured
                    print(f"  -> ray/process steady ratio "
                          f"{row['ray']['rows_per_s'] / row['process']['rows_per_s']:.2f}; "
                          f"one core's ideal {ideal:,.0f} rows/s; ray ahead after: "
                          f"{'never' if x is None else f'{x:,.0f} rows'}", flush=True)
                results["cases"].append(row)
        finally:
            if ray_mod is not None:
                ray_mod.shutdown()
    results["loadavg_end"] = os.getloadavg()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
