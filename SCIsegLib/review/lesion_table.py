"""The review app's lesion table: ``sciseg analyze``'s measures on the cord's bounding box, and the header's totals.

Morphometrics of a full field-of-view scan (384 x 215 x 52 voxels) took 1.1-1.5 s; on the box holding every
cord and lesion voxel (plus one voxel) they take about 0.1 s and give the same rows (same volumes, lengths,
widths and centres: the box keeps the physical geometry, and no measure looks outside the cord and lesion masks).
Arrays are (z, y, x); volumes in mm3, lengths in mm, centres in RAS mm.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .. import mrml
from ..lesions import analyze_lesions


def measure_lesions(labels: np.ndarray, reference: sitk.Image) -> tuple[list[dict], dict[int, tuple[float, float, float]]]:
    """Lesion rows (label, volume mm3, length mm, width mm, centre RAS mm) and centres from a (z, y, x) label array.

    Pure numpy/SimpleITK (no scene), so the app runs it in a worker thread while the views stay live.
    """

    def image_of(mask: np.ndarray) -> sitk.Image:
        result = sitk.GetImageFromArray(mask.astype(np.uint8))
        result.CopyInformation(reference)
        return result

    analysis = analyze_lesions(image_of(labels == 2), image_of(labels > 0))
    centres = mrml.lesion_centroids_ras(analysis.labels)
    rows = []
    for record in analysis.table.to_dict("records"):
        label = int(record["label"])
        rows.append({
            "label": label,
            "volume_mm3": round(float(record["volume [mm3]"]), 1),
            "length_mm": _rounded(record.get("length [mm]")),
            "width_mm": _rounded(record.get("width [mm]")),
            "centre_ras": list(centres.get(label, (0.0, 0.0, 0.0))),
        })
    return rows, centres


def _rounded(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(number) else round(number, 1)


def labelled_box(labels: np.ndarray, margin: int = 1) -> tuple[slice, slice, slice] | None:
    """The (z, y, x) slices of the box holding every voxel with a label, ``margin`` voxels wider; None when empty."""
    present = [np.flatnonzero(np.any(labels > 0, axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(len(indices) == 0 for indices in present):
        return None
    return tuple(slice(max(0, int(idx[0]) - margin), min(size, int(idx[-1]) + 1 + margin))
                 for idx, size in zip(present, labels.shape, strict=True))


def lesion_rows(labels: np.ndarray, reference: sitk.Image) -> tuple[list[dict], dict[int, tuple[float, float, float]]]:
    """The lesion table (rows and centres, as :func:`measure_lesions`) measured on :func:`labelled_box`."""
    box = labelled_box(labels)
    if box is None:
        return [], {}
    z, y, x = box
    return measure_lesions(np.ascontiguousarray(labels[box]), reference[x.start:x.stop, y.start:y.stop, z.start:z.stop])


def totals_text(rows: list[dict]) -> str:
    """The header's summary of the lesion table: how many lesions and their total volume (mm3)."""
    if not rows:
        return "no lesion"
    total = sum(float(row["volume_mm3"]) for row in rows)
    return f"{len(rows)} lesion{'s' if len(rows) != 1 else ''}, {total:.1f} mm³"
