"""``init_data_input_workers`` and the global coordinator it returns.

Argument checking happens here, at the public boundary, with ``TypeError`` /
``ValueError`` messages that name the parameter and the fix.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

from caffe2.proto import caffe2_pb2
from caffe2.python import core, scope

from . import _workspace_guard
from ._args import check_positive_int, check_positive_seconds
from ._backend import BackendSpec, FetcherBackend, FetcherHost
from ._coordinator import GlobalWorkerCoordinator, InitFun
from ._enqueue import Caffe2Feed
from ._input import LOG_INT_SECS, BatchFeeder, InputConfig, InputCoordinator
from ._metrics import ExternalLogger, InputStats, Metrics
from ._thread_workers import ThreadFetchers

__all__ = ["GlobalCoordinator", "global_coordinator", "init_data_input_workers", "get_worker_ids"]

logger = logging.getLogger(__name__)

WORKER_TYPES = ("thread", "process")


def get_worker_ids(num_workers: int) -> List[int]:
    """``[0, ..., num_workers - 1]`` (upstream helper)."""
    return list(range(num_workers))


class GlobalCoordinator(GlobalWorkerCoordinator):
    """The data-input registry returned by every ``init_data_input_workers`` call.

    Usage::

        coordinator = data_workers.init_data_input_workers(net, ["data", "label"], fetch, 32)
        with coordinator:           # start() ... stop(), raising an input's failure
            for _ in range(iters):
                workspace.RunNet(net.Proto().name)
    """

    def inputs(self) -> List[InputCoordinator]:
        return [g for g in self._live_groups() if isinstance(g, InputCoordinator)]

    def release_workspace(self, workspace_name: str) -> None:
        """Stop and forget the inputs living in ``workspace_name`` (it is being reset).

        NOTE [ Shutdown and error protocol ], rule 9 (``_coordinator.py``).

        Raises:
            RuntimeError: an input's enqueuer could not be joined; resetting now
                would free memory it writes to.
        """
        doomed = [c for c in self.inputs() if _feed(c).workspace_name == workspace_name]
        if not doomed:
            return
        logger.warning(
            "ResetWorkspace(): stopping input(s) %s first, which still live in workspace %r "
            "(call stop() before resetting the workspace)",
            ", ".join("%r%s" % (c.name, " (scope %r)" % c.config.namescope
                                if c.config.namescope else "") for c in doomed),
            workspace_name)
        self._stop_groups(list(doomed), raise_failure=False, timeout=None)
        stuck = [c.name for c in doomed if c.enqueuer_thread.is_alive()]
        if stuck:
            raise RuntimeError(
                "refusing to reset Caffe2 workspace %r: the enqueuer of input(s) %s is still "
                "running inside it and would write to freed memory" % (workspace_name, stuck))

    def stats(self) -> Tuple[InputStats, ...]:
        """A frozen snapshot of every registered input's counters."""
        return tuple(c.stats() for c in self.inputs())

    def reset_data_input(self, namescope: str, name: str, net: Any, batch_size: int) -> None:
        """Point the input ``name`` in ``namescope`` at ``net`` with a new batch size.

        Adds the dequeue op to ``net`` unless it already has it.  Rows already
        fetched are kept; the new size applies from the next batch.
        """
        check_positive_int("batch_size", batch_size)
        logger.info("reset data input %r in %r: batch size %d", name, namescope, batch_size)
        for c in self.inputs():
            if c.name == name and c.config.namescope == namescope:
                c.feeder.set_batch_size(batch_size)
                _feed(c).add_dequeue_ops(net)


def _feed(c: InputCoordinator) -> Caffe2Feed:
    sink = c.feeder.sink
    if not isinstance(sink, Caffe2Feed):  # pragma: no cover - only this module builds them
        raise TypeError("input %r does not feed a Caffe2 queue" % c.name)
    return sink


global_coordinator = GlobalCoordinator()


def _check_args(net: Any, input_blob_names: Any, fetch_fun: Any, batch_size: Any,
                num_worker_threads: Any, max_buffered_batches: Any, batch_columns: Any,
                timeout: Any, worker_type: Any) -> List[int]:
    target = getattr(net, "net", net)
    if not isinstance(target, core.Net):
        raise TypeError("net must be a caffe2 core.Net or a ModelHelper, got %s" % type(net).__name__)
    if isinstance(input_blob_names, str) or not isinstance(input_blob_names, (list, tuple)) \
            or not input_blob_names or not all(isinstance(b, str) for b in input_blob_names):
        raise TypeError("input_blob_names must be a non-empty list of blob names, got %r"
                        % (input_blob_names,))
    if not callable(fetch_fun):
        raise TypeError("fetch_fun must be callable as fetch_fun(worker_id, batch_size), got %r"
                        % (fetch_fun,))
    check_positive_int("batch_size", batch_size)
    check_positive_int("num_worker_threads", num_worker_threads)
    check_positive_int("max_buffered_batches", max_buffered_batches)
    check_positive_seconds("timeout", timeout)
    if worker_type not in WORKER_TYPES:
        raise ValueError("worker_type must be one of %s, got %r" % (WORKER_TYPES, worker_type))
    if batch_columns is None:
        return [0] * len(input_blob_names)
    columns = list(batch_columns)
    if len(columns) != len(input_blob_names) or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in columns):
        raise ValueError("batch_columns must list one non-negative int per blob %s, got %r"
                         % (list(input_blob_names), batch_columns))
    return columns


def _check_process_args(fetch_fun: Any, shm_bytes_per_worker: Any) -> None:
    try:
        pickle.dumps(fetch_fun)
    except Exception as exc:
        raise TypeError(
            "worker_type='process' sends fetch_fun to spawned worker processes, so it must be "
            "picklable (a module-level function, or an instance of a module-level class); "
            "%r is not: %s" % (fetch_fun, exc)) from exc
    if shm_bytes_per_worker is not None:
        check_positive_int("shm_bytes_per_worker", shm_bytes_per_worker)


def init_data_input_workers(
    net: Any,
    input_blob_names: Sequence[str],
    fetch_fun: Callable[[int, int], Any],
    batch_size: int,
    num_worker_threads: int = 2,
    input_source_name: str = "train",
    max_buffered_batches: int = 800,
    init_fun: Optional[InitFun] = None,
    external_loggers: Optional[Iterable[ExternalLogger]] = None,
    dont_rebatch: bool = False,
    batch_columns: Optional[Sequence[int]] = None,
    timeout: float = 600,
    *,
    worker_type: str = "thread",
    deterministic: bool = False,
    seed: Optional[int] = None,
    log_interval_secs: float = LOG_INT_SECS,
    stall_warning_secs: Optional[float] = None,
    shm_bytes_per_worker: Optional[int] = None,
) -> GlobalCoordinator:
    """Feed ``input_blob_names`` of ``net`` from ``fetch_fun``, in the current scopes.

    Upstream-compatible arguments keep their meaning (see the README).  Extras:

    Args:
        worker_type: ``"thread"`` (default) or ``"process"``: fetchers run in
            spawned worker processes and return arrays through shared memory.
        deterministic: take one chunk from each worker in turn (worker-id order),
            so the batch stream depends on the fetchers' outputs alone.
        seed: the i-th process worker of this input seeds ``random`` and numpy
            with ``seed + i`` (default: a random base seed), so a run is
            reproducible whatever global worker ids it gets.
        log_interval_secs: seconds between inputs/sec logs and external-logger flushes.
        shm_bytes_per_worker: shared memory per process worker (default 64 MiB);
            a chunk larger than this is a ``ChunkValueError``.
        stall_warning_secs: if set, log one warning naming the stuck stage (and,
            for thread workers, the fetchers' stacks) when no batch has moved
            for this many seconds; see ``data_workers/_watchdog.py``.

    Returns:
        The global coordinator (the same object for every call).

    Raises:
        TypeError, ValueError: an argument is invalid (the message names it).
    """
    columns = _check_args(net, input_blob_names, fetch_fun, batch_size, num_worker_threads,
                          max_buffered_batches, batch_columns, timeout, worker_type)
    if worker_type == "process":
        _check_process_args(fetch_fun, shm_bytes_per_worker)
    check_positive_seconds("stall_warning_secs", stall_warning_secs, or_none=True)
    device_option = scope.CurrentDeviceScope()
    if device_option is None:
        device_option = caffe2_pb2.DeviceOption(device_type=caffe2_pb2.CPU)
    config = InputConfig(
        blob_names=tuple(input_blob_names), batch_size=batch_size,
        input_source=input_source_name, namescope=scope.CurrentNameScope(),
        device_option=device_option, num_workers=num_worker_threads,
        max_buffered_batches=max_buffered_batches, dont_rebatch=bool(dont_rebatch),
        batch_columns=tuple(columns), timeout=float(timeout), worker_type=worker_type,
        deterministic=bool(deterministic), seed=seed, log_interval_secs=log_interval_secs,
        shm_bytes_per_worker=shm_bytes_per_worker, stall_warning_secs=stall_warning_secs)
    spec = BackendSpec(
        fetch_fun=fetch_fun, input_source=input_source_name, blob_names=config.blob_names,
        batch_columns=config.batch_columns, dont_rebatch=config.dont_rebatch, seed=seed,
        shm_bytes_per_worker=shm_bytes_per_worker, deterministic=config.deterministic)
    _workspace_guard.watch(global_coordinator)
    # Build everything, then touch the user's net last; undo on any failure,
    # so a failed call leaves no queue, blob, net op or process behind.
    worker_ids = [global_coordinator.get_new_worker_id() for _ in range(num_worker_threads)]
    sink = Caffe2Feed(config.blob_names, config.namescope, config.input_source,
                      device_option, config.timeout)
    try:
        feeder = BatchFeeder(config, worker_ids, Metrics(external_loggers), sink)
        coordinator = InputCoordinator(config, worker_ids, init_fun, feeder,
                                       _backend_factory(worker_type, spec))
        sink.add_dequeue_ops(net)
    except BaseException:
        sink.discard()
        raise
    global_coordinator.add(coordinator)
    return global_coordinator


def _backend_factory(worker_type: str, spec: BackendSpec) -> "Callable[[FetcherHost], FetcherBackend]":
    if worker_type == "process":
        from ._process_workers import ProcessFetchers  # not imported by thread-only scripts

        return lambda host: ProcessFetchers(host, spec)
    return lambda host: ThreadFetchers(host, spec)
