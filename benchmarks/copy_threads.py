"""Why large pieces are copied by two threads: copy bandwidth with numpy alone.

Three ways to copy one 32x3x224x224 float32 batch (19.3 MB), in the same process:

- ``reference``: one source into one destination, again and again; what the
  large-batch workload calls "memcpy" (a 38.6 MB working set, partly in L3);
- ``rotating, 1 thread``: two sources into six rotating destinations, like the
  pipeline (four queue slots, the scratch blob, the net's blob);
- ``rotating, 2 threads``: the same, each batch cut in half along the batch
  column and the halves copied by two threads, like ``Rebatcher`` does for
  pieces of at least ``SPLIT_COPY_MIN_BYTES``.

Run ``.venv/bin/python -m benchmarks.copy_threads [--rounds N]``; prints GB/s per round.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional

import numpy as np

SHAPE = (32, 3, 224, 224)
DESTINATIONS = 6
COPIES = 200


def _rate(copy: Callable[[int], None], nbytes: int) -> float:
    started = time.perf_counter()
    for i in range(COPIES):
        copy(i)
    return COPIES * nbytes / (time.perf_counter() - started) / 1e9


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    rng = np.random.RandomState(0)
    sources = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(2)]
    dests = [np.zeros_like(sources[0]) for _ in range(DESTINATIONS)]  # touched: no page faults
    nbytes = sources[0].nbytes
    half = SHAPE[0] // 2
    helper = ThreadPoolExecutor(max_workers=1)

    def reference(i: int) -> None:
        np.copyto(dests[0], sources[0])

    def rotating(i: int) -> None:
        dests[i % DESTINATIONS][...] = sources[i % 2]

    def rotating_split(i: int) -> None:
        dest, src = dests[i % DESTINATIONS], sources[i % 2]
        job = helper.submit(dest.__setitem__, slice(half, None), src[half:])
        dest[:half] = src[:half]
        job.result()

    try:
        for r in range(args.rounds):
            print("round %d: reference %.1f GB/s, rotating 1 thread %.1f GB/s, "
                  "rotating 2 threads %.1f GB/s"
                  % (r + 1, _rate(reference, nbytes), _rate(rotating, nbytes),
                     _rate(rotating_split, nbytes)))
    finally:
        helper.shutdown()


if __name__ == "__main__":
    main()
