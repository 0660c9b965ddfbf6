"""Process workers against their peers: our threads and torch's DataLoader.

Three workloads, each case in a fresh interpreter, repeated, in one run::

    one_sample   fetch_fun returns ONE row per call ([1 x 64 float32, int32 label]),
                 batch 32, 2 workers
    gil_bound    ~10 ms of pure Python per call, then one whole batch
                 (32 x 16 float32 + labels), 2 workers
    big_batches  one 32x3x224x224 float32 batch per call (19.3 MB, made once
                 per worker), 2 workers

Cases: ``ours-process`` and ``ours-thread`` (``init_data_input_workers``, the
net dequeues each batch) and ``dataloader`` (``torch.utils.data.DataLoader``
with 2 worker processes; each batch is fed with ``FeedBlob`` and the same net
runs, as a Caffe2 script using DataLoader would).  For ``gil_bound`` the
compute limit is measured too: 2 cores x one uncontended fetcher's rate.

Reported per case: batches/s (median, min-max over repeats) and the trainer
process's own CPU time per batch (workers excluded).  Ratios are of medians.

    python -m benchmarks.peers            # 3 repeats x 4 s windows
    python -m benchmarks.peers --quick    # 2 repeats x 1.5 s windows
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List

import numpy as np

WORKERS = 2
BATCH = 32
SPIN_SECS = 0.010
BIG_SHAPE = (BATCH, 3, 224, 224)
WARMUP_SECS = 3.0


def spin(iterations: int) -> int:
    """Pure Python, holding the GIL throughout."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def spin_iterations(target: float = SPIN_SECS) -> int:
    n = 20000
    for _ in range(5):
        t0 = time.perf_counter()
        spin(n)
        n = max(1000, int(n * target / (time.perf_counter() - t0)))
    return n


class OneSample:
    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        return [np.random.rand(1, 64).astype(np.float32), np.zeros((1,), np.int32)]


class GilBound:
    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.batch = [np.random.rand(BATCH, 16).astype(np.float32), np.zeros((BATCH,), np.int32)]

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        spin(self.iterations)
        return self.batch


class BigBatch:
    def __init__(self) -> None:
        self.batch: List[np.ndarray] = []

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        if not self.batch:
            rng = np.random.RandomState(worker_id)
            self.batch = [rng.standard_normal(BIG_SHAPE).astype(np.float32),
                          rng.randint(0, 1000, size=BATCH).astype(np.int32)]
        return self.batch


def _fetcher(workload: str, iterations: int) -> Any:
    if workload == "one_sample":
        return OneSample()
    if workload == "gil_bound":
        return GilBound(iterations)
    return BigBatch()


class _Dataset:
    """The same work as a map-style torch Dataset (``batch_size=None`` for whole batches)."""

    def __init__(self, workload: str, iterations: int) -> None:
        self.fetch = _fetcher(workload, iterations)

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int) -> Any:
        arrays = self.fetch(0, BATCH)
        if isinstance(self.fetch, OneSample):
            return arrays[0][0], arrays[1][0]
        return arrays[0], arrays[1]


def _measure(step: Any, secs: float) -> Dict[str, float]:
    # Warm-up: workers start, and the first uncopied batch imports torch (about
    # a second) while the workers run ahead; measuring then would count that
    # backlog draining.  Three seconds, and the buffers are back to steady state.
    deadline = time.monotonic() + WARMUP_SECS
    while time.monotonic() < deadline:
        step()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < secs:
        step()
        n += 1
    wall = time.monotonic() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {"batches_per_s": n / wall, "trainer_cpu_ms_per_batch": 1e3 * cpu / max(n, 1)}


def run_case(workload: str, case: str, secs: float, iterations: int) -> Dict[str, float]:
    """Runs in a child interpreter (see ``main``)."""
    from caffe2.python import core, workspace

    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    if case == "compute_limit":
        fetch = GilBound(iterations)
        t0, n = time.monotonic(), 0
        while time.monotonic() - t0 < secs:
            fetch(0, BATCH)
            n += 1
        return {"batches_per_s": WORKERS * n / (time.monotonic() - t0),
                "trainer_cpu_ms_per_batch": float("nan")}
    net = core.Net("consumer")
    if case == "dataloader":
        import torch.utils.data

        loader = torch.utils.data.DataLoader(
            _Dataset(workload, iterations), num_workers=WORKERS,
            batch_size=BATCH if workload == "one_sample" else None, prefetch_factor=4)
        batches = iter(loader)
        workspace.CreateNet(net)  # empty: the loop feeds the blobs the net would read

        def step() -> None:
            data, label = next(batches)
            workspace.FeedBlob("data", data.numpy())
            workspace.FeedBlob("label", label.numpy())
            workspace.RunNet(net.Proto().name)

        try:
            return _measure(step, secs)
        finally:
            del batches
    import data_workers

    coord = data_workers.init_data_input_workers(
        net, ["data", "label"], _fetcher(workload, iterations), BATCH,
        num_worker_threads=WORKERS, worker_type=case.split("-")[1], timeout=60,
        max_buffered_batches=8 if workload == "big_batches" else 800)
    workspace.CreateNet(net)  # the dequeue alone: what the pipeline costs the trainer
    coord.start()
    try:
        return _measure(lambda: workspace.RunNet(net.Proto().name), secs)
    finally:
        coord.stop()


CASES = {
    "one_sample": ["ours-process", "ours-thread", "dataloader"],
    "gil_bound": ["ours-process", "ours-thread", "dataloader", "compute_limit"],
    "big_batches": ["ours-process", "ours-thread", "dataloader"],
}


def _child(workload: str, case: str, secs: float, iterations: int) -> Dict[str, float]:
    code = ("import json, sys; from benchmarks.peers import run_case; "
            "print(json.dumps(run_case(%r, %r, %r, %r)))" % (workload, case, secs, iterations))
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, timeout=300, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))


def _spread(values: List[float]) -> str:
    return "%.0f (%.0f-%.0f)" % (statistics.median(values), min(values), max(values))


#: Trainer CPU per big batch with process workers, the issue's goal.
CPU_GOAL_MS = 0.2
#: Goals from the process-workers issue: (workload, numerator, denominator, goal).
GOALS = [
    ("one_sample", "ours-process", "dataloader", 1.5),
    ("gil_bound", "ours-process", "dataloader", 1.5),
    ("big_batches", "ours-process", "dataloader", 1.5),
    ("one_sample", "ours-process", "ours-thread", 0.8),
    ("big_batches", "ours-process", "ours-thread", 0.9),
    ("gil_bound", "ours-process", "compute_limit", 0.8),
]


def markdown(doc: Dict[str, Any], tables: bool = True) -> str:
    """One run (``--json`` output): its tables per workload (if ``tables``), then the goals."""
    results = doc["results"]
    parts = ["Run of %s: %d fresh-interpreter repeats of %.1f s windows per case, "
             "interleaved; %s." % (doc.get("date_utc", "?"), doc["repeats"], doc["window_secs"],
                                   doc.get("machine", "?"))]
    for workload, cases in (results.items() if tables else ()):
        rows = ["| case | batches/s, median (min-max) | trainer CPU ms/batch |",
                "| --- | ---: | ---: |"]
        for case, runs in cases.items():
            cpu = [r["trainer_cpu_ms_per_batch"] for r in runs]
            rows.append("| %s | %s | %s |" % (
                case, _spread([r["batches_per_s"] for r in runs]),
                "-" if any(c != c for c in cpu) else "%.2f" % statistics.median(cpu)))
        parts.append("**%s**\n\n%s" % (workload, "\n".join(rows)))
    goal_rows = ["| ratio | measured | goal | result |", "| --- | ---: | ---: | --- |"]
    for workload, num, den, goal in GOALS:
        if workload not in results:
            continue
        med = {c: statistics.median(r["batches_per_s"] for r in runs)
               for c, runs in results[workload].items()}
        ratio = med[num] / med[den]
        goal_rows.append("| %s: %s / %s | %.2fx | >= %.1fx | %s |" % (
            workload, num, den, ratio, goal, "PASS" if ratio >= goal else "MISS"))
    if "big_batches" in results:
        cpu = statistics.median(r["trainer_cpu_ms_per_batch"]
                                for r in results["big_batches"]["ours-process"])
        goal_rows.append("| big_batches: trainer CPU per batch, ours-process | %.2f ms | "
                         "<= %.1f ms | %s |" % (cpu, CPU_GOAL_MS, "PASS" if cpu <= CPU_GOAL_MS
                                                else "MISS"))
    parts.append("\n".join(goal_rows))
    return "\n\n".join(parts) + "\n"


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workloads", nargs="*", default=list(CASES))
    parser.add_argument("--json", help="write the results here (docs/peers.json feeds the docs)")
    args = parser.parse_args(argv)
    repeats, secs = (2, 1.5) if args.quick else (3, 4.0)
    iterations = spin_iterations()
    results: Dict[str, Dict[str, List[Dict[str, float]]]] = {}
    for workload in args.workloads:
        results[workload] = {case: [] for case in CASES[workload]}
        for _ in range(repeats):  # interleaved, so drift hits every case alike
            for case in CASES[workload]:
                results[workload][case].append(_child(workload, case, secs, iterations))
    doc = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": "%d cores, Python %s" % (os.cpu_count() or 0, sys.version.split()[0]),
           "repeats": repeats, "window_secs": secs, "results": results}
    print(markdown(doc))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
