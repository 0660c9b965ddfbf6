"""The least CPU one lent batch can cost a pure-Python trainer, with warm and cold caches.

``peers`` measures the trainer's CPU per big batch with process workers (the
whole process, every thread).  This measures the floor under that figure: the
calls that any pure-Python enqueuer and the net's dequeue must make for one
whole batch lent from shared memory, with none of the library's own code::

    poll, recv_into        the worker's "batch written" message on its socket
    pickle.loads           the batch's layout
    np.ndarray(buffer=)    a view of the ring, per blob
    torch.from_numpy +     a tensor over it, handed to the scratch blob, per blob
      Blob feed
    enqueue net run        SafeEnqueueBlobs into the BlobsQueue
    dequeue net run        DequeueBlobs, as the user's net does

A round runs them once, in one thread, between two reads of that thread's CPU
clock.  Modes:

    warm   rounds back to back: every cache holds the code and data they touch.
    cold   one 19.3 MB copy (a big batch, what a worker writes per batch) before
           each round, outside the clock: it evicts the caches, as a worker
           sharing the core does.  With more workers than spare cores, every
           wake-up of the trainer's threads starts this way.

Run::

    python -m benchmarks.trainer_floor                     # 5 repeats x 300 rounds
    python -m benchmarks.trainer_floor --repeats 1 --rounds 20 --json out.json

Prints, per mode, microseconds of CPU per round: median (min-max) over repeats,
each repeat the mean of its rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import select
import socket
import statistics
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

if __package__ in (None, ""):  # `python benchmarks/trainer_floor.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.peers import BIG_SHAPE  # noqa: E402

#: The label blob of a big batch: one int32 per row.
LABEL_SHAPE = (BIG_SHAPE[0],)
MODES = ("warm", "cold")


def _bytes(shape: Sequence[int], itemsize: int) -> int:
    return int(np.prod(shape)) * itemsize


class _LentBatchRound:
    """The Caffe2 and torch objects one round uses, made once."""

    def __init__(self) -> None:
        from caffe2.python import core, workspace

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 1.10 imports pkg_resources
            import torch

        self._torch = torch
        self._handle_of = torch._C._tensor_impl_raw_handle
        data_bytes = _bytes(BIG_SHAPE, 4)
        self._ring = np.zeros(data_bytes + _bytes(LABEL_SHAPE, 4), np.uint8)
        self._layouts = [("<f4", BIG_SHAPE, 0), ("<i4", LABEL_SHAPE, data_bytes)]
        self._message = pickle.dumps(("chunk", len(self._ring), self._layouts, {}, 0.0, 1),
                                     protocol=pickle.HIGHEST_PROTOCOL)
        self._ours, self._theirs = socket.socketpair()
        self._poller = select.poll()
        self._poller.register(self._ours.fileno(), select.POLLIN)
        self._buf = bytearray(1 << 16)

        ws = workspace.C.Workspace.current
        queue, scratch, outputs = "floor_queue", ["floor_data_s", "floor_label_s"], ["data", "label"]
        workspace.RunOperatorOnce(core.CreateOperator(
            "CreateBlobsQueue", [], [queue], num_blobs=2, capacity=4))
        for name in scratch:
            workspace.FeedBlob(name, np.zeros((0,), np.float32))
        workspace.FeedBlob("floor_status", np.zeros((1,), np.bool_))
        enqueue = core.Net("floor_enqueue")
        enqueue.SafeEnqueueBlobs([queue] + scratch, scratch + ["floor_status"])
        dequeue = core.Net("floor_dequeue")
        dequeue.DequeueBlobs([queue], outputs, timeout_secs=1.0)
        self._enqueue = ws._create_net(enqueue.Proto().SerializeToString(), True)
        self._dequeue = ws._create_net(dequeue.Proto().SerializeToString(), True)
        self._blobs = [ws.create_blob(name) for name in scratch]
        #: Thread CPU seconds the rounds took, since the caller last zeroed it.
        self.cpu = 0.0

    def close(self) -> None:
        self._ours.close()
        self._theirs.close()

    def __call__(self) -> None:
        self._theirs.send(self._message)  # the worker's side: outside what a trainer pays
        t0 = time.thread_time()
        self._poller.poll(0)
        n = self._ours.recv_into(self._buf)
        with memoryview(self._buf) as whole:
            _, _, layouts, _, _, _ = pickle.loads(whole[:n])
        for blob, (dtype, shape, offset) in zip(self._blobs, layouts):
            view = np.ndarray(shape, np.dtype(dtype), self._ring, offset)
            tensor = self._torch.from_numpy(view)
            blob._wrap_tensor_impl(self._handle_of(tensor))
            del view, tensor
        self._enqueue.run()
        self._dequeue.run()
        self.cpu += time.thread_time() - t0


def _evictor() -> Callable[[], None]:
    """One big batch's copy: what a worker's write does to the caches it runs on."""
    source = np.ones(_bytes(BIG_SHAPE, 4) // 8, np.float64)
    dest = np.empty_like(source)
    return lambda: np.copyto(dest, source)


def measure(rounds: int, repeats: int) -> Dict[str, List[float]]:
    """Microseconds of CPU per round, one figure per repeat, for each mode."""
    from caffe2.python import workspace

    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    one_round = _LentBatchRound()
    evict = _evictor()
    before: Dict[str, Callable[[], None]] = {"warm": lambda: None, "cold": evict}
    out: Dict[str, List[float]] = {mode: [] for mode in MODES}
    try:
        for _ in range(3):  # first calls: lazy initialisation, not the steady state
            one_round()
        for _ in range(repeats):
            for mode in MODES:  # interleaved, so drift hits both modes alike
                one_round.cpu = 0.0
                for _ in range(rounds):
                    before[mode]()
                    one_round()
                out[mode].append(1e6 * one_round.cpu / rounds)
    finally:
        one_round.close()
    return out


def summary(figures: Sequence[float]) -> str:
    return "%.0f (%.0f-%.0f)" % (statistics.median(figures), min(figures), max(figures))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=300, help="rounds per repeat and mode")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        p.error("--rounds and --repeats must be at least 1")
    figures = measure(args.rounds, args.repeats)
    print("CPU per lent big batch, trainer floor (us per round, median (min-max) over %d "
          "repeats of %d rounds):" % (args.repeats, args.rounds))
    for mode in MODES:
        print("  %-5s %s" % (mode, summary(figures[mode])))
    print("  cold/warm: %.1fx" % (statistics.median(figures["cold"])
                                  / statistics.median(figures["warm"])))
    if args.json:
        doc: Dict[str, Any] = {"rounds": args.rounds, "repeats": args.repeats,
                               "us_per_round": figures, "cpus": os.cpu_count()}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
