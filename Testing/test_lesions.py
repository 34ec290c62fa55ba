"""Lesion morphometrics: boxes painted on SCT's real t2 scan (as SCT's own tests do) and synthetic cords."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import shared_file
from SCIsegLib.errors import InputError
from SCIsegLib.lesions import analyze_lesions
from SCIsegLib.volume import reorient


def rpi_xyz(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(reorient(image, "LAS")).transpose(2, 1, 0)


def from_rpi_xyz(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    """An image on ``like``'s grid from an RPI (x, y, z) array."""
    rpi_like = reorient(like, "LAS")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(np.uint8))
    image.CopyInformation(rpi_like)
    return reorient(image, sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(like.GetDirection()))


@pytest.fixture(scope="module")
def t2_cord() -> sitk.Image:
    return sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz")))


def box_inside_cord(cord_xyz: np.ndarray, z_range: range, half: int = 1) -> np.ndarray:
    """A box of voxels around the cord centre of every slice of ``z_range`` (all inside the cord)."""
    box = np.zeros_like(cord_xyz, dtype=bool)
    for z in z_range:
        x, y = np.argwhere(cord_xyz[:, :, z]).mean(axis=0).round().astype(int)
        box[x - half : x + half + 1, y - half : y + half + 1, z] = True
    assert np.all(cord_xyz[box]), "the test box must lie inside the cord"
    return box


def test_box_lesion_on_the_real_scan_exact_volume_ratio_and_bounds(t2_cord: sitk.Image) -> None:
    cord_xyz = rpi_xyz(t2_cord).astype(bool)
    box = box_inside_cord(cord_xyz, range(20, 30))
    result = analyze_lesions(from_rpi_xyz(box, t2_cord), t2_cord)
    row = result.table.iloc[0]
    assert result.summary["lesion_count"] == 1 and row["label"] == 1
    assert row["volume [mm3]"] == pytest.approx(box.sum() * 1.0)  # 1 mm isotropic
    expected_ratio = max(box[:, :, z].sum() / cord_xyz[:, :, z].sum() for z in range(20, 30))
    assert row["max_axial_damage_ratio []"] == pytest.approx(expected_ratio, rel=1e-12)
    assert 10.0 <= row["length [mm]"] <= 10.0 / np.cos(np.deg2rad(30))  # 10 slices, angle-corrected up
    assert 3.0 * np.cos(np.deg2rad(30)) <= row["width [mm]"] <= 3.0
    assert 2 * np.sqrt(9 * np.cos(np.deg2rad(30)) / np.pi) <= row["max_equivalent_diameter [mm]"] <= 2 * np.sqrt(9 / np.pi)
    bridges = row["interpolated_dorsal_bridge_width [mm]"] + row["interpolated_ventral_bridge_width [mm]"]
    assert bridges == pytest.approx(row["interpolated_total_bridge_width [mm]"])
    assert row["dorsal_bridge_ratio [%]"] + row["ventral_bridge_ratio [%]"] == pytest.approx(100.0)
    assert 0 < row["length_interpolated_midsagittal_slice [mm]"] <= row["length [mm]"] + 1e-9


def test_lesion_partly_outside_the_cord_is_restricted_and_outside_one_dropped(t2_cord: sitk.Image) -> None:
    cord_xyz = rpi_xyz(t2_cord).astype(bool)
    lesion = box_inside_cord(cord_xyz, range(18, 24))
    x, y = np.argwhere(cord_xyz[:, :, 20]).mean(axis=0).round().astype(int)
    lesion[x, y:, 20] = True  # a streak leaving the cord anteriorly, connected to the box
    outside = np.zeros_like(lesion)
    outside[2:4, 2:4, 40:42] = True  # far from the cord
    assert not np.any(outside & cord_xyz)
    result = analyze_lesions(from_rpi_xyz(lesion | outside, t2_cord), t2_cord)
    # Labelled on the whole mask first (SCT): the outside blob comes first in scan order and takes label 1.
    assert list(result.table["label"]) == [2]
    assert result.table.iloc[0]["volume [mm3]"] == pytest.approx(float((lesion & cord_xyz).sum()))
    assert result.warnings == ["lesion 1 lies entirely outside the cord mask and was not measured."]
    labels = rpi_xyz(result.labels)
    assert set(np.unique(labels)) == {0, 2} and not np.any(labels[~cord_xyz])


def test_several_lesions_are_numbered_and_summarised(t2_cord: sitk.Image) -> None:
    cord_xyz = rpi_xyz(t2_cord).astype(bool)
    first = box_inside_cord(cord_xyz, range(10, 14))
    second = box_inside_cord(cord_xyz, range(30, 40), half=2) & cord_xyz
    result = analyze_lesions(from_rpi_xyz(first | second, t2_cord), t2_cord)
    assert list(result.table["label"]) == [1, 2]
    volumes = sorted(result.table["volume [mm3]"])
    assert volumes == pytest.approx(sorted([float(first.sum()), float(second.sum())]))
    assert result.summary["total_volume_mm3"] == pytest.approx(first.sum() + second.sum())
    assert result.summary["total_length_mm"] == pytest.approx(result.table["length [mm]"].sum())
    assert result.summary["max_width_mm"] == pytest.approx(result.table["width [mm]"].max())
    # Both lesions share the midsagittal slice of the largest one.
    assert result.table["interpolated_midsagittal_slice"].nunique() == 1


@pytest.mark.parametrize("orientation", ["RAS", "LAS", "LPI", "AIL", "SPL"])
def test_orientation_copies_give_the_same_numbers(t2_cord: sitk.Image, orientation: str) -> None:
    cord_xyz = rpi_xyz(t2_cord).astype(bool)
    lesion = from_rpi_xyz(box_inside_cord(cord_xyz, range(22, 31)), t2_cord)
    reference = analyze_lesions(lesion, t2_cord).table
    copy = analyze_lesions(reorient(lesion, orientation), reorient(t2_cord, orientation)).table
    numeric = [c for c in reference.columns if not c.startswith("slice_") and c != "interpolated_midsagittal_slice"]
    pd.testing.assert_frame_equal(copy[numeric], reference[numeric], rtol=1e-12, atol=1e-12)
    # The midsagittal slice is reported in each file's own index along R-L.
    nx = reorient(t2_cord, "LAS").GetSize()[0]
    ours, theirs = reference["interpolated_midsagittal_slice"][0], copy["interpolated_midsagittal_slice"][0]
    assert theirs in (pytest.approx(ours), pytest.approx(nx - 1 - ours))


def test_oblique_copy_gives_the_same_numbers(t2_cord: sitk.Image) -> None:
    cord_xyz = rpi_xyz(t2_cord).astype(bool)
    lesion = from_rpi_xyz(box_inside_cord(cord_xyz, range(22, 31)), t2_cord)
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(0.12, -0.08, 0.05)
    tilted = [sitk.Image(image) for image in (lesion, t2_cord)]
    direction = (np.array(rotation.GetMatrix()).reshape(3, 3) @ np.array(t2_cord.GetDirection()).reshape(3, 3)).ravel()
    for image in tilted:
        image.SetDirection(direction.tolist())
    pd.testing.assert_frame_equal(analyze_lesions(*tilted).table, analyze_lesions(lesion, t2_cord).table, rtol=1e-12)


def straight_cord(
    shape=(20, 24, 40), spacing=(0.8, 0.6, 2.0), tilt_voxels_per_slice: float = 0.0, centre_x: float = 10.0
) -> tuple[np.ndarray, tuple]:
    """An elliptic cord (5 mm R-L, 4 mm A-P semi-axes) along z, RPI (x, y, z) array; centre_x 9.5 puts the
    midsagittal slice between two sagittal slices."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre_y = 12 + tilt_voxels_per_slice * (z - shape[2] / 2)
    cord = ((x - centre_x) * spacing[0] / 5.0) ** 2 + ((y - centre_y) * spacing[1] / 4.0) ** 2 <= 1.0
    return cord, spacing


def as_image(array_xyz: np.ndarray, spacing) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)).astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # ITK LAS = SCT RPI
    return image


def test_straight_cord_gives_exact_geometry() -> None:
    cord, spacing = straight_cord()
    lesion = np.zeros_like(cord)
    lesion[8:13, 10:15, 10:18] = True  # 5 x 5 voxels on 8 slices, inside the cord
    assert np.all(cord[lesion])
    row = analyze_lesions(as_image(lesion, spacing), as_image(cord, spacing)).table.iloc[0]
    assert row["volume [mm3]"] == pytest.approx(200 * np.prod(spacing))
    assert row["length [mm]"] == pytest.approx(8 * 2.0, abs=1e-9)
    assert row["width [mm]"] == pytest.approx(5 * 0.6, abs=1e-9)
    assert row["max_equivalent_diameter [mm]"] == pytest.approx(2 * np.sqrt(25 * 0.8 * 0.6 / np.pi), abs=1e-9)
    assert row["interpolated_midsagittal_slice"] == pytest.approx(10.0)
    assert row["length_interpolated_midsagittal_slice [mm]"] == pytest.approx(16.0, abs=1e-9)
    assert row["width_interpolated_midsagittal_slice [mm]"] == pytest.approx(3.0, abs=1e-9)
    cord_y = np.nonzero(cord[10, :, 12])[0]
    assert row["interpolated_dorsal_bridge_width [mm]"] == pytest.approx((10 - cord_y[0]) * 0.6, abs=1e-9)
    assert row["interpolated_ventral_bridge_width [mm]"] == pytest.approx((cord_y[-1] - 14) * 0.6, abs=1e-9)


def test_tilted_cord_length_is_angle_corrected() -> None:
    slope = 0.5  # voxels of y per slice: tan(angle) = 0.5 * 0.6 / 2.0
    cord, spacing = straight_cord(tilt_voxels_per_slice=slope)
    lesion = np.zeros_like(cord)
    for z in range(12, 28):
        centre = int(round(12 + slope * (z - 20)))
        lesion[9:12, centre - 1 : centre + 2, z] = True
    lesion &= cord
    row = analyze_lesions(as_image(lesion, spacing), as_image(cord, spacing)).table.iloc[0]
    angle = np.arctan(slope * 0.6 / 2.0)
    assert row["length [mm]"] == pytest.approx(16 * 2.0 / np.cos(angle), rel=0.01)


def sct_length_mm(cord: np.ndarray, lesion: np.ndarray, pz: float) -> float:
    """SCT's length written out independently: per-slice cord centre of mass, ``splrep`` with
    s = (n/N)^2 * 20 * pz / 3 (spacing 1 mm in x and y), sum of pz / cos(3D angle) over the lesion's slices."""
    from scipy import interpolate

    z_mean = np.array([z for z in range(cord.shape[2]) if cord[:, :, z].any()], dtype=float)
    centres = np.array([np.argwhere(cord[:, :, int(z)]).mean(axis=0) for z in z_mean])
    s = (len(z_mean) / cord.shape[2]) ** 2 * 20 * pz / 3
    slopes = [interpolate.splev(np.arange(cord.shape[2]), interpolate.splrep(z_mean, c, s=s, k=3), der=1) for c in centres.T]
    cos_angle = pz / np.sqrt(slopes[0] ** 2 + slopes[1] ** 2 + pz**2)
    return float(sum(pz / cos_angle[z] for z in np.unique(np.nonzero(lesion)[2])))


def test_broken_up_cord_end_gives_sct_length_with_a_warning() -> None:
    """A cord mask that breaks into fragments jumping A-P over its top 6 slices (as a model's mask at the edge of the
    field of view): SCT's bspline centerline rings there and a 1-slice lesion on the top slice gets a length of
    tens of mm. The number stays SCT's; a warning names the lesion and the slice. (errsm_21 with the demo model
    gave 2010 mm for a 1-slice speck on slice 213.)"""
    spacing = (1.0, 1.0, 1.0)
    clean, _ = straight_cord(shape=(20, 40, 40), spacing=spacing)
    lesion = np.zeros_like(clean)
    lesion[9:11, 10:14, 39] = True
    result = analyze_lesions(as_image(lesion, spacing), as_image(clean, spacing))
    assert result.table.iloc[0]["length [mm]"] == pytest.approx(1.0, abs=1e-6)
    assert result.warnings == []

    broken = clean.copy()
    for i, z in enumerate(range(34, 40)):
        broken[:, :, z] = False
        centre_y = 22 if i % 2 else 6
        broken[8:13, centre_y - 2 : centre_y + 3, z] = True
    lesion = np.zeros_like(broken)
    lesion[9:11, :, 39] = broken[9:11, :, 39]
    result = analyze_lesions(as_image(lesion, spacing), as_image(broken, spacing))
    length = result.table.iloc[0]["length [mm]"]
    assert length > 20.0  # one 1 mm slice
    assert length == pytest.approx(sct_length_mm(broken, lesion, 1.0), rel=1e-9)
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("lesion 1:") and "(I->S) 39 (" in result.warnings[0]
    assert f"{length:.1f} mm" in result.warnings[0]


def test_without_cord_only_the_volume(t2_cord: sitk.Image) -> None:
    cord_xyz = rpi_xyz(t2_cord).astype(bool)
    lesion = from_rpi_xyz(box_inside_cord(cord_xyz, range(20, 25)), t2_cord)
    result = analyze_lesions(lesion)
    row = result.table.iloc[0]
    assert row["volume [mm3]"] == pytest.approx(45.0)
    assert np.isnan(row["length [mm]"]) and np.isnan(row["max_axial_damage_ratio []"])
    assert "interpolated_midsagittal_slice" not in result.table.columns


def test_image_statistics_inside_the_lesion(t2_cord: sitk.Image) -> None:
    image = sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2.nii.gz")))
    cord_xyz = rpi_xyz(t2_cord).astype(bool)
    box = box_inside_cord(cord_xyz, range(20, 25))
    result = analyze_lesions(from_rpi_xyz(box, t2_cord), t2_cord, image=image, image_name="t2")
    values = rpi_xyz(image)[box].astype(float)
    values = values[values != 0]
    assert result.table.iloc[0]["mean_t2"] == pytest.approx(values.mean())
    assert result.table.iloc[0]["std_t2"] == pytest.approx(values.std())


def test_bad_masks_are_refused(t2_cord: sitk.Image) -> None:
    with pytest.raises(InputError, match="not a binary mask"):
        analyze_lesions(sitk.Cast(t2_cord, sitk.sitkUInt8) * 3, t2_cord)
    other = sitk.ReadImage(str(shared_file("sct_testing_data/t1/t1w_seg-manual.nii.gz")))
    with pytest.raises(InputError, match="same grid"):
        analyze_lesions(sitk.Cast(other > 0, sitk.sitkUInt8), t2_cord)


def test_cli_analyze_on_sct_fake_lesion_outputs(tmp_path) -> None:
    """`sciseg analyze` on SCT's test masks (SCIsegV2 outputs of a painted lesion): files and one lesion."""
    import json
    import subprocess
    import sys

    folder = shared_file("sct_testing_data/t2")
    lesion = folder / "t2_fake_lesion_lesion_seg.nii.gz"
    result = subprocess.run(
        [sys.executable, "-m", "SCIsegLib", "analyze", "--lesion", str(lesion), "--cord", str(folder / "t2_fake_lesion_sc_seg.nii.gz"),
         "--image", str(folder / "t2_fake_lesion.nii.gz"), "-o", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "t2_fake_lesion_lesion_seg_analysis.csv")
    assert len(table) == 1
    lesion_voxels = int(sitk.GetArrayFromImage(sitk.ReadImage(str(lesion))).sum())
    cord = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "t2_fake_lesion_sc_seg.nii.gz")))
    inside = int((sitk.GetArrayFromImage(sitk.ReadImage(str(lesion))) & cord).sum())
    assert lesion_voxels == 163
    voxel_mm3 = float(np.prod(sitk.ReadImage(str(lesion)).GetSpacing()))
    assert table["volume [mm3]"][0] == pytest.approx(inside * voxel_mm3, rel=1e-9)
    assert "mean_t2_fake_lesion" in table.columns
    summary = json.loads((tmp_path / "t2_fake_lesion_lesion_seg_analysis.json").read_text())
    assert summary["lesion_count"] == 1
    labels = sitk.ReadImage(str(tmp_path / "t2_fake_lesion_lesion_seg_label.nii.gz"))
    assert labels.GetSize() == sitk.ReadImage(str(lesion)).GetSize()
    assert (tmp_path / "t2_fake_lesion_lesion_seg_analysis.xlsx").is_file()


def test_cli_analyze_no_lesion_exits_1_and_bad_mask_2(tmp_path, t2_cord: sitk.Image) -> None:
    import subprocess
    import sys

    empty = sitk.Image(t2_cord.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(t2_cord)
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    sitk.WriteImage(sitk.Cast(t2_cord, sitk.sitkUInt8) * 2, str(tmp_path / "twos.nii.gz"))
    cord = str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz"))
    run = lambda name: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "SCIsegLib", "analyze", "--lesion", str(tmp_path / name), "--cord", cord, "-o", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    no_lesion = run("empty.nii.gz")
    assert no_lesion.returncode == 1 and "No lesion found in" in no_lesion.stderr
    bad = run("twos.nii.gz")
    assert bad.returncode == 2 and "not a binary mask" in bad.stderr and "Traceback" not in bad.stderr


BRIDGES = ["interpolated_dorsal_bridge_width [mm]", "interpolated_ventral_bridge_width [mm]", "interpolated_total_bridge_width [mm]"]


def half_way_cord() -> tuple[np.ndarray, tuple]:
    """A straight cord whose midsagittal slice is 9.5: bridges are interpolated half-way between x = 9 and x = 10."""
    cord, spacing = straight_cord(centre_x=9.5)
    assert np.array_equal(cord[9], cord[10])
    return cord, spacing


def column_bridges(cord: np.ndarray, x: int, z: int, y_first: int, y_last: int) -> tuple[int, int]:
    cord_y = np.nonzero(cord[x, :, z])[0]
    return y_first - cord_y[0], cord_y[-1] - y_last


def test_bridges_interpolate_the_minimum_of_each_sagittal_slice() -> None:
    cord, spacing = half_way_cord()
    lesion = np.zeros_like(cord)
    lesion[9, 10:13, 14:18] = True  # x = 9: y 10-12 on z 14-17
    lesion[9, 9:13, 16] = True  # ... reaching y 9 on z 16 only: x = 9's narrowest dorsal bridge
    lesion[10, 10:15, 14:18] = True  # x = 10: y 10-14
    lesion[10, 10:16, 15] = True  # ... reaching y 15 on z 15 only: x = 10's narrowest ventral bridge
    lesion[10, 8:15, 14] = True  # ... and y 8 on z 14 only: its narrowest dorsal bridge, not on x = 9's slice
    assert np.all(cord[lesion])
    row = analyze_lesions(as_image(lesion, spacing), as_image(cord, spacing)).table.iloc[0]
    assert row["interpolated_midsagittal_slice"] == pytest.approx(9.5)
    dorsal_9, ventral_9 = column_bridges(cord, 9, 16, 9, 12)[0], column_bridges(cord, 9, 14, 10, 12)[1]
    dorsal_10, ventral_10 = column_bridges(cord, 10, 14, 8, 14)[0], column_bridges(cord, 10, 15, 10, 15)[1]
    assert row["slice_9_dorsal_bridge_width [mm]"] == pytest.approx(dorsal_9 * 0.6)
    assert row["slice_10_ventral_bridge_width [mm]"] == pytest.approx(ventral_10 * 0.6)
    # The minima of the two slices lie on different axial slices (16 and 14): interpolating per axial slice first
    # and taking the minimum after would give a wider dorsal bridge than SCT's.
    per_axial_first = min((column_bridges(cord, 9, z, 9 if z == 16 else 10, 12)[0] + column_bridges(cord, 10, z, 8 if z == 14 else 10, 14)[0]) / 2 for z in range(14, 18))
    assert per_axial_first * 0.6 > (dorsal_9 + dorsal_10) / 2 * 0.6
    expected_dorsal = (dorsal_9 + dorsal_10) / 2 * 0.6
    expected_ventral = (ventral_9 + ventral_10) / 2 * 0.6
    assert [row[c] for c in BRIDGES] == pytest.approx([expected_dorsal, expected_ventral, expected_dorsal + expected_ventral], abs=1e-12)
    assert row["dorsal_bridge_ratio [%]"] == pytest.approx(100 * expected_dorsal / (expected_dorsal + expected_ventral))


def test_lesion_on_one_interpolation_slice_uses_that_slice() -> None:
    cord, spacing = half_way_cord()
    lesion = np.zeros_like(cord)
    lesion[7:10, 11:14, 14:18] = True  # reaches x = 9, not x = 10
    row = analyze_lesions(as_image(lesion, spacing), as_image(cord, spacing)).table.iloc[0]
    dorsal, ventral = column_bridges(cord, 9, 15, 11, 13)
    assert [row[c] for c in BRIDGES] == pytest.approx([dorsal * 0.6, ventral * 0.6, (dorsal + ventral) * 0.6], abs=1e-12)
    # Not interpolated with zero or with a missing slice: the value lies on slice 9's own bridges.
    assert row["interpolated_dorsal_bridge_width [mm]"] == pytest.approx(row["slice_9_dorsal_bridge_width [mm]"])


def test_parasagittal_lesion_gives_the_cord_diameter() -> None:
    cord, spacing = half_way_cord()
    lesion = np.zeros_like(cord)
    lesion[5:7, 11:13, 20:24] = True  # lateral: neither x = 9 nor x = 10
    assert np.all(cord[lesion])
    row = analyze_lesions(as_image(lesion, spacing), as_image(cord, spacing)).table.iloc[0]
    diameter = cord[9, :, 20].sum() * 0.6  # straight cord: the same on every slice and on x = 9 and 10
    assert [row[c] for c in BRIDGES] == pytest.approx([diameter / 2, diameter / 2, diameter], abs=1e-12)
    assert row["dorsal_bridge_ratio [%]"] == pytest.approx(50.0)


def test_nli_slice_without_lesion_reports_the_cord_diameter() -> None:
    cord, spacing = half_way_cord()
    upper = cord[:, :, 25:]
    cord[:, :, 25:] = upper & np.roll(upper, 1, axis=1) & np.roll(upper, -1, axis=1)  # narrower A-P above 25, same centre
    empty = np.zeros_like(cord)
    result = analyze_lesions(as_image(empty, spacing), as_image(cord, spacing), nli_slice=30)
    assert result.summary["lesion_count"] == 0 and result.summary["nli_slice"] == 30
    row = result.table.iloc[0]
    assert len(result.table) == 1 and row["label"] == 0 and np.isnan(row["volume [mm3]"]) and np.isnan(row["length [mm]"])
    diameter = cord[9, :, 30].sum() * 0.6
    assert diameter < cord[9, :, 20].sum() * 0.6
    assert [row[c] for c in BRIDGES] == pytest.approx([diameter / 2, diameter / 2, diameter], abs=1e-12)
    assert row["interpolated_midsagittal_slice"] == pytest.approx(9.5)
    assert result.summary["nli_cord_ap_diameter_mm"] == pytest.approx(diameter)
    assert not sitk.GetArrayViewFromImage(result.labels).any()


def test_nli_slice_errors_and_ignored_with_a_lesion() -> None:
    cord, spacing = half_way_cord()
    cord[:, :, 35:] = False
    empty = np.zeros_like(cord)
    with pytest.raises(InputError, match="NLI slice 37 is outside the cord mask .* spans slices 0-34"):
        analyze_lesions(as_image(empty, spacing), as_image(cord, spacing), nli_slice=37)
    with pytest.raises(InputError, match="outside the cord"):
        analyze_lesions(as_image(empty, spacing), as_image(cord, spacing), nli_slice=-1)
    with pytest.raises(InputError, match="needs the cord mask"):
        analyze_lesions(as_image(empty, spacing), None, nli_slice=10)
    lesion = empty.copy()
    lesion[9:11, 11:13, 14:18] = True
    result = analyze_lesions(as_image(lesion, spacing), as_image(cord, spacing), nli_slice=30)
    assert list(result.table["label"]) == [1] and "ignored" in result.warnings[0]


def test_cli_nli_slice_on_the_real_scan(tmp_path, t2_cord: sitk.Image) -> None:
    """An empty lesion mask on SCT's t2 with --nli-slice: exit 0, the files, and bounds from the manual cord mask."""
    import json
    import subprocess
    import sys

    empty = sitk.Image(t2_cord.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(t2_cord)
    sitk.WriteImage(empty, str(tmp_path / "empty.nii.gz"))
    cord_path = str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz"))
    run = lambda slice_number: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "SCIsegLib", "analyze", "--lesion", str(tmp_path / "empty.nii.gz"), "--cord", cord_path,
         "--nli-slice", str(slice_number), "-o", str(tmp_path / "out")],
        capture_output=True, text=True,
    )
    done = run(25)
    assert done.returncode == 0, done.stderr
    row = pd.read_csv(tmp_path / "out" / "empty_analysis.csv").iloc[0]
    cord_xyz = rpi_xyz(t2_cord).astype(bool)
    counts = [cord_xyz[x, :, 25].sum() for x in range(cord_xyz.shape[0]) if cord_xyz[x, :, 25].any()]
    assert np.cos(np.deg2rad(30)) * 1.0 <= row["interpolated_total_bridge_width [mm]"] <= max(counts) * 1.0
    assert row["interpolated_dorsal_bridge_width [mm]"] == pytest.approx(row["interpolated_total_bridge_width [mm]"] / 2)
    assert json.loads((tmp_path / "out" / "empty_analysis.json").read_text())["nli_slice"] == 25
    outside = run(cord_xyz.shape[2] + 5)
    assert outside.returncode == 2 and "outside the cord mask" in outside.stderr and "Traceback" not in outside.stderr


@pytest.mark.parametrize(
    "start, size, rtol",
    [
        ((29, 45, 25), (3, 10, 2), 0.001),  # straight part of the cord
        ((29, 27, 25), (1, 4, 1), 0.001),  # SCT issue #3633
        ((29, 0, 25), (4, 15, 3), 0.01),  # curved part: larger angle corrections
    ],
)
def test_sct_test_suite_dummy_lesions(start, size, rtol, t2_cord: sitk.Image) -> None:
    """SCT's own ``test_cli_sct_analyze_lesion`` cases: boxes given in t2.nii.gz's file index order (AIL), with SCT's
    expectations (exact volume and damage ratio; length, equivalent diameter and per-sagittal-slice bridges within
    SCT's tolerance, and on the side the angle correction pushes them)."""
    seg = sitk.GetArrayFromImage(t2_cord).transpose(2, 1, 0).astype(int)  # file index order (i, j, k), as SCT's Image.data
    lesion = np.zeros_like(seg, dtype=np.uint8)
    (a, s, r), (da, ds, dr) = start, size
    lesion[a : a + da, s : s + ds, r : r + dr] = 1
    image = sitk.GetImageFromArray(lesion.transpose(2, 1, 0))
    image.CopyInformation(t2_cord)
    row = analyze_lesions(image, t2_cord).table.iloc[0]

    inside = lesion.astype(bool) & (seg > 0)
    if inside.all() or inside.sum() == lesion.sum():  # SCT's formulas, for a box inside the cord
        assert row["volume [mm3]"] == da * ds * dr  # 1 mm isotropic
        min_area = min(np.sum(seg[:, k, :]) for k in range(s, s + ds))
        assert row["max_axial_damage_ratio []"] == da * dr / min_area
    else:  # the curved case pokes 3 voxels out of the manual cord mask: SCT >= 7 measures the part inside the cord
        assert lesion.sum() - inside.sum() == 3
        assert row["volume [mm3]"] == inside.sum()
        assert row["max_axial_damage_ratio []"] == max(inside[:, k, :].sum() / seg[:, k, :].sum() for k in range(s, s + ds))
    assert row["length [mm]"] == pytest.approx(ds, rel=rtol) and row["length [mm]"] >= ds
    diameter = 2 * np.sqrt(da * dr / np.pi)
    assert row["max_equivalent_diameter [mm]"] == pytest.approx(diameter, rel=rtol) and row["max_equivalent_diameter [mm]"] <= diameter
    split = a + da // 2
    for k in range(r, r + dr):
        ventral = min(max(0.0, np.sum(seg[:split, j, k]) - (split - a)) for j in range(s, s + ds))
        dorsal = min(max(0.0, np.sum(seg[split:, j, k]) - (a + da - split)) for j in range(s, s + ds))
        for side, expected in (("dorsal", dorsal), ("ventral", ventral), ("total", dorsal + ventral)):
            value = row[f"slice_{k}_{side}_bridge_width [mm]"]  # our slice numbers are the file's own
            assert value == pytest.approx(expected, rel=rtol) and value <= expected + 1e-12


@pytest.mark.parametrize(("offset", "count"), [((2, 0, 0), 1), ((2, 2, 0), 1), ((2, 2, 2), 2)], ids=["face", "edge", "corner"])
def test_touching_lesions_follow_sct_18_connectivity(offset, count: int) -> None:
    """SCT's ``label_lesion``: ``skimage.measure.label(connectivity=2)``, 18-connected: lesions touching by a face or an
    edge are one lesion, by a corner only two."""
    cord, spacing = straight_cord()
    lesion = np.zeros_like(cord)
    lesion[8:10, 10:12, 10:12] = True
    x, y, z = (a + o for a, o in zip((8, 10, 10), offset, strict=True))
    lesion[x : x + 2, y : y + 2, z : z + 2] = True
    assert np.all(cord[lesion])
    result = analyze_lesions(as_image(lesion, spacing), as_image(cord, spacing))
    assert result.summary["lesion_count"] == count
    assert result.table["volume [mm3]"].sum() == pytest.approx(16 * np.prod(spacing))


def test_empty_lesion_mask_gives_no_row_and_zero_volume() -> None:
    cord, spacing = straight_cord()
    result = analyze_lesions(as_image(np.zeros_like(cord), spacing), as_image(cord, spacing))
    assert result.table.empty and result.summary["lesion_count"] == 0
    assert result.summary["total_volume_mm3"] == 0.0
