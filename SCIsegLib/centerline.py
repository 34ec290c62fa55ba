"""Spinal cord centerline and its angle to the axial slices, as SCT's ``get_centerline`` (bspline) computes them.

Arrays here are SCT's: RPI orientation (SCT letters), indexed **(x, y, z)** = (R->L, P->A, I->S), i.e.
the transpose of SimpleITK's (z, y, x) array of an image reoriented to ITK "LAS".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import interpolate

#: SCT's default smoothing of the bspline centerline (``ParamCenterline.smooth``).
SCT_SMOOTHING = 20
#: ``sct_process_segmentation``'s default ``-centerline-smooth`` (its ParamCenterline gets 30, not 20).
SCT_CLI_SMOOTHING = 30


@dataclass
class CordAngles:
    """Per axial slice z (RPI), in radians.

    Attributes:
        angle_3d: angle between the centerline tangent [dx*px, dy*py, pz] and the slice normal (S-I).
        angle_sagittal: the same for the tangent projected on the sagittal plane [0, dy*py, pz].
        x_fit, y_fit: the fitted centerline (voxels) for every slice.
    """

    angle_3d: np.ndarray
    angle_sagittal: np.ndarray
    x_fit: np.ndarray
    y_fit: np.ndarray


def slice_centers_of_mass(mask_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean x and y (voxels) of the nonzero voxels of each axial slice holding some; sorted along z."""
    x, y, z = np.nonzero(mask_xyz)
    slices = np.unique(z)
    counts = np.bincount(z)[slices].astype(float)
    x_mean = np.bincount(z, weights=x)[slices] / counts
    y_mean = np.bincount(z, weights=y)[slices] / counts
    return x_mean, y_mean, slices.astype(float)


def bspline_fit(z: np.ndarray, values: np.ndarray, z_ref: np.ndarray, smooth: float, pz: float) -> tuple[np.ndarray, np.ndarray]:
    """SCT's ``curve_fitting.bspline``: smoothing spline (degree 3) with s = (n/N)^2 * smooth * pz / 3.

    Returns the fitted values and their derivative with respect to z (voxel units) at ``z_ref``.
    """
    degree = 3
    if len(z) <= degree:
        degree -= 2
    density = (float(len(z)) / len(z_ref)) ** 2
    smoothing = density * smooth * pz / 3.0
    knots = interpolate.splrep(z, values, s=smoothing, k=degree)
    return interpolate.splev(z_ref, knots, der=0), interpolate.splev(z_ref, knots, der=1)


def centerline_derivatives(mask_xyz: np.ndarray, pz: float, smooth: float) -> dict[int, tuple[float, float]]:
    """dx/dz and dy/dz (voxels per slice) of SCT's bspline centerline at every slice from the first to the last
    holding cord (``get_centerline`` with ``minmax=True``). Empty when the cord spans fewer than two slices
    (no direction can be fitted; SCT stops with an error there)."""
    x_mean, y_mean, z_mean = slice_centers_of_mass(mask_xyz)
    if len(z_mean) < 2:
        return {}
    z_ref = np.arange(int(z_mean.min()), int(z_mean.max()) + 1, dtype=float)
    _, dx = bspline_fit(z_mean, x_mean, z_ref, smooth, pz)
    _, dy = bspline_fit(z_mean, y_mean, z_ref, smooth, pz)
    return {int(z): (float(a), float(b)) for z, a, b in zip(z_ref, dx, dy, strict=True)}


def cord_angles(cord_xyz: np.ndarray, spacing_xyz_mm: tuple[float, float, float], smooth: float = SCT_SMOOTHING) -> CordAngles:
    """Angles of the cord centerline for every axial slice (``minmax=False``: the fit spans all slices).

    A cord present on fewer than two slices gives zero angles (no direction can be fitted).
    """
    px, py, pz = spacing_xyz_mm
    nz = cord_xyz.shape[2]
    x_mean, y_mean, z_mean = slice_centers_of_mass(cord_xyz)
    z_ref = np.arange(nz, dtype=float)
    if len(z_mean) < 2:
        zeros = np.zeros(nz)
        fill_x = np.full(nz, x_mean[0] if len(x_mean) else np.nan)
        fill_y = np.full(nz, y_mean[0] if len(y_mean) else np.nan)
        return CordAngles(zeros, zeros.copy(), fill_x, fill_y)
    x_fit, dx = bspline_fit(z_mean, x_mean, z_ref, smooth, pz)
    y_fit, dy = bspline_fit(z_mean, y_mean, z_ref, smooth, pz)
    tangent = np.stack([dx * px, dy * py, np.full(nz, pz)], axis=1)
    angle_3d = np.arccos(tangent[:, 2] / np.linalg.norm(tangent, axis=1))
    sagittal = np.stack([np.zeros(nz), dy * py, np.full(nz, pz)], axis=1)
    angle_sagittal = np.arccos(sagittal[:, 2] / np.linalg.norm(sagittal, axis=1))
    return CordAngles(angle_3d, angle_sagittal, np.asarray(x_fit), np.asarray(y_fit))
