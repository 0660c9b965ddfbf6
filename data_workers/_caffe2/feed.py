"""The Caffe2 side of one input: its queue, dequeue ops and a prepared enqueue net.

Layout for an input with blobs ``data`` and ``label``, source ``train``, name
scope ``gpu_0/``::

    gpu_0/data_label_c2queue_train      one BlobsQueue holding whole batches
    gpu_0/data_scratch_train            scratch blobs the enqueue net pushes
    gpu_0/label_scratch_train
    net: DequeueBlobs(queue) -> gpu_0/data, gpu_0/label      (added to the user's net)

Every blob of a batch travels in one queue entry, so data and label can never
go out of step (upstream used a queue per blob and enqueued them one by one).

Everything runs in the workspace that was current when the input was built,
through a handle captured then (NOTE [ Shutdown and error protocol ], rule 9,
in ``_core/coordinator.py``): a later ``SwitchWorkspace`` does not move an input,
and ``ResetWorkspace`` of its workspace stops it first (``_caffe2/workspace_guard.py``).
When the input stops, ``cleanup`` drains the queue and removes the scratch
blobs, the status blob and the enqueue net; the queue blob itself stays,
closed and empty, because the user's net holds a pointer to it.

The enqueue net is built once; pushing a batch is one ``Net.run()``.  On the CPU
the re-batcher writes straight into the scratch blobs' tensor memory (numpy
views from ``TensorCPU.data``); ``SafeEnqueueBlobs`` then swaps the blobs into
the queue, so the one copy made by the re-batcher is the only one.  On a GPU
device scope (and for string blobs) the batch is assembled in a host staging
array and fed with ``FeedBlob`` (the host-to-device copy), then enqueued.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import sys
import threading
import warnings
import weakref
from typing import Any, Callable
from collections.abc import Sequence

import numpy as np
from caffe2.proto import caffe2_pb2
from caffe2.python import core, workspace

from .._core.sink import BatchLayout
from .._core.words import FETCHER_WORDS
from .dtypes import CAFFE2_DTYPE_RULE, TENSOR_DTYPES

__all__ = ["Caffe2Feed", "Caffe2Names", "caffe2_names", "caffe2_dtype",
           "MAX_DEQUEUE_TIMEOUT_SECS"]

logger = logging.getLogger(__name__)

#: Capacity of the Caffe2 queue, in batches (upstream used 4 per blob).
C2_QUEUE_CAPACITY = 4

#: The queue object itself lives on the host, whatever device its batches are on.
_CPU = caffe2_pb2.DeviceOption(device_type=caffe2_pb2.CPU)

#: The validator's table (``_caffe2/dtypes.py``) as Caffe2 tensor types.
_DTYPES = {dtype: getattr(core.DataType, name) for dtype, name in TENSOR_DTYPES.items()}

#: The longest dequeue wait Caffe2 honours, in seconds.  DequeueBlobs keeps
#: ``timeout_secs`` as a 32-bit float and waits ``int32(timeout_secs * 1000)``
#: milliseconds: from float32 2147483.75 s on (24.8 days) the product
#: overflows and every dequeue on an empty queue fails at once (measured;
#: ``tests/test_boundary.py`` measures it again).  2147483.5 is the largest
#: float32 below the overflow.
MAX_DEQUEUE_TIMEOUT_SECS = 2147483.5


@dataclasses.dataclass(frozen=True)
class Caffe2Names:
    """The workspace blobs and net one input creates besides the user's output blobs."""

    queue: str
    scratch: tuple[str, ...]
    status: str
    #: The enqueue net's requested name (core.Net may make it unique).
    net: str

    def all_blobs(self) -> tuple[str, ...]:
        return (self.queue,) + self.scratch + (self.status,)


def caffe2_names(blob_names: Sequence[str], namescope: str, input_source: str) -> Caffe2Names:
    """The one place the names of an input's queue and scratch blobs are derived.

    Two live inputs whose names overlap would push into one queue or one
    scratch blob; ``init_data_input_workers`` refuses the second by comparing these.
    """
    queue = "%s%s_c2queue_%s" % (namescope, "_".join(blob_names), input_source)
    return Caffe2Names(
        queue=queue,
        scratch=tuple("%s%s_scratch_%s" % (namescope, b, input_source) for b in blob_names),
        status="%s%s_enqueue_status_%s" % (namescope, "_".join(blob_names), input_source),
        net="data_workers_enqueue/" + queue)


def caffe2_dtype(dtype: np.dtype) -> int | None:
    """The Caffe2 tensor type a numpy dtype maps to without conversion, or None."""
    return _DTYPES.get(np.dtype(dtype))


_EMPTY = np.zeros((0,), np.float32)

#: dtypes both Caffe2 and ``torch.from_numpy`` (torch 1.10) take: not uint16.
_LENDABLE = frozenset(np.dtype(t) for t in (
    np.float64, np.float32, np.float16, np.int64, np.int32, np.int16, np.int8, np.uint8, np.bool_))


#: How long interpreter exit waits for the background torch import (``_finish_torch_import``).
TORCH_IMPORT_EXIT_SECS = 60.0

_torch_module: Any = None
_torch_import_lock = threading.Lock()
_torch_import_started = False


def _torch_ready(start_import: bool) -> bool:
    """True once torch is imported; else, if ``start_import``, starts importing it
    on a thread of its own.

    Lending needs torch, and importing it takes 1-2 s: on the enqueuer's thread
    that delayed the first batch of process workers by as much.  Until it is
    imported, batches are copied instead (``can_lend`` is False); the import
    holds no lock of any input.  The caller starts it only after its first
    batch: the import holds the GIL much of the time, and would slow that one.
    """
    global _torch_import_started
    if _torch_module is not None:
        return True
    module = sys.modules.get("torch")
    if module is not None and not _being_imported(module):
        _torch()  # imported by the script: nothing left to wait for
        return True
    with _torch_import_lock:
        if start_import and not _torch_import_started:
            _torch_import_started = True
            importer = threading.Thread(target=_import_torch, daemon=True,
                                        name="data_workers torch import")
            importer.start()
            atexit.register(_finish_torch_import, importer)
    return False


def _finish_torch_import(importer: threading.Thread) -> None:
    """At interpreter exit: let an import still running end first, for at most
    ``TORCH_IMPORT_EXIT_SECS``.

    torch's import builds its Python bindings in C++; left running on a daemon
    thread while the interpreter finalizes, it races the final garbage
    collection and crashes the process (SIGSEGV after the script's last line,
    a few runs in a hundred).  A daemon thread still, so that an import that
    never ends cannot keep the process alive forever.
    """
    importer.join(TORCH_IMPORT_EXIT_SECS)
    if importer.is_alive():
        logger.warning("torch was still being imported (for lending batches) %.0f s after the "
                       "script ended; exiting anyway", TORCH_IMPORT_EXIT_SECS)


def _being_imported(module: Any) -> bool:
    """Whether ``module`` is in ``sys.modules`` only because a thread is still
    importing it: an ``import`` of it on another thread would wait for that
    thread.  (importlib marks the module's spec while its code runs.)"""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _import_torch() -> None:
    try:
        _torch()
    except Exception:  # without torch, batches are copied: slower, still correct
        logger.warning("importing torch failed; process workers' batches are copied instead "
                       "of lent", exc_info=True)


def _torch() -> Any:
    """torch, imported on first use: only lent batches need it (``Blob.feed`` takes a
    torch tensor over shared memory without copying it).  Cached: lending calls it
    on every batch, and ``catch_warnings`` is neither free nor thread-safe."""
    global _torch_module
    if _torch_module is None:
        with warnings.catch_warnings():
            # torch 1.10 imports pkg_resources, which warns on current setuptools.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            import torch
        _torch_module = torch
    return _torch_module


def is_gpu(device_option: caffe2_pb2.DeviceOption) -> bool:
    return bool(core.IsGPUDeviceType(device_option.device_type))


#: Weak references to lent arrays Caffe2 has not dropped yet (``_Lease``).
_LIVE_LEASE_REFS: dict[int, Any] = {}


class _Lease:
    """One lent batch: calls ``release`` once Caffe2 has dropped all its arrays.

    A weak reference with a callback per array, kept in a module-level dict
    until it fires, so that no garbage collection can drop it first
    (``weakref.finalize`` does the same with more bookkeeping, and this runs
    on every batch).  The last callback may run on any thread that drops a
    tensor, hence the lock.
    """

    __slots__ = ("_left", "_release", "_lock")

    def __init__(self, arrays: int, release: Callable[[], None]) -> None:
        self._left = arrays
        self._release = release
        self._lock = threading.Lock()

    def watch(self, arr: np.ndarray) -> None:
        ref = weakref.ref(arr, self._dropped)
        _LIVE_LEASE_REFS[id(ref)] = ref

    def _dropped(self, ref: Any) -> None:
        _LIVE_LEASE_REFS.pop(id(ref), None)
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._release()


class Caffe2Feed:
    """Creates and drives the Caffe2 objects of one input (a ``BatchSink``, ``_core/sink.py``).

    Args:
        blob_names: the input's blob names as given by the user (unscoped).
        namescope: the Caffe2 name scope captured at init (``""`` or ``"gpu_0/"``).
        input_source: the input source name.
        device_option: the device scope captured at init.
        timeout: dequeue timeout in seconds for the ops added to the user's net;
            ``inf`` waits until a batch comes or the queue is closed.  At most
            ``MAX_DEQUEUE_TIMEOUT_SECS`` otherwise (checked by the caller).
    """

    dtype_rule = CAFFE2_DTYPE_RULE
    words = FETCHER_WORDS
    full_hint = "the Caffe2 queue is full; is the training loop still calling RunNet?"
    hidden_arrays: frozenset[str] = frozenset()

    def __init__(self, blob_names: Sequence[str], namescope: str, input_source: str,
                 device_option: caffe2_pb2.DeviceOption, timeout: float) -> None:
        self.namescope = namescope
        #: ``BatchSink.scope``: this input's blobs, queue and net live in it.
        self.scope = namescope
        self.device_option = device_option
        self.timeout = float(timeout)
        self.outputs = [namescope + b for b in blob_names]
        self.names = caffe2_names(blob_names, namescope, input_source)
        self.queue_name = self.names.queue
        self.scratch = list(self.names.scratch)
        self.status_blob = self.names.status
        self.net_name = self.names.net
        self.input_source = input_source
        self._host_staging = is_gpu(device_option)
        #: Set at the first lent batch (see ``destinations``).
        self._lending = False
        #: can_lend() calls so far (the first batch is copied: ``_torch_ready``).
        self._lend_asks = 0
        # Reentrant: NOTE [ Shutdown and error protocol ], rule 7 (_core/coordinator.py).
        self._close_lock = threading.RLock()
        self._closed = False
        self._cleaned = False
        #: The workspace this input lives in, captured now (rule 9).
        self.workspace_name: str = workspace.C.current_workspace()
        self._ws = workspace.C.Workspace.current
        self._net: Any = None
        self._create()
        # Caffe2 keeps queue statistics per queue name for the life of the
        # process (a queue re-created under this name continues them): count
        # from here.
        self._stat_base = self._queue_stats()
        #: (last raw read_time_ns, nanoseconds waited up to it): one consistent pair.
        self._waited: tuple[int, int] = (self._stat_base[1], 0)

    def _queue_stats(self) -> tuple[int, int]:
        """(queue_balance, read_time_ns sum) of this queue in Caffe2's statistics.

        ``queue_balance`` falls by one at every read attempt and rises by one at
        every write; ``read_time_ns`` sums how long each completed read took,
        waiting for a batch included.
        """
        stats = workspace.C.get_stats()
        return (stats.get(self.queue_name + "/queue_balance", 0),
                stats.get(self.queue_name + "/read_time_ns/sum", 0))

    def read_attempts(self) -> int:
        """Dequeues attempted since init, less batches enqueued (before the
        first enqueue: how many reads found nothing)."""
        return self._stat_base[0] - self._queue_stats()[0]

    def consumer_wait_secs(self) -> float:
        """Seconds the net's dequeues have spent waiting for a batch since init
        (completed dequeues only).

        ``get_stats`` hands the nanosecond sum over as a signed 32-bit number:
        it wraps every 4.29 s of waiting.  Each call adds the difference to
        the last reading modulo 2**32, so callers must ask more often than
        that (the enqueuer does, ``BatchStage.pump``).

        No lock: ``stats()`` calls this, and may run in a signal handler that
        interrupted another call of it (NOTE [ Shutdown and error protocol ],
        rule 7).  Each caller publishes a self-consistent (raw, total) pair;
        one published late by a slower caller is older, never wrong.
        """
        raw = self._queue_stats()[1]
        last_raw, total = self._waited
        total += (raw - last_raw) % (1 << 32)
        self._waited = (raw, total)
        return total / 1e9

    def _run_op(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str],
                device_option: caffe2_pb2.DeviceOption = _CPU, **kwargs: Any) -> None:
        # BlobReferences: our names are scoped already; plain strings would be
        # scoped again by whatever NameScope is current now.
        ref = core.BlobReference
        self._ws._run_operator(core.CreateOperator(
            op_type, [ref(b) for b in inputs], [ref(b) for b in outputs],
            device_option=device_option, **kwargs).SerializeToString())

    def _create(self) -> None:
        self._run_op("CreateBlobsQueue", [], [self.queue_name],
                     num_blobs=len(self.outputs), capacity=C2_QUEUE_CAPACITY)
        # Create the scratch blobs here, on the caller's thread, so enqueue
        # threads never create blobs while the workspace's blob map is read.
        self._scratch_blobs = [self._ws.create_blob(name) for name in self.scratch]
        for blob in self._scratch_blobs:
            blob.feed(np.zeros((0,), np.float32), self.device_option)
        self._ws.create_blob(self.status_blob).feed(np.zeros((1,), np.bool_))
        net = core.Net(self.net_name)
        # core.Net uniquifies names per process ("..._1" for a second input with
        # this queue name, even after ResetWorkspace): use the net's real name.
        self.net_name = net.Proto().name
        # BlobReferences: our names are already scoped; plain strings would be
        # scoped again by whatever NameScope is current now.
        ref = core.BlobReference
        scratch = [ref(b) for b in self.scratch]
        net.SafeEnqueueBlobs([ref(self.queue_name)] + scratch, scratch + [ref(self.status_blob)],
                             device_option=self.device_option)
        self._net = self._ws._create_net(net.Proto().SerializeToString(), True)

    def add_dequeue_ops(self, net: Any) -> bool:
        """Add one DequeueBlobs op for all blobs to ``net`` (a core.Net or ModelHelper).

        Returns:
            False if the net already dequeues from this input's queue (nothing added).
        """
        target = net.net if isinstance(getattr(net, "net", None), core.Net) else net
        for op in target.Proto().op:
            if op.type == "DequeueBlobs" and op.input and op.input[0] == self.queue_name:
                return False
        target.DequeueBlobs(
            [core.BlobReference(self.queue_name)],
            [core.BlobReference(o) for o in self.outputs],
            # Caffe2 waits without a deadline for timeout_secs <= 0.
            timeout_secs=0.0 if math.isinf(self.timeout) else self.timeout,
            device_option=self.device_option,
            # Caffe2 prints the op's name when the op fails: say what to check.
            name=dequeue_op_name(self.input_source))
        return True

    def destinations(self, layout: BatchLayout) -> list[np.ndarray]:
        """Arrays the next batch is written into, one per blob.

        On the CPU path these are views of the scratch blobs' own memory.
        """
        if self._lending:
            # A scratch blob may hold a lent batch the queue swapped back: its
            # tensor must not be resized and written into (nor fed over: a
            # fed array keeps the blob's storage).  Replace it first.
            for blob in self._scratch_blobs:
                self._drop(blob)
        dests = []
        for blob, (shape, dtype) in zip(self._scratch_blobs, layout):
            c2type = _DTYPES.get(dtype)  # dtype is an np.dtype already: no conversion
            if self._host_staging or c2type is None:
                dests.append(np.empty(shape, dtype))
                continue
            tensor = blob.tensor()
            tensor.init(list(shape), c2type)
            dests.append(tensor.data)
        return dests

    def _staged(self, dest: np.ndarray) -> bool:
        """True if ``dest`` is a host staging array rather than a scratch blob's memory."""
        return self._host_staging or caffe2_dtype(dest.dtype) is None

    def enqueue(self, dests: Sequence[np.ndarray]) -> bool:
        """Push the batch written into ``dests`` as one queue entry.

        Blocks (without the GIL) while the queue is full.

        Returns:
            True if enqueued, False if the queue was closed meanwhile.
        """
        for blob, dest in zip(self._scratch_blobs, dests):
            if self._staged(dest):
                # A host staging array (GPU scope or string blob): feeding
                # copies it to the blob's device.
                blob.feed(dest, self.device_option)
        return self._push()

    def can_lend(self, arrays: Sequence[np.ndarray]) -> bool:
        """CPU scope and Caffe2 dtypes only: a GPU batch is staged and copied anyway."""
        if self._host_staging or not all(a.dtype in _LENDABLE for a in arrays):
            return False
        self._lend_asks += 1
        return _torch_ready(start_import=self._lend_asks > 1)

    def lend(self, arrays: list[np.ndarray], release: Callable[[], None]) -> bool:
        """Enqueue shared-memory arrays uncopied (``_core.sink.LendingSink``).

        Each array becomes a torch tensor over the same memory, fed to a scratch
        blob; Caffe2 keeps it through the queue and the net's output blob and
        drops it several batches later.  ``release`` runs when every array of
        the batch has been dropped.  The queue swaps an older batch back into
        each scratch blob; the next lend replaces it, and a copied batch drops
        it first (``destinations``), which is why ``LEND_LAG`` counts one
        enqueue past the swap.
        """
        torch = _torch()  # imported already: can_lend() said so
        if self._closed:
            # Its stop() may have given up on this thread: touch no blob (rule 9).
            release()
            return False
        handle_of = torch._C._tensor_impl_raw_handle
        lease = _Lease(len(arrays), release)
        self._lending = True
        for blob, arr in zip(self._scratch_blobs, arrays):
            lease.watch(arr)
            tensor = torch.from_numpy(arr)
            # What Blob.feed(tensor) does, less its type checks (this runs on
            # every batch): the blob takes its own reference to the tensor,
            # which must be alive during the call (a temporary's handle is not).
            blob._wrap_tensor_impl(handle_of(tensor))
            del arr, tensor  # the blob holds the only reference now
        arrays.clear()
        return self._push()

    def _drop(self, blob: Any) -> None:
        """Empty ``blob`` so that it holds no memory of its current tensor.

        Feeding a numpy array would resize the blob's tensor in place and keep
        its storage, and a lent batch's storage is a worker's shared memory
        (which the next fill would then overwrite): a new, empty tensor
        replaces the old one instead.
        """
        if self._lending:
            blob.feed(_torch().empty(0))
        else:
            blob.feed(_EMPTY, self.device_option)

    def _push(self) -> bool:
        """Run the enqueue net; True if the batch went in."""
        self._net.run()
        if not self._closed:
            # close() marks the feed closed before it closes the queue, so the
            # queue was open for this whole enqueue: it went in.  This skips
            # reading the status blob (several binding calls) on every batch.
            return True
        closed = self._ws.create_blob(self.status_blob).tensor().data
        return not closed.item()

    def close(self) -> None:
        """Close the queue: blocked enqueues return, dequeues fail once it is empty.

        Idempotent; never blocks.
        """
        with self._close_lock:
            if self._closed or self._cleaned:
                return
            self._closed = True
        self._run_op("CloseBlobsQueue", [self.queue_name], [])

    def cleanup(self) -> None:
        """Drain the (closed) queue and remove the scratch and status blobs and the
        enqueue net.  The enqueuer has ended.  Idempotent."""
        if self._cleaned:
            return
        self.close()
        # A closed queue hands out what it holds, then reports empty in the
        # status blob: SafeDequeueBlobs never fails, so Caffe2 logs nothing
        # (a failing DequeueBlobs would print an error on every clean stop).
        status = self._ws.create_blob(self.status_blob)
        for _ in range(C2_QUEUE_CAPACITY + 1):
            self._run_op("SafeDequeueBlobs", [self.queue_name], self.scratch + [self.status_blob],
                         device_option=self.device_option)
            if status.fetch().item():
                break
        # The BlobsQueue's own slot blobs still hold the tensors of earlier
        # batches (enqueue and dequeue swap them): up to C2_QUEUE_CAPACITY
        # batches per stopped input.  A closed, empty queue never touches its
        # slots again (a write or read on it returns before it would), so they
        # go, with their memory.  The queue blob itself stays, closed and empty:
        # the user's net holds a pointer to it.
        self._remove_slot_blobs()
        if self._lending:
            # The net's output blobs may still hold the last batch lent from a
            # worker's shared memory: give them a private copy of it, so the
            # ring (and the file descriptor its mapping keeps) goes back now.
            for name in self.outputs:
                if self._ws.has_blob(name) and self._ws.create_blob(name).is_tensor():
                    blob = self._ws.create_blob(name)
                    private = np.array(blob.fetch(), copy=True)
                    self._drop(blob)
                    blob.feed(private)
        self._remove_objects([self.status_blob] + self.scratch)

    def _slot_blobs(self) -> list[str]:
        """The blobs ``CreateBlobsQueue`` made for its slots (``<queue>_<slot>_<blob>``)."""
        return ["%s_%d_%d" % (self.queue_name, i, j)
                for i in range(C2_QUEUE_CAPACITY) for j in range(len(self.outputs))]

    def _remove_slot_blobs(self) -> None:
        for name in self._slot_blobs():
            if self._ws.has_blob(name):
                self._ws._remove_blob(name)

    def discard(self) -> None:
        """Undo ``__init__`` (the input was never handed to the user): remove the
        queue too (no net points at it)."""
        self.cleanup()
        self._ws._remove_blob(self.queue_name)

    def _remove_objects(self, blobs: Sequence[str]) -> None:
        self._cleaned = True
        self._scratch_blobs = []
        self._net = None
        if workspace.C.current_workspace() == self.workspace_name:
            # Caffe2 deletes nets in the current workspace only; elsewhere the
            # net (small) stays, and so must the scratch blobs its ops point at.
            workspace.C.delete_net(self.net_name)
        else:
            blobs = [self.status_blob]
        for name in blobs:
            self._ws._remove_blob(name)


def dequeue_op_name(input_source: str) -> str:
    """The name of the DequeueBlobs op an input adds to the user's net.

    Caffe2 prints it with the op when the op fails (a dequeue timeout, or a
    closed queue): the likely causes and the call that reports the real one.
    """
    return ("data_workers input %r: nothing to dequeue? coordinator.start() must be called "
            "first; once the input stopped or failed its dequeue fails at once, and "
            "coordinator.stop() raises the failure" % input_source)
