"""What every ``sciseg`` command group shares: exit codes, the argparse class, JSON-lines events, ``-o`` checks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from ..errors import InputError

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


class Parser(argparse.ArgumentParser):
    """argparse that exits with our input-error code (2) and one line of usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT, f"sciseg: error: {message}\n")


class JsonLines:
    """Writes one JSON object per line to a stream (the real stdout in jsonl mode)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, payload: dict) -> None:
        self.stream.write(json.dumps(payload) + "\n")
        self.stream.flush()


def output_folder(path: Path) -> Path:
    """``-o`` given as a folder: refuse an existing file before anything is computed."""
    if path.exists() and not path.is_dir():
        raise InputError(f"-o {path} is a file; give a folder for the outputs.")
    return path
