#!/usr/bin/env bash
# Prints the path of a Python 3.9 interpreter, or explains how to get one.
# torch==1.10.2, the last release with Caffe2's Python bindings, supports
# Python 3.6-3.9 only.
set -u
candidates=()
[ -n "${PYTHON39:-}" ] && candidates+=("$PYTHON39")
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root 2>/dev/null)
  for d in "$root"/versions/3.9*; do [ -x "$d/bin/python" ] && candidates+=("$d/bin/python"); done
fi
candidates+=(python3.9 /usr/bin/python3.9 /usr/local/bin/python3.9)
for c in "${candidates[@]}"; do
  if out=$(PYENV_VERSION=3.9.18 "$c" -c 'import sys; print(sys.version_info[:2] == (3, 9))' 2>/dev/null) \
     && [ "$out" = "True" ]; then
    PYENV_VERSION=3.9.18 "$c" -c 'import sys; print(sys.executable)'
    exit 0
  fi
done
cat >&2 <<'MSG'
error: no Python 3.9 found.
data_workers runs on torch==1.10.2, the last PyTorch with Caffe2's Python
bindings, which needs Python 3.6-3.9. Install one, for example:
    pyenv install 3.9.18
or set PYTHON39=/path/to/python3.9 and run make again.
MSG
exit 1
