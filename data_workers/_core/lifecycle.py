"""The lifecycle of an input (or a generic worker group), as one enum.

Replaces upstream's pair of booleans (``_active`` / ``_started``), whose four
combinations included two that made no sense.
"""

from __future__ import annotations

import enum

__all__ = ["Lifecycle"]


class Lifecycle(enum.Enum):
    #: Built by ``init_*``; queues and dequeue ops exist, no worker runs yet.
    CREATED = "created"
    #: Workers and the enqueuer run; batches flow into the Caffe2 queue.
    RUNNING = "running"
    #: A failure stopped the input's workers and closed its Caffe2 queue; the
    #: error waits to be raised by ``check()`` / ``stop()``, which also joins.
    BROKEN = "broken"
    #: ``stop()`` began: every worker was told to end and is being joined.  The
    #: registry keeps the input until it is joined and cleaned up, so a second
    #: ``stop()`` (after Ctrl-C interrupted the first) finishes the job.
    STOPPING = "stopping"
    #: ``stop()`` finished: everything joined and released, terminal.
    #: Starting again is an error.
    STOPPED = "stopped"

    @property
    def accepts_work(self) -> bool:
        """True while workers should keep producing."""
        return self is Lifecycle.RUNNING

    @property
    def halted(self) -> bool:
        """True once workers were told to end (by a failure or by ``stop()``)."""
        return self in (Lifecycle.BROKEN, Lifecycle.STOPPING, Lifecycle.STOPPED)
