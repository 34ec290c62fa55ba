"""Spinal cord shape per axial slice, as SCT 7.3's ``sct_process_segmentation -perslice 1`` computes it.

The algorithm is SCT 7.3's ``spinalcordtoolbox.process_seg.compute_shape`` (SCT is MIT-licensed):

1. the mask is put in RPI (x = R->L, y = P->A, z = I->S) without resampling;
2. with angle correction, the centerline is fitted through the per-slice centres of mass (bspline, SCT's
   ``-centerline-smooth`` default 30, ``minmax``) and each axial section is shrunk by cos(angle_RL) along A-P and
   cos(angle_AP) along R-L, undoing the elongation of an oblique cut;
3. the section's bounding box (padded by 3 voxels) is resampled linearly to 0.1 mm pixels (SCT 7.3, PR #5129);
   ``area`` is the sum of the soft section times the pixel area; ``skimage.measure.regionprops`` of the section
   thresholded at 0.5 gives the fitted ellipse (``diameter_AP_ellipse``, ``diameter_RL``, ``eccentricity``,
   ``orientation``) and ``solidity``;
4. ``diameter_AP`` (SCT 7.2+, PR #4958) is the A-P extent of the section rotated by its ellipse orientation,
   averaged across a 3 mm R-L band centred on the centre of mass; ``length_posterior`` / ``length_anterior``
   split it at the centre of mass;
5. ``length`` is the slice thickness over cos(angle_AP) cos(angle_RL).

A slice without cord gets no value at all (SCT's empty cells), also inside the cord's extent.
Units: mm2 for areas, mm for diameters and lengths, degrees for angles; slices are RPI z indices (I->S).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage
from skimage import measure, transform

from .centerline import SCT_CLI_SMOOTHING, centerline_derivatives
from .errors import InputError
from .volume import reorient, sct_to_itk_orientation

#: The SCT release whose ``sct_process_segmentation`` these numbers follow (CSA changed in 7.1, 7.2 and 7.3).
SCT_VERSION = "7.3"
NEAR_ZERO = 1e-6
#: In-plane pixel (mm) every section is resampled to before measuring (SCT's fixed ``pr``).
FINE_PIXEL_MM = 0.1
#: R-L width (mm) of the band across which the A-P extent is averaged (SCT's ``extent_avg``).
AP_BAND_MM = 3.0
#: Voxels of padding around the section's bounding box before resampling (SCT's ``pad``).
CROP_PAD_VOXELS = 3
#: SCT's per-slice measures, in the order of its CSV; ``length`` is written as ``SUM(length)``.
SHAPE_KEYS = ("area", "angle_AP", "angle_RL", "diameter_AP", "diameter_AP_ellipse", "diameter_RL", "length_anterior",
              "length_posterior", "eccentricity", "orientation", "solidity", "length")
COLUMNS = (["Slice (I->S)"] + [f"{function}({key})" for key in SHAPE_KEYS if key != "length" for function in ("MEAN", "STD")]
           + ["SUM(length)"])


def _centre_of_mass_rounded(section: np.ndarray) -> tuple[float, float]:
    """Mean (row, column) of the pixels that round to a nonzero value (SCT's ``compute_pca`` centre of mass)."""
    rows, columns = np.nonzero(np.round(section).astype(int))
    return float(rows.mean()), float(columns.mean())


def rotate_about_centre(section: np.ndarray, angle_rad: float) -> np.ndarray:
    """The section rotated by ``angle_rad`` about its centre of mass, linear interpolation, zero outside
    (SCT's ``_rotate_segmentation_by_angle``)."""
    row0, column0 = _centre_of_mass_rounded(section)
    rows, columns = np.mgrid[0 : section.shape[0], 0 : section.shape[1]]
    dx, dy = columns - column0, rows - row0
    rotated_columns = dx * np.cos(angle_rad) - dy * np.sin(angle_rad) + column0
    rotated_rows = dx * np.sin(angle_rad) + dy * np.cos(angle_rad) + row0
    return ndimage.map_coordinates(section, [rotated_rows.ravel(), rotated_columns.ravel()], order=1).reshape(section.shape)


def ap_extent(rotated: np.ndarray, pixel_mm: float) -> dict[str, float]:
    """A-P diameter (mm) of a rotated fine section (rows R-L, columns P->A): the soft A-P profile averaged over a
    3 mm R-L band centred on the centre of mass, summed; split at the centre of mass into posterior / anterior."""
    binary = rotated > 0.5
    if not binary.any():
        return {"diameter_AP": math.nan, "length_anterior": math.nan, "length_posterior": math.nan}
    rows, columns = np.nonzero(binary)
    row0, column0 = round(float(rows.mean())), round(float(columns.mean()))
    half_band = int(round(AP_BAND_MM / pixel_mm)) // 2
    band = np.arange(row0 - half_band, row0 + half_band)
    band = band[(band >= 0) & (band < rotated.shape[0])]
    profile = rotated[band, :].mean(axis=0)
    posterior = float(profile[:column0].sum() * pixel_mm)
    anterior = float(profile[column0:].sum() * pixel_mm)
    return {"diameter_AP": posterior + anterior, "length_anterior": anterior, "length_posterior": posterior}


def orientation_0_90(orientation_rad: float) -> float:
    """regionprops' orientation (radians) folded into [0, 90] degrees (SCT's ``fix_orientation``)."""
    degrees = orientation_rad * 180.0 / math.pi
    if 360 <= abs(degrees) <= 540:
        degrees = 540 - abs(degrees)
    if 180 <= abs(degrees) <= 360:
        degrees = 360 - abs(degrees)
    if 90 <= abs(degrees) <= 180:
        degrees = 180 - abs(degrees)
    return abs(degrees)


def section_shape(section: np.ndarray, pixel_xy_mm: tuple[float, float]) -> dict[str, float] | None:
    """Shape of one axial section (rows = x R->L, columns = y P->A; binary or soft in [0, 1]), SCT's
    ``_properties2d``. All pieces of the section are measured together. None when the section is empty."""
    if np.all(section < NEAR_ZERO):
        return None
    normalised = ((section - section.min()) / (section.max() - section.min())).astype(np.float64)
    rows, columns = np.nonzero(normalised > NEAR_ZERO)
    pad = CROP_PAD_VOXELS
    crop = normalised[max(rows.min() - pad, 0) : rows.max() + 1 + pad, max(columns.min() - pad, 0) : columns.max() + 1 + pad]
    zoom = (pixel_xy_mm[0] / FINE_PIXEL_MM, pixel_xy_mm[1] / FINE_PIXEL_MM)
    fine = ndimage.zoom(crop, zoom=zoom, order=1, mode="grid-constant", grid_mode=True)
    regions = measure.regionprops((fine > 0.5).astype(np.uint8), intensity_image=fine)
    if not regions:  # a faint soft section: nothing reaches 0.5 (SCT stops with an IndexError here)
        return None
    region = regions[0]
    folded = orientation_0_90(region.orientation)
    major, minor = region.axis_major_length * FINE_PIXEL_MM, region.axis_minor_length * FINE_PIXEL_MM
    ellipse_ap, ellipse_rl = (minor, major) if folded < 45.0 else (major, minor)
    rotated = rotate_about_centre(fine, -region.orientation)
    return {
        "area": float(np.sum(fine) * FINE_PIXEL_MM * FINE_PIXEL_MM),
        "diameter_AP_ellipse": float(ellipse_ap),
        "diameter_RL": float(ellipse_rl),
        "eccentricity": float(region.eccentricity),
        "orientation": math.degrees(region.orientation),
        "solidity": float(region.solidity),
        **ap_extent(rotated, FINE_PIXEL_MM),
    }


def cord_shape_arrays(cord_xyz: np.ndarray, spacing_xyz_mm: tuple[float, float, float], angle_correction: bool = True,
                      smooth: float = SCT_CLI_SMOOTHING, centerline_xyz: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every key of :data:`SHAPE_KEYS` as an array over all z of an RPI (x, y, z) mask; NaN where a slice has no cord.

    ``centerline_xyz`` (same grid): the mask whose centerline gives the angles (SCT's ``-angle-corr-centerline``,
    e.g. the cord when measuring its grey matter); default: the measured mask itself."""
    px, py, pz = spacing_xyz_mm
    nz = cord_xyz.shape[2]
    values = {key: np.full(nz, np.nan) for key in SHAPE_KEYS}
    present = np.nonzero((cord_xyz > NEAR_ZERO).any(axis=(0, 1)))[0]
    angles_from = cord_xyz if centerline_xyz is None else centerline_xyz
    derivatives = centerline_derivatives(angles_from, pz, smooth) if angle_correction else {}
    for z in range(int(present.min()), int(present.max()) + 1):
        section = cord_xyz[:, :, z]
        angle_ap = angle_rl = 0.0
        if z in derivatives:
            dx, dy = derivatives[z]
            angle_ap = math.atan2(dx * px, pz)
            angle_rl = math.atan2(dy * py, pz)
            stretch = transform.AffineTransform(scale=(np.cos(angle_rl), np.cos(angle_ap)))
            section = transform.warp(section.astype(np.float64), stretch.inverse, output_shape=section.shape, order=1)
        shape = section_shape(section, (px, py))
        if shape is None:
            continue
        shape.update(angle_AP=math.degrees(angle_ap), angle_RL=math.degrees(angle_rl),
                     length=pz / (np.cos(angle_ap) * np.cos(angle_rl)))
        for key in SHAPE_KEYS:
            values[key][z] = shape[key]
    return values


def cord_morphometry(cord: sitk.Image, angle_correction: bool = True, smooth: float = SCT_CLI_SMOOTHING) -> pd.DataFrame:
    """SCT 7.3's ``sct_process_segmentation -perslice 1`` table: one row per axial slice of the image (RPI z, I->S),
    ``MEAN(key)`` / ``STD(key)`` for every shape key and ``SUM(length)``; empty (NaN) where a slice has no cord.

    ``angle_correction=False`` is SCT's ``-angle-corr 0``; ``smooth`` its ``-centerline-smooth``."""
    values = np.unique(sitk.GetArrayViewFromImage(cord))
    if values.size == 1 and values[0] == 0:
        raise InputError("the cord mask is empty; nothing to measure.")
    if values.min() < 0 or values.max() > 1:
        raise InputError("the cord mask must hold values between 0 and 1 (binary or soft).")
    rpi = reorient(cord, sct_to_itk_orientation("RPI"))
    data = sitk.GetArrayFromImage(rpi).transpose(2, 1, 0)  # (x, y, z)
    shape = cord_shape_arrays(data, rpi.GetSpacing(), angle_correction, smooth)
    table = {"Slice (I->S)": np.arange(data.shape[2])}
    for key in SHAPE_KEYS:
        if key == "length":
            continue
        table[f"MEAN({key})"] = shape[key]
        table[f"STD({key})"] = np.where(np.isfinite(shape[key]), 0.0, np.nan)  # one value per slice
    table["SUM(length)"] = shape["length"]
    return pd.DataFrame(table, columns=COLUMNS)


def sct_equivalent_command(cord_path: str, angle_correction: bool, smooth: float) -> str:
    """The ``sct_process_segmentation`` call whose CSV the table reproduces."""
    command = f"sct_process_segmentation -i {cord_path} -perslice 1"
    if not angle_correction:
        command += " -angle-corr 0"
    if smooth != SCT_CLI_SMOOTHING:
        command += f" -centerline-smooth {smooth:g}"
    return command
