"""The program a worker process runs: call fetch_fun, write arrays to the ring, report.

Started by ``_process_workers.py`` as ``python -m data_workers._process_child
SOCK_FD ARENA_FD`` (see there for why not ``multiprocessing``).  The trainer
first sends multiprocessing's spawn preparation data (so functions defined in
the training script's ``__main__`` unpickle here as they would under spawn),
then the pickled ``ChildSpec``.  From then on every outcome is a message::

    ("ready",)                                      set up; fetch_fun runs from now on
    ("chunk", span, layouts, objects, fetch_secs)   arrays are in the ring
    ("skip", fetch_secs)                            fetch_fun returned None / no rows
    ("error", pickled_exc, type_name, text, tb)     fetch_fun or validation failed

A child that dies without an "error" message (killed, segfault, ``os._exit``)
is noticed by the trainer as end-of-file on the socket.  The trainer asks the
child to stop through the arena's control block; a child whose trainer is gone
notices that its parent changed, or gets EPIPE, and exits -- or, if fetch_fun is
busy, a watcher thread sees end-of-file on the socket and ends the process.
"""

from __future__ import annotations

import dataclasses
import multiprocessing.spawn
import os
import pickle
import random
import select
import signal
import socket
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from ._errors import ChunkValueError
from ._shm_ring import ShmArena
from ._validate import ChunkValidator

__all__ = ["ChildSpec", "child_main", "IN_WORKER_ENV"]

#: Set in every worker process.
IN_WORKER_ENV = "DATA_WORKERS_IN_WORKER_PROCESS"


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    """What a worker process needs to know; pickled once at start."""

    worker_id: int
    fetch_fun: Callable[[int, int], Any]
    seed: int
    blob_names: Sequence[str]
    batch_columns: Sequence[int]
    dont_rebatch: bool
    input_source: str
    capacity: int


def _send_error(conn: Connection, exc: BaseException) -> None:
    try:
        blob: Optional[bytes] = pickle.dumps(exc)
    except Exception:
        blob = None
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    conn.send(("error", blob, type(exc).__name__, str(exc), tb))


def child_main(spec: ChildSpec, conn: Connection, arena: ShmArena) -> None:
    """The fetch loop of one worker process."""
    random.seed(spec.seed)
    np.random.seed(spec.seed % (2 ** 32))
    validator = ChunkValidator(spec.blob_names, spec.batch_columns, spec.dont_rebatch,
                               spec.input_source)
    parent = os.getppid()

    def keep_going() -> bool:
        return not arena.stop_requested and os.getppid() == parent

    while keep_going():
        started = time.monotonic()
        try:
            output = spec.fetch_fun(spec.worker_id, arena.batch_size)
            arrays = validator.check_structure(spec.worker_id, output)
        except Exception as exc:
            _send_error(conn, exc)
            return
        fetch_secs = time.monotonic() - started
        if arrays is None or validator.rows_of(arrays) == 0:
            conn.send(("skip", fetch_secs))
            continue
        numeric: List[np.ndarray] = [a for a in arrays if a.dtype.kind != "O"]
        need = arena.chunk_bytes(numeric)
        if need > arena.capacity:
            _send_error(conn, ChunkValueError(
                "fetcher %d of input %r returned a chunk of %d bytes, more than the %d bytes "
                "of shared memory per worker; return smaller chunks or raise "
                "shm_bytes_per_worker" % (spec.worker_id, spec.input_source, need,
                                          arena.capacity)))
            return
        written = arena.write(numeric, keep_going)
        if written is None:
            return
        span, layouts = written
        objects = {i: a for i, a in enumerate(arrays) if a.dtype.kind == "O"}
        conn.send(("chunk", span, layouts, objects, fetch_secs))


def _exit_when_trainer_dies(conn: Connection, arena: ShmArena) -> None:
    """Daemon thread: end this process if the trainer dies without stopping it.

    The trainer sends nothing after the spec, so the socket turns readable only
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
    # Ctrl-C goes to the whole process group; the trainer handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock_fd, arena_fd = int(argv[0]), int(argv[1])
    # Marks this interpreter as a worker: a training script without a
    # ``__main__`` guard would otherwise start workers again while we import it.
    os.environ[IN_WORKER_ENV] = "1"
    conn = Connection(socket.socket(fileno=sock_fd).detach())
    arena: Optional[ShmArena] = None
    try:
        try:
            multiprocessing.spawn.prepare(conn.recv())
            spec: ChildSpec = pickle.loads(conn.recv_bytes())
        except Exception as exc:  # e.g. fetch_fun's module does not import here
            _send_error(conn, exc)
            return 1
        arena = ShmArena(spec.capacity, fd=arena_fd)
        threading.Thread(target=_exit_when_trainer_dies, args=(conn, arena), daemon=True,
                         name="exit when the trainer dies").start()
        conn.send(("ready",))
        child_main(spec, conn, arena)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass  # the trainer went away; nobody is left to report to
    finally:
        conn.close()
        if arena is not None:
            arena.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
