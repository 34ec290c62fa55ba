"""Metrics against independent references: DeepMind's surface-distance, brute force, hand-built lesion cases."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import surface_distance

from conftest import shared_file
from SCIsegLib import metrics


def random_blobs(seed: int, shape=(18, 20, 16), count: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    mask = np.zeros(shape, bool)
    for _ in range(count):
        centre = rng.uniform(3, np.array(shape) - 3)
        radii = rng.uniform(1.5, 4.0, size=3)
        mask |= (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(axis=0) <= 1
    return mask


def brute_force_distances(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    points_a = np.argwhere(metrics.contour(a)) * np.array(spacing)
    points_b = np.argwhere(metrics.contour(b)) * np.array(spacing)
    pairwise = np.sqrt(((points_a[:, None, :] - points_b[None, :, :]) ** 2).sum(axis=2))
    return pairwise.min(axis=1), pairwise.min(axis=0)


@pytest.mark.parametrize("seed", range(5))
def test_dice_and_surfel_metrics_match_surface_distance(seed: int) -> None:
    a, b = random_blobs(seed), random_blobs(seed + 100)
    spacing = (0.5, 0.8, 2.5)
    assert metrics.dice(a, b) == pytest.approx(surface_distance.compute_dice_coefficient(b, a), abs=1e-6)
    ours = metrics.surfel_metrics(a, b, spacing, tolerance_mm=1.5)
    distances = surface_distance.compute_surface_distances(b, a, spacing)
    assert ours["normalized_surface_dice"] == pytest.approx(surface_distance.compute_surface_dice_at_tolerance(distances, 1.5), abs=1e-6)
    assert ours["surfel_hausdorff95"] == pytest.approx(surface_distance.compute_robust_hausdorff(distances, 95), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_contour_distances_match_brute_force_with_anisotropic_spacing(seed: int) -> None:
    a, b = random_blobs(seed), random_blobs(seed + 50)
    spacing = (0.6, 0.9, 3.0)
    forward, backward = metrics.contour_distances(a, b, spacing)
    expected_forward, expected_backward = brute_force_distances(a, b, spacing)
    np.testing.assert_allclose(np.sort(forward), np.sort(expected_forward), atol=1e-9)
    np.testing.assert_allclose(np.sort(backward), np.sort(expected_backward), atol=1e-9)
    result = metrics.surface_distances(a, b, spacing)
    pooled = np.concatenate([expected_forward, expected_backward])
    assert result.average == pytest.approx(pooled.mean())
    assert result.hausdorff == pytest.approx(max(expected_forward.max(), expected_backward.max()))
    assert result.hausdorff95 == pytest.approx(max(np.percentile(expected_forward, 95), np.percentile(expected_backward, 95)))


def test_real_anisotropic_masks_against_brute_force() -> None:
    automatic = sitk.ReadImage(str(shared_file("sct_testing_data/t2s/t2s_seg-deepseg.nii.gz")))
    reference = sitk.GetArrayFromImage(automatic) > 0
    shifted = np.roll(reference, 2, axis=2)  # 2 voxels of 0.5 mm along x
    spacing = tuple(reversed(automatic.GetSpacing()))  # (z, y, x) like the array
    forward, backward = metrics.contour_distances(shifted, reference, spacing)
    expected_forward, expected_backward = brute_force_distances(shifted, reference, spacing)
    np.testing.assert_allclose(np.sort(forward), np.sort(expected_forward), atol=1e-9)
    assert metrics.surface_distances(shifted, reference, spacing).hausdorff <= 1.0 + 1e-9  # at most the 1 mm shift
    assert metrics.dice(shifted, reference) == pytest.approx(surface_distance.compute_dice_coefficient(reference, shifted), abs=1e-6)


def test_empty_mask_conventions() -> None:
    empty, full = np.zeros((5, 5, 5), bool), np.zeros((5, 5, 5), bool)
    full[1:4, 1:4, 1:4] = True
    both = metrics.voxel_metrics(empty, empty, (1, 1, 1))
    assert both["dice"] == 1.0 and both["relative_volume_error_percent"] == 0.0 and both["hausdorff_mm"] == 0.0
    assert both["normalized_surface_dice"] == 1.0
    one = metrics.voxel_metrics(empty, full, (1, 1, 1))
    assert one["dice"] == 0.0 and one["relative_volume_error_percent"] == -100.0 and np.isnan(one["hausdorff_mm"])
    assert metrics.relative_volume_error(full, empty) == 100.0  # MetricsReloaded fork's rel_vol_error
    assert metrics.relative_volume_error(full, full) == 0.0


def box(mask: np.ndarray, z: slice, y: slice, x: slice) -> None:
    mask[z, y, x] = True


@pytest.fixture()
def canvas() -> np.ndarray:
    return np.zeros((20, 20, 20), bool)


def test_detection_exact_match_and_missed_and_false_positive(canvas) -> None:
    reference, prediction = canvas.copy(), canvas.copy()
    box(reference, slice(2, 5), slice(2, 5), slice(2, 5))  # found
    box(reference, slice(10, 13), slice(10, 13), slice(10, 13))  # missed
    box(prediction, slice(2, 5), slice(2, 5), slice(2, 5))
    box(prediction, slice(15, 18), slice(2, 5), slice(15, 18))  # false positive
    for result in (metrics.anima_detection(prediction, reference, (1, 1, 1)), metrics.overlap_detection(prediction, reference)):
        assert (result.reference_lesions, result.predicted_lesions) == (2, 2)
        assert result.sensitivity == 0.5 and result.ppv == 0.5 and result.f1 == 0.5


def test_small_overlap_counts_for_metricsreloaded_but_not_anima(canvas) -> None:
    reference, prediction = canvas.copy(), canvas.copy()
    box(reference, slice(2, 7), slice(2, 7), slice(2, 4))  # 50 voxels
    box(prediction, slice(2, 7), slice(6, 12), slice(2, 4))  # covers 10 of them (20 %), mostly outside
    anima = metrics.anima_detection(prediction, reference, (1, 1, 1))
    reloaded = metrics.overlap_detection(prediction, reference)
    assert reloaded.sensitivity == 1.0 and reloaded.ppv == 1.0
    assert anima.sensitivity == 0.0  # the predicted lesion lies 83 % outside: beta test fails
    assert anima.ppv == 0.0


def test_split_and_merged_lesions(canvas) -> None:
    reference, split = canvas.copy(), canvas.copy()
    box(reference, slice(2, 10), slice(2, 6), slice(2, 6))
    box(split, slice(2, 5), slice(2, 6), slice(2, 6))
    box(split, slice(7, 10), slice(2, 6), slice(2, 6))  # one lesion predicted as two pieces
    anima = metrics.anima_detection(split, reference, (1, 1, 1))
    assert (anima.sensitivity, anima.ppv) == (1.0, 1.0)
    merged_reference, merged = canvas.copy(), canvas.copy()
    box(merged_reference, slice(2, 5), slice(2, 6), slice(2, 6))
    box(merged_reference, slice(7, 10), slice(2, 6), slice(2, 6))
    box(merged, slice(2, 10), slice(2, 6), slice(2, 6))  # two lesions predicted as one blob
    anima = metrics.anima_detection(merged, merged_reference, (1, 1, 1))
    assert anima.sensitivity == 1.0  # each reference lesion is covered and the blob is mostly inside lesions (67 %)
    reloaded = metrics.overlap_detection(merged, merged_reference)
    assert (reloaded.sensitivity, reloaded.ppv) == (1.0, 1.0)


@pytest.mark.parametrize(("offset", "lesions"), [((2, 0, 0), 1), ((2, 2, 0), 2), ((2, 2, 2), 2)], ids=["face", "edge", "corner"])
def test_touching_lesions_are_counted_as_each_tool_labels_them(canvas, offset, lesions: int) -> None:
    """ANIMA (ITK ConnectedComponentImageFilter, not fully connected) and MetricsReloaded (scipy.ndimage.label's
    default structure) both form face-connected (6) components: lesions touching by an edge or a corner are two."""
    reference = canvas.copy()
    box(reference, slice(2, 4), slice(2, 4), slice(2, 4))
    z, y, x = (2 + o for o in offset)
    box(reference, slice(z, z + 2), slice(y, y + 2), slice(x, x + 2))
    assert metrics.anima_detection(reference, reference, (1, 1, 1), min_volume_mm3=3.0).reference_lesions == lesions
    assert metrics.overlap_detection(reference, reference).reference_lesions == lesions


def test_corner_touching_lesions_one_missed_give_half_sensitivity_as_metricsreloaded(canvas) -> None:
    reference, prediction = canvas.copy(), canvas.copy()
    box(reference, slice(2, 4), slice(2, 4), slice(2, 4))
    box(reference, slice(4, 6), slice(4, 6), slice(4, 6))  # touches the first by a corner only
    box(prediction, slice(2, 4), slice(2, 4), slice(2, 4))  # finds the first only
    result = metrics.overlap_detection(prediction, reference)
    assert (result.reference_lesions, result.sensitivity, result.ppv) == (2, 0.5, 1.0)
    assert result.f1 == pytest.approx(2 / 3)


def _metricsreloaded_case(ref_boxes, pred_boxes) -> tuple[np.ndarray, np.ndarray]:
    """A 10x10x10 volume as NeuroPoly's MetricsReloaded tests build it: ``ref[a:b, c:d] = 1`` (all z)."""
    reference, prediction = np.zeros((10, 10, 10)), np.zeros((10, 10, 10))
    for (a, b, c, d) in ref_boxes:
        reference[a:b, c:d] = 1
    for (a, b, c, d) in pred_boxes:
        prediction[a:b, c:d] = 1
    return prediction > 0, reference > 0


# test/test_metrics/test_pairwise_measures_neuropoly.py of github.com/ivadomed/MetricsReloaded (the code SCIsegV2
# reported its lesion-wise numbers with): boxes, then dsc, rel_vol_error, lesion_ppv, lesion_sensitivity,
# lesion_f1_score, ref_count, pred_count as that test expects them.
METRICSRELOADED_CASES = {
    "empty ref and pred": ([], [], 1, 0, 1.0, 1.0, 1.0, 0, 0),
    "empty ref": ([], [(5, 7, 2, 5)], 0.0, 100, 0.0, 1.0, 0.0, 0, 1),
    "empty pred": ([(5, 7, 2, 5)], [], 0.0, -100.0, 0.0, 0.0, 0.0, 1, 0),
    "partial overlap": ([(4, 5, 3, 6)], [(4, 8, 2, 5)], 0.26666666666666666, 300.0, 1.0, 1.0, 1.0, 1, 1),
    "two lesions, one partial": ([(1, 3, 3, 6), (7, 9, 2, 5)], [(1, 3, 3, 6), (7, 8, 2, 5)], 0.8571428571428571,
                                 -25.0, 1.0, 1.0, 1.0, 2, 2),
    "one of two not predicted": ([(1, 3, 3, 6), (7, 9, 2, 5)], [(1, 3, 3, 6)], 0.6666666666666666, -50.0, 1.0, 0.5,
                                 0.6666666666666666, 2, 1),
    "none of two predicted": ([(1, 3, 3, 6), (7, 9, 2, 5)], [], 0.0, -100.0, 0.0, 0.0, 0.0, 2, 0),
    "full overlap": ([(4, 8, 2, 5)], [(4, 8, 2, 5)], 1.0, 0.0, 1.0, 1.0, 1.0, 1, 1),
}


@pytest.mark.parametrize("case", list(METRICSRELOADED_CASES))
def test_metricsreloaded_own_test_cases(case: str) -> None:
    ref_boxes, pred_boxes, dsc, rve, ppv, sensitivity, f1, ref_count, pred_count = METRICSRELOADED_CASES[case]
    prediction, reference = _metricsreloaded_case(ref_boxes, pred_boxes)
    assert metrics.dice(prediction, reference) == pytest.approx(dsc)
    assert metrics.relative_volume_error(prediction, reference) == pytest.approx(rve)
    result = metrics.overlap_detection(prediction, reference)
    assert (result.reference_lesions, result.predicted_lesions) == (ref_count, pred_count)
    assert (result.ppv, result.sensitivity) == (pytest.approx(ppv), pytest.approx(sensitivity))
    assert result.f1 == pytest.approx(f1)


def test_metricsreloaded_ppv_counts_reference_lesions_found_against_unmatched_predictions(canvas) -> None:
    """PPV = TP / (TP + FP) with TP counted on the reference: two predicted pieces of one lesion and one false
    positive give 1 / 2, not 2 / 3."""
    reference, prediction = canvas.copy(), canvas.copy()
    box(reference, slice(2, 10), slice(2, 6), slice(2, 6))
    box(prediction, slice(2, 5), slice(2, 6), slice(2, 6))
    box(prediction, slice(7, 10), slice(2, 6), slice(2, 6))
    box(prediction, slice(15, 18), slice(15, 18), slice(15, 18))
    assert metrics.overlap_detection(prediction, reference).ppv == 0.5


def test_tiny_lesions_are_ignored_by_anima(canvas) -> None:
    reference, prediction = canvas.copy(), canvas.copy()
    box(reference, slice(2, 5), slice(2, 5), slice(2, 5))
    box(prediction, slice(2, 5), slice(2, 5), slice(2, 5))
    box(prediction, slice(12, 13), slice(12, 13), slice(12, 15))  # 3 voxels = 3 mm3: ignored (not > 3 mm3)
    anima = metrics.anima_detection(prediction, reference, (1, 1, 1))
    assert anima.predicted_lesions == 1 and anima.ppv == 1.0
    assert metrics.anima_detection(prediction, reference, (1, 1, 1), min_volume_mm3=2.0).predicted_lesions == 2


def test_no_lesions_anywhere(canvas) -> None:
    reloaded = metrics.overlap_detection(canvas, canvas)
    assert (reloaded.sensitivity, reloaded.ppv, reloaded.f1) == (1.0, 1.0, 1.0)
    anima = metrics.anima_detection(canvas, canvas, (1, 1, 1))
    assert np.isnan([anima.sensitivity, anima.ppv, anima.f1]).all()  # ANIMA divides 0 by 0
    reference = canvas.copy()
    box(reference, slice(2, 5), slice(2, 5), slice(2, 5))
    missed = metrics.overlap_detection(canvas, reference)
    assert (missed.sensitivity, missed.ppv, missed.f1) == (0.0, 0.0, 0.0)
    anima_missed = metrics.anima_detection(canvas, reference, (1, 1, 1))
    assert anima_missed.sensitivity == 0.0 and np.isnan(anima_missed.ppv) and np.isnan(anima_missed.f1)
    anima_false = metrics.anima_detection(reference, canvas, (1, 1, 1))
    assert anima_false.ppv == 0.0 and np.isnan(anima_false.sensitivity)


def test_compare_label_maps_reports_what_changed(canvas) -> None:
    before = np.zeros((20, 20, 20), np.uint8)
    before[2:10, 2:10, 2:10] = 1
    before[4:6, 4:6, 4:6] = 2
    after = before.copy()
    after[4:6, 4:6, 6:8] = 2  # lesion grown by 8 voxels inside the cord
    after[12:14, 12:14, 12:14] = 2  # a new lesion outside (8 voxels, also new cord region)
    result = metrics.compare_label_maps(before, after, (1, 1, 1))
    assert result["lesion_voxels_added"] == 16 and result["lesion_voxels_removed"] == 0
    assert result["cord_voxels_added"] == 8
    assert result["lesion_dice"] == pytest.approx(2 * 8 / (8 + 24))
    assert (result["lesions_a"], result["lesions_b"]) == (1, 2) and result["lesion_sensitivity"] == 0.5
