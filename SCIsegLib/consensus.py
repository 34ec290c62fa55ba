"""Consensus of several raters' masks and the reproducibility of repeated segmentations.

Masks are numpy arrays on one grid; label maps use SCIseg's labels (0, 1 cord only, 2 lesion).
"""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

from .metrics import dice, surface_distances


def majority_vote(masks: list[np.ndarray], tie: str = "background") -> np.ndarray:
    """Voxels marked by more than half of the raters. A tie (even number of raters, exactly half) goes to
    the background with ``tie="background"`` (strict majority) or to the structure with ``tie="foreground"``."""
    if tie not in ("background", "foreground"):
        raise ValueError("tie must be 'background' or 'foreground'")
    votes = np.sum([np.asarray(m, bool) for m in masks], axis=0)
    half = len(masks) / 2
    return votes >= half if tie == "foreground" else votes > half


def majority_vote_labels(label_maps: list[np.ndarray], tie: str = "background") -> np.ndarray:
    """Per-region vote on SCIseg label maps: cord region = labels {1, 2}, lesion = {2}; lesion wins inside the cord."""
    cord = majority_vote([m > 0 for m in label_maps], tie)
    lesion = majority_vote([m == 2 for m in label_maps], tie)
    labels = cord.astype(np.uint8)
    labels[lesion] = 2
    return labels


def staple(masks: list[np.ndarray], threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK's STAPLE: the consensus (probability > ``threshold``) and the per-voxel probability."""
    images = [sitk.GetImageFromArray(np.asarray(m, np.uint8)) for m in masks]
    probability = sitk.GetArrayFromImage(sitk.STAPLE(images, 1.0))
    return probability > threshold, probability


def reproducibility(masks: list[np.ndarray], spacing_mm) -> dict[str, float]:
    """Scan-rescan or inter-rater reproducibility (the SCORE paper's measures).

    Coefficient of variation of the volumes (%, SD / mean with ddof=1), mean pairwise Dice and mean
    pairwise Hausdorff distance (mm).
    """
    volumes = np.array([np.count_nonzero(m) * float(np.prod(spacing_mm)) for m in masks])
    pairs = list(itertools.combinations(range(len(masks)), 2))
    dices = [dice(masks[i], masks[j]) for i, j in pairs]
    hausdorffs = [surface_distances(masks[i], masks[j], spacing_mm).hausdorff for i, j in pairs]
    mean_volume = float(volumes.mean())
    return {
        "volume_mean_mm3": mean_volume,
        "volume_cv_percent": float(100 * volumes.std(ddof=1) / mean_volume) if mean_volume > 0 and len(masks) > 1 else float("nan"),
        "pairwise_dice_mean": float(np.mean(dices)) if dices else float("nan"),
        "pairwise_hausdorff_mean_mm": float(np.nanmean(hausdorffs)) if hausdorffs else float("nan"),
    }


def relative_sd_percent(values) -> float:
    """Relative standard deviation (%): SD (ddof=1) / mean x 100, as SCORE reports scan-rescan reproducibility;
    NaN with fewer than two finite values or a zero mean."""
    finite = np.asarray([v for v in values if np.isfinite(v)], float)
    if finite.size < 2 or finite.mean() == 0:
        return float("nan")
    return float(100 * finite.std(ddof=1) / finite.mean())


def compartment_reproducibility(gm_images: list[sitk.Image], cord_images: list[sitk.Image]) -> dict:
    """SCORE's reproducibility of repeated GM segmentations of one subject (scans, rescans or raters).

    Per scan: the mean GM, WM (= cord - GM) and cord areas (mm2) over the slices holding GM, measured as
    :func:`SCIsegLib.compartments.compartment_areas` does (SCT's way, angles from the cord). Across scans: their
    relative SD (%). Pairwise Dice and Hausdorff distance (mm) of the GM and WM masks only for scans on one voxel
    grid (:func:`SCIsegLib.volume.grid_difference`); other pairs are listed with the difference.
    """
    from .compartments import compartment_areas, white_matter
    from .volume import grid_difference

    if len(gm_images) != len(cord_images):
        raise ValueError("one cord mask per grey-matter mask")
    per_scan = []
    for gm, cord in zip(gm_images, cord_images, strict=True):
        table = compartment_areas(gm, cord).dropna(subset=["gm_area_mm2"])
        per_scan.append({key: float(table[f"{key}_area_mm2"].mean()) for key in ("gm", "wm", "cord")})
    result: dict = {"scans": per_scan}
    for key in ("gm", "wm", "cord"):
        values = [scan[key] for scan in per_scan]
        result[f"{key}_area_mean_mm2"] = float(np.mean(values))
        result[f"{key}_area_rsd_percent"] = relative_sd_percent(values)
    pairs, skipped = [], []
    for i, j in itertools.combinations(range(len(gm_images)), 2):
        difference = grid_difference(gm_images[i], gm_images[j])
        if difference is not None:
            skipped.append({"pair": [i, j], "reason": f"not on one voxel grid ({difference})"})
            continue
        spacing_zyx = tuple(reversed(gm_images[i].GetSpacing()))
        entry: dict = {"pair": [i, j]}
        for key, a, b in (("gm", gm_images[i], gm_images[j]),
                          ("wm", white_matter(cord_images[i], gm_images[i]), white_matter(cord_images[j], gm_images[j]))):
            array_a, array_b = sitk.GetArrayViewFromImage(a) >= 0.5, sitk.GetArrayViewFromImage(b) >= 0.5
            entry[f"{key}_dice"] = dice(array_a, array_b)
            entry[f"{key}_hausdorff_mm"] = float(surface_distances(array_a, array_b, spacing_zyx).hausdorff)
        pairs.append(entry)
    result["pairs"], result["pairs_not_compared"] = pairs, skipped
    return result
