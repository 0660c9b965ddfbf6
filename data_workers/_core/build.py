"""The one builder both front ends call: check an input's arguments, then wire it.

    front end (init_data_input_workers, Loader)
        |  its own arguments only: a Caffe2 net and scopes, a torch device...
        v
    check_input_args(**keywords) -> InputConfig      every shared rule, once
        v
    build_input(config, fetch_fun, sink, backends)   backend, feeder, coordinator
        v
    InputCoordinator (registered by the front end)

The front ends name some parameters differently (``num_worker_threads`` for
Caffe2 scripts, ``num_workers`` for PyTorch users); ``ArgNames`` carries the
spelling each one's users know, so every message names the argument they
passed.  The worker backends are passed in (``BackendFactory``): the core does
not import them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable
from collections.abc import Iterable, Sequence

from .args import (check_batch_columns, check_dtypes, check_int, check_max_fetch_failures,
                   check_positive_int, check_positive_seconds)
from .backend import START_METHODS, WORKER_TYPES, BackendSpec, FetcherBackend, FetcherHost, FetchFun
from .coordinator import InitFun
from .metrics import ExternalLogger, Metrics
from .pipeline import LOG_INT_SECS, BatchStage, InputConfig, InputCoordinator
from .sink import BatchSink

__all__ = ["ArgNames", "BackendFactory", "check_blob_names", "check_worker_type", "check_start_method",
           "check_input_args", "build_input"]

#: Builds the backend of an input (given the input as its host) for a worker type.
BackendFactory = Callable[[str, BackendSpec], Callable[[FetcherHost], FetcherBackend]]


@dataclasses.dataclass(frozen=True)
class ArgNames:
    """How a front end spells the parameters whose names differ between them."""

    blob_names: str = "input_blob_names"
    num_workers: str = "num_worker_threads"


def check_blob_names(blob_names: Any, arg: str, noun: str = "blob") -> tuple[str, ...]:
    """``blob_names`` as a tuple: a non-empty list of distinct, non-empty str.

    Args:
        arg: the parameter's name, for messages.
        noun: what each name names ("blob", "array"), for messages.

    Raises:
        TypeError: not a list or tuple of str, or empty.
        ValueError: an empty or repeated name.
    """
    if isinstance(blob_names, str) or not isinstance(blob_names, (list, tuple)) \
            or not blob_names or not all(isinstance(b, str) for b in blob_names):
        raise TypeError("%s must be a non-empty list of %s names, got %r"
                        % (arg, noun, blob_names))
    if "" in blob_names:
        raise ValueError("%s must not contain an empty name, got %r" % (arg, list(blob_names)))
    seen = set()
    for name in blob_names:
        if name in seen:
            raise ValueError("%s names %s %r twice (%r); one input feeds each %s once"
                             % (arg, noun, name, list(blob_names), noun))
        seen.add(name)
    return tuple(blob_names)


def check_worker_type(worker_type: Any) -> None:
    """Raise ValueError unless ``worker_type`` names a backend of ``_workers``."""
    if worker_type not in WORKER_TYPES:
        raise ValueError("worker_type must be one of %s, got %r" % (WORKER_TYPES, worker_type))


def check_start_method(start_method: Any, worker_type: str, arg: str = "start_method") -> None:
    """Raise ValueError unless ``start_method`` names one of ``START_METHODS``, and
    fork goes with process workers."""
    if start_method not in START_METHODS:
        raise ValueError("%s must be one of %s, got %r%s" % (
            arg, START_METHODS, start_method,
            "; 'forkserver' is not offered: 'spawn' leaves no server behind, 'fork' starts "
            "fastest" if start_method == "forkserver" else ""))
    if start_method == "fork" and worker_type != "process":
        raise ValueError("%s=%r starts worker processes, and worker_type=%r runs threads: "
                         "pass worker_type='process' too" % (arg, start_method, worker_type))


def check_input_args(
    *,
    fetch_fun: Any,
    blob_names: Sequence[str],
    batch_size: Any,
    num_workers: Any,
    input_source: str,
    worker_type: Any,
    max_buffered_batches: Any,
    batch_columns: Any,
    dont_rebatch: Any,
    deterministic: Any,
    seed: Any,
    timeout: float,
    log_interval_secs: Any = LOG_INT_SECS,
    stall_warning_secs: Any = None,
    shm_bytes_per_worker: Any = None,
    dtypes: Any = None,
    max_fetch_failures: Any = 0,
    start_method: Any = "spawn",
    names: ArgNames = ArgNames(),
) -> InputConfig:
    """Every rule the two front ends share, checked before anything is built.

    ``blob_names`` (checked by ``check_blob_names``), ``input_source`` and
    ``timeout`` come checked: their rules differ between the front ends.

    Returns:
        The config, numbers as plain ``int`` / ``float`` (``np.int64(32)`` -> ``32``).

    Raises:
        TypeError: an argument has the wrong type (the message names it).
        ValueError: an argument has a wrong value, or contradicts another.
    """
    if not callable(fetch_fun):
        raise TypeError("fetch_fun must be callable as fetch_fun(worker_id, batch_size), got %r"
                        % (fetch_fun,))
    check_worker_type(worker_type)
    if shm_bytes_per_worker is not None and worker_type != "process":
        raise ValueError("shm_bytes_per_worker only applies to worker_type='process' (thread "
                         "workers hand their arrays over without shared memory); got "
                         "shm_bytes_per_worker=%r with worker_type=%r"
                         % (shm_bytes_per_worker, worker_type))
    check_start_method(start_method, worker_type)
    return InputConfig(
        blob_names=tuple(blob_names),
        batch_size=check_positive_int("batch_size", batch_size),
        input_source=input_source,
        num_workers=check_positive_int(names.num_workers, num_workers),
        max_buffered_batches=check_positive_int("max_buffered_batches", max_buffered_batches),
        dont_rebatch=bool(dont_rebatch),
        batch_columns=tuple(check_batch_columns(batch_columns, blob_names)),
        timeout=timeout,
        worker_type=worker_type,
        deterministic=bool(deterministic),
        seed=None if seed is None else check_int("seed", seed),
        log_interval_secs=check_positive_seconds("log_interval_secs", log_interval_secs),
        shm_bytes_per_worker=check_positive_int("shm_bytes_per_worker", shm_bytes_per_worker,
                                                or_none=True),
        stall_warning_secs=check_positive_seconds("stall_warning_secs", stall_warning_secs,
                                                  or_none=True),
        dtypes=check_dtypes(dtypes, blob_names),
        max_fetch_failures=check_max_fetch_failures(max_fetch_failures),
        start_method=start_method,
    )


def build_input(config: InputConfig, fetch_fun: FetchFun, sink: BatchSink,
                backends: BackendFactory, *, worker_ids: list[int],
                init_fun: InitFun | None = None,
                external_loggers: Iterable[ExternalLogger] | None = None,
                input_type: type[InputCoordinator] = InputCoordinator,
                stage_type: type[BatchStage] = BatchStage) -> InputCoordinator:
    """The input: its backend (not started), feeder and coordinator, feeding ``sink``.

    ``input_type`` and ``stage_type`` let the Caffe2 front end build the
    subclasses that carry upstream's attribute names (``_compat.py``).

    Raises:
        TypeError: ``fetch_fun`` cannot be sent to worker processes (process workers).
    """
    spec = BackendSpec(
        fetch_fun=fetch_fun, input_source=config.input_source, blob_names=config.blob_names,
        batch_columns=config.batch_columns, dont_rebatch=config.dont_rebatch, seed=config.seed,
        shm_bytes_per_worker=config.shm_bytes_per_worker, dtype_rule=sink.dtype_rule,
        words=sink.words,
        deterministic=config.deterministic, skip_fetch_failures=config.max_fetch_failures != 0,
        dtypes=config.dtypes, start_method=config.start_method)
    make_backend = backends(config.worker_type, spec)
    feeder = stage_type(config, worker_ids, Metrics(external_loggers), sink)
    return input_type(config, worker_ids, init_fun, feeder, make_backend, fetch_fun)
