"""Image reading, refusal of bad inputs, and reorientation round trips (real scans and oblique phantoms)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, real_scans
from SCIsegLib.errors import InputError
from SCIsegLib.volume import (
    array_zyx,
    grid_difference,
    image_stem,
    load_image,
    on_grid_of,
    orientation_of,
    reorient,
    reorient_like,
    same_grid,
    sct_to_itk_orientation,
    write_mask,
)


@pytest.mark.parametrize(
    "sct, itk", [("RPI", "LAS"), ("AIL", "PSR"), ("LPI", "RAS"), ("RAS", "LPI"), ("PSR", "AIL")]
)
def test_sct_letters_are_where_each_axis_starts(sct: str, itk: str) -> None:
    assert sct_to_itk_orientation(sct) == itk


@pytest.mark.parametrize("bad", ["RP", "RRI", "XYZ", "RPIS"])
def test_bad_orientation_codes_are_refused(bad: str) -> None:
    with pytest.raises(InputError):
        sct_to_itk_orientation(bad)


def test_image_stem_strips_double_suffixes() -> None:
    assert image_stem("/a/sub-01_T2w.nii.gz") == "sub-01_T2w"
    assert image_stem("b.nrrd") == "b"
    assert image_stem("c.nii") == "c"


@pytest.mark.parametrize("relative", real_scans() or ["(no ../shared/data)"])
def test_reorientation_round_trip_on_real_scans(relative: str) -> None:
    """To SCT RPI and back: identical voxels and geometry; RPI data equals nibabel's reorientation."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip("../shared/data is not available")
    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3 or min(image.GetSize()) < 2:
        pytest.skip("not a 3D volume")
    rpi = reorient(image, sct_to_itk_orientation("RPI"))
    assert orientation_of(rpi) == "LAS"
    back = reorient_like(rpi, image)
    assert back.GetSize() == image.GetSize()
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetSpacing() == image.GetSpacing()
    assert back.GetDirection() == image.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))

    # Independent reference: nibabel (SCT's own library) reorients the same file to LAS (= SCT RPI).
    loaded = nib.load(str(path))
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(loaded.affine), nib.orientations.axcodes2ornt(("L", "A", "S"))
    )
    reference = nib.orientations.apply_orientation(np.asanyarray(loaded.dataobj), transform)
    ours = sitk.GetArrayFromImage(rpi).transpose(2, 1, 0)  # (z, y, x) -> (x, y, z) like nibabel
    np.testing.assert_allclose(ours, reference, rtol=1e-6)
    # The physical position of voxel (0, 0, 0) agrees too (ITK LPS vs nibabel RAS: flip x and y).
    affine = nib.orientations.inv_ornt_aff(transform, loaded.shape)
    corner_ras = (loaded.affine @ affine)[:3, 3]
    np.testing.assert_allclose(np.array(rpi.GetOrigin()) * [-1, -1, 1], corner_ras, atol=1e-3)


def _oblique_image(angles_deg: tuple[float, float, float], size=(9, 11, 13), spacing=(0.5, 0.9, 3.0)) -> sitk.Image:
    transform = sitk.Euler3DTransform()
    transform.SetRotation(*np.deg2rad(angles_deg))
    direction = np.array(transform.GetMatrix()).reshape(3, 3)
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=size[::-1]).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin((12.5, -40.25, 7.0))
    return image


@pytest.mark.parametrize("angles", [(0, 0, 0), (10, 0, 0), (0, 25, -15), (44, 5, 80), (170, -60, 30), (90, 90, 0)])
def test_reorientation_round_trip_on_oblique_images(angles: tuple[float, float, float]) -> None:
    image = _oblique_image(angles)
    for sct_code in ("RPI", "AIL", "LPI"):
        reoriented = reorient(image, sct_to_itk_orientation(sct_code))
        back = reorient_like(reoriented, image)
        assert back.GetDirection() == image.GetDirection() and back.GetOrigin() == image.GetOrigin()
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
        # Same physical positions: the centre of every voxel maps to the same point in mm.
        last = [s - 1 for s in reoriented.GetSize()]
        corners = {reoriented.TransformIndexToPhysicalPoint([i * last[0], j * last[1], k * last[2]]) for i in (0, 1) for j in (0, 1) for k in (0, 1)}
        last0 = [s - 1 for s in image.GetSize()]
        corners0 = {image.TransformIndexToPhysicalPoint([i * last0[0], j * last0[1], k * last0[2]]) for i in (0, 1) for j in (0, 1) for k in (0, 1)}
        assert sorted(np.round(list(corners), 6).tolist()) == sorted(np.round(list(corners0), 6).tolist())


@pytest.mark.parametrize("pixel_type", [sitk.sitkInt16, sitk.sitkUInt8, sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkInt64])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_reads_every_data_type_and_format(tmp_path: Path, pixel_type: int, suffix: str) -> None:
    array = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 7).astype(np.float64)
    image = sitk.Cast(sitk.GetImageFromArray(array), pixel_type)
    image.SetSpacing((0.5, 0.7, 2.0))
    path = tmp_path / f"img{suffix}"
    sitk.WriteImage(image, str(path))
    loaded = load_image(path)
    np.testing.assert_array_equal(array_zyx(loaded, np.float64), array)
    np.testing.assert_allclose(loaded.GetSpacing(), (0.5, 0.7, 2.0))


def test_reads_qform_code_zero_real_scan() -> None:
    path = SHARED_DATA / "sct_testing_data/t2s/t2s_seg-deepseg.nii.gz"
    if not path.exists():
        pytest.skip("../shared/data is not available")
    assert nib.load(str(path)).header["qform_code"] == 0
    image = load_image(path)
    assert image.GetSize() == (49, 54, 9)


def _text_file(path: Path) -> Path:
    path.write_text("not an image")
    return path


def _write(tmp_path: Path, array: np.ndarray, name: str = "x.nii.gz") -> Path:
    """Write with nibabel (as most scanners' converters do); array axes are (x, y, z[, t])."""
    path = tmp_path / name
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.0, 1.0])), str(path))
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda d: d / "missing.nii.gz", "no such file"),
        (lambda d: d, "is a folder"),
        (lambda d: _text_file(d / "notes.nii.gz"), "not an image"),
        (lambda d: _write(d, np.ones((5, 6), np.float32) * np.arange(6)), "2D"),
        (lambda d: _write(d, np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype(np.float32)), "4D with"),
        (lambda d: _write(d, np.where(np.arange(60).reshape(3, 4, 5) == 7, np.nan, 1.0)), "NaN"),
        (lambda d: _write(d, np.full((3, 4, 5), 7, np.int16)), "constant"),
        (lambda d: _write(d, np.arange(20, dtype=np.float32).reshape(4, 5, 1)), "single slice"),
    ],
)
def test_bad_inputs_get_one_clear_sentence(tmp_path: Path, make, words: str) -> None:
    path = make(tmp_path)
    with pytest.raises(InputError) as caught:
        load_image(path)
    message = str(caught.value)
    assert words in message
    assert "\n" not in message and message.endswith(".")


def test_nonfinite_voxels_can_be_replaced_explicitly(tmp_path: Path) -> None:
    array = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    array[1, 2, 3] = np.inf
    array[0, 0, 1] = np.nan
    image = load_image(_write(tmp_path, array), replace_nonfinite=True)
    cleaned = sitk.GetArrayFromImage(image)
    # nibabel axes (x, y, z) are SimpleITK array axes (z, y, x) reversed
    assert np.isfinite(cleaned).all() and cleaned[3, 2, 1] == 0 and cleaned[1, 0, 0] == 0
    assert cleaned[3, 2, 0] == array[0, 2, 3]


def test_write_mask_is_atomic_and_on_the_reference_grid(tmp_path: Path) -> None:
    reference = _oblique_image((20, 0, 10))
    mask = (sitk.GetArrayFromImage(reference) > 0).astype(np.uint8)
    target = write_mask(mask, reference, tmp_path / "out" / "m_seg.nii.gz")
    assert sorted(p.name for p in target.parent.iterdir()) == ["m_seg.nii.gz"]
    written = sitk.ReadImage(str(target))
    assert written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(written.GetOrigin(), reference.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(written.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), mask)


def test_one_grid_check_names_each_difference() -> None:
    """Size, spacing, origin and direction, each named; a mask stored with a flipped axis is the same grid."""
    reference = sitk.Image([6, 5, 4], sitk.sitkUInt8)
    reference.SetSpacing((1.0, 1.0, 2.0))
    assert grid_difference(reference, reference) is None
    within = sitk.Image(reference)
    within.SetOrigin((5e-4, 0.0, 0.0))  # float32 header noise
    assert same_grid(within, reference)
    coarse = sitk.Image(reference)
    coarse.SetSpacing((2.0, 2.0, 4.0))  # the same voxels at twice the size: 8x the volume
    assert grid_difference(coarse, reference) == "spacing (2, 2, 4) mm vs (1, 1, 2) mm"
    with pytest.raises(ValueError, match=r"does not lie on the grid of the volume \(spacing"):
        on_grid_of(coarse, reference)
    moved = sitk.Image(reference)
    moved.SetOrigin((0.0, 0.01, 0.0))
    assert grid_difference(moved, reference).startswith("origin")
    turned = sitk.Image(reference)
    turned.SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    assert grid_difference(turned, reference).startswith("direction")
    assert grid_difference(sitk.Image([6, 5, 3], sitk.sitkUInt8), reference) == "size (6, 5, 3) vs (6, 5, 4) voxels"
    # the same voxels in mm stored right-to-left: re-indexed exactly; at another spacing it is refused, flipped or not
    array = np.arange(120, dtype=np.uint8).reshape(4, 5, 6)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    flipped = sitk.Flip(image, [True, False, False])
    assert grid_difference(flipped, reference).startswith("origin")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_grid_of(flipped, reference)), array)
    flipped_coarse = sitk.Flip(image, [True, False, False])
    flipped_coarse.SetSpacing((2.0, 2.0, 4.0))
    with pytest.raises(ValueError, match="does not lie on the grid"):
        on_grid_of(flipped_coarse, reference)
