"""``python -m SCIsegLib ...`` runs the ``sciseg`` command (the Slicer module starts it this way)."""

if __name__ == "__main__":
    import os
    import signal
    import sys

    def _cancelled_while_starting(signum: int, frame: object) -> None:
        """SIGTERM/SIGINT while no command handles them (start-up, input checks): exit 130 at once."""
        name = signal.Signals(signum).name
        sys.stderr.write(f"sciseg: cancelled ({name}); files are published whole or not at all, none was left half-written.\n")
        os._exit(130)

    # First thing, before the slow imports: a cancel at any later moment exits 130, never -15.
    signal.signal(signal.SIGTERM, _cancelled_while_starting)
    signal.signal(signal.SIGINT, _cancelled_while_starting)

    from .cli import console_main

    console_main()
