"""Each upstream defect we fix, shown side by side: the same test on both modules.

The upstream runs are ``xfail(strict=True)``: the test must fail on
``caffe2.python.data_workers`` (proving the defect is real) and pass on ours.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from caffe2.python import core, workspace

import data_workers
from util import TaggedFetcher, check_tagged

pytestmark = pytest.mark.timeout(120)


def _module(which):
    if which == "upstream":
        from caffe2.python import data_workers as upstream

        return upstream
    return data_workers


BOTH = [pytest.param("ours"),
        pytest.param("upstream", marks=pytest.mark.xfail(strict=True, reason="upstream defect"))]


@pytest.mark.parametrize("which", BOTH)
def test_back_pressure_loses_no_rows(ws, which):
    """Upstream drops a re-batched chunk's leftover rows when its buffer is full."""
    mod = _module(which)
    net = core.Net("loss_" + which)
    coord = mod.init_data_input_workers(net, ["data", "label"], TaggedFetcher(max_rows=100), 32,
                                        2, input_source_name="loss_" + which,
                                        max_buffered_batches=2, timeout=10)
    coord.start()
    workspace.CreateNet(net)
    batches = []
    try:
        for _ in range(150):
            workspace.RunNet(net.Proto().name)
            batches.append([workspace.FetchBlob("data"), workspace.FetchBlob("label")])
    finally:
        coord.stop()
    check_tagged(batches)


class ShapeChange:
    def __init__(self):
        self.calls = 0

    def __call__(self, worker_id, batch_size):
        self.calls += 1
        width = 3 if self.calls < 4 else 5
        return [np.zeros((20, width)), np.zeros((20,), np.int32)]


@pytest.mark.parametrize("which", BOTH)
# Upstream's enqueuer thread dies with an unhandled exception: that is the defect.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_shape_change_fails_the_net_within_a_second(ws, which):
    """Upstream's enqueuer thread dies silently; the net then waits out its timeout."""
    mod = _module(which)
    net = core.Net("shape_" + which)
    coord = mod.init_data_input_workers(net, ["data", "label"], ShapeChange(), 32, 1,
                                        input_source_name="shape_" + which, timeout=3)
    coord.start()
    workspace.CreateNet(net)
    took = None
    try:
        for _ in range(5):
            started = time.monotonic()
            try:
                workspace.RunNet(net.Proto().name)
            except RuntimeError:
                took = time.monotonic() - started
                break
    finally:
        try:
            coord.stop()
        except data_workers.ChunkValueError:
            pass
    assert took is not None and took < 2.0  # upstream waits out its 3 s timeout
