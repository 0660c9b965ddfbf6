"""Multi-host data-parallel training with Gloo on loopback, fed by sharded sources.

Run one process per "host"; they meet through Caffe2's file store (a shared folder) and
all-reduce gradients with Gloo bound to the loopback interface, so no traffic leaves
127.0.0.0/8. Each host builds one input per CPU device, and every device reads its own
shard (``device_shard``) of a synthetic regression dataset through a
``ShardedSource``. Rank 0 saves the model and the input position into one minidb;
``--resume`` restarts every host from it.

All hosts on this machine in one command (trains, checkpoints, restarts from the
checkpoint with a different number of fetchers, and prints what the hosts saw)::

    python examples/multihost_gloo.py --launch --world-size 2 [--worker-type process]

The same by hand, one command per host (on real hosts, a shared folder for the store)::

    d=$(mktemp -d)
    for r in 0 1; do
      python examples/multihost_gloo.py --rank $r --world-size 2 --store-dir $d/store \\
          --checkpoint $d/ckpt.minidb --checkpoint-at 8 --steps 12 --record $d/r$r.json &
    done; wait
    # ... later, or after a crash: continue from the checkpoint with 3 fetchers per device
    for r in 0 1; do
      python examples/multihost_gloo.py --rank $r --world-size 2 --store-dir $d/store \\
          --checkpoint $d/ckpt.minidb --resume --run-id 2 --num-workers 3 --steps 10 \\
          --record $d/r$r.resumed.json &
    done; wait

``--record`` writes, per step and device, the dataset indices the net dequeued, and the
final value of a parameter, so the hosts' data and parameters can be compared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import numpy as np

# Allow running from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from caffe2.python import brew, core, data_parallel_model, model_helper, optimizer, workspace  # noqa: E402

from data_workers.sharding import ArrayDataset, InputCheckpoint, ShardedSource, device_shard  # noqa: E402

logger = logging.getLogger("multihost_gloo")

INPUT_CKPT_BLOB = "input_checkpoint"
ITER_BLOB = "optimizer_iteration"  # build_sgd's iteration counter (in GetCheckpointParams)
FEATURES = 8


def make_dataset(num_samples: int, seed: int = 0) -> ArrayDataset:
    """Synthetic linear-regression data, plus each row's own index (to audit delivery)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((num_samples, FEATURES)).astype(np.float32)
    w = rng.standard_normal((FEATURES, 1)).astype(np.float32)
    y = (x @ w + 0.01 * rng.standard_normal((num_samples, 1))).astype(np.float32)
    return ArrayDataset(x, y, np.arange(num_samples, dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Settings of one trainer process (one "host")."""

    rank: int
    world_size: int
    store_dir: str
    checkpoint: str
    steps: int
    devices: int = 2
    num_workers: int = 2
    worker_type: str = "thread"
    batch_size: int = 4
    num_samples: int = 200
    seed: int = 1234
    policy: str = "wrap"
    checkpoint_at: int | None = None
    resume: bool = False
    run_id: str = "1"
    record: str | None = None
    hang_after: bool = False
    gloo_timeout_s: int = 60
    interface: str = "lo"


def _read_input_checkpoint(path: str) -> InputCheckpoint:
    """Load only the input position from a model checkpoint db."""
    workspace.RunOperatorOnce(
        core.CreateOperator(
            "Load", [], [INPUT_CKPT_BLOB], db=path, db_type="minidb",
            absolute_path=True, blob_names=[INPUT_CKPT_BLOB],
        )
    )
    return InputCheckpoint.from_blob(INPUT_CKPT_BLOB)


def _save_checkpoint(model: Any, source: ShardedSource, steps_done: int, path: str) -> None:
    """Save the model's checkpoint blobs and the input position in one minidb, atomically."""
    source.checkpoint(steps_done).to_blob(INPUT_CKPT_BLOB)
    blobs = sorted(str(b) for b in data_parallel_model.GetCheckpointParams(model))
    tmp = path + ".tmp"
    workspace.RunOperatorOnce(
        core.CreateOperator(
            "Save", blobs + [INPUT_CKPT_BLOB], [], db=tmp, db_type="minidb", absolute_path=True
        )
    )
    os.replace(tmp, path)


def run_trainer(cfg: TrainerConfig) -> dict[str, Any]:
    """Build the data-parallel model, train ``cfg.steps`` steps, and return a record."""
    workspace.ResetWorkspace()
    dataset = make_dataset(cfg.num_samples)
    resume = _read_input_checkpoint(cfg.checkpoint) if cfg.resume else None

    store = "store_handler"
    os.makedirs(cfg.store_dir, exist_ok=True)
    workspace.RunOperatorOnce(
        core.CreateOperator(
            "FileStoreHandlerCreate", [], [store], path=cfg.store_dir, prefix=f"run{cfg.run_id}"
        )
    )
    rendezvous = {
        "kv_handler": store,
        "shard_id": cfg.rank,
        "num_shards": cfg.world_size,
        "engine": "GLOO",
        "transport": "tcp",
        "interface": cfg.interface,  # "lo" keeps Gloo on 127.0.0.0/8
        "exit_nets": None,
    }

    sources: dict[int, ShardedSource] = {}
    coordinators: list[Any] = []
    device_ids = list(range(cfg.devices))

    def add_inputs(model: Any) -> None:
        # Called once per device, inside that device's name and device scope.
        device = len(sources)
        shard, num_shards = device_shard(cfg.rank, cfg.world_size, device, cfg.devices)
        source = ShardedSource(
            dataset, cfg.batch_size, rank=shard, world_size=num_shards,
            seed=cfg.seed, policy=cfg.policy, resume=resume,
        )
        sources[device] = source
        coord = source.attach(
            model.net, ["data", "label", "index"], num_workers=cfg.num_workers,
            worker_type=cfg.worker_type, input_source_name="train",
            max_buffered_batches=8, timeout=cfg.gloo_timeout_s,
        )
        coordinators.append(coord)

    def add_forward(model: Any, loss_scale: float) -> list[Any]:
        pred = brew.fc(model, "data", "pred", FEATURES, 1)
        dist = model.net.SquaredL2Distance([pred, "label"], "dist")
        loss = model.net.AveragedLoss(dist, "loss")
        return [model.net.Scale(loss, "scaled_loss", scale=loss_scale)]

    def add_optimizer(model: Any) -> None:
        optimizer.build_sgd(model, base_learning_rate=0.05, policy="fixed")

    model = model_helper.ModelHelper(name="multihost")
    data_parallel_model.Parallelize(
        model,
        input_builder_fun=add_inputs,
        forward_pass_builder_fun=add_forward,
        optimizer_builder_fun=add_optimizer,
        devices=device_ids,
        rendezvous=rendezvous,
        cpu_device=True,
        barrier_net_timeout_sec=cfg.gloo_timeout_s,
    )
    data_parallel_model.RunInitNet(model)
    if cfg.resume:
        workspace.RunOperatorOnce(
            core.CreateOperator(
                "Load", [], [], db=cfg.checkpoint, db_type="minidb",
                absolute_path=True, load_all=1,
            )
        )
        data_parallel_model.FinalizeAfterCheckpoint(model, cpu_mode=True)
        # The input position and the parameters come from the same db; the optimizer's
        # iteration counter must agree with the step the position was taken at.
        model_iter = int(workspace.FetchBlob(ITER_BLOB).reshape(-1)[0])
        if resume is None or model_iter != resume.step:
            raise RuntimeError(
                f"checkpoint mismatch: model iteration {model_iter}, input position at "
                f"step {None if resume is None else resume.step}"
            )

    start_step = resume.step if resume is not None else 0
    record: dict[str, Any] = {"rank": cfg.rank, "start_step": start_step, "steps": {}}
    # Every attach() returned the same process-wide coordinator.
    global_coord = coordinators[0]
    global_coord.start()
    try:
        for i in range(cfg.steps):
            data_parallel_model.RunNet(model, 1)
            step = start_step + i
            record["steps"][str(step)] = {
                str(d): workspace.FetchBlob(f"cpu_{d}/index").tolist() for d in device_ids
            }
            if cfg.checkpoint_at is not None and step + 1 == cfg.checkpoint_at and cfg.rank == 0:
                _save_checkpoint(model, sources[0], i + 1, cfg.checkpoint)
                logger.info("rank 0 saved checkpoint after step %d", step)
        record["param"] = {
            str(d): workspace.FetchBlob(f"cpu_{d}/pred_w").ravel().tolist() for d in device_ids
        }
        record["loss"] = float(workspace.FetchBlob("cpu_0/loss"))
    finally:
        if not cfg.hang_after:
            global_coord.stop()
    if cfg.record:
        tmp = cfg.record + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.replace(tmp, cfg.record)
    if cfg.hang_after:
        # Simulate a crash: the input keeps running until the process is SIGKILLed.
        logger.info("rank %d waiting to be killed", cfg.rank)
        signal.pause()
    return record


def parse_args(argv: Sequence[str] | None = None) -> TrainerConfig:
    """Parse the command line into a :class:`TrainerConfig`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank", type=int, default=None, help="this host's rank (omit with --launch)")
    p.add_argument("--world-size", type=int, default=2)
    p.add_argument("--store-dir", default=None, help="shared folder for the Gloo file store")
    p.add_argument("--checkpoint", default=None, help="minidb path for model + input position")
    p.add_argument("--steps", type=int, default=12, help="steps to run in this invocation")
    p.add_argument("--devices", type=int, default=2, help="CPU devices per host")
    p.add_argument("--num-workers", type=int, default=2, help="fetchers per device")
    p.add_argument("--worker-type", choices=["thread", "process"], default="thread")
    p.add_argument("--batch-size", type=int, default=4, help="rows per device per step")
    p.add_argument("--num-samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--policy", choices=["drop", "pad", "wrap"], default="wrap")
    p.add_argument("--checkpoint-at", type=int, default=None, help="save after this global step")
    p.add_argument("--resume", action="store_true", help="restart from --checkpoint")
    p.add_argument("--run-id", default="1", help="file-store prefix; new for every restart")
    p.add_argument("--record", default=None, help="write a JSON record of data and params")
    p.add_argument("--hang-after", action="store_true", help="wait to be killed at the end")
    p.add_argument("--timeout", type=int, default=60, help="Gloo and dequeue timeout, seconds")
    p.add_argument("--interface", default="lo",
                   help="network interface for Gloo (lo: loopback, this machine only)")
    a = p.parse_args(argv)
    if a.rank is None or a.store_dir is None or a.checkpoint is None:
        p.error("--rank, --store-dir and --checkpoint are required (or use --launch)")
    return TrainerConfig(
        rank=a.rank, world_size=a.world_size, store_dir=a.store_dir, checkpoint=a.checkpoint,
        steps=a.steps, devices=a.devices, num_workers=a.num_workers, worker_type=a.worker_type,
        batch_size=a.batch_size, num_samples=a.num_samples, seed=a.seed, policy=a.policy,
        checkpoint_at=a.checkpoint_at, resume=a.resume, run_id=a.run_id, record=a.record,
        hang_after=a.hang_after, gloo_timeout_s=a.timeout, interface=a.interface,
    )


def launch(argv: Sequence[str]) -> int:
    """Run every rank on this machine, crash-free: train, checkpoint, resume, compare.

    Phase 1 trains 12 steps and checkpoints after step 8; phase 2 restarts all ranks
    from that checkpoint with 3 fetchers per device (phase 1 had 2) and trains 6 more.
    Prints what the hosts saw and whether their parameters agree.
    """
    p = argparse.ArgumentParser()
    p.add_argument("--world-size", type=int, default=2)
    known, rest = p.parse_known_args(argv)
    world = known.world_size
    with tempfile.TemporaryDirectory(prefix="multihost_") as tmp:
        common = [*rest, "--world-size", str(world), "--store-dir", os.path.join(tmp, "store"),
                  "--checkpoint", os.path.join(tmp, "ckpt.minidb")]
        phases = [
            ("first", ["--steps", "12", "--checkpoint-at", "8", "--num-workers", "2",
                       "--run-id", "1"]),
            ("resumed", ["--steps", "6", "--resume", "--num-workers", "3", "--run-id", "2"]),
        ]
        records: dict[str, list[dict[str, Any]]] = {}
        for name, extra in phases:
            paths = [os.path.join(tmp, f"{name}{r}.json") for r in range(world)]
            procs = [
                subprocess.Popen([sys.executable, os.path.abspath(__file__), *common, *extra,
                                  "--rank", str(r), "--record", paths[r]])
                for r in range(world)
            ]
            try:
                codes = [proc.wait(timeout=300) for proc in procs]
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            if any(codes):
                print(f"{name} run failed: exit codes {codes}")
                return 1
            records[name] = [json.loads(open(path).read()) for path in paths]

    first, resumed = records["first"], records["resumed"]

    def rows(recs: list[dict[str, Any]], step: int) -> list[int]:
        by_device = [rec["steps"][str(step)] for rec in recs]
        return [i for devs in by_device for dev in sorted(devs) for i in devs[dev]]

    per_host = [sorted(i for s in range(8) for dev in rec["steps"][str(s)].values() for i in dev)
                for rec in first]
    overlap = set(per_host[0]).intersection(*per_host[1:])
    same_redo = all(rows(first, s) == rows(resumed, s) for s in range(8, 12))
    params = [np.asarray(rec["param"][dev]) for rec in resumed for dev in rec["param"]]
    spread = max(float(np.abs(p - params[0]).max()) for p in params)
    print(f"{world} hosts, steps 0-7: {[len(h) for h in per_host]} rows per host, "
          f"{len(overlap)} rows seen by more than one host")
    print(f"after the restart, steps 8-11 saw the same rows as before it: {same_redo}")
    print(f"parameters across hosts and devices after step 13: max difference {spread:.3g}")
    return 0 if (not overlap and same_redo and spread == 0.0) else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--launch" in argv:
        argv.remove("--launch")
        return launch(argv)
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[rank {cfg.rank}] %(name)s: %(message)s")
    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    t0 = time.monotonic()
    record = run_trainer(cfg)
    logger.info(
        "rank %d: %d steps in %.1f s, final loss %.4f",
        cfg.rank, len(record["steps"]), time.monotonic() - t0, record["loss"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
