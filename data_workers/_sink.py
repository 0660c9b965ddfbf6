"""Where finished batches go: the contract between the enqueuer and a sink.

The Caffe2 queue (``_enqueue.Caffe2Feed``) is one sink; others hand batches to
a Python consumer.  The enqueuer thread is a sink's only producer::

    dests = sink.destinations(layout)   arrays to write the next batch into
    (the re-batcher copies rows into dests: the one copy)
    sink.enqueue(dests)                 hand the batch over; blocks while full

``close()`` is part of halting (NOTE [ Shutdown and error protocol ] in
``_coordinator.py``, rule 3): it never blocks, and a blocked ``enqueue``
returns False.  ``cleanup()`` runs after the enqueuer has ended.
"""

from __future__ import annotations

from typing import List, Protocol, Sequence, Tuple

import numpy as np

__all__ = ["BatchSink", "BatchLayout"]

#: Shape and dtype of each blob of one batch.
BatchLayout = Sequence[Tuple[Tuple[int, ...], np.dtype]]


class BatchSink(Protocol):
    """Receives whole batches from the enqueuer thread."""

    def destinations(self, layout: BatchLayout) -> List[np.ndarray]:
        """Arrays the next batch is written into, one per blob."""

    def enqueue(self, dests: Sequence[np.ndarray]) -> bool:
        """Hand over the batch written into ``dests``; False if closed meanwhile."""

    def close(self) -> None:
        """Stop accepting batches; wakes a blocked ``enqueue``.  Never blocks."""

    def cleanup(self) -> None:
        """Release what the sink holds; the enqueuer has ended.  Idempotent."""
