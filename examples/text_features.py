"""A fetcher whose cost is pure Python: it holds the GIL for its whole run.

It makes short synthetic documents from four topic vocabularies and turns each into a
hashed bag-of-words vector, word by word, in Python, the kind of feature extraction
that does not release the GIL. Threads cannot run such fetchers in parallel with each
other (or with the training loop); processes can.

It lives in its own small module, apart from the script that uses it: a worker process
imports it by name to unpickle the fetcher (a class of the script itself would be sent
by value instead, which works too).
"""

from __future__ import annotations

import random
import zlib
from typing import Dict, List

import numpy as np

TOPICS = (
    "ball goal match team score coach league season player pitch",
    "atom cell energy field force gene lab mass orbit quantum",
    "bank bond cash debt fund loan market price stock trade",
    "album band chord drum guitar lyric melody song stage tour",
)


class HashedBagOfWords:
    """``fetch_fun`` returning ``[features (N, dim) float32, topic (N,) int32]``.

    Args:
        dim: length of the hashed feature vector.
        words_per_doc: words in each synthetic document; the cost per row grows with it.
        seed: base seed; each worker id gets its own generator.
    """

    def __init__(self, dim: int = 128, words_per_doc: int = 300, seed: int = 0) -> None:
        self.dim = dim
        self.words_per_doc = words_per_doc
        self.seed = seed
        self._vocab = [topic.split() for topic in TOPICS]
        self._common = "the of and to in is it that for on".split()
        # One generator per worker id; each id is served by one thread or process.
        self._rngs: Dict[int, random.Random] = {}

    def __call__(self, worker_id: int, batch_size: int) -> List[np.ndarray]:
        rng = self._rngs.get(worker_id)
        if rng is None:
            rng = self._rngs.setdefault(worker_id, random.Random(self.seed * 1000 + worker_id))
        rows = batch_size
        features = np.zeros((rows, self.dim), dtype=np.float32)
        topics = np.empty(rows, dtype=np.int32)
        for r in range(rows):
            topic = rng.randrange(len(self._vocab))
            text = " ".join(
                rng.choice(self._vocab[topic]) if rng.random() < 0.3 else rng.choice(self._common)
                for _ in range(self.words_per_doc)
            )
            counts = [0] * self.dim
            for word in text.lower().split():
                # crc32, not hash(): str hashes are salted per process, and every worker
                # process must map a word to the same column.
                counts[zlib.crc32(word.encode()) % self.dim] += 1
            norm = sum(c * c for c in counts) ** 0.5
            features[r] = [c / norm for c in counts]
            topics[r] = topic
        return [features, topics]
