"""How messages name the parts of an input, in the words of the front end's users.

A Caffe2 script has an *input* of *fetchers* filling *blobs*; a PyTorch loop has
a *loader* of *workers* yielding *arrays*.  The engine is the same, so every
message the engine writes (errors, stall warnings, log lines) takes its nouns
from the sink's ``Words`` (``_core/sink.py``).  Plain data: process workers get
a copy, for the errors they raise themselves.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Words", "FETCHER_WORDS", "byte_size"]


class Words(NamedTuple):
    #: One of the parallel callers of ``fetch_fun`` (a thread or a process).
    worker: str
    #: The whole pipeline, named by ``input_source_name``.
    input: str
    #: One of the arrays of a chunk or batch, named by the front end's names.
    array: str
    #: What ``max_fetch_failures`` counts, in its messages.
    exceptions: str

    def input_named(self, name: str) -> str:
        """``input 'train'`` / ``loader 'loader'``."""
        return "%s %r" % (self.input, name)

    def array_named(self, name: str) -> str:
        """``blob 'label'`` / ``array 'target'``."""
        return "%s %r" % (self.array, name)

    def worker_of(self, worker_id: int, name: str, pid: int | None = None) -> str:
        """``fetcher 3 of input 'train'`` / ``worker 3 (pid 42) of loader 'loader'``."""
        return "%s %d%s of %s" % (self.worker, worker_id,
                                  "" if pid is None else " (pid %s)" % pid, self.input_named(name))


def byte_size(n: int) -> str:
    """A byte count as messages write it: ``512 bytes``, ``1.5 KiB``, ``19.3 MiB``."""
    if n < 1024:
        return "%d bytes" % n
    size = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024.0
        if size < 1024:
            break
    return "%.1f %s" % (size, unit)


#: The words of upstream's ``data_workers`` (and of the engine's own docs).
FETCHER_WORDS = Words(worker="fetcher", input="input", array="blob",
                      exceptions="fetcher exceptions")
