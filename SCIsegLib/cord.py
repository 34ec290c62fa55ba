"""Spinal cord cross-sectional area and diameters per axial slice, as SCT's ``sct_process_segmentation -perslice 1``.

Algorithm of SCT's ``compute_shape``: the mask is put in RPI and resampled (linear) to square in-plane
voxels of the smallest in-plane spacing; the centerline is fitted (bspline, SCT defaults) and, on each
axial slice, the section is shrunk by cos(angle about R-L) along A-P and cos(angle about A-P) along
R-L, undoing the elongation of an oblique cut, so the area is that of the section perpendicular to the cord.
Area, A-P and R-L diameters come from the (5x oversampled) slice with ``skimage.measure.regionprops``.
Units: mm2 for areas, mm for diameters and lengths, degrees for angles; slices are RPI z (I->S).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import SimpleITK as sitk
from skimage import measure, transform

from .centerline import SCT_SMOOTHING, bspline_fit, slice_centers_of_mass
from .errors import InputError
from .volume import reorient, sct_to_itk_orientation

NEAR_ZERO = 1e-6
UPSCALE = 5
COLUMNS = ["Slice (I->S)", "MEAN(area)", "MEAN(diameter_AP)", "MEAN(diameter_RL)", "MEAN(angle_AP)", "MEAN(angle_RL)", "MEAN(length)"]


def _resample_in_plane(mask: sitk.Image) -> sitk.Image:
    """RPI mask resampled (linear) to square in-plane voxels of min(px, py); z untouched."""
    px, py, pz = mask.GetSpacing()
    pr = min(px, py)
    size = [int(round(mask.GetSize()[0] * px / pr)), int(round(mask.GetSize()[1] * py / pr)), mask.GetSize()[2]]
    if (px, py) == (pr, pr):
        return sitk.Cast(mask, sitk.sitkFloat64)
    reference = sitk.Image(size, sitk.sitkFloat64)
    reference.SetSpacing((pr, pr, pz))
    reference.SetDirection(mask.GetDirection())
    # keep the physical centre of the first voxel's corner: origin shifts by half a voxel difference
    direction = np.array(mask.GetDirection()).reshape(3, 3)
    shift = direction @ np.array([(pr - px) / 2, (pr - py) / 2, 0.0])
    reference.SetOrigin(tuple(np.array(mask.GetOrigin()) + shift))
    return sitk.Resample(sitk.Cast(mask, sitk.sitkFloat64), reference, sitk.Transform(), sitk.sitkLinear, 0.0)


def _slice_properties(section: np.ndarray, pixel_mm: float) -> dict | None:
    """Area (mm2) and diameters (mm) of one axial section (x = R-L rows, y = A-P columns)."""
    if np.all(section < NEAR_ZERO):
        return None
    normalised = (section - section.min()) / (section.max() - section.min())
    binary = (normalised > 0.5).astype(np.uint8)
    regions = measure.regionprops(binary, intensity_image=normalised)
    if len(regions) != 1:
        return None
    min_x, min_y, max_x, max_y = regions[0].bbox
    pad = 3
    crop = normalised[max(min_x - pad, 0) : max_x + pad, max(min_y - pad, 0) : max_y + pad]
    fine = transform.pyramid_expand(crop, upscale=UPSCALE, sigma=None, order=1)
    region = measure.regionprops((fine > 0.5).astype(np.uint8), intensity_image=fine)[0]
    orientation = abs(math.degrees(region.orientation))
    if orientation >= 90:
        orientation = 180 - orientation
    major, minor = region.axis_major_length, region.axis_minor_length
    diameter_ap, diameter_rl = (minor, major) if orientation < 45 else (major, minor)
    return {
        "area": float(np.sum(fine) * pixel_mm * pixel_mm / UPSCALE**2),
        "diameter_AP": float(diameter_ap * pixel_mm / UPSCALE),
        "diameter_RL": float(diameter_rl * pixel_mm / UPSCALE),
    }


def cord_morphometry(cord: sitk.Image, angle_correction: bool = True) -> pd.DataFrame:
    """Per axial slice (RPI z, I->S) cross-sectional area (mm2), A-P and R-L diameters (mm), angles (deg), length (mm)."""
    values = np.unique(sitk.GetArrayViewFromImage(cord))
    if values.size == 1 and values[0] == 0:
        raise InputError("the cord mask is empty; nothing to measure.")
    if values.min() < 0 or values.max() > 1:
        raise InputError("the cord mask must hold values between 0 and 1 (binary or soft).")
    rpi = reorient(cord, sct_to_itk_orientation("RPI"))
    resampled = _resample_in_plane(rpi)
    pr, _, pz = resampled.GetSpacing()
    data = sitk.GetArrayFromImage(resampled).transpose(2, 1, 0)  # (x, y, z)
    z_present = np.nonzero((data > NEAR_ZERO).any(axis=(0, 1)))[0]
    rows = []
    derivative_x = derivative_y = None
    if angle_correction:
        x_mean, y_mean, z_mean = slice_centers_of_mass(data)
        z_ref = np.arange(int(z_mean.min()), int(z_mean.max()) + 1, dtype=float)
        if len(z_mean) >= 2:
            _, derivative_x = bspline_fit(z_mean, x_mean, z_ref, SCT_SMOOTHING, pz)
            _, derivative_y = bspline_fit(z_mean, y_mean, z_ref, SCT_SMOOTHING, pz)
    for z in range(int(z_present.min()), int(z_present.max()) + 1):
        section = data[:, :, z].astype(np.float64)
        angle_ap = angle_rl = 0.0
        if derivative_x is not None:
            index = z - int(z_present.min())
            tangent = (derivative_x[index] * pr, derivative_y[index] * pr, pz)
            angle_ap = math.atan2(tangent[0], tangent[2])
            angle_rl = math.atan2(tangent[1], tangent[2])
            stretch = transform.AffineTransform(scale=(np.cos(angle_rl), np.cos(angle_ap)))
            section = transform.warp(section, stretch.inverse, output_shape=section.shape, order=1)
        properties = _slice_properties(section, pr)
        row = {"Slice (I->S)": z, "MEAN(angle_AP)": math.degrees(angle_ap), "MEAN(angle_RL)": math.degrees(angle_rl),
               "MEAN(length)": pz / (np.cos(angle_ap) * np.cos(angle_rl))}
        if properties is None:
            row.update({"MEAN(area)": np.nan, "MEAN(diameter_AP)": np.nan, "MEAN(diameter_RL)": np.nan})
        else:
            row.update({"MEAN(area)": properties["area"], "MEAN(diameter_AP)": properties["diameter_AP"],
                        "MEAN(diameter_RL)": properties["diameter_RL"]})
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)
