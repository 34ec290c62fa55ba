"""``python -m SCIsegLib ...`` runs the ``sciseg`` command (the Slicer module starts it this way)."""

from .cli import console_main

if __name__ == "__main__":
    console_main()
