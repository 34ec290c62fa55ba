"""``sciseg analyze``, ``cord``, ``evaluate``, ``stats``, ``consensus`` and ``compare``: measuring masks."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from ..errors import InputError
from .common import EXIT_INTERNAL, EXIT_OK, output_folder


def _add_analyze(commands) -> None:
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


def _add_cord(commands) -> None:
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


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="segmentation and lesion-wise metrics against references")
    evaluate.add_argument("--pred", type=Path, nargs="+", required=True, help="predicted masks or label maps, or folders of them")
    evaluate.add_argument("--ref", type=Path, nargs="+", required=True, help="reference masks or label maps, or folders (e.g. a BIDS derivatives tree)")
    evaluate.add_argument("-o", "--output", type=Path, required=True, help="output folder (CSV, summary, plots)")
    evaluate.add_argument("--method", default="prediction", help="name of the method in the tables and plots")
    evaluate.add_argument("--cord-labels", default="1,2", help="labels forming the cord in label maps: '1,2' or '1'")
    evaluate.add_argument("--tolerance-mm", type=float, default=1.0, help="tolerance of the normalised surface Dice")
    evaluate.add_argument("--groups", type=Path, default=None, help="TSV with participant_id and site (or group) columns")


def _add_stats(commands) -> None:
    compare = commands.add_parser("stats", help="agreement of two morphometrics tables (Wilcoxon, Bland-Altman, Spearman)")
    compare.add_argument("--a", type=Path, required=True, help="first table (CSV with a 'subject' column), e.g. manual")
    compare.add_argument("--b", type=Path, required=True, help="second table, e.g. automatic")
    compare.add_argument("--columns", nargs="+", default=["volume [mm3]", "length [mm]", "max_axial_damage_ratio []"])
    compare.add_argument("--clinical", type=Path, default=None, help="TSV with participant_id and clinical scores")
    compare.add_argument("--score", default=None, help="clinical score column for Spearman correlations")
    compare.add_argument("-o", "--output", type=Path, required=True)


def _add_consensus(commands) -> None:
    vote = commands.add_parser("consensus", help="consensus of several raters' masks and their reproducibility")
    vote.add_argument("masks", nargs="+", type=Path, help="binary masks or label maps of one subject, same grid "
                      "(with --cord: grey-matter masks of repeated scans or raters)")
    vote.add_argument("--method", choices=("majority", "staple"), default="majority")
    vote.add_argument("--tie", choices=("background", "foreground"), default="background", help="majority vote ties")
    vote.add_argument("-o", "--output", type=Path, default=None, help="consensus file (.nii.gz); optional with --cord")
    vote.add_argument("--cord", type=Path, nargs="+", default=None,
                      help="cord masks, one per grey-matter mask (or one for all): relative SD of GM and WM areas, and "
                           "GM/WM Dice and Hausdorff between masks on one grid (JSON)")


def _add_compare(commands) -> None:
    changes = commands.add_parser("compare", help="how much two SCIseg label maps of one scan differ (JSON): what a rater changed")
    changes.add_argument("first", type=Path, help="label map before (0 background, 1 cord only, 2 lesion)")
    changes.add_argument("second", type=Path, help="label map after, on the same grid")


def _run_analyze(args: argparse.Namespace) -> int:
    from ..analysis_files import write_lesion_analysis
    from ..lesions import analyze_lesions, per_slice_profile
    from ..volume import image_stem, load_mask

    output_folder(args.output)
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
    from ..analysis_files import write_cord_table
    from ..cord import cord_morphometry
    from ..volume import image_stem, load_mask

    output_folder(args.output)
    angle_correction = not args.no_angle_correction
    if args.gm is not None or args.levels is not None:
        from ..compartments_cli import run_compartment_areas

        run_compartment_areas(args.gm, args.cord, args.levels, args.output, angle_correction, args.centerline_smooth)
    table = cord_morphometry(load_mask(args.cord, binary=False), angle_correction, args.centerline_smooth)
    output = args.output / f"{image_stem(args.cord)}_csa.csv"
    for path in write_cord_table(table, output, args.cord.resolve(), angle_correction, args.centerline_smooth):
        print(path)
    return EXIT_OK


def _run_compare(args: argparse.Namespace) -> int:
    """Print compare_label_maps(first, second) as one JSON line (the Slicer panel's Compare runs this)."""
    from ..file_checks import check_mask_values
    from ..metrics import compare_label_maps
    from ..volume import load_image, on_grid_of

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


def _run_evaluate(args: argparse.Namespace) -> int:
    import csv

    from ..analysis_files import write_table
    from ..evaluation import evaluate, raincloud, summarise

    cord_labels = _cord_labels(args.cord_labels)
    if not args.tolerance_mm > 0:
        raise InputError(f"--tolerance-mm must be a positive distance in mm, got {args.tolerance_mm}.")
    output_folder(args.output)
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

    from ..analysis_files import write_table
    from ..stats import agreement, clinical_correlation, scatter_plot

    output_folder(args.output)
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
        from ..compartments_cli import run_compartment_consensus

        return run_compartment_consensus(args.masks, args.cord, args.output)
    if args.output is None:
        raise InputError("give the consensus file with -o (e.g. -o consensus.nii.gz).")

    from ..consensus import majority_vote, majority_vote_labels, reproducibility, staple
    from ..file_checks import check_mask_values, check_whole_image_file
    from ..volume import load_mask, on_grid_of, write_image_atomic

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


PARSERS = {"analyze": _add_analyze, "cord": _add_cord, "evaluate": _add_evaluate, "stats": _add_stats,
           "consensus": _add_consensus, "compare": _add_compare}
HANDLERS = {"analyze": _run_analyze, "cord": _run_cord, "evaluate": _run_evaluate, "stats": _run_stats,
            "consensus": _run_consensus, "compare": _run_compare}
