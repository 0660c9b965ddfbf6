#!/usr/bin/env bash
# Usage: find_python.sh 3.9|3.11
# Prints the path of a CPython of that minor version, or explains how to get one.
#   3.9:  the Caffe2 leg (.venv/): torch==1.10.2, the last PyTorch with Caffe2's
#         Python bindings, has wheels for CPython 3.6-3.9 only.  Override: PYTHON39.
#   3.11: the modern leg (.venv311/): torch 2.x CPU, numpy 2.x.  Override: PYTHON311.
set -u
want=${1:?usage: find_python.sh 3.9|3.11}
var=PYTHON${want/./}
candidates=()
[ -n "${!var:-}" ] && candidates+=("${!var}")
pyenv_version=
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root 2>/dev/null)
  for d in "$root"/versions/"$want".*; do
    if [ -x "$d/bin/python" ]; then
      candidates+=("$d/bin/python")
      pyenv_version=${pyenv_version:-$(basename "$d")}
    fi
  done
fi
candidates+=("python$want" "/usr/bin/python$want" "/usr/local/bin/python$want")
# PYENV_VERSION: a pyenv shim named python3.X answers only for a selected version.
check="import sys; print('.'.join(map(str, sys.version_info[:2])) == '$want' and sys.implementation.name == 'cpython')"
for c in "${candidates[@]}"; do
  if out=$(PYENV_VERSION=${pyenv_version:-system} "$c" -c "$check" 2>/dev/null) && [ "$out" = "True" ]; then
    PYENV_VERSION=${pyenv_version:-system} "$c" -c 'import sys; print(sys.executable)'
    exit 0
  fi
done
cat >&2 <<MSG
error: no CPython $want found.
Install one, for example:
    pyenv install $want
or set $var=/path/to/python$want and run make again.
MSG
case $want in
  3.9) echo "(the Caffe2 leg needs torch==1.10.2, the last PyTorch with Caffe2, which has wheels for Python 3.6-3.9 only)" >&2 ;;
esac
exit 1
