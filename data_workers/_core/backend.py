"""The contract between an input and its fetcher backend (threads or processes).

In the manner of ``concurrent.futures._base`` vs ``thread.py`` / ``process.py``:
this module states what a backend must do (``FetcherBackend``) and the little it
may use of its input (``FetcherHost``); ``_workers/threads.py`` and
``_workers/processes.py`` implement it.  The input's coordinator drives every
backend through these methods alone, in the order of
NOTE [ Shutdown and error protocol ] (``_core/coordinator.py``)::

    batch_source()          once, when the input is built: None (the backend's
                            threads put chunks into the input's channel) or a
                            source the enqueuer reads chunks from itself
    start()                 once, from the coordinator's start()
    halt()                  never blocks, idempotent, safe from a signal handler
    join(deadline, t0)      bounded by the one deadline of the whole stop()
    (the coordinator gives back every chunk still buffered)
    close()                 release OS resources; no chunk points into them now

Caffe2-free, like everything a worker process imports.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from typing import Any, Callable, Protocol
from collections.abc import Sequence

import numpy as np

from .chunk import Chunk
from .errors import DataInputError
from .metrics import Metrics
from .validate import DtypeRule
from .words import FETCHER_WORDS, Words

__all__ = ["FetcherHost", "FetcherBackend", "BackendSpec", "ChunkSource", "FetchFun", "OutputBuffers",
           "WORKER_TYPES", "START_METHODS"]

FetchFun = Callable[[int, int], Any]
#: The backends ``_workers`` provides, by their ``worker_type`` name.
WORKER_TYPES = ("thread", "process")
#: How process workers start: a fresh interpreter each (the default), or a
#: fork of the trainer (``_workers/fork.py``).
START_METHODS = ("spawn", "fork")


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """What a backend is told about its input, validated by the builder."""

    fetch_fun: FetchFun
    input_source: str
    blob_names: Sequence[str]
    batch_columns: Sequence[int]
    dont_rebatch: bool
    #: Base seed of process workers (worker i seeds with ``seed + i``); None: random.
    seed: int | None
    #: Shared memory per process worker; None: the backend's default.
    shm_bytes_per_worker: int | None
    #: The sink's dtypes, which process workers check before sending a chunk.
    dtype_rule: DtypeRule
    #: The sink's words, for the messages of the workers' own errors.
    words: Words = FETCHER_WORDS
    #: One chunk from each worker in turn (the channel's order).
    deterministic: bool = False
    #: ``max_fetch_failures`` is set: a fetch_fun exception goes to the host's
    #: ``skip_fetch_failure`` instead of failing the worker at once.
    skip_fetch_failures: bool = False
    #: The dtype each blob must have (None: any); checked where chunks are validated.
    dtypes: tuple[np.dtype | None, ...] | None = None
    #: How process workers start: one of ``START_METHODS``.
    start_method: str = "spawn"


class OutputBuffers(Protocol):
    """Memory a process worker lends ``fetch_fun`` for its next output.

    A ``fetch_fun`` with a ``use_output_buffers(buffers)`` method gets it
    called once in each process worker, before its first call (never with
    thread workers).  It may then ``take`` arrays for the output it is about to
    return and fill them: arrays returned as they were taken go to the trainer
    without being copied; any other output is sent as usual and the taken
    memory is given back.  A batch of images written where the trainer reads it
    saves a copy and a fresh allocation per batch (``_workers/child.py``).
    """

    def take(self, layouts: Sequence[tuple[np.dtype, tuple[int, ...]]]) -> list[np.ndarray] | None:
        """Arrays of these ``(dtype, shape)`` pairs, for the output of this call;
        None when there are none to be had (too large, or the worker is stopping)."""


class ChunkSource(Protocol):
    """What the enqueuer takes chunks from: the input's channel (``_core/channel.py``),
    or a backend that hands whole batches over itself (``FetcherBackend.batch_source``)."""

    def get_ready(self, timeout: float | None = None, want_rows: int = 1) -> list[Chunk]:
        """Chunks ready now, waiting up to ``timeout`` for one; empty once closed."""

    def close(self) -> None:
        """Wake a waiting ``get_ready``; it returns empty from now on.  Never blocks."""

    def drain(self) -> list[Chunk]:
        """Remove and return what is still buffered (the owner releases it)."""

    def depth(self) -> int:
        """Chunks buffered; lock-free (``stats()`` and a signal handler read it)."""

    def waiting_for(self) -> int | None:
        """The worker whose chunk must come next, if only one will do."""


class FetcherHost(Protocol):
    """What a backend may use of the input it feeds."""

    @property
    def name(self) -> str: ...

    @property
    def worker_ids(self) -> list[int]: ...

    @property
    def words(self) -> Words:
        """The sink's nouns, for the messages a backend writes."""

    @property
    def metrics(self) -> Metrics: ...

    @property
    def batch_size(self) -> int:
        """The live batch size (``reset_data_input`` may change it)."""

    def is_active(self) -> bool:
        """True while workers should keep fetching."""

    def fail(self, err: DataInputError) -> None:
        """Record the input's failure and halt it (first failure wins)."""

    def add_batch_size_hook(self, hook: Callable[[int], None]) -> None:
        """Call ``hook(new_size)`` whenever the batch size changes."""

    def accept(self, worker_id: int, output: Any, chunks: int = 1) -> Chunk | None:
        """Validate and count fetcher output (``chunks`` fetcher results assembled
        into one); None if skipped.  Raises Chunk*Error."""

    def put(self, output: Any, worker_id: int) -> bool:
        """Validate and queue fetcher output; blocks while full; False once halted."""

    def put_chunk(self, chunk: Chunk) -> bool:
        """Queue an accepted chunk; blocks while full; False once halted (chunk released)."""

    def skip_fetch_failure(self, worker_id: int, exc: BaseException) -> bool:
        """Count one exception of ``fetch_fun``; True if the input skips it
        (``max_fetch_failures``, ``_core/budget.py``), False if it fails the input."""

    def fetch_failure_note(self) -> str:
        """What the message of a fetcher exception beyond the budget adds ("" without one)."""

    def note_failure(self, err: DataInputError) -> None:
        """Make a worker's failure known now; it fails the input later, in-band
        (``put_failure``, or a failure marker from the backend's batch source)."""

    def put_failure(self, err: DataInputError, worker_id: int) -> None:
        """Fail the input after every chunk ``worker_id`` queued before (NOTE [ Shutdown
        and error protocol ], rule 10); at once if the input is halted.  Never blocks."""


class FetcherBackend(abc.ABC):
    """Runs ``fetch_fun`` for every worker id of one input."""

    #: Threads the backend runs in the trainer (upstream's ``coordinator._workers``).
    threads: list[threading.Thread]

    @abc.abstractmethod
    def start(self) -> None:
        """Start every worker.  Called once, with the coordinator's lock held."""

    @abc.abstractmethod
    def halt(self) -> None:
        """Tell every worker to end.  Never blocks; idempotent."""

    @abc.abstractmethod
    def join(self, deadline: float, started: float) -> bool:
        """Wait for every worker until ``deadline``; escalate for processes.

        Returns:
            True if every worker ended by itself.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release OS resources (sockets, shared memory).  Idempotent."""

    def pids(self) -> list[int | None]:
        """Process ids of the workers, for messages (empty for threads)."""
        return []

    def batch_source(self) -> ChunkSource | None:
        """Where the enqueuer reads chunks itself, instead of the host's channel.

        Fixed when the backend is built.  A backend that returns a source gets
        its chunks to the enqueuer through it alone: it starts no thread that
        puts into the host.  None (the default): the backend's threads ``put``
        into the host.
        """
        return None

    @abc.abstractmethod
    def locations(self, only: int | None = None) -> str:
        """Where the workers are (``only``: that worker id), for the stall watchdog."""
