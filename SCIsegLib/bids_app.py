"""``sciseg-bids``: SCIseg as a BIDS App (Gorgolewski et al., PLoS Comput Biol 2017, doi:10.1371/journal.pcbi.1005209).

The BIDS Apps call ``sciseg-bids BIDS_DIR OUTPUT_DIR {participant,group} [--participant-label 01 02]`` becomes
``sciseg run --bids BIDS_DIR -o OUTPUT_DIR [--participant-label 01 02] ...``:

* ``participant``: segment, measure and QC the T2w scans (``sub-*/[ses-*/]anat/*_T2w.nii[.gz]``) of the given
  participants (all of them without ``--participant-label``). OUTPUT_DIR is a BIDS derivative dataset
  (``dataset_description.json`` with ``DatasetType: derivative`` and ``GeneratedBy``; outputs under each scan's
  own ``sub-XX/[ses-YY/]anat/``). Scans already complete for the same source, model and settings are skipped.
* ``group``: the same call over every participant (or the given ones): the scans done at participant level are
  skipped, so it rewrites the cohort tables (``cohort_subjects.csv``, ``cohort_lesions.csv``), ``run_summary.csv``
  and ``qc/index.html`` over all of them (a scan not done yet is done now).

Exit codes are ``sciseg run``'s: 0 every scan done or skipped, 3 some scans failed, 2 bad input (one sentence:
a participant label without a scan, a BIDS_DIR that is no folder, an output folder inside a ``sub-*`` folder),
1 an internal error, 130 cancelled. Nothing heavy is imported before the cancel handling is installed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__

EXIT_INPUT = 2
ANALYSIS_LEVELS = ("participant", "group")


class _Parser(argparse.ArgumentParser):
    """argparse that exits with the input-error code (2) and one line of usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT, f"sciseg-bids: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The BIDS Apps arguments (positional bids_dir, output_dir, analysis_level) and the options passed to ``sciseg run``."""
    parser = _Parser(
        prog="sciseg-bids",
        description="SCIseg as a BIDS App: spinal cord and lesion segmentation, lesion morphometrics, cord CSA and QC "
        "of the T2w scans of a BIDS dataset, written as a BIDS derivative (the BIDS Apps convention of Gorgolewski "
        "et al. 2017). Exit codes: 0 done, 3 some scans failed (run_summary.csv), 2 bad input, 1 internal error, 130 cancelled.",
    )
    parser.add_argument("bids_dir", type=Path, help="root of the BIDS dataset (read only)")
    parser.add_argument("output_dir", type=Path, help="the derivative dataset to write, e.g. BIDS_DIR/derivatives/sciseg")
    parser.add_argument("analysis_level", choices=ANALYSIS_LEVELS,
                        help="participant: the scans of the given participants; group: cohort tables and QC report over all")
    parser.add_argument("--participant-label", "--participant_label", dest="participant_label", nargs="+", default=None,
                        metavar="LABEL", help="participants to process (01 or sub-01); default: every sub-* folder")
    parser.add_argument("--suffix", default="T2w", help="BIDS suffix of the scans (default T2w)")
    parser.add_argument("--model", default="sciseg-v2",
                        help="installed model name or model folder (default sciseg-v2: install it first with `sciseg models install`)")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument("--engine", default="auto", help="as `sciseg run --engine` (reference: SCT's exact call)")
    parser.add_argument("--crop", default="fast", help="as `sciseg run --crop` (fast, exact, off)")
    parser.add_argument("--labels", default="corrected", help="as `sciseg run --labels` (corrected, model)")
    parser.add_argument("--workers", type=int, default=None, help="Dask worker processes (default: sized to the machine)")
    parser.add_argument("--memory-per-worker", default=None, help="memory limit of each worker, e.g. 4GiB")
    parser.add_argument("--scheduler", default=None, help="as `sciseg run --scheduler` (local, tcp://host:8786, slurm)")
    parser.add_argument("--force", action="store_true", help="redo scans whose outputs are complete")
    parser.add_argument("--progress", default="auto", help="as `sciseg run --progress` (auto, bar, jsonl, none)")
    parser.add_argument("-v", "--version", action="version", version=f"sciseg-bids {__version__}")
    return parser


def run_arguments(args: argparse.Namespace) -> list[str]:
    """The ``sciseg run`` argument list of a parsed ``sciseg-bids`` call (without the program name)."""
    argv = ["run", "--bids", str(args.bids_dir), "-o", str(args.output_dir), "--suffix", args.suffix,
            "--model", args.model, "--device", args.device, "--engine", args.engine, "--crop", args.crop,
            "--labels", args.labels, "--progress", args.progress]
    if args.participant_label:
        argv += ["--participant-label", *args.participant_label]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    if args.memory_per_worker:
        argv += ["--memory-per-worker", args.memory_per_worker]
    if args.scheduler:
        argv += ["--scheduler", args.scheduler]
    if args.force:
        argv.append("--force")
    return argv


def main(argv: list[str] | None = None) -> int:
    """Parse a BIDS Apps call and run it as ``sciseg run``; returns the exit code."""
    args = build_parser().parse_args(argv)
    from .cli import main as sciseg_main  # numpy and friends: after the cancel handling is installed

    run_argv = run_arguments(args)
    program_argv = sys.argv
    sys.argv = ["sciseg", *run_argv]  # the run records the `sciseg run` command it equals (markers, QC report)
    try:
        return sciseg_main(run_argv)
    finally:
        sys.argv = program_argv


def console_main() -> None:
    """Entry point of the ``sciseg-bids`` script (pyproject.toml), with ``sciseg``'s process and cancel handling."""
    from .cancel import install
    from .errors import CancelledError
    from .exit_collection import skip_collections_at_exit
    from .lifetime import bind_descendants

    bind_descendants()  # first, while this process has one thread: every descendant ends with this command
    install()
    skip_collections_at_exit()
    try:
        code = main()
    except CancelledError as error:
        sys.stderr.write(f"sciseg-bids: {error}\n")
        code = 130
    if code == 130:  # as `sciseg`: end at once, nnU-Net's threads may not stop cleanly (outputs are complete or absent)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
