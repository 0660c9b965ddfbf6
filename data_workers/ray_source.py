"""Feed Caffe2 nets from a ``ray.data.Dataset`` (optional extra ``data_workers[ray]``).

Preprocessing runs as Ray Data tasks on the Ray cluster; each trainer (or each device
input) consumes its own split of the stream through an ordinary data_workers input, so
batches go through the same re-batcher, bounded queues, back-pressure and error handling
as any other fetcher::

    Ray cluster: read -> map_batches(preprocess) -> ... -> streaming_split(n)
                                                              | split i (DataIterator)
    trainer i:   RayDataSource (fetch_fun, fetcher thread) -> chunk queue -> re-batcher
                 -> Caffe2 BlobsQueue -> DequeueBlobs in the net

This module is the only place in the package that imports Ray, and only when a source
is built; ``import data_workers`` never does.

**Usage**::

    import ray
    from data_workers.ray_source import RayDataSource

    ds = ray.data.read_parquet(path).map_batches(preprocess)
    sources = RayDataSource.split(ds, ["data", "label"], batch_size=32, n=num_trainers)
    source = sources[trainer_rank]       # all splits consumed in this process
    # Trainers in other processes (e.g. Ray actors): send each one its DataIterator from
    # ds.streaming_split(n, equal=True) and build RayDataSource(iterator, ...) there.
    coord = source.attach(net, ["data", "label"])
    coord.start()
    try:
        for _ in range(steps):
            workspace.RunNet(net)       # a failed Ray task surfaces here, as FetcherError
    finally:
        coord.stop()
        source.close()

Back-pressure: the fetcher thread blocks when the input's queues are full and stops
pulling from its iterator, so Ray's streaming executor throttles preprocessing instead of
filling the object store. With ``streaming_split`` all splits share one execution: a
consumer that stops pulling eventually stalls the others (Ray's documented behaviour).

Errors: an exception in a Ray Data task is raised by the iterator in the fetcher thread
as :class:`RayDataError` (its message leads with the user's exception, e.g.
``ValueError: corrupt record``; its ``__cause__`` is Ray's ``RayTaskError`` with the
remote traceback), and reaches the training loop as ``data_workers.FetcherError`` with
that ``RayDataError`` as ``__cause__``.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any, Callable
from collections.abc import Iterator, Sequence

import numpy as np

from ._core.args import check_int, check_positive_int

if TYPE_CHECKING:  # pragma: no cover - typing only
    import ray.data

__all__ = ["RayDataSource", "RayDataError", "RayDataExhausted"]

logger = logging.getLogger(__name__)

#: How long an exhausted source waits before returning None again (no busy loop).
_EXHAUSTED_WAIT_S = 1.0
#: How long ``close()`` waits for a fetcher's call into Ray's iterator to return before
#: leaving the iterator to that fetcher to close (Ray may not answer for minutes).
_CLOSE_WAIT_S = 0.5


class RayDataExhausted(RuntimeError):
    """Raised by :meth:`RayDataSource.next_batch` after the last configured epoch."""


class RayDataError(RuntimeError):
    """A Ray Data task failed while producing this consumer's next batch.

    Ray re-raises a failed task in the consumer as ``RayTaskError(UserCodeException)``
    and keeps the user's exception only as remote traceback text; this error puts that
    exception's line first. ``__cause__`` is Ray's error.

    Attributes:
        user_error: The user's exception as text (``"ValueError: bad record"``), or
            Ray's own message when no user exception is found.
        remote_traceback: The full text Ray reported.
    """

    def __init__(self, user_error: str, remote_traceback: str) -> None:
        super().__init__(f"a Ray Data task failed: {user_error}")
        self.user_error = user_error
        self.remote_traceback = remote_traceback


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CHAINED = "\nThe above exception was the direct cause of the following exception:"


def _user_error_line(text: str) -> str:
    """The ``Type: message`` line of the first (innermost) exception in ``text``."""
    first = _ANSI.sub("", text).split(_CHAINED)[0]
    lines = [ln.strip() for ln in first.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else text


def _require_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "data_workers.ray_source needs Ray Data: pip install 'data_workers[ray]'"
        ) from exc
    return ray


class RayDataSource:
    """A ``fetch_fun`` that yields exact batches from one Ray Data iterator.

    Each call returns the next ``batch_size`` rows of ``columns`` as numpy arrays, in the
    order of ``input_blob_names``. Use it with thread fetchers (``attach`` does): a source
    lives in the process that consumes it, and Ray already provides the parallelism.
    Several fetcher threads may share one source; calls are serialised.

    Args:
        iterator: A ``ray.data.DataIterator`` (e.g. one element of
            ``Dataset.streaming_split``) or a ``ray.data.Dataset``.
        columns: The dataset columns to feed, one per input blob, in blob order.
        batch_size: Rows per batch; must equal the input's batch size.
        num_epochs: Passes over the iterator; None repeats forever. After the last
            epoch the fetcher returns None (no data) until the input is stopped.
        drop_last: Drop each epoch's last partial batch. If False it is delivered and
            the input's re-batcher joins it with the start of the next epoch.
        prefetch_batches: Batches Ray prepares ahead (``iter_batches`` argument).
        dtypes: Optional per-column dtype to cast to (e.g. ``{"data": np.float32}``).

    Raises:
        TypeError: ``batch_size``, ``num_epochs`` or ``prefetch_batches`` is not an
            integral number (``np.int64`` is; ``bool`` and ``"2"`` are not).
        ValueError: On an empty ``columns``, or a ``batch_size``, ``num_epochs`` or
            ``prefetch_batches`` out of range.
    """

    def __init__(
        self,
        iterator: Any,
        columns: Sequence[str],
        *,
        batch_size: int,
        num_epochs: int | None = None,
        drop_last: bool = False,
        prefetch_batches: int = 1,
        dtypes: dict[str, Any] | None = None,
    ) -> None:
        _require_ray()
        if not columns:
            raise ValueError("columns must name at least one dataset column")
        batch_size = check_positive_int("batch_size", batch_size)
        num_epochs = check_positive_int("num_epochs", num_epochs, or_none=True)
        prefetch_batches = check_int("prefetch_batches", prefetch_batches, minimum=0)
        import ray.data
        import ray.exceptions

        self._task_error: type[BaseException] = ray.exceptions.RayTaskError
        if isinstance(iterator, ray.data.Dataset):
            iterator = iterator.iterator()
        self._iterator = iterator
        self._columns = tuple(columns)
        self._batch_size = batch_size
        self._num_epochs = num_epochs
        self._drop_last = drop_last
        self._prefetch = prefetch_batches
        self._dtypes = dict(dtypes or {})
        # Serialises next() on the generator: several fetcher threads may share a source,
        # and a generator raises "already executing" if entered twice.  Held across the
        # call into Ray, which may block for as long as Ray takes: nothing else waits
        # on it without a bound (the counters are read without it; close() waits
        # _CLOSE_WAIT_S at most), as NOTE [ Shutdown and error protocol ], rule 7
        # (_core/coordinator.py), asks of every wait.
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._batches: Iterator[dict[str, np.ndarray]] | None = None
        self._epoch = 0
        self._rows = 0
        self._exhausted = False

    @classmethod
    def split(
        cls,
        dataset: ray.data.Dataset,
        columns: Sequence[str],
        *,
        batch_size: int,
        n: int,
        equal: bool = True,
        **kwargs: Any,
    ) -> list[RayDataSource]:
        """Split ``dataset`` with ``streaming_split(n, equal=equal)``: one source per consumer.

        With ``equal=True`` every consumer gets the same number of rows per epoch (Ray may
        drop up to ``n - 1`` rows to make that so), which keeps synchronous trainers in
        step. Other keyword arguments go to the constructor.

        Args:
            dataset: the ``ray.data.Dataset`` to read (already mapped / preprocessed).
            columns: the dataset columns to feed, one per input blob, in blob order.
            batch_size: rows per batch each source returns.
            n: the number of consumers (trainers, or inputs on one trainer).
            equal: give every consumer the same number of rows per epoch.
            **kwargs: other ``RayDataSource`` arguments (``num_epochs``, ``drop_last``, ...).

        Raises:
            TypeError: If ``n`` is not an integral number.
            ValueError: If ``n`` is not positive.
        """
        n = check_positive_int("n", n)
        return [
            cls(it, columns, batch_size=batch_size, **kwargs)
            for it in dataset.streaming_split(n, equal=equal)
        ]

    @property
    def batch_size(self) -> int:
        """Rows per batch."""
        return self._batch_size

    @property
    def rows_delivered(self) -> int:
        """Rows returned to fetchers so far."""
        return self._rows  # one int read: never waits for a fetcher inside Ray

    @property
    def epoch(self) -> int:
        """Current epoch (0-based)."""
        return self._epoch

    def _new_epoch(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(
            self._iterator.iter_batches(
                batch_size=self._batch_size,
                batch_format="numpy",
                drop_last=self._drop_last,
                prefetch_batches=self._prefetch,
            )
        )

    def next_batch(self) -> list[np.ndarray]:
        """Return the next batch as one array per column.

        Raises:
            RayDataExhausted: After the last epoch.
            RayDataError: A Ray Data task failed (``__cause__``: Ray's error).
            KeyError: If a column is missing from the dataset's batches.
            Exception: Other errors of the Ray Data pipeline, as Ray raised them.
        """
        with self._lock:
            while True:
                if self._closed.is_set() and not self._exhausted:
                    # close() gave up waiting for a call into Ray: the iterator is ours
                    # to close, and what Ray answered goes nowhere.
                    self._close_iterator()
                if self._exhausted:
                    raise RayDataExhausted(
                        "Ray data source closed" if self._closed.is_set()
                        else f"Ray data source exhausted after {self._epoch} epoch(s)")
                if self._batches is None:
                    self._batches = self._new_epoch()
                try:
                    batch = next(self._batches)
                except self._task_error as exc:
                    text = str(exc)
                    raise RayDataError(_user_error_line(text), text) from exc
                except StopIteration:
                    self._batches = None
                    self._epoch += 1
                    if self._num_epochs is not None and self._epoch >= self._num_epochs:
                        self._exhausted = True
                        logger.info("Ray data source finished %d epoch(s), %d rows", self._epoch, self._rows)
                    continue
                if self._closed.is_set():
                    continue  # close() came while Ray answered: the top of the loop closes
                break
            missing = [c for c in self._columns if c not in batch]
            if missing:
                raise KeyError(
                    f"Ray dataset batches have no column(s) {missing}; they have {sorted(batch)}"
                )
            arrays = []
            for c in self._columns:
                arr = np.ascontiguousarray(batch[c])
                if c in self._dtypes:
                    arr = arr.astype(self._dtypes[c], copy=False)
                arrays.append(arr)
            self._rows += int(arrays[0].shape[0])
            return arrays

    def __call__(self, worker_id: int, batch_size: int) -> list[np.ndarray] | None:
        """The ``fetch_fun`` protocol: the next batch, or None once exhausted.

        Raises:
            ValueError: If ``batch_size`` differs from the source's.
        """
        if batch_size != self._batch_size:
            raise ValueError(
                f"input batch_size {batch_size} != RayDataSource batch_size {self._batch_size}"
            )
        try:
            return self.next_batch()
        except RayDataExhausted:
            # No more data: use this turn without data and don't spin; close() wakes us.
            self._closed.wait(_EXHAUSTED_WAIT_S)
            return None

    def attach(
        self,
        net: Any,
        input_blob_names: Sequence[str],
        *,
        num_workers: int = 1,
        **kwargs: Any,
    ) -> Any:
        """Call ``data_workers.init_data_input_workers`` with this source as the fetcher.

        Uses thread fetchers (one by default: Ray does the parallel work, the thread
        only moves finished batches). Other keyword arguments pass through.

        Args:
            net: the ``core.Net`` or ``ModelHelper`` to feed.
            input_blob_names: one blob per column, in the order of ``columns``.
            num_workers: fetcher threads (1 is enough: Ray does the work).
            **kwargs: any other keyword argument of ``init_data_input_workers``.

        Returns:
            The global coordinator.

        Raises:
            ValueError: If ``worker_type`` is not "thread", ``batch_size`` is passed,
                or the number of blob names differs from the number of columns.
        """
        from ._caffe2.api import init_data_input_workers

        if kwargs.get("worker_type", "thread") != "thread":
            raise ValueError(
                "RayDataSource needs worker_type='thread': its iterator belongs to this "
                "process, and the preprocessing already runs in Ray workers"
            )
        if "batch_size" in kwargs:
            raise ValueError("attach() takes the batch size from the source")
        if len(input_blob_names) != len(self._columns):
            raise ValueError(
                f"{len(input_blob_names)} input blobs for {len(self._columns)} columns "
                f"{self._columns}; give one blob per column"
            )
        return init_data_input_workers(
            net, list(input_blob_names), self, self._batch_size,
            num_worker_threads=num_workers, **kwargs,
        )

    def close(self) -> None:
        """Release the iterator. Call after the input is stopped; idempotent; never blocks
        for long.

        A fetcher thread may still be inside Ray's iterator (``stop()`` gave up on it:
        Ray had not answered).  Then close() waits ``_CLOSE_WAIT_S`` at most and leaves
        the iterator to that thread, which closes it when Ray answers and returns no
        more batches.
        """
        self._closed.set()
        if not self._lock.acquire(timeout=_CLOSE_WAIT_S):
            logger.warning("RayDataSource.close(): a fetcher is still waiting on Ray's "
                           "iterator; it closes the iterator when Ray answers")
            return
        try:
            self._close_iterator()
        finally:
            self._lock.release()

    def _close_iterator(self) -> None:
        """Close the current epoch's iterator and refuse further batches (lock held)."""
        gen, self._batches = self._batches, None
        self._exhausted = True
        close: Callable[[], None] | None = getattr(gen, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> RayDataSource:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            "RayDataSource cannot be pickled: use it with thread fetchers "
            "(worker_type='thread'); Ray already runs the preprocessing in parallel"
        )
