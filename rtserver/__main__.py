"""``python -m rtserver run module:root``: see :mod:`rtserver.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
