"""Time-major inputs for a recurrent net: ``batch_columns=[1, 1, 0]``.

Caffe2's recurrent ops (here `rnn_cell.LSTM`) take sequences time-major,
``(T, N, features)``, with the batch in column 1, while the per-sequence lengths are a
plain ``(N,)`` vector. ``batch_columns`` tells the library which axis of each blob holds
the rows, so it re-batches along axis 1 for "data" and "target" and along axis 0 for
"seq_lengths", keeping the three aligned.

Each sequence is written so that it can be recognised afterwards: all its features and
targets equal its length, so the loop checks the alignment on every batch.

Run: ``python examples/rnn_time_major.py [--fast]``
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

import numpy as np

import data_workers
from caffe2.python import model_helper, rnn_cell, workspace

MAX_STEPS = 12  # T: sequences are padded to this many time steps
FEATURES = 3
HIDDEN = 8
BATCH_SIZE = 16


def fetch_sequences(worker_id: int, batch_size: int) -> List[np.ndarray]:
    """A chunk of 1..2*batch_size padded sequences, time-major."""
    n = np.random.randint(1, 2 * batch_size + 1)
    lengths = np.random.randint(1, MAX_STEPS + 1, size=n).astype(np.int32)
    data = np.zeros((MAX_STEPS, n, FEATURES), dtype=np.float32)
    target = np.zeros((MAX_STEPS, n), dtype=np.int32)
    for i, length in enumerate(lengths):
        data[:length, i, :] = length
        target[:length, i] = length
    return [data, target, lengths]


def check_batch(data: np.ndarray, target: np.ndarray, lengths: np.ndarray) -> None:
    """Raise if the three blobs of a batch do not describe the same sequences."""
    if data.shape != (MAX_STEPS, BATCH_SIZE, FEATURES) or lengths.shape != (BATCH_SIZE,):
        raise RuntimeError(f"bad shapes: data {data.shape}, lengths {lengths.shape}")
    if not (np.array_equal(data[0, :, 0], lengths) and np.array_equal(target[0], lengths)):
        raise RuntimeError("rows of data, target and seq_lengths were mixed up")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--fast", action="store_true", help="run 10 iterations")
    args = parser.parse_args(argv)
    iterations = 10 if args.fast else args.iterations

    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])
    workspace.ResetWorkspace()  # the example owns the workspace

    model = model_helper.ModelHelper(name="rnn_time_major")
    coordinator = data_workers.init_data_input_workers(
        model.net, ["data", "target", "seq_lengths"], fetch_sequences, BATCH_SIZE,
        num_worker_threads=2, input_source_name="sequences",
        batch_columns=[1, 1, 0],
    )
    # Zero initial states, shaped (1, N, HIDDEN) as the LSTM expects.
    for state in ("hidden_init", "cell_init"):
        model.param_init_net.ConstantFill([], state, shape=[1, BATCH_SIZE, HIDDEN], value=0.0)
    outputs = rnn_cell.LSTM(
        model, "data", "seq_lengths", ("hidden_init", "cell_init"),
        dim_in=FEATURES, dim_out=HIDDEN, scope="lstm",
    )
    hidden_all = outputs[0]  # (T, N, HIDDEN): the hidden state at every time step
    workspace.RunNetOnce(model.param_init_net)
    workspace.CreateNet(model.net)

    coordinator.start()
    try:
        for _ in range(iterations):
            workspace.RunNet(model.net.Proto().name)
            check_batch(workspace.FetchBlob("data"), workspace.FetchBlob("target"),
                        workspace.FetchBlob("seq_lengths"))
        hidden_shape = workspace.FetchBlob(hidden_all).shape
    finally:
        coordinator.stop()
    print(f"ran {iterations} time-major batches: data {(MAX_STEPS, BATCH_SIZE, FEATURES)}, "
          f"seq_lengths ({BATCH_SIZE},), LSTM output {hidden_shape}; rows stayed aligned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
