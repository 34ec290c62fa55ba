"""Cord compartments: grey matter (GM), white matter (WM = cord - GM), their areas per axial slice and per level.

Areas follow SCT 7.3's ``sct_process_segmentation`` (:mod:`SCIsegLib.cord`) run on each compartment with the angle
correction taken from the **cord**'s centerline (SCT's ``-angle-corr-centerline <cord>``, as its tutorial does for
grey and white matter: the GM's own centre of mass wanders and would tilt the sections). The WM mask is
``sct_maths -i cord -sub gm`` binarised: cord voxels that are not GM.

Masks are 3D images on one grid (checked by :func:`SCIsegLib.volume.grid_difference`); areas are in mm2, slices are
RPI z indices (I->S), levels are the values of SCT's labelled cord (``*_labeled.nii.gz``: 2 = C2, ...).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import SimpleITK as sitk

from .centerline import SCT_CLI_SMOOTHING
from .cord import NEAR_ZERO, cord_shape_arrays
from .errors import InputError
from .volume import grid_difference, reorient, sct_to_itk_orientation

#: Per-slice table columns (areas in mm2; the ratio is GM area / cord area).
COLUMNS = ("Slice (I->S)", "VertLevel", "cord_area_mm2", "gm_area_mm2", "wm_area_mm2", "gm_cord_ratio",
           "angle_AP", "angle_RL")


def _binary(image: sitk.Image) -> np.ndarray:
    """A (z, y, x) boolean array: voxels at 0.5 or more (binary masks, soft masks, float64 manual masks)."""
    return sitk.GetArrayViewFromImage(image) >= 0.5


def check_same_grid(gm: sitk.Image, cord: sitk.Image, gm_name: str = "the GM mask", cord_name: str = "the cord mask") -> None:
    """Refuse masks that do not lie on one voxel grid, naming the difference."""
    difference = grid_difference(gm, cord)
    if difference is not None:
        raise InputError(f"{gm_name} and {cord_name} are not on one voxel grid ({difference}); give masks of one scan.")


def white_matter(cord: sitk.Image, gm: sitk.Image) -> sitk.Image:
    """WM = cord - GM: uint8 mask on the cord's grid of the cord voxels that are not grey matter."""
    check_same_grid(gm, cord)
    wm = (_binary(cord) & ~_binary(gm)).astype(np.uint8)
    image = sitk.GetImageFromArray(wm)
    image.CopyInformation(cord)
    return image


def gm_outside_cord_voxels(gm: sitk.Image, cord: sitk.Image) -> int:
    """GM voxels lying outside the cord (0 for consistent masks; they are not white matter and not counted)."""
    check_same_grid(gm, cord)
    return int(np.count_nonzero(_binary(gm) & ~_binary(cord)))


def _rpi_xyz(image: sitk.Image) -> np.ndarray:
    """The image in RPI as a float (x, y, z) array thresholded at 0.5 (binary 0/1 values)."""
    rpi = reorient(image, sct_to_itk_orientation("RPI"))
    return (sitk.GetArrayFromImage(rpi).transpose(2, 1, 0) >= 0.5).astype(np.float64)


def slice_levels(levels: sitk.Image) -> np.ndarray:
    """Vertebral level of every RPI z slice of SCT's labelled cord: the mean of its nonzero values, rounded (SCT's
    ``get_vertebral_level_from_slice``); NaN for a slice without level."""
    data = sitk.GetArrayFromImage(reorient(levels, sct_to_itk_orientation("RPI"))).transpose(2, 1, 0)
    result = np.full(data.shape[2], np.nan)
    for z in range(data.shape[2]):
        values = data[:, :, z][data[:, :, z] != 0]
        values = values[np.isfinite(values)]
        if values.size:
            result[z] = float(np.round(np.mean(values)))
    return result


def compartment_areas(gm: sitk.Image, cord: sitk.Image, *, levels: sitk.Image | None = None,
                      angle_correction: bool = True, smooth: float = SCT_CLI_SMOOTHING) -> pd.DataFrame:
    """GM, WM and cord areas (mm2) per axial slice, the GM/cord ratio and the cord's angles (degrees).

    One row per RPI z slice of the grid; NaN where a compartment is absent. Every slice holding GM must hold cord
    (SCT refuses a centerline that does not cover the measured mask). ``levels``: SCT's labelled cord on the same
    grid, giving ``VertLevel``.
    """
    check_same_grid(gm, cord)
    if levels is not None:
        check_same_grid(levels, cord, "the level file", "the cord mask")
    cord_xyz, gm_xyz = _rpi_xyz(cord), _rpi_xyz(gm)
    if not cord_xyz.any():
        raise InputError("the cord mask is empty; nothing to measure.")
    wm_xyz = cord_xyz * (1.0 - gm_xyz)
    missing = np.nonzero(gm_xyz.any(axis=(0, 1)) & ~cord_xyz.any(axis=(0, 1)))[0]
    if missing.size:
        raise InputError(f"the cord mask does not cover the grey matter's slices {missing.tolist()} (RPI z); the cord's "
                         "centerline gives the angles of every GM slice: give the cord mask of the same scan.")
    spacing = reorient(cord, sct_to_itk_orientation("RPI")).GetSpacing()
    nz = cord_xyz.shape[2]

    def measure(mask_xyz: np.ndarray) -> dict[str, np.ndarray]:
        if not (mask_xyz > NEAR_ZERO).any():
            return {"area": np.full(nz, np.nan), "angle_AP": np.full(nz, np.nan), "angle_RL": np.full(nz, np.nan)}
        return cord_shape_arrays(mask_xyz, spacing, angle_correction, smooth, centerline_xyz=cord_xyz)

    cord_shape, gm_shape, wm_shape = measure(cord_xyz), measure(gm_xyz), measure(wm_xyz)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = gm_shape["area"] / cord_shape["area"]
    table = pd.DataFrame({
        "Slice (I->S)": np.arange(nz),
        "VertLevel": slice_levels(levels) if levels is not None else np.full(nz, np.nan),
        "cord_area_mm2": cord_shape["area"],
        "gm_area_mm2": gm_shape["area"],
        "wm_area_mm2": wm_shape["area"],
        "gm_cord_ratio": ratio,
        "angle_AP": cord_shape["angle_AP"],
        "angle_RL": cord_shape["angle_RL"],
    }, columns=COLUMNS)
    return table


def areas_per_level(table: pd.DataFrame) -> pd.DataFrame:
    """Mean areas and ratio over the slices of each vertebral level (SCT's ``-perlevel 1``: the unweighted mean of the
    per-slice values; slices without the compartment are left out), with the number of slices."""
    rows = []
    for level, group in table.dropna(subset=["VertLevel"]).groupby("VertLevel"):
        row = {"VertLevel": int(level), "slices": int(group["cord_area_mm2"].notna().sum())}
        for column in ("cord_area_mm2", "gm_area_mm2", "wm_area_mm2", "gm_cord_ratio"):
            values = group[column].dropna()
            row[column] = float(values.mean()) if len(values) else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["VertLevel", "slices", "cord_area_mm2", "gm_area_mm2", "wm_area_mm2", "gm_cord_ratio"])


def sct_equivalent_commands(gm_path: str, cord_path: str, wm_path: str, levels_path: str | None) -> list[str]:
    """The SCT calls whose per-slice CSVs give the same areas (GM and WM measured with the cord's centerline)."""
    vert = f" -vertfile {levels_path}" if levels_path else ""
    return [
        f"sct_maths -i {cord_path} -sub {gm_path} -o {wm_path} && sct_maths -i {wm_path} -bin 0.5 -o {wm_path}",
        f"sct_process_segmentation -i {cord_path} -perslice 1{vert}",
        f"sct_process_segmentation -i {gm_path} -angle-corr-centerline {cord_path} -perslice 1{vert}",
        f"sct_process_segmentation -i {wm_path} -angle-corr-centerline {cord_path} -perslice 1{vert}",
    ]
