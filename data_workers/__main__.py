"""``python -m data_workers doctor`` and ``python -m data_workers profile``: see ``_cli/``."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
