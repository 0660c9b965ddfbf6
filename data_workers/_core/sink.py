"""Where finished batches go: the contract between the enqueuer and a sink.

The Caffe2 queue (``_caffe2.feed.Caffe2Feed``) is one sink; others hand batches to
a Python consumer.  The enqueuer thread is a sink's only producer::

    dests = sink.destinations(layout)   arrays to write the next batch into
    (the re-batcher copies rows into dests: the one copy)
    sink.enqueue(dests)                 hand the batch over; blocks while full

``close()`` is part of halting (NOTE [ Shutdown and error protocol ] in
``_core/coordinator.py``, rule 3): it never blocks, and a blocked ``enqueue``
returns False.  ``cleanup()`` runs after the enqueuer has ended.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable
from collections.abc import Sequence

import numpy as np

from .validate import DtypeRule
from .words import Words

__all__ = ["BatchSink", "LendingSink", "BatchLayout"]

#: Shape and dtype of each blob of one batch.
BatchLayout = Sequence[tuple[tuple[int, ...], np.dtype]]


class BatchSink(Protocol):
    """Receives whole batches from the enqueuer thread.

    A sink owns the rules of its consumer: which dtypes it takes, the scope its
    objects are named in, and what it means when it stays full.
    """

    #: The arrays this sink takes; the validator applies it to the first chunk.
    dtype_rule: DtypeRule
    #: The nouns of every message about this input (``_core/words.py``).
    words: Words
    #: The prefix that names this input among its consumer's objects (a Caffe2
    #: name scope), or "".  Shown in thread names, logs and ``InputStats``.
    scope: str
    #: Why a full sink blocks the enqueuer, and what to check: the stall
    #: warning's words for the consumer's side ("... still calling RunNet?").
    full_hint: str
    #: Arrays the consumer never sees (a front end's own bookkeeping), left
    #: out of the description of the first batch.
    hidden_arrays: frozenset[str]

    def destinations(self, layout: BatchLayout) -> list[np.ndarray]:
        """Arrays the next batch is written into, one per blob."""

    def enqueue(self, dests: Sequence[np.ndarray]) -> bool:
        """Hand over the batch written into ``dests``; False if closed meanwhile."""

    def close(self) -> None:
        """Stop accepting batches; wakes a blocked ``enqueue``.  Never blocks."""

    def cleanup(self) -> None:
        """Release what the sink holds; the enqueuer has ended.  Idempotent."""

    def consumer_wait_secs(self) -> float:
        """Seconds the consumer (the net's dequeue, the loop's ``next()``) has spent
        waiting for a batch so far: ``InputStats.input_bound`` is its rate."""


@runtime_checkable
class LendingSink(BatchSink, Protocol):
    """A sink that can take a whole batch without copying it (process workers).

    ``lend`` hands over arrays that live in a worker's shared memory; the sink
    calls ``release`` once nothing refers to them any more, which may be
    several batches later and out of order (``_workers/shm_ring.py``, "Lending").
    """

    def can_lend(self, arrays: Sequence[np.ndarray]) -> bool:
        """True if ``lend`` would take these arrays (device and dtypes allow it)."""

    def lend(self, arrays: list[np.ndarray], release: Callable[[], None]) -> bool:
        """Enqueue ``arrays`` as one batch, uncopied; False if closed meanwhile.

        ``release`` runs once the sink no longer needs the arrays: when its
        consumer has dropped them, or at once if it never took them.  The
        caller must drop its own references to ``arrays``.
        """
