"""Process fetchers: ``fetch_fun`` runs in worker processes.

For fetchers that hold the GIL (pure-Python decoding, parsing, augmentation):
each worker is a process with its own interpreter, so N workers use N cores.
Arrays come back through a shared-memory ring per worker (``_shm_ring.py``);
only a few bytes of metadata cross the socket.

How workers start, and why: each is a fresh interpreter (``subprocess``,
``python -m data_workers._process_child``), i.e. *spawn* semantics.  The
trainer already runs Caffe2 and our own threads when workers start; ``fork``
would copy their locked mutexes and half-initialised thread pools into the
child, where they can deadlock.  ``multiprocessing``'s spawn and forkserver
start methods are safe but leave a helper process (the resource tracker, or
the fork server) running after ``stop()``.  Launching the interpreter
ourselves, with the socket and the arena's memfd passed as inherited file
descriptors, leaves nothing behind.  We reuse multiprocessing's spawn
*preparation* (``multiprocessing.spawn.get_preparation_data``/``prepare``), so
the rules users know from spawn hold: ``fetch_fun`` must be picklable (a
module-level function, or an instance of a module-level class), and the
training script's ``__main__`` is imported in each child (guard it with
``if __name__ == "__main__":``).

Per worker the trainer runs one receiver thread, so one worker's full share of
the channel never holds up another's messages (deterministic mode depends on
that), and a dead worker is noticed within ``_POLL_SECS``.
Shutdown: NOTE [ Shutdown and error protocol ] in ``_coordinator.py``.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import multiprocessing.spawn
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, List, Optional, Tuple, TYPE_CHECKING

from ._coordinator import join_threads
from ._errors import DataInputError, FetcherError, RemoteTraceback, WorkerDiedError
from ._metrics import Metrics
from ._process_child import IN_WORKER_ENV, ChildSpec
from ._shm_ring import ShmArena

if TYPE_CHECKING:
    from ._input import BatchFeeder, InputCoordinator

__all__ = ["ProcessFetchers", "DEFAULT_SHM_BYTES_PER_WORKER"]

logger = logging.getLogger(__name__)

#: Shared memory per worker process unless told otherwise.
DEFAULT_SHM_BYTES_PER_WORKER = 64 << 20
_POLL_SECS = 0.1


def _death_reason(exitcode: Optional[int]) -> Tuple[str, Optional[str]]:
    if exitcode is not None and exitcode < 0:
        try:
            name: Optional[str] = signal.Signals(-exitcode).name
        except ValueError:
            name = "signal %d" % -exitcode
        return "was killed by %s" % name, name
    return "exited with code %s without reporting an error" % exitcode, None


class _ProcessWorker:
    """One worker process, its arena, its socket and its receiver thread."""

    def __init__(self, owner: "ProcessFetchers", worker_id: int, spec: ChildSpec) -> None:
        self.owner = owner
        self.worker_id = worker_id
        self.spec = spec
        self.arena = ShmArena(spec.capacity, name="data_workers-%s-%d" % (spec.input_source, worker_id))
        self.arena.batch_size = owner.feeder.batch_size
        self.process: Optional[subprocess.Popen] = None
        #: Set once the child is set up and about to call fetch_fun.  Before
        #: that it only imports modules, so stop() may end it without waiting.
        self.ready = False
        self.conn: Optional[Connection] = None
        self.thread = threading.Thread(
            target=self._receive, daemon=True,
            name="data_workers %s receiver %d" % (spec.input_source, worker_id))

    @property
    def pid(self) -> Optional[int]:
        return None if self.process is None else self.process.pid

    def start(self, preparation: dict, spec_bytes: bytes) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "data_workers._process_child",
                 str(theirs.fileno()), str(self.arena.fd)],
                pass_fds=(theirs.fileno(), self.arena.fd), close_fds=True,
                # Own session: a Ctrl-C at the terminal goes to the trainer, which
                # stops the workers in order, not straight to the workers.
                start_new_session=True)
        finally:
            theirs.close()  # the child has its copy; EOF on ours means it is gone
        self.conn = Connection(ours.detach())
        self.conn.send(preparation)
        self.conn.send_bytes(spec_bytes)
        self.thread.start()

    # -- receiver thread ----------------------------------------------------
    def _receive(self) -> None:
        coordinator = self.owner.coordinator
        source = self.owner.feeder.input_source
        conn = self.conn
        if conn is None:
            return
        try:
            while not self.owner.halted:
                if not multiprocessing.connection.wait([conn], _POLL_SECS):
                    continue
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    self._died()
                    return
                if not self._handle(message):
                    return
        except DataInputError as failure:
            coordinator.fail(failure.where(source, self.worker_id))
        except Exception as exc:
            wrapped = FetcherError("receiving from fetcher %d of input %r failed: %s"
                                   % (self.worker_id, source, exc))
            wrapped.__cause__ = exc
            coordinator.fail(wrapped.where(source, self.worker_id))

    def _handle(self, message: tuple) -> bool:
        feeder = self.owner.feeder
        kind = message[0]
        if kind == "chunk":
            _, span, layouts, objects, fetch_secs = message
            self.owner.metrics.put_metric("fetcher_time", fetch_secs)
            views = self.arena.views(layouts)
            arrays = [objects[i] if i in objects else views.pop(0)
                      for i in range(len(layouts) + len(objects))]
            chunk = feeder.accept(self.worker_id, arrays)
            if chunk is None:
                self.arena.release(span)
                return True
            arena = self.arena
            chunk.release = lambda: arena.release(span)
            return feeder.put_chunk(chunk)
        if kind == "ready":
            self.ready = True
            return True
        if kind == "skip":
            self.owner.metrics.put_metric("fetcher_time", message[1])
            return feeder.put(None, self.owner.coordinator, self.worker_id)
        if kind == "error":
            raise self._remote_error(*message[1:])
        raise RuntimeError("unknown message from worker %d: %r" % (self.worker_id, kind))

    def _remote_error(self, blob: Optional[bytes], type_name: str, text: str,
                      tb: str) -> DataInputError:
        exc: BaseException
        try:
            exc = pickle.loads(blob) if blob is not None else Exception("%s: %s" % (type_name, text))
        except Exception:
            exc = Exception("%s: %s" % (type_name, text))
        exc.__cause__ = RemoteTraceback(tb)
        if isinstance(exc, DataInputError):
            return exc
        err = FetcherError("fetcher %d (pid %s) of input %r raised %s: %s" % (
            self.worker_id, self.pid, self.owner.feeder.input_source, type_name, text))
        err.__cause__ = exc
        return err

    def _died(self) -> None:
        if self.owner.halted or self.process is None:
            return
        try:
            exitcode: Optional[int] = self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            exitcode = None  # closed its socket but still running: treat as dead
        reason, signal_name = _death_reason(exitcode)
        err = WorkerDiedError(
            "fetcher %d (pid %s) of input %r %s" % (
                self.worker_id, self.pid, self.owner.feeder.input_source, reason),
            pid=self.pid, exitcode=exitcode, signal_name=signal_name)
        self.owner.coordinator.fail(err.where(self.owner.feeder.input_source, self.worker_id))

    # -- shutdown -------------------------------------------------------------
    def join_process(self, deadline: float) -> bool:
        """Wait, then terminate, then kill.  True if it had ended by itself."""
        if self.process is None:
            return True
        if not self.ready and self.process.poll() is None:
            # Still starting (importing the training script): nothing of the
            # user's runs yet, so ending it now loses nothing.
            self.process.terminate()
        try:
            self.process.wait(max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            pass
        logger.warning("fetcher %d (pid %s) did not stop in time; terminating it",
                       self.worker_id, self.pid)
        self.process.terminate()
        try:
            self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.arena.close()


class ProcessFetchers:
    """The process backend of one input: a worker process per worker id."""

    def __init__(self, coordinator: "InputCoordinator", fetch_fun: Callable[[int, int], Any],
                 metrics: Metrics, feeder: "BatchFeeder") -> None:
        config = coordinator.config
        self.coordinator = coordinator
        self.feeder = feeder
        self.metrics = metrics
        self.fetch_fun = fetch_fun
        self.halted = False
        # Held while start() spawns: join() takes it first, so a stop() racing
        # start() joins every child start() made (start() spawns no more once
        # halted), instead of closing arenas under a spawn and leaking children.
        self._start_lock = threading.Lock()
        feeder.batch_size_hooks.append(self._set_batch_size)
        base_seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2 ** 31)
        capacity = config.shm_bytes_per_worker or DEFAULT_SHM_BYTES_PER_WORKER
        self.workers: List[_ProcessWorker] = [
            _ProcessWorker(self, wid, ChildSpec(
                worker_id=wid, fetch_fun=fetch_fun, seed=base_seed + index,
                blob_names=tuple(config.blob_names), batch_columns=tuple(config.batch_columns),
                dont_rebatch=config.dont_rebatch, input_source=config.input_source,
                capacity=capacity))
            for index, wid in enumerate(coordinator.worker_ids)
        ]
        self.threads = [w.thread for w in self.workers]

    def _set_batch_size(self, batch_size: int) -> None:
        for w in self.workers:
            w.arena.batch_size = batch_size

    @property
    def pids(self) -> List[Optional[int]]:
        """Process ids of the workers (None before start)."""
        return [w.pid for w in self.workers]

    def start(self) -> None:
        if os.environ.get(IN_WORKER_ENV):
            raise RuntimeError(
                "process workers were started inside a worker process, most likely because the "
                "training script starts them at import time: put its entry point under "
                "'if __name__ == \"__main__\":' (worker processes import the script, as with "
                "multiprocessing's spawn)")
        preparation = multiprocessing.spawn.get_preparation_data(self.feeder.input_source)
        # The authkey only matters to multiprocessing's own managers and
        # refuses to be pickled outside a multiprocessing spawn.
        preparation.pop("authkey", None)
        with self._start_lock:
            for w in self.workers:
                if self.halted:  # stop() raced start(): spawn nothing more
                    break
                w.start(preparation, pickle.dumps(w.spec))

    def halt(self) -> None:
        """Ask the children to stop; receivers stop within ``_POLL_SECS``."""
        self.halted = True
        for w in self.workers:
            w.arena.request_stop()

    def join(self, deadline: float) -> bool:
        # Receivers first (they end within _POLL_SECS of halt()), then close
        # our socket ends: a child blocked sending to a full socket gets EPIPE
        # and exits instead of waiting for a reader that is gone.
        with self._start_lock:  # wait out a start() in progress (see __init__)
            pass
        ok = join_threads(self.threads, deadline, self.feeder.input_source)
        for w in self.workers:
            if not w.thread.is_alive() and w.conn is not None:
                w.conn.close()
        for w in self.workers:
            ok = w.join_process(deadline) and ok
        # Chunks still pointing into the arenas are dropped before unmapping.
        self.coordinator.release_leftovers()
        for w in self.workers:
            w.close()
        return ok
