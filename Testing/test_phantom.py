"""The synthetic phantom: determinism, speed, anatomy and contrast, orientation independence, painting."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_file
from SCIsegLib.phantom import _patient_coordinates, AXIAL, SAGITTAL, Acquisition, LesionSpec, make_phantom, paint_lesions
from SCIsegLib.volume import reorient


def test_same_seed_same_voxels_and_fast_enough() -> None:
    acquisition = Acquisition(spacing_mm=(1.0, 1.0, 1.0), fov_mm=(64.0, 128.0, 32.0), orientation="LAS")
    started = time.perf_counter()
    first = make_phantom(seed=3, acquisition=acquisition, lesions=2)
    elapsed = time.perf_counter() - started
    assert first.image.GetSize() == (64, 128, 32)
    assert elapsed < 1.0, f"a 64x128x32 phantom took {elapsed:.2f} s"
    second = make_phantom(seed=3, acquisition=acquisition, lesions=2)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(first.image), sitk.GetArrayViewFromImage(second.image))
    other = make_phantom(seed=4, acquisition=acquisition, lesions=2)
    assert not np.array_equal(sitk.GetArrayViewFromImage(first.image), sitk.GetArrayViewFromImage(other.image))


def test_t2w_contrast_and_lesions_inside_the_cord() -> None:
    case = make_phantom(
        seed=1, acquisition=SAGITTAL, lesions=[LesionSpec(center_si_mm=0.0, length_mm=15.0, contrast=0.85)], noise=0.0, bias=0.0
    )
    image = sitk.GetArrayFromImage(case.image)
    labels = sitk.GetArrayFromImage(case.labels)
    cord_only, lesion = labels == 1, labels == 2
    assert lesion.sum() > 50 and cord_only.sum() > 10 * lesion.sum() / 10
    distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(case.cord, insideIsPositive=False, useImageSpacing=True))
    csf = (distance > 1.0) & (distance < 2.5)
    assert np.median(image[csf]) > 1.8 * np.median(image[cord_only])  # CSF bright, cord grey
    assert np.median(image[lesion]) > 1.5 * np.median(image[cord_only])  # oedema hyperintense
    assert set(np.unique(labels)) == {0, 1, 2}
    # the lesion spans about its length along S-I (mm), within a voxel
    lesion_mm = np.argwhere(lesion) * np.array(case.image.GetSpacing())[::-1]
    extent = np.ptp(lesion_mm, axis=0)
    assert 12.0 <= extent.max() <= 16.0


def test_haemorrhage_core_is_hypointense_but_labelled_lesion() -> None:
    spec = LesionSpec(center_si_mm=0.0, length_mm=20.0, width_fraction=1.0, contrast=0.85, haemorrhage=True)
    case = make_phantom(seed=2, acquisition=AXIAL, lesions=[spec], noise=0.0, bias=0.0)
    image, labels = sitk.GetArrayFromImage(case.image), sitk.GetArrayFromImage(case.labels)
    lesion_values = image[labels == 2]
    assert lesion_values.min() < 0.5 * np.median(image[labels == 1])  # dark core
    assert lesion_values.max() > 1.5 * np.median(image[labels == 1])  # bright oedema


@pytest.mark.parametrize("orientation", ["PSR", "RAS", "LPI", "AIL"])
def test_anatomy_does_not_depend_on_the_storage_orientation(orientation: str) -> None:
    reference = make_phantom(seed=5, acquisition=Acquisition(orientation="LAS"), lesions=1, noise=0.0)
    stored = make_phantom(seed=5, acquisition=Acquisition(orientation=orientation), lesions=1, noise=0.0)
    back = reorient(stored.labels, "LAS")
    np.testing.assert_allclose(back.GetOrigin(), reference.labels.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(reference.labels))


def test_oblique_tilt_keeps_the_physical_anatomy() -> None:
    tilted = make_phantom(seed=6, acquisition=Acquisition(tilt_deg=20.0), lesions=0, noise=0.0)
    straight = make_phantom(seed=6, acquisition=Acquisition(), lesions=0, noise=0.0)

    def central_cord_volume_mm3(case) -> float:
        """Cord volume within +-40 mm of the FOV centre along S-I (the tilted box covers a longer stretch)."""
        superior = _patient_coordinates(case.image)[2]
        inside = (sitk.GetArrayViewFromImage(case.cord) > 0) & (np.abs(superior) < 40.0)
        return float(inside.sum() * np.prod(case.image.GetSpacing()))

    assert central_cord_volume_mm3(tilted) == pytest.approx(central_cord_volume_mm3(straight), rel=0.03)
    assert not np.allclose(np.array(tilted.image.GetDirection()), np.eye(3).ravel())


def test_paint_lesions_on_a_real_scan() -> None:
    image = sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2.nii.gz")))
    cord = sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz")))
    painted = paint_lesions(image, cord, lesions=[LesionSpec(center_si_mm=0.0, length_mm=10.0, width_fraction=0.8)])
    labels = sitk.GetArrayFromImage(painted.labels)
    original = sitk.GetArrayFromImage(image).astype(np.float32)
    after = sitk.GetArrayFromImage(painted.image)
    lesion = labels == 2
    assert lesion.sum() > 30
    assert np.array_equal(labels > 0, sitk.GetArrayFromImage(cord) > 0)  # cord truth is the manual mask
    assert (after[lesion] - original[lesion]).mean() > 0.3 * original[labels == 1].mean()  # brighter
    np.testing.assert_array_equal(after[labels == 0], original[labels == 0])  # nothing painted outside the cord
    assert painted.image.GetOrigin() == image.GetOrigin() and painted.image.GetDirection() == image.GetDirection()
