"""ShardedSource: sharding, per-epoch shuffles, last-portion policies, exact resume.

The first half checks the stream arithmetic directly (property-based); the second half
feeds real Caffe2 nets through ``data_workers`` inputs and audits which dataset rows the
net actually dequeued across a stop / restore with a different number of fetchers.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legs import core, workspace  # None on the modern leg (no Caffe2)

import data_workers
from data_workers.sharding import (
    ArrayDataset,
    InputCheckpoint,
    LastBatchPolicy,
    ShardedSource,
    device_shard,
)

pytestmark = pytest.mark.timeout(60)



def _sources(n: int, batch: int, world: int, policy: str, seed: int = 3, **kw: Any) -> list[ShardedSource]:
    data = np.arange(n)
    return [
        ShardedSource([data], batch, rank=r, world_size=world, seed=seed, policy=policy, **kw)
        for r in range(world)
    ]


def _step_rows(sources: list[ShardedSource], step: int) -> np.ndarray:
    return np.concatenate([s.block_indices(step) for s in sources])


# -- stream arithmetic -------------------------------------------------------------------

sizes = st.tuples(
    st.integers(min_value=1, max_value=120),  # dataset length
    st.integers(min_value=1, max_value=9),  # batch per shard
    st.integers(min_value=1, max_value=4),  # shards
)


@settings(max_examples=60, deadline=None)
@given(sizes, st.sampled_from(["drop", "pad"]), st.integers(0, 2**31))
def test_epoch_policies_drop_and_pad(dims: tuple[int, int, int], policy: str, seed: int) -> None:
    n, batch, world = dims
    if policy == "drop" and batch * world > n:
        with pytest.raises(ValueError, match="'drop'"):
            _sources(n, batch, world, policy)
        return
    sources = _sources(n, batch, world, policy, seed=seed)
    per_epoch = sources[0].steps_per_epoch
    for epoch in range(2):
        steps = range(epoch * per_epoch, (epoch + 1) * per_epoch)
        rows = np.concatenate([_step_rows(sources, s) for s in steps])
        if policy == "drop":
            # at most once; only the N % G tail is left out
            assert len(set(rows.tolist())) == rows.size == (n // (batch * world)) * batch * world
        else:
            # at least once; the padding repeats rows of the same epoch
            assert set(rows.tolist()) == set(range(n))
            assert rows.size == -(-n // (batch * world)) * batch * world
        for s in steps:  # within a step the shards are disjoint
            step = _step_rows(sources, s)
            if policy == "drop":
                assert len(set(step.tolist())) == step.size


@settings(max_examples=60, deadline=None)
@given(sizes, st.integers(0, 2**31))
def test_wrap_is_exactly_once_per_epoch(dims: tuple[int, int, int], seed: int) -> None:
    n, batch, world = dims
    sources = _sources(n, batch, world, "wrap", seed=seed)
    g = batch * world
    steps = -(-3 * n // g)
    stream = np.concatenate([_step_rows(sources, s) for s in range(steps)])
    for epoch in range(3):
        assert sorted(stream[epoch * n:(epoch + 1) * n].tolist()) == list(range(n))


def test_epochs_are_reshuffled_from_the_seed() -> None:
    a = _sources(50, 5, 2, "wrap", seed=1)
    b = _sources(50, 5, 2, "wrap", seed=1)
    c = _sources(50, 5, 2, "wrap", seed=2)
    epoch0 = np.concatenate([_step_rows(a, s) for s in range(5)])
    epoch1 = np.concatenate([_step_rows(a, s) for s in range(5, 10)])
    assert not np.array_equal(epoch0, epoch1)
    assert np.array_equal(epoch0, np.concatenate([_step_rows(b, s) for s in range(5)]))
    assert not np.array_equal(epoch0, np.concatenate([_step_rows(c, s) for s in range(5)]))
    unshuffled = ShardedSource([np.arange(50)], 10, shuffle=False)
    assert unshuffled.block_indices(0).tolist() == list(range(10))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes,
    st.sampled_from(["drop", "pad", "wrap"]),
    st.integers(min_value=0, max_value=40),
)
def test_resume_continues_the_stream_exactly(dims: tuple[int, int, int], policy: str, cut: int) -> None:
    n, batch, world = dims
    if policy == "drop" and batch * world > n:
        return
    sources = _sources(n, batch, world, policy)
    ckpt = sources[0].checkpoint(cut)
    # every shard computes the same global position
    assert all(s.checkpoint(cut) == ckpt for s in sources)
    ckpt = InputCheckpoint.from_dict(ckpt.to_dict())
    resumed = _sources(n, batch, world, policy, resume=ckpt)
    for s in range(12):
        np.testing.assert_array_equal(_step_rows(resumed, s), _step_rows(sources, cut + s))
    assert resumed[0].checkpoint(5).step == cut + 5


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=10, max_value=100),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=0, max_value=20),
)
def test_wrap_resumes_exactly_with_a_different_world(
    n: int, batch: int, world: int, new_world: int, cut: int
) -> None:
    """A wrap stream is the same sequence of rows whatever the global batch size."""
    before = _sources(n, batch, world, "wrap")
    ckpt = before[0].checkpoint(cut)
    after = _sources(n, batch, new_world, "wrap", resume=ckpt)
    flat_before = np.concatenate([_step_rows(before, s) for s in range(cut + 30)])
    flat_after = np.concatenate([_step_rows(after, s) for s in range(30)])
    start = cut * batch * world
    m = min(flat_before.size - start, flat_after.size)
    np.testing.assert_array_equal(flat_after[:m], flat_before[start:start + m])


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=20, max_value=100),
    st.sampled_from(["drop", "pad"]),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=0, max_value=6),
)
def test_drop_pad_resume_with_a_different_world_finishes_the_epoch(
    n: int, policy: str, world: int, new_world: int, cut: int
) -> None:
    """The rest of the interrupted epoch is cut into steps of the new global batch."""
    batch = 3
    before = _sources(n, batch, world, policy)
    cut = min(cut, before[0].steps_per_epoch - 1)
    ckpt = before[0].checkpoint(cut)
    assert ckpt.epoch == 0
    after = _sources(n, batch, new_world, policy, resume=ckpt)
    # whole epoch orders, as one "step" of n rows each
    orders = ShardedSource([np.arange(n)], n, seed=3, policy="wrap")
    perm0, perm1 = orders.block_indices(0), orders.block_indices(1)
    rest, g = n - ckpt.offset, batch * new_world
    steps = rest // g if policy == "drop" else -(-rest // g)
    later = np.concatenate([_step_rows(after, s) for s in range(steps)] or [np.zeros(0, np.int64)])
    if policy == "drop":  # continues the epoch order; the tail that fits no step is skipped
        np.testing.assert_array_equal(later, perm0[ckpt.offset:ckpt.offset + steps * g])
    else:  # continues the epoch order, then pads from its start
        np.testing.assert_array_equal(later[:rest], perm0[ckpt.offset:])
        np.testing.assert_array_equal(later[rest:], np.resize(perm0, later.size - rest))
    # the next step starts epoch 1
    np.testing.assert_array_equal(_step_rows(after, steps), perm1[:g])


@pytest.mark.parametrize("num_workers", [1, 2, 3, 5])
def test_fetchers_split_blocks_round_robin(num_workers: int) -> None:
    ids = [10 + i for i in range(num_workers)]  # global ids, not 0-based
    source = ShardedSource([np.arange(97), np.arange(97) * 2.0], 4, seed=9, policy="wrap",
                           worker_ids=ids)
    reference = ShardedSource([np.arange(97)], 4, seed=9, policy="wrap")
    # Each fetcher in its own (pickled) copy, as in a spawned process.
    copies = {w: pickle.loads(pickle.dumps(source)) for w in ids}
    blocks = [copies[w](w, 4) for _ in range(6) for w in ids]  # round-robin order
    for step, (idx, doubled) in enumerate(blocks):
        np.testing.assert_array_equal(idx, reference.block_indices(step))
        np.testing.assert_array_equal(doubled, idx * 2.0)


def test_device_shard() -> None:
    assert [device_shard(r, 2, d, 3) for r in range(2) for d in range(3)] == [
        (i, 6) for i in range(6)
    ]
    with pytest.raises(ValueError, match="device"):
        device_shard(0, 2, 3, 3)


def test_validation_errors() -> None:
    data = [np.arange(10)]
    with pytest.raises(ValueError, match="policy"):
        ShardedSource(data, 2, policy="shortest")
    with pytest.raises(ValueError, match="rank"):
        ShardedSource(data, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        ShardedSource(data, 0)
    with pytest.raises(TypeError, match="load"):
        ShardedSource(object(), 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same number of rows"):
        ArrayDataset(np.arange(3), np.arange(4))
    unbound = ShardedSource(data, 2)
    with pytest.raises(RuntimeError, match="init_fun"):
        unbound(0, 2)
    bound = ShardedSource(data, 2, worker_ids=[4, 5])
    with pytest.raises(ValueError, match="batch_size"):
        bound(4, 3)
    with pytest.raises(ValueError, match="worker id 6"):
        bound(6, 2)
    ckpt = ShardedSource(data, 2, seed=1).checkpoint(3)
    with pytest.raises(ValueError, match="seed"):
        ShardedSource(data, 2, seed=2, resume=ckpt)
    with pytest.raises(ValueError, match="policy"):
        ShardedSource(data, 2, seed=1, policy="wrap", resume=ckpt)
    with pytest.raises(ValueError, match="version"):
        InputCheckpoint.from_dict({**ckpt.to_dict(), "version": 99})
    assert LastBatchPolicy("pad") is LastBatchPolicy.PAD


def test_checkpoint_file_round_trip(tmp_path: Path) -> None:
    ckpt = ShardedSource([np.arange(30)], 4, world_size=1, seed=5, policy="pad").checkpoint(11)
    ckpt.save(tmp_path / "input.json")
    assert InputCheckpoint.load(tmp_path / "input.json") == ckpt
    assert [p.name for p in tmp_path.iterdir()] == ["input.json"]  # no temp file left


@pytest.mark.caffe2
def test_checkpoint_model_db_round_trip(tmp_path: Path) -> None:
    """Stored in the same minidb as the model's parameters, and read back from it."""
    ckpt = ShardedSource([np.arange(30)], 4, world_size=1, seed=5, policy="pad").checkpoint(11)
    ws = "sharding_ckpt_db"
    prev = workspace.CurrentWorkspace()
    workspace.SwitchWorkspace(ws, True)
    try:
        workspace.FeedBlob("w", np.ones((2, 2), np.float32))
        ckpt.to_blob("input_checkpoint")
        db = str(tmp_path / "model.minidb")
        workspace.RunOperatorOnce(core.CreateOperator(
            "Save", ["w", "input_checkpoint"], [], db=db, db_type="minidb", absolute_path=True))
        workspace.ResetWorkspace()
        workspace.RunOperatorOnce(core.CreateOperator(
            "Load", [], [], db=db, db_type="minidb", absolute_path=True, load_all=1))
        assert InputCheckpoint.from_blob("input_checkpoint") == ckpt
        np.testing.assert_array_equal(workspace.FetchBlob("w"), np.ones((2, 2)))
    finally:
        workspace.ResetWorkspace()
        workspace.SwitchWorkspace(prev)


# -- real nets ---------------------------------------------------------------------------

N = 90
BATCH = 6


def _dataset() -> ArrayDataset:
    idx = np.arange(N, dtype=np.int64)
    return ArrayDataset(idx, (idx[:, None] * np.ones((1, 3))).astype(np.float32))


def _train(source: ShardedSource, steps: int, num_workers: int, worker_type: str, name: str) -> list[np.ndarray]:
    """Run a net that dequeues the rows; return the indices of every step."""
    net = core.Net(f"sharded_{name}")
    coord = source.attach(net, ["index", "feat"], num_workers=num_workers,
                          worker_type=worker_type, input_source_name=name,
                          max_buffered_batches=4, timeout=20, seed=0)
    net.Sum(["feat", "feat"], "feat2")  # the net uses the data
    workspace.CreateNet(net, overwrite=True)
    seen = []
    coord.start()
    try:
        for _ in range(steps):
            workspace.RunNet(net.Proto().name)
            index = workspace.FetchBlob("index")
            np.testing.assert_array_equal(workspace.FetchBlob("feat2")[:, 0], 2.0 * index)
            seen.append(index.copy())
    finally:
        assert coord.stop()
    return seen


@pytest.mark.parametrize("policy", ["drop", "wrap"])
@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_net_sees_every_row_once_across_stop_and_restore(
    policy: str, worker_type: str, ws: Any
) -> None:
    """Train, checkpoint, stop; restore with another fetcher count; audit the rows."""
    kw = dict(seed=42, policy=policy)
    first = ShardedSource(_dataset(), BATCH, **kw)  # type: ignore[arg-type]
    per_epoch = first.steps_per_epoch  # 15
    cut = 7
    seen = _train(first, cut, num_workers=2, worker_type=worker_type, name=f"a_{policy}")
    ckpt = InputCheckpoint.from_dict(first.checkpoint(cut).to_dict())

    second = ShardedSource(_dataset(), BATCH, resume=ckpt, **kw)  # type: ignore[arg-type]
    rest = 2 * per_epoch - cut
    seen += _train(second, rest, num_workers=3, worker_type=worker_type, name=f"b_{policy}")

    reference = ShardedSource([np.arange(N)], BATCH, **kw)  # type: ignore[arg-type]
    for step, rows in enumerate(seen):
        np.testing.assert_array_equal(rows, reference.block_indices(step))
    for epoch in range(2):
        rows = np.concatenate(seen[epoch * per_epoch:(epoch + 1) * per_epoch])
        assert sorted(rows.tolist()) == list(range(N))  # 90 = 15 * 6: exactly once
    assert second.checkpoint(rest).step == 2 * per_epoch


def test_two_shards_in_one_trainer_are_disjoint(ws: Any) -> None:
    """Two inputs (as two devices) with their own shards feed two nets."""
    shards = [ShardedSource(_dataset(), 5, rank=r, world_size=2, seed=1, policy="drop")
              for r in range(2)]
    nets = []
    for r, source in enumerate(shards):
        with core.NameScope(f"dev{r}"):
            net = core.Net(f"shard_net_{r}")
            coord = source.attach(net, ["index", "feat"], num_workers=2,
                                  input_source_name="train", max_buffered_batches=4, timeout=20)
        workspace.CreateNet(net, overwrite=True)
        nets.append(net)
    seen: list[list[int]] = [[], []]
    coord.start()
    try:
        for _ in range(shards[0].steps_per_epoch):
            for r, net in enumerate(nets):
                workspace.RunNet(net.Proto().name)
                seen[r].extend(workspace.FetchBlob(f"dev{r}/index").tolist())
    finally:
        assert coord.stop()
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(N))


def test_fetcher_error_names_the_missing_binding(ws: Any) -> None:
    """Without init_fun the source cannot know its fetcher; the loop sees FetcherError."""
    source = ShardedSource(_dataset(), BATCH)
    net = core.Net("unbound")
    coord = data_workers.init_data_input_workers(
        net, ["index", "feat"], source, BATCH, num_worker_threads=1,
        input_source_name="unbound", timeout=20)
    workspace.CreateNet(net, overwrite=True)
    coord.start()
    with pytest.raises(data_workers.FetcherError) as info:
        try:
            workspace.RunNet(net.Proto().name)
        finally:
            coord.stop()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "init_fun" in str(info.value.__cause__)


def test_attach_chains_the_users_init_fun(ws: Any) -> None:
    calls: list[list[int]] = []

    def user_init(input_coordinator: Any, global_coordinator: Any) -> None:
        calls.append(list(input_coordinator.get_worker_ids()))

    source = ShardedSource(_dataset(), BATCH, seed=4, policy="wrap")
    net = core.Net("chained_init")
    coord = source.attach(net, ["index", "feat"], num_workers=2, init_fun=user_init,
                          input_source_name="chained", timeout=20)
    workspace.CreateNet(net, overwrite=True)
    coord.start()
    try:
        workspace.RunNet(net.Proto().name)
        first = workspace.FetchBlob("index").copy()
    finally:
        assert coord.stop()
    assert calls == [list(source.worker_ids or ())]
    np.testing.assert_array_equal(first, source.block_indices(0))
    with pytest.raises(ValueError, match="deterministic"):
        source.attach(core.Net("x"), ["index", "feat"], deterministic=False)
