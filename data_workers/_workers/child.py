"""The program a worker process runs: load fetch_fun, call it, write arrays to the ring, report.

Started by ``_workers/processes.py`` as ``python -m data_workers._workers.child
DATA_FD CONTROL_FD ARENA_FD PARENT_PID DEATH_SIGNAL`` (see there for why not
``multiprocessing``).  The trainer first sends, on the control socket::

    (ChildImports, ChildSpec)    where the trainer finds its modules; this worker's settings
    fetch_fun                    cloudpickled bytes

The worker takes the trainer's ``sys.path``, working directory and ``argv``,
then unpickles ``fetch_fun``: what the training script (``__main__``) defines,
lambdas and closures come by value with the globals they use; what an
importable module defines comes by reference and is imported here.  The
training script itself is never imported.  From then on every outcome is a
message.  Data, on the data socket (it may lag behind a full channel)::

    ("chunk", span, layouts, objects, fetch_secs, n)  arrays are in the ring: a chunk,
                                                      or a whole batch made of n chunks
    ("skip", fetch_secs)                            fetch_fun returned None / no rows
    ("fetch_failed", pickled_exc, type_name,        fetch_fun raised; the worker goes on
     text, tb, fetch_secs)                          (only with max_fetch_failures: the
                                                    trainer skips it or fails the input)

Control, on the control socket (read at once by the trainer's process watcher)::

    ("ready",)                                      set up; fetch_fun runs from now on
    ("error", pickled_exc, type_name, text, tb)     loading fetch_fun, fetch_fun or
                                                    validation failed

An error is cloudpickled too, so an exception class of the training script
comes back as that very class (cloudpickle keeps the identity of a class it
sent by value).  A child that dies without an "error" message (killed,
segfault, ``os._exit``) is noticed by the trainer watching the process itself.  The trainer asks the
child to stop through the arena's control block, and the child records there
that it ended because it was asked to.  A child whose trainer is gone notices
that its parent changed, or gets EPIPE, and exits; if fetch_fun is busy, a
watcher thread sees end-of-file on the control socket and ends the process;
and a child started from the trainer's main thread gets SIGKILL from the
kernel when the trainer dies (``PR_SET_PDEATHSIG``, asked for first of all by
``boot.py``, the process's entry point), even while stopped.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
import select
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable
from collections.abc import Sequence

import numpy as np

from .._core.errors import ChunkValueError
from .._core.validate import ChunkValidator, DtypeRule
from .._core.words import FETCHER_WORDS, Words
from .shm_ring import ShmArena
from .wire import FramedSocket

__all__ = ["ChildImports", "ChildSpec", "child_main", "IN_WORKER_ENV"]

#: Set in every worker process.
IN_WORKER_ENV = "DATA_WORKERS_IN_WORKER_PROCESS"


@dataclasses.dataclass(frozen=True)
class ChildImports:
    """Where the trainer finds its modules, taken at ``start()``.

    The worker imports the modules ``fetch_fun`` refers to by reference from
    there, as the trainer would; ``argv`` is for modules that read it when imported.
    """

    sys_path: tuple[str, ...]
    cwd: str
    argv: tuple[str, ...]

    @classmethod
    def of_this_process(cls) -> "ChildImports":
        return cls(sys_path=tuple(sys.path), cwd=os.getcwd(), argv=tuple(sys.argv))

    def adopt(self) -> None:
        """Make this process look for modules where the trainer does."""
        os.chdir(self.cwd)
        sys.path[:] = list(self.sys_path)
        sys.argv[:] = list(self.argv)


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    """What a worker process needs to know besides ``fetch_fun``; plain data."""

    worker_id: int
    seed: int
    blob_names: Sequence[str]
    batch_columns: Sequence[int]
    dont_rebatch: bool
    input_source: str
    capacity: int
    #: The user chose ``capacity``; else the child sizes its ring from its first chunk.
    fixed_capacity: bool
    #: The sink's dtypes (plain data: no Caffe2 or torch import here).
    dtype_rule: DtypeRule
    #: Assemble whole batches here (one message per batch) instead of sending
    #: each chunk: the default order; deterministic mode keeps chunk turns.
    assemble_batches: bool = False
    #: ``max_fetch_failures`` is set: report a fetch_fun exception in-band
    #: ("fetch_failed") and go on; the trainer's budget decides.
    report_fetch_failures: bool = False
    #: ``BackendSpec.dtypes``.
    dtypes: tuple[np.dtype | None, ...] | None = None
    #: The sink's nouns, for the errors raised here (``_core/words.py``).
    words: Words = FETCHER_WORDS

    def describe(self) -> str:
        """``fetcher 3 of input 'train'``, in the sink's words."""
        return self.words.worker_of(self.worker_id, self.input_source)


def _error_fields(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """``(pickled_exc, type_name, text, tb)``: an exception as it crosses to the trainer."""
    import cloudpickle  # only on a failure: not on every worker's path to its first fetch

    try:
        blob: bytes | None = cloudpickle.dumps(exc)
    except Exception:
        blob = None
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return blob, type(exc).__name__, str(exc), tb


def _send_error(conn: FramedSocket, exc: BaseException) -> None:
    conn.send(("error",) + _error_fields(exc))


def _send_data(conn: FramedSocket, arena: ShmArena, message: tuple[Any, ...]) -> None:
    """Send a data message, and count it in the arena (the trainer's queue depth)."""
    conn.send(message)
    arena.count_sent()


def _batch_layouts(arrays: Sequence[np.ndarray], columns: Sequence[int],
                   size: int) -> list[tuple[str, tuple[int, ...]]]:
    """``(dtype, shape)`` of each ring array of a batch of ``size`` rows like ``arrays``."""
    layouts = []
    for arr, column in zip(arrays, columns):
        if arr.dtype.kind != "O":
            shape = list(arr.shape)
            shape[column] = size
            layouts.append((arr.dtype.str, tuple(shape)))
    return layouts


def check_batch_fits(spec: ChildSpec, arena: ShmArena, arrays: Sequence[np.ndarray]) -> None:
    """Raise ChunkValueError if a batch of rows like ``arrays`` cannot fit the ring.

    Whole batches are made in the ring, or (chunk mode) the trainer's
    re-batcher holds every row of a batch there before copying it out: a batch
    that cannot fit would wait forever.
    """
    size = arena.batch_size
    need = arena.layout_bytes(_batch_layouts(arrays, spec.batch_columns, size))
    if need > arena.capacity:
        raise ChunkValueError(
            "%s: a batch of %d rows shaped like its chunks needs %d "
            "bytes, more than the %d bytes of shared memory per worker; raise "
            "shm_bytes_per_worker (or lower batch_size)"
            % (spec.describe(), size, need, arena.capacity))


class _BatchBuilder:
    """Cuts this worker's chunks into whole batches, written straight into the ring.

    The trainer then receives one message and one ring region per batch,
    instead of one per chunk.  Rows keep their order; a batch holds this
    worker's rows only.  Rows of a batch not completed when the input stops
    are dropped with it, like the re-batcher's leftovers in the trainer.
    """

    def __init__(self, spec: ChildSpec, arena: ShmArena, conn: FramedSocket,
                 keep_going: Callable[[], bool]) -> None:
        self._spec = spec
        self._arena = arena
        self._conn = conn
        self._keep_going = keep_going
        self._prefixes = [(slice(None),) * c for c in spec.batch_columns]
        self._open: tuple[int, list[Any], list[np.ndarray | None], int] | None = None
        self._objects: dict[int, list[np.ndarray]] = {}
        self._filled = 0
        self._chunks = 0
        self._fetch_secs = 0.0

    def add(self, arrays: list[np.ndarray], rows: int, fetch_secs: float) -> bool:
        """Copy the chunk's rows into the open batch(es); False if told to stop."""
        self._chunks += 1
        self._fetch_secs += fetch_secs
        offset = 0
        while offset < rows:
            batch = self._open
            if batch is None:
                if not self._open_batch(arrays):
                    return False
                batch = self._open
                if batch is None:  # for the type checker: _open_batch set it
                    return False
            span, layouts, dests, size = batch
            filled = self._filled
            take = min(size - filled, rows - offset)
            for i, (arr, dest, prefix) in enumerate(zip(arrays, dests, self._prefixes)):
                if dest is None:  # object (string) blob: travels in the message
                    self._objects.setdefault(i, []).append(
                        arr[prefix + (slice(offset, offset + take),)])
                elif not prefix:  # batch column 0: the common, cheap case
                    dest[filled:filled + take] = arr[offset:offset + take]
                else:
                    dest[prefix + (slice(filled, filled + take),)] = \
                        arr[prefix + (slice(offset, offset + take),)]
            self._filled = filled + take
            offset += take
            if self._filled == size:
                self._send(span, layouts)
        return True

    def _open_batch(self, arrays: list[np.ndarray]) -> bool:
        # The batch size may have changed since the first chunk.
        check_batch_fits(self._spec, self._arena, arrays)
        size = self._arena.batch_size
        layouts = _batch_layouts(arrays, self._spec.batch_columns, size)
        reserved = self._arena.reserve(layouts, self._keep_going)
        if reserved is None:
            return False
        span, placed = reserved
        views = iter(self._arena.views(placed))
        # One destination per blob, None for object blobs (not in the ring).
        dests: list[np.ndarray | None] = [
            None if arr.dtype.kind == "O" else next(views) for arr in arrays]
        self._open = (span, placed, dests, size)
        self._filled = 0
        return True

    def _send(self, span: int, layouts: list[Any]) -> None:
        objects = {i: np.concatenate(parts, axis=self._spec.batch_columns[i])
                   for i, parts in self._objects.items()}
        _send_data(self._conn, self._arena,
                   ("chunk", span, layouts, objects, self._fetch_secs, self._chunks))
        self._open = None
        self._objects = {}
        self._chunks = 0
        self._fetch_secs = 0.0


class _RingBuffers:
    """``OutputBuffers`` (``_core/backend.py``) over this worker's ring.

    One reservation at a time: the ring space of the arrays ``take`` gave out,
    sent as they are if ``fetch_fun`` returns them, given back otherwise.
    """

    def __init__(self, arena: ShmArena, keep_going: Callable[[], bool]) -> None:
        self._arena = arena
        self._keep_going = keep_going
        self._taken: tuple[int, list[Any], list[np.ndarray]] | None = None

    def take(self, layouts: Sequence[tuple[np.dtype, tuple[int, ...]]]) -> list[np.ndarray] | None:
        self.give_back()
        arena = self._arena
        pairs = [(np.dtype(dtype).str, tuple(shape)) for dtype, shape in layouts]
        need = arena.layout_bytes(pairs)
        arena.size_for_batch(need)  # the ring's size is fixed before its first reservation
        if need > arena.capacity:
            return None  # sent the usual way, which says it does not fit
        reserved = arena.reserve(pairs, self._keep_going)
        if reserved is None:
            return None
        span, placed = reserved
        views = arena.views(placed)
        self._taken = (span, placed, views)
        return list(views)

    def sent_as_taken(self, numeric: Sequence[np.ndarray]) -> tuple[int, list[Any]] | None:
        """The reservation, if ``numeric`` are the arrays taken, in order; else
        None (and the reservation is given back)."""
        taken = self._taken
        if taken is not None and len(numeric) == len(taken[2]) \
                and all(a is b for a, b in zip(numeric, taken[2])):
            self._taken = None
            return taken[0], taken[1]
        self.give_back()
        return None

    def give_back(self) -> None:
        if self._taken is not None:
            self._arena.unreserve(self._taken[0])
            self._taken = None


def _add(builder: "_BatchBuilder", control: FramedSocket, arrays: list[np.ndarray], rows: int,
         fetch_secs: float) -> bool:
    """``builder.add``, with a batch that cannot fit the ring reported as the error."""
    try:
        return builder.add(arrays, rows, fetch_secs)
    except ChunkValueError as exc:
        _send_error(control, exc)
        return False


def load_fetch_fun(blob: bytes) -> Callable[[int, int], Any]:
    """Unpickle ``fetch_fun`` (after ``ChildImports.adopt``).

    Raises:
        RuntimeError: saying it was loading fetch_fun that failed, and what to do;
            the original exception is its ``__cause__``.
    """
    try:
        fetch_fun: Callable[[int, int], Any] = pickle.loads(blob)
    except Exception as exc:
        hint = ""
        if isinstance(exc, (ImportError, AttributeError)):
            hint = ("; fetch_fun refers to something of an importable module by name, which "
                    "the worker imports with the trainer's sys.path and working directory: "
                    "make the module importable there, or have it sent by value with "
                    "cloudpickle.register_pickle_by_value(module) before start()")
        raise RuntimeError("unpickling fetch_fun in the worker process failed: %s: %s%s"
                           % (type(exc).__name__, exc, hint)) from exc
    return fetch_fun


def child_main(spec: ChildSpec, fetch_fun: Callable[[int, int], Any], conn: FramedSocket,
               control: FramedSocket, arena: ShmArena) -> None:
    """The fetch loop of one worker process."""
    random.seed(spec.seed)
    np.random.seed(spec.seed % (2 ** 32))
    validator = ChunkValidator(spec.blob_names, spec.batch_columns, spec.dont_rebatch,
                               spec.input_source, spec.dtype_rule, spec.dtypes, spec.words)
    parent = os.getppid()

    def keep_going() -> bool:
        return not arena.stop_requested and os.getppid() == parent

    builder = _BatchBuilder(spec, arena, conn, keep_going) if spec.assemble_batches else None
    buffers: _RingBuffers | None = None
    offer = getattr(fetch_fun, "use_output_buffers", None)
    if spec.dont_rebatch and callable(offer):  # a chunk is sent as it is: it may be written in place
        buffers = _RingBuffers(arena, keep_going)
        offer(buffers)
    while keep_going():
        started = time.monotonic()
        try:
            output = fetch_fun(spec.worker_id, arena.batch_size)
        except Exception as exc:
            if not spec.report_fetch_failures:
                _send_error(control, exc)
                return
            # In-band, behind the batches before it; a batch being assembled stays open.
            _send_data(conn, arena, ("fetch_failed",) + _error_fields(exc)
                       + (time.monotonic() - started,))
            continue
        except BaseException as exc:  # noqa: B902 - SystemExit too: report it
            _send_error(control, exc)
            return
        try:
            fast = None if builder is None else validator.check_fast(
                spec.worker_id, output, arena.batch_size)
            arrays = None if fast is not None else validator.check_structure(spec.worker_id, output)
        except BaseException as exc:  # noqa: B902 - SystemExit too: report it
            _send_error(control, exc)
            return
        fetch_secs = time.monotonic() - started
        if fast is not None and builder is not None:  # the hot path: the recorded layout
            if not _add(builder, control, fast.arrays, fast.rows, fetch_secs):
                return
            continue
        if arrays is None or validator.rows_of(arrays) == 0:
            _send_data(conn, arena, ("skip", fetch_secs))
            continue
        numeric: list[np.ndarray] = [a for a in arrays if a.dtype.kind != "O"]
        # Arrays fetch_fun wrote into ring space it took are already where the
        # trainer reads them (they fit: take() checked): checked below, not copied.
        in_place = None if buffers is None else buffers.sent_as_taken(numeric)
        need = arena.chunk_bytes(numeric)
        rows = validator.rows_of(arrays)
        arena.size_for_batch(need if spec.dont_rebatch else
                             -(-need * arena.batch_size // max(rows, 1)))
        if builder is None and need > arena.capacity:
            _send_error(control, ChunkValueError(
                "%s returned a chunk of %d bytes, more than the %d bytes "
                "of shared memory per worker; return smaller chunks or raise "
                "shm_bytes_per_worker" % (spec.describe(), need, arena.capacity)))
            return
        try:  # every check, the layout too; then whether a batch of such rows fits
            validator.check(spec.worker_id, arrays, arena.batch_size)
            if not spec.dont_rebatch:
                check_batch_fits(spec, arena, arrays)
        except Exception as exc:
            _send_error(control, exc)
            return
        if builder is not None:
            if not _add(builder, control, arrays, rows, fetch_secs):
                return
            continue
        written = in_place if in_place is not None else arena.write(numeric, keep_going)
        if written is None:
            return
        span, layouts = written
        objects = {i: a for i, a in enumerate(arrays) if a.dtype.kind == "O"}
        _send_data(conn, arena, ("chunk", span, layouts, objects, fetch_secs, 1))


def _exit_when_trainer_dies(conn: FramedSocket, arena: ShmArena) -> None:
    """Daemon thread: end this process if the trainer dies without stopping it.

    The trainer sends nothing after fetch_fun, so the control socket turns readable only
    at end-of-file: the trainer closed it (after asking us to stop: the fetch
    loop ends by itself) or died -- SIGKILL, the OOM killer, a crash -- while
    fetch_fun was busy, which the fetch loop cannot notice until fetch_fun
    returns (if ever).  Without this, such a worker would outlive its trainer.
    """
    try:
        select.select([conn.fileno()], [], [])
        stopping = arena.stop_requested
    except Exception:  # the fetch loop ended and closed both: we are exiting anyway
        return
    if not stopping:
        os._exit(1)


def main(argv: Sequence[str]) -> int:
    """The worker process, once ``boot.py`` has asked for the parent-death signal."""
    # Ctrl-C goes to the whole process group; the trainer handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    data_fd, control_fd, arena_fd = (int(a) for a in argv[:3])
    # Marks this interpreter as a worker: a module fetch_fun imports here that
    # starts process workers when imported would otherwise start them again.
    os.environ[IN_WORKER_ENV] = "1"
    conn = FramedSocket(data_fd)
    control = FramedSocket(control_fd)
    arena: ShmArena | None = None
    try:
        try:
            imports, spec = control.recv()
            imports.adopt()
            fetch_fun = load_fetch_fun(control.recv_bytes())
        except Exception as exc:  # e.g. a module fetch_fun refers to does not import here
            _send_error(control, exc)
            return 1
        arena = ShmArena(spec.capacity, fd=arena_fd, fixed=spec.fixed_capacity)
        threading.Thread(target=_exit_when_trainer_dies, args=(control, arena), daemon=True,
                         name="exit when the trainer dies").start()
        control.send(("ready",))
        child_main(spec, fetch_fun, conn, control, arena)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the trainer went away or closed our socket after asking us to stop
    finally:
        if arena is not None:
            if arena.stop_requested:
                arena.mark_exit()
            arena.close()
        conn.close()
        control.close()
    return 0

