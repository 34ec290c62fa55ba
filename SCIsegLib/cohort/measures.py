"""Per-scan numbers of the cohort table: lesion burden, tissue bridges, and cord CSA at and above the lesion.

Slices are RPI z (I->S), the numbering of SCT's ``Slice (I->S)`` in the CSA table. Units: mm3, mm, mm2.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ..volume import reorient, sct_to_itk_orientation

#: Cord above the lesion: the CSA is averaged over this length (mm) starting one slice above its upper end.
ABOVE_LESION_MM = 10.0
BRIDGE_COLUMNS = (
    "interpolated_dorsal_bridge_width [mm]",
    "interpolated_ventral_bridge_width [mm]",
    "interpolated_total_bridge_width [mm]",
)


def lesion_slices_rpi(lesion: sitk.Image) -> tuple[np.ndarray, float]:
    """RPI z indices (I->S) of the axial slices holding lesion, and the slice thickness (mm)."""
    rpi = reorient(lesion, sct_to_itk_orientation("RPI"))
    array = sitk.GetArrayViewFromImage(rpi)  # (z, y, x), z = I->S
    return np.nonzero(array.reshape(array.shape[0], -1).any(axis=1))[0], float(rpi.GetSpacing()[2])


def _finite(value) -> float:
    return float(value) if value is not None and np.isfinite(value) else math.nan


def scan_measures(lesion_table: pd.DataFrame, summary: dict, csa: pd.DataFrame | None, lesion: sitk.Image) -> dict:
    """One scan's row: lesion count, total volume (mm3), total length (mm), max axial damage ratio, the tissue bridges
    of the largest lesion (mm), and the cord CSA (mm2) over the lesion's slices (mean, min) and over 10 mm above it."""
    row: dict = {
        "lesion_count": int(summary.get("lesion_count", 0)),
        "volume [mm3]": float(summary.get("total_volume_mm3") or 0.0),
        "length [mm]": _finite(summary.get("total_length_mm")) if row_has_lesion(summary) else 0.0,
        "max_axial_damage_ratio []": math.nan,
        **{column: math.nan for column in BRIDGE_COLUMNS},
        "csa_at_lesion_mean [mm2]": math.nan,
        "csa_at_lesion_min [mm2]": math.nan,
        "csa_above_lesion [mm2]": math.nan,
    }
    if not row_has_lesion(summary) or lesion_table.empty:
        return row
    if "max_axial_damage_ratio []" in lesion_table:
        row["max_axial_damage_ratio []"] = _finite(lesion_table["max_axial_damage_ratio []"].max())
    largest = lesion_table.loc[lesion_table["volume [mm3]"].idxmax()]
    for column in BRIDGE_COLUMNS:
        if column in lesion_table:
            row[column] = _finite(largest[column])
    if csa is None or csa.empty:
        return row
    slices, thickness_mm = lesion_slices_rpi(lesion)
    area = csa.set_index("Slice (I->S)")["MEAN(area)"]
    at_lesion = area[area.index.isin(slices)].dropna()
    if not at_lesion.empty:
        row["csa_at_lesion_mean [mm2]"] = float(at_lesion.mean())
        row["csa_at_lesion_min [mm2]"] = float(at_lesion.min())
    top = int(slices.max())
    above_count = max(1, int(round(ABOVE_LESION_MM / thickness_mm)))
    above = area[(area.index > top) & (area.index <= top + above_count)].dropna()
    if not above.empty:
        row["csa_above_lesion [mm2]"] = float(above.mean())
    return row


def row_has_lesion(summary: dict) -> bool:
    return int(summary.get("lesion_count", 0)) > 0
