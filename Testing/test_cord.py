"""``sciseg cord`` against SCT 7.3's own tests of ``sct_process_segmentation``.

``dummy_segmentation`` and ``angles`` below are ported from SCT 7.3's ``testing/api/test_process_seg.py``
(github.com/spinalcordtoolbox/spinalcordtoolbox, tag 7.3; MIT licence, Copyright (c) Polytechnique Montreal):
same construction (polynomial centerline, rotations about I-S, R-L, A-P with ``skimage.transform.rotate``,
resampling with nibabel as SCT's ``resample_nib``), same expected values and the same tolerances
(angles within 0.5 degree, distances within 3 %). The real-data values are those SCT's
``testing/cli/test_cli_sct_process_segmentation.py`` asserts for ``t2_seg-manual.nii.gz``, slice 10.
"""

from __future__ import annotations

import os

import copy
import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from nibabel import processing as nib_processing
from scipy.spatial.transform import Rotation
from skimage.draw import ellipse
from skimage.transform import rotate

from conftest import shared_file
from SCIsegLib.cord import COLUMNS, SCT_VERSION, cord_morphometry, orientation_0_90
from SCIsegLib.errors import InputError


def angles(angle_IS, angle_RL, angle_AP):  # noqa: N803 - SCT's names
    """Effective R-L and A-P angles (deg) after rotations about I-S, then R-L, then A-P (SCT's ``angles``)."""
    rot = Rotation.from_euler(seq="zxy", angles=[angle_IS, angle_RL * -1, angle_AP], degrees=True)
    tx, ty, tz = rot.apply([0, 0, 1])
    return {"angle_RL": np.degrees(np.arctan2(ty, tz)), "angle_AP": np.degrees(np.arctan2(tx, tz))}


def nifti_to_sitk(img: nib.Nifti1Image) -> sitk.Image:
    """The same voxels and geometry as a SimpleITK image (RAS affine -> ITK's LPS)."""
    affine = img.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asanyarray(img.dataobj).transpose(2, 1, 0)))
    image.SetSpacing([float(z) for z in zooms])
    image.SetDirection([float(v) for v in (ras_to_lps @ (affine[:3, :3] / zooms)).ravel()])
    image.SetOrigin([float(v) for v in ras_to_lps @ affine[:3, 3]])
    return image


def dummy_segmentation(size_arr=(256, 256, 256), pixdim=(1, 1, 1), dtype=np.float64, orientation="LPI",
                       shape="rectangle", angle_RL=0, angle_AP=0, angle_IS=0, radius_RL=5.0, radius_AP=3.0,  # noqa: N803
                       degree=2, zeroslice=()):
    """SCT 7.3's synthetic cord (without its ``interleaved`` random variant) and the values its test expects."""
    padding = 15
    nx, ny, nz = [int(size_arr[i] * pixdim[i]) for i in range(3)]
    data = np.zeros((nx, ny, nz), dtype=np.float64)
    xx, yy = np.mgrid[:nx, :ny]
    x = [round(nx / 2.0)] * nz
    y = [round(ny / 2.0), round(ny / 2.0), round(ny / 2.0)]
    z = np.array([0, round(nz / 2.0), nz - 1])
    p = np.polynomial.Polynomial.fit(z, y, deg=degree)
    yfit = np.round(copy.copy(p)(range(nz))).astype(int)
    for iz in range(nz):
        if shape == "rectangle":
            data[:, :, iz] = ((abs(xx - x[iz]) <= radius_RL) & (abs(yy - yfit[iz]) <= radius_AP)) * 1
        if shape == "ellipse":
            height, width = radius_RL, radius_AP
            rows, cols = ellipse(height, width, height + 0.5, width + 0.5)
            footprint = np.zeros((2 * height + 1, 2 * width + 1))
            footprint[rows, cols] = 1
            data[x[iz] - radius_RL : x[iz] + radius_RL + 1, yfit[iz] - radius_AP : yfit[iz] + radius_AP + 1, iz] = footprint
    padded = np.pad(data, padding, "reflect")
    rotated = rotate(padded, angle_IS, resize=False, order=1, mode="constant", cval=0, clip=False, preserve_range=False)
    rotated = rotate(rotated.swapaxes(0, 2), angle_RL, resize=False, order=1, mode="constant", cval=0, clip=False,
                     preserve_range=False).swapaxes(0, 2)
    rotated = rotate(rotated.swapaxes(1, 2), angle_AP, resize=False, order=1, mode="constant", cval=0, clip=False,
                     preserve_range=False).swapaxes(1, 2)
    cropped = rotated[padding : nx + padding, padding : ny + padding, padding : nz + padding]
    if zeroslice:
        cropped[:, :, list(zeroslice)] = 0
    if np.issubdtype(dtype, np.integer):
        cropped = np.round(cropped)
    nii = nib.Nifti1Image(cropped.astype(dtype), np.eye(4))
    # SCT's resample_nib(new_size=pixdim, new_size_type='mm', interpolation='linear')
    if np.issubdtype(dtype, np.integer):
        nii = nib.Nifti1Image(nii.get_fdata(), nii.affine)
    shape_r = tuple(int(np.round(nii.shape[i] * 1.0 / float(pixdim[i]))) for i in range(3))
    resampling = np.diag([nii.shape[i] / float(shape_r[i]) for i in range(3)] + [1.0])
    nii_r = nib_processing.resample_from_to(nii, (shape_r, nii.affine @ resampling), order=1, mode="nearest", cval=0.0)
    if orientation != "LPI":  # SCT's letters name where each axis comes from; nibabel's where it goes
        opposite = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
        target = nib.orientations.axcodes2ornt(tuple(opposite[c] for c in orientation))
        nii_r = nii_r.as_reoriented(nib.orientations.ornt_transform(nib.io_orientation(nii_r.affine), target))
    if shape == "ellipse":
        area = data[:, :, 0].sum()
        diameter_AP = diameter_AP_regionprops = (radius_AP * 2) + 1  # noqa: N806
        diameter_RL = diameter_RL_regionprops = (radius_RL * 2) + 1  # noqa: N806
    else:
        area = (radius_RL * 2 + 1) * (radius_AP * 2 + 1)
        diameter_AP_regionprops = (2 / math.sqrt(3)) * ((radius_AP * 2) + 1)  # noqa: N806
        diameter_RL_regionprops = (2 / math.sqrt(3)) * ((radius_RL * 2) + 1)  # noqa: N806
        diameter_AP = (radius_AP * 2) + 1  # noqa: N806 - SCT 7.2+ (PR #4958): the A-P extent, not the ellipse axis
        diameter_RL = diameter_RL_regionprops  # noqa: N806
    effective = angles(angle_IS, angle_RL, angle_AP)
    expected = {
        "area": area,
        "angle_AP": effective["angle_AP"],
        "angle_RL": effective["angle_RL"],
        "diameter_AP": diameter_AP,
        "diameter_RL": diameter_RL,
        "length": size_arr[2] * pixdim[2] / (np.cos(math.radians(angle_AP)) * np.cos(math.radians(angle_RL))),
        "eccentricity": math.sqrt(1 - ((diameter_AP_regionprops / 2) / (diameter_RL_regionprops / 2)) ** 2),
    }
    if not (angle_AP and angle_RL):
        expected["orientation"] = -angle_IS
    if zeroslice:
        expected["length"] *= 1 - len(zeroslice) / size_arr[2]
    return nifti_to_sitk(nii_r), expected


# SCT 7.3's im_segs list of test_process_seg.py (same numbering), with its angle_corr flag.
SCT_CASES = {
    "0 area": (dict(size_arr=(32, 32, 5)), False),
    "1 anisotropic pixel": (dict(size_arr=(64, 32, 5), pixdim=(0.5, 1, 5)), False),
    "2 angle IS": (dict(size_arr=(32, 32, 5), pixdim=(1, 1, 5), angle_IS=15), False),
    "3 ellipse": (dict(size_arr=(64, 64, 5), shape="ellipse", radius_RL=13, radius_AP=5, angle_RL=0), False),
    "4 int16 RPI": (dict(size_arr=(64, 320, 5), shape="rectangle", radius_RL=13, radius_AP=5, angle_RL=0,
                         pixdim=(1, 1, 1), dtype=np.int16, orientation="RPI"), False),
    "5 angle RL -30": (dict(size_arr=(64, 64, 20), shape="ellipse", radius_RL=13, radius_AP=5, angle_RL=-30), True),
    "6 angle AP 20": (dict(size_arr=(64, 64, 20), shape="ellipse", radius_RL=13, radius_AP=5, angle_AP=20), True),
    "7 angles RL AP": (dict(size_arr=(64, 64, 50), shape="ellipse", radius_RL=13, radius_AP=5, angle_RL=-10,
                            angle_AP=15), True),
    "8 SVD issue": (dict(size_arr=(64, 64, 50), shape="ellipse", radius_RL=13, radius_AP=5, angle_RL=-10,
                         angle_AP=30), True),
    "9 bigger slice": (dict(size_arr=(128, 128, 5), pixdim=(1, 1, 1), shape="ellipse", radius_RL=50, radius_AP=30), False),
    "10 one empty slice": (dict(size_arr=(32, 32, 5), zeroslice=[2]), False),
}


def _column(key: str) -> str:
    return "SUM(length)" if key == "length" else f"MEAN({key})"


@pytest.mark.parametrize("case", list(SCT_CASES))
def test_sct_synthetic_cases(case: str) -> None:
    """SCT 7.3's ``test_compute_shape``, with its tolerances and its checks, on our table."""
    arguments, angle_correction = SCT_CASES[case]
    image, expected = dummy_segmentation(**arguments)
    table = cord_morphometry(image, angle_correction=angle_correction, smooth=20)  # SCT's test: ParamCenterline()
    data = np.moveaxis(sitk.GetArrayFromImage(image), 0, 2)
    assert len(table) == data.shape[2]
    for key, value in expected.items():
        tolerance = {"abs": 0.5} if key.startswith("angle_") or key == "orientation" else {"rel": 0.030}
        measured = table[_column(key)].to_numpy()
        if key == "length":
            assert np.nansum(measured) == pytest.approx(value, **tolerance)
        elif angle_correction:
            assert measured.mean() == pytest.approx(value, **tolerance), key
            assert all(b == pytest.approx(a, **tolerance) for a, b in zip(measured[:-1], measured[1:], strict=True)), key
        else:
            for z in range(data.shape[2]):
                if not data[:, :, z].any():
                    assert math.isnan(measured[z])
                else:
                    assert measured[z] == pytest.approx(value, **tolerance), (key, z)


def test_empty_slice_inside_the_cord_is_empty_in_every_column() -> None:
    """SCT leaves every measure of a slice without cord empty, angle and length included (not 0 and 1)."""
    image, _ = dummy_segmentation(size_arr=(32, 32, 5), zeroslice=[2])
    table = cord_morphometry(image, angle_correction=True)
    assert table.loc[2, COLUMNS[1:]].isna().all()
    assert table.loc[[0, 1, 3, 4], COLUMNS[1:]].notna().all().all()
    assert table["SUM(length)"].sum() == pytest.approx(4.0, rel=1e-6)


@pytest.mark.parametrize(("orientation", "expected"), [
    (0.0, 0.0), (math.pi, 0.0), (-math.pi, 0.0), (math.pi / 2, 90.0), (-math.pi / 2, 90.0), (2 * math.pi, 0.0),
    (math.pi / 4, 45.0), (-math.pi / 4, 45.0), (3 * math.pi / 4, 45.0), (-3 * math.pi / 4, 45.0),
    (math.pi / 8, 22.5), (-math.pi / 8, 22.5), (3 * math.pi / 8, 67.5), (-3 * math.pi / 8, 67.5),
])
def test_fix_orientation(orientation: float, expected: float) -> None:
    """SCT 7.3's ``test_fix_orientation`` table."""
    assert orientation_0_90(orientation) == pytest.approx(expected, rel=0.0001)


def test_t2_seg_manual_slice_10_equals_sct() -> None:
    """The values SCT 7.3's ``test_sct_process_segmentation_check_values`` asserts (pytest.approx: 1e-6 relative)."""
    table = cord_morphometry(sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz"))))
    row = table.iloc[10]
    assert row["Slice (I->S)"] == 10
    assert row["MEAN(area)"] == pytest.approx(78.58643257836141)
    assert row["MEAN(diameter_AP)"] == pytest.approx(7.842507960401277)
    assert row["MEAN(diameter_RL)"] == pytest.approx(12.537767663676533)
    assert row["MEAN(orientation)"] == pytest.approx(-5.435920797812814)
    assert row["MEAN(eccentricity)"] == pytest.approx(0.7678714078545043)
    assert row["MEAN(solidity)"] == pytest.approx(0.9691052891744933)
    assert SCT_VERSION == "7.3"


def test_columns_are_scts_perslice_columns_in_its_order() -> None:
    assert COLUMNS[:3] == ["Slice (I->S)", "MEAN(area)", "STD(area)"]
    assert COLUMNS[-1] == "SUM(length)" and "MEAN(length)" not in COLUMNS
    assert {"MEAN(diameter_AP_ellipse)", "MEAN(eccentricity)", "MEAN(orientation)", "MEAN(solidity)"} <= set(COLUMNS)


def test_empty_mask_is_refused() -> None:
    with pytest.raises(InputError, match="empty"):
        cord_morphometry(sitk.Image([5, 5, 5], sitk.sitkUInt8))


def test_cli_writes_scts_csv_and_a_sidecar_naming_the_sct_version(tmp_path) -> None:
    import json

    import pandas as pd

    from SCIsegLib.cli import main

    cord = shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz")
    assert main(["cord", "--cord", str(cord), "-o", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "t2_seg-manual_csa.csv")
    assert list(table.columns) == COLUMNS
    assert len(table) == 55  # every axial slice of the image (S-I is its 2nd axis), as SCT writes (rows[10] is slice 10)
    assert table.loc[10, "MEAN(area)"] == pytest.approx(78.58643257836141)
    sidecar = json.loads((tmp_path / "t2_seg-manual_csa.json").read_text())
    assert sidecar["FollowsSCTVersion"] == "7.3"
    relative = os.path.relpath(cord.resolve(), tmp_path.resolve())  # run from the output folder: no absolute path
    assert sidecar["EquivalentCommand"] == f"sct_process_segmentation -i {relative} -perslice 1"
