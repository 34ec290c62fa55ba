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
