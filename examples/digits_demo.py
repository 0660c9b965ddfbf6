"""`make demo`: train a small Caffe2 CNN on scikit-learn's digits, fed by data_workers.

What it shows, end to end on CPU:

* fetchers that do what real input pipelines do: read PNG files, decode them with Pillow,
  augment (random one-pixel shifts), normalise, and return chunks of varying size;
* ``worker_type="process"`` (the default here), so that Python work runs beside the
  training loop instead of competing with it for the GIL;
* `data_parallel_model` over two CPU devices, each fed by its own
  `init_data_input_workers` call made in that device's scope;
* a second input source, "val", with the same blob names, feeding a validation net that
  shares the training parameters;
* the library's metrics going to an external logger, a tqdm bar, and a chart.

Run it as a file (``python examples/digits_demo.py``): process workers unpickle the
fetcher by importing `digits_data`, which lives next to this script, and a worker
finds it because it gets the trainer's ``sys.path``, where the script's folder is.

Exit status: 0 when the held-out accuracy reaches ``--min-accuracy``, 1 below it.
"""

# Only the standard library at module level, and the training code is imported inside
# main(): --help and argument errors answer at once.  (Process workers never import
# this script: they import `digits_data` to unpickle the fetcher.)
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

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
    parser.add_argument("--workers", type=int, default=2,
                        help="training fetch workers per device")
    parser.add_argument("--val-workers", type=int, default=1,
                        help="validation fetch workers per device")
    parser.add_argument("--devices", type=int, default=2, help="number of CPU devices")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size per device")
    parser.add_argument("--iterations", type=int, default=None,
                        help=f"training iterations (default: 400, or {FAST_ITERATIONS} "
                             "with --fast)")
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--fast", action="store_true",
                        help="a tiny run that checks the wiring, not convergence (for tests)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help="where the PNG cache and the chart go")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="PNG cache folder (default: OUT_DIR/digits_png)")
    parser.add_argument("--chart", type=Path, default=None,
                        help="chart path (default: OUT_DIR/digits_demo.png)")
    parser.add_argument("--min-accuracy", type=float, default=None,
                        help="exit 1 below this held-out accuracy (default: 0.95, or "
                             f"{FAST_MIN_ACCURACY} with --fast)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    for name in ("workers", "val_workers", "devices", "batch_size", "iterations"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.iterations is None:
        args.iterations = FAST_ITERATIONS if args.fast else 400
    if args.min_accuracy is None:
        args.min_accuracy = FAST_MIN_ACCURACY if args.fast else 0.95
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo and print its results; returns the exit status."""
    args = parse_args(argv)
    from digits_train import DemoConfig, run  # see the note at the imports

    config = DemoConfig(
        worker_type=args.worker_type,
        workers=args.workers,
        val_workers=args.val_workers,
        devices=args.devices,
        batch_size=args.batch_size,
        iterations=args.iterations,
        learning_rate=args.learning_rate,
        data_dir=args.data_dir or args.out_dir / "digits_png",
        chart=args.chart or args.out_dir / "digits_demo.png",
        seed=args.seed,
        progress=not args.no_progress,
    )
    result = run(config)

    batch = config.batch_size * config.devices
    print(f"trained {config.iterations} iterations of {batch} images on {config.devices} CPU "
          f"devices in {result.train_seconds:.1f} s ({result.images_per_sec:.0f} images/s)")
    for s in result.stats:
        print(f"  input {s.input_source:>5} {s.namescope or '-':6}: {s.workers} {s.worker_type} "
              f"workers, {s.rows_fetched} rows in {s.chunks_fetched} chunks -> "
              f"{s.batches_enqueued} batches, {s.inputs_per_sec:.0f} rows/s")
    print(f"held-out accuracy: {result.accuracy:.4f} ({result.validation_rows} rows drawn "
          f"from {result.held_out_images} held-out images)")
    print(f"chart: {config.chart}")
    print(f"total time: {result.total_seconds:.1f} s")
    if result.accuracy < args.min_accuracy:
        print(f"FAILED: held-out accuracy {result.accuracy:.4f} is below --min-accuracy "
              f"{args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # The level is on the handler: data_parallel_model sets its own logger to INFO when
    # imported, and its model-building log is noise here.
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    logging.basicConfig(handlers=[handler], format="%(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the workers were stopped on the way out (finally: stop())
        print("interrupted", file=sys.stderr)
        sys.exit(130)
