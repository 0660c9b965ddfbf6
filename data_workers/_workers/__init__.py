"""Fetcher backends: worker threads, worker processes and what crosses to them.

Imports only ``_core``; importing this package must stay cheap, since every
worker process imports ``data_workers._workers.child``.
"""
