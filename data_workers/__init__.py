"""data_workers: a faster, safer drop-in for ``caffe2.python.data_workers``.

Change one import line::

    from caffe2.python import data_workers      # before
    import data_workers                         # after

The pipeline of one input (one ``init_data_input_workers`` call)::

    fetch_fun(worker_id, batch_size)   N fetchers: threads, or worker processes
            |                          returning arrays through shared memory
            v
    ChunkValidator                     types, row counts, dtypes, shapes -> precise errors
            v
    ChunkChannel                       bounded; FIFO, or round-robin when deterministic
            |                          (process workers that send whole batches skip
            |                          it: the enqueuer reads their sockets itself)
            v
    Rebatcher                          exact batch_size rows along each batch column,
            |                          copied once, straight into Caffe2 blob memory
            |                          (pieces >= 4 MiB: by two threads, half each)
            v
    sink (enqueuer thread)             Caffe2Feed: one prepared net, SafeEnqueueBlobs,
            |                          whole batches, in the workspace captured at init
            v
    Caffe2 BlobsQueue                  4 batches
            v
    DequeueBlobs in the user's net     on the device / name scope captured at init

Beside them, per input: a flusher thread (metrics to external loggers on
time), a process watcher (process workers: errors and deaths, read off the
processes themselves) and, if asked for, a stall watchdog.

Layers, one folder each (``tests/test_layers.py`` guards the arrows; drawn
in ``docs/development.md``): ``_core/`` the engine, importing neither Caffe2
nor torch, with the one builder both front ends call (``_core/build.py``) and
the two contracts, ``_core/backend.py`` (fetchers) and ``_core/sink.py``
(where batches go); ``_workers/`` the thread and process backends;
``_caffe2/`` the Caffe2 sink and this module's upstream API; ``_torch/`` the
sink behind ``data_workers.torch.Loader``, which imports no Caffe2.

Shutdown and failures follow one protocol, written once as
NOTE [ Shutdown and error protocol ] in ``data_workers/_core/coordinator.py``.
The names that upstream scripts subclass or reach into (``WorkerCoordinator``,
``_coordinators``, ``_state``, ``_fetcher_id_seq``, ...) live in one
compatibility layer over the core, ``_compat.py``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING, Any

__version__ = "0.1.0"

# Names are resolved on first use (PEP 562), so that a worker process, which
# imports data_workers._workers.child, does not pay for importing Caffe2.
_EXPORTS: dict[str, str] = {
    # upstream caffe2.python.data_workers names
    "init_data_input_workers": "._caffe2.api",
    "global_coordinator": "._caffe2.api",
    "get_worker_ids": "._caffe2.api",
    "GlobalCoordinator": "._caffe2.api",
    "BatchFeeder": "._compat",
    "DataWorker": "._workers.threads",
    "enqueuer": "._core.pipeline",
    "LOG_INT_SECS": "._core.pipeline",
    # upstream names data_workers imported from parallel_workers
    "Metrics": "._core.metrics",
    "State": "._core.worker",
    "WorkerCoordinator": "._compat",
    "GlobalWorkerCoordinator": "._compat",
    "Worker": "._core.worker",
    "run_worker": "._core.worker",
    "parallel_workers": ".parallel_workers",
    # ours
    "InputCoordinator": "._core.pipeline",
    "InputStats": "._core.metrics",
    "ExternalLogger": "._core.metrics",
    "ProgressLogger": "._core.progress",
    "Lifecycle": "._core.lifecycle",
    "DataInputError": "._core.errors",
    "FetcherError": "._core.errors",
    "WorkerDiedError": "._core.errors",
    "ChunkTypeError": "._core.errors",
    "ChunkValueError": "._core.errors",
    "PipelineError": "._core.errors",
    "InputClosedError": "._core.errors",
    "RemoteTraceback": "._core.errors",
    # sharded, resumable sources (data_workers/sharding.py)
    "ShardedSource": ".sharding",
    "InputCheckpoint": ".sharding",
    "IndexableDataset": ".sharding",
    "ArrayDataset": ".sharding",
    "LastBatchPolicy": ".sharding",
    "device_shard": ".sharding",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError("module 'data_workers' has no attribute %r" % name)
    try:
        module = importlib.import_module(module_name, __name__)
    except ModuleNotFoundError as exc:
        # Only the Caffe2 drop-in needs Caffe2, which only torch 1.10.2 (CPython
        # 3.8/3.9) ships; the core and data_workers.torch import none of it.
        if not (exc.name or "").startswith("caffe2"):
            raise
        raise ImportError(
            "data_workers.%s is the Caffe2 drop-in and needs Caffe2 (%s), which this "
            "environment lacks: install the extra, pip install 'data_workers[caffe2]' "
            "(CPython 3.8/3.9, torch==1.10.2); data_workers.torch.Loader needs no Caffe2"
            % (name, exc), name=exc.name) from exc
    value = module if name == "parallel_workers" else getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if _TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from . import parallel_workers
    from ._caffe2.api import GlobalCoordinator, get_worker_ids, global_coordinator, init_data_input_workers
    from ._compat import BatchFeeder, GlobalWorkerCoordinator, WorkerCoordinator
    from ._core.errors import (ChunkTypeError, ChunkValueError, DataInputError, FetcherError,
                          InputClosedError, PipelineError, RemoteTraceback, WorkerDiedError)
    from ._core.pipeline import LOG_INT_SECS, InputCoordinator, enqueuer
    from ._core.lifecycle import Lifecycle
    from ._core.metrics import ExternalLogger, InputStats, Metrics
    from ._core.progress import ProgressLogger
    from ._workers.threads import DataWorker
    from ._core.worker import State, Worker, run_worker
    from .sharding import (ArrayDataset, IndexableDataset, InputCheckpoint, LastBatchPolicy,
                           ShardedSource, device_shard)
