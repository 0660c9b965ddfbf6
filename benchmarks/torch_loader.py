"""``data_workers.torch.Loader`` against ``torch.utils.data.DataLoader``, in one run.

Two workloads, 2 workers each, batch 32::

    one sample per call    fetch_fun returns [rand(1, 64) float32, label (1,) int64];
                           DataLoader: map-style Dataset, one sample per __getitem__,
                           batch_size=32 (default collate).  Ours: process workers.
    GIL-bound              ~10 ms of pure Python (holding the GIL) per chunk of 32 rows;
                           DataLoader: a Dataset whose items are such chunks,
                           batch_size=None (one item is one batch: the same Python
                           work and one hand-off per batch on both sides).  Ours:
                           process workers (threads would share one GIL).

Four more, chosen with ``--only``: the dataset form (``Loader(dataset, ...)`` against
``DataLoader(dataset, ...)``, the same map-style dataset object and options,
2 process workers each, sequential sampler, default collate)::

    ds_one_sample          one sample per __getitem__ (rand(64) float32, int label), batch 32
    ds_gil_bound           ~1 ms of pure Python per __getitem__, batch 32; compute limit:
                           2 cores x one uncontended __getitem__'s rate
    ds_image               read a JPEG, decode it with Pillow, random resized crop to 224,
                           flip, normalise to float32 CHW; batch 64; compute limit as above
    ds_image_threads       the same, ours with thread workers (Pillow and numpy release
                           the GIL for most of the work)

For the last three, a second limit: the parallel limit, ``WORKERS`` processes
running the ``__getitem__`` loop at once (the cores share memory bandwidth and
caches, so it can be well under the compute limit); both loaders are reported
as a share of it.

Each repeat builds a fresh loader per side (alternating which goes first, so drift
of a shared machine hits both), consumes ``warmup`` seconds of batches, then
counts batches over ``window`` seconds.  The reported ratio is ours / DataLoader
per repeat: median and min-max over repeats.  Time to the first batch (worker
start-up: spawn for ours unless ``--start-method fork``, fork for DataLoader's
default) is reported separately.

Part of ``benchmarks.run`` (``make bench``), which runs this module in a fresh
interpreter, writes ``torch_loader.json``, and renders its table into docs/torch.md
(``benchmarks.doc_tables``)::

    python -m benchmarks.run --only torch              # full: 5 repeats x 3 s, ~2 min
    python -m benchmarks.run --only torch --quick      # 3 repeats x 1 s, ~30 s
    python -m benchmarks.torch_loader --json out.json  # the run itself, as benchmarks.run starts it

Module level imports stay light (stdlib + numpy): spawned workers import this
module to unpickle the fetchers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/torch_loader.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import _harness as h  # noqa: E402

BATCH = 32
WIDTH = 64
WORKERS = 2
GIL_FETCH_S = 0.010
#: How our process workers start (``--start-method``); DataLoader's always fork.
START_METHOD = "spawn"


spin = h.spin


# ----------------------------------------------------------------------------- fetchers


def one_sample(worker_id: int, batch_size: int) -> List[np.ndarray]:
    """One row per call: the cost is all per-call overhead."""
    return [np.random.rand(1, WIDTH).astype(np.float32), np.array([worker_id], np.int64)]


class OneSampleDataset:
    """The same sample, map-style, for DataLoader (no torch import: duck-typed)."""

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int) -> Any:
        return np.random.rand(WIDTH).astype(np.float32), index % 2


class BusyChunks:
    """Spins ~GIL_FETCH_S of pure Python, then returns one chunk of BATCH rows.

    Callable as a fetch_fun and indexable as a Dataset, so both sides run the
    very same code.
    """

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def _chunk(self, tag: int) -> List[np.ndarray]:
        spin(self.iterations)
        return [np.full((BATCH, 16), tag, np.float32), np.arange(BATCH, dtype=np.int64)]

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        return self._chunk(worker_id)

    def __len__(self) -> int:
        return 1 << 30

    def __getitem__(self, index: int) -> List[np.ndarray]:
        return self._chunk(index % WORKERS)


class SpinDataset:
    """~1 ms of pure Python (holding the GIL) per sample; duck-typed map-style."""

    def __init__(self, iterations: int, length: int = 1 << 20) -> None:
        self.iterations = iterations
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        spin(self.iterations)
        return np.full(16, index, np.float32), index


IMAGE_SIDE = 224
IMAGE_BATCH = 64
_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1) * 255
_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1) * 255


def make_jpegs(directory: str, count: int = 48, size: Tuple[int, int] = (500, 375)) -> List[str]:
    """``count`` photo-like JPEGs (smooth gradients plus noise, quality 90) in ``directory``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    ys, xs = np.mgrid[0:size[1], 0:size[0]]
    for i in range(count):
        base = np.stack([(xs * (i + 1)) % 256, (ys * 3 + i * 7) % 256, (xs + ys) % 256], -1)
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = os.path.join(directory, "img%03d.jpg" % i)
        Image.fromarray(noisy).save(path, quality=90)
        paths.append(path)
    return paths


class JpegDataset:
    """The usual ImageNet-style training transform, with Pillow and numpy only."""

    def __init__(self, paths: Sequence[str], length: int = 1 << 20) -> None:
        self.paths = list(paths)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        import random

        from PIL import Image

        with open(self.paths[index % len(self.paths)], "rb") as f:
            image = Image.open(f)
            image = image.convert("RGB")
        width, height = image.size
        area = width * height * random.uniform(0.08, 1.0)
        ratio = np.exp(random.uniform(np.log(3 / 4), np.log(4 / 3)))
        w = min(width, int(round(np.sqrt(area * ratio))))
        h = min(height, int(round(np.sqrt(area / ratio))))
        left, top = random.randint(0, width - w), random.randint(0, height - h)
        image = image.resize((IMAGE_SIDE, IMAGE_SIDE), Image.BILINEAR,
                             box=(left, top, left + w, top + h))
        if random.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        chw = np.asarray(image, np.float32).transpose(2, 0, 1)
        return (chw - _MEAN) / _STD, index % 1000


def dataset_for(workload: str, spin_iterations: int, jpegs: Sequence[str]) -> Any:
    if workload == "ds_one_sample":
        return OneSampleDataset()
    if workload == "ds_gil_bound":
        return SpinDataset(spin_iterations)
    return JpegDataset(jpegs)  # ds_image, ds_image_threads


def compute_limit(dataset: Any, batch: int, seconds: float = 1.0) -> float:
    """Batches/s of 2 cores each running one uncontended ``__getitem__`` loop."""
    dataset[0]
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        dataset[count]
        count += 1
    return WORKERS * count / (time.perf_counter() - t0) / batch


def parallel_limit(dataset: Any, batch: int, seconds: float = 1.0) -> float:
    """Batches/s of ``WORKERS`` processes each running the ``__getitem__`` loop at
    the same time: what the cores give together (they share memory bandwidth and
    caches), where ``compute_limit`` multiplies one uncontended loop."""
    dataset[0]
    readers, pids = [], []
    for _ in range(WORKERS):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                count, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    dataset[count]
                    count += 1
                os.write(w, repr(count / (time.perf_counter() - t0)).encode())
            finally:
                os._exit(0)
        os.close(w)
        readers.append(r)
        pids.append(pid)
    total = 0.0
    for r, pid in zip(readers, pids):
        with os.fdopen(r) as f:
            total += float(f.read())
        os.waitpid(pid, 0)
    return total / batch


class _Endless:
    """Epoch after epoch of a dataset loader (ours or DataLoader), as ``next()``."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.it = iter(loader)

    def __next__(self) -> Any:
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)

    def close(self) -> None:
        shutdown = getattr(self.it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        close = getattr(self.loader, "close", None)
        if close is not None:
            close()


# ----------------------------------------------------------------------------- sides


def _ours(workload: str, spin_iterations: int) -> Any:
    from data_workers.torch import Loader

    # Process workers for both: per-sample Python fetchers are what they are for
    # (each worker assembles whole batches; one hand-off per batch).
    fetch = one_sample if workload == "one_sample" else BusyChunks(spin_iterations)
    return Loader(fetch, BATCH, WORKERS, worker_type="process", names=["data", "label"],
                  start_method=START_METHOD)


class _DataLoaderSide:
    """A DataLoader and its iterator, closed like a Loader (workers shut down)."""

    def __init__(self, workload: str, spin_iterations: int) -> None:
        from torch.utils.data import DataLoader

        if workload == "one_sample":
            self.loader = DataLoader(OneSampleDataset(), batch_size=BATCH, num_workers=WORKERS)
        else:
            self.loader = DataLoader(BusyChunks(spin_iterations), batch_size=None,
                                     num_workers=WORKERS)
        self.it: Optional[Iterator[Any]] = iter(self.loader)

    def __next__(self) -> Any:
        assert self.it is not None
        return next(self.it)

    def close(self) -> None:
        shutdown = getattr(self.it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self.it = None


def _dataset_side(side: str, workload: str, spin_iterations: int, jpegs: Sequence[str]) -> Any:
    dataset = dataset_for(workload, spin_iterations, jpegs)
    batch = IMAGE_BATCH if workload.startswith("ds_image") else BATCH
    if side == "ours":
        from data_workers.torch import Loader

        if workload.endswith("_threads"):
            return _Endless(Loader(dataset, batch, num_workers=WORKERS, worker_type="thread"))
        return _Endless(Loader(dataset, batch, num_workers=WORKERS, worker_type="process",
                               multiprocessing_context="fork" if START_METHOD == "fork" else None))
    from torch.utils.data import DataLoader

    return _Endless(DataLoader(dataset, batch, num_workers=WORKERS))


def measure_side(side: str, workload: str, spin_iterations: int, warmup_s: float,
                 window_s: float, jpegs: Sequence[str] = ()) -> Dict[str, float]:
    """Build one loader, wait for its first batch, warm up, count batches in a window."""
    t0 = time.perf_counter()
    if workload.startswith("ds_"):
        source: Any = _dataset_side(side, workload, spin_iterations, jpegs)
    else:
        source = _ours(workload, spin_iterations) if side == "ours" \
            else _DataLoaderSide(workload, spin_iterations)
    try:
        batch = next(source)
        first = time.perf_counter() - t0
        if len(batch[0]) != (IMAGE_BATCH if workload.startswith("ds_image") else BATCH):
            raise RuntimeError("%s %s: batch of %d rows" % (side, workload, len(batch[0])))
        end = time.perf_counter() + warmup_s
        while time.perf_counter() < end:
            next(source)
        count = 0
        t1 = time.perf_counter()
        end = t1 + window_s
        while True:
            next(source)
            count += 1
            now = time.perf_counter()
            if now >= end:
                break
        return {"batches_per_s": count / (now - t1), "first_batch_s": first}
    finally:
        source.close()


# ----------------------------------------------------------------------------- run


WORKLOADS = ("one_sample", "gil_bound", "ds_one_sample", "ds_gil_bound", "ds_image",
             "ds_image_threads")
#: What ``benchmarks.run --only torch`` measures and docs/torch.md's generated table shows;
#: the dataset workloads are chosen with ``--only`` (each start spawns workers that import torch).
DEFAULT_WORKLOADS = ("one_sample", "gil_bound")


def run(quick: bool, repeats: Optional[int] = None, window_s: Optional[float] = None,
        log: Callable[[str], None] = print, warmup_s: Optional[float] = None,
        only: Sequence[str] = DEFAULT_WORKLOADS) -> Dict[str, Any]:
    import tempfile

    import torch

    torch.set_num_threads(1)  # the consumer does no math; keep the cores for workers
    repeats = repeats or (3 if quick else 5)
    window_s = window_s or (1.0 if quick else 3.0)
    warmup_s = min(1.0, window_s / 2) if warmup_s is None else warmup_s
    calibration = h.calibrate_spin(GIL_FETCH_S)
    spin_iterations = int(calibration["spin_iterations"])
    # ~1 ms per sample for ds_gil_bound: a tenth of the per-chunk spin.
    sample_spin = max(1, spin_iterations // 10)
    jpeg_dir = tempfile.TemporaryDirectory(prefix="torch_loader_bench")
    jpegs = make_jpegs(jpeg_dir.name) if any(w.startswith("ds_image") for w in only) else []
    spin_s = calibration["spin_s"]
    results: Dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "torch": torch.__version__, "load_avg_start": os.getloadavg()[0]},
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "mode": "quick" if quick else "full",
        "settings": {"batch": BATCH, "workers": WORKERS, "repeats": repeats,
                     "window_s": window_s, "warmup_s": warmup_s,
                     "gil_fetch_s": GIL_FETCH_S, "spin_iterations": spin_iterations,
                     "start_method": START_METHOD,
                     "spin_s": spin_s},
        "workloads": {},
    }
    for workload in only:
        runs: Dict[str, List[Dict[str, float]]] = {"ours": [], "dataloader": []}
        limits: List[float] = []
        together: List[float] = []
        spins = sample_spin if workload == "ds_gil_bound" else spin_iterations
        for r in range(repeats):
            order = ("ours", "dataloader") if r % 2 == 0 else ("dataloader", "ours")
            for side in order:
                runs[side].append(measure_side(side, workload, spins, warmup_s,
                                               window_s, jpegs))
            if workload in ("ds_gil_bound", "ds_image", "ds_image_threads"):
                dataset = dataset_for(workload, spins, jpegs)
                batch = IMAGE_BATCH if workload != "ds_gil_bound" else BATCH
                limits.append(compute_limit(dataset, batch))
                together.append(parallel_limit(dataset, batch))
            log("  %s repeat %d: ours %.0f, DataLoader %.0f batches/s" % (
                workload, r + 1, runs["ours"][-1]["batches_per_s"],
                runs["dataloader"][-1]["batches_per_s"]))
        ratios = [o["batches_per_s"] / d["batches_per_s"]
                  for o, d in zip(runs["ours"], runs["dataloader"])]
        results["workloads"][workload] = {
            "runs": runs,
            "ratios": ratios,
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
        if limits:
            of_limit = [o["batches_per_s"] / lim for o, lim in zip(runs["ours"], limits)]
            results["workloads"][workload].update(
                compute_limit=limits, of_limit_median=statistics.median(of_limit),
                of_limit_min=min(of_limit), of_limit_max=max(of_limit))
            for side in ("ours", "dataloader"):
                of_parallel = [o["batches_per_s"] / lim
                               for o, lim in zip(runs[side], together)]
                results["workloads"][workload]["of_parallel_limit_" + side] = of_parallel
            results["workloads"][workload]["parallel_limit"] = together
    jpeg_dir.cleanup()
    results["machine"]["load_avg_end"] = os.getloadavg()[0]
    return results


def _side_figures(workload: Dict[str, Any]) -> Tuple[Callable[[str], str], Callable[[str], float]]:
    """For one workload of a run: each side's batches/s as "median (min-max)", and
    its median time to the first batch."""
    def rates(side: str) -> str:
        v = [r["batches_per_s"] for r in workload["runs"][side]]
        digits = 0 if statistics.median(v) >= 100 else 1  # JPEG batches: 5-7 per second
        return "%.*f (%.*f-%.*f)" % (digits, statistics.median(v), digits, min(v), digits, max(v))

    def first(side: str) -> float:
        return statistics.median(r["first_batch_s"] for r in workload["runs"][side])

    return rates, first


def report(results: Dict[str, Any]) -> str:
    s = results["settings"]
    lines = [
        "Loader vs DataLoader: %d workers each, batch %d, %d repeats of %.1f s (after %.1f s "
        "warm-up); GIL-bound spin %.1f ms (calibrated; median %.1f ms just after)"
        % (s["workers"], s["batch"], s["repeats"], s["window_s"], s["warmup_s"],
           s["gil_fetch_s"] * 1e3, s["spin_s"] * 1e3),
        "%-12s %-22s %-22s %-20s %s" % ("workload", "ours batches/s", "DataLoader batches/s",
                                        "ratio median (min-max)", "first batch ours/DL"),
    ]
    for name, w in results["workloads"].items():
        rates, first = _side_figures(w)
        lines.append("%-12s %-22s %-22s %-20s %.2f s / %.2f s" % (
            name, rates("ours"), rates("dataloader"),
            "%.2fx (%.2f-%.2f)" % (w["ratio_median"], w["ratio_min"], w["ratio_max"]),
            first("ours"), first("dataloader")))
        if "compute_limit" in w:
            lines.append("%-12s ours / compute limit %.2f (%.2f-%.2f); limit %.1f batches/s" % (
                "", w["of_limit_median"], w["of_limit_min"], w["of_limit_max"],
                statistics.median(w["compute_limit"])))
        if "parallel_limit" in w:
            mine, theirs = w["of_parallel_limit_ours"], w["of_parallel_limit_dataloader"]
            lines.append("%-12s parallel limit %.1f batches/s (%d loops at once): ours %.2f "
                         "(%.2f-%.2f) of it, DataLoader %.2f (%.2f-%.2f)" % (
                             "", statistics.median(w["parallel_limit"]), s["workers"],
                             statistics.median(mine), min(mine), max(mine),
                             statistics.median(theirs), min(theirs), max(theirs)))
    m = results["machine"]
    lines.append("machine: %s CPUs, load average %.1f -> %.1f; python %s, torch %s" % (
        m["cpus"], m["load_avg_start"], m["load_avg_end"], m["python"], m["torch"]))
    return "\n".join(lines)


TITLES = {"one_sample": "one sample per call", "gil_bound": "GIL-bound",
          "ds_one_sample": "dataset: one sample per __getitem__",
          "ds_gil_bound": "dataset: ~1 ms pure-Python samples", "ds_image": "dataset: JPEG pipeline",
          "ds_image_threads": "dataset: JPEG pipeline, our thread workers"}


def markdown(results: Dict[str, Any]) -> str:
    """One run (``torch_loader.json``) as Markdown: the run line, then one table."""
    s, m = results["settings"], results["machine"]
    mode = ", %s mode" % results["mode"] if results.get("mode", "full") != "full" else ""
    lines = [
        "Run of %s%s: %d %s of %.1f s windows (after %.1f s of warm-up), a fresh "
        "loader per side and repeat, sides alternating; GIL-bound fetch %.1f ms "
        "(calibrated; median %.1f ms just after); %s CPUs, load average %.1f -> %.1f, "
        "Python %s, torch %s." % (
            results.get("date_utc", "?"), mode, s["repeats"],
            "repeat" if s["repeats"] == 1 else "repeats", s["window_s"], s["warmup_s"],
            s["gil_fetch_s"] * 1e3, s["spin_s"] * 1e3, m["cpus"], m["load_avg_start"],
            m["load_avg_end"], m["python"], m["torch"]),
        "",
        "| workload | ours batches/s | DataLoader batches/s | ours / DataLoader "
        "| first batch, ours / DataLoader |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, w in results["workloads"].items():
        rates, first = _side_figures(w)
        lines.append("| %s | %s | %s | %.2fx (%.2f-%.2f) | %.2f s / %.2f s |" % (
            TITLES.get(name, name), rates("ours"), rates("dataloader"), w["ratio_median"],
            w["ratio_min"], w["ratio_max"], first("ours"), first("dataloader")))
    lines.append("")
    lines.append("Batches/s and ratios: median (min-max) over the repeats; a ratio pairs "
                 "the two sides of one repeat.")
    return "\n".join(lines) + "\n"


#: The goal for ours / DataLoader on each workload, on torch 2.x (issue 21).
GOAL_RATIO = 1.5


def markdown_legs(docs: Sequence[Dict[str, Any]], goals: bool = True) -> str:
    """Runs on several torch versions (one per test leg) as one table, side by side,
    each run's own line first; then, with ``goals``, the goal, checked on the newest
    torch's run (the evidence pages show it; user pages show the figures alone)."""
    lines = []
    for results in docs:
        lines += ["- torch %s: " % results["machine"]["torch"] + _run_line(results)]
    lines += [
        "",
        "| workload | torch | ours batches/s | DataLoader batches/s | ours / DataLoader "
        "| first batch, ours / DataLoader |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name in docs[0]["workloads"]:
        for results in docs:
            w = results["workloads"][name]
            rates, first = _side_figures(w)
            lines.append("| %s | %s | %s | %s | %.2fx (%.2f-%.2f) | %.2f s / %.2f s |" % (
                TITLES.get(name, name), results["machine"]["torch"], rates("ours"),
                rates("dataloader"), w["ratio_median"], w["ratio_min"], w["ratio_max"],
                first("ours"), first("dataloader")))
    lines += ["", "Batches/s and ratios: median (min-max) over the repeats; a ratio pairs "
              "the two sides of one repeat."]
    if not goals:
        return "\n".join(lines) + "\n"
    lines.append("")
    newest = docs[-1]
    lines += ["| goal on torch %s | measured median (min-max) | goal | result |"
              % newest["machine"]["torch"], "| --- | ---: | ---: | --- |"]
    for name, w in newest["workloads"].items():
        lines.append("| %s: ours / DataLoader | %.2fx (%.2f-%.2f) | >= %.1fx | %s |" % (
            TITLES.get(name, name), w["ratio_median"], w["ratio_min"], w["ratio_max"],
            GOAL_RATIO, "PASS" if w["ratio_median"] >= GOAL_RATIO else "MISS"))
    return "\n".join(lines) + "\n"


def _run_line(results: Dict[str, Any]) -> str:
    s, m = results["settings"], results["machine"]
    mode = ", %s mode" % results["mode"] if results.get("mode", "full") != "full" else ""
    return ("run of %s%s, %d %s of %.1f s windows (after %.1f s of warm-up); GIL-bound "
            "fetch %.1f ms (median %.1f ms just after); %s CPUs, load average %.1f -> %.1f, "
            "Python %s." % (
                results.get("date_utc", "?"), mode, s["repeats"],
                "repeat" if s["repeats"] == 1 else "repeats", s["window_s"], s["warmup_s"],
                s["gil_fetch_s"] * 1e3, s["spin_s"] * 1e3, m["cpus"], m["load_avg_start"],
                m["load_avg_end"], m["python"]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats of 1 s windows")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--window", type=float, default=None, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of warm-up per loader (default: half the window, <= 1)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(DEFAULT_WORKLOADS),
                        help="workloads to run (default: %s, those benchmarks.run renders)"
                        % " ".join(DEFAULT_WORKLOADS))
    parser.add_argument("--start-method", choices=("spawn", "fork"), default="spawn",
                        help="how our process workers start (default: spawn)")
    args = parser.parse_args(argv)
    global START_METHOD
    START_METHOD = args.start_method
    results = run(args.quick, args.repeats, args.window, warmup_s=args.warmup, only=args.only)
    print(report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
