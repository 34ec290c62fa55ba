"""The ``sciseg`` command. Thin: every subcommand calls the library.

Exit codes: 0 success, 2 bad input (the message says what to fix), 1 internal failure,
130 cancelled (Ctrl-C or SIGTERM; outputs already published stay, complete; nothing is half-written).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import Callable, TextIO

import numpy as np

from . import __version__, cancel
from .errors import CancelledError, DownloadError, InputError, SCIsegError
from .inference.base import CROP_MODES

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_CANCELLED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """argparse that exits with our input-error code (2) and one line of usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT, f"sciseg: error: {message}\n")


def _folds(text: str) -> tuple[int | str, ...]:
    return tuple("all" if f == "all" else int(f) for f in text.replace(",", " ").split())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sciseg", description="Spinal cord and lesion segmentation of SCI MRI (SCIseg, nnU-Net v2).")
    parser.add_argument("--version", action="version", version=f"sciseg {__version__}")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of internal errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    segment = commands.add_parser("segment", help="segment spinal cord and lesion in T2w images")
    segment.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="NIfTI or NRRD images")
    segment.add_argument("-o", "--output", type=Path, default=None, help="output folder (default: beside each input)")
    segment.add_argument("--model", default="sciseg-v2", help="installed model name or model folder (default: sciseg-v2)")
    segment.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda/gpu, mps or cpu")
    segment.add_argument("--tta", action="store_true", help="test-time augmentation by mirroring (slower; off in SCT)")
    segment.add_argument("--step", type=float, default=0.5, help="sliding-window step, fraction of the patch (default 0.5)")
    segment.add_argument("--folds", type=_folds, default=None, help="folds to use, e.g. '0 1 2' (default: all present)")
    segment.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    segment.add_argument(
        "--engine", choices=("auto", "reference", "openvino", "torch-bf16", "cuda"), default="auto",
        help="auto (fastest that works here: CUDA, else OpenVINO bf16/fp32; cropped to the cord where that saves tiles), "
             "reference (SCT's exact nnU-Net call), openvino, torch-bf16 or cuda",
    )
    segment.add_argument("--crop", choices=CROP_MODES, default="fast",
                         help="fast engines: fast (tiles around the cord; one tile where a reference tile holds it), exact "
                              "(only the reference's tiles around the cord) or off (the whole image)")
    segment.add_argument("--no-crop", action="store_true", help="the same as --crop off")
    segment.add_argument("--keep-largest-cord", action="store_true", help="keep only the largest cord component")
    segment.add_argument("--fill-holes", action="store_true", help="fill holes in the cord and lesion masks")
    segment.add_argument("--lesion-in-cord", action="store_true", help="drop lesion voxels outside the cord")
    segment.add_argument("--min-object-mm3", type=float, default=None, help="remove components smaller than this (mm3)")
    segment.add_argument("--label-map", action="store_true", help="also write <stem>_labels.nii.gz (0/1/2)")
    segment.add_argument("--probabilities", action="store_true", help="also write <stem>_<structure>_prob.nii.gz")
    segment.add_argument("--replace-nonfinite", action="store_true", help="set NaN/inf voxels to 0 instead of refusing")
    segment.add_argument("--cord", type=Path, default=None,
                         help="grey-matter models: the scan's cord mask, for <stem>_wmseg.nii.gz (WM = cord - GM); "
                              "default: <stem>_sc_seg.nii.gz beside the outputs when present")
    segment.add_argument(
        "--max-voxels", type=int, default=None, metavar="N",
        help="refuse images with more voxels (default 268435456 = 2**28); images needing more memory than "
        "is available are refused too",
    )
    segment.add_argument(
        "--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
        help="progress display: a bar on a terminal (auto), one JSON event per line on stdout (jsonl), or none",
    )

    models = commands.add_parser("models", help="list, inspect, install and remove models")
    model_commands = models.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    model_commands.add_parser("list", help="list bundled and installed models")
    info = model_commands.add_parser("info", help="describe one model (JSON)")
    info.add_argument("name")
    install = model_commands.add_parser("install", help="install from sciseg-v1, sciseg-v2, graymatter (SCT r20250420), a URL, a zip or a folder")
    install.add_argument("source")
    install.add_argument("--name", default=None, help="name in the store (default: derived from the source)")
    install.add_argument("--force", action="store_true", help="replace an installed model of the same name")
    install.add_argument("--sha256", default=None, help="expected sha256 of the zip")
    install.add_argument(
        "--progress", choices=("auto", "jsonl", "none"), default="auto",
        help="progress display: download progress on a terminal (auto), one JSON event per line on stdout (jsonl), or none",
    )
    remove = model_commands.add_parser("remove", help="delete an installed model")
    remove.add_argument("name")

    analyze = commands.add_parser("analyze", help="lesion morphometrics as SCT's sct_analyze_lesion")
    analyze.add_argument("--lesion", type=Path, required=True, help="binary lesion mask (e.g. <stem>_lesion_seg.nii.gz)")
    analyze.add_argument("--cord", type=Path, default=None, help="binary cord mask on the same grid (else volume only)")
    analyze.add_argument("--image", type=Path, default=None, help="image for mean/std inside each lesion")
    analyze.add_argument(
        "--nli-slice", type=int, default=None, metavar="N",
        help="axial slice (numbered I->S, SCT's 'Slice (I->S)') of the neurological level of injury: for a mask without "
        "lesion, the tissue bridges are the cord A-P diameter there (SCT's -nli-slice)",
    )
    analyze.add_argument("-o", "--output", type=Path, default=Path("."), help="output folder")

    cord = commands.add_parser("cord", help="cord shape per slice as SCT 7.3's sct_process_segmentation -perslice 1")
    cord.add_argument("--cord", type=Path, required=True, help="binary or soft cord mask")
    cord.add_argument("--gm", type=Path, default=None,
                      help="grey-matter mask of the same scan: GM and WM (= cord - GM) areas per slice, angles from the cord")
    cord.add_argument("--levels", type=Path, default=None,
                      help="with --gm: SCT's labelled cord (vertebral levels) on the same grid, for areas per level")
    cord.add_argument("-o", "--output", type=Path, default=Path("."), help="output folder")
    cord.add_argument("--no-angle-correction", action="store_true", help="measure the axial sections as they are")
    cord.add_argument("--centerline-smooth", type=float, default=30.0,
                      help="smoothing of the bspline centerline (SCT's -centerline-smooth, default 30)")

    export = commands.add_parser("export", help="save corrected masks as a new version in a BIDS derivatives folder")
    export.add_argument("--root", type=Path, required=True, help="BIDS dataset; labels go to ROOT/derivatives/labels")
    export.add_argument("--source", type=Path, required=True, help="the image the masks were drawn on")
    export.add_argument("--rater", required=True, help="who corrected the masks")
    masks = export.add_mutually_exclusive_group(required=True)
    masks.add_argument("--labels", type=Path, help="label map: 1 cord only, 2 lesion")
    masks.add_argument("--seg-nrrd", type=Path, help="Slicer segmentation with segments spinal_cord and lesion")
    masks.add_argument("--cord", type=Path, help="cord mask (use with --lesion)")
    export.add_argument("--lesion", type=Path, help="lesion mask (with --cord; without it the scan has no lesion)")
    export.add_argument("--model", default=None, help="the model that made the prediction")
    export.add_argument("--predicted-labels", type=Path, default=None, help="the model's label map, to record what changed")
    export.add_argument("--subject", default=None, help="BIDS subject label when the file name has none")
    export.add_argument("--session", default=None, help="BIDS session label")
    export.add_argument("--note", default="", help="free text kept in the sidecars")
    export.add_argument("--parent", default=None, metavar="BASE",
                        help="what the masks were corrected from: a version (v002 or 2), 'prediction' or 'empty'; "
                             "recorded as the version's parent (lineage), with a warning when newer versions exist")

    dataset = commands.add_parser("dataset", help="nnU-Net datasets from exported corrections")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True, parser_class=_Parser)
    build = dataset_commands.add_parser("build", help="build or update an nnU-Net raw dataset (RPI, region labels)")
    build.add_argument("--bids", type=Path, nargs="+", required=True, help="BIDS datasets with derivatives/labels")
    build.add_argument("-o", "--output", type=Path, required=True, help="nnU-Net raw folder (nnUNet_raw)")
    build.add_argument("--id", type=int, required=True, help="nnU-Net dataset id (1-999)")
    build.add_argument("--name", required=True, help="dataset name, e.g. SCIsegFinetune")
    build.add_argument("--test-fraction", type=float, default=0.2, help="share of subjects held out for testing")
    build.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")

    tune = commands.add_parser("finetune", help="fine-tune a model on a built dataset and register the result")
    tune.add_argument("--base", required=True, help="installed model (name or folder) to start from")
    tune.add_argument("--dataset", type=Path, required=True, help="nnU-Net raw dataset folder (DatasetXXX_Name)")
    tune.add_argument("--name", required=True, help="name of the new model in the store")
    tune.add_argument("--work", type=Path, required=True, help="work folder (preprocessed data, checkpoints; reuse it to resume)")
    tune.add_argument("--epochs", type=int, default=10)
    tune.add_argument("--iterations", type=int, default=50, help="training steps per epoch")
    tune.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (nnU-Net's poly schedule)")
    tune.add_argument("--device", default="auto", help="auto (GPU when present), cuda, mps or cpu")

    review = commands.add_parser("queue", help="rank scans by model uncertainty for review")
    review_commands = review.add_subparsers(dest="queue_command", required=True, parser_class=_Parser)
    score = review_commands.add_parser("score", help="predict and score scans; store the scores in the queue file")
    score.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    score.add_argument("--queue", type=Path, required=True, help="queue file (JSON), created or updated")
    score.add_argument("--model", default="sciseg-v2", help="model name or folder")
    score.add_argument("--device", default="auto")
    listing = review_commands.add_parser("list", help="the scans from most to least uncertain")
    listing.add_argument("--queue", type=Path, required=True)
    following = review_commands.add_parser("next", help="the most uncertain scan not corrected yet")
    following.add_argument("--queue", type=Path, required=True)
    following.add_argument("--bids", type=Path, default=None, help="BIDS dataset whose exported corrections mark scans done")
    from_qc = review_commands.add_parser("qc", help="put the scans marked Fail in a QC report (qc_fails.yml or qc_decisions.json) first")
    from_qc.add_argument("decisions", type=Path, help="file saved from qc/index.html (Save fails or Save all)")
    from_qc.add_argument("--queue", type=Path, required=True, help="queue file (JSON), created or updated")

    evaluate = commands.add_parser("evaluate", help="segmentation and lesion-wise metrics against references")
    evaluate.add_argument("--pred", type=Path, nargs="+", required=True, help="predicted masks or label maps, or folders of them")
    evaluate.add_argument("--ref", type=Path, nargs="+", required=True, help="reference masks or label maps, or folders (e.g. a BIDS derivatives tree)")
    evaluate.add_argument("-o", "--output", type=Path, required=True, help="output folder (CSV, summary, plots)")
    evaluate.add_argument("--method", default="prediction", help="name of the method in the tables and plots")
    evaluate.add_argument("--cord-labels", default="1,2", help="labels forming the cord in label maps: '1,2' or '1'")
    evaluate.add_argument("--tolerance-mm", type=float, default=1.0, help="tolerance of the normalised surface Dice")
    evaluate.add_argument("--groups", type=Path, default=None, help="TSV with participant_id and site (or group) columns")

    compare = commands.add_parser("stats", help="agreement of two morphometrics tables (Wilcoxon, Bland-Altman, Spearman)")
    compare.add_argument("--a", type=Path, required=True, help="first table (CSV with a 'subject' column), e.g. manual")
    compare.add_argument("--b", type=Path, required=True, help="second table, e.g. automatic")
    compare.add_argument("--columns", nargs="+", default=["volume [mm3]", "length [mm]", "max_axial_damage_ratio []"])
    compare.add_argument("--clinical", type=Path, default=None, help="TSV with participant_id and clinical scores")
    compare.add_argument("--score", default=None, help="clinical score column for Spearman correlations")
    compare.add_argument("-o", "--output", type=Path, required=True)

    vote = commands.add_parser("consensus", help="consensus of several raters' masks and their reproducibility")
    vote.add_argument("masks", nargs="+", type=Path, help="binary masks or label maps of one subject, same grid "
                      "(with --cord: grey-matter masks of repeated scans or raters)")
    vote.add_argument("--method", choices=("majority", "staple"), default="majority")
    vote.add_argument("--tie", choices=("background", "foreground"), default="background", help="majority vote ties")
    vote.add_argument("-o", "--output", type=Path, default=None, help="consensus file (.nii.gz); optional with --cord")
    vote.add_argument("--cord", type=Path, nargs="+", default=None,
                      help="cord masks, one per grey-matter mask (or one for all): relative SD of GM and WM areas, and "
                           "GM/WM Dice and Hausdorff between masks on one grid (JSON)")

    changes = commands.add_parser("compare", help="how much two SCIseg label maps of one scan differ (JSON): what a rater changed")
    changes.add_argument("first", type=Path, help="label map before (0 background, 1 cord only, 2 lesion)")
    changes.add_argument("second", type=Path, help="label map after, on the same grid")

    _add_run_parser(commands)

    commands.add_parser("devices", help="list the devices torch can use here (JSON)")

    demo = commands.add_parser("demo", help="segment a synthetic example with the bundled demo model")
    demo.add_argument("-o", "--output", type=Path, default=Path("sciseg_demo_output"), help="output folder")
    demo.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")

    _add_engine_parser(commands)

    web = commands.add_parser("review", help="serve the rater web app (trame-slicer) on a BIDS dataset")
    web.add_argument("--bids", type=Path, required=True, help="BIDS dataset root (nothing outside it is read or written)")
    web.add_argument("--queue", type=Path, help="review queue file from 'sciseg queue score' (case order)")
    web.add_argument("--model", default="sciseg-v2", help="model for cases without a prediction")
    web.add_argument("--host", default="127.0.0.1", help="bind address; anything but loopback needs --allow-remote")
    web.add_argument("--port", type=int, default=8080)
    web.add_argument("--allow-remote", action="store_true", help="allow a non-loopback address (a token is then required)")
    web.add_argument("--max-sessions", type=int, default=4, help="at most this many browser tabs, each its own worker process (~0.6-0.8 GB)")
    web.add_argument("--idle-minutes", type=float, default=60.0, help="end a session this long after its tab left, unless it has unsaved edits")
    return parser


def _add_engine_parser(commands) -> None:
    engine = commands.add_parser("engine", help="the warm engine: hold one model, answer segment requests on stdin (JSON lines)")
    engine_commands = engine.add_subparsers(dest="engine_command", required=True, parser_class=_Parser)
    serve = engine_commands.add_parser("serve", help="load the model once, then answer requests until stdin closes or it is idle")
    serve.add_argument("--model", default="sciseg-v2", help="installed model name or model folder")
    serve.add_argument("--device", default="auto")
    serve.add_argument("--engine", choices=("auto", "reference", "openvino", "torch-bf16", "cuda"), default="auto")
    serve.add_argument("--crop", choices=CROP_MODES, default="fast")
    serve.add_argument("--step", type=float, default=0.5)
    serve.add_argument("--tta", action="store_true")
    serve.add_argument("--folds", type=_folds, default=None)
    serve.add_argument("--threads", type=int, default=None)
    serve.add_argument("--idle-minutes", type=float, default=10.0, help="exit after this long without a request (default 10)")


def _run_engine(args: argparse.Namespace) -> int:
    from .inference.warm import serve_stdio

    settings = {"device": args.device, "engine": args.engine, "crop": args.crop, "step_size": args.step, "tta": args.tta,
                "folds": list(args.folds) if args.folds is not None else None, "threads": args.threads}
    code = serve_stdio(args.model, settings, idle_s=max(args.idle_minutes, 0.0) * 60.0)
    sys.stderr.flush()
    os._exit(code)  # nothing is pending (events are flushed, files published): skip torch's slow teardown


class _JsonLines:
    """Writes one JSON object per line to a stream (the real stdout in jsonl mode)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, payload: dict) -> None:
        self.stream.write(json.dumps(payload) + "\n")
        self.stream.flush()


def _progress_printer(mode: str, events: _JsonLines | None) -> tuple[Callable, Callable[[], None]]:
    """Return (callback, close) for the chosen progress display."""
    if mode == "jsonl" and events is not None:
        return (lambda event: events(event.as_dict())), (lambda: None)
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        from tqdm import tqdm

        bar = tqdm(total=1000, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

        def update(event) -> None:
            bar.n = int(event.fraction * 1000)
            bar.set_description(event.stage)
            bar.refresh()

        return update, bar.close
    return (lambda event: None), (lambda: None)


@contextlib.contextmanager
def _cancel_on_signals(token):
    """SIGINT/SIGTERM/the cancel file set the cancel token (the run stops between tiles); a second SIGINT aborts.

    The signal set-up itself lives in :mod:`SCIsegLib.cancel` (one place, installed at start-up).
    """
    with cancel.cooperative(token.cancel):
        yield


def _run_segment(args: argparse.Namespace, events: _JsonLines | None) -> int:
    from .volume import DEFAULT_MAX_VOXELS, check_images

    if not 0 < args.step <= 1:
        raise InputError(f"--step must be in (0, 1], got {args.step}.")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}.")
    if args.min_object_mm3 is not None and not (math.isfinite(args.min_object_mm3) and args.min_object_mm3 >= 0):
        raise InputError(f"--min-object-mm3 must be a volume of 0 mm3 or more, got {args.min_object_mm3:g}.")
    if args.output is not None:
        _output_folder(args.output)

    def warn(message: str) -> None:
        sys.stderr.write(f"sciseg: warning: {message}\n")
        if events is not None:
            events({"event": "warning", "message": message})

    max_voxels = args.max_voxels if args.max_voxels is not None else DEFAULT_MAX_VOXELS
    by_folder: dict[Path, list[Path]] = {}
    for path in args.inputs:
        by_folder.setdefault(args.output or path.parent, []).append(path)
    from .models import resolve_model

    model = resolve_model(args.model)  # its files only (JSON, names checked): no torch yet
    for paths in by_folder.values():  # every input checked before torch and the network are loaded
        check_images(paths, replace_nonfinite=args.replace_nonfinite, max_voxels=max_voxels, warn=warn,
                     target_spacing_mm=model.spacing_mm)
    from .inference import CancelToken, InferenceSettings, make_engine
    from .postprocess import PostprocessSettings
    from .segment import SegmentCancelled, segment_files

    from .compartments_segments import engine_for_model, has_grey_matter

    if args.cord is not None and not has_grey_matter(model):
        raise InputError(f"--cord goes with a grey-matter model (for the white matter); '{model.name}' segments "
                         f"{', '.join(model.segments)}.")
    settings = InferenceSettings(device=args.device, folds=args.folds, step_size=args.step, tta=args.tta, threads=args.threads,
                                 engine=engine_for_model(model, args.engine), crop="off" if args.no_crop else args.crop)
    postprocess = PostprocessSettings(
        keep_largest_cord=args.keep_largest_cord,
        fill_holes=args.fill_holes,
        lesion_inside_cord=args.lesion_in_cord,
        min_object_mm3=args.min_object_mm3,
    )
    callback, close = _progress_printer(args.progress, events)
    token = CancelToken()
    records: list[dict] = []
    try:
        with _cancel_on_signals(token):
            engine = make_engine(model, settings)
            for folder, paths in by_folder.items():
                try:
                    records += segment_files(
                        paths, folder, engine, settings=settings, postprocess=postprocess,
                        write_label_map=args.label_map, want_probabilities=args.probabilities,
                        replace_nonfinite=args.replace_nonfinite, progress=callback, cancel=token,
                        max_voxels=max_voxels, inputs_checked=True,
                    )
                except SegmentCancelled as cancelled:
                    if not records:
                        raise
                    done = "; ".join(f"{Path(r['input']).name} -> {', '.join(Path(o).name for o in r['outputs'])}" for r in records + cancelled.records)
                    raise CancelledError(f"segmentation cancelled; written before the cancel (complete sets): {done}; the rest was not written.") from None
    finally:
        close()
    if has_grey_matter(model):
        from .compartments_cli import write_white_matter_after_segment

        write_white_matter_after_segment(records, args.cord, warn)
    if events is not None:
        events({"event": "result", "model": model.name, "records": records})
    else:
        for record in records:
            print(f"{record['input']}: {', '.join(record['outputs'])} ({record['seconds']:.1f} s on {record['device']})")
    return EXIT_OK


def _run_models(args: argparse.Namespace, events: _JsonLines | None = None) -> int:
    from . import models

    if args.models_command == "list":
        entries = models.list_models()
        installed = {m.name for m in entries}
        for entry in entries:
            where = "bundled" if entry.path.parent == models.bundled_models_root() else "installed"
            print(f"{entry.name:<20} {where:<10} {entry.configuration:<11} folds {entry.folds}  {entry.path}")
        for name, known in models.KNOWN_MODELS.items():
            if name not in installed:
                print(f"{name:<20} {'available':<10} `sciseg models install {name}`: {known.description}")
        return EXIT_OK
    if args.models_command == "info":
        print(json.dumps(models.resolve_model(args.name).summary(), indent=2, default=str))
        return EXIT_OK
    if args.models_command == "install":
        return _run_models_install(args, events)
    removed = models.remove(args.name)
    print(f"removed {removed}")
    return EXIT_OK


#: Share of the whole install each stage of ``models install --progress jsonl`` covers (start, end).
INSTALL_STAGES = {"download": (0.0, 0.7), "verify": (0.7, 0.8), "unzip": (0.8, 0.95), "check": (0.95, 1.0)}


def _run_models_install(args: argparse.Namespace, events: _JsonLines | None) -> int:
    """``models install``: progress events (at most 10 per second) and a cancel checked between chunks."""
    import time

    from . import models

    last_event = [0.0]

    def show(stage: str, done: int, total: int | None) -> None:
        cancel.raise_if_cancelled("model install cancelled; nothing was installed.")
        if events is not None:
            now = time.monotonic()
            if now - last_event[0] < 0.1 and done != total:
                return
            last_event[0] = now
            start, end = INSTALL_STAGES[stage]
            share = done / total if total else 0.0
            message = f"{stage} {done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total and stage != "check" else "")
            events({"event": "progress", "stage": stage, "fraction": round(start + (end - start) * share, 4),
                    "done": done, "total": total, "message": message})
        elif stage == "download" and args.progress == "auto" and sys.stderr.isatty():
            percent = f"{100 * done / total:5.1f} %" if total else ""
            sys.stderr.write(f"\rdownloading {done / 1e6:8.1f} MB {percent}")

    with cancel.cooperative():
        info = models.install(args.source, name=args.name, force=args.force, expected_sha256=args.sha256, stage_progress=show)
    if events is None and args.progress == "auto" and sys.stderr.isatty():
        sys.stderr.write("\n")
    digest = info.metadata.get("sha256") or info.metadata.get("weights_sha256")
    if events is not None:
        events({"event": "result", "name": info.name, "path": str(info.path), "sha256": digest})
    print(f"installed '{info.name}' in {info.path} (sha256 {digest})")
    return EXIT_OK


def _run_analyze(args: argparse.Namespace) -> int:
    from .analysis_files import write_lesion_analysis
    from .lesions import analyze_lesions, per_slice_profile
    from .volume import image_stem, load_mask

    _output_folder(args.output)
    lesion = load_mask(args.lesion)
    cord = load_mask(args.cord) if args.cord else None
    image = load_mask(args.image, binary=False) if args.image else None
    result = analyze_lesions(
        lesion, cord, image, image_name=image_stem(args.image) if args.image else "image", nli_slice=args.nli_slice
    )
    for warning in result.warnings:
        sys.stderr.write(f"sciseg: warning: {warning}\n")
    if result.summary["lesion_count"] == 0 and args.nli_slice is None:
        sys.stderr.write(f"sciseg: No lesion found in {args.lesion}. (--nli-slice measures the cord at the level of injury.)\n")
        return EXIT_INTERNAL
    profile = per_slice_profile(lesion, cord) if cord is not None else None
    for path in write_lesion_analysis(result, args.lesion, args.output, profile):
        print(path)
    summary = result.summary
    if summary["lesion_count"] == 0:
        print(f"no lesion; cord A-P diameter at the NLI slice {summary['nli_slice']}: {summary['nli_cord_ap_diameter_mm']:.2f} mm")
    else:
        print(f"{summary['lesion_count']} lesion(s), total volume {summary['total_volume_mm3']:.2f} mm3")
    return EXIT_OK


def _run_cord(args: argparse.Namespace) -> int:
    from .analysis_files import write_cord_table
    from .cord import cord_morphometry
    from .volume import image_stem, load_mask

    _output_folder(args.output)
    angle_correction = not args.no_angle_correction
    if args.gm is not None or args.levels is not None:
        from .compartments_cli import run_compartment_areas

        run_compartment_areas(args.gm, args.cord, args.levels, args.output, angle_correction, args.centerline_smooth)
    table = cord_morphometry(load_mask(args.cord, binary=False), angle_correction, args.centerline_smooth)
    output = args.output / f"{image_stem(args.cord)}_csa.csv"
    for path in write_cord_table(table, output, args.cord.resolve(), angle_correction, args.centerline_smooth):
        print(path)
    return EXIT_OK


def _export_parent(text: str | None) -> int | str | None:
    """``--parent``: ``v002`` / ``2`` -> 2, ``prediction`` / ``empty`` as they are, None when not given."""
    from .training.export import FROM_EMPTY, FROM_PREDICTION

    if text is None or text in (FROM_PREDICTION, FROM_EMPTY):
        return text
    number = text.removeprefix("v")
    if not number.isdigit() or int(number) < 1:
        raise InputError(f"--parent {text!r} is not a version (v001, 2, ...), 'prediction' or 'empty'.")
    return int(number)


def _run_export(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from .file_checks import check_whole_image_file
    from .training.export import export_correction, masks_from_seg_nrrd
    from .volume import load_mask

    def split(label_map: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
        values = set(np.unique(sitk.GetArrayViewFromImage(label_map)).tolist())
        if not values <= {0, 1, 2}:
            raise InputError(f"a label map must hold 0, 1 and 2 only (found {sorted(values)[:6]}).")
        return sitk.Cast(label_map > 0, sitk.sitkUInt8), sitk.Cast(label_map == 2, sitk.sitkUInt8)

    if args.lesion and not args.cord:
        raise InputError("--lesion goes with --cord (give the cord mask too, or a label map with --labels).")
    for given in (args.labels, args.cord, args.lesion, args.predicted_labels):
        if given is not None:
            check_whole_image_file(given, "mask")
    if args.labels:
        cord, lesion = split(load_mask(args.labels, binary=False))
    elif args.seg_nrrd:
        cord, lesion = masks_from_seg_nrrd(args.seg_nrrd)
    else:
        cord = load_mask(args.cord)
        lesion = load_mask(args.lesion) if args.lesion else sitk.Cast(cord * 0, sitk.sitkUInt8)  # no lesion drawn: none
    predicted = split(load_mask(args.predicted_labels, binary=False)) if args.predicted_labels else (None, None)
    result = export_correction(
        root=args.root, source=args.source, cord=cord, lesion=lesion, rater=args.rater, model=args.model,
        predicted_cord=predicted[0], predicted_lesion=predicted[1], subject=args.subject, session=args.session,
        note=args.note, parent=_export_parent(args.parent),
    )
    if result.newer_than_parent:
        newer = ", ".join(f"v{n:03d}" for n in result.newer_than_parent)
        sys.stderr.write(f"warning: these masks were corrected from {args.parent}, but {newer} existed already; "
                         f"version {result.version} replaces them as the latest (they are kept).\n")
    print(f"version {result.version}: {result.version_folder}")
    for path in result.files.values():
        print(path)
    return EXIT_OK


def _run_dataset(args: argparse.Namespace) -> int:
    from .training.dataset import build_dataset

    _output_folder(args.output)
    folder, cases, written = build_dataset(
        args.bids, args.output, args.id, args.name, test_fraction=args.test_fraction, seed=args.seed
    )
    train = sum(c.split == "train" for c in cases)
    print(f"{folder}: {train} training and {len(cases) - train} test cases ({len(written)} written now)")
    return EXIT_OK


def _run_finetune(args: argparse.Namespace) -> int:
    from .models import resolve_model
    from .training.finetune import finetune

    result = finetune(
        resolve_model(args.base), args.dataset, name=args.name, work_dir=args.work, epochs=args.epochs,
        iterations_per_epoch=args.iterations, learning_rate=args.lr, device=args.device,
    )
    print(f"registered '{result.model.name}' ({result.model.path}); test Dice {result.test_dice}")
    return EXIT_OK


def _run_compare(args: argparse.Namespace) -> int:
    """Print compare_label_maps(first, second) as one JSON line (the Slicer panel's Compare runs this)."""
    from .file_checks import check_mask_values
    from .metrics import compare_label_maps
    from .volume import load_image, on_grid_of

    first, second = load_image(args.first), load_image(args.second)
    for path, image in ((args.first, first), (args.second, second)):  # an intensity image or label 7 is no label map
        check_mask_values(sitk_array(image), path)
    try:
        second = on_grid_of(second, first, what=str(args.second), where=str(args.first))
    except ValueError as error:
        raise InputError(f"{error}; export both label maps on the same volume.") from None
    spacing_zyx = tuple(reversed(first.GetSpacing()))
    print(json.dumps(compare_label_maps(sitk_array(first), sitk_array(second), spacing_zyx)))
    return EXIT_OK


def sitk_array(image) -> np.ndarray:
    """The voxels of a SimpleITK image as a (z, y, x) array."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image)


def _run_devices(args: argparse.Namespace) -> int:
    from .inference import available_devices

    print(json.dumps(available_devices()))
    return EXIT_OK


def _run_queue(args: argparse.Namespace) -> int:
    from .training import queue

    if args.queue_command == "score":
        from .inference import InferenceSettings, NnUNetEngine
        from .models import resolve_model

        from .volume import check_file, check_model_grid

        model = resolve_model(args.model)
        for path in args.inputs:  # headers and the model's grid, before torch
            check_model_grid(check_file(path), model.spacing_mm)
        engine = NnUNetEngine(model, InferenceSettings(device=args.device))
        records = queue.score_scans(args.inputs, engine, args.queue)
    elif args.queue_command != "qc" and not args.queue.is_file():  # `queue qc` may start a new queue
        raise InputError(f"{args.queue}: no such queue file; create it with `sciseg queue score`.")
    elif args.queue_command == "list":
        records = queue.ranked(queue.load_queue(args.queue))
    elif args.queue_command == "qc":
        records = queue.add_qc_failures(args.queue, args.decisions)
    else:
        record = queue.next_scan(args.queue, args.bids)
        if record is None:
            print("every scan of the queue has a correction")
            return EXIT_OK
        records = [record]
    for record in records:
        print(f"{record['score']:.4f}  {record['path']}")
    return EXIT_OK


def _run_evaluate(args: argparse.Namespace) -> int:
    import csv

    from .analysis_files import write_table
    from .evaluation import evaluate, raincloud, summarise

    cord_labels = _cord_labels(args.cord_labels)
    if not args.tolerance_mm > 0:
        raise InputError(f"--tolerance-mm must be a positive distance in mm, got {args.tolerance_mm}.")
    _output_folder(args.output)
    table = evaluate(args.pred, args.ref, method=args.method, cord_labels=cord_labels, tolerance_mm=args.tolerance_mm)
    groups = None
    if args.groups:
        try:
            with open(args.groups, newline="") as stream:
                rows = list(csv.DictReader(stream, delimiter="\t"))
        except (UnicodeDecodeError, csv.Error):
            raise InputError(f"{args.groups} is not a text TSV table; give a TSV with participant_id and site columns.") from None
        if not rows or "participant_id" not in rows[0]:
            raise InputError(f"{args.groups} has no participant_id column; give a TSV with participant_id and site columns.")
        column = next((c for c in ("site", "group") if rows and c in rows[0]), None)
        groups = {row["participant_id"]: row[column] for row in rows} if column else None
    args.output.mkdir(parents=True, exist_ok=True)
    write_table(table, args.output / "evaluation.csv", sheet="evaluation")
    write_table(summarise(table, groups), args.output / "summary.csv", sheet="summary")
    for structure in sorted(set(table["structure"])):
        subset = table[table["structure"] == structure]
        raincloud(subset, "dice", args.output / f"dice_{structure}.png", f"Dice, {structure}")
        raincloud(subset, "relative_volume_error_percent", args.output / f"rve_{structure}.png", f"RVE (%), {structure}")
    print(table.groupby("structure")["dice"].agg(["mean", "std", "count"]).to_string())
    print(f"tables and plots in {args.output}")
    return EXIT_OK


def _cord_labels(text: str) -> tuple[int, ...]:
    """``--cord-labels``: '1,2' or '1' (the label values forming the cord in label maps)."""
    try:
        labels = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        labels = ()
    if labels not in ((1, 2), (2, 1), (1,)):
        raise InputError(f"--cord-labels must be '1,2' (cord with lesion) or '1' (cord only), got {text!r}.")
    return labels


def _output_folder(path: Path) -> Path:
    """``-o`` given as a folder: refuse an existing file before anything is computed."""
    if path.exists() and not path.is_dir():
        raise InputError(f"-o {path} is a file; give a folder for the outputs.")
    return path


def _read_table(path: Path, sep: str = ",", what: str = "table"):
    """A CSV/TSV table read by pandas, or one sentence saying why it is not one."""
    import pandas as pd

    if not path.is_file():
        raise InputError(f"{path}: no such {what} file; check the path.")
    try:
        return pd.read_csv(path, sep=sep)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputError(f"{path} is not a text {'CSV' if sep == ',' else 'TSV'} {what} ({type(error).__name__}); "
                         "export it as plain text.") from None


def _numbers(table, column: str, path: Path) -> np.ndarray:
    """The values of ``column`` as floats (empty cells NaN); text that is not a number is refused."""
    import pandas as pd

    values = pd.to_numeric(table[column], errors="coerce")
    bad = table[column][values.isna() & table[column].notna()]
    if len(bad):
        raise InputError(f"column '{column.removesuffix('_a').removesuffix('_b')}' of {path} holds text that is not a number ({str(bad.iloc[0])[:40]!r}); "
                         "fix or remove that row.")
    return values.to_numpy(float)


def _run_stats(args: argparse.Namespace) -> int:
    import pandas as pd

    from .analysis_files import write_table
    from .stats import agreement, clinical_correlation, scatter_plot

    _output_folder(args.output)
    first, second = _read_table(args.a), _read_table(args.b)
    for table, path in ((first, args.a), (second, args.b)):
        if "subject" not in table.columns:
            raise InputError(f"{path} needs a 'subject' column to pair the measures.")
    merged = first.merge(second, on="subject", suffixes=("_a", "_b"))
    if merged.empty:
        raise InputError("the two tables share no subject.")
    clinical = _read_table(args.clinical, sep="\t", what="clinical table") if args.clinical else None
    if clinical is not None and args.score:
        for needed in ("participant_id", args.score):
            if needed not in clinical.columns:
                raise InputError(f"{args.clinical} has no '{needed}' column (it has {', '.join(map(str, clinical.columns))}).")
    rows = []
    missing = [column for column in args.columns if f"{column}_a" not in merged.columns]
    if missing:
        raise InputError(f"column '{missing[0]}' is missing from one of the tables.")
    for column in args.columns:  # every column is checked before anything is written
        _numbers(merged, f"{column}_a", args.a), _numbers(merged, f"{column}_b", args.b)
    args.output.mkdir(parents=True, exist_ok=True)
    for column in args.columns:
        first_values, second_values = _numbers(merged, f"{column}_a", args.a), _numbers(merged, f"{column}_b", args.b)
        if int(np.sum(np.isfinite(first_values) & np.isfinite(second_values))) < 2:
            raise InputError(f"column '{column}' has fewer than two subjects measured in both tables; nothing to compare.")
        result = agreement(first_values, second_values).as_dict()
        if clinical is not None and args.score:
            scores = merged["subject"].map(dict(zip(clinical["participant_id"], _numbers(clinical, args.score, args.clinical),
                                                    strict=True)))
            for side in ("a", "b"):
                result[f"spearman_{args.score}_{side}"], result[f"spearman_{args.score}_{side}_p"] = clinical_correlation(
                    first_values if side == "a" else second_values, scores.to_numpy(float))
        rows.append({"measure": column, **result})
        safe = "".join(ch if ch.isalnum() else "_" for ch in column).strip("_")
        scatter_plot(merged[f"{column}_a"], merged[f"{column}_b"], args.output / f"scatter_{safe}.png",
                     label_a=f"{column} ({args.a.stem})", label_b=f"{column} ({args.b.stem})", title=column)
    write_table(pd.DataFrame(rows), args.output / "agreement.csv", sheet="agreement")
    print(pd.DataFrame(rows)[["measure", "n", "wilcoxon_p", "bland_altman_bias", "spearman_rho"]].to_string(index=False))
    return EXIT_OK


def _run_consensus(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    if args.cord is not None:
        from .compartments_cli import run_compartment_consensus

        return run_compartment_consensus(args.masks, args.cord, args.output)
    if args.output is None:
        raise InputError("give the consensus file with -o (e.g. -o consensus.nii.gz).")

    from .consensus import majority_vote, majority_vote_labels, reproducibility, staple
    from .file_checks import check_mask_values, check_whole_image_file
    from .volume import load_mask, on_grid_of, write_image_atomic

    if len(args.masks) < 2:
        raise InputError("a consensus needs the masks of at least two raters; give two or more files.")
    if not str(args.output).lower().endswith((".nii", ".nii.gz", ".nrrd")) or args.output.is_dir():
        raise InputError(f"-o {args.output} must be a file name ending in .nii.gz, .nii or .nrrd.")
    for path in args.masks:
        check_whole_image_file(path, "mask")
    images = [load_mask(path, binary=False) for path in args.masks]
    for path, image in zip(args.masks, images, strict=True):
        check_mask_values(sitk.GetArrayViewFromImage(image), path)
    try:
        arrays = [sitk.GetArrayFromImage(on_grid_of(image, images[0], what=str(path), where=str(args.masks[0])))
                  for path, image in zip(args.masks, images, strict=True)]
    except ValueError as error:
        raise InputError(f"{error}; the masks of a consensus must be drawn on one volume.") from None
    label_maps = any(np.any(a == 2) for a in arrays)
    if args.method == "staple":
        if label_maps:
            raise InputError("STAPLE takes binary masks; give the cord or the lesion masks.")
        result = staple([a > 0 for a in arrays])[0].astype(np.uint8)
    elif label_maps:
        result = majority_vote_labels(arrays, args.tie)
    else:
        result = majority_vote([a > 0 for a in arrays], args.tie).astype(np.uint8)
    output = sitk.GetImageFromArray(result)
    output.CopyInformation(images[0])
    write_image_atomic(output, args.output)
    measures = reproducibility([a > 0 for a in arrays], tuple(reversed(images[0].GetSpacing())))
    measures = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in measures.items()}  # JSON has no NaN
    print(json.dumps({"consensus": str(args.output), **measures}, indent=2, allow_nan=False))
    return EXIT_OK


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    report = run_demo(args.output, device=args.device)
    print(f"demo image:     {report['image']}")
    for name, path in report["outputs"].items():
        print(f"{name + ' mask:':<15} {path}")
    print(f"Dice vs truth:  cord {report['dice']['sc']:.3f}, lesion {report['dice']['lesion']:.3f}")
    print(f"inference took {report['seconds']:.1f} s on {report['device']}")
    return EXIT_OK


def _run_review(args: argparse.Namespace) -> int:
    from .review.command import run_review

    run_review(args.bids, args.queue, args.model, args.host, args.port, args.allow_remote, args.max_sessions, args.idle_minutes)
    return EXIT_OK


EXIT_SOME_FAILED = 3


def _add_run_parser(commands) -> None:
    """``sciseg run``: the whole pipeline over a cohort on Dask (SCIsegLib.cohort)."""
    run = commands.add_parser(
        "run", help="segment, measure and QC a cohort (BIDS dataset or files) on Dask, resumable",
        description="Per scan: segment -> lesion morphometrics -> cord CSA per slice -> QC images, written to a BIDS "
        "derivatives folder with run_summary.csv, cohort_subjects.csv, cohort_lesions.csv and qc/index.html. Scans whose "
        "outputs are complete for the same source, model and settings are skipped (--force redoes them). Exit codes: 0 "
        "every scan done or skipped, 3 some scans failed (see run_summary.csv), 2 bad arguments, 130 cancelled.",
    )
    run.add_argument("inputs", nargs="*", type=Path, metavar="INPUT", help="image files (instead of --bids)")
    run.add_argument("--bids", type=Path, default=None, help="BIDS dataset root: takes sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]")
    run.add_argument("--suffix", default="T2w", help="BIDS suffix of the scans (default T2w)")
    run.add_argument("--include", default=None, help="shell pattern on subject folders, e.g. 'sub-0*'")
    run.add_argument("--participant-label", nargs="+", default=None, metavar="LABEL",
                     help="with --bids: only these participants (01 or sub-01); a label without a scan is refused")
    run.add_argument("-o", "--output", type=Path, required=True, help="derivatives folder (outside the sub-* folders)")
    run.add_argument("--model", default="sciseg-v2", help="installed model name or model folder (default: sciseg-v2)")
    run.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (on the workers)")
    run.add_argument("--engine", choices=("auto", "reference", "openvino", "torch-bf16", "cuda"), default="auto",
                     help="as for `sciseg segment` (auto: the fastest that works on the workers; reference: SCT's exact call)")
    run.add_argument("--crop", choices=CROP_MODES, default="fast", help="as for `sciseg segment` (fast engines)")
    run.add_argument("--force", action="store_true", help="redo scans whose outputs are complete")
    run.add_argument(
        "--labels", choices=("corrected", "model"), default="corrected",
        help="corrected (default): measure each scan on its latest rater correction in BIDS_ROOT/derivatives/labels "
        "where one exists, else on the model's masks (a rerun redoes only the scans whose correction changed); "
        "model: always segment and measure the model's masks",
    )
    run.add_argument("--lesion-in-cord", action="store_true", help="drop lesion voxels outside the cord")
    run.add_argument("--keep-largest-cord", action="store_true", help="keep only the largest cord component")
    run.add_argument(
        "--scheduler", default=None,
        help="where to run: omitted or 'local' = a LocalCluster sized to this machine; tcp://host:8786 = an existing "
        "Dask scheduler (its workers need SCIseg installed); 'slurm' = workers submitted as SLURM jobs (--slurm-*)",
    )
    run.add_argument("--workers", type=int, default=None, help="worker processes (local) or SLURM jobs (default: sized to the machine; 1 job)")
    run.add_argument("--memory-per-worker", default=None, help="memory limit of each local worker, e.g. 4GiB (default: RAM / workers)")
    run.add_argument("--slurm-queue", default=None, help="SLURM partition (-p)")
    run.add_argument("--slurm-account", default=None, help="SLURM account (-A)")
    run.add_argument("--slurm-walltime", default="04:00:00", help="time limit of each worker job (default 04:00:00)")
    run.add_argument("--slurm-memory", default="16GB", help="memory of each worker job (default 16GB)")
    run.add_argument("--slurm-cores", type=int, default=4, help="CPU cores of each worker job (default 4)")
    run.add_argument("--slurm-gpus", type=int, default=0, help="GPUs of each worker job (--gres=gpu:N; default 0)")
    run.add_argument("--slurm-job-extra", action="append", default=[], metavar="DIRECTIVE",
                     help="extra #SBATCH directive, repeatable, e.g. --slurm-job-extra=--constraint=a100")
    run.add_argument(
        "--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
        help="a bar over scans on a terminal (auto), one JSON event per line on stdout (jsonl), or none",
    )


def _run_cohort(args: argparse.Namespace, events: _JsonLines | None) -> int:
    from .cohort.cluster import SlurmOptions, plan_cluster
    from .cohort.discovery import check_output_folder, find_bids_scans, read_participants, scans_from_files
    from .cohort.run import run_cohort
    from .models import resolve_model
    from .postprocess import PostprocessSettings

    if bool(args.bids) == bool(args.inputs):
        raise InputError("give either --bids ROOT or image files, not both and not neither.")
    if args.participant_label and not args.bids:
        raise InputError("--participant-label selects participants of a BIDS dataset; give it with --bids ROOT.")
    scans = (find_bids_scans(args.bids, args.suffix, args.include, args.participant_label) if args.bids
             else scans_from_files(args.inputs))
    check_output_folder(args.output, scans, args.bids)
    slurm = SlurmOptions(queue=args.slurm_queue, account=args.slurm_account, walltime=args.slurm_walltime,
                         memory=args.slurm_memory, cores=args.slurm_cores, gpus=args.slurm_gpus,
                         job_extra=tuple(args.slurm_job_extra), log_directory=str(args.output.resolve() / "logs" / "slurm"))
    plan = plan_cluster(args.scheduler, args.workers, args.device, args.memory_per_worker, slurm)
    model = resolve_model(args.model)
    postprocess = PostprocessSettings(keep_largest_cord=args.keep_largest_cord, lesion_inside_cord=args.lesion_in_cord)
    bar = None
    if events is None and (args.progress == "bar" or (args.progress == "auto" and sys.stderr.isatty())):
        from tqdm import tqdm

        bar = tqdm(total=len(scans), unit="scan", file=sys.stderr)

    def on_event(event: dict) -> None:
        if events is not None:
            events(event)
        if event["event"] == "start":
            where = f"Dask dashboard: {event['dashboard']}" if event["dashboard"] else "no Dask dashboard (install bokeh for one)"
            sys.stderr.write(f"sciseg run: {event['scans']} scans on {event['workers']} {event['cluster']} worker(s); {where}\n")
            sys.stderr.write(f"sciseg run: QC report {event['report']}\n")
        elif event["event"] == "scan":
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{event['status']} {Path(event['file']).name}")
            if event["status"] == "failed" and events is None:
                sys.stderr.write(f"sciseg run: failed: {event['file']}: {event['reason']}\n")

    try:
        outcome = run_cohort(scans, args.output, model, plan, postprocess=postprocess, force=args.force,
                             participants=read_participants(args.bids), on_event=on_event,
                             engine=args.engine, crop=args.crop,
                             corrections_root=args.bids if args.labels == "corrected" else None,
                             command=shlex.join(["sciseg", *sys.argv[1:]]), source_dataset=args.bids)
    except KeyboardInterrupt:
        raise CancelledError("run cancelled; finished scans are kept, run the same command again to do the rest.") from None
    finally:
        if bar is not None:
            bar.close()
    failed = outcome.count("failed")
    if events is None:
        print(f"{outcome.count('done')} done, {outcome.count('skipped')} skipped (already complete), {failed} failed")
        print(f"summary: {outcome.summary}")
        for table in outcome.tables:
            print(f"table:   {table}")
        print(f"QC:      {outcome.report}")
    return EXIT_SOME_FAILED if failed else EXIT_OK


#: Subcommand -> handler (``segment`` also takes the JSON-lines event writer).
HANDLERS = {
    "models": _run_models,
    "analyze": _run_analyze,
    "cord": _run_cord,
    "export": _run_export,
    "dataset": _run_dataset,
    "finetune": _run_finetune,
    "queue": _run_queue,
    "evaluate": _run_evaluate,
    "stats": _run_stats,
    "consensus": _run_consensus,
    "compare": _run_compare,
    "devices": _run_devices,
    "demo": _run_demo,
    "review": _run_review,
    "engine": _run_engine,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sciseg`` and ``python -m SCIsegLib``; returns the exit code."""
    args = build_parser().parse_args(argv)
    jsonl = getattr(args, "progress", None) == "jsonl"
    events = _JsonLines(sys.stdout) if jsonl else None
    # In jsonl mode stdout carries only events: anything a library prints goes to stderr.
    redirect = contextlib.redirect_stdout(sys.stderr) if jsonl else contextlib.nullcontext()
    try:
        with redirect, cancel.checked():
            if args.command == "segment":
                return _run_segment(args, events)
            if args.command == "models":
                return _run_models(args, events)
            if args.command == "run":
                return _run_cohort(args, events)
            return HANDLERS[args.command](args)
    except CancelledError as error:
        _report(events, "cancelled", str(error))
        return EXIT_CANCELLED
    except (InputError, DownloadError) as error:
        _report(events, "error", str(error), kind="input")
        return EXIT_INPUT
    except (SCIsegError, OSError, MemoryError) as error:
        sentence = _file_error_sentence(error) if isinstance(error, OSError) else None
        if sentence is not None:  # a wrong path, a file where a folder goes, no rights, a full disk: the user's to fix
            _report(events, "error", sentence, kind="input")
            return EXIT_INPUT
        if args.verbose:
            traceback.print_exc()
        _report(events, "error", f"{error}" + ("" if args.verbose else " (run with --verbose for details)"), kind="internal")
        return EXIT_INTERNAL
    except Exception as error:  # noqa: BLE001 - last resort: one sentence, the traceback only on request
        if args.verbose:
            traceback.print_exc()
        name = type(error).__name__
        _report(events, "error", f"internal error ({name}: {error}); run with --verbose for the traceback.", kind="internal")
        return EXIT_INTERNAL


#: errno of file-system errors the user can fix (a wrong path, a file where a folder goes, rights, space).
_USER_ERRNO = {
    errno.ENOENT: "no such file or folder; check the path",
    errno.EISDIR: "is a folder where a file is needed; give a file",
    errno.ENOTDIR: "a file stands where a folder is needed; give a folder",
    errno.EEXIST: "a file stands where a folder is needed; give a folder",
    errno.EACCES: "permission denied; choose a file or folder you can read and write",
    errno.EPERM: "operation not permitted; choose a file or folder you can read and write",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.ENOSPC: "no space left on the disk; free some space and run again",
    errno.ENAMETOOLONG: "the name is too long; use a shorter path",
}


def _file_error_sentence(error: OSError) -> str | None:
    """One sentence for a file-system error caused by the user's paths or disk, None for anything else."""
    reason = _USER_ERRNO.get(error.errno or -1)
    if reason is None:
        return None
    where = error.filename if error.filename is not None else "a file"
    return f"{where}: {reason}."


def _report(events: _JsonLines | None, kind_of_event: str, message: str, kind: str | None = None) -> None:
    sys.stderr.write(f"sciseg: {message}\n")
    if events is not None:
        payload = {"event": kind_of_event, "message": message}
        if kind:
            payload["kind"] = kind
        events(payload)


def console_main() -> None:
    """``sciseg`` and ``python -m SCIsegLib``: run :func:`main` and exit with its code.

    A cancelled run leaves nnU-Net's tile-feeding thread (and torch's workers) behind; letting the
    interpreter tear them down can abort the process ("terminate called without an active exception"),
    so after a cancel the process ends at once, its outputs flushed (nothing else is pending: every
    file is written atomically and temporary files are removed before this point).
    SIGINT, SIGTERM and ``$SCISEG_CANCEL_FILE`` are routed by :mod:`SCIsegLib.cancel` (exit code 130).
    """
    cancel.install()
    try:
        code = main()
    except CancelledError as error:  # cancelled before main's own handling (start-up, argument parsing)
        sys.stderr.write(f"sciseg: {error}\n")
        code = EXIT_CANCELLED
    if code == EXIT_CANCELLED or _command_of(sys.argv[1:]) in QUICK_EXIT_COMMANDS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


#: Commands that end at once after their last output (no interpreter teardown): tearing torch, OpenVINO and
#: nnU-Net down took 1-4 s of a cold ``sciseg segment`` on a loaded 2-core machine, for nothing (every output
#: is published and closed by then, and a segmentation starts no process that needs a clean exit).
QUICK_EXIT_COMMANDS = frozenset({"segment"})


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), or None."""
    return next((word for word in argv if not word.startswith("-")), None)
