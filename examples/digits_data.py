"""The digits data set as PNG files, and a picklable fetcher that reads them back.

Why PNG files instead of the in-memory array scikit-learn hands us: the demo is meant to
look like a real input pipeline, whose cost is opening files, decoding images and
augmenting them in Python, which is the work `data_workers` exists to take off the
training loop.

This module deliberately imports only numpy and Pillow (scikit-learn only inside
`prepare_digits_png`, and never Caffe2): with ``worker_type="process"`` every worker
process unpickles a `DigitsFetcher` by reference, which imports this module there (and
nothing of the training script), and that should stay cheap.

Data flow::

    load_digits() --prepare_digits_png--> <cache>/{train,val}/<label>/<index>.png
                                           + manifest.csv (written last)
    manifest.csv --read--> DigitsSplit(train, val) --> DigitsFetcher(worker_id, batch_size)
                                                          -> [data (N,1,8,8) float32,
                                                              label (N,) int32]
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SIZE = 8
NUM_CLASSES = 10
MANIFEST_NAME = "manifest.csv"
# Mean and standard deviation of the whole data set after scaling pixels to [0, 1];
# fixed constants so that training and validation normalise identically.
PIXEL_MEAN = 0.3053
PIXEL_STD = 0.3760
# The held-out split never changes between runs, so cached files stay valid.
VAL_FRACTION = 0.2
SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image on disk and its class."""

    path: str
    label: int


@dataclasses.dataclass(frozen=True)
class DigitsSplit:
    """The train and held-out (validation) samples; disjoint."""

    train: Tuple[Sample, ...]
    val: Tuple[Sample, ...]


def prepare_digits_png(cache_dir: Path) -> DigitsSplit:
    """Write the 1,797 digits as PNG files under ``cache_dir`` once, and return the split.

    A second call reuses the files. The manifest is written last and atomically (temporary
    file + rename), so an interrupted first run leaves no manifest and is simply redone
    instead of being trusted half-written.

    Args:
        cache_dir: folder for the PNG files and ``manifest.csv``; created if missing.

    Returns:
        The train/validation split, stratified by class.
    """
    cache_dir = Path(cache_dir)
    manifest = cache_dir / MANIFEST_NAME
    if manifest.exists():
        split = _read_manifest(manifest)
        if all(Path(s.path).exists() for s in split.train + split.val):
            return split
        log.warning("%s lists missing files; writing the PNG files again", manifest)

    # Imported here: only the parent process ever needs scikit-learn.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    indices = np.arange(len(digits.target))
    train_idx, val_idx = train_test_split(
        indices, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    rows: List[Tuple[str, int, str]] = []
    for split_name, split_idx in (("train", train_idx), ("val", val_idx)):
        for i in sorted(split_idx.tolist()):
            label = int(digits.target[i])
            path = cache_dir / split_name / str(label) / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            # Values are 0..16; stretch them to the full 8-bit range of a grey PNG.
            pixels = np.rint(digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            # A 2-D uint8 array is a grey ("L") image; Pillow 11.3 deprecated passing mode=.
            Image.fromarray(pixels).save(path)
            rows.append((str(path.resolve()), label, split_name))

    tmp = manifest.with_name(MANIFEST_NAME + f".tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label", "split"))
        writer.writerows(rows)
    os.replace(tmp, manifest)
    log.info("wrote %d PNG files under %s", len(rows), cache_dir)
    return _read_manifest(manifest)


def _read_manifest(manifest: Path) -> DigitsSplit:
    parts: Dict[str, List[Sample]] = {"train": [], "val": []}
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            parts[row["split"]].append(Sample(row["path"], int(row["label"])))
    return DigitsSplit(train=tuple(parts["train"]), val=tuple(parts["val"]))


def load_png(path: str) -> np.ndarray:
    """Decode one grey PNG into a ``(8, 8)`` uint8 array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.uint8)


def random_shift(image: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Move the image by up to ``max_shift`` pixels on each axis, filling with black.

    Digits are centred in their 8x8 box, so a one-pixel shift is a realistic variation
    that the net should be invariant to.
    """
    if max_shift <= 0:
        return image
    dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
    padded = np.pad(image, max_shift)
    top, left = max_shift - dy, max_shift - dx
    return padded[top : top + image.shape[0], left : left + image.shape[1]]


@dataclasses.dataclass
class _WorkerState:
    """Where one worker is in its walk over the samples."""

    rng: np.random.Generator
    order: np.ndarray  # this epoch's permutation of sample indices
    cursor: int = 0  # next position in ``order``

    def take(self, rows: int) -> np.ndarray:
        """The next ``rows`` sample indices, reshuffling at each epoch's end."""
        picked = np.empty(rows, dtype=np.int64)
        for r in range(rows):
            if self.cursor == len(self.order):
                self.order, self.cursor = self.rng.permutation(len(self.order)), 0
            picked[r] = self.order[self.cursor]
            self.cursor += 1
        return picked


class DigitsFetcher:
    """A ``fetch_fun`` for `data_workers`: reads PNG files, decodes, augments, normalises.

    Each call returns a chunk of a random size between 1 and ``2 * batch_size`` rows, as
    real readers do (files of different lengths, filtered records), so the library's
    re-batching is exercised. Each worker walks the samples in its own shuffled order,
    epoch after epoch.

    It holds only plain data, so it pickles, which ``worker_type="process"`` requires;
    process workers get its class by reference, importing this module. With thread
    workers one instance is shared by all of an input's threads, hence the per-worker-id
    state below.

    Usage::

        fetcher = DigitsFetcher(split.train, augment=True, seed=0)
        data, label = fetcher(worker_id=0, batch_size=32)
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        augment: bool,
        max_shift: int = 1,
        seed: int = 0,
    ) -> None:
        if not samples:
            raise ValueError("DigitsFetcher needs at least one sample; got an empty split")
        self._paths = tuple(s.path for s in samples)
        self._labels = np.array([s.label for s in samples], dtype=np.int32)
        self._augment = augment
        self._max_shift = max_shift
        self._seed = seed
        # Each worker id is served by exactly one thread (or process), so an entry is
        # only ever touched by its own worker; dict.setdefault keeps concurrent first
        # calls of different ids safe.
        self._state: Dict[int, _WorkerState] = {}

    def __getstate__(self) -> dict:
        # Workers start from a fresh state: never ship another worker's cursor.
        state = self.__dict__.copy()
        state["_state"] = {}
        return state

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        state = self._state.get(worker_id)
        if state is None:
            rng = np.random.default_rng([self._seed, worker_id])
            state = self._state.setdefault(
                worker_id, _WorkerState(rng, rng.permutation(len(self._paths))))
        rng = state.rng
        rows = int(rng.integers(1, 2 * batch_size + 1))
        picked = state.take(rows)

        data = np.empty((rows, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        for r, index in enumerate(picked):
            image = load_png(self._paths[index])
            if self._augment:
                image = random_shift(image, rng, self._max_shift)
            data[r, 0] = image
        data *= 1.0 / 255.0
        data -= PIXEL_MEAN
        data /= PIXEL_STD
        return [data, self._labels[picked]]
