"""The digits demo's training run: inputs, nets, the loop, the evaluation, the chart.

`digits_demo.py` is the command line around `run`; it imports this module only inside
``main()``, so that its command line answers before Caffe2's model code, tqdm and
matplotlib are imported.

Inputs (one `init_data_input_workers` call per source and device, made inside the
scope that `data_parallel_model` opens for that device)::

    "train": DigitsFetcher(train split, shifts)  --> cpu_0/data, cpu_0/label   (train net)
                                                 --> cpu_1/data, cpu_1/label
    "val":   DigitsFetcher(held-out split)       --> cpu_0/data, cpu_0/label   (val net)
                                                 --> cpu_1/data, cpu_1/label

The two sources use the same blob names but separate queues; all four inputs share the
one global coordinator, so a single ``start()`` / ``stop()`` covers them.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from pathlib import Path
from typing import Deque, Dict, List, Sequence, Tuple

import numpy as np
from tqdm import tqdm

import data_workers
from caffe2.python import model_helper, scope, workspace

from digits_data import DigitsFetcher, prepare_digits_png
from digits_model import build_models, device_blob
from digits_report import MetricsRecorder, TrainingHistory, write_chart


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Everything a run depends on; `digits_demo.parse_args` builds it from the CLI."""

    worker_type: str = "process"
    workers: int = 2  # training fetch workers per device
    val_workers: int = 1  # validation fetch workers per device
    devices: int = 2
    batch_size: int = 32  # per device
    iterations: int = 400
    learning_rate: float = 0.05
    data_dir: Path = Path(".cache/digits_png")
    chart: Path = Path(".cache/digits_demo.png")
    seed: int = 0
    progress: bool = True
    #: How often the library hands its metrics to the external loggers (upstream: 60 s).
    metrics_interval_secs: float = 1.0


@dataclasses.dataclass(frozen=True)
class DemoResult:
    """What a run measured."""

    accuracy: float  # held-out accuracy of the final evaluation
    validation_rows: int  # rows the final evaluation saw
    held_out_images: int
    train_seconds: float
    total_seconds: float  # including PNG cache, model building, worker start and stop
    images_per_sec: float  # training images consumed per second
    stats: Tuple[data_workers.InputStats, ...]


class _ProgressBar(tqdm):
    # tqdm's monitor thread outlives the bar; the demo promises to leave no thread behind.
    monitor_interval = 0


def _mean_of_blobs(devices: Sequence[int], name: str) -> float:
    return float(np.mean([workspace.FetchBlob(device_blob(d, name)) for d in devices]))


def evaluate(net_name: str, devices: Sequence[int], iterations: int) -> float:
    """Mean accuracy of the validation net over ``iterations`` runs on every device.

    Every validation batch has the same size (the library re-batches), so the mean of
    the per-batch accuracies is the accuracy over all the rows seen.
    """
    accuracies = []
    for _ in range(iterations):
        workspace.RunNet(net_name)
        accuracies.append(_mean_of_blobs(devices, "accuracy"))
    return float(np.mean(accuracies))


def _train(config: DemoConfig, train_net: str, val_net: str, devices: Sequence[int],
           history: TrainingHistory, recorder: MetricsRecorder) -> None:
    """The training loop: one RunNet per iteration, a short validation now and then."""
    images_per_iteration = config.batch_size * len(devices)
    val_every = max(1, config.iterations // 5)
    recent: Deque[Tuple[float, int]] = collections.deque(maxlen=20)
    postfix: Dict[str, str] = {}
    with _ProgressBar(total=config.iterations, desc="train", unit="it",
                      disable=not config.progress) as bar:
        for iteration in range(1, config.iterations + 1):
            workspace.RunNet(train_net)
            now = recorder.elapsed()
            recent.append((now, iteration))
            span = recent[-1][0] - recent[0][0]
            speed = (recent[-1][1] - recent[0][1]) * images_per_iteration / span if span else 0.0
            loss = _mean_of_blobs(devices, "loss")
            accuracy = _mean_of_blobs(devices, "accuracy")
            if span:
                history.add(now, loss, accuracy, speed)
            if iteration % val_every == 0 or iteration == config.iterations:
                history.val_times.append(now)
                history.val_accuracies.append(evaluate(val_net, devices, 2))
                postfix["val_acc"] = f"{history.val_accuracies[-1]:.3f}"
            postfix.update(loss=f"{loss:.3f}", acc=f"{accuracy:.3f}", inputs_s=f"{speed:.0f}")
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)


def run(config: DemoConfig) -> DemoResult:
    """Train, evaluate on the held-out split, draw the chart; see the module docstring.

    Raises:
        data_workers.DataInputError: an input failed (raised by ``stop()``).
    """
    started = time.monotonic()
    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    # The demo owns the process's workspace: start from an empty one, so that running
    # it twice in one process (tests) finds no stale nets or queues.
    workspace.ResetWorkspace()

    split = prepare_digits_png(config.data_dir)
    devices = list(range(config.devices))
    recorder = MetricsRecorder()
    fetchers = {
        "train": DigitsFetcher(split.train, augment=True, seed=config.seed),
        "val": DigitsFetcher(split.val, augment=False, seed=config.seed + 1000),
    }
    workers = {"train": config.workers, "val": config.val_workers}
    # The validation source idles most of the run: a small buffer is enough.
    buffered = {"train": 16, "val": 4}
    coordinators: List[data_workers.GlobalCoordinator] = []

    def add_input(model: model_helper.ModelHelper, source: str) -> None:
        # Called by data_parallel_model inside each device's DeviceScope and NameScope,
        # so the queue and the DequeueBlobs op land on that device, as cpu_<d>/data ...
        coordinators.append(data_workers.init_data_input_workers(
            model.net, ["data", "label"], fetchers[source], config.batch_size,
            num_worker_threads=workers[source],
            input_source_name=source,
            max_buffered_batches=buffered[source],
            external_loggers=[recorder.logger_for(f"{source} {scope.CurrentNameScope()}")],
            worker_type=config.worker_type,
            seed=config.seed,
            log_interval_secs=config.metrics_interval_secs,
        ))

    train_model, val_model = build_models(
        devices,
        train_input=lambda model: add_input(model, "train"),
        val_input=lambda model: add_input(model, "val"),
        base_learning_rate=config.learning_rate,
        total_iterations=config.iterations,
    )
    coordinator = coordinators[0]  # every call returns the same global coordinator
    for model in (train_model, val_model):
        workspace.RunNetOnce(model.param_init_net)
        workspace.CreateNet(model.net)

    history = TrainingHistory()
    val_net = val_model.net.Proto().name
    # At least one held-out split's worth of rows, spread over the devices.
    final_iterations = math.ceil(len(split.val) / (config.batch_size * len(devices)))
    coordinator.start()
    try:
        train_started = time.monotonic()
        _train(config, train_model.net.Proto().name, val_net, devices, history, recorder)
        train_seconds = time.monotonic() - train_started
        accuracy = evaluate(val_net, devices, final_iterations)
        stats = coordinator.stats()
    finally:
        # Stops every worker, then raises the first input failure, if there was one.
        coordinator.stop()

    write_chart(config.chart, history, recorder)
    return DemoResult(
        accuracy=accuracy,
        validation_rows=final_iterations * config.batch_size * len(devices),
        held_out_images=len(split.val),
        train_seconds=train_seconds,
        total_seconds=time.monotonic() - started,
        images_per_sec=config.iterations * config.batch_size * len(devices) / train_seconds,
        stats=stats,
    )
