"""Process fetchers: ``fetch_fun`` runs in worker processes (contract: ``_core/backend.py``).

For fetchers that hold the GIL (pure-Python decoding, parsing, augmentation):
each worker is a process with its own interpreter, so N workers use N cores.
Arrays come back through a shared-memory ring per worker (``_workers/shm_ring.py``);
only a few bytes of metadata cross the socket.

How workers start, and why: by default each is a fresh interpreter
(``subprocess``, ``python -m data_workers._workers.boot``, which runs
``child.py``).  The trainer already runs Caffe2 and our own threads when workers
start; ``fork`` would copy their locked mutexes and half-initialised thread pools
into the child, where they can deadlock.  ``multiprocessing``'s spawn and
forkserver start methods are safe but leave a helper process (the resource
tracker, or the fork server) running after ``stop()``.  Launching the
interpreter ourselves, with the sockets and the arena's memfd passed as
inherited file descriptors, leaves nothing behind.  ``start_method="fork"``
forks the trainer instead, for DataLoader's start-up, with that hazard
(``_workers/fork.py``); the child then runs the same ``boot.run``.

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

    whole batches (the default)  no thread of ours: the input's enqueuer reads the
                                 data sockets itself (``_BatchReader``), validates
                                 and hands each batch to the sink
    chunks (deterministic,       a receiver thread per worker: data socket ->
      dont_rebatch)              validate -> channel (may block: full)
    one process watcher          control sockets (ready, errors) + each process's
                                 pidfd: a death or an error is reported within
                                 _WATCH_SECS, however full the pipeline is

Shutdown: NOTE [ Shutdown and error protocol ] in ``_core/coordinator.py``.
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
from typing import Any

from .._core.backend import BackendSpec, ChunkSource, FetcherBackend, FetcherHost
from .._core.chunk import Chunk
from .._core.errors import DataInputError, FetcherError, PipelineError, RemoteTraceback, WorkerDiedError
from .._core.thread_util import join_threads
from .child import IN_WORKER_ENV, ChildImports, ChildSpec
from .fork import ForkedProcess, fork_worker
from .pickling import pickle_fetch_fun
from .shm_ring import ShmArena
from .wire import LENGTH, LONG_LENGTH

__all__ = ["ProcessFetchers", "DEFAULT_SHM_BYTES_PER_WORKER"]

logger = logging.getLogger(__name__)

#: Shared memory mapped per worker process unless told otherwise: virtual, the
#: child uses RING_BATCHES batches of it (``_workers/shm_ring.py``, "Sizing").
DEFAULT_SHM_BYTES_PER_WORKER = 4 << 30
#: How often receivers and the process watcher recheck the lifecycle.
_POLL_SECS = 0.1
#: The process watcher's period when pidfds are not available.
_WATCH_SECS = 0.2
#: A worker's failure waits for the data path to read what the worker sent
#: before it (rule 10) at most this long; then the watcher fails the input
#: itself.  The data path may never come back to that worker's socket (the
#: other workers keep it busy, or a message cut short by a SIGKILL never
#: completes), and a failure must not wait on it forever.
FAILURE_GRACE_SECS = 2.0
#: Escalation after the stop deadline: wait this long after SIGTERM, then after SIGKILL.
_TERM_SECS = 0.5
_KILL_SECS = 1.0


def _death_reason(exitcode: int | None) -> tuple[str, str | None]:
    if exitcode is not None and exitcode < 0:
        try:
            name: str | None = signal.Signals(-exitcode).name
        except ValueError:
            name = "signal %d" % -exitcode
        return "was killed by %s" % name, name
    return "exited with code %s without reporting an error" % exitcode, None


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None  # kernel < 5.3 or not Linux: the watcher polls instead


def _remote_exception(blob: bytes | None, type_name: str, text: str,
                      tb: str) -> BaseException:
    """A worker's exception, unpickled (or rebuilt from its text), the child's
    traceback chained as ``__cause__``."""
    exc: BaseException
    try:
        exc = pickle.loads(blob) if blob is not None else Exception("%s: %s" % (type_name, text))
    except Exception:
        exc = Exception("%s: %s" % (type_name, text))
    exc.__cause__ = RemoteTraceback(tb)
    return exc


class _DataSocket:
    """The trainer's end of a worker's data socket: every message waiting, in one read.

    The child writes with ``wire.FramedSocket.send`` (multiprocessing's framing: a
    4-byte big-endian length, or -1 and an 8-byte length, then the pickle).
    ``Connection.recv`` makes two reads per message, and each read lets go of
    the GIL and takes it back; in a trainer whose main thread runs the net,
    each of those can be a thread switch.  One ``recv_into`` per wake-up reads
    whatever has arrived, often several batches' messages.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray(1 << 16)
        self._start = 0  # first unparsed byte
        self._end = 0  # end of the bytes read

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def read(self) -> list[Any]:
        """The messages that have arrived (possibly none yet: a partial one).

        Blocks until something can be read.  Raises EOFError once the child
        closed its end, OSError if the socket failed.
        """
        if self._end == len(self._buf):
            self._make_room(len(self._buf) - self._start + 1)
        with memoryview(self._buf) as whole, whole[self._end:] as free:
            n = self._sock.recv_into(free)
        if n == 0:
            raise EOFError("the worker closed its data socket")
        self._end += n
        return self._messages()

    def _messages(self) -> list[Any]:
        out = []
        buf = self._buf
        while True:
            start, available = self._start, self._end - self._start
            if available < 4:
                break
            (size,) = LENGTH.unpack_from(buf, start)
            head = 4
            if size == -1:
                if available < 12:
                    break
                (size,) = LONG_LENGTH.unpack_from(buf, start + 4)
                head = 12
            if available < head + size:
                self._make_room(head + size)
                break
            with memoryview(buf) as whole, whole[start + head:start + head + size] as frame:
                out.append(pickle.loads(frame))
            self._start = start + head + size
        if self._start == self._end:
            self._start = self._end = 0
        return out

    def _make_room(self, frame_bytes: int) -> None:
        """Move the unparsed bytes to the front, growing the buffer to hold ``frame_bytes``."""
        pending = self._buf[self._start:self._end]
        size = len(self._buf)
        while size < frame_bytes + 1:
            size *= 2
        if size != len(self._buf):
            self._buf = bytearray(size)
        self._buf[:len(pending)] = pending
        self._start, self._end = 0, len(pending)


class _ProcessWorker:
    """One worker process, its arena, its two sockets and its receiver thread."""

    def __init__(self, owner: "ProcessFetchers", worker_id: int, spec: ChildSpec) -> None:
        self.owner = owner
        self.worker_id = worker_id
        self.spec = spec
        self.arena = ShmArena(spec.capacity, name="data_workers-%s-%d" % (spec.input_source, worker_id),
                              fixed=spec.fixed_capacity)
        self.arena.batch_size = owner.host.batch_size
        self.process: subprocess.Popen[bytes] | ForkedProcess | None = None
        self.pidfd: int | None = None
        #: Set once the child is set up and about to call fetch_fun.  Before
        #: that it only imports modules, so stop() may end it without waiting.
        self.ready = False
        #: Set when the process watcher has dealt with this worker's end.
        self.ended = False
        #: Set when stop() had to terminate or kill it.
        self.ended_by_us = False
        #: Data messages read (the child counts those it sent in the arena).
        self.received = 0
        #: An error read off the control socket by join_process, for end_failure.
        self.reported: DataInputError | None = None
        #: The worker's failure (an error it reported, or its death), set by the
        #: process watcher with the number of data messages the child had sent
        #: before it: due once the data path has read those (rule 10).
        self.failure_after: tuple[DataInputError, int] | None = None
        self.failure_posted_at = 0.0
        self.failure_delivered = False
        #: Set by the data path once the child closed its data socket.
        self.data_closed = False
        self.failure_posted = threading.Event()
        self.conn: _DataSocket | None = None
        self.control: Connection | None = None
        self.thread = threading.Thread(
            target=self._receive, daemon=True,
            name="data_workers %s receiver %d" % (spec.input_source, worker_id))

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def launch(self) -> None:
        """Start the process; it sets itself up while the others are launched."""
        ours, theirs = socket.socketpair()
        ctl_ours, ctl_theirs = socket.socketpair()
        # The kernel kills the worker when the thread that spawned it dies: only
        # safe to ask for when that thread is the main one, which lives as long
        # as the trainer.
        death_signal = signal.SIGKILL if threading.current_thread() is threading.main_thread() else 0
        fds = (theirs.fileno(), ctl_theirs.fileno(), self.arena.fd)
        argv = [str(fd) for fd in fds] + [str(os.getpid()), str(int(death_signal))]
        process: subprocess.Popen[bytes] | ForkedProcess
        try:
            if self.owner.start_method == "fork":
                process = fork_worker(argv, fds)
            else:
                process = subprocess.Popen(
                    [sys.executable, "-m", "data_workers._workers.boot"] + argv,
                    pass_fds=fds, close_fds=True,
                    # Own session: a Ctrl-C at the terminal goes to the trainer, which
                    # stops the workers in order, not straight to the workers.
                    start_new_session=True)
        finally:
            theirs.close()  # the child has its copies
            ctl_theirs.close()
        self.process = process
        self.pidfd = _pidfd(process.pid)
        self.conn = _DataSocket(ours)
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
        if self.owner.reader is None:
            self.thread.start()
        else:
            self.owner.reader.wake()  # the enqueuer starts reading this socket

    def post_failure(self, err: DataInputError) -> None:
        """Process watcher: ``err`` ends this worker once its data sent before is read."""
        self.failure_after = (err, self.arena.sent)
        self.failure_posted_at = time.monotonic()
        self.failure_posted.set()

    def overdue_failure(self) -> DataInputError | None:
        """Process watcher: the posted failure, if the data path has not delivered it
        within ``FAILURE_GRACE_SECS``; then None again."""
        posted = self.failure_after
        if posted is None or self.failure_delivered \
                or time.monotonic() - self.failure_posted_at < FAILURE_GRACE_SECS:
            return None
        self.failure_delivered = True
        return posted[0]

    def due_failure(self) -> DataInputError | None:
        """The data path (one thread at a time): the posted failure, once every
        data message the child sent before it has been read; then None again."""
        posted = self.failure_after
        if posted is None or self.failure_delivered:
            return None
        err, sent_before = posted
        if self.received < sent_before and not self.data_closed:
            return None
        self.failure_delivered = True
        return err

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
                if self.data_closed:
                    # The child is gone: wait for the process watcher to say why.
                    self.failure_posted.wait(_POLL_SECS)
                elif poller.poll(_POLL_SECS * 1000):
                    try:
                        messages = conn.read()
                    except (EOFError, OSError):
                        messages = []
                        self.data_closed = True
                    for message in messages:
                        if not self._handle(message):
                            return
                err = self.due_failure()
                if err is not None:
                    host.put_failure(err, self.worker_id)
                    return
        except DataInputError as failure:
            host.fail(failure.where(host.name, self.worker_id))
        except BaseException as exc:  # noqa: B902 - a thread has nobody to raise to
            host.fail(_receiving_failed(exc, host, self.worker_id))

    def _handle(self, message: tuple[Any, ...]) -> bool:
        host = self.owner.host
        if message[0] == "skip":
            self.received += 1
            host.metrics.put_metric("fetcher_time", message[1])
            return host.put(None, self.worker_id)
        chunk = self.chunk_of(message)
        if chunk is None:
            return True
        if chunk.failure is not None:
            host.put_failure(chunk.failure, self.worker_id)
            return False
        return host.put_chunk(chunk)

    def chunk_of(self, message: tuple[Any, ...]) -> Chunk | None:
        """The accepted chunk a data message describes; None if there is none
        (a skip, counted), a failure marker if fetch_fun raised beyond the
        budget.  Raises Chunk*Error for output the host refuses."""
        host = self.owner.host
        self.received += 1
        kind = message[0]
        if kind == "skip":
            host.metrics.put_metric("fetcher_time", message[1])
            host.accept(self.worker_id, None)  # counts and logs the skip
            return None
        if kind == "fetch_failed":
            _, blob, type_name, text, tb, fetch_secs = message
            host.metrics.put_metric("fetcher_time", fetch_secs)
            exc = _remote_exception(blob, type_name, text, tb)
            if host.skip_fetch_failure(self.worker_id, exc):
                return None
            err = self._fetcher_error(exc, type_name, text, host.fetch_failure_note())
            err.where(host.name, self.worker_id)
            host.note_failure(err)
            return Chunk(self.worker_id, [], 0, failure=err)
        if kind != "chunk":
            raise PipelineError("unknown data message from worker %d: %r" % (self.worker_id, kind))
        _, nbytes, layouts, objects, fetch_secs, chunks = message
        host.metrics.put_metric("fetcher_time", fetch_secs)
        views = self.arena.views(layouts)
        arrays = [objects[i] if i in objects else views.pop(0)
                  for i in range(len(layouts) + len(objects))]
        arena = self.arena
        claim = arena.track(nbytes)
        try:  # the child checked the batch fits its ring (check_batch_fits)
            chunk = host.accept(self.worker_id, arrays, chunks)
        except BaseException:
            arena.release(claim)
            raise
        if chunk is None:
            arena.release(claim)
            return None
        chunk.release = lambda: arena.release(claim)
        # Caffe2 may take it uncopied if it is a whole batch (see _workers/shm_ring.py).
        chunk.lend = lambda: arena.may_lend(claim)
        return chunk

    # -- control messages (process watcher thread) -------------------------------
    def read_control(self) -> DataInputError | None:
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

    def _remote_error(self, blob: bytes | None, type_name: str, text: str,
                      tb: str) -> DataInputError:
        exc = _remote_exception(blob, type_name, text, tb)
        if isinstance(exc, DataInputError):
            return exc
        return self._fetcher_error(exc, type_name, text)

    def _fetcher_error(self, exc: BaseException, type_name: str, text: str,
                       note: str = "") -> FetcherError:
        err = FetcherError("%s raised %s: %s%s" % (self.describe(), type_name, text, note))
        err.__cause__ = exc
        return err

    def describe(self) -> str:
        """``fetcher 3 (pid 42) of input 'train'``, in the sink's words."""
        host = self.owner.host
        return host.words.worker_of(self.worker_id, host.name, self.pid)

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def end_failure(self) -> DataInputError | None:
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
        return WorkerDiedError("%s %s" % (self.describe(), reason),
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
        logger.warning("%s did not stop in time; terminating it", self.describe())
        self.ended_by_us = True
        for send, wait in ((process.terminate, _TERM_SECS), (process.kill, _KILL_SECS)):
            send()
            try:
                process.wait(wait)
                return False
            except subprocess.TimeoutExpired:
                continue
        logger.error("%s did not end even after SIGKILL", self.describe())
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


class _BatchReader(ChunkSource):
    """The enqueuer's chunk source when every worker sends whole batches.

    The enqueuer polls the workers' data sockets itself and takes each batch
    straight to the sink: no receiver thread and no channel in between.  A
    batch then costs the trainer one thread wake-up instead of three, and the
    GIL hand-offs that came with them (``benchmarks/peers.py``, trainer CPU
    per batch).  Memory stays bounded: a worker whose batches are not read
    waits for ring space.  Worker order is kept: one socket per worker, read
    in order.

    A wake-up pipe makes ``halt()`` and the start of each worker end a
    waiting poll at once.  The lock is held while sockets are read, so that
    ``join`` closes them only when no read is in progress (reentrant: NOTE
    [ Shutdown and error protocol ], rule 7, ``_core/coordinator.py``).
    """

    def __init__(self, owner: "ProcessFetchers") -> None:
        self._owner = owner
        self._lock = threading.RLock()
        self._closed = False
        self._poller = select.poll()
        self._by_fd: dict[int, _ProcessWorker] = {}
        self._registered: set[int] = set()  # worker ids, read or gone
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poller.register(self._wake_r, select.POLLIN)

    def wake(self) -> None:
        """End a waiting ``get_ready``.  Never blocks; safe from a signal handler."""
        fd = self._wake_w
        if fd < 0:
            return
        try:
            os.write(fd, b"!")
        except OSError:
            pass  # the pipe is full (a wake-up is pending anyway) or closed

    def _register_new(self) -> None:
        for w in self._owner.workers:
            conn = w.conn
            if conn is not None and w.worker_id not in self._registered:
                self._registered.add(w.worker_id)
                self._by_fd[conn.fileno()] = w
                self._poller.register(conn.fileno(), select.POLLIN)

    def get_ready(self, timeout: float | None = None, want_rows: int = 1) -> list[Chunk]:
        """Read what has arrived from each worker whose socket is readable."""
        with self._lock:
            if self._closed or self._owner.halted:
                return []
            if len(self._registered) < len(self._owner.workers):
                self._register_new()
            events = self._poller.poll(None if timeout is None else timeout * 1000)
            chunks: list[Chunk] = []
            try:
                for fd, _ in events:
                    worker = self._by_fd.get(fd)
                    if worker is None:  # the wake-up pipe
                        self._drain_wake()
                        continue
                    if self._owner.halted:
                        break
                    self._read(fd, worker, chunks)
                for worker in self._owner.workers:
                    err = worker.due_failure()
                    if err is not None:
                        # Behind that worker's chunks, ahead of the other workers'
                        # chunks read with them, which the enqueuer then drops.
                        own = [c for c in chunks if c.worker_id == worker.worker_id]
                        others = [c for c in chunks if c.worker_id != worker.worker_id]
                        chunks = own + [Chunk(worker.worker_id, [], 0, failure=err)] + others
                        break
            except BaseException:
                for chunk in chunks:
                    chunk.done()
                raise
            return chunks

    def _read(self, fd: int, worker: "_ProcessWorker", chunks: list[Chunk]) -> None:
        """Append the chunks of ``worker``'s messages that have arrived to ``chunks``."""
        conn = worker.conn
        try:
            if conn is None:
                raise EOFError
            messages = conn.read()
        except (EOFError, OSError):
            # The child is gone: the process watcher reports it.
            worker.data_closed = True
            self._poller.unregister(fd)
            del self._by_fd[fd]
            return
        host = self._owner.host
        try:
            for message in messages:
                chunk = worker.chunk_of(message)
                if chunk is not None:
                    chunks.append(chunk)
        except DataInputError as failure:
            raise failure.where(host.name, worker.worker_id)
        except Exception as exc:
            raise _receiving_failed(exc, host, worker.worker_id) from exc

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self._closed = True  # a plain store: safe from a signal handler
        self.wake()

    def drain(self) -> list[Chunk]:
        return []  # nothing is buffered here: unread batches stay in the rings

    def depth(self) -> int:
        """Batches the workers have sent that the enqueuer has not read yet."""
        return sum(max(0, w.arena.sent - w.received) for w in self._owner.workers)

    def waiting_for(self) -> int | None:
        return None

    def shut(self, deadline: float) -> bool:
        """Stop reading for good once no read is in progress (by ``deadline``).

        Returns:
            True if the sockets may be closed now.
        """
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False
        try:
            self._closed = True
            return True
        finally:
            self._lock.release()

    def close_fds(self) -> None:
        fds = (self._wake_r, self._wake_w)
        self._wake_r = self._wake_w = -1  # wake() checks first: the numbers may be reused
        for fd in fds:
            if fd >= 0:
                os.close(fd)



def _receiving_failed(exc: BaseException, host: FetcherHost, worker_id: int) -> PipelineError:
    """Reading a worker's messages failed in the trainer (not in the worker)."""
    return PipelineError.wrapping(
        exc, "receiving from %s failed:" % host.words.worker_of(worker_id, host.name),
        host.name, worker_id)

class ProcessFetchers(FetcherBackend):
    """The process backend of one input: a worker process per worker id."""

    def __init__(self, host: FetcherHost, spec: BackendSpec) -> None:
        self.host = host
        self.halted = False
        self.fetch_fun = spec.fetch_fun
        self.start_method = spec.start_method
        host.add_batch_size_hook(self._set_batch_size)
        base_seed = spec.seed if spec.seed is not None else random.SystemRandom().randrange(2 ** 31)
        capacity = spec.shm_bytes_per_worker or DEFAULT_SHM_BYTES_PER_WORKER
        assemble = not (spec.deterministic or spec.dont_rebatch)
        #: Set when the host reads whole batches from the sockets itself
        #: (``batch_source``); fixed here, before anyone reads ``threads``.
        self.reader: _BatchReader | None = None
        self.workers: list[_ProcessWorker] = []
        try:
            for index, wid in enumerate(host.worker_ids):
                self.workers.append(_ProcessWorker(self, wid, ChildSpec(
                    worker_id=wid, seed=base_seed + index,
                    blob_names=tuple(spec.blob_names), batch_columns=tuple(spec.batch_columns),
                    dont_rebatch=spec.dont_rebatch, input_source=spec.input_source,
                    capacity=capacity, fixed_capacity=spec.shm_bytes_per_worker is not None,
                    dtype_rule=spec.dtype_rule, assemble_batches=assemble,
                    report_fetch_failures=spec.skip_fetch_failures, dtypes=spec.dtypes,
                    words=spec.words)))
        except BaseException:
            self.close()  # arenas made so far
            raise
        # Whole batches: the enqueuer reads the sockets itself, no receiver threads.
        # Chunk mode (deterministic, dont_rebatch): a receiver per worker feeds the
        # channel, whose order and bound those modes need.
        self.threads: list[threading.Thread] = []
        if assemble:
            self.reader = _BatchReader(self)
        else:
            self.threads = [w.thread for w in self.workers]
        self._watcher = threading.Thread(
            target=self._watch, daemon=True, name="data_workers %s process watcher" % spec.input_source)

    def batch_source(self) -> ChunkSource | None:
        """Whole batches (the default order): the enqueuer reads the sockets itself."""
        return self.reader

    def _set_batch_size(self, batch_size: int) -> None:
        for w in self.workers:
            w.arena.batch_size = batch_size

    def pids(self) -> list[int | None]:
        return [w.pid for w in self.workers]

    def locations(self, only: int | None = None) -> str:
        pids = ", ".join("%s (worker %d)" % (w.pid, w.worker_id)
                         for w in self.workers if only in (None, w.worker_id))
        return " %s processes: %s." % (self.host.words.worker.capitalize(), pids) if pids else ""

    def start(self) -> None:
        if os.environ.get(IN_WORKER_ENV):
            # A safety net: a worker never runs the training script, but a module
            # fetch_fun refers to by reference is imported in the worker.
            raise RuntimeError(
                "%s would start process workers inside a worker process: fetch_fun "
                "starts them, or a module it uses starts them when imported; start process "
                "workers from the training script only"
                % self.host.words.input_named(self.host.name))
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
                for w in self.workers:
                    overdue = w.overdue_failure()
                    if overdue is not None:
                        self.host.fail(overdue)
                live = [w for w in self.workers if w.process is not None and not w.ended]
                if not live:
                    if any(w.failure_after is not None and not w.failure_delivered
                           for w in self.workers):
                        time.sleep(_WATCH_SECS)  # only an overdue failure left to watch
                        continue
                    return
                waitables: list[Any] = [w.control for w in live if w.control is not None]
                waitables += [w.pidfd for w in live if w.pidfd is not None]
                multiprocessing.connection.wait(waitables, _WATCH_SECS)
                for w in live:
                    if self.halted:
                        return
                    err = w.read_control()
                    if err is None:
                        # Asked once: a child may die between two asks (its
                        # sockets close before it becomes a zombie), and an
                        # exit seen only by a second ask would go unexplained.
                        if not w.exited():
                            continue
                        err = w.end_failure()
                    w.ended = True
                    if err is not None:
                        # Reported now, raised behind its earlier batches (rule 10).
                        err.where(self.host.name, w.worker_id)
                        self.host.note_failure(err)
                        w.post_failure(err)
                        if self.reader is not None:
                            self.reader.wake()
        except BaseException as exc:  # noqa: B902 - a thread has nobody to raise to
            self.host.fail(PipelineError.wrapping(
                exc, "watching the worker processes of %s failed:"
                % self.host.words.input_named(self.host.name),
                self.host.name, None))

    def halt(self) -> None:
        """Ask the children to stop; receivers and the watcher stop within _POLL_SECS."""
        self.halted = True
        for w in self.workers:
            w.arena.request_stop()
        if self.reader is not None:
            self.reader.wake()

    def join(self, deadline: float, started: float) -> bool:
        # Receivers first (they end within _POLL_SECS of halt()), then close
        # our data socket ends: a child blocked sending to a full socket gets
        # EPIPE and exits instead of waiting for a reader that is gone.
        ok = join_threads(self.threads + [self._watcher], deadline, self.host.name, started)
        readers_done = self.reader is None or self.reader.shut(deadline)
        for w in self.workers:
            if readers_done and not w.thread.is_alive() and w.conn is not None:
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
            elif w.failure_after is not None and not w.failure_delivered:
                w.failure_delivered = True  # posted, but the data path had stopped
                self.host.fail(w.failure_after[0])
        return ok

    def close(self) -> None:
        """Close sockets and arenas; the coordinator released every chunk first."""
        for w in self.workers:
            w.close()
        if self.reader is not None:
            self.reader.close_fds()
