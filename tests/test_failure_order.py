"""What a worker produced before it failed reaches the consumer before its failure.

NOTE [ Shutdown and error protocol ], rule 10 (``data_workers/_core/coordinator.py``):
for thread and process workers, in arrival and in deterministic order, the Caffe2 net
and the torch loop first receive every whole batch of the rows a failing worker queued
before its exception, in order, then the failure, promptly.  The consumer starts only
once the fetcher has raised, so the failure is known while those batches still wait.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import pytest
import torch
from caffe2.python import core

import data_workers
from data_workers.torch import Loader
from fault_util import (PROMPT_SECS, FailAfterChunks, FlakyDiskError, make_input, run_until_error,
                        wait_for, worker_type)  # noqa: F401  (fixture)
from util import check_tagged

#: 12 chunks of 4 rows, 6 batches of 8, then the failure: 4 batches fill the queue
#: (max_buffered_batches), 4 chunks the channel; nothing waits on the consumer.
CHUNKS, ROWS, BATCH = 12, 4, 8


@pytest.mark.parametrize("deterministic", [False, True], ids=["arrival", "deterministic"])
def test_net_gets_every_batch_before_the_failure(worker_type: str, deterministic: bool,
                                                 tmp_path: Path) -> None:
    marker = str(tmp_path / "raised")
    net = core.Net("order_%s_%d" % (worker_type, deterministic))
    coord = make_input(net, FailAfterChunks(CHUNKS, ROWS, marker), batch_size=BATCH,
                       num_worker_threads=1, max_buffered_batches=4, worker_type=worker_type,
                       deterministic=deterministic, timeout=30)
    coord.start()
    wait_for(lambda: os.path.exists(marker), 30, "the fetcher to raise")
    batches, net_error, secs = run_until_error(net)
    assert net_error is not None, "the net kept running although the fetcher raised"
    assert secs < PROMPT_SECS, "RunNet waited %.1f s for a failed input" % secs
    (worker,) = coord.get_worker_ids()[-1:]
    assert check_tagged(batches, batch_size=BATCH) == {worker: CHUNKS * ROWS}
    with pytest.raises(data_workers.FetcherError) as info:
        coord.stop()
    assert isinstance(info.value.__cause__, FlakyDiskError)
    assert info.value.worker_id == worker


def test_loader_gets_every_batch_before_the_failure(worker_type: str, tmp_path: Path) -> None:
    marker = str(tmp_path / "raised")
    loader = Loader(FailAfterChunks(CHUNKS, ROWS, marker), BATCH, 1, worker_type=worker_type,
                    names=["data", "label"], max_buffered_batches=4, timeout=30)
    got: List[List[torch.Tensor]] = [list(next(loader))]
    wait_for(lambda: os.path.exists(marker), 30, "the fetcher to raise")
    with pytest.raises(data_workers.FetcherError) as info:
        for batch in loader:
            got.append(list(batch))
    assert isinstance(info.value.__cause__, FlakyDiskError)
    assert list(check_tagged([[t.numpy() for t in b] for b in got], batch_size=BATCH).values()
                ) == [CHUNKS * ROWS]
    assert loader.close() is True
