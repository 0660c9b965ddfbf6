"""The currency of the pipeline: one validated piece of fetcher output."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from .errors import DataInputError

__all__ = ["Chunk"]


@dataclasses.dataclass
class Chunk:
    """A validated piece of fetcher output on its way to the re-batcher.

    A chunk with ``rows == 0`` is a *turn marker*: the fetcher returned None or
    nothing, which deterministic mode still counts as that worker's turn.  A
    turn marker with ``failure`` set is a *failure marker*: its worker failed
    after everything it queued before (NOTE [ Shutdown and error protocol ],
    rule 10, ``_core/coordinator.py``).
    """

    worker_id: int
    arrays: list[np.ndarray]
    rows: int
    #: Called once every row has been copied out (process workers use it to
    #: hand the shared-memory space back to the child).
    release: Callable[[], None] | None = None
    #: Process workers: asks whether this chunk, a whole batch in shared
    #: memory, may go to the sink uncopied.
    lend: Callable[[], bool] | None = None
    #: Set on a failure marker: the worker's failure, raised once every whole
    #: batch of the rows queued before it has been handed to the sink.
    failure: "DataInputError" | None = None

    def done(self) -> None:
        if self.release is not None:
            release, self.release = self.release, None
            release()
