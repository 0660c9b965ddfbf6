"""Entry point of one benchmark case: ``python -m benchmarks._child SPEC OUT``.

Kept import-light at module level: worker processes started with "spawn" may
re-import the parent's main module (this one) as ``__mp_main__``.
"""

import sys

if __name__ == "__main__":
    from benchmarks._harness import child_main

    sys.exit(child_main(sys.argv[1], sys.argv[2]))
