"""Process fetchers: ``fetch_fun`` runs in worker processes (contract: ``_backend.py``).

For fetchers that hold the GIL (pure-Python decoding, parsing, augmentation):
each worker is a process with its own interpreter, so N workers use N cores.
Arrays come back through a shared-memory ring per worker (``_shm_ring.py``);
only a few bytes of metadata cross the socket.

How workers start, and why: each is a fresh interpreter (``subprocess``,
``python -m data_workers._process_child``).  The trainer already runs Caffe2
and our own threads when workers start; ``fork`` would copy their locked
mutexes and half-initialised thread pools into the child, where they can
deadlock.  ``multiprocessing``'s spawn and forkserver start methods are safe
but leave a helper process (the resource tracker, or the fork server) running
after ``stop()``.  Launching the interpreter ourselves, with the sockets and
the arena's memfd passed as inherited file descriptors, leaves nothing behind.

How ``fetch_fun`` gets there: pickled with cloudpickle, once per ``start()``,
the same bytes for every worker (as Ray, Dask and joblib send functions).
What the training script (``__main__``) defines -- functions, classes --,
lambdas and closures go by value, with the globals they use; what an
importable module defines goes by reference (``module.name``) and the worker
imports that module, from the trainer's ``sys.path`` and working directory
(``ChildImports``).  So a worker never imports the training script: it needs
no ``if __name__ == "__main__":`` guard, and a worker imports only what
``fetch_fun`` uses (not Caffe2, unless ``fetch_fun`` does).  The price of by
value: every global ``fetch_fun`` uses is copied, at ``start()``, into every
worker (``tests/test_process_main.py``).

Threads in the trainer, per input::

    receiver thread per worker   data socket -> validate -> channel (may block: full)
    one process watcher          control sockets (ready, errors) + each process's
                                 pidfd: a death or an error is reported within
                                 _WATCH_SECS, however full the channel is

Shutdown: NOTE [ Shutdown and error protocol ] in ``_coordinator.py``.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import pickle
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, List, Optional, Tuple

from ._backend import BackendSpec, FetcherBackend, FetcherHost
from ._errors import DataInputError, FetcherError, PipelineError, RemoteTraceback, WorkerDiedError
from ._process_child import IN_WORKER_ENV, ChildImports, ChildSpec
from ._shm_ring import ShmArena
from ._threads import join_threads
from ._worker_types import pickle_fetch_fun

__all__ = ["ProcessFetchers", "DEFAULT_SHM_BYTES_PER_WORKER"]

logger = logging.getLogger(__name__)

#: Shared memory mapped per worker process unless told otherwise: virtual, the
#: child uses RING_BATCHES batches of it (``_shm_ring.py``, "Sizing").
DEFAULT_SHM_BYTES_PER_WORKER = 4 << 30
#: How often receivers and the process watcher recheck the lifecycle.
_POLL_SECS = 0.1
#: The process watcher's period when pidfds are not available.
_WATCH_SECS = 0.2
#: Escalation after the stop deadline: wait this long after SIGTERM, then after SIGKILL.
_TERM_SECS = 0.5
_KILL_SECS = 1.0


def _death_reason(exitcode: Optional[int]) -> Tuple[str, Optional[str]]:
    if exitcode is not None and exitcode < 0:
        try:
            name: Optional[str] = signal.Signals(-exitcode).name
        except ValueError:
            name = "signal %d" % -exitcode
        return "was killed by %s" % name, name
    return "exited with code %s without reporting an error" % exitcode, None


def _pidfd(pid: int) -> Optional[int]:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # kernel < 5.3 or not Linux: the watcher polls instead


class _ProcessWorker:
    """One worker process, its arena, its two sockets and its receiver thread."""

    def __init__(self, owner: "ProcessFetchers", worker_id: int, spec: ChildSpec) -> None:
        self.owner = owner
        self.worker_id = worker_id
        self.spec = spec
        self.arena = ShmArena(spec.capacity, name="data_workers-%s-%d" % (spec.input_source, worker_id),
                              fixed=spec.fixed_capacity)
        self.arena.batch_size = owner.host.batch_size
        self.process: Optional[subprocess.Popen] = None
        self.pidfd: Optional[int] = None
        #: Set once the child is set up and about to call fetch_fun.  Before
        #: that it only imports modules, so stop() may end it without waiting.
        self.ready = False
        #: Set when the process watcher has dealt with this worker's end.
        self.ended = False
        #: Set when stop() had to terminate or kill it.
        self.ended_by_us = False
        #: An error read off the control socket by join_process, for end_failure.
        self.reported: Optional[DataInputError] = None
        self.conn: Optional[Connection] = None
        self.control: Optional[Connection] = None
        self.thread = threading.Thread(
            target=self._receive, daemon=True,
            name="data_workers %s receiver %d" % (spec.input_source, worker_id))

    @property
    def pid(self) -> Optional[int]:
        return None if self.process is None else self.process.pid

    def launch(self) -> None:
        """Start the process; it sets itself up while the others are launched."""
        ours, theirs = socket.socketpair()
        ctl_ours, ctl_theirs = socket.socketpair()
        # The kernel kills the worker when the thread that spawned it dies: only
        # safe to ask for when that thread is the main one, which lives as long
        # as the trainer.
        death_signal = signal.SIGKILL if threading.current_thread() is threading.main_thread() else 0
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "data_workers._process_child",
                 str(theirs.fileno()), str(ctl_theirs.fileno()), str(self.arena.fd),
                 str(os.getpid()), str(int(death_signal))],
                pass_fds=(theirs.fileno(), ctl_theirs.fileno(), self.arena.fd), close_fds=True,
                # Own session: a Ctrl-C at the terminal goes to the trainer, which
                # stops the workers in order, not straight to the workers.
                start_new_session=True)
        finally:
            theirs.close()  # the child has its copies
            ctl_theirs.close()
        self.pidfd = _pidfd(self.process.pid)
        self.conn = Connection(ours.detach())
        self.control = Connection(ctl_ours.detach())

    def send(self, imports: ChildImports, fetch_fun: bytes) -> None:
        """Send what the process needs (blocks while it reads a large fetch_fun)."""
        if self.control is None:
            return
        try:
            self.control.send((imports, self.spec))
            self.control.send_bytes(fetch_fun)
        except (BrokenPipeError, ConnectionResetError):
            # It died while starting (or reading): the process watcher
            # reports how, which says more than a broken pipe raised here.
            logger.debug("fetcher %d (pid %s) of input %r is gone before it got fetch_fun",
                         self.worker_id, self.pid, self.owner.host.name)
            return
        self.thread.start()

    # -- receiver thread ----------------------------------------------------
    def _receive(self) -> None:
        host = self.owner.host
        conn = self.conn
        if conn is None:
            return
        poller = select.poll()  # made once: multiprocessing's wait() builds a selector per call
        poller.register(conn.fileno(), select.POLLIN)
        try:
            while not self.owner.halted:
                if not poller.poll(_POLL_SECS * 1000):
                    continue
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    return  # the child is gone: the process watcher reports it
                if not self._handle(message):
                    return
        except DataInputError as failure:
            host.fail(failure.where(host.name, self.worker_id))
        except BaseException as exc:  # noqa: B902 - a thread has nobody to raise to
            wrapped = PipelineError("receiving from fetcher %d of input %r failed: %s: %s"
                                    % (self.worker_id, host.name, type(exc).__name__, exc))
            wrapped.__cause__ = exc
            host.fail(wrapped.where(host.name, self.worker_id))

    def _handle(self, message: Tuple[Any, ...]) -> bool:
        host = self.owner.host
        kind = message[0]
        if kind == "chunk":
            _, span, layouts, objects, fetch_secs, chunks = message
            host.metrics.put_metric("fetcher_time", fetch_secs)
            views = self.arena.views(layouts)
            arrays = [objects[i] if i in objects else views.pop(0)
                      for i in range(len(layouts) + len(objects))]
            arena = self.arena
            token = arena.track(span)
            try:  # the child checked the batch fits its ring (check_batch_fits)
                chunk = host.accept(self.worker_id, arrays, chunks)
            except BaseException:
                arena.release(token)
                raise
            if chunk is None:
                arena.release(token)
                return True
            chunk.release = lambda: arena.release(token)
            # Caffe2 may take it uncopied if it is a whole batch (see _shm_ring.py).
            chunk.lend = lambda: arena.lend(token, span)
            return host.put_chunk(chunk)
        if kind == "skip":
            host.metrics.put_metric("fetcher_time", message[1])
            return host.put(None, self.worker_id)
        raise PipelineError("unknown data message from worker %d: %r" % (self.worker_id, kind))

    # -- control messages (process watcher thread) -------------------------------
    def read_control(self) -> Optional[DataInputError]:
        """Handle every control message waiting; return a reported error, if any."""
        control = self.control
        while control is not None:
            try:
                if not control.poll(0):
                    return None
                message = control.recv()
            except (EOFError, OSError):
                return None
            if message[0] == "ready":
                self.ready = True
            elif message[0] == "error":
                return self._remote_error(*message[1:])
        return None

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
            self.worker_id, self.pid, self.owner.host.name, type_name, text))
        err.__cause__ = exc
        return err

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def end_failure(self) -> Optional[DataInputError]:
        """Why this ended worker's end is a failure, or None if it was asked to end.

        Called once the process has exited.  An error the child reported wins;
        else an exit the child did not record as asked for is a death.
        """
        reported = self.reported or self.read_control()
        if reported is not None:
            return reported
        if self.ended_by_us or self.arena.exited_when_asked or self.process is None:
            return None
        exitcode = self.process.returncode
        reason, signal_name = _death_reason(exitcode)
        return WorkerDiedError(
            "fetcher %d (pid %s) of input %r %s" % (
                self.worker_id, self.pid, self.owner.host.name, reason),
            pid=self.pid, exitcode=exitcode, signal_name=signal_name)

    # -- shutdown -------------------------------------------------------------
    def join_process(self, deadline: float) -> bool:
        """Wait, then terminate, then kill, every wait bounded.  True if it ended by itself."""
        process = self.process
        if process is None:
            return True
        if not self.ready:
            # The watcher stops reading at halt(): a "ready" it had not read yet
            # would make a worker busy in fetch_fun look like one still starting.
            self.reported = self.reported or self.read_control()
        if not self.ready and process.poll() is None:
            # Still starting (loading fetch_fun, importing the modules it refers
            # to): fetch_fun has not run yet, so ending it now loses nothing.
            self.ended_by_us = True
            process.terminate()
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
            return True
        except subprocess.TimeoutExpired:
            pass
        logger.warning("fetcher %d (pid %s) did not stop in time; terminating it",
                       self.worker_id, self.pid)
        self.ended_by_us = True
        for send, wait in ((process.terminate, _TERM_SECS), (process.kill, _KILL_SECS)):
            send()
            try:
                process.wait(wait)
                return False
            except subprocess.TimeoutExpired:
                continue
        logger.error("fetcher %d (pid %s) did not end even after SIGKILL", self.worker_id, self.pid)
        return False

    def close(self) -> None:
        for conn in (self.conn, self.control):
            if conn is not None:
                conn.close()
        self.conn = self.control = None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.arena.close()


class ProcessFetchers(FetcherBackend):
    """The process backend of one input: a worker process per worker id."""

    def __init__(self, host: FetcherHost, spec: BackendSpec) -> None:
        self.host = host
        self.halted = False
        self.fetch_fun = spec.fetch_fun
        host.add_batch_size_hook(self._set_batch_size)
        base_seed = spec.seed if spec.seed is not None else random.SystemRandom().randrange(2 ** 31)
        capacity = spec.shm_bytes_per_worker or DEFAULT_SHM_BYTES_PER_WORKER
        self.workers: List[_ProcessWorker] = []
        try:
            for index, wid in enumerate(host.worker_ids):
                self.workers.append(_ProcessWorker(self, wid, ChildSpec(
                    worker_id=wid, seed=base_seed + index,
                    blob_names=tuple(spec.blob_names), batch_columns=tuple(spec.batch_columns),
                    dont_rebatch=spec.dont_rebatch, input_source=spec.input_source,
                    capacity=capacity, fixed_capacity=spec.shm_bytes_per_worker is not None,
                    assemble_batches=not (spec.deterministic or spec.dont_rebatch))))
        except BaseException:
            self.close()  # arenas made so far
            raise
        self.threads = [w.thread for w in self.workers]
        self._watcher = threading.Thread(
            target=self._watch, daemon=True, name="data_workers %s process watcher" % spec.input_source)

    def _set_batch_size(self, batch_size: int) -> None:
        for w in self.workers:
            w.arena.batch_size = batch_size

    def pids(self) -> List[Optional[int]]:
        return [w.pid for w in self.workers]

    def locations(self, only: Optional[int] = None) -> str:
        pids = ", ".join("%s (worker %d)" % (w.pid, w.worker_id)
                         for w in self.workers if only in (None, w.worker_id))
        return " Fetcher processes: %s." % pids if pids else ""

    def start(self) -> None:
        if os.environ.get(IN_WORKER_ENV):
            # A safety net: a worker never runs the training script, but a module
            # fetch_fun refers to by reference is imported in the worker.
            raise RuntimeError(
                "input %r would start process workers inside a worker process: fetch_fun "
                "starts them, or a module it uses starts them when imported; start process "
                "workers from the training script only" % self.host.name)
        # Pickled now, not at init: fetch_fun may have changed since (a
        # ShardedSource restored from a checkpoint).  Once for all workers.
        fetch_fun = pickle_fetch_fun(self.fetch_fun)
        logger.debug("input %r: fetch_fun pickles to %d bytes, sent to each of %d workers",
                     self.host.name, len(fetch_fun), len(self.workers))
        imports = ChildImports.of_this_process()
        # The coordinator's lock is held (rule 7): a stop() waits for these loops.
        # Every process first, so that they start up side by side, then what
        # each needs: a send blocks until its worker reads a large fetch_fun.
        for w in self.workers:
            if self.halted:  # a failure of an earlier worker: spawn no more
                break
            w.launch()
        for w in self.workers:
            if self.halted:
                break
            w.send(imports, fetch_fun)
        self._watcher.start()

    # -- the process watcher ---------------------------------------------------
    def _watch(self) -> None:
        """Report an error or a death as soon as it happens, independent of the data path."""
        try:
            while not self.halted:
                live = [w for w in self.workers if w.process is not None and not w.ended]
                if not live:
                    return
                waitables: List[Any] = [w.control for w in live if w.control is not None]
                waitables += [w.pidfd for w in live if w.pidfd is not None]
                multiprocessing.connection.wait(waitables, _WATCH_SECS)
                for w in live:
                    if self.halted:
                        return
                    err = w.read_control()
                    if err is None and w.exited():
                        w.ended = True
                        err = w.end_failure()
                    if err is not None:
                        self.host.fail(err.where(self.host.name, w.worker_id))
                        return
        except BaseException as exc:  # noqa: B902 - a thread has nobody to raise to
            err = PipelineError("watching the worker processes of input %r failed: %s: %s"
                                % (self.host.name, type(exc).__name__, exc))
            err.__cause__ = exc
            self.host.fail(err.where(self.host.name, None))

    def halt(self) -> None:
        """Ask the children to stop; receivers and the watcher stop within _POLL_SECS."""
        self.halted = True
        for w in self.workers:
            w.arena.request_stop()

    def join(self, deadline: float, started: float) -> bool:
        # Receivers first (they end within _POLL_SECS of halt()), then close
        # our data socket ends: a child blocked sending to a full socket gets
        # EPIPE and exits instead of waiting for a reader that is gone.
        ok = join_threads(self.threads + [self._watcher], deadline, self.host.name, started)
        for w in self.workers:
            if not w.thread.is_alive() and w.conn is not None:
                w.conn.close()
                w.conn = None
        for w in self.workers:
            ok = w.join_process(deadline) and ok
        # A worker that died (or reported an error) before it was asked to stop,
        # which the watcher had not seen yet, is still this stop()'s failure.
        for w in self.workers:
            if w.process is not None and not w.ended and w.exited():
                w.ended = True
                err = w.end_failure()
                if err is not None:
                    self.host.fail(err.where(self.host.name, w.worker_id))
        return ok

    def close(self) -> None:
        """Close sockets and arenas; the coordinator released every chunk first."""
        for w in self.workers:
            w.close()
