"""The command line: ``python -m data_workers doctor | profile``.

``doctor`` (``_cli/doctor.py``) checks the machine and runs a short self-test
through thread and process workers; ``profile`` (``_cli/profile.py``) measures
a user's fetcher alone and under both worker types and recommends one.  Both
feed the fetchers through ``data_workers.torch.Loader``, which imports no
Caffe2: the commands work where Caffe2 is absent, and say so.
"""

from __future__ import annotations

import argparse
import logging
from typing import Optional
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m data_workers",
        description="Check this machine, or profile a fetcher and get a worker setting.")
    commands = parser.add_subparsers(dest="command", required=True)
    doctor = commands.add_parser(
        "doctor", help="versions, cores, shared memory, and a 2-second self-test")
    doctor.add_argument("--seconds", type=float, default=1.0,
                        help="self-test seconds per worker type (default: 1)")
    profile = commands.add_parser(
        "profile", help="time FETCHER alone, with threads and with processes; recommend one")
    profile.add_argument("target", metavar="FILE_OR_MODULE:FUNC",
                         help="e.g. train.py:fetch or mypkg.data:fetch; called as "
                              "FUNC(worker_id, batch_size)")
    profile.add_argument("--batch-size", type=int, default=32, help="default: 32")
    profile.add_argument("--seconds", type=float, default=2.0,
                         help="seconds per measurement (default: 2)")
    profile.add_argument("--max-workers", type=int, default=None,
                         help="largest worker count tried (default: the usable cores)")
    profile.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    # The library logs; a command prints.  Only warnings reach the terminal.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    if args.command == "doctor":
        from .doctor import run_doctor

        return run_doctor(args.seconds)
    from .profile import run_profile

    if args.batch_size < 1 or (args.max_workers is not None and args.max_workers < 1):
        parser.error("--batch-size and --max-workers must be at least 1")
    return run_profile(args.target, args.batch_size, args.seconds, args.max_workers, args.json)
