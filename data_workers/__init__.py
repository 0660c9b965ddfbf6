"""data_workers: a faster, safer drop-in for ``caffe2.python.data_workers``.

Change one import line::

    from caffe2.python import data_workers      # before
    import data_workers                         # after

The pipeline of one input (one ``init_data_input_workers`` call)::

    fetch_fun(worker_id, batch_size)   N fetchers: threads, or spawned processes
            |                          returning arrays through shared memory
            v
    ChunkValidator                     types, row counts, dtypes, shapes -> precise errors
            v
    ChunkChannel                       bounded; FIFO, or round-robin when deterministic
            v
    Rebatcher                          exact batch_size rows along each batch column,
            |                          copied once, straight into Caffe2 blob memory
            v
    Caffe2Feed (enqueuer thread)       one prepared net: SafeEnqueueBlobs, whole batches
            v
    Caffe2 BlobsQueue                  4 batches
            v
    DequeueBlobs in the user's net     on the device / name scope captured at init

Shutdown and failures follow one protocol, written once as
NOTE [ Shutdown and error protocol ] in ``data_workers/_coordinator.py``.
The names that upstream scripts reach into (``_coordinators``, ``_state``,
``_fetcher_id_seq``, ...) live in one compatibility layer, ``_compat.py``.
"""

from __future__ import annotations

from . import parallel_workers
from ._api import GlobalCoordinator, get_worker_ids, global_coordinator, init_data_input_workers
from ._errors import (
    ChunkTypeError,
    ChunkValueError,
    DataInputError,
    FetcherError,
    InputClosedError,
    PipelineError,
    RemoteTraceback,
    WorkerDiedError,
)
from ._input import LOG_INT_SECS, BatchFeeder, InputCoordinator, enqueuer
from ._lifecycle import Lifecycle
from ._metrics import ExternalLogger, InputStats, Metrics
from ._thread_workers import DataWorker
from .parallel_workers import GlobalWorkerCoordinator, State, Worker, WorkerCoordinator, run_worker

__version__ = "0.1.0"

__all__ = [
    # upstream caffe2.python.data_workers names
    "init_data_input_workers",
    "global_coordinator",
    "get_worker_ids",
    "GlobalCoordinator",
    "BatchFeeder",
    "DataWorker",
    "enqueuer",
    "LOG_INT_SECS",
    # upstream names data_workers imported from parallel_workers
    "Metrics",
    "State",
    "WorkerCoordinator",
    "GlobalWorkerCoordinator",
    "Worker",
    "run_worker",
    "parallel_workers",
    # ours
    "InputCoordinator",
    "InputStats",
    "ExternalLogger",
    "Lifecycle",
    "DataInputError",
    "FetcherError",
    "WorkerDiedError",
    "ChunkTypeError",
    "ChunkValueError",
    "PipelineError",
    "InputClosedError",
    "RemoteTraceback",
]
