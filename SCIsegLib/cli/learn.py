"""``sciseg export``, ``dataset``, ``finetune`` and ``queue``: active learning from raters' corrections."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import EXIT_OK, Parser, output_folder


def _add_export(commands) -> None:
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


def _add_dataset(commands) -> None:
    dataset = commands.add_parser("dataset", help="nnU-Net datasets from exported corrections")
    dataset_commands = dataset.add_subparsers(dest="dataset_command", required=True, parser_class=Parser)
    build = dataset_commands.add_parser("build", help="build or update an nnU-Net raw dataset (RPI, region labels)")
    build.add_argument("--bids", type=Path, nargs="+", required=True, help="BIDS datasets with derivatives/labels")
    build.add_argument("-o", "--output", type=Path, required=True, help="nnU-Net raw folder (nnUNet_raw)")
    build.add_argument("--id", type=int, required=True, help="nnU-Net dataset id (1-999)")
    build.add_argument("--name", required=True, help="dataset name, e.g. SCIsegFinetune")
    build.add_argument("--test-fraction", type=float, default=0.2, help="share of subjects held out for testing")
    build.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")


def _add_finetune(commands) -> None:
    tune = commands.add_parser("finetune", help="fine-tune a model on a built dataset and register the result")
    tune.add_argument("--base", required=True, help="installed model (name or folder) to start from")
    tune.add_argument("--dataset", type=Path, required=True, help="nnU-Net raw dataset folder (DatasetXXX_Name)")
    tune.add_argument("--name", required=True, help="name of the new model in the store")
    tune.add_argument("--work", type=Path, required=True, help="work folder (preprocessed data, checkpoints; reuse it to resume)")
    tune.add_argument("--epochs", type=int, default=10)
    tune.add_argument("--iterations", type=int, default=50, help="training steps per epoch")
    tune.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (nnU-Net's poly schedule)")
    tune.add_argument("--device", default="auto", help="auto (GPU when present), cuda, mps or cpu")


def _add_queue(commands) -> None:
    review = commands.add_parser("queue", help="rank scans by model uncertainty for review")
    review_commands = review.add_subparsers(dest="queue_command", required=True, parser_class=Parser)
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


def _export_parent(text: str | None) -> int | str | None:
    """``--parent``: ``v002`` / ``2`` -> 2, ``prediction`` / ``empty`` as they are, None when not given."""
    from ..training.export import FROM_EMPTY, FROM_PREDICTION

    if text is None or text in (FROM_PREDICTION, FROM_EMPTY):
        return text
    number = text.removeprefix("v")
    if not number.isdigit() or int(number) < 1:
        raise InputError(f"--parent {text!r} is not a version (v001, 2, ...), 'prediction' or 'empty'.")
    return int(number)


def _run_export(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from ..file_checks import check_whole_image_file
    from ..training.export import export_correction, masks_from_seg_nrrd
    from ..volume import load_mask

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
    from ..training.dataset import build_dataset

    output_folder(args.output)
    folder, cases, written = build_dataset(
        args.bids, args.output, args.id, args.name, test_fraction=args.test_fraction, seed=args.seed
    )
    train = sum(c.split == "train" for c in cases)
    print(f"{folder}: {train} training and {len(cases) - train} test cases ({len(written)} written now)")
    return EXIT_OK


def _run_finetune(args: argparse.Namespace) -> int:
    from ..models import resolve_model
    from ..training.finetune import finetune

    result = finetune(
        resolve_model(args.base), args.dataset, name=args.name, work_dir=args.work, epochs=args.epochs,
        iterations_per_epoch=args.iterations, learning_rate=args.lr, device=args.device,
    )
    print(f"registered '{result.model.name}' ({result.model.path}); test Dice {result.test_dice}")
    return EXIT_OK


def _run_queue(args: argparse.Namespace) -> int:
    from ..training import queue

    if args.queue_command == "score":
        from ..inference import InferenceSettings, NnUNetEngine
        from ..models import resolve_model

        from ..volume import check_file, check_model_grid

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


PARSERS = {"export": _add_export, "dataset": _add_dataset, "finetune": _add_finetune, "queue": _add_queue}
HANDLERS = {"export": _run_export, "dataset": _run_dataset, "finetune": _run_finetune, "queue": _run_queue}
