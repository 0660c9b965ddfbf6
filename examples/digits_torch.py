"""The digits demo's fetchers, unchanged, feeding the same small CNN trained in PyTorch.

What moving a model off Caffe2 looks like when its input code stays: `digits_data`'s
``DigitsFetcher`` (PNG files, Pillow decoding, random shifts, chunks of varying size)
is the very ``fetch_fun`` that `digits_demo.py` hands to ``init_data_input_workers``;
here ``data_workers.torch.Loader`` feeds it to a PyTorch training loop instead.

    Caffe2 (digits_train.py)                     PyTorch (this file)
    init_data_input_workers(net, ["data",        Loader(fetcher, batch_size, workers,
        "label"], fetcher, batch_size, ...)             names=["data", "label"], ...)
    coordinator.start() / stop()                 with Loader(...) as loader:
    workspace.RunNet(train_net)                  for data, label in loader: ... step()
    brew.conv / fc / SoftmaxWithLoss             nn.Conv2d / nn.Linear / cross_entropy

The net is `digits_model.add_forward_pass` layer for layer (conv-relu-conv-relu-maxpool-
fc-relu-fc), trained with the same SGD settings; one model takes the two Caffe2
devices' batches at once (64 images).

Run it as a file (``python examples/digits_torch.py``); exit status 0 when the
held-out accuracy reaches ``--min-accuracy``, else 1.
"""

# Only the standard library at module level, and torch and the model are imported inside
# main(): --help and argument errors answer at once.  (Process workers never import
# this script: they import `digits_data` to unpickle DigitsFetcher, and never torch.)
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / ".cache"
FAST_ITERATIONS = 40
FAST_MIN_ACCURACY = 0.5


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--worker-type", choices=("thread", "process"), default="process",
                        help="run fetchers in threads or in worker processes")
    parser.add_argument("--workers", type=int, default=2, help="training fetch workers")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="images per step (the Caffe2 demo: 32 on each of 2 devices)")
    parser.add_argument("--iterations", type=int, default=None,
                        help=f"training steps (default: 400, or {FAST_ITERATIONS} with --fast)")
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--fast", action="store_true",
                        help="a tiny run that checks the wiring, not convergence (for tests)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help="where the PNG cache goes")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="PNG cache folder (default: OUT_DIR/digits_png)")
    parser.add_argument("--min-accuracy", type=float, default=None,
                        help="exit 1 below this held-out accuracy (default: 0.95, or "
                             f"{FAST_MIN_ACCURACY} with --fast)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("workers", "batch_size", "iterations"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.iterations is None:
        args.iterations = FAST_ITERATIONS if args.fast else 400
    if args.min_accuracy is None:
        args.min_accuracy = FAST_MIN_ACCURACY if args.fast else 0.95
    return args


def build_model() -> Any:
    """`digits_model.add_forward_pass` in PyTorch: same layers, same sizes."""
    from torch import nn

    from digits_data import IMAGE_SIZE, NUM_CLASSES

    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear((IMAGE_SIZE // 2) ** 2 * 32, 64), nn.ReLU(),
        nn.Linear(64, NUM_CLASSES),
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Train, evaluate on the held-out split, print the results; returns the exit status."""
    args = parse_args(argv)
    import torch
    import torch.nn.functional as F

    from data_workers.torch import Loader
    from digits_data import DigitsFetcher, prepare_digits_png

    torch.manual_seed(args.seed)
    # A model this small gains nothing from intra-op threads, and their spinning
    # takes the cores the fetchers need (on 2 cores: 10x slower steps).
    torch.set_num_threads(1)
    split = prepare_digits_png(args.data_dir or args.out_dir / "digits_png")
    model = build_model()
    # The Caffe2 demo's optimizer: weight decay 1e-4, Nesterov momentum 0.9, and a
    # tenfold cut of the learning rate for the last quarter of the run.
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=0.9,
                                nesterov=True, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=max(1, int(args.iterations * 0.75)), gamma=0.1)

    train = Loader(DigitsFetcher(split.train, augment=True, seed=args.seed), args.batch_size,
                   args.workers, worker_type=args.worker_type, seed=args.seed,
                   names=["data", "label"], max_buffered_batches=16, name="train")
    # One batch of exactly the held-out split's size: one worker walks its own
    # permutation of the split, so the first len(val) rows are every image once.
    val = Loader(DigitsFetcher(split.val, augment=False, seed=args.seed + 1000),
                 len(split.val), 1, worker_type=args.worker_type, names=["data", "label"],
                 max_buffered_batches=2, name="val")
    with train, val:  # close() both at the end, raising an input's failure
        started = time.monotonic()
        model.train()
        for step, (data, label) in zip(range(1, args.iterations + 1), train):
            loss = F.cross_entropy(model(data), label.long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % max(1, args.iterations // 5) == 0:
                print(f"step {step:4d}  loss {loss.item():.3f}")
        train_seconds = time.monotonic() - started
        model.eval()
        with torch.no_grad():
            data, label = next(val)
            accuracy = (model(data).argmax(dim=1) == label.long()).float().mean().item()
        stats = (train.stats(), val.stats())

    images = args.iterations * args.batch_size
    print(f"trained {args.iterations} steps of {args.batch_size} images in {train_seconds:.1f} s "
          f"({images / train_seconds:.0f} images/s)")
    for s in stats:
        print(f"  input {s.input_source:>5}: {s.workers} {s.worker_type} workers, "
              f"{s.rows_fetched} rows in {s.chunks_fetched} chunks -> "
              f"{s.batches_enqueued} batches")
    print(f"held-out accuracy: {accuracy:.4f} ({len(split.val)} held-out images)")
    if accuracy < args.min_accuracy:
        print(f"FAILED: held-out accuracy {accuracy:.4f} is below --min-accuracy "
              f"{args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the loaders were closed on the way out (with ...:)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
