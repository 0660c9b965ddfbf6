"""``Loader(dataset, ...)``: DataLoader's signature and meaning, over our workers.

Epochs in the sampler's order whatever the worker type or count, default
collate and the option rules as DataLoader has them, ``get_worker_info()``
inside thread and process workers, exact resume checked against an
uninterrupted run (the way torchdata tests StatefulDataLoader), iterable
datasets split across workers, errors at the next batch, bounded prefetch.
The autouse ``no_leaks`` fixture checks that every loader left nothing behind.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import threading
from typing import Any, List, Tuple

import numpy as np
import pytest
import torch
import torch.utils.data
from torch.utils.data._utils.collate import default_collate  # public from torch 1.11 on

from data_workers import DataInputError, FetcherError, WorkerDiedError
from data_workers.torch import Loader
from torch_datasets import (BadSamples, BrokenShards, Counting, DiesAt, FailsAt, Gate, Indexed,
                            InitSeen, Mixed, Numeric, Shards, WhereAmI, plain_batches,
                            record_init)

#: (num_workers, worker_type) configurations every order test runs over.
CONFIGS = [(0, "thread"), (1, "thread"), (3, "thread"), (2, "process")]


def labels(batches: List[Any]) -> List[List[int]]:
    return [batch[1].tolist() for batch in batches]


def epochs(loader: Loader, n: int) -> List[List[List[int]]]:
    return [labels(list(loader)) for _ in range(n)]


@pytest.mark.parametrize("num_workers,worker_type", CONFIGS)
def test_each_epoch_is_the_samplers_order_cut_in_batches(num_workers: int,
                                                         worker_type: str) -> None:
    dataset = Indexed(50)
    with Loader(dataset, 7, shuffle=True, num_workers=num_workers, worker_type=worker_type,
                seed=11) as loader:
        assert len(loader) == 8
        got = epochs(loader, 3)
        for epoch, batches in enumerate(got):
            loader.sampler.set_epoch(epoch)
            order = list(loader.sampler)
            assert batches == [order[i:i + 7] for i in range(0, 50, 7)]
    assert got[0] != got[1] != got[2]  # reshuffled each epoch
    assert sorted(itertools.chain(*got[1])) == list(range(50))


def test_the_order_is_a_function_of_the_seed_or_generator() -> None:
    def first_epoch(**kwargs: Any) -> List[List[int]]:
        with Loader(Indexed(30), 4, shuffle=True, num_workers=2, **kwargs) as loader:
            return labels(list(loader))

    assert first_epoch(seed=3) == first_epoch(seed=3) != first_epoch(seed=4)
    assert first_epoch(generator=torch.Generator().manual_seed(9)) == \
        first_epoch(generator=torch.Generator().manual_seed(9))
    torch.manual_seed(5)
    unseeded = first_epoch()
    torch.manual_seed(5)
    assert first_epoch() == unseeded  # drawn from torch's RNG, as DataLoader draws its seed


@pytest.mark.parametrize("options", [
    dict(batch_size=4), dict(batch_size=4, drop_last=True), dict(batch_size=None),
    dict(batch_size=3, sampler=[9, 1, 5, 3, 7]),
    dict(batch_sampler=[[0, 1], [5], [2, 3, 4]]),
    dict(batch_size=4, collate_fn=lambda samples: [s["image"].sum() for s in samples]),
])
def test_batches_equal_dataloaders(options: Any) -> None:
    """Default collate (dict, namedtuple, str, numbers, tensors, arrays), samplers,
    batch_sampler, drop_last, batch_size=None and collate_fn, against DataLoader."""
    expected = plain_batches(list(torch.utils.data.DataLoader(Mixed(), **options)))
    for num_workers in (0, 2):
        with Loader(Mixed(), num_workers=num_workers, **options) as loader:
            assert plain_batches(list(loader)) == expected
            assert len(loader) == len(expected)


@pytest.mark.parametrize("options,message", [
    (dict(shuffle=True, sampler=[0, 1]), "shuffle=True and a sampler"),
    (dict(batch_size=2, batch_sampler=[[0]]), "batch_sampler decides each batch"),
    (dict(batch_size=None, drop_last=True), "drop_last=True"),
    (dict(prefetch_factor=2), "prefetch_factor"),
    (dict(persistent_workers=True), "persistent_workers"),
    (dict(timeout=-1), "timeout"),
    (dict(num_workers=-1), "num_workers"),
])
def test_invalid_options_raise_as_dataloader_does(options: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Loader(Indexed(10), **options)


def test_workers_see_get_worker_info_and_no_worker_loads_in_the_calling_thread() -> None:
    with Loader(WhereAmI(), 3) as loader:
        batch = next(iter(loader))
    assert set(batch["thread"].tolist()) == {threading.get_ident()}
    assert batch["worker"].tolist() == [-1] * 3
    assert torch.utils.data.get_worker_info() is None
    for worker_type in ("thread", "process"):
        with Loader(WhereAmI(), 3, num_workers=2, worker_type=worker_type, seed=100) as loader:
            batches = list(loader)
        # Batch i comes from worker i % 2, which knows it.
        assert [b["worker"].tolist() for b in batches] == [[i % 2] * 3 for i in range(4)]
        assert all(b["workers"].tolist() == [2] * 3 for b in batches)
        assert [b["seed"][0].item() for b in batches[:2]] == [100, 101]
        if worker_type == "process":  # as DataLoader's workers: one intra-op thread
            assert all(b["torch_threads"].tolist() == [1] * 3 for b in batches)
        if worker_type == "thread":
            assert threading.get_ident() not in {t for b in batches for t in b["thread"].tolist()}
        assert torch.utils.data.get_worker_info() is None


@pytest.mark.parametrize("context", ["fork", multiprocessing.get_context("fork")])
def test_forked_workers_load_as_spawned_ones_do(context: Any) -> None:
    """``multiprocessing_context="fork"`` (DataLoader's default on Linux): worker
    processes forked from the loop, with the epochs, worker info, seeds and the one
    intra-op thread of spawned workers; a resume is exact."""
    with Loader(WhereAmI(), 3, num_workers=2, multiprocessing_context=context,
                seed=100) as loader:
        batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert [b["worker"].tolist() for b in batches] == [[i % 2] * 3 for i in range(4)]
    assert [b["seed"][0].item() for b in batches[:2]] == [100, 101]
    assert all(b["torch_threads"].tolist() == [1] * 3 for b in batches)
    pids = {b["pid"][0].item() for b in batches}
    assert len(pids) == 2 and os.getpid() not in pids
    assert torch.utils.data.get_worker_info() is None
    with Loader(Indexed(26), 4, shuffle=True, num_workers=2, multiprocessing_context=context,
                seed=21) as loader:
        before, state = run_until(loader, 5)
    assert before == uninterrupted()[:5]
    with Loader(Indexed(26), 4, shuffle=True, num_workers=2, multiprocessing_context=context) \
            as resumed:
        resumed.load_state_dict(state)
        assert finish(resumed, 14, 5) == uninterrupted()[5:14]


def test_process_workers_collate_into_their_ring_as_default_collate_does() -> None:
    """Batches of numbers are written straight into a process worker's ring: the
    values, dtypes and structure of DataLoader's batches, and of thread workers'
    (which collate with default_collate) under the same shuffled order."""
    expected = plain_batches(list(torch.utils.data.DataLoader(Numeric(), 5)))
    with Loader(Numeric(), 5, num_workers=2, multiprocessing_context="fork") as loader:
        assert plain_batches(list(loader)) == expected
    shuffled = []
    for options in (dict(worker_type="thread"), dict(multiprocessing_context="fork")):
        with Loader(Numeric(), 5, shuffle=True, num_workers=2, seed=4, **options) as loader:
            shuffled.append(plain_batches(list(loader)))
    assert shuffled[0] == shuffled[1]


def test_collate_into_writes_default_collates_leaves_or_declines() -> None:
    """Straight into a real ring: default_collate's leaves where certain, None
    (and the ring's space given back) where not."""
    from data_workers._torch.collate_in_place import collate_into, tensor_leaves_only
    from data_workers._torch.dataset import flatten, leaf_dtypes, make_template
    from data_workers._workers.child import _RingBuffers
    from data_workers._workers.shm_ring import ShmArena

    arena = ShmArena(64 << 20)
    buffers = _RingBuffers(arena, lambda: True)
    head = np.array([[0, 3, 0]], np.int64)
    try:
        dataset = Numeric()
        samples = [dataset[i] for i in range(6)]
        collated = default_collate(samples)
        template = make_template(collated)[0]
        assert tensor_leaves_only(template)
        written = collate_into(buffers, template, leaf_dtypes(template), samples, head)
        assert written is not None
        leaves: List[np.ndarray] = []
        flatten(collated, leaves, [])
        assert [a.dtype for a in written[1:]] == [a.dtype for a in leaves]
        for got, want in zip(written, [head] + leaves):
            np.testing.assert_array_equal(got, want)
        assert buffers.sent_as_taken(written) is not None  # sent: the space stays taken
        taken = arena.written
        for bad in (Numeric(ragged=2), Numeric(wide=2)):
            assert collate_into(buffers, template, leaf_dtypes(template),
                                [bad[i] for i in range(6)], head) is None
        mixed = [dict(s) for s in samples]
        mixed[3]["weight"] = 1  # an int among floats: default_collate decides
        assert collate_into(buffers, template, leaf_dtypes(template), mixed, head) is None
        assert buffers.sent_as_taken([head]) is None
        assert arena.written == taken  # what was taken and not sent is back
        assert not tensor_leaves_only(make_template(default_collate([Mixed()[0]]))[0])
    finally:
        arena.close()


@pytest.mark.parametrize("bad", ["ragged", "wide"])
def test_a_batch_default_collate_refuses_raises_its_error_at_that_batch(bad: str) -> None:
    """Samples that do not stack (another shape, an int beyond int64) are collated
    the usual way, which raises default_collate's own error at that batch; the
    batch before it arrives."""
    dataset = Numeric(**{bad: 7})
    with pytest.raises(Exception) as collate_error:
        default_collate([dataset[i] for i in range(5, 10)])
    expected = plain_batches(list(torch.utils.data.DataLoader(Numeric(), 5)))[:1]
    got: List[Any] = []
    with Loader(dataset, 5, num_workers=2, multiprocessing_context="fork") as loader:
        with pytest.raises(FetcherError) as raised:
            for batch in loader:
                got.append(batch)
    assert plain_batches(got) == expected
    assert type(raised.value.__cause__) is type(collate_error.value)


@pytest.mark.parametrize("options,message", [
    (dict(multiprocessing_context="forkserver"), "'forkserver' is not offered"),
    (dict(multiprocessing_context="fork"), "num_workers=0 loads in the calling thread"),
    (dict(multiprocessing_context="fork", num_workers=2, worker_type="thread"),
     "worker_type='thread' runs threads"),
])
def test_multiprocessing_context_is_checked(options: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Loader(Indexed(10), **options)


def test_the_first_batch_is_described_in_the_datasets_terms(caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="data_workers"):
        with Loader(Numeric(), 4, num_workers=1, name="train") as loader:
            next(iter(loader))
    lines = [r.getMessage() for r in caplog.records if "first batch" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith("loader 'train': first batch: batch['image'] float32 (4, 3, 2, 2), "
                               "batch['mask'] bool (4, 2, 2), "), lines
    assert "batch_position" not in lines[0] and "objects" not in lines[0]


def test_worker_init_fn_runs_once_in_each_worker_before_its_first_batch() -> None:
    with Loader(InitSeen(), 2, num_workers=2, worker_type="process",
                worker_init_fn=record_init) as loader:
        batches = list(loader)
    # Each process has its own copy of the dataset, initialised by its own call.
    assert [b[1].tolist() + b[2].tolist() for b in batches] == [[1, 1, 0, 0], [1, 1, 1, 1]] * 2
    dataset = InitSeen()
    with Loader(dataset, 2, num_workers=2, worker_init_fn=record_init) as loader:
        list(loader)
    assert sorted(dataset.inits) == [0, 1]  # thread workers share the loader's dataset


# ----------------------------------------------------------------------------- exact resume

LENGTH, BATCH = 26, 4   # 7 batches per epoch, the last one short


def uninterrupted(epochs_: int = 3) -> List[List[int]]:
    with Loader(Indexed(LENGTH), BATCH, shuffle=True, num_workers=2, seed=21) as loader:
        return [b for _ in range(epochs_) for b in labels(list(loader))]


def run_until(loader: Loader, taken: int) -> Tuple[List[List[int]], Any]:
    """Take ``taken`` batches across epochs as a training loop does; then the state."""
    out: List[List[int]] = []
    while len(out) < taken:
        for batch in loader:
            out.append(batch[1].tolist())
            if len(out) == taken:
                break
    return out, loader.state_dict()


def finish(loader: Loader, total: int, done: int) -> List[List[int]]:
    """Resume a training loop with ``done`` batches behind it, up to ``total``."""
    out: List[List[int]] = []
    while done + len(out) < total:
        for batch in loader:
            out.append(batch[1].tolist())
            if done + len(out) == total:
                break
    return out


RESUME_CASES = [
    # cut after, first loader, resumed loader
    (0, (2, "thread"), (2, "thread")),
    (1, (2, "thread"), (3, "thread")),
    (5, (2, "process"), (0, "thread")),
    (7, (3, "thread"), (2, "process")),     # at the epoch boundary
    (9, (0, "thread"), (1, "thread")),
]


@pytest.mark.parametrize("cut,first,second", RESUME_CASES)
def test_resume_yields_what_an_uninterrupted_run_yields(cut: int, first: Any, second: Any) -> None:
    reference = uninterrupted()
    with Loader(Indexed(LENGTH), BATCH, shuffle=True, num_workers=first[0],
                worker_type=first[1], seed=21) as loader:
        before, state = run_until(loader, cut)
    assert before == reference[:cut]
    with Loader(Indexed(LENGTH), BATCH, shuffle=True, num_workers=second[0],
                worker_type=second[1]) as resumed:  # the seed comes from the state
        resumed.load_state_dict(state)
        assert finish(resumed, len(reference), cut) == reference[cut:]


def test_a_resume_of_a_resume_and_state_before_any_batch() -> None:
    reference = uninterrupted()
    state = Loader(Indexed(LENGTH), BATCH, shuffle=True, seed=21).state_dict()
    done: List[List[int]] = []
    for cut, workers in ((3, 2), (10, 1), (15, 3)):
        with Loader(Indexed(LENGTH), BATCH, shuffle=True, num_workers=workers) as loader:
            loader.load_state_dict(state)
            done += finish(loader, cut, len(done))
            state = loader.state_dict()
    assert done == reference[:15]


def test_load_state_dict_refuses_another_epoch_length() -> None:
    state = Loader(Indexed(LENGTH), BATCH).state_dict()
    with pytest.raises(ValueError, match="batches per epoch"):
        Loader(Indexed(LENGTH), BATCH + 1).load_state_dict(state)


# ----------------------------------------------------------------------------- iterable datasets


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_an_iterable_dataset_is_split_and_interleaved_as_dataloader_does(worker_type: str) -> None:
    # Worker 0 yields 0, 2, 4, ...; worker 1 yields 1, 3, ...: batches alternate
    # between them, and a worker that ends early is skipped.
    with Loader(Shards(11), 2, num_workers=2, worker_type=worker_type) as loader:
        for _ in range(2):  # two epochs, each a fresh pass
            got = [b.tolist() for b in loader]
            assert got == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9]]
    with Loader(Shards(11), 2, num_workers=2, drop_last=True) as loader:
        assert [b.tolist() for b in loader] == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10]]
    with Loader(Shards(5), 2) as loader:
        assert [b.tolist() for b in loader] == [[0, 1], [2, 3], [4]]
        assert len(loader) == 3


# ----------------------------------------------------------------------------- errors, prefetch


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_a_failing_sample_raises_at_the_next_batch_and_stops_the_loader(worker_type: str) -> None:
    loader = Loader(FailsAt(13), 4, num_workers=2, worker_type=worker_type)
    got: List[List[float]] = []
    with pytest.raises(FetcherError) as caught:
        for batch in loader:
            got.append(batch.tolist())
    assert got == [[float(i) for i in range(j, j + 4)] for j in range(0, 12, 4)]
    # Raised at its batch's turn, as DataLoader does: the batches before it arrive.
    assert isinstance(caught.value, DataInputError)
    assert isinstance(caught.value.__cause__, KeyError)
    assert "worker 1 raised KeyError" in str(caught.value)
    assert "batch 3 of epoch 0" in str(caught.value) and "no sample 13" in str(caught.value)
    assert loader.close() is True
    with pytest.raises(KeyError):  # num_workers=0: the dataset's own exception, as DataLoader
        list(Loader(FailsAt(1), 4))


def test_a_worker_process_that_dies_fails_the_loader_at_once() -> None:
    loader = Loader(DiesAt(9), 4, num_workers=2, worker_type="process")
    with pytest.raises(WorkerDiedError):
        list(loader)
    loader.close()  # raises nothing more: iteration raised the failure


def test_an_iterable_datasets_error_comes_in_its_workers_turn() -> None:
    with Loader(BrokenShards(), 1, num_workers=2) as loader:
        got = []
        with pytest.raises(FetcherError, match="in thread worker 1 raised OSError") as caught:
            for batch in loader:
                got.append(batch.tolist())
    assert got == [[0], [100], [1]]  # worker 0, worker 1, worker 0, then worker 1's turn
    assert isinstance(caught.value.__cause__, OSError)


def test_user_samplers_are_listed_per_epoch_without_touching_the_callers_rng() -> None:
    dataset = Indexed(30)
    # RandomSampler draws its seed from torch's global RNG: seeded from (seed, epoch).
    runs = []
    for workers, worker_type in ((0, "thread"), (2, "thread"), (2, "process")):
        torch.manual_seed(7)
        before = torch.rand(3)
        torch.manual_seed(7)
        with Loader(dataset, 4, sampler=torch.utils.data.RandomSampler(dataset),
                    num_workers=workers, worker_type=worker_type, seed=5) as loader:
            runs.append(epochs(loader, 2))
        assert torch.equal(torch.rand(3), before)  # the caller's RNG went on untouched
    assert runs[0] == runs[1] == runs[2] and runs[0][0] != runs[0][1]
    # set_epoch is called with the loader's epoch (DistributedSampler needs no call of yours).
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=1, seed=3)
    with Loader(dataset, 4, sampler=sampler, num_workers=2) as loader:
        got = epochs(loader, 2)
    for epoch in range(2):
        reference = torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=1, seed=3)
        reference.set_epoch(epoch)
        order = list(reference)
        assert got[epoch] == [order[i:i + 4] for i in range(0, len(order), 4)]


def test_prefetch_is_bounded_in_batches() -> None:
    dataset = Counting(400)
    with Loader(dataset, 4, num_workers=2, prefetch_factor=2) as loader:
        next(iter(loader))
    # Taken: 1; in the channel at most prefetch_factor per worker; 4 handed to
    # the sink and 1 in the enqueuer's hand, waiting for room there; one batch
    # being built by each worker; and the one sample read at the first iter()
    # to learn the batch's structure.  (A loaded run reached exactly this.)
    assert dataset.calls <= 4 * (1 + 2 * 2 + 4 + 1 + 2) + 1


def test_timeout_names_the_batch_it_waited_for_and_the_loader_stays_usable() -> None:
    dataset = Gate(blocked=5)
    with Loader(dataset, 2, num_workers=1, timeout=0.2) as loader:
        batches = iter(loader)
        assert [next(batches).tolist() for _ in range(2)] == [[0, 1], [2, 3]]
        with pytest.raises(TimeoutError, match="timed out after 0.2 seconds waiting for batch 2 "
                                               "of epoch 0"):
            next(batches)
        dataset.opened.set()
        # As after DataLoader's timeout, that iterator is done; the next is the next epoch.
        assert [b.tolist() for b in loader] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_next_on_the_loader_itself_says_to_use_iter() -> None:
    with pytest.raises(TypeError, match="iter"):
        next(Loader(Indexed(4), 2))  # type: ignore[call-overload]


# ----------------------------------------------------------------------------- skipped samples

#: Corrupt records of BadSamples(LENGTH, ...): 4..7 fill batch 1 of an unshuffled
#: epoch (every sample of it fails), 13 and 22 spoil one sample of their batch.
BAD = (4, 5, 6, 7, 13, 22)


def without_bad(batches: List[List[int]], bad: Any = BAD) -> List[List[int]]:
    """What a run that skips ``bad`` yields: each batch less those samples, empty ones gone."""
    kept = [[i for i in batch if i not in bad] for batch in batches]
    return [batch for batch in kept if batch]


@pytest.mark.parametrize("num_workers,worker_type", CONFIGS)
def test_failing_samples_are_left_out_and_everything_else_keeps_its_place(
        num_workers: int, worker_type: str) -> None:
    with Loader(Indexed(LENGTH), BATCH, num_workers=2) as clean:
        reference = epochs(clean, 2)
    with Loader(BadSamples(LENGTH, BAD), BATCH, num_workers=num_workers,
                worker_type=worker_type, max_fetch_failures=len(BAD) * 2) as loader:
        got = []
        for _ in range(2):
            batches = list(loader)
            # The features were collated from the same samples as the labels.
            assert all(b[0][:, 0].tolist() == [float(i) for i in b[1].tolist()] for b in batches)
            got.append(labels(batches))
        stats = loader.stats()
    # An epoch whose batch 1 lost every sample yields one batch less than len(loader).
    assert [len(e) for e in got] == [len(loader) - 1] * 2
    assert got == [without_bad(e) for e in reference]
    if num_workers:
        assert stats is not None and stats.fetch_failures == 2 * len(BAD)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_failing_first_sample_is_skipped_too(num_workers: int) -> None:
    # The loader reads one sample itself to learn the batch's structure.
    with Loader(BadSamples(LENGTH, [0, 1]), BATCH, num_workers=num_workers,
                max_fetch_failures=2) as loader:
        assert labels(list(loader))[0] == [2, 3]


def test_skipped_samples_are_logged_with_the_workers_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="data_workers"):
        with Loader(BadSamples(LENGTH, [13]), BATCH, num_workers=2, worker_type="process",
                    max_fetch_failures=1) as loader:
            list(loader)
    [record] = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert "dataset[13] in process worker 1 raised ValueError" in record.getMessage()
    assert "max_fetch_failures=1" in record.getMessage()
    assert record.exc_info is not None
    assert "in __getitem__" in str(record.exc_info[1].__cause__)  # the worker's traceback


@pytest.mark.parametrize("cut,first,second", [
    (2, (2, "thread"), (3, "thread")),     # right after the batch that lost 13
    (4, (2, "process"), (0, "thread")),
    (6, (0, "thread"), (2, "process")),    # across the epoch boundary
])
def test_a_resume_skips_the_same_samples_as_an_uninterrupted_run(cut: int, first: Any,
                                                                  second: Any) -> None:
    reference = without_bad(uninterrupted())
    options = {"shuffle": True, "max_fetch_failures": 0.5}
    with Loader(BadSamples(LENGTH, BAD), BATCH, num_workers=first[0], worker_type=first[1],
                seed=21, **options) as loader:
        before, state = run_until(loader, cut)
    assert before == reference[:cut]
    with Loader(BadSamples(LENGTH, BAD), BATCH, num_workers=second[0], worker_type=second[1],
                **options) as resumed:
        resumed.load_state_dict(state)
        assert finish(resumed, len(reference), cut) == reference[cut:]


@pytest.mark.parametrize("num_workers,worker_type", [(0, "thread"), (2, "thread"),
                                                     (2, "process")])
def test_the_failure_beyond_the_budget_raises_at_its_batchs_turn(num_workers: int,
                                                                 worker_type: str) -> None:
    loader = Loader(BadSamples(LENGTH, [5, 13]), BATCH, num_workers=num_workers,
                    worker_type=worker_type, max_fetch_failures=1)
    got: List[List[int]] = []
    with pytest.raises(FetcherError, match=r"after 1 samples skipped; max_fetch_failures=1") \
            as caught:
        for batch in loader:
            got.append(batch[1].tolist())
    assert got == [[0, 1, 2, 3], [4, 6, 7], [8, 9, 10, 11]]  # 5 skipped, 13 beyond
    message = str(caught.value)
    assert "ValueError" in message and "sample 13 of batch 3 of epoch 0" in message
    assert "record 13 is truncated" in message
    assert isinstance(caught.value.__cause__, ValueError)
    assert loader.close() is True


def test_a_fraction_counts_samples_after_the_first_hundred() -> None:
    # 3 bad of 300 samples: 1% <= 2%.  5 bad of the first 100: over 2% of 100.
    with Loader(BadSamples(300, [10, 150, 290]), 10, num_workers=2,
                max_fetch_failures=0.02) as loader:
        assert sum(len(b[1]) for b in loader) == 297
    with pytest.raises(FetcherError, match="after 2 samples skipped; max_fetch_failures=0.02"):
        list(Loader(BadSamples(300, [1, 2, 3]), 10, num_workers=2, max_fetch_failures=0.02))


def broken_collate(samples: List[Any]) -> Any:
    """Collates as DataLoader does, except a batch holding sample 9."""
    if any(label == 9 for _, label in samples):
        raise RuntimeError("collate_fn is broken")
    return default_collate(samples)


def test_collate_errors_and_iterable_datasets_are_never_skipped() -> None:
    with pytest.raises(FetcherError, match="collate_fn is broken"):
        list(Loader(Indexed(LENGTH), BATCH, num_workers=2, collate_fn=broken_collate,
                    max_fetch_failures=100))
    with Loader(BrokenShards(), 1, num_workers=2, max_fetch_failures=100) as loader:
        with pytest.raises(FetcherError, match="in thread worker 1 raised OSError"):
            list(loader)


def test_max_fetch_failures_is_checked() -> None:
    with pytest.raises(ValueError, match="max_fetch_failures"):
        Loader(Indexed(LENGTH), BATCH, max_fetch_failures=1.5)
