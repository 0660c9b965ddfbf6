"""Benchmark suite: ``data_workers`` vs ``caffe2.python.data_workers``, same run.

Run ``python -m benchmarks.run`` (``--quick`` for a smoke run, ``--out DIR`` for the
JSON and PNG). Every case runs in a fresh interpreter (see ``_harness``); each
workload is one module with ``plan`` (parent side), ``measure`` (child side),
``summarize`` and ``plot``:

- ``small_chunks``: 1-64-row chunks re-batched to 32, 2 workers.
- ``large_batches``: 32x3x224x224 float32 batches vs ``np.copyto`` bandwidth.
- ``gil_bound``: ~5 ms pure-Python fetchers, threads vs processes, 1..4 workers.
- ``startup``: ``start()`` to the first batch in the net.

``python -m benchmarks.profile`` runs one configuration under py-spy and says where
its time goes; ``python -m benchmarks.copy_threads`` compares one- and two-thread copy
bandwidth into rotating batch tensors (why large pieces are split).

Module-level imports here and in the workload modules stay light (numpy only):
spawned worker processes import them to unpickle fetchers.
"""
