"""``python -m SCIsegLib ...`` runs the ``sciseg`` command (the Slicer module starts it this way)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
