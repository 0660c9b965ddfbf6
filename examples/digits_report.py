"""What the demo records while it trains, and the chart it draws from it.

`MetricsRecorder` collects what the "external loggers" handed to `data_workers` receive:
the library calls ``.log(metrics)`` from its own threads, so each dict is copied under a
lock, with a timestamp and the name of the input it came from. `TrainingHistory` is
filled by the training loop itself, one row per iteration. `write_chart` draws both with
matplotlib's Agg canvas directly: no pyplot, so no global backend state and no GUI.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple


class MetricsRecorder:
    """Keeps a timestamped copy of every metrics dict the library's inputs log.

    Each input gets its own external logger from `logger_for`, so that the records say
    which input (e.g. "train cpu_0/") they came from. Thread-safe: the library calls
    loggers from its own threads.
    """

    def __init__(self) -> None:
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._records: List[Tuple[float, str, Dict[str, Any]]] = []

    def elapsed(self) -> float:
        """Seconds since the recorder was made: the time axis of every record."""
        return time.monotonic() - self._start

    def logger_for(self, tag: str) -> "TaggedLogger":
        """An external logger (an object with ``.log(metrics)``) for one input."""
        return TaggedLogger(self, tag)

    def add(self, tag: str, metrics: Mapping[str, Any]) -> None:
        record = (self.elapsed(), tag, dict(metrics))
        with self._lock:
            self._records.append(record)

    def tags(self) -> List[str]:
        with self._lock:
            return sorted({tag for _, tag, _ in self._records})

    def series(self, tag: str, key: str) -> Tuple[List[float], List[float]]:
        """Times (seconds since the recorder was made) and values of one metric."""
        with self._lock:
            records = list(self._records)
        times, values = [], []
        for t, record_tag, metrics in records:
            value = metrics.get(key)
            if record_tag == tag and isinstance(value, (int, float)):
                times.append(t)
                values.append(float(value))
        return times, values


class TaggedLogger:
    """The external logger handed to one input: forwards to the recorder with a tag."""

    def __init__(self, recorder: MetricsRecorder, tag: str) -> None:
        self._recorder = recorder
        self.tag = tag

    def log(self, metrics: Mapping[str, Any]) -> None:
        self._recorder.add(self.tag, metrics)


@dataclasses.dataclass
class TrainingHistory:
    """Per-iteration results of the training loop, and of the periodic validation."""

    times: List[float] = dataclasses.field(default_factory=list)
    losses: List[float] = dataclasses.field(default_factory=list)
    accuracies: List[float] = dataclasses.field(default_factory=list)
    inputs_per_sec: List[float] = dataclasses.field(default_factory=list)
    val_times: List[float] = dataclasses.field(default_factory=list)
    val_accuracies: List[float] = dataclasses.field(default_factory=list)

    def add(self, t: float, loss: float, accuracy: float, inputs_per_sec: float) -> None:
        self.times.append(t)
        self.losses.append(loss)
        self.accuracies.append(accuracy)
        self.inputs_per_sec.append(inputs_per_sec)


def write_chart(
    path: Path,
    history: TrainingHistory,
    recorder: MetricsRecorder,
    library_throughput_key: str = "inputs_per_sec",
    library_tag_prefix: str = "train",
) -> None:
    """Save a PNG with three panels over time: loss, accuracy, and throughput.

    ``history`` times must come from ``recorder.elapsed()``, so both share an origin.
    """
    # Imported here, not at the top: only the chart needs matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 8), dpi=100)
    FigureCanvasAgg(figure)
    loss_ax, acc_ax, speed_ax = figure.subplots(3, 1, sharex=True)
    loss_ax.set_title("Caffe2 CNN on digits, fed by data_workers")

    loss_ax.plot(history.times, history.losses, color="tab:blue", lw=1)
    loss_ax.set_ylabel("training loss")
    loss_ax.set_yscale("log")

    acc_ax.plot(history.times, history.accuracies, color="tab:blue", lw=0.5, alpha=0.5,
                label="training batch")
    acc_ax.plot(history.val_times, history.val_accuracies, "o-", color="tab:green",
                label="validation")
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(0.0, 1.02)
    acc_ax.legend(loc="lower right")

    speed_ax.plot(history.times, history.inputs_per_sec, color="tab:orange", lw=1,
                  label="consumed by the training nets")
    for tag in recorder.tags():
        if tag.startswith(library_tag_prefix):
            times, values = recorder.series(tag, library_throughput_key)
            speed_ax.plot(times, values, ".--", lw=1, label=f"data_workers {library_throughput_key}, {tag}")
    speed_ax.set_ylabel("images / s")
    speed_ax.set_xlabel("seconds since the inputs were built")
    speed_ax.legend(loc="lower right", fontsize="small")

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
