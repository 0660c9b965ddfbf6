# The README's two commands: `make demo` and `make test`.  Each builds .venv/
# first when it is missing or older than requirements.txt / setup.py.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench env clean-env

$(STAMP): requirements.txt setup.py scripts/find_python39.sh
	@set -euo pipefail; \
	if [ ! -x "$(PY)" ] || ! "$(PY)" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 9))'; then \
	  PY39=$$(bash scripts/find_python39.sh); \
	  rm -rf $(VENV); \
	  echo "creating $(VENV) with $$PY39"; \
	  "$$PY39" -m venv $(VENV); \
	fi; \
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip==24.0 setuptools wheel; \
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt; \
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .; \
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(PY) examples/digits_demo.py

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.run --out docs

clean-env:
	rm -rf $(VENV)
