"""The package's annotations are checked by mypy (settings in mypy.ini).

The cache lives in ``.cache/mypy`` (git-ignored) and persists between runs: a fresh
clone pays for one full check (about 40 s, mostly reading numpy's, torch's and ray's
annotations), later runs re-check only what changed (about 1.5 s). mypy invalidates
entries itself when a file, its version or an option changes. The cache is SQLite, so a
concurrent run waits for the other's transaction instead of reading a half-written file.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: One cache per leg (make typecheck uses the same two): their numpy and torch stubs differ.
CACHE_DIR = os.path.join(ROOT, ".cache", "mypy" if sys.version_info[:2] == (3, 9) else "mypy311")


@pytest.mark.timeout(300)
def test_mypy_clean():
    pytest.importorskip("mypy")
    os.makedirs(CACHE_DIR, exist_ok=True)
    # mypy.ini says 3.9 (the oldest tested); each leg checks against its own Python.
    version = "%d.%d" % sys.version_info[:2]
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "mypy.ini",
                             "--python-version", version, "--cache-dir", CACHE_DIR, "--sqlite-cache"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
