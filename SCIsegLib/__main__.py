"""``python -m SCIsegLib ...`` and the ``sciseg`` script run the ``sciseg`` command (the Slicer module starts it this way).

The cancel handling (SIGINT, SIGTERM, ``$SCISEG_CANCEL_FILE``; see :mod:`SCIsegLib.cancel`) is installed
before anything heavy is imported (numpy alone takes 0.1-0.8 s), so a cancel at any moment after the
interpreter started ends with exit code 130. Before that, :func:`SCIsegLib.lifetime.bind_descendants` makes
every process the command will start end with it, even when the command is SIGKILLed.
"""

import sys

from .cancel import install
from .errors import CancelledError
from .lifetime import bind_descendants


def main() -> None:
    """Entry point of ``sciseg`` (pyproject.toml) and ``python -m SCIsegLib``."""
    bind_descendants()  # first, while this process has one thread: every descendant ends with this command
    install()
    try:
        from .cli import console_main
    except CancelledError as error:  # cancelled while numpy and the CLI were still being imported
        sys.stderr.write(f"sciseg: {error}\n")
        sys.exit(130)
    console_main()


if __name__ == "__main__":
    main()
