"""Values no spinal cord can have, flagged with the reason instead of being averaged into the cohort tables.

Three checks, on one scan's masks and tables (slices are RPI z, I->S; lengths in mm):

* ``cord_pieces``: the cord mask is in more than one 26-connected piece. SCT measures every piece of an axial
  slice together and fits the centerline through all of them, so the CSA and the angle-corrected lengths of such
  a cord are not a cord's. Blanks the CSA columns and the lesion length.
* ``lesion_off_cord``: a lesion (SCT's numbering, after restriction to the cord) has no voxel in the largest cord
  piece: it sits in a stray piece of "cord". Blanks the lesion burden of the scan.
* ``bridge_wider_than_cord``: a lesion's interpolated total tissue bridge is wider than the largest A-P diameter
  of the cord (SCT 7.3's ``diameter_AP``) over the lesion's axial slices, by more than one voxel: spared tissue
  cannot be wider than the cord holding it. Blanks that lesion's bridge columns.

Each flag is a dict: ``code``, ``reason`` (one sentence), ``columns`` (the cohort-table columns it blanks) and, for
lesion flags, ``label``. The per-scan SCT tables keep every raw value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from ..volume import reorient, sct_to_itk_orientation
from .measures import BRIDGE_COLUMNS

CSA_COLUMNS = ("csa_at_lesion_mean [mm2]", "csa_at_lesion_min [mm2]", "csa_above_lesion [mm2]")
BURDEN_COLUMNS = ("lesion_count", "volume [mm3]", "length [mm]", "max_axial_damage_ratio []", *BRIDGE_COLUMNS, *CSA_COLUMNS)
LESION_BRIDGE_COLUMNS = (*BRIDGE_COLUMNS, "dorsal_bridge_ratio [%]", "ventral_bridge_ratio [%]")


def _rpi_xyz(image: sitk.Image) -> np.ndarray:
    """(x R->L, y P->A, z I->S) array of an image."""
    return sitk.GetArrayFromImage(reorient(image, sct_to_itk_orientation("RPI"))).transpose(2, 1, 0)


def cord_pieces(cord_xyz: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected pieces of a cord mask (labels 1..n) and their count."""
    return ndimage.label(cord_xyz > 0, structure=np.ones((3, 3, 3), bool))


def plausibility_flags(cord: sitk.Image, lesion_labels: sitk.Image, lesion_table: pd.DataFrame,
                       csa: pd.DataFrame | None) -> list[dict]:
    """The flags of one scan (see the module docstring); ``lesion_labels`` numbers the lesions as ``lesion_table``."""
    cord_xyz = _rpi_xyz(cord) > 0
    labels_xyz = _rpi_xyz(lesion_labels)
    py = reorient(cord, sct_to_itk_orientation("RPI")).GetSpacing()[1]
    flags: list[dict] = []
    pieces, count = cord_pieces(cord_xyz)
    if count > 1:
        sizes = np.bincount(pieces.ravel())[1:]
        share = 100.0 * sizes.max() / sizes.sum()
        flags.append({"code": "cord_pieces", "columns": [*CSA_COLUMNS, "length [mm]"],
                      "reason": f"the cord mask is in {count} pieces (the largest holds {share:.0f} % of it), so its "
                                "CSA and angle-corrected lengths are not a cord's"})
    main = pieces == (np.argmax(np.bincount(pieces.ravel())[1:]) + 1) if count else np.zeros_like(cord_xyz)
    diameters = csa.set_index("Slice (I->S)")["MEAN(diameter_AP)"] if csa is not None and not csa.empty else None
    for _, row in lesion_table.iterrows():
        label = int(row["label"])
        if label == 0:
            continue
        lesion = labels_xyz == label
        if lesion.any() and not (lesion & main).any():
            flags.append({"code": "lesion_off_cord", "label": label, "columns": list(BURDEN_COLUMNS),
                          "reason": f"lesion {label} lies off the main cord piece"})
        bridge = row.get("interpolated_total_bridge_width [mm]")
        if diameters is None or bridge is None or not np.isfinite(bridge):
            continue
        slices = np.nonzero(lesion.any(axis=(0, 1)))[0]
        cord_ap = diameters[diameters.index.isin(slices)].dropna()
        if not cord_ap.empty and bridge > cord_ap.max() + py:
            flags.append({"code": "bridge_wider_than_cord", "label": label, "columns": list(LESION_BRIDGE_COLUMNS),
                          "reason": f"lesion {label}: its tissue bridge ({bridge:.1f} mm) is wider than the cord's A-P "
                                    f"diameter at its slices ({cord_ap.max():.1f} mm)"})
    return flags


def flag_text(flags: list[dict]) -> str:
    """The ``flags`` cell: the reasons, joined by "; " (empty when the scan is plausible)."""
    return "; ".join(flag["reason"] for flag in flags)


def blank_flagged(row: dict, flags: list[dict], label: int | None = None) -> dict:
    """``row`` with the columns of its flags set to NaN (scan flags, and lesion flags of ``label`` when given)."""
    row = dict(row)
    for flag in flags:
        if label is not None and flag.get("label") not in (None, label):
            continue
        if label is not None and flag["code"] == "lesion_off_cord":
            columns = LESION_BRIDGE_COLUMNS  # in the lesion table the stray lesion keeps its size, loses its bridges
        else:
            columns = flag["columns"]
        for column in columns:
            if column in row:
                row[column] = np.nan
    return row
