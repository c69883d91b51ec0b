"""``python -m localearn.experiments``: see cli.py for the commands."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
