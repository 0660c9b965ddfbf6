"""Process fetchers: ``fetch_fun`` runs in spawned worker processes.

For fetchers that hold the GIL (pure-Python decoding, parsing, augmentation):
each worker is a process with its own interpreter, so N workers use N cores.
Arrays come back through a shared-memory ring per worker (``_shm_ring.py``);
only a few bytes of metadata cross the pipe.

Why *spawn*: the trainer already runs Caffe2 and our own threads when workers
start.  ``fork`` would copy their locked mutexes and half-initialised thread
pools into the child, where they can deadlock; ``forkserver`` avoids that but
leaves its server process running after ``stop()``.  Spawn starts a clean
interpreter that inherits nothing, and leaves nothing behind.  The price: the
fetch function must be picklable (a module-level function or an instance of a
module-level class), and each child imports the main module (guard the
training script with ``if __name__ == "__main__":``).

Per worker the parent runs one receiver thread, so one worker's full share of
the channel never stops another's messages (deterministic mode depends on it),
and a dead worker is noticed within ``_POLL_SECS``.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import random
import signal
import threading
import time
from multiprocessing.reduction import DupFd
from typing import Any, Callable, List, Optional, TYPE_CHECKING

from ._coordinator import join_threads
from ._errors import DataInputError, FetcherError, RemoteTraceback, WorkerDiedError
from ._metrics import Metrics
from ._process_child import ChildSpec, child_main, received_fd
from ._shm_ring import ShmArena

if TYPE_CHECKING:
    from ._input import BatchFeeder, InputCoordinator

__all__ = ["ProcessFetchers", "DEFAULT_SHM_BYTES_PER_WORKER"]

logger = logging.getLogger(__name__)

#: Shared memory per worker process unless told otherwise.
DEFAULT_SHM_BYTES_PER_WORKER = 64 << 20
_POLL_SECS = 0.1
_START_METHOD = "spawn"


def _death_reason(exitcode: Optional[int]) -> tuple:
    if exitcode is not None and exitcode < 0:
        try:
            name: Optional[str] = signal.Signals(-exitcode).name
        except ValueError:
            name = "signal %d" % -exitcode
        return "killed by %s" % name, name
    return "exited with code %s without reporting an error" % exitcode, None


class _FdForChild:
    """Pickles as a copy of ``fd`` handed to the process being spawned.

    ``DupFd`` must be called *while* the child is being spawned: then the fd
    is passed at exec time.  Called earlier it falls back to a resource-sharer
    thread that would outlive ``stop()``.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple:
        return (received_fd, (DupFd(self.fd),))


class _ProcessWorker:
    """One worker process, its arena, its pipe and its receiver thread."""

    def __init__(self, owner: "ProcessFetchers", worker_id: int, spec: ChildSpec) -> None:
        self.owner = owner
        self.worker_id = worker_id
        self.arena = ShmArena(spec.capacity, name="data_workers-%s-%d" % (spec.input_source, worker_id))
        self.conn, child_conn = owner.ctx.Pipe(duplex=False)
        self._child_conn = child_conn
        self.process = owner.ctx.Process(
            target=child_main, name="data_workers %s fetcher %d" % (spec.input_source, worker_id),
            args=(spec, child_conn, owner.stop_event, owner.batch_size, _FdForChild(self.arena.fd)),
            daemon=True)
        self.thread = threading.Thread(
            target=self._receive, daemon=True,
            name="data_workers %s receiver %d" % (spec.input_source, worker_id))

    def start(self) -> None:
        self.process.start()
        self._child_conn.close()  # the child holds its end now; EOF means it is gone
        self.thread.start()

    # -- receiver thread ----------------------------------------------------
    def _receive(self) -> None:
        coordinator = self.owner.coordinator
        try:
            while not self.owner.halted:
                ready = multiprocessing.connection.wait([self.conn, self.process.sentinel], _POLL_SECS)
                if self.conn in ready:
                    try:
                        message = self.conn.recv()
                    except (EOFError, OSError):
                        self._died()
                        return
                    if not self._handle(message):
                        return
                elif ready:
                    self._died()
                    return
        except DataInputError as err:
            coordinator.fail(err.where(self.owner.feeder.input_source, self.worker_id))
        except Exception as exc:
            err = FetcherError("receiving from fetcher %d of input %r failed: %s"
                               % (self.worker_id, self.owner.feeder.input_source, exc))
            err.__cause__ = exc
            coordinator.fail(err.where(self.owner.feeder.input_source, self.worker_id))

    def _handle(self, message: tuple) -> bool:
        feeder = self.owner.feeder
        kind = message[0]
        if kind == "chunk":
            _, span, layouts, objects, fetch_secs = message
            self.owner.metrics.put_metric("fetcher_time", fetch_secs)
            views = self.arena.views(layouts)
            arrays = [objects[i] if i in objects else views.pop(0) for i in range(len(layouts) + len(objects))]
            chunk = feeder.accept(self.worker_id, arrays)
            if chunk is None:
                self.arena.release(span)
                return True
            arena = self.arena
            chunk.release = lambda: arena.release(span)
            return feeder.put_chunk(chunk)
        if kind == "skip":
            self.owner.metrics.put_metric("fetcher_time", message[1])
            return feeder.put(None, self.owner.coordinator, self.worker_id)
        if kind == "error":
            raise self._remote_error(*message[1:])
        raise RuntimeError("unknown message from worker %d: %r" % (self.worker_id, kind))

    def _remote_error(self, blob: Optional[bytes], type_name: str, text: str, tb: str) -> DataInputError:
        exc: BaseException
        try:
            exc = pickle.loads(blob) if blob is not None else Exception("%s: %s" % (type_name, text))
        except Exception:
            exc = Exception("%s: %s" % (type_name, text))
        exc.__cause__ = RemoteTraceback(tb)
        if isinstance(exc, DataInputError):
            return exc
        err = FetcherError("fetcher %d (pid %s) of input %r raised %s: %s" % (
            self.worker_id, self.process.pid, self.owner.feeder.input_source, type_name, text))
        err.__cause__ = exc
        return err

    def _died(self) -> None:
        if self.owner.halted:
            return
        self.process.join(1.0)
        reason, signal_name = _death_reason(self.process.exitcode)
        err = WorkerDiedError(
            "fetcher %d (pid %s) of input %r %s" % (
                self.worker_id, self.process.pid, self.owner.feeder.input_source, reason),
            pid=self.process.pid, exitcode=self.process.exitcode, signal_name=signal_name)
        self.owner.coordinator.fail(err.where(self.owner.feeder.input_source, self.worker_id))

    # -- shutdown -------------------------------------------------------------
    def join_process(self, deadline: float) -> bool:
        """Join, then terminate, then kill.  True if it had ended by itself."""
        if self.process.pid is None:
            return True
        self.process.join(max(0.0, deadline - time.monotonic()))
        if not self.process.is_alive():
            return True
        logger.warning("fetcher %d (pid %s) did not stop in time; terminating it",
                       self.worker_id, self.process.pid)
        self.process.terminate()
        self.process.join(1.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        return False

    def close(self) -> None:
        self.conn.close()
        if not self._child_conn.closed:
            self._child_conn.close()
        self.arena.close()
        if self.process.pid is not None:
            self.process.close()


class ProcessFetchers:
    """The process backend of one input: a spawned process per worker id."""

    def __init__(self, coordinator: "InputCoordinator", fetch_fun: Callable[[int, int], Any],
                 metrics: Metrics, feeder: "BatchFeeder") -> None:
        config = coordinator.config
        self.coordinator = coordinator
        self.feeder = feeder
        self.metrics = metrics
        self.ctx = multiprocessing.get_context(_START_METHOD)
        self.stop_event = self.ctx.Event()
        self.batch_size = self.ctx.Value("q", feeder.batch_size, lock=False)
        feeder.batch_size_hooks.append(self._set_batch_size)
        self.halted = False
        base_seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2 ** 31)
        capacity = config.shm_bytes_per_worker or DEFAULT_SHM_BYTES_PER_WORKER
        self.workers: List[_ProcessWorker] = [
            _ProcessWorker(self, wid, ChildSpec(
                worker_id=wid, fetch_fun=fetch_fun, seed=base_seed + wid,
                blob_names=tuple(config.blob_names), batch_columns=tuple(config.batch_columns),
                dont_rebatch=config.dont_rebatch, input_source=config.input_source,
                capacity=capacity))
            for wid in coordinator.worker_ids
        ]
        self.threads = [w.thread for w in self.workers]

    def _set_batch_size(self, batch_size: int) -> None:
        self.batch_size.value = batch_size

    @property
    def pids(self) -> List[Optional[int]]:
        return [w.process.pid for w in self.workers]

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def halt(self) -> None:
        """Ask the children to stop; receivers stop within ``_POLL_SECS``."""
        self.halted = True
        self.stop_event.set()

    def join(self, deadline: float) -> bool:
        # Receivers first (they end within _POLL_SECS of halt()), then close
        # our pipe ends: a child blocked sending to a full pipe gets EPIPE and
        # exits instead of waiting for a reader that is gone.
        ok = join_threads(self.threads, deadline, self.feeder.input_source)
        for w in self.workers:
            if not w.thread.is_alive():
                w.conn.close()
        for w in self.workers:
            ok = w.join_process(deadline) and ok
        # Chunks still pointing into the arenas are dropped before unmapping.
        self.feeder.release_buffers(include_rebatcher=not self.coordinator.enqueuer_thread.is_alive())
        for w in self.workers:
            w.close()
        return ok
