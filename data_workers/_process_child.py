"""The loop a worker process runs: call fetch_fun, write arrays to the ring, report.

Runs in a *spawned* child (see ``_process_workers.py`` for why spawn).  Talks
to the trainer through one pipe (small messages) and one ``ShmArena`` (the
arrays).  Every outcome is a message, so the parent never has to guess:

    ("chunk", span, layouts, objects, fetch_secs)   arrays are in the ring
    ("skip", fetch_secs)                            fetch_fun returned None / no rows
    ("error", pickled_exc, type_name, text, tb)     fetch_fun or validation failed

A child that dies without an "error" message (killed, segfault, ``os._exit``)
is noticed by the parent through the process sentinel.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
import signal
import time
import traceback
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from ._errors import ChunkValueError
from ._shm_ring import ShmArena
from ._validate import ChunkValidator

__all__ = ["ChildSpec", "child_main", "received_fd"]


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    """What a worker process needs to know; pickled once at spawn."""

    worker_id: int
    fetch_fun: Callable[[int, int], Any]
    seed: int
    blob_names: Sequence[str]
    batch_columns: Sequence[int]
    dont_rebatch: bool
    input_source: str
    capacity: int


def received_fd(handle: Any) -> Any:
    """Unpickling hook for the arena fd (see ``_FdForChild``)."""
    return handle


def _send_error(conn: Any, exc: BaseException) -> None:
    try:
        blob: Optional[bytes] = pickle.dumps(exc)
    except Exception:
        blob = None
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    conn.send(("error", blob, type(exc).__name__, str(exc), tb))


def child_main(spec: ChildSpec, conn: Any, stop_event: Any, batch_size: Any, arena_fd: Any) -> None:
    """Entry point of a worker process."""
    # Ctrl-C goes to the whole process group; the trainer handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    random.seed(spec.seed)
    np.random.seed(spec.seed % (2 ** 32))
    arena = ShmArena(spec.capacity, fd=arena_fd.detach())
    validator = ChunkValidator(spec.blob_names, spec.batch_columns, spec.dont_rebatch,
                               spec.input_source)

    def keep_going() -> bool:
        return not stop_event.is_set()

    try:
        while keep_going():
            started = time.monotonic()
            try:
                output = spec.fetch_fun(spec.worker_id, batch_size.value)
                arrays = validator.check_structure(spec.worker_id, output)
            except Exception as exc:
                _send_error(conn, exc)
                return
            fetch_secs = time.monotonic() - started
            if arrays is None or arrays[0].shape[spec.batch_columns[0]] == 0:
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
    except (BrokenPipeError, EOFError):
        pass  # the trainer went away; nothing left to report to
    finally:
        conn.close()
        arena.close()
