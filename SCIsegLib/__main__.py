"""``python -m SCIsegLib ...`` and the ``sciseg`` script run the ``sciseg`` command (the Slicer module starts it this way).

The cancel handling (SIGINT, SIGTERM, ``$SCISEG_CANCEL_FILE``; see :mod:`SCIsegLib.cancel`) is installed
before anything heavy is imported (numpy alone takes 0.1-0.8 s), so a cancel at any moment after the
interpreter started ends with exit code 130.
"""

import sys

from .cancel import install
from .errors import CancelledError


def main() -> None:
    """Entry point of ``sciseg`` (pyproject.toml) and ``python -m SCIsegLib``."""
    install()
    try:
        from .cli import console_main
    except CancelledError as error:  # cancelled while numpy and the CLI were still being imported
        sys.stderr.write(f"sciseg: {error}\n")
        sys.exit(130)
    console_main()


if __name__ == "__main__":
    main()
