"""``init_data_input_workers`` and the global coordinator it returns.

Argument checking happens here, at the public boundary, with ``TypeError`` /
``ValueError`` messages that name the parameter and the fix.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from typing import Any, Callable
from collections.abc import Iterable, Mapping, Sequence

from caffe2.proto import caffe2_pb2
from caffe2.python import core, scope

from .._core.args import check_positive_int, check_positive_seconds
from .._core.budget import FractionOrCount
from .._core.build import build_input, check_blob_names, check_input_args
from .._compat import BatchFeeder, GlobalWorkerCoordinator, UpstreamInput
from .._core.coordinator import STOP_TIMEOUT_SECS, InitFun
from .._core.metrics import ExternalLogger, InputStats
from .._core.pipeline import LOG_INT_SECS, InputCoordinator
from .._workers.factory import backend_factory
from . import start_watch as _start_watch
from . import workspace_guard as _workspace_guard
from .feed import MAX_DEQUEUE_TIMEOUT_SECS, Caffe2Feed, caffe2_names

__all__ = ["GlobalCoordinator", "global_coordinator", "init_data_input_workers", "get_worker_ids"]

logger = logging.getLogger(__name__)


def get_worker_ids(num_workers: int) -> list[int]:
    """``[0, ..., num_workers - 1]`` (upstream helper).

    Args:
        num_workers: how many ids.

    Returns:
        The list ``[0, 1, ..., num_workers - 1]``; it does not consult the
        registry (the ids an input's workers get are
        ``input_coordinator.get_worker_ids()``).
    """
    return list(range(num_workers))


class GlobalCoordinator(GlobalWorkerCoordinator):
    """The data-input registry returned by every ``init_data_input_workers`` call.

    Usage::

        coordinator = data_workers.init_data_input_workers(net, ["data", "label"], fetch, 32)
        with coordinator:           # start() ... stop(), raising an input's failure
            for _ in range(iters):
                workspace.RunNet(net.Proto().name)
    """

    def __init__(self) -> None:
        super().__init__()
        #: Stopped inputs whose enqueuer outlived stop()'s deadline (it was still
        #: importing torch, copying a batch...).  The registry has forgotten them,
        #: but the enqueuer may still touch their workspace's blobs: a reset of
        #: that workspace waits for it (NOTE [ Shutdown and error protocol ], rule 9).
        self._unjoined: list[InputCoordinator] = []

    def inputs(self) -> list[InputCoordinator]:
        """The registered inputs, one per ``init_data_input_workers`` call not yet stopped.

        Returns:
            A new list; ``stats()`` gives their counters.
        """
        return [g for g in self._live_groups() if isinstance(g, InputCoordinator)]

    def start(self) -> None:
        try:
            super().start()
        finally:
            _start_watch.settle()  # started inputs need no start watch

    def _stop_groups(self, groups: list[Any], raise_failure: bool,
                     timeout: float | None) -> bool:
        try:
            return super()._stop_groups(groups, raise_failure, timeout)
        finally:
            _start_watch.settle()
            with self._lock:
                stopped = [g for g in groups if isinstance(g, InputCoordinator)
                           and g not in self._unjoined]
                self._unjoined = [c for c in self._unjoined + stopped
                                  if c.enqueuer_thread.is_alive()]

    def release_workspace(self, workspace_name: str) -> None:
        """Stop and forget the inputs living in ``workspace_name`` (it is being reset),
        and wait up to 5 s for any enqueuer there that a stop() left running.

        ``workspace.ResetWorkspace()`` calls it for you; you need not.

        NOTE [ Shutdown and error protocol ], rule 9 (``_core/coordinator.py``).

        Args:
            workspace_name: the Caffe2 workspace being reset.

        Raises:
            RuntimeError: an input's enqueuer could not be joined; resetting now
                would free memory it writes to.
        """
        doomed = [c for c in self.inputs() if _feed(c).workspace_name == workspace_name]
        if doomed:
            logger.warning(
                "ResetWorkspace(): stopping input(s) %s first, which still live in workspace "
                "%r (call stop() before resetting the workspace)",
                ", ".join("%r%s" % (c.name, " (scope %r)" % _feed(c).namescope
                                    if _feed(c).namescope else "") for c in doomed),
                workspace_name)
            self._stop_groups(list(doomed), raise_failure=False, timeout=None)
        with self._lock:
            running = [c for c in self._unjoined if _feed(c).workspace_name == workspace_name]
        deadline = time.monotonic() + STOP_TIMEOUT_SECS
        for c in running:
            c.enqueuer_thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [c.name for c in running if c.enqueuer_thread.is_alive()]
        if stuck:
            raise RuntimeError(
                "refusing to reset Caffe2 workspace %r: the enqueuer of input(s) %s is still "
                "running inside it and would write to freed memory" % (workspace_name, stuck))

    def stats(self) -> tuple[InputStats, ...]:
        """A frozen snapshot of every registered input's counters.

        Returns:
            One ``InputStats`` per input, in registration order.

        Usage::

            for s in coordinator.stats():
                print(s.input_source, s.state, s.batches_enqueued, s.chunk_queue_depth)
        """
        return tuple(c.stats() for c in self.inputs())

    def reset_data_input(self, namescope: str, name: str, net: Any, batch_size: int) -> None:
        """Point the input ``name`` in ``namescope`` at ``net`` with a new batch size.

        Adds the dequeue op to ``net`` unless it already has it.  Rows already
        fetched are kept; the new size applies from the next batch.

        Args:
            namescope: the name scope the input was created in (``""`` or
                ``"gpu_0/"``).
            name: its ``input_source_name``.
            net: a ``core.Net`` or ``ModelHelper`` that will read the batches.
            batch_size: the new number of rows per batch.

        Raises:
            TypeError, ValueError: ``batch_size`` is not a positive int.
        """
        batch_size = check_positive_int("batch_size", batch_size)
        logger.info("reset data input %r in %r: batch size %d", name, namescope, batch_size)
        for c in self.inputs():
            if c.name == name and _feed(c).namescope == namescope:
                c.feeder.set_batch_size(batch_size)
                _feed(c).add_dequeue_ops(net)


def _feed(c: InputCoordinator) -> Caffe2Feed:
    sink = c.feeder.sink
    if not isinstance(sink, Caffe2Feed):  # pragma: no cover - only this module builds them
        raise TypeError("input %r does not feed a Caffe2 queue" % c.name)
    return sink


global_coordinator = GlobalCoordinator()


def _check_caffe2_args(net: Any, input_blob_names: Any, input_source_name: Any,
                       init_fun: Any, timeout: Any) -> tuple[tuple[str, ...], float]:
    """The checks only the Caffe2 front end has; ``check_input_args`` makes the rest.

    Returns:
        The blob names as a tuple, and the timeout in seconds.

    Raises:
        TypeError, ValueError: an argument is invalid (the message names it).
    """
    target = getattr(net, "net", net)
    if not isinstance(target, core.Net):
        raise TypeError("net must be a caffe2 core.Net or a ModelHelper, got %s" % type(net).__name__)
    blob_names = check_blob_names(input_blob_names, "input_blob_names")
    if not isinstance(input_source_name, str):
        raise TypeError("input_source_name must be a str, got %s %r"
                        % (type(input_source_name).__name__, input_source_name))
    if init_fun is not None and not callable(init_fun):
        raise TypeError("init_fun must be None or callable as init_fun(coordinator, "
                        "global_coordinator), got %r" % (init_fun,))
    return blob_names, _check_timeout(timeout)


def _check_timeout(timeout: Any) -> float:
    """``timeout`` as a float: positive seconds, at most ``MAX_DEQUEUE_TIMEOUT_SECS``, or
    ``inf`` (the dequeue op waits until a batch comes or the input stops)."""
    if isinstance(timeout, numbers.Real) and not isinstance(timeout, bool) \
            and not float(timeout) > 0:
        # Caffe2 itself would wait without a deadline for these (0, negative, NaN).
        raise ValueError("timeout must be a positive number of seconds, or float('inf') to "
                         "wait until a batch comes or the input stops; got %r" % (timeout,))
    seconds = check_positive_seconds("timeout", timeout)
    if seconds > MAX_DEQUEUE_TIMEOUT_SECS and not math.isinf(seconds):
        raise ValueError(
            "timeout=%r s is more than Caffe2's DequeueBlobs can wait: beyond %.1f s (about "
            "24.8 days) its millisecond count overflows and every dequeue fails at once; pass "
            "at most %.1f, or float('inf') to wait until a batch comes or the input stops"
            % (timeout, MAX_DEQUEUE_TIMEOUT_SECS, MAX_DEQUEUE_TIMEOUT_SECS))
    return seconds


def _check_no_live_twin(blob_names: Sequence[str], namescope: str, input_source: str) -> None:
    """Refuse an input whose Caffe2 queue or scratch blobs a live input already uses.

    Both would push into the same queue: rows would reach either net and
    batches would be torn.  A stopped input is no longer registered.
    """
    mine = caffe2_names(blob_names, namescope, input_source)
    for other in global_coordinator.inputs():
        feed = _feed(other)
        shared = [b for b in mine.all_blobs() if b in feed.names.all_blobs()]
        if shared:
            raise ValueError(
                "the live input %r in name scope %r (blobs %s) already uses the Caffe2 blob %r "
                "that this input (blobs %s, input_source_name=%r) would create: both would "
                "feed one queue and mix their batches. Pass another input_source_name, or "
                "stop() the first input before creating this one"
                % (feed.input_source, feed.namescope, list(other.config.blob_names), shared[0],
                   list(blob_names), input_source))


def init_data_input_workers(
    net: Any,
    input_blob_names: Sequence[str],
    fetch_fun: Callable[[int, int], Any],
    batch_size: int,
    num_worker_threads: int = 2,
    input_source_name: str = "train",
    max_buffered_batches: int = 800,
    init_fun: InitFun | None = None,
    external_loggers: Iterable[ExternalLogger] | None = None,
    dont_rebatch: bool = False,
    batch_columns: Sequence[int] | None = None,
    timeout: float = 600,
    *,
    worker_type: str = "thread",
    deterministic: bool = False,
    seed: int | None = None,
    log_interval_secs: float = LOG_INT_SECS,
    stall_warning_secs: float | None = None,
    shm_bytes_per_worker: int | None = None,
    dtypes: Mapping[str, Any] | None = None,
    max_fetch_failures: FractionOrCount = 0,
    start_method: str = "spawn",
) -> GlobalCoordinator:
    """Feed ``input_blob_names`` of ``net`` from ``fetch_fun``, in the current scopes.

    Appends to ``net`` one ``DequeueBlobs`` op that fills every blob of
    ``input_blob_names`` with the next batch (so call it before adding the ops
    that read them), and registers an input that, once
    ``start()`` is called on the returned coordinator, runs ``num_worker_threads``
    copies of ``fetch_fun``, cuts what they return into batches of exactly
    ``batch_size`` rows and queues up to 4 of them for the net.  Blob names, the
    Caffe2 queue and the scratch blobs are created under the name scope and device
    scope current at this call (``core.NameScope("gpu_0")`` gives ``gpu_0/data``).

    Usage::

        def fetch(worker_id, batch_size):   # batch_size is a hint
            rows = 50
            return [np.random.rand(rows, 4).astype(np.float32),
                    np.random.randint(0, 10, rows).astype(np.int32)]

        coordinator = data_workers.init_data_input_workers(
            model.net, ["data", "label"], fetch, 32)
        workspace.CreateNet(model.net)
        with coordinator:                   # start() ... stop()
            for _ in range(100):
                workspace.RunNet(model.net.Proto().name)

    Args:
        net: the net to feed: a Caffe2 ``core.Net`` or a ``ModelHelper`` (its
            ``.net``).  The dequeue op is added to it here, so call this before
            ``workspace.CreateNet``.
        input_blob_names: one blob name per array ``fetch_fun`` returns, in the
            same order, e.g. ``["data", "label"]``; names are unique and
            non-empty.
        fetch_fun: called as ``fetch_fun(worker_id, batch_size)`` in each worker,
            over and over; returns a list (or tuple) of numpy arrays, one per blob,
            with the same number of rows along each blob's batch column.  A chunk
            may hold any number of rows: ``batch_size`` is a hint, not a contract;
            the library re-batches.  ``None`` or a zero-row chunk is skipped.
            Dtypes are those a Caffe2 blob holds (``float32`` data and ``int32``
            labels for most operators); a dtype or trailing shape that changes
            between chunks is a ``ChunkValueError``.  An exception raised here
            stops the input and is re-raised by ``check()`` / ``stop()`` as a
            ``FetcherError``.
        batch_size: rows per batch the net receives (a positive int), and the
            hint passed to ``fetch_fun``.
        num_worker_threads: how many workers run ``fetch_fun`` at once (threads,
            or processes with ``worker_type="process"``).  Their ids, passed as
            ``worker_id``, are global across inputs: ``get_worker_ids(n)`` on
            upstream, or read them in ``init_fun``.
        input_source_name: names the input (``"train"``, ``"val"``): the
            Caffe2 queue, the logs, ``stats()``, ``stop_coordinator(name)`` and
            errors use it.  Two inputs may feed the same blob names under
            different names and never mix.
        max_buffered_batches: the most *chunks* (fetcher results, not batches)
            waiting between the fetchers and the re-batcher; fetchers block
            when it is reached.  It bounds the memory of thread workers:
            lower it when chunks are large (see the memory notes in the
            migration guide).  Process workers are bounded by their
            shared-memory ring instead.
        init_fun: called once as ``init_fun(input_coordinator,
            global_coordinator)`` in the training process by ``start()``, before
            any worker starts, e.g. to read ``input_coordinator.get_worker_ids()``.
            If it raises, ``start()`` raises ``FetcherError`` and starts nothing.
        external_loggers: objects with a ``log(metrics: dict)`` method; every
            ``log_interval_secs`` seconds each gets the upstream metric keys
            (``inputs_per_sec``, ``queue_size``, ``time_elapsed``,
            ``fetcher_time``, ``enqueue_time``, ``worker_time`` and their
            ``_count`` keys).  One that raises is logged and skipped.
        dont_rebatch: if true, each chunk ``fetch_fun`` returns is one batch as it
            is: blobs keep their own shapes and row counts (``lengths`` of 4
            beside ``values`` of 10), and ``batch_size`` is only the hint.
        batch_columns: per blob, the axis its rows run along: ``[1, 1, 0]`` for
            time-major ``(T, N, ...)`` data beside an ``(N,)`` label.  Default:
            axis 0 for every blob.
        timeout: seconds the net's ``DequeueBlobs`` waits for a batch before
            ``RunNet`` fails: a positive number up to 2147483.5 (about 24.8
            days), or ``float("inf")`` to wait until a batch comes or the input
            stops.  A failed or stopped input makes the dequeue fail at once,
            whatever the timeout.
        worker_type: ``"thread"`` (default) or ``"process"``: fetchers run in
            worker processes and return arrays through shared memory.
            ``fetch_fun`` is sent to them with cloudpickle: lambdas, closures and
            the training script's own functions and classes work (the script
            needs no ``__main__`` guard), with the globals they use copied into
            each worker; it must not hold locks, open files and the like.
        deterministic: take one chunk from each worker in turn (worker-id order),
            so the batch stream depends on the fetchers' outputs alone.
        seed: the i-th process worker of this input seeds ``random`` and numpy
            with ``seed + i`` (default: a random base seed), so a run is
            reproducible whatever global worker ids it gets.
        log_interval_secs: seconds between inputs/sec logs and external-logger flushes.
        shm_bytes_per_worker: the ring of shared memory per process worker, in
            bytes (default: sized at the first chunk to ten batches, at least
            64 MiB); a batch that cannot fit is a ``ChunkValueError``.
        stall_warning_secs: if set, log one warning naming the stuck stage (and,
            for thread workers, the fetchers' stacks) when no batch has moved
            for this many seconds (the stall watchdog in the reliability guide).
        dtypes: the dtype some or all blobs must have, e.g. ``{"data": np.float32,
            "label": np.int32}``: a chunk with another dtype is a ``ChunkTypeError``
            naming the blob, at the first chunk, instead of an error from the
            operator that reads the blob.
        max_fetch_failures: exceptions of ``fetch_fun`` to skip (bad records)
            instead of failing the input: ``0`` (default) none, an int N up
            to N, a float in (0, 1) that fraction of fetch calls (the first 100
            calls count as 100).  Each is logged and counted
            (``stats().fetch_failures``); the next one fails the input, saying
            how many were skipped.  See ``data_workers/_core/budget.py``.
        start_method: how process workers start: ``"spawn"`` (default) a fresh
            interpreter each, which imports numpy and what ``fetch_fun`` uses
            (0.2 s or more before the first batch); ``"fork"`` a fork of the
            trainer, which has them already (DataLoader's default on Linux),
            with fork's hazard: a lock another thread of the trainer held at
            that moment stays held in the worker (``docs/process-workers.md``).

    Returns:
        ``data_workers.global_coordinator``, the same object for every call:
        ``start()``, ``stop()``, ``check()`` and ``stats()`` on it act on every
        registered input.

    Raises:
        TypeError: an argument has the wrong type (``batch_size=True``,
            ``input_blob_names="data"``, a ``fetch_fun`` that is not callable, or,
            with ``worker_type="process"``, one that cannot be pickled); the
            message names the argument.
        ValueError: an argument has a wrong value (``batch_size=0``, duplicate
            blob names, ``timeout=0``, ``shm_bytes_per_worker`` without process
            workers), or a live input already uses the queue this one would
            create (same name scope, ``input_source_name`` and blob).
    """
    blob_names, timeout = _check_caffe2_args(net, input_blob_names, input_source_name,
                                             init_fun, timeout)
    config = check_input_args(
        fetch_fun=fetch_fun, blob_names=blob_names, batch_size=batch_size,
        num_workers=num_worker_threads, input_source=input_source_name, worker_type=worker_type,
        max_buffered_batches=max_buffered_batches, batch_columns=batch_columns,
        dont_rebatch=dont_rebatch, deterministic=deterministic, seed=seed, timeout=timeout,
        log_interval_secs=log_interval_secs, stall_warning_secs=stall_warning_secs,
        shm_bytes_per_worker=shm_bytes_per_worker, dtypes=dtypes,
        max_fetch_failures=max_fetch_failures, start_method=start_method)
    namescope = scope.CurrentNameScope()
    _check_no_live_twin(blob_names, namescope, input_source_name)
    device_option = scope.CurrentDeviceScope()
    if device_option is None:
        device_option = caffe2_pb2.DeviceOption(device_type=caffe2_pb2.CPU)
    _workspace_guard.watch(global_coordinator)
    # Build everything, then touch the user's net last; undo on any failure,
    # so a failed call leaves no queue, blob, net op or process behind.
    sink = Caffe2Feed(blob_names, namescope, input_source_name, device_option, timeout)
    try:
        worker_ids = [global_coordinator.get_new_worker_id() for _ in range(config.num_workers)]
        coordinator = build_input(config, fetch_fun, sink, backend_factory, worker_ids=worker_ids,
                                  init_fun=init_fun, external_loggers=external_loggers,
                                  input_type=UpstreamInput, stage_type=BatchFeeder)
        sink.add_dequeue_ops(net)
    except BaseException:
        sink.discard()
        raise
    global_coordinator.add(coordinator)
    _start_watch.watch(coordinator, lambda c: c in global_coordinator.groups)
    return global_coordinator
