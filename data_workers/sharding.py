"""Sharded, resumable fetchers over an indexable dataset.

A :class:`ShardedSource` turns any dataset with a length and a way to load a list of
indices into a picklable ``fetch_fun(worker_id, batch_size)`` for
:func:`data_workers.init_data_input_workers`. It splits the data across trainer hosts
(and devices), splits each shard among the local fetchers without overlap, reshuffles
every epoch from a seed, and can save and restore its position exactly.

Data flow (one training step, ``S`` shards, per-shard batch ``B``, global batch
``G = S * B``)::

    epoch order  perm(seed, epoch) = [i0, i1, i2, ...]      (same on every host)
                      |
    global step  positions [off, off + G) of that order   (policy for the epoch tail)
                      |
    shard r      positions [off + r*B, off + (r+1)*B)      = block ``step`` of shard r
                      |
    local fetcher j of W serves blocks j, j+W, j+2W, ...  (one block per call)
                      |
    deterministic=True input: one chunk per fetcher in worker-id order -> batch == block

Because every quantity is a pure function of ``(seed, epoch, offset, step)``, nothing is
shared between fetchers: each thread or spawned process derives its blocks on its own.

Last partial portion of an epoch (``N % G`` samples), chosen by ``policy``:

* ``"drop"``: the tail of each epoch's order is skipped. Every step is full, every
  sample is seen at most once per epoch; ``N % G`` (different, because reshuffled)
  samples are left out of each epoch.
* ``"pad"``: the last step is filled up with samples taken again from the start of the
  same epoch's order. Every sample is seen at least once per epoch; the padding rows are
  duplicates (``G - N % G`` of them).
* ``"wrap"``: epochs are concatenated into one endless stream, and steps are cut from it
  regardless of epoch boundaries, so the step that crosses a boundary holds the end of
  one epoch and the start of the next. Every sample is seen exactly once per epoch,
  nothing is dropped or repeated.

Checkpoints (see :class:`InputCheckpoint`) hold the position of the next sample in the
epoch order, not anything about fetchers, so a job can resume with a different number of
local fetchers, fetcher type, or (with compatible batch sizes) number of hosts.

Exactness needs ``deterministic=True`` on the input (``ShardedSource.attach`` sets it):
only then is the batch stream the block stream. With ``deterministic=False`` every block
is still delivered exactly once, but not in step order (a fast fetcher runs ahead), so a
restored job can repeat or skip the blocks that were out of order at the checkpoint.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import tempfile
import threading
import weakref
from typing import Any, Callable, Protocol, cast
from collections.abc import Mapping, Sequence

import numpy as np

from ._core.args import check_int, check_positive_int

__all__ = [
    "ArrayDataset",
    "IndexableDataset",
    "InputCheckpoint",
    "LastBatchPolicy",
    "ShardedSource",
    "device_shard",
]

logger = logging.getLogger(__name__)

_CHECKPOINT_VERSION = 1


class IndexableDataset(Protocol):
    """What :class:`ShardedSource` needs from a dataset.

    ``load`` receives a 1-D ``int64`` array of indices and returns one array per input
    blob, each with ``len(indices)`` rows in the same order. For process fetchers the
    dataset is pickled into every child, so keep it a light handle (file paths, an
    ``np.memmap``), not the data itself.
    """

    def __len__(self) -> int: ...

    def load(self, indices: np.ndarray) -> Sequence[np.ndarray]:
        """Return the rows ``indices`` of every array, in that order.

        Args:
            indices: a 1-D ``int64`` array of row numbers in ``0 .. len(self) - 1``.

        Returns:
            One array per input blob, each with ``len(indices)`` rows.
        """
        ...


class ArrayDataset:
    """An :class:`IndexableDataset` over in-memory arrays that share their first axis.

    Args:
        *arrays: One array per input blob; all must have the same number of rows.

    Raises:
        ValueError: If no array is given or the row counts differ.
    """

    def __init__(self, *arrays: np.ndarray) -> None:
        if not arrays:
            raise ValueError("ArrayDataset needs at least one array")
        self._arrays = tuple(np.asarray(a) for a in arrays)
        lengths = {a.shape[0] if a.ndim else -1 for a in self._arrays}
        if len(lengths) != 1 or -1 in lengths:
            raise ValueError(
                "ArrayDataset arrays must all have the same number of rows, got shapes "
                f"{[a.shape for a in self._arrays]}"
            )

    def __len__(self) -> int:
        return int(self._arrays[0].shape[0])

    def load(self, indices: np.ndarray) -> list[np.ndarray]:
        """Return the rows ``indices`` of every array (copies).

        Args:
            indices: a 1-D ``int64`` array of row numbers.
        """
        return [a[indices] for a in self._arrays]


class LastBatchPolicy(str, enum.Enum):
    """How the last ``N % global_batch`` samples of an epoch are handled."""

    DROP = "drop"
    """Skip them (each epoch leaves out a different, reshuffled tail)."""
    PAD = "pad"
    """Fill the last step with samples repeated from the start of the epoch's order."""
    WRAP = "wrap"
    """Continue into the next epoch: one endless stream, exactly once per epoch."""


@dataclasses.dataclass(frozen=True)
class InputCheckpoint:
    """The position of a :class:`ShardedSource` stream, independent of its fetchers.

    Save it together with the Caffe2 model checkpoint of the same step (see
    :meth:`save` / :meth:`to_blob`) and pass it back as ``ShardedSource(...,
    resume=checkpoint)``.
    """

    num_samples: int
    """Length of the dataset; must match on restore."""
    seed: int
    """Base seed of the per-epoch shuffles; must match on restore."""
    shuffle: bool
    """Whether epochs are shuffled; must match on restore."""
    policy: str
    """The :class:`LastBatchPolicy` value; must match on restore."""
    epoch: int
    """Epoch of the next sample to deliver."""
    offset: int
    """Samples of that epoch's order already delivered to the nets (all shards)."""
    step: int
    """Global training steps done when this was taken (cross-check with the model)."""
    global_batch_size: int
    """Samples per step over all shards when this was taken (informational)."""
    version: int = _CHECKPOINT_VERSION
    """Format version."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputCheckpoint:
        """Build from :meth:`to_dict` output.

        Args:
            data: the dict ``to_dict()`` returned (e.g. after a JSON round trip).

        Raises:
            ValueError: On a missing field or an unknown version.
        """
        if data.get("version") != _CHECKPOINT_VERSION:
            raise ValueError(
                f"unsupported InputCheckpoint version {data.get('version')!r}, "
                f"expected {_CHECKPOINT_VERSION}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(data)
        if missing:
            raise ValueError(f"InputCheckpoint is missing fields {sorted(missing)}")
        return cls(**{k: data[k] for k in names})

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as JSON, atomically (temporary file + rename in the same folder).

        Args:
            path: the JSON file to write; its folder must exist.
        """
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".input_ckpt.", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InputCheckpoint:
        """Read a checkpoint written by :meth:`save`.

        Args:
            path: a file written by ``save()``.
        """
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_blob(self, blob_name: str) -> None:
        """Store as a string blob in the current Caffe2 workspace.

        Include ``blob_name`` in the model's ``Save`` op so the input position is
        written into the same db, atomically with the parameters it belongs to.

        Args:
            blob_name: the blob to create or overwrite, e.g. ``"input_checkpoint"``.
        """
        from caffe2.python import workspace

        payload = json.dumps(self.to_dict(), sort_keys=True).encode()
        workspace.FeedBlob(blob_name, np.array([payload], dtype=object))

    @classmethod
    def from_blob(cls, blob_name: str) -> InputCheckpoint:
        """Read a checkpoint stored by :meth:`to_blob` (e.g. after a ``Load`` op).

        Args:
            blob_name: the blob ``to_blob()`` wrote (after the model's ``Load`` op).
        """
        from caffe2.python import workspace

        value = workspace.FetchBlob(blob_name)
        raw = value.reshape(-1)[0] if isinstance(value, np.ndarray) else value
        if isinstance(raw, bytes):
            raw = raw.decode()
        return cls.from_dict(json.loads(raw))


def device_shard(rank: int, world_size: int, device: int, num_devices: int) -> tuple[int, int]:
    """Return ``(shard, num_shards)`` for one device input of a multi-device host.

    ``data_parallel_model`` builds one input per device; give each its own shard so
    devices and hosts all read disjoint data: shard ``rank * num_devices + device`` of
    ``world_size * num_devices``.

    Args:
        rank: this host's index, ``0 .. world_size - 1``.
        world_size: the number of hosts.
        device: this input's device index on the host, ``0 .. num_devices - 1``.
        num_devices: inputs (devices) per host.

    Raises:
        TypeError: If an argument is not an int.
        ValueError: If an index is out of range.
    """
    rank = check_int("rank", rank, minimum=0)
    world_size = check_positive_int("world_size", world_size)
    device = check_int("device", device, minimum=0)
    num_devices = check_positive_int("num_devices", num_devices)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    if not 0 <= device < num_devices:
        raise ValueError(f"device must be in [0, num_devices={num_devices}), got {device}")
    return rank * num_devices + device, world_size * num_devices


class ShardedSource:
    """A picklable, resumable fetcher over one shard of an indexable dataset.

    Each call ``source(worker_id, batch_size)`` returns the next block of
    ``batch_size`` rows for that fetcher; see the module docstring for the layout.

    **Usage**::

        source = ShardedSource(dataset, batch_size=32, rank=rank, world_size=hosts,
                               seed=1234, policy="wrap", resume=ckpt_or_None)
        coord = source.attach(net, ["data", "label"], num_workers=4,
                              worker_type="process")
        coord.start()
        for step in range(steps):
            workspace.RunNet(net)
        ckpt = source.checkpoint(steps)   # save next to the model checkpoint
        coord.stop()

    Args:
        dataset: An :class:`IndexableDataset`, or a sequence of arrays (wrapped in
            :class:`ArrayDataset`).
        batch_size: Rows per block; must equal the ``batch_size`` of the input.
        rank: This shard (host, or ``device_shard(...)`` for per-device inputs).
        world_size: Number of shards reading the dataset in lockstep.
        seed: Base seed; epoch ``e`` uses the order ``permutation(seed, e)``.
        shuffle: Reshuffle every epoch (otherwise dataset order).
        policy: ``"drop"``, ``"pad"`` or ``"wrap"``; see :class:`LastBatchPolicy`.
        worker_ids: The input's global fetcher ids, in order. Normally left out and
            filled in by :meth:`init_fun` (which :meth:`attach` installs).
        resume: Start from this checkpoint instead of epoch 0.

    Raises:
        TypeError: If ``dataset`` has no ``__len__``/``load``, or a size, ``rank`` or
            ``seed`` is not an integral number (``np.int64`` is; ``bool`` and ``"2"`` are not).
        ValueError: On out-of-range sizes, an unknown policy, or a checkpoint that does
            not belong to this dataset/seed/policy.
    """

    def __init__(
        self,
        dataset: IndexableDataset | Sequence[np.ndarray],
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        policy: LastBatchPolicy | str = LastBatchPolicy.DROP,
        worker_ids: Sequence[int] | None = None,
        resume: InputCheckpoint | None = None,
    ) -> None:
        if isinstance(dataset, (list, tuple)):
            dataset = ArrayDataset(*dataset)
        if not (hasattr(dataset, "__len__") and callable(getattr(dataset, "load", None))):
            raise TypeError(
                "dataset must have __len__ and load(indices), or be a list/tuple of "
                f"arrays; got {type(dataset).__name__}"
            )
        batch_size = check_positive_int("batch_size", batch_size)
        world_size = check_positive_int("world_size", world_size)
        rank = check_int("rank", rank, minimum=0)
        if rank >= world_size:
            raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
        try:
            self._policy = LastBatchPolicy(policy)
        except ValueError:
            raise ValueError(
                f"policy must be one of {[p.value for p in LastBatchPolicy]}, got {policy!r}"
            ) from None
        self._dataset: IndexableDataset = cast(IndexableDataset, dataset)
        self._num_samples = int(len(self._dataset))
        if self._num_samples <= 0:
            raise ValueError("dataset is empty")
        self._batch_size = batch_size
        self._rank = rank
        self._world_size = world_size
        self._seed = check_int("seed", seed)
        self._shuffle = bool(shuffle)
        self._global_batch = batch_size * world_size
        if self._policy is LastBatchPolicy.DROP and self._global_batch > self._num_samples:
            raise ValueError(
                f"policy 'drop' with batch_size*world_size={self._global_batch} larger "
                f"than the dataset ({self._num_samples}) would deliver nothing; use "
                "'pad' or 'wrap'"
            )
        self._start_epoch = 0
        self._start_offset = 0
        self._start_step = 0
        if resume is not None:
            self._apply_checkpoint(resume)
        self._worker_ids: tuple[int, ...] | None = None
        if worker_ids is not None:
            self.bind_workers(worker_ids)
        self._init_runtime()

    # -- pickling: per-process caches and locks are rebuilt, never shared -----------------

    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[int, int] = {}
        self._perm_cache: dict[int, np.ndarray] = {}
        #: The input this source feeds (trainer side, set by init_fun): it knows
        #: which blocks were skipped under max_fetch_failures.
        self._input: Callable[[], Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_calls", "_perm_cache", "_input"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # -- configuration ---------------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        """Rows per block (the input's batch size)."""
        return self._batch_size

    @property
    def global_batch_size(self) -> int:
        """Samples consumed per step over all shards."""
        return self._global_batch

    @property
    def num_samples(self) -> int:
        """Length of the dataset."""
        return self._num_samples

    @property
    def steps_per_epoch(self) -> int:
        """Full steps in a whole epoch (``floor`` for drop/wrap, ``ceil`` for pad)."""
        if self._policy is LastBatchPolicy.PAD:
            return -(-self._num_samples // self._global_batch)
        return self._num_samples // self._global_batch

    @property
    def worker_ids(self) -> tuple[int, ...] | None:
        """The bound global fetcher ids, or None before :meth:`init_fun` ran."""
        return self._worker_ids

    def bind_workers(self, worker_ids: Sequence[int]) -> None:
        """Tell the source the global ids of the input's fetchers (in order).

        Args:
            worker_ids: the input's global fetcher ids, in the order of their local
                index (``input_coordinator.get_worker_ids()``).

        Raises:
            ValueError: If the ids are empty or repeated.
        """
        ids = tuple(int(i) for i in worker_ids)
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(f"worker_ids must be distinct and non-empty, got {ids}")
        self._worker_ids = ids

    def init_fun(self, input_coordinator: Any, global_coordinator: Any) -> None:
        """``init_fun`` hook for ``init_data_input_workers``: binds the fetcher ids.

        It runs before the fetchers start (and before a process input pickles this
        source), so every fetcher knows its local index and the fetcher count.

        Args:
            input_coordinator: the input being started; its ``get_worker_ids()`` are bound.
            global_coordinator: the registry (unused; part of the ``init_fun`` signature).
        """
        self.bind_workers(input_coordinator.get_worker_ids())
        if callable(getattr(input_coordinator, "skipped_turns", None)):
            self._input = weakref.ref(input_coordinator)

    def attach(
        self,
        net: Any,
        input_blob_names: Sequence[str],
        *,
        num_workers: int = 2,
        init_fun: Callable[[Any, Any], None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call :func:`data_workers.init_data_input_workers` with this source.

        Sets ``deterministic=True`` (needed for exact resume) and installs
        :meth:`init_fun`, followed by ``init_fun`` if given. Other keyword arguments
        (``worker_type``, ``input_source_name``, ``max_buffered_batches``, ...) pass
        through.

        Args:
            net: the ``core.Net`` or ``ModelHelper`` to feed.
            input_blob_names: one blob per array the dataset's ``load`` returns.
            num_workers: fetchers (threads, or processes with ``worker_type="process"``).
            init_fun: your own ``init_fun(input_coordinator, global_coordinator)``, run
                after the source's.
            **kwargs: any other keyword argument of ``init_data_input_workers``.

        Returns:
            The global coordinator.

        Raises:
            ValueError: If ``batch_size`` or ``deterministic=False`` is passed.
        """
        from ._caffe2.api import init_data_input_workers

        if "batch_size" in kwargs:
            raise ValueError("attach() takes the batch size from the source")
        if kwargs.pop("deterministic", True) is not True:
            raise ValueError("attach() needs deterministic=True for exact, resumable order")
        hook: Callable[[Any, Any], None] = (
            self.init_fun if init_fun is None else _ChainedInit(self, init_fun)
        )
        return init_data_input_workers(
            net,
            list(input_blob_names),
            self,
            self._batch_size,
            num_worker_threads=num_workers,
            init_fun=hook,
            deterministic=True,
            **kwargs,
        )

    # -- the stream --------------------------------------------------------------------

    def _order(self, epoch: int) -> np.ndarray:
        perm = self._perm_cache.get(epoch)
        if perm is None:
            if self._shuffle:
                rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self._seed, epoch])))
                perm = rng.permutation(self._num_samples).astype(np.int64)
            else:
                perm = np.arange(self._num_samples, dtype=np.int64)
            with self._lock:
                if len(self._perm_cache) >= 4:
                    self._perm_cache.pop(min(self._perm_cache))
                self._perm_cache[epoch] = perm
        return perm

    def _first_epoch_steps(self) -> int:
        remaining = self._num_samples - self._start_offset
        if self._policy is LastBatchPolicy.PAD:
            return -(-remaining // self._global_batch)
        return remaining // self._global_batch

    def _step_position(self, step: int) -> tuple[int, int]:
        """(epoch, offset) of the first sample of relative step ``step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        n, g = self._num_samples, self._global_batch
        if self._policy is LastBatchPolicy.WRAP:
            flat = self._start_epoch * n + self._start_offset + step * g
            return flat // n, flat % n
        first = self._first_epoch_steps()
        if step < first:
            return self._start_epoch, self._start_offset + step * g
        rest = step - first
        per_epoch = self.steps_per_epoch
        return self._start_epoch + 1 + rest // per_epoch, (rest % per_epoch) * g

    def block_indices(self, step: int) -> np.ndarray:
        """Dataset indices of this shard's block for relative step ``step``.

        Step 0 is the first step after the start (or after ``resume``).

        Args:
            step: batches after the start (or after the checkpoint resumed from), from 0.
        """
        epoch, offset = self._step_position(step)
        pos = offset + self._rank * self._batch_size + np.arange(self._batch_size, dtype=np.int64)
        n = self._num_samples
        if self._policy is LastBatchPolicy.WRAP:
            flat = epoch * n + pos
            epochs = flat // n
            out = np.empty(self._batch_size, dtype=np.int64)
            for e in np.unique(epochs):
                sel = epochs == e
                out[sel] = self._order(int(e))[flat[sel] % n]
            return out
        # drop: pos < n by construction; pad: positions past the end repeat the order.
        return self._order(epoch)[pos % n]

    def __call__(self, worker_id: int, batch_size: int) -> list[np.ndarray]:
        """Return the next block of this fetcher (the ``fetch_fun`` protocol).

        Raises:
            RuntimeError: If the fetcher ids are not bound (see :meth:`init_fun`).
            ValueError: If ``worker_id`` is not bound or ``batch_size`` differs.
        """
        if self._worker_ids is None:
            raise RuntimeError(
                "ShardedSource does not know its fetcher ids: pass init_fun=source.init_fun "
                "to init_data_input_workers (or use source.attach), or worker_ids=..."
            )
        if batch_size != self._batch_size:
            raise ValueError(
                f"input batch_size {batch_size} != ShardedSource batch_size {self._batch_size}"
            )
        try:
            local = self._worker_ids.index(worker_id)
        except ValueError:
            raise ValueError(
                f"worker id {worker_id} is not one of this input's fetchers {self._worker_ids}"
            ) from None
        # Each worker id is served by exactly one thread or process, so its counter has
        # a single writer; the lock only guards the dict itself.
        with self._lock:
            k = self._calls.get(worker_id, 0)
            self._calls[worker_id] = k + 1
        step = local + k * len(self._worker_ids)
        indices = self.block_indices(step)
        return list(self._dataset.load(indices))

    # -- checkpoints -------------------------------------------------------------------

    def checkpoint(self, steps: int) -> InputCheckpoint:
        """The position after the nets consumed ``steps`` steps from this source.

        Args:
            steps: Training steps run since this source started feeding (each step
                consumed one batch on every shard). Take it when no step is running.

        Raises:
            ValueError: If ``steps`` is negative.
        """
        steps = self._blocks_behind(steps)
        epoch, offset = self._step_position(steps)
        return InputCheckpoint(
            num_samples=self._num_samples,
            seed=self._seed,
            shuffle=self._shuffle,
            policy=self._policy.value,
            epoch=int(epoch),
            offset=int(offset),
            step=self._start_step + int(steps),
            global_batch_size=self._global_batch,
        )

    def _blocks_behind(self, steps: int) -> int:
        """Blocks the nets passed after ``steps`` steps: those steps, plus the blocks
        before them whose fetch raised and was skipped (``max_fetch_failures``).  A
        resumed run starts after them, and skips the same records again."""
        coordinator = None if self._input is None else self._input()
        if coordinator is None or steps < 0:
            return steps
        blocks = steps
        for turn in coordinator.skipped_turns():  # ascending; turn t is block t
            if turn >= blocks:
                break
            blocks += 1
        return blocks

    def restore(self, checkpoint: InputCheckpoint) -> None:
        """Start the stream at ``checkpoint`` instead (like ``resume=`` at construction).

        For owners that get the checkpoint after the source was built:
        ``data_workers.torch.Loader.load_state_dict``.  Allowed only before any
        fetcher called this source, since a block already served cannot be
        taken back.

        Args:
            checkpoint: an ``InputCheckpoint`` from ``checkpoint()`` of a source built
                with the same dataset size, seed, shuffle, policy and shard count.

        Raises:
            RuntimeError: a fetcher already called this source.
            ValueError: the checkpoint does not belong to this source.
        """
        with self._lock:
            called = bool(self._calls)
        if called:
            raise RuntimeError("restore() must come before any fetcher called the source; "
                               "build a new ShardedSource(..., resume=checkpoint) instead")
        self._apply_checkpoint(checkpoint)

    def _apply_checkpoint(self, ckpt: InputCheckpoint) -> None:
        mismatches = [
            f"{name}: checkpoint {theirs!r} != source {ours!r}"
            for name, theirs, ours in (
                ("num_samples", ckpt.num_samples, self._num_samples),
                ("seed", ckpt.seed, self._seed),
                ("shuffle", ckpt.shuffle, self._shuffle),
                ("policy", ckpt.policy, self._policy.value),
            )
            if theirs != ours
        ]
        if mismatches:
            raise ValueError("checkpoint does not belong to this source: " + "; ".join(mismatches))
        if not (0 <= ckpt.offset < self._num_samples) or ckpt.epoch < 0:
            raise ValueError(f"checkpoint position out of range: epoch={ckpt.epoch} offset={ckpt.offset}")
        self._start_epoch = ckpt.epoch
        self._start_offset = ckpt.offset
        self._start_step = ckpt.step
        if ckpt.global_batch_size != self._global_batch:
            logger.info(
                "resuming with global batch %d (checkpoint taken with %d); the rest of "
                "epoch %d is cut into steps of the new size",
                self._global_batch,
                ckpt.global_batch_size,
                ckpt.epoch,
            )

    def __repr__(self) -> str:
        return (
            f"ShardedSource(num_samples={self._num_samples}, batch_size={self._batch_size}, "
            f"rank={self._rank}, world_size={self._world_size}, seed={self._seed}, "
            f"policy={self._policy.value!r}, start=(epoch {self._start_epoch}, "
            f"offset {self._start_offset}))"
        )


class _ChainedInit:
    """Picklable init_fun: bind the source's fetcher ids, then run the user's hook."""

    def __init__(self, source: ShardedSource, user_init: Callable[[Any, Any], None]) -> None:
        self._source = source
        self._user_init = user_init

    def __call__(self, input_coordinator: Any, global_coordinator: Any) -> None:
        self._source.init_fun(input_coordinator, global_coordinator)
        self._user_init(input_coordinator, global_coordinator)

