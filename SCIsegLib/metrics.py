"""Segmentation metrics in physical units, and lesion-wise detection (ANIMA's and MetricsReloaded's rules).

Masks are numpy arrays on the same grid (any axis order) with the voxel spacing (mm) in the same
axis order. Empty-mask conventions, and the tool each follows (docs/measurements.md has the table):

* Dice: 1 when both are empty, 0 when one is (MetricsReloaded, NeuroPoly's fork used for SCIsegV2).
* relative volume error: 0 % when both are empty, +100 % when only the reference is (MetricsReloaded fork).
* surface distances: 0 mm when both are empty, NaN when one is (undefined; ANIMA writes nothing there).
* normalised surface Dice (DeepMind ``surface-distance``): 1 when both are empty, NaN when one is.
* lesion-wise, MetricsReloaded's rule: see :func:`overlap_detection`; ANIMA's rule: see :func:`anima_detection`.

Surface distances follow ANIMA (``animaSegPerfAnalyzer``): contours are the mask voxels with a
background face-neighbour (6-connectivity), and distances are Euclidean in mm between contour voxel
centres. The surfel-based variants of DeepMind's ``surface-distance`` package are offered too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice coefficient 2|A and B| / (|A| + |B|); 1.0 when both masks are empty."""
    a, b = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def relative_volume_error(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Signed relative volume error in %: 100 (|A| - |B|) / |B|; 0 when both are empty and +100 when only the
    reference B is (MetricsReloaded fork's ``rel_vol_error``: an over-segmentation of nothing)."""
    a, b = int(np.count_nonzero(prediction)), int(np.count_nonzero(reference))
    if b == 0:
        return 0.0 if a == 0 else 100.0
    return 100.0 * (a - b) / b


def contour(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one background face-neighbour (ANIMA's BinaryContourImageFilter, not fully connected)."""
    mask = np.asarray(mask, dtype=bool)
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def contour_distances(a: np.ndarray, b: np.ndarray, spacing_mm) -> tuple[np.ndarray, np.ndarray]:
    """(distances from each contour voxel of A to B's contour, and from B's to A's), in mm."""
    contour_a, contour_b = contour(a), contour(b)
    to_b = ndimage.distance_transform_edt(~contour_b, sampling=spacing_mm)
    to_a = ndimage.distance_transform_edt(~contour_a, sampling=spacing_mm)
    return to_b[contour_a], to_a[contour_b]


@dataclass(frozen=True)
class SurfaceDistances:
    """Symmetric surface distances between two masks, in mm."""

    average: float  # ANIMA's mean: all nearest distances of both contours pooled
    hausdorff: float  # maximum of both directed maxima
    hausdorff95: float  # maximum of both directed 95th percentiles


def surface_distances(prediction: np.ndarray, reference: np.ndarray, spacing_mm) -> SurfaceDistances:
    """Average surface distance, Hausdorff distance and its 95th percentile (mm), contour-voxel based."""
    a_empty, b_empty = not np.any(prediction), not np.any(reference)
    if a_empty and b_empty:
        return SurfaceDistances(0.0, 0.0, 0.0)
    if a_empty or b_empty:
        return SurfaceDistances(float("nan"), float("nan"), float("nan"))
    forward, backward = contour_distances(prediction, reference, spacing_mm)
    pooled = np.concatenate([forward, backward])
    return SurfaceDistances(
        average=float(pooled.mean()),
        hausdorff=float(max(forward.max(), backward.max())),
        hausdorff95=float(max(np.percentile(forward, 95), np.percentile(backward, 95))),
    )


def surfel_metrics(prediction: np.ndarray, reference: np.ndarray, spacing_mm, tolerance_mm: float = 1.0) -> dict[str, float]:
    """DeepMind ``surface-distance``'s surfel-based metrics: robust Hausdorff (95 %), average distances, surface Dice."""
    import surface_distance

    a, b = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    if not a.any() and not b.any():
        return {"surfel_hausdorff95": 0.0, "surfel_average_ref_to_pred": 0.0, "surfel_average_pred_to_ref": 0.0,
                "normalized_surface_dice": 1.0}
    if not a.any() or not b.any():
        nan = float("nan")
        return {"surfel_hausdorff95": nan, "surfel_average_ref_to_pred": nan, "surfel_average_pred_to_ref": nan,
                "normalized_surface_dice": nan}
    distances = surface_distance.compute_surface_distances(b, a, [float(s) for s in spacing_mm])
    average_ref_to_pred, average_pred_to_ref = surface_distance.compute_average_surface_distance(distances)
    return {
        "surfel_hausdorff95": float(surface_distance.compute_robust_hausdorff(distances, 95)),
        "surfel_average_ref_to_pred": float(average_ref_to_pred),
        "surfel_average_pred_to_ref": float(average_pred_to_ref),
        "normalized_surface_dice": float(surface_distance.compute_surface_dice_at_tolerance(distances, tolerance_mm)),
    }


def voxel_metrics(prediction: np.ndarray, reference: np.ndarray, spacing_mm, tolerance_mm: float = 1.0) -> dict[str, float]:
    """Every voxel-level metric of one structure (the columns of ``sciseg evaluate``)."""
    distances = surface_distances(prediction, reference, spacing_mm)
    return {
        "dice": dice(prediction, reference),
        "relative_volume_error_percent": relative_volume_error(prediction, reference),
        "average_surface_distance_mm": distances.average,
        "hausdorff_mm": distances.hausdorff,
        "hausdorff95_mm": distances.hausdorff95,
        **surfel_metrics(prediction, reference, spacing_mm, tolerance_mm),
        "volume_pred_mm3": float(np.count_nonzero(prediction) * np.prod(spacing_mm)),
        "volume_ref_mm3": float(np.count_nonzero(reference) * np.prod(spacing_mm)),
    }


@dataclass(frozen=True)
class LesionDetection:
    """Lesion-wise detection counts and scores."""

    reference_lesions: int
    predicted_lesions: int
    detected_reference: int  # true positives counted on the reference lesions
    correct_predicted: int  # predicted lesions that count as detections
    sensitivity: float
    ppv: float
    f1: float


def _anima_scores(reference_count: int, predicted_count: int, detected: int, correct: int) -> LesionDetection:
    """ANIMA's ``getDetectionMarks``: PPV = correct / predicted, sensitivity = detected / reference,
    F1 = 2 PPV sens / (PPV + sens), each NaN where ANIMA divides 0 by 0 (no lesion on that side)."""
    nan = float("nan")
    sensitivity = detected / reference_count if reference_count else nan
    ppv = correct / predicted_count if predicted_count else nan
    f1 = 2 * sensitivity * ppv / (sensitivity + ppv) if (sensitivity + ppv) > 0 else nan
    return LesionDetection(reference_count, predicted_count, detected, correct, float(sensitivity), float(ppv), float(f1))


def _components(mask: np.ndarray, connectivity: int, min_voxels: int = 1) -> tuple[np.ndarray, int]:
    """Connected components (1 = faces, 2 = edges, 3 = corners) with those below ``min_voxels`` removed, relabelled 1..n."""
    labels, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, connectivity))
    if count == 0:
        return labels, 0
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_voxels
    keep[0] = False
    new_ids = np.zeros(count + 1, dtype=labels.dtype)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
    return new_ids[labels], int(keep.sum())


def _anima_true_positives(table: np.ndarray, alpha: float, beta: float, gamma: float) -> int:
    """ANIMA's ``getTruePositiveLesions`` on an overlap table [reference label][test label] (label 0 = background)."""
    detected = 0
    column_sums = table.sum(axis=0)
    for i in range(1, table.shape[0]):
        true_positive = table[i, 1:].sum()
        false_negative = table[i, 0]
        if true_positive + false_negative == 0 or true_positive / (true_positive + false_negative) <= alpha:
            continue
        order = sorted(range(1, table.shape[1]), key=lambda j: table[i, j], reverse=True)  # stable, as std::sort on ties is not
        weight, k, exited = 0.0, 0, False
        while weight < gamma and k < min(table.shape[0], len(order)) and not exited:
            j = order[k]
            exited = table[0, j] / column_sums[j] > beta  # share of the test lesion outside any reference lesion
            if not exited:
                weight += table[i, j] / true_positive
            k += 1
        detected += not exited
    return detected


def anima_detection(
    prediction: np.ndarray, reference: np.ndarray, spacing_mm, *, alpha: float = 0.10, beta: float = 0.70,
    gamma: float = 0.65, min_volume_mm3: float = 3.0,
) -> LesionDetection:
    """ANIMA's ``animaSegPerfAnalyzer`` lesion detection (Commowick et al. 2018), as cited by the SCIseg paper.

    Lesions are 6-connected components; those of ``min_volume_mm3`` or less are ignored in both masks.
    A reference lesion is detected when more than ``alpha`` of it is covered by predicted lesions and,
    going through the overlapping predicted lesions by decreasing overlap until they account for
    ``gamma`` of the covered part, none lies more than ``beta`` outside every reference lesion. The
    same test with the roles swapped counts the correct predicted lesions (PPV). Without a lesion on a side,
    ANIMA divides 0 by 0: that side's score and the F1 are NaN (:func:`_anima_scores`).
    """
    voxel_mm3 = float(np.prod(spacing_mm))
    min_voxels = int(np.floor(min_volume_mm3 / voxel_mm3)) + 1  # strictly larger than min_volume_mm3
    reference_labels, n_reference = _components(np.asarray(reference, bool), 1, min_voxels)
    predicted_labels, n_predicted = _components(np.asarray(prediction, bool), 1, min_voxels)
    table = np.zeros((n_reference + 1, n_predicted + 1), dtype=np.int64)
    np.add.at(table, (reference_labels.ravel(), predicted_labels.ravel()), 1)
    detected = _anima_true_positives(table, alpha, beta, gamma) if n_reference and n_predicted else 0
    correct = _anima_true_positives(table.T, alpha, beta, gamma) if n_reference and n_predicted else 0
    return _anima_scores(n_reference, n_predicted, detected, correct)


def overlap_detection(prediction: np.ndarray, reference: np.ndarray, *, overlap_ratio: float = 0.10) -> LesionDetection:
    """MetricsReloaded's lesion-wise rule as NeuroPoly's fork computes it for SCIsegV2 (``lesion_wise_tp_fp_fn``,
    ``lesion_sensitivity``, ``lesion_ppv``, ``lesion_f1_score`` of github.com/ivadomed/MetricsReloaded).

    Lesions are the components of ``scipy.ndimage.label`` with its default structure: face-connected
    (6-connectivity in 3D), so two lesions touching only by an edge or a corner are two lesions.
    TP: a reference lesion with at least ``overlap_ratio`` of its voxels predicted; FN: the other reference lesions;
    FP: a predicted lesion touching no reference voxel. Sensitivity TP / (TP + FN), PPV TP / (TP + FP),
    F1 TP / (TP + (FP + FN) / 2); a zero denominator gives 1. Empty masks: both empty 1, 1, 1; empty prediction
    0, 0, 0; empty reference: sensitivity 1, PPV 0, F1 0.
    """
    reference = np.asarray(reference, bool)
    prediction = np.asarray(prediction, bool)
    reference_labels, n_reference = ndimage.label(reference)
    predicted_labels, n_predicted = ndimage.label(prediction)
    overlap = np.bincount(reference_labels[prediction], minlength=n_reference + 1)
    sizes = np.bincount(reference_labels.ravel(), minlength=n_reference + 1)
    tp = int(sum(overlap[i] / sizes[i] >= overlap_ratio for i in range(1, n_reference + 1)))
    fn = n_reference - tp
    touching = set(np.unique(predicted_labels[reference & prediction]).tolist()) - {0}
    fp = n_predicted - len(touching)
    sensitivity = tp / (tp + fn) if tp + fn else 1.0
    if n_reference == 0 and n_predicted == 0:
        ppv = f1 = 1.0
    elif n_reference == 0 or n_predicted == 0:
        ppv = f1 = 0.0
    else:
        ppv = tp / (tp + fp) if tp + fp else 1.0
        f1 = tp / (tp + (fp + fn) / 2) if tp + fp + fn else 1.0
    return LesionDetection(n_reference, n_predicted, tp, len(touching), float(sensitivity), float(ppv), float(f1))


def compare_label_maps(a: np.ndarray, b: np.ndarray, spacing_mm) -> dict[str, float]:
    """How much two SCIseg label maps (0, 1 cord only, 2 lesion) differ: what a rater changed.

    Returns the Dice of the cord region (labels {1, 2}) and of the lesion, voxels added and removed
    for each, and the lesion-wise F1 and sensitivity (MetricsReloaded's rule) of ``a`` against ``b``.
    """
    result: dict[str, float] = {}
    for name, region_a, region_b in (("cord", a > 0, b > 0), ("lesion", a == 2, b == 2)):
        result[f"{name}_dice"] = dice(region_a, region_b)
        result[f"{name}_voxels_added"] = int(np.count_nonzero(region_b & ~region_a))
        result[f"{name}_voxels_removed"] = int(np.count_nonzero(region_a & ~region_b))
    detection = overlap_detection(a == 2, b == 2)
    result["lesion_f1"] = detection.f1
    result["lesion_sensitivity"] = detection.sensitivity
    result["lesions_a"], result["lesions_b"] = detection.predicted_lesions, detection.reference_lesions
    return result
