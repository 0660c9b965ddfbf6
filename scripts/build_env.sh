#!/usr/bin/env bash
# Build or update one test leg's virtual environment from its lock file (the Makefile's
# .venv and .venv311 recipes).
#
#   bash scripts/build_env.sh VENV PYTHON_VERSION LOCK [HINT]
#
# Creates VENV with CPython PYTHON_VERSION (scripts/find_python.sh) unless it has that
# version already, installs exactly LOCK (hash-checked, no dependency resolution),
# removes what the lock does not list, installs this checkout in editable mode and
# touches VENV/.installed.  HINT, if given, is printed when LOCK cannot be installed.
set -euo pipefail
venv=$1 version=$2 lock=$3 hint=${4:-}
py=$venv/bin/python
pip=("$py" -m pip --disable-pip-version-check)
if [ ! -x "$py" ] || ! "$py" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$version'.split('.'))))"; then
  base=$(bash scripts/find_python.sh "$version")
  rm -rf "$venv"
  echo "creating $venv with $base"
  "$base" -m venv "$venv"
fi
echo "installing $lock into $venv"
"${pip[@]}" install --quiet --require-hashes --no-deps -r "$lock" || {
  if [ -n "$hint" ]; then echo "error: could not install $lock; $hint" >&2; fi
  exit 1
}
"$py" scripts/prune_env.py "$lock"
"${pip[@]}" install --quiet --no-deps --no-build-isolation -e .
"${pip[@]}" check
touch "$venv/.installed"
