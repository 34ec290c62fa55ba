"""The ``sciseg`` command. Thin: every subcommand calls the library.

One module per command group, each with its parser part and its runners: :mod:`.segment` (segment, models,
engine, devices, demo), :mod:`.measure` (analyze, cord, evaluate, stats, consensus, compare), :mod:`.learn`
(export, dataset, finetune, queue), :mod:`.cohort` (run) and :mod:`.review` (review); :mod:`.parser` builds the
parser from them, :mod:`.entry` runs it, :mod:`.common` holds what they share.

Exit codes: 0 success, 2 bad input (the message says what to fix), 1 internal failure,
130 cancelled (Ctrl-C or SIGTERM; outputs already published stay, complete; nothing is half-written).
"""

from .common import EXIT_CANCELLED, EXIT_INPUT, EXIT_INTERNAL, EXIT_OK
from .entry import QUICK_EXIT_COMMANDS, _command_of, console_main, main
from .parser import build_parser

__all__ = ["EXIT_CANCELLED", "EXIT_INPUT", "EXIT_INTERNAL", "EXIT_OK", "QUICK_EXIT_COMMANDS", "_command_of", "build_parser",
           "console_main", "main"]
