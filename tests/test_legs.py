"""The two legs of the suite (``legs.py``): every test module is on a list, and the
Caffe2 API says what to install where Caffe2 is missing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import conftest

TESTS = Path(__file__).resolve().parent


def test_every_module_is_on_exactly_one_leg_list() -> None:
    modules = {p.name for p in TESTS.glob("test_*.py")}
    assert not conftest.CAFFE2_MODULES & conftest.MODERN_MODULES
    assert conftest.CAFFE2_MODULES | conftest.MODERN_MODULES == modules, (
        "add new test modules to CAFFE2_MODULES or MODERN_MODULES in tests/conftest.py")


def test_caffe2_modules_do_need_caffe2() -> None:
    """A module that imports no Caffe2 belongs to both legs."""
    for name in sorted(conftest.CAFFE2_MODULES):
        text = (TESTS / name).read_text(encoding="utf-8")
        assert "from caffe2" in text or "from util import" in text or "mark.caffe2" in text, name


def test_caffe2_api_without_caffe2_is_an_import_error_naming_the_extra() -> None:
    """On the modern leg Caffe2 is absent; on the Caffe2 leg an import hook hides it."""
    code = textwrap.dedent('''
        import sys

        class HideCaffe2:
            def find_spec(self, name, path=None, target=None):
                if name == "caffe2" or name.startswith("caffe2."):
                    raise ModuleNotFoundError("No module named %r" % name, name=name)
                return None

        sys.meta_path.insert(0, HideCaffe2())
        import data_workers
        from data_workers.torch import Loader  # needs no Caffe2
        data_workers.ShardedSource  # nor does the core
        try:
            data_workers.init_data_input_workers
        except ImportError as exc:
            print(exc)
        else:
            sys.exit("init_data_input_workers imported without Caffe2")
    ''')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'data_workers[caffe2]'" in out.stdout
    assert "init_data_input_workers" in out.stdout


def test_sources_compile_without_warnings() -> None:
    """An invalid escape such as ``"\\ "`` is a DeprecationWarning up to 3.11 and a
    SyntaxWarning from 3.12 (an error in a later release): none in the repository."""
    import warnings

    root = TESTS.parent
    sources = [p for tree in ("data_workers", "tests", "benchmarks", "examples", "scripts")
               for p in (root / tree).rglob("*.py")]
    assert len(sources) > 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in sources:
            compile(path.read_text(encoding="utf-8"), str(path), "exec")
