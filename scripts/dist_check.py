"""Builds the sdist and the wheel, installs the wheel into a new venv, and runs it there.

Usage: ``.venv/bin/python scripts/dist_check.py [--keep DIR]`` (``make dist-check`` runs it
with each leg's interpreter, ``.venv`` and ``.venv311``; ``tests/test_packaging.py`` with
the one running the tests). Exits 0 when every step passed.

Steps, all in a temporary directory (nothing is downloaded):

1. ``python -m build --no-isolation``: the sdist, then the wheel built *from the sdist*,
   so a file missing from the sdist shows up as a broken wheel. The build backend comes
   from the project's own environment (the lock pins setuptools and wheel).
2. A new, empty venv (``--without-pip``). A ``.pth`` file makes the project
   environment's site-packages visible *after* the venv's own, so the pinned
   dependencies (torch, numpy, ...) are found without installing them again, while
   ``data_workers`` can only come from the wheel: a path listed in a ``.pth`` file is
   added as it is, its own ``.pth`` files (the editable install's) are not run.
3. ``pip --python <venv> install --no-deps --no-index <wheel>``.
4. In the venv, from outside the repository: ``import data_workers`` (which must come
   from the venv), the metadata checks, a ``data_workers.torch.Loader`` with thread and
   process workers, and, where the environment has Caffe2, ``examples/minimal.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from typing import Any, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the built distributions must (and must not) contain.
SDIST_MUST_HAVE = ["setup.py", "pyproject.toml", "README.md", "LICENSE",
                   "data_workers/__init__.py", "data_workers/py.typed"]
WHEEL_MUST_HAVE = ["data_workers/__init__.py", "data_workers/py.typed",
                   "data_workers/_workers/child.py"]
WHEEL_MUST_NOT_HAVE_PREFIXES = ["tests/", "benchmarks/", "examples/", "docs/"]

# Run inside the new venv: the package comes from the wheel, and its metadata is truthful.
IMPORT_CHECK = r"""
import os, sys
from importlib import metadata
import data_workers
venv = sys.argv[1]
where = os.path.realpath(data_workers.__file__)
assert where.startswith(os.path.realpath(venv) + os.sep), "data_workers imported from " + where
md = metadata.metadata("data_workers")
assert md["Requires-Python"] == ">=3.8", md["Requires-Python"]
assert md["Version"] == data_workers.__version__, (md["Version"], data_workers.__version__)
print("data_workers", data_workers.__version__, "from", where)
import traceback
line = traceback.format_exception_only(data_workers.FetcherError, data_workers.FetcherError("x"))[-1]
assert line == "data_workers.FetcherError: x\n", line
"""


# Run inside the new venv: a Loader over both backends delivers every row once.
LOADER_CHECK = r"""
import sys
import numpy as np
import torch
from data_workers.torch import Loader

def fetch(worker_id, batch_size):
    rows = np.arange(worker_id * 1000 + fetch.seq[worker_id], worker_id * 1000 + fetch.seq[worker_id] + 4)
    fetch.seq[worker_id] += 4
    return [rows.astype(np.float32), rows.astype(np.int64)]
fetch.seq = {0: 0, 1: 0}

for worker_type in ("thread", "process"):
    fetch.seq = {0: 0, 1: 0}
    with Loader(fetch, batch_size=8, names=["x", "y"], num_workers=2, worker_type=worker_type,
                deterministic=True) as loader:
        it = iter(loader)
        seen = [next(it) for _ in range(10)]
    x = torch.cat([b[0] for b in seen]).numpy()
    y = torch.cat([b[1] for b in seen]).numpy()
    assert x.dtype == np.float32 and y.dtype == np.int64, (x.dtype, y.dtype)
    assert len(set(y.tolist())) == len(y) == 80, "a row came twice"
    np.testing.assert_array_equal(x, y)
print("Loader (thread, process) on torch %s, numpy %s, Python %d.%d: 80 rows each, once"
      % ((torch.__version__, np.__version__) + sys.version_info[:2]))
"""


def run(cmd: Sequence[str], **kwargs: Any) -> None:
    shown = [a if len(a) < 80 else a.strip().splitlines()[0] + " ..." for a in cmd]
    print("$ " + " ".join(shown), flush=True)
    subprocess.run(list(cmd), check=True, **kwargs)


def check_members(names: List[str], must_have: Sequence[str], what: str,
                  must_not_have_prefixes: Sequence[str] = ()) -> None:
    missing = [m for m in must_have if m not in names]
    if missing:
        raise SystemExit(f"{what} lacks {missing}")
    stray = [n for n in names if any(n.startswith(p) for p in must_not_have_prefixes)]
    if stray:
        raise SystemExit(f"{what} should not contain {stray[:5]}")


def dist_check(work: str) -> None:
    t0 = time.monotonic()
    dist = os.path.join(work, "dist")
    # 1. sdist, then the wheel from the sdist.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT],
        stdout=subprocess.DEVNULL)
    sdists = [f for f in os.listdir(dist) if f.endswith(".tar.gz")]
    wheels = [f for f in os.listdir(dist) if f.endswith(".whl")]
    if len(sdists) != 1 or len(wheels) != 1:
        raise SystemExit(f"expected one sdist and one wheel in {dist}, got {os.listdir(dist)}")
    with tarfile.open(os.path.join(dist, sdists[0])) as tf:
        top = sdists[0][: -len(".tar.gz")] + "/"
        check_members([n[len(top):] for n in tf.getnames()], SDIST_MUST_HAVE, sdists[0])
    wheel = os.path.join(dist, wheels[0])
    with zipfile.ZipFile(wheel) as zf:
        check_members(zf.namelist(), WHEEL_MUST_HAVE, wheels[0], WHEEL_MUST_NOT_HAVE_PREFIXES)

    # 2. A new venv that sees the pinned dependencies after its own site-packages.
    venv = os.path.join(work, "venv")
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    vpy = os.path.join(venv, "bin", "python")
    vsite = subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    with open(os.path.join(vsite, "zz_project_env.pth"), "w") as f:
        f.write("\n".join(deps) + "\n")

    # 3. The wheel, and nothing else.  Without PYTHONPATH: pip would take a checkout on
    # it for data_workers already installed, and install nothing.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", vpy,
         "install", "--quiet", "--no-deps", "--no-index", wheel], env=env)

    # 4. Use it from outside the repository.
    outside = os.path.join(work, "cwd")
    os.makedirs(outside)
    run([vpy, "-c", IMPORT_CHECK, venv], cwd=outside, env=env)
    run([vpy, "-c", LOADER_CHECK], cwd=outside, env=env)
    if importlib.util.find_spec("caffe2") is not None:  # the Caffe2 leg
        run([vpy, os.path.join(ROOT, "examples", "minimal.py")], cwd=outside, env=env)
    print(f"dist-check passed in {time.monotonic() - t0:.1f} s: {sdists[0]}, {wheels[0]}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", metavar="DIR", help="work in DIR (kept) instead of a temporary one")
    args = p.parse_args(argv)
    if args.keep:
        os.makedirs(args.keep, exist_ok=False)
        dist_check(args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="dw_dist_check_") as work:
            dist_check(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
