"""The ``sciseg`` command. Thin: every subcommand calls the library.

Exit codes: 0 success, 2 bad input (the message says what to fix), 1 internal failure,
130 cancelled (Ctrl-C or SIGTERM; no output is written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Callable, TextIO

import numpy as np

from . import __version__
from .errors import CancelledError, InputError, SCIsegError

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
    segment.add_argument("--no-crop", action="store_true", help="fast engines: run the whole image, not only a box around the cord")
    segment.add_argument("--keep-largest-cord", action="store_true", help="keep only the largest cord component")
    segment.add_argument("--fill-holes", action="store_true", help="fill holes in the cord and lesion masks")
    segment.add_argument("--lesion-in-cord", action="store_true", help="drop lesion voxels outside the cord")
    segment.add_argument("--min-object-mm3", type=float, default=None, help="remove components smaller than this (mm3)")
    segment.add_argument("--label-map", action="store_true", help="also write <stem>_labels.nii.gz (0/1/2)")
    segment.add_argument("--probabilities", action="store_true", help="also write <stem>_<structure>_prob.nii.gz")
    segment.add_argument("--replace-nonfinite", action="store_true", help="set NaN/inf voxels to 0 instead of refusing")
    segment.add_argument(
        "--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
        help="progress display: a bar on a terminal (auto), one JSON event per line on stdout (jsonl), or none",
    )

    models = commands.add_parser("models", help="list, inspect, install and remove models")
    model_commands = models.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    model_commands.add_parser("list", help="list bundled and installed models")
    info = model_commands.add_parser("info", help="describe one model (JSON)")
    info.add_argument("name")
    install = model_commands.add_parser("install", help="install from sciseg-v1, sciseg-v2, a URL, a zip or a folder")
    install.add_argument("source")
    install.add_argument("--name", default=None, help="name in the store (default: derived from the source)")
    install.add_argument("--force", action="store_true", help="replace an installed model of the same name")
    install.add_argument("--sha256", default=None, help="expected sha256 of the zip")
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

    cord = commands.add_parser("cord", help="cord cross-sectional area per slice as sct_process_segmentation -perslice 1")
    cord.add_argument("--cord", type=Path, required=True, help="binary or soft cord mask")
    cord.add_argument("-o", "--output", type=Path, default=Path("."), help="output folder")
    cord.add_argument("--no-angle-correction", action="store_true", help="measure the axial sections as they are")

    export = commands.add_parser("export", help="save corrected masks as a new version in a BIDS derivatives folder")
    export.add_argument("--root", type=Path, required=True, help="BIDS dataset; labels go to ROOT/derivatives/labels")
    export.add_argument("--source", type=Path, required=True, help="the image the masks were drawn on")
    export.add_argument("--rater", required=True, help="who corrected the masks")
    masks = export.add_mutually_exclusive_group(required=True)
    masks.add_argument("--labels", type=Path, help="label map: 1 cord only, 2 lesion")
    masks.add_argument("--seg-nrrd", type=Path, help="Slicer segmentation with segments spinal_cord and lesion")
    masks.add_argument("--cord", type=Path, help="cord mask (use with --lesion)")
    export.add_argument("--lesion", type=Path, help="lesion mask (with --cord)")
    export.add_argument("--model", default=None, help="the model that made the prediction")
    export.add_argument("--predicted-labels", type=Path, default=None, help="the model's label map, to record what changed")
    export.add_argument("--subject", default=None, help="BIDS subject label when the file name has none")
    export.add_argument("--session", default=None, help="BIDS session label")
    export.add_argument("--note", default="", help="free text kept in the sidecars")

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
    vote.add_argument("masks", nargs="+", type=Path, help="binary masks or label maps of one subject, same grid")
    vote.add_argument("--method", choices=("majority", "staple"), default="majority")
    vote.add_argument("--tie", choices=("background", "foreground"), default="background", help="majority vote ties")
    vote.add_argument("-o", "--output", type=Path, required=True, help="consensus file (.nii.gz)")

    commands.add_parser("devices", help="list the devices torch can use here (JSON)")

    demo = commands.add_parser("demo", help="segment a synthetic example with the bundled demo model")
    demo.add_argument("-o", "--output", type=Path, default=Path("sciseg_demo_output"), help="output folder")
    demo.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    return parser


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
    """SIGINT/SIGTERM set the cancel token (the run stops between tiles); a second SIGINT aborts."""

    def handler(signum, frame):
        if token.cancelled and signum == signal.SIGINT:
            raise KeyboardInterrupt
        token.cancel()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _run_segment(args: argparse.Namespace, events: _JsonLines | None) -> int:
    from .inference import CancelToken, InferenceSettings, make_engine
    from .models import resolve_model
    from .postprocess import PostprocessSettings
    from .segment import segment_files

    if not 0 < args.step <= 1:
        raise InputError(f"--step must be in (0, 1], got {args.step}.")
    model = resolve_model(args.model)
    settings = InferenceSettings(device=args.device, folds=args.folds, step_size=args.step, tta=args.tta, threads=args.threads,
                                 engine=args.engine, crop=not args.no_crop)
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
            by_folder: dict[Path, list[Path]] = {}
            for path in args.inputs:
                by_folder.setdefault(args.output or path.parent, []).append(path)
            for folder, paths in by_folder.items():
                records += segment_files(
                    paths, folder, engine, settings=settings, postprocess=postprocess,
                    write_label_map=args.label_map, want_probabilities=args.probabilities,
                    replace_nonfinite=args.replace_nonfinite, progress=callback, cancel=token,
                )
    finally:
        close()
    if events is not None:
        events({"event": "result", "model": model.name, "records": records})
    else:
        for record in records:
            print(f"{record['input']}: {', '.join(record['outputs'])} ({record['seconds']:.1f} s on {record['device']})")
    return EXIT_OK


def _run_models(args: argparse.Namespace) -> int:
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
        def show(done: int, total: int | None) -> None:
            if sys.stderr.isatty():
                share = f"{100 * done / total:5.1f} %" if total else ""
                sys.stderr.write(f"\rdownloading {done / 1e6:8.1f} MB {share}")

        info = models.install(args.source, name=args.name, force=args.force, expected_sha256=args.sha256, progress=show)
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        print(f"installed '{info.name}' in {info.path} (sha256 {info.metadata.get('sha256') or info.metadata.get('weights_sha256')})")
        return EXIT_OK
    removed = models.remove(args.name)
    print(f"removed {removed}")
    return EXIT_OK


def _run_analyze(args: argparse.Namespace) -> int:
    from .analysis_files import write_lesion_analysis
    from .lesions import analyze_lesions, per_slice_profile
    from .volume import image_stem, load_mask

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
    from .analysis_files import write_table
    from .cord import cord_morphometry
    from .volume import image_stem, load_mask

    table = cord_morphometry(load_mask(args.cord, binary=False), angle_correction=not args.no_angle_correction)
    for path in write_table(table, args.output / f"{image_stem(args.cord)}_csa.csv", sheet="csa"):
        print(path)
    return EXIT_OK


def _run_export(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from .training.export import export_correction, masks_from_seg_nrrd
    from .volume import load_mask

    def split(label_map: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
        values = set(np.unique(sitk.GetArrayViewFromImage(label_map)).tolist())
        if not values <= {0, 1, 2}:
            raise InputError(f"a label map must hold 0, 1 and 2 only (found {sorted(values)[:6]}).")
        return sitk.Cast(label_map > 0, sitk.sitkUInt8), sitk.Cast(label_map == 2, sitk.sitkUInt8)

    if args.labels:
        cord, lesion = split(load_mask(args.labels, binary=False))
    elif args.seg_nrrd:
        cord, lesion = masks_from_seg_nrrd(args.seg_nrrd)
    else:
        if not args.lesion:
            raise InputError("--cord needs --lesion too.")
        cord, lesion = load_mask(args.cord), load_mask(args.lesion)
    predicted = split(load_mask(args.predicted_labels, binary=False)) if args.predicted_labels else (None, None)
    result = export_correction(
        root=args.root, source=args.source, cord=cord, lesion=lesion, rater=args.rater, model=args.model,
        predicted_cord=predicted[0], predicted_lesion=predicted[1], subject=args.subject, session=args.session,
        note=args.note,
    )
    print(f"version {result.version}: {result.version_folder}")
    for path in result.files.values():
        print(path)
    return EXIT_OK


def _run_dataset(args: argparse.Namespace) -> int:
    from .training.dataset import build_dataset

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


def _run_devices(args: argparse.Namespace) -> int:
    from .inference import available_devices

    print(json.dumps(available_devices()))
    return EXIT_OK


def _run_queue(args: argparse.Namespace) -> int:
    from .training import queue

    if args.queue_command == "score":
        from .inference import InferenceSettings, NnUNetEngine
        from .models import resolve_model

        engine = NnUNetEngine(resolve_model(args.model), InferenceSettings(device=args.device))
        records = queue.score_scans(args.inputs, engine, args.queue)
    elif args.queue_command == "list":
        records = queue.ranked(queue.load_queue(args.queue))
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

    cord_labels = tuple(int(v) for v in args.cord_labels.split(","))
    table = evaluate(args.pred, args.ref, method=args.method, cord_labels=cord_labels, tolerance_mm=args.tolerance_mm)
    groups = None
    if args.groups:
        with open(args.groups, newline="") as stream:
            rows = list(csv.DictReader(stream, delimiter="\t"))
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


def _run_stats(args: argparse.Namespace) -> int:
    import pandas as pd

    from .analysis_files import write_table
    from .stats import agreement, clinical_correlation, scatter_plot

    first, second = pd.read_csv(args.a), pd.read_csv(args.b)
    for table, path in ((first, args.a), (second, args.b)):
        if "subject" not in table.columns:
            raise InputError(f"{path} needs a 'subject' column to pair the measures.")
    merged = first.merge(second, on="subject", suffixes=("_a", "_b"))
    if merged.empty:
        raise InputError("the two tables share no subject.")
    clinical = pd.read_csv(args.clinical, sep="\t") if args.clinical else None
    rows = []
    args.output.mkdir(parents=True, exist_ok=True)
    for column in args.columns:
        if f"{column}_a" not in merged.columns:
            raise InputError(f"column '{column}' is missing from one of the tables.")
        result = agreement(merged[f"{column}_a"].to_numpy(float), merged[f"{column}_b"].to_numpy(float)).as_dict()
        if clinical is not None and args.score:
            scores = merged["subject"].map(dict(zip(clinical["participant_id"], clinical[args.score], strict=True)))
            for side in ("a", "b"):
                result[f"spearman_{args.score}_{side}"], result[f"spearman_{args.score}_{side}_p"] = clinical_correlation(
                    merged[f"{column}_{side}"].to_numpy(float), scores.to_numpy(float))
        rows.append({"measure": column, **result})
        safe = "".join(ch if ch.isalnum() else "_" for ch in column).strip("_")
        scatter_plot(merged[f"{column}_a"], merged[f"{column}_b"], args.output / f"scatter_{safe}.png",
                     label_a=f"{column} ({args.a.stem})", label_b=f"{column} ({args.b.stem})", title=column)
    write_table(pd.DataFrame(rows), args.output / "agreement.csv", sheet="agreement")
    print(pd.DataFrame(rows)[["measure", "n", "wilcoxon_p", "bland_altman_bias", "spearman_rho"]].to_string(index=False))
    return EXIT_OK


def _run_consensus(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from .consensus import majority_vote, majority_vote_labels, reproducibility, staple
    from .volume import load_mask, on_grid_of, write_image_atomic

    images = [load_mask(path, binary=False) for path in args.masks]
    try:
        arrays = [sitk.GetArrayFromImage(on_grid_of(image, images[0])) for image in images]
    except ValueError:
        raise InputError("the masks do not lie on the same grid.") from None
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
    print(json.dumps({"consensus": str(args.output), **measures}, indent=2))
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
    "devices": _run_devices,
    "demo": _run_demo,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sciseg`` and ``python -m SCIsegLib``; returns the exit code."""
    args = build_parser().parse_args(argv)
    jsonl = getattr(args, "progress", None) == "jsonl"
    events = _JsonLines(sys.stdout) if jsonl else None
    # In jsonl mode stdout carries only events: anything a library prints goes to stderr.
    redirect = contextlib.redirect_stdout(sys.stderr) if jsonl else contextlib.nullcontext()
    try:
        with redirect:
            if args.command == "segment":
                return _run_segment(args, events)
            return HANDLERS[args.command](args)
    except CancelledError as error:
        _report(events, "cancelled", str(error))
        return EXIT_CANCELLED
    except InputError as error:
        _report(events, "error", str(error), kind="input")
        return EXIT_INPUT
    except (SCIsegError, OSError, MemoryError) as error:
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
    """
    code = main()
    if code == EXIT_CANCELLED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
