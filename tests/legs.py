"""Which leg of the suite this is, and Caffe2's modules where that leg has them.

``make test`` runs two legs (see docs/development.md):

* the Caffe2 leg: ``.venv/`` (CPython 3.9, torch 1.10.2 with Caffe2, numpy 1.23),
  every test;
* the modern leg: ``.venv311/`` (CPython 3.11, torch 2.x CPU, numpy 2.x), which has no
  Caffe2, and runs ``pytest -m "not caffe2"``: every test that does not need it.

Helpers shared by both legs import ``core`` and ``workspace`` from here; on the modern
leg they are ``None``, and only tests marked ``caffe2`` (which that leg never selects,
see ``conftest.py``) may reach them.
"""

from __future__ import annotations

from typing import Any

core: Any
workspace: Any
try:
    from caffe2.python import core, workspace
except ImportError:  # the modern leg: torch 2.x ships no Caffe2
    core = workspace = None

HAVE_CAFFE2 = workspace is not None
