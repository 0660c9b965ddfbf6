"""A ready-made external logger: one progress line per input.

Pass it as ``external_loggers=[ProgressLogger()]`` to ``init_data_input_workers``
or ``torch.Loader``.  The input's flusher thread calls ``log`` every
``log_interval_secs`` with that interval's metrics; the line shows rows so
far, rows per second and ``input_bound`` (the share of the interval in which
the training loop waited for a batch).  With tqdm installed it is a tqdm bar,
redrawn in place; otherwise one INFO log line per interval, on this module's
logger.  Nothing is printed by the library itself.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import IO, Any

__all__ = ["ProgressLogger"]

logger = logging.getLogger(__name__)


class ProgressLogger:
    """Draws one progress line from the metrics an input hands its external loggers.

    Usage::

        progress = data_workers.ProgressLogger(desc="train")
        coordinator = data_workers.init_data_input_workers(
            net, ["data", "label"], fetch, 32, external_loggers=[progress],
            log_interval_secs=5)

    Args:
        desc: the line's label.
        total_rows: rows expected in all, for tqdm's percentage and ETA (optional).
        use_tqdm: True or False to force the choice; None: tqdm if installed.
        file: where tqdm draws (default: stderr).
    """

    def __init__(self, desc: str = "input", total_rows: int | None = None,
                 use_tqdm: bool | None = None, file: IO[str] | None = None) -> None:
        if use_tqdm is None:
            use_tqdm = importlib.util.find_spec("tqdm") is not None
        self.desc = desc
        self.rows = 0
        self._bar: Any = None
        if use_tqdm:
            from tqdm import tqdm

            self._bar = tqdm(total=total_rows, desc=desc, unit="rows", file=file,
                             dynamic_ncols=True)

    def log(self, metrics: dict[str, Any]) -> None:
        """One interval's metrics (``inputs_per_sec``, ``time_elapsed``, ``input_bound``)."""
        rows = int(round(metrics.get("inputs_per_sec", 0) * metrics.get("time_elapsed", 0)))
        bound = float(metrics.get("input_bound", 0.0))
        self.rows += rows
        if self._bar is not None:
            self._bar.set_postfix_str("input-bound %.0f%%" % (100 * bound), refresh=False)
            self._bar.update(rows)
        else:
            logger.info("%s: %d rows, %d rows/s, input-bound %.0f%%", self.desc, self.rows,
                        metrics.get("inputs_per_sec", 0), 100 * bound)

    def close(self) -> None:
        """Finish the tqdm bar (a no-op for the log line)."""
        if self._bar is not None:
            self._bar.close()
