# The README's two commands: `make demo` and `make test`.  Each first builds
# .venv/ from the lock file (requirements.txt) when it is missing or older than
# the lock, setup.py or pyproject.toml.
#
#   make env         build or update .venv/ from requirements.txt (exactly the lock)
#   make lock        re-resolve requirements.in into requirements.txt (keeps current
#                    pins where they still fit; `make lock UPGRADE=1` takes the newest)
#   make docs        regenerate the benchmark tables, then build the site (strict)
#   make bench       measure every benchmark suite into docs/ (~12 min), then the tables
#   make dist-check  build sdist + wheel, install the wheel into a fresh venv, run it
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
LOCK := requirements.txt
LOCK_TOOLS := .cache/lock-tools
UV_VERSION := 0.13.9

.PHONY: demo test bench env lock docs docs-tables dist-check typecheck clean-env

$(STAMP): $(LOCK) setup.py pyproject.toml scripts/find_python39.sh scripts/prune_env.py
	@set -euo pipefail; \
	if [ ! -x "$(PY)" ] || ! "$(PY)" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))'; then \
	  PY39=$$(bash scripts/find_python39.sh); \
	  rm -rf $(VENV); \
	  echo "creating $(VENV) with $$PY39"; \
	  "$$PY39" -m venv $(VENV); \
	fi; \
	echo "installing $(LOCK) into $(VENV)"; \
	$(PIP) install --quiet --require-hashes --no-deps -r $(LOCK); \
	$(PY) scripts/prune_env.py $(LOCK); \
	$(PIP) install --quiet --no-deps --no-build-isolation -e .; \
	$(PIP) check; \
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(PY) examples/digits_demo.py

test: $(STAMP)
	$(PY) -m pytest

# Every suite (upstream vs ours, peers, torch Loader) into docs/, then the docs'
# tables from the new JSON files; a failed case stops before the tables.
bench: $(STAMP)
	$(PY) -m benchmarks.run --out docs
	$(PY) -m benchmarks.doc_tables

# Resolves with uv (pinned here, installed into .cache/) against PyPI, for
# CPython 3.9 on Linux; writes every package, transitive ones and
# pip/setuptools/wheel included, with the hashes of its files.
lock:
	@set -euo pipefail; \
	PY39=$$(bash scripts/find_python39.sh); \
	if [ ! -x $(LOCK_TOOLS)/bin/uv ] || [ "$$($(LOCK_TOOLS)/bin/uv --version)" != "uv $(UV_VERSION)" ]; then \
	  rm -rf $(LOCK_TOOLS); "$$PY39" -m venv $(LOCK_TOOLS); \
	  $(LOCK_TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION); \
	fi; \
	$(LOCK_TOOLS)/bin/uv pip compile requirements.in --output-file $(LOCK) \
	  --python "$$PY39" --python-version 3.9 --python-platform x86_64-unknown-linux-gnu \
	  --generate-hashes --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade,)

docs-tables: $(STAMP)
	$(PY) -m benchmarks.doc_tables

docs: docs-tables
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

dist-check: $(STAMP)
	$(PY) scripts/dist_check.py

typecheck: $(STAMP)
	$(PY) -m mypy --config-file mypy.ini --cache-dir .cache/mypy --sqlite-cache

clean-env:
	rm -rf $(VENV)
