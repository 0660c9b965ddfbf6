"""Keeps ``__all__`` honest: everything listed exists, everything public is listed."""

from __future__ import annotations

import types

import pytest

import data_workers
from data_workers import parallel_workers
from legs import HAVE_CAFFE2

#: Names of the Caffe2 drop-in: without Caffe2 they raise an ImportError naming the extra.
CAFFE2_NAMES = {n for n, m in data_workers._EXPORTS.items() if m.startswith(("._api", "._caffe2"))}


def _public(module: types.ModuleType):
    return {n for n, v in vars(module).items()
            if not n.startswith("_") and not isinstance(v, types.ModuleType)
            and getattr(v, "__module__", module.__name__).startswith("data_workers")} 


def test_all_lists_exactly_the_public_names():
    assert sorted(set(data_workers.__all__)) == sorted(data_workers.__all__)
    # Exports resolve lazily: after resolving them all, no other public name may appear.
    # Without Caffe2 the drop-in's names raise ImportError (not AttributeError: the
    # name exists, its dependency does not), so hasattr() raises too.
    for name in data_workers.__all__:
        if name in CAFFE2_NAMES and not HAVE_CAFFE2:
            with pytest.raises(ImportError, match=r"data_workers\[caffe2\]"):
                getattr(data_workers, name)
        else:
            assert hasattr(data_workers, name), name

    exported = set(data_workers.__all__)
    unlisted = {n for n in _public(data_workers) if n not in exported} - {"annotations"}
    assert not unlisted, "public but not in __all__: %s" % sorted(unlisted)


def test_worker_processes_do_not_import_caffe2():
    import subprocess
    import sys

    code = ("import sys, data_workers._workers.child; "
            "sys.exit(any(m.startswith('caffe2') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_worker_asks_for_the_parent_death_signal_before_its_slow_imports():
    # boot.py, the worker's entry point, must import nothing slow before it asks
    # the kernel for the parent-death signal (a worker stopped until then would
    # outlive its trainer).
    import subprocess
    import sys

    code = ("import sys, data_workers._workers.boot as boot; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'cloudpickle', 'torch', 'caffe2') or m.startswith('data_workers._')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["['data_workers._workers',", "'data_workers._workers.boot']"], out


def test_parallel_workers_all():
    for name in parallel_workers.__all__:
        assert hasattr(parallel_workers, name), name


def test_typed_package():
    import os

    assert os.path.exists(os.path.join(os.path.dirname(data_workers.__file__), "py.typed"))
