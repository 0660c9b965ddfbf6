"""A training script as users write them, for ``benchmarks/worker_start.py``.

It imports Caffe2 and numpy at the top and defines its fetcher in ``__main__``.
Run by path (so it is ``__main__``)::

    python benchmarks/worker_start_script.py WORKERS OUT.json [torch-first | dataloader | loader] [fork]

It starts ``WORKERS`` process workers, times ``start()`` to the first batch out
of the net and to the first batch of every worker (a batch holds one worker's
rows, tagged with its id), then reads each worker's memory from
``/proc/PID/smaps_rollup`` and writes everything to ``OUT.json``.  The trainer
imports torch when it lends its first batch to Caffe2 (``_caffe2/feed.py``), about
1-2 s that overlap the workers' start-up; ``torch-first`` imports it before the
clock starts, leaving the workers' own start-up.  ``dataloader`` times torch's
``DataLoader`` instead (the same fetcher in an ``IterableDataset``, ``WORKERS``
worker processes, the default start method, torch imported before the
clock): ``iter(loader)`` to the first batch; ``loader`` times our
``data_workers.torch.Loader`` with process workers the same way.  The entry
point is guarded, so the script also runs where workers re-import it (the
spawn-style start of data_workers before cloudpickle): the same script
measures both.  ``fork`` starts our workers with ``start_method="fork"``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, List

import numpy as np
from caffe2.python import core, workspace

import data_workers

BATCH = 32
WIDTH = 64
#: How long to wait for every worker's first batch.
SETTLE_SECS = 60.0


def fetch(worker_id: int, batch_size: int) -> List[np.ndarray]:
    data = np.full((BATCH, WIDTH), worker_id, np.float32)
    return [data, np.arange(BATCH, dtype=np.int32)]


def memory(pid: int) -> Dict[str, int]:
    """``rss`` and ``uss`` (private pages) of ``pid``, in bytes."""
    fields: Dict[str, int] = {}
    with open("/proc/%d/smaps_rollup" % pid, encoding="ascii") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return {"rss": fields["Rss"],
            "uss": fields["Private_Clean"] + fields["Private_Dirty"]
            + fields.get("Private_Hugetlb", 0)}


def loader_main(workers: int, out: str, start_method: str) -> None:
    import warnings

    with warnings.catch_warnings():  # torch 1.10 imports pkg_resources, which warns
        warnings.simplefilter("ignore")
        from data_workers.torch import Loader

    loader = Loader(fetch, BATCH, workers, worker_type="process", names=["data", "label"],
                    start_method=start_method)
    started = time.perf_counter()
    next(loader)
    first_batch_s = time.perf_counter() - started
    loader.close()
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"workers": workers, "loader_first_batch_s": first_batch_s}, f)


def dataloader_main(workers: int, out: str) -> None:
    import warnings

    with warnings.catch_warnings():  # torch 1.10 imports pkg_resources, which warns
        warnings.simplefilter("ignore")
        import torch.utils.data as tud

    class Fetches(tud.IterableDataset):  # type: ignore[misc]
        def __iter__(self):  # type: ignore[no-untyped-def]
            info = tud.get_worker_info()
            while True:
                yield fetch(info.id if info is not None else 0, BATCH)

    loader = tud.DataLoader(Fetches(), batch_size=None, num_workers=workers)
    started = time.perf_counter()
    batches = iter(loader)
    next(batches)
    first_batch_s = time.perf_counter() - started
    del batches
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"workers": workers, "dataloader_first_batch_s": first_batch_s}, f)


def main(workers: int, out: str, torch_first: bool, start_method: str) -> None:
    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    if torch_first:
        import warnings

        with warnings.catch_warnings():  # torch 1.10 imports pkg_resources, which warns
            warnings.simplefilter("ignore")
            import torch  # noqa: F401

    net = core.Net("worker_start")
    coord = data_workers.init_data_input_workers(
        net, ["data", "label"], fetch, BATCH, num_worker_threads=workers,
        worker_type="process", timeout=60, input_source_name="worker_start",
        start_method=start_method)
    workspace.CreateNet(net)
    started = time.perf_counter()
    coord.start()
    start_call_s = time.perf_counter() - started
    workspace.RunNet("worker_start")
    first_batch_s = time.perf_counter() - started
    # Memory is read once every worker has made a batch: started up, ring touched.
    seen = {int(workspace.FetchBlob("data")[0, 0])}
    while len(seen) < workers and time.perf_counter() - started < SETTLE_SECS:
        workspace.RunNet("worker_start")
        seen.add(int(workspace.FetchBlob("data")[0, 0]))
    every_worker_s = time.perf_counter() - started
    if len(seen) < workers:
        raise RuntimeError("only workers %s made a batch in %.0f s" % (sorted(seen), SETTLE_SECS))
    pids = [p for p in coord.stats()[0].worker_pids if p is not None]
    per_worker = [memory(p) for p in pids]
    trainer = memory(os.getpid())
    stopped = time.perf_counter()
    coord.stop()
    result = {
        "workers": workers,
        "torch_first": torch_first,
        "start_method": start_method,
        "start_call_s": start_call_s,
        "first_batch_s": first_batch_s,
        "every_worker_s": every_worker_s,
        "stop_s": time.perf_counter() - stopped,
        "worker_rss": [m["rss"] for m in per_worker],
        "worker_uss": [m["uss"] for m in per_worker],
        "trainer_rss": trainer["rss"],
        "data_workers": os.path.dirname(os.path.abspath(data_workers.__file__)),
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    modes = set(sys.argv[3:])
    method = "fork" if "fork" in modes else "spawn"
    if "dataloader" in modes:
        dataloader_main(int(sys.argv[1]), sys.argv[2])
    elif "loader" in modes:
        loader_main(int(sys.argv[1]), sys.argv[2], method)
    else:
        main(int(sys.argv[1]), sys.argv[2], "torch-first" in modes, method)
