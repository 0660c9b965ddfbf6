"""The environment, the package and its metadata: what a fresh checkout and a user get.

- each leg's environment is its lock file (requirements.txt: the Caffe2 leg;
  requirements-py311.txt: the modern leg), and torch imports beside Caffe2 in the first;
- the sdist and the wheel build, and the wheel runs in a new venv (scripts/dist_check.py);
- public exceptions print as ``data_workers.FetcherError``, the import path to use.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sysconfig
import sys
import traceback
from importlib import metadata

import pytest

import data_workers
from legs import HAVE_CAFFE2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: This leg's lock file.
LOCK = "requirements.txt" if HAVE_CAFFE2 else "requirements-py311.txt"


def _locked_versions() -> dict:
    pins = {}
    with open(os.path.join(ROOT, LOCK), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
            if m:
                pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


@pytest.mark.caffe2
def test_torch_imports_beside_caffe2():
    # torch 1.10.2 imports pkg_resources at start-up: an unpinned setuptools (81+) broke it.
    code = ("from caffe2.python import workspace; import torch; import torch.utils.data; "
            "import data_workers; data_workers.init_data_input_workers; "
            "print(torch.__version__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("1.10.2")


def test_environment_is_the_lock():
    pins = _locked_versions()
    for name in ("pip", "setuptools", "wheel", "torch", "numpy", "mkdocs"):
        assert name in pins, f"{name} is not pinned in {LOCK}"
    assert int(pins["setuptools"].split(".")[0]) < 81
    if HAVE_CAFFE2:
        assert pins["torch"] == "1.10.2" and pins["numpy"].startswith("1.")
    else:
        assert pins["torch"].startswith("2.") and pins["torch"].endswith("+cpu")
        assert pins["numpy"].startswith("2.")
    # The environment's own site-packages only: once torch imported pkg_resources,
    # setuptools' _vendor folder is on sys.path too, with older copies of
    # packaging, tomli, wheel and zipp.
    site_packages = sysconfig.get_paths()["purelib"]
    installed = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
                 for d in metadata.distributions(path=[site_packages])}
    wrong = {n: (v, installed.get(n)) for n, v in pins.items() if installed.get(n) != v}
    assert not wrong, f"locked vs installed (run `make env` / `make env311`): {wrong}"
    extra = set(installed) - set(pins) - {"data-workers"}
    assert not extra, f"installed but not in {LOCK}: {sorted(extra)}"


def test_pip_check_is_clean():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


#: The extras each leg's lock satisfies: all of them on the Caffe2 leg; the modern leg
#: has torch 2.x and numpy 2.x, so neither Caffe2 nor Ray (whose tests need Caffe2).
LEG_EXTRAS = ({"torch", "caffe2", "ray", "demo", "bench", "test", "docs"} if HAVE_CAFFE2
              else {"torch", "demo", "bench", "test", "docs"})


def _installed() -> metadata.Distribution:
    """data_workers as the environment installed it (``make env``).  Not looked up on
    sys.path: ``python -m pytest`` puts the checkout there, and a ``data_workers.egg-info``
    that a build left in it (stale, or being rewritten by the other leg's sdist build)
    would answer instead."""
    site_packages = sysconfig.get_paths()["purelib"]
    return next(iter(metadata.distributions(name="data_workers", path=[site_packages])))


def test_every_extra_is_satisfied_by_the_environment():
    from packaging.requirements import Requirement

    md = _installed().metadata
    assert md["Requires-Python"] == ">=3.8"
    assert set(md.get_all("Provides-Extra")) == {"torch", "caffe2", "ray", "demo", "bench", "test", "docs"}
    checked = set()
    for text in _installed().requires or []:
        req = Requirement(text)
        extra = next((e for e in md.get_all("Provides-Extra") if req.marker and req.marker.evaluate({"extra": e})), None)
        if req.marker and extra not in LEG_EXTRAS:
            continue
        checked.add(extra)
        version = metadata.version(req.name)
        assert req.specifier.contains(version, prereleases=True), (text, version)
    assert checked == LEG_EXTRAS | {None}  # None: the core's own requirements


def test_core_needs_neither_torch_nor_caffe2():
    """What `pip install data_workers` alone installs: numpy and cloudpickle."""
    from packaging.requirements import Requirement

    requires = _installed().requires or []
    core = sorted(Requirement(t).name for t in requires if Requirement(t).marker is None)
    assert core == ["cloudpickle", "numpy"]
    caffe2 = {Requirement(t).name: str(Requirement(t).specifier)
              for t in requires
              if Requirement(t).marker and Requirement(t).marker.evaluate({"extra": "caffe2"})}
    assert caffe2["torch"] == "==1.10.2" and caffe2["numpy"] == "<1.24"


@pytest.mark.timeout(120)
def test_wheel_installs_and_runs_in_a_new_venv():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "dist_check.py")],
                            capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "dist-check passed" in result.stdout


def _public_exceptions():
    # Exceptions live in the core (_errors.py): none of them needs Caffe2.
    names = [n for n, m in data_workers._EXPORTS.items() if m.endswith("errors")]
    return [getattr(data_workers, n) for n in names
            if isinstance(getattr(data_workers, n), type)
            and issubclass(getattr(data_workers, n), BaseException)]


def test_public_exceptions_print_with_the_import_path_to_use():
    exceptions = _public_exceptions()
    assert data_workers.FetcherError in exceptions and len(exceptions) >= 8
    for cls in exceptions:
        assert cls.__module__ == "data_workers", cls
        assert getattr(data_workers, cls.__name__) is cls
    line = traceback.format_exception_only(data_workers.FetcherError,
                                           data_workers.FetcherError("boom"))[-1]
    assert line == "data_workers.FetcherError: boom\n"


def test_public_exceptions_still_pickle():
    # Process workers send validation errors back pickled; the class is found by name.
    err = data_workers.WorkerDiedError("gone", pid=7, exitcode=-9, signal_name="SIGKILL")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is data_workers.WorkerDiedError and back.pid == 7
    value_error = pickle.loads(pickle.dumps(data_workers.ChunkValueError("rows")))
    assert isinstance(value_error, ValueError) and str(value_error) == "rows"
