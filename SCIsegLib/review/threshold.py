"""The review app's "Apply threshold", limited to where a lesion can be and asked for before a large change.

Slicer's Threshold effect sets the segment to every voxel of the intensity range in the whole volume: on a full
field-of-view T2w scan a lesion range also holds CSF, fat and vertebrae (measured: 30 -> 32,689 lesion voxels in
697 pieces). Here the range only adds lesion voxels inside a region: the cord (cord only + lesion, labels > 0),
optionally only on the slice in view. It never removes voxels (the rater's strokes stay). When the voxels it would
add exceed :data:`CONFIRM_ABOVE_MM3` (a few lesions' worth) the app asks first.

Arrays are (z, y, x) on the image grid; volumes in mm3; intensities in the image's units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONFIRM_ABOVE_MM3 = 1000.0  # a few lesions' worth: SCI lesions on T2w are mostly tens to a few hundred mm3
REGIONS = {"cord": "inside the cord", "slice": "inside the cord, slice in view only"}


@dataclass(frozen=True)
class ThresholdPlan:
    """The voxels a threshold would add (``added``, (z, y, x) bool) and what the rater is told about them."""

    added: np.ndarray
    voxel_mm3: float

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.added))

    @property
    def volume_mm3(self) -> float:
        return self.voxels * self.voxel_mm3

    @property
    def needs_confirmation(self) -> bool:
        return self.volume_mm3 > CONFIRM_ABOVE_MM3

    def question(self) -> str:
        return (f"The threshold would add {self.voxels} voxels ({self.volume_mm3:.0f} mm3) to the lesion, more than "
                f"{CONFIRM_ABOVE_MM3:.0f} mm3. Apply it anyway?")


def region_mask(labels: np.ndarray, region: str, slice_axis: int | None = None, slice_index: int | None = None) -> np.ndarray:
    """Where a threshold may add lesion: the cord (labels > 0), and with ``region`` "slice" only index ``slice_index``
    along array axis ``slice_axis`` (0 z, 1 y, 2 x)."""
    if region not in REGIONS:
        raise ValueError(f"unknown threshold region {region!r}: one of {', '.join(REGIONS)}")
    inside = labels > 0
    if region == "slice":
        if slice_axis is None or slice_index is None or not 0 <= slice_index < labels.shape[slice_axis]:
            return np.zeros_like(inside)
        keep = np.zeros(labels.shape[slice_axis], bool)
        keep[slice_index] = True
        shape = [1, 1, 1]
        shape[slice_axis] = -1
        inside &= keep.reshape(shape)
    return inside


def plan_threshold(image: np.ndarray, labels: np.ndarray, low: float, high: float, region: np.ndarray,
                   voxel_mm3: float) -> ThresholdPlan:
    """The lesion voxels a threshold [low, high] (inclusive, image units) adds inside ``region`` (not lesion yet)."""
    if image.shape != labels.shape or region.shape != labels.shape:
        raise ValueError(f"image {image.shape}, labels {labels.shape} and region {region.shape} differ")
    added = region & (image >= low) & (image <= high) & (labels != 2)
    return ThresholdPlan(added, float(voxel_mm3))


def slice_index_of(ras_to_ijk: np.ndarray, centre_ras: np.ndarray, normal_ras: np.ndarray) -> tuple[int, int]:
    """(array axis, index) of the image slice a view shows: its centre point (RAS mm) mapped to voxel indices, on
    the array axis (0 z, 1 y, 2 x) its normal is most along. ``ras_to_ijk``: the 4x4 RAS -> (i, j, k) matrix."""
    ijk = ras_to_ijk @ np.append(np.asarray(centre_ras, float), 1.0)
    direction = ras_to_ijk[:3, :3] @ np.asarray(normal_ras, float)
    axis_ijk = int(np.argmax(np.abs(direction)))  # i = x, j = y, k = z
    return 2 - axis_ijk, int(round(float(ijk[axis_ijk])))
