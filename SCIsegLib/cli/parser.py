"""The ``sciseg`` parser, built from the parser parts of the command groups."""

from __future__ import annotations

import argparse

from .. import __version__
from . import cohort, learn, measure, review, segment
from .common import Parser

#: The subcommands in the order ``sciseg --help`` and docs/cli-reference.md list them.
COMMANDS = ("segment", "models", "analyze", "cord", "export", "dataset", "finetune", "queue", "evaluate", "stats",
            "consensus", "compare", "run", "devices", "demo", "engine", "review")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sciseg", description="Spinal cord and lesion segmentation of SCI MRI (SCIseg, nnU-Net v2).")
    parser.add_argument("--version", action="version", version=f"sciseg {__version__}")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of internal errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    parts = {**segment.PARSERS, **measure.PARSERS, **learn.PARSERS, **cohort.PARSERS, **review.PARSERS}
    if set(parts) != set(COMMANDS):  # a group's command missing from COMMANDS would vanish from the parser
        raise RuntimeError(f"COMMANDS and the command groups differ: {sorted(set(parts) ^ set(COMMANDS))}")
    for name in COMMANDS:
        parts[name](commands)
    return parser
