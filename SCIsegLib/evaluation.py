"""``sciseg evaluate``: pair predicted and reference masks by file name, compute the metrics, summarise, plot.

A file is a binary mask of one structure, named like SCT/BIDS outputs (``_sc_seg``/``_label-SC_seg`` for
the cord, ``_lesion_seg``/``_label-lesion_seg`` for the lesion), or a label map (``_dseg``, ``_labels``, or
any file holding the value 2) giving both: cord = labels {1, 2} (or {1} with ``cord_labels=(1,)``), lesion = 2.
With exactly one prediction and one reference they are paired whatever their names. Every file is checked
before use: whole (not truncated), 3D, and holding mask values only (0/1, or 0/1/2 for label maps).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from .errors import InputError
from .file_checks import check_mask_values
from .metrics import anima_detection, overlap_detection, voxel_metrics
from .volume import grid_difference, image_stem, load_mask, on_grid_of

_SUFFIXES = {
    "_label-SC_seg": "sc", "_sc_seg": "sc", "_seg-manual": "sc",
    "_label-lesion_seg": "lesion", "_lesion_seg": "lesion", "_lesion-manual": "lesion",
    "_dseg": "labels", "_labels": "labels", "_label-SCLesion_seg": "labels",
    "_gmseg": "gm", "_label-GM_seg": "gm", "_gmseg-manual": "gm", "_gmseg_manual": "gm",
    "_wmseg": "wm", "_label-WM_seg": "wm", "_wmseg-manual": "wm",
}


def subject_key(path: Path) -> tuple[str, str]:
    """(key shared by a prediction and its reference, kind: "sc", "lesion" or "labels")."""
    stem = image_stem(path)
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if stem.endswith(suffix):
            return stem[: -len(suffix)], _SUFFIXES[suffix]
    return stem, "labels"


def structures(path: Path, cord_labels: tuple[int, ...]) -> tuple[sitk.Image, dict[str, np.ndarray]]:
    """The image and its binary structure masks, (z, y, x) arrays."""
    image = load_mask(path, binary=False)  # header, size and completeness checked (a truncated file is refused)
    array = sitk.GetArrayFromImage(image)
    _, kind = subject_key(path)
    check_mask_values(array, path)
    if kind == "labels" or np.any(array == 2):
        return image, {"sc": np.isin(array, cord_labels), "lesion": array == 2}
    return image, {kind: array > 0}


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; a folder (e.g. a BIDS tree or its derivatives) stands for every NIfTI below it,
    except SCIseg's version store (only the latest corrections count)."""
    files: list[Path] = []
    for path in paths:
        if Path(path).is_dir():
            files += sorted(p for p in Path(path).rglob("*.nii*") if ".sciseg_versions" not in p.parts)
        else:
            files.append(Path(path))
    markers: dict[Path, list[str]] = {}  # folder -> stems whose latest copies an interrupted export left mixed
    for file in files:
        if file.parent not in markers:
            markers[file.parent] = [m.name[1: -len(".sciseg-publishing")] for m in file.parent.glob(".*.sciseg-publishing")]
        if any(file.name.startswith(stem + "_") for stem in markers[file.parent]):
            raise InputError(f"{file} belongs to a set of labels whose export was interrupted; run `sciseg export` "
                             "again for that scan (it republishes them), then evaluate.")
    return files


def pair_files(predictions: list[Path], references: list[Path]) -> list[tuple[str, Path, Path]]:
    """(key, prediction, reference) for every key present in both lists; raises when none match.

    One prediction and one reference are paired whatever their names (the key is the reference's)."""
    predictions, references = expand_inputs(predictions), expand_inputs(references)
    for path in predictions + references:
        if not path.is_file():
            raise InputError(f"{path}: no such file; check the path.")
    if len(predictions) == 1 and len(references) == 1:
        return [(subject_key(references[0])[0], predictions[0], references[0])]
    reference_by_key: dict[tuple[str, str], Path] = {}
    for path in references:
        key, kind = subject_key(path)
        reference_by_key[(key, kind)] = path
    pairs = []
    for path in predictions:
        key, kind = subject_key(path)
        match = reference_by_key.get((key, kind)) or next(
            (p for (k, _), p in reference_by_key.items() if k == key), None
        )
        if match is not None:
            pairs.append((key, path, match))
    if not pairs:
        raise InputError("no prediction matches a reference by file name (e.g. sub-01_T2w_sc_seg.nii.gz and sub-01_T2w_label-SC_seg.nii.gz).")
    return pairs


def evaluate(
    predictions: list[Path], references: list[Path], *, method: str = "prediction", cord_labels: tuple[int, ...] = (1, 2),
    tolerance_mm: float = 1.0,
) -> pd.DataFrame:
    """One row per subject and structure: voxel metrics, and lesion-wise detection for the lesion."""
    rows = []
    for key, prediction_path, reference_path in pair_files(predictions, references):
        reference_image, reference_masks = structures(reference_path, cord_labels)
        prediction_image, prediction_masks = structures(prediction_path, cord_labels)
        try:
            on_grid_of(prediction_image, reference_image)
        except ValueError:
            raise InputError(f"{prediction_path} and {reference_path} do not lie on the same grid "
                             f"({grid_difference(prediction_image, reference_image)}).") from None
        spacing = tuple(reversed(reference_image.GetSpacing()))
        for name in sorted(set(reference_masks) & set(prediction_masks)):
            aligned = on_grid_of(_as_image(prediction_masks[name], prediction_image), reference_image)
            prediction = sitk.GetArrayFromImage(aligned) > 0
            row = {"subject": key, "structure": name, "method": method,
                   **voxel_metrics(prediction, reference_masks[name], spacing, tolerance_mm)}
            if name == "lesion":
                anima = anima_detection(prediction, reference_masks[name], spacing)
                reloaded = overlap_detection(prediction, reference_masks[name])
                row.update({
                    "lesions_ref": anima.reference_lesions, "lesions_pred": anima.predicted_lesions,
                    "anima_sensitivity": anima.sensitivity, "anima_ppv": anima.ppv, "anima_f1": anima.f1,
                    "reloaded_sensitivity": reloaded.sensitivity, "reloaded_ppv": reloaded.ppv, "reloaded_f1": reloaded.f1,
                })
            rows.append(row)
    return pd.DataFrame(rows)


def _as_image(mask: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(like)
    return image


def summarise(table: pd.DataFrame, groups: dict[str, str] | None = None) -> pd.DataFrame:
    """Mean and SD of every metric per method, structure and group (site), as the paper's tables."""
    table = table.copy()
    table["group"] = [(groups or {}).get(re.split(r"_", s)[0], "all") for s in table["subject"]]
    numeric = [c for c in table.columns if c not in ("subject", "structure", "method", "group")]
    grouped = table.groupby(["method", "structure", "group"])[numeric]
    summary = grouped.mean().add_suffix("_mean").join(grouped.std().add_suffix("_sd"))
    return summary.reset_index()


def raincloud(table: pd.DataFrame, column: str, path: Path, title: str) -> None:
    """Half violin, box and the points of ``column`` per method (the paper's Figure 4 style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(table["method"]))
    figure, axis = plt.subplots(figsize=(1.8 + 1.6 * len(methods), 4))
    rng = np.random.default_rng(0)
    for index, method in enumerate(methods):
        values = table.loc[table["method"] == method, column].dropna().to_numpy(float)
        if len(values) == 0:
            continue
        if len(values) > 1 and np.ptp(values) > 0:
            parts = axis.violinplot(values, positions=[index], showextrema=False, widths=0.7)
            for body in parts["bodies"]:
                vertices = body.get_paths()[0].vertices
                vertices[:, 0] = np.clip(vertices[:, 0], index, np.inf)  # keep the right half
                body.set_alpha(0.5)
        axis.boxplot(values, positions=[index - 0.08], widths=0.08, showfliers=False)
        axis.scatter(index - 0.25 + rng.uniform(-0.06, 0.06, len(values)), values, s=12, alpha=0.8)
    axis.set_xticks(range(len(methods)), methods)
    axis.set_ylabel(column)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
