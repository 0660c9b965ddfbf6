# The README's two commands: `make demo` and `make test`.  Each first builds what it
# needs from the lock files, when missing or older than the lock, setup.py or
# pyproject.toml:
#   .venv/     the Caffe2 leg:  CPython 3.9, torch 1.10.2 (with Caffe2), numpy 1.23
#              from requirements.txt
#   .venv311/  the modern leg:  CPython 3.11, torch 2.x (CPU), numpy 2.x, no Caffe2
#              from requirements-py311.txt (torch from pip's find-links / an extra
#              index: docs/development.md)
# `make demo` needs .venv/ only; `make test` runs both legs, one after the other.
#
#   make env         build or update .venv/ from requirements.txt (exactly the lock)
#   make env311      build or update .venv311/ from requirements-py311.txt
#   make test-caffe2 / make test-modern    one leg of `make test`
#   make lock        re-resolve requirements.in into requirements.txt (keeps current
#                    pins where they still fit; `make lock UPGRADE=1` takes the newest)
#   make lock311     the same for requirements-py311.in -> requirements-py311.txt
#   make docs        regenerate the benchmark tables, then build the site (strict)
#   make bench       measure every benchmark suite into docs/ (~15 min), then the tables;
#                    the torch Loader suite on both torch versions
#   make dist-check  build sdist + wheel, install the wheel into a fresh venv of each leg, run it
#   make typecheck   mypy on both legs
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
LOCK := requirements.txt
VENV311 := .venv311
PY311 := $(VENV311)/bin/python
PIP311 := $(PY311) -m pip --disable-pip-version-check
STAMP311 := $(VENV311)/.installed
LOCK311 := requirements-py311.txt
LOCK_TOOLS := .cache/lock-tools
UV_VERSION := 0.13.9
# Where `make lock311` finds the CPU build of torch (the index's Linux wheels are CUDA
# builds).  Installing needs no such setting here: pip's own configuration has it.
TORCH_FIND_LINKS ?= /opt/wheels

.PHONY: demo test test-caffe2 test-modern bench env env311 lock lock311 lock-tools docs \
	docs-tables dist-check typecheck clean-env

$(STAMP): $(LOCK) setup.py pyproject.toml scripts/build_env.sh scripts/find_python.sh \
		scripts/prune_env.py
	@bash scripts/build_env.sh $(VENV) 3.9 $(LOCK)

# The modern leg.  torch==2.13.0+cpu is not on the package index: pip takes it from
# its find-links (this machine's pip config: /opt/wheels) or from an extra index
# (elsewhere: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu), and checks
# it against the hash in the lock like every other file.
$(STAMP311): $(LOCK311) setup.py pyproject.toml scripts/build_env.sh scripts/find_python.sh \
		scripts/prune_env.py
	@bash scripts/build_env.sh $(VENV311) 3.11 $(LOCK311) "torch's CPU wheel comes from \
	pip's find-links or an extra index, see 'The modern leg' in docs/development.md"

env: $(STAMP)

env311: $(STAMP311)

demo: $(STAMP)
	$(PY) examples/digits_demo.py

# Both legs.  TEST_LEGS=overlap (the default) starts the modern leg beside the Caffe2
# leg, on 2 pytest workers, its report kept in $(MODERN_LOG) and printed once the
# Caffe2 leg's is done; TEST_LEGS=sequence runs them one after the other.  Most tests
# wait on processes, queues and timeouts rather than compute, so the overlap hides
# most of the modern leg (timings: docs/development.md).  Either leg failing fails
# `make test`.  The modern leg selects by marker; its conftest refuses a selection
# that misses a module (tests/conftest.py), and pytest's exit status 5 (no tests ran)
# is a failure like any other.
TEST_LEGS ?= overlap
# The Ray tests run in a pytest process of their own, after the rest of the Caffe2
# leg: a Ray session leaves threads and finalizers in the process that started it,
# and the xdist worker that had run them was the one that crashed, in 3 full runs
# of 7 beside two busy loops (then xdist hung replacing it).
RAY_TESTS := tests/test_ray_source.py
CAFFE2_LEG := --ignore=$(RAY_TESTS)
RAY_LEG := -n 0 $(RAY_TESTS)
MODERN_LOG := .cache/modern-leg.log
LEG_INFO = -c 'import sys, torch; print("Python %d.%d, torch %s" % (sys.version_info[:2] + (torch.__version__,)))'
test: $(STAMP) $(STAMP311)
	@set -u; rc=0; mkdir -p .cache; \
	if [ "$(TEST_LEGS)" = overlap ]; then \
	  echo "== modern leg: $(VENV311) ($$($(PY311) $(LEG_INFO))), in the background -> $(MODERN_LOG)"; \
	  $(PY311) -m pytest -m "not caffe2" -n 2 $(PYTEST_ARGS) > $(MODERN_LOG) 2>&1 & modern=$$!; \
	  trap 'kill $$modern 2>/dev/null; exit 130' INT TERM; \
	fi; \
	echo "== Caffe2 leg: $(VENV) ($$($(PY) $(LEG_INFO)))"; \
	$(PY) -m pytest $(CAFFE2_LEG) $(PYTEST_ARGS) || rc=1; \
	$(PY) -m pytest $(RAY_LEG) $(PYTEST_ARGS) || rc=1; \
	if [ "$(TEST_LEGS)" = overlap ]; then \
	  wait $$modern || rc=1; \
	  echo "== modern leg: $(VENV311) ($$($(PY311) $(LEG_INFO)))"; cat $(MODERN_LOG); \
	else \
	  echo "== modern leg: $(VENV311) ($$($(PY311) $(LEG_INFO)))"; \
	  $(PY311) -m pytest -m "not caffe2" $(PYTEST_ARGS) || rc=1; \
	fi; \
	exit $$rc

test-caffe2: $(STAMP)
	$(PY) -m pytest $(CAFFE2_LEG) $(PYTEST_ARGS); rc=$$?; \
	$(PY) -m pytest $(RAY_LEG) $(PYTEST_ARGS) && exit $$rc

test-modern: $(STAMP311)
	$(PY311) -m pytest -m "not caffe2" $(PYTEST_ARGS)

# Every suite (upstream vs ours, peers, torch Loader) into docs/, then the docs'
# tables from the new JSON files; a failed case stops before the tables.
# The torch Loader suite runs on both legs: torch 1.10.2 (torch_loader.json, with the
# rest) and torch 2.x (torch_loader_torch2.json); docs/torch.md shows them side by side.
bench: $(STAMP) $(STAMP311)
	$(PY) -m benchmarks.run --out docs
	$(PY311) -m benchmarks.run --only torch --out docs --torch-json torch_loader_torch2.json
	$(PY) -m benchmarks.doc_tables

# uv at UV_VERSION in .cache/ (LOCK_TOOLS), for both lock targets; replaced when
# another version is there.
lock-tools:
	@set -euo pipefail; \
	if [ ! -x $(LOCK_TOOLS)/bin/uv ] || [ "$$($(LOCK_TOOLS)/bin/uv --version)" != "uv $(UV_VERSION)" ]; then \
	  PY39=$$(bash scripts/find_python.sh 3.9); \
	  rm -rf $(LOCK_TOOLS); "$$PY39" -m venv $(LOCK_TOOLS); \
	  $(LOCK_TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION); \
	fi

# Resolves with uv (pinned here, installed into .cache/) against PyPI, for
# CPython 3.9 on Linux; writes every package, transitive ones and
# pip/setuptools/wheel included, with the hashes of its files.
lock: lock-tools
	@set -euo pipefail; \
	PY39=$$(bash scripts/find_python.sh 3.9); \
	$(LOCK_TOOLS)/bin/uv pip compile requirements.in --output-file $(LOCK) \
	  --python "$$PY39" --python-version 3.9 --python-platform x86_64-unknown-linux-gnu \
	  --generate-hashes --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade,)

# The same for the modern leg, for CPython 3.11; torch's CPU build from TORCH_FIND_LINKS
# (its hash is that file's: the same file as download.pytorch.org/whl/cpu serves).
lock311: lock-tools
	@set -euo pipefail; \
	$(LOCK_TOOLS)/bin/uv pip compile requirements-py311.in --output-file $(LOCK311) \
	  --python-version 3.11 --python-platform x86_64-unknown-linux-gnu \
	  --find-links $(TORCH_FIND_LINKS) \
	  --generate-hashes --custom-compile-command "make lock311" $(if $(UPGRADE),--upgrade,)

docs-tables: $(STAMP)
	$(PY) -m benchmarks.doc_tables

docs: docs-tables
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

dist-check: $(STAMP) $(STAMP311)
	$(PY) scripts/dist_check.py
	$(PY311) scripts/dist_check.py

# One mypy.ini; the modern leg checks against its own Python, numpy 2 and torch 2
# (a cache of its own: the two legs' stubs differ).
typecheck: $(STAMP) $(STAMP311)
	$(PY) -m mypy --config-file mypy.ini --cache-dir .cache/mypy --sqlite-cache
	$(PY311) -m mypy --config-file mypy.ini --python-version 3.11 --cache-dir .cache/mypy311 --sqlite-cache

clean-env:
	rm -rf $(VENV) $(VENV311)
