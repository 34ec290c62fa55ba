"""Cord cross-sectional area per slice on synthetic cylinders with known areas (within 3 %, as SCT's tests)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_file
from SCIsegLib.cord import cord_morphometry
from SCIsegLib.errors import InputError


def elliptic_cylinder(semi_rl_mm: float, semi_ap_mm: float, tilt_deg: float = 0.0, spacing=(0.5, 0.5, 1.0), size=(80, 80, 60)) -> sitk.Image:
    """A cylinder along S-I (tilted about R-L by ``tilt_deg``) in an RPI (ITK LAS) image, sampled 4x per voxel axis."""
    sub = 4
    axes = [(np.arange(n * sub) + 0.5) / sub * s for n, s in zip(size, spacing, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    centre = np.array(size) * np.array(spacing) / 2
    tilt = np.deg2rad(tilt_deg)
    dy, dz = y - centre[1], z - centre[2]
    y_perpendicular = dy * np.cos(tilt) - dz * np.sin(tilt)  # coordinate across the tilted axis
    inside = ((x - centre[0]) / semi_rl_mm) ** 2 + (y_perpendicular / semi_ap_mm) ** 2 <= 1.0
    soft = inside.reshape(size[0], sub, size[1], sub, size[2], sub).mean(axis=(1, 3, 5))
    image = sitk.GetImageFromArray(np.ascontiguousarray(soft.transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    return image


@pytest.mark.parametrize("tilt", [0.0, 15.0, 30.0])
def test_area_and_diameters_of_tilted_elliptic_cylinders(tilt: float) -> None:
    table = cord_morphometry(elliptic_cylinder(6.0, 4.0, tilt))
    middle = table.iloc[len(table) // 3 : 2 * len(table) // 3]  # away from the FOV ends
    assert middle["MEAN(area)"].mean() == pytest.approx(np.pi * 6.0 * 4.0, rel=0.03)
    assert middle["MEAN(diameter_RL)"].mean() == pytest.approx(12.0, rel=0.03)
    assert middle["MEAN(diameter_AP)"].mean() == pytest.approx(8.0, rel=0.03)
    assert middle["MEAN(angle_RL)"].abs().mean() == pytest.approx(tilt, abs=1.0)


def test_angle_correction_matters_for_a_tilted_cord() -> None:
    tilted = elliptic_cylinder(5.0, 5.0, 30.0)
    uncorrected = cord_morphometry(tilted, angle_correction=False)
    middle = uncorrected.iloc[len(uncorrected) // 3 : 2 * len(uncorrected) // 3]
    assert middle["MEAN(area)"].mean() == pytest.approx(np.pi * 25.0 / np.cos(np.deg2rad(30.0)), rel=0.03)


def test_real_cord_area_is_plausible() -> None:
    cord = sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz")))
    table = cord_morphometry(cord)
    areas = table["MEAN(area)"].dropna()
    assert len(areas) > 40
    assert 40.0 < areas.median() < 110.0  # adult cervical cord CSA, mm2


def test_empty_mask_is_refused() -> None:
    with pytest.raises(InputError, match="empty"):
        cord_morphometry(sitk.Image([5, 5, 5], sitk.sitkUInt8))
