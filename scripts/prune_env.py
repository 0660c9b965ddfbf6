"""Uninstall what the lock file does not list, so .venv is exactly the lock.

Usage: ``python scripts/prune_env.py requirements.txt`` (run by ``make env``
with the environment's own interpreter, after installing the lock).  The
project itself (installed editable) is kept.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from typing import Set

KEEP = {"data-workers"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_names(lock_path: str) -> Set[str]:
    names = set()
    with open(lock_path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==", line)
            if m:
                names.add(canonical(m.group(1)))
    return names


def main(lock_path: str) -> int:
    wanted = locked_names(lock_path) | KEEP
    installed = {canonical(d.metadata["Name"]) for d in metadata.distributions()
                 if d.metadata["Name"]}
    extra = sorted(installed - wanted)
    if extra:
        print("removing packages not in %s: %s" % (lock_path, " ".join(extra)))
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "--yes", *extra],
                       check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
