"""Optional clean-ups of binary masks, off by default as in SCT's ``sct_deepseg``.

Masks are numpy arrays indexed (z, y, x); sizes are given in mm3 with the voxel spacing in mm.
Connected components use 6-connectivity (face neighbours), as SCT's ``keep_largest_object``
and ``remove_small_objects`` do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class PostprocessSettings:
    """Which clean-ups to apply (all off by default).

    Attributes:
        keep_largest_cord: keep only the largest connected component of the cord mask.
        fill_holes: fill holes (3D, 26-connected background) in the cord and lesion masks.
        lesion_inside_cord: drop lesion voxels outside the cord mask.
        min_object_mm3: remove connected components smaller than this volume (mm3) from both masks.
    """

    keep_largest_cord: bool = False
    fill_holes: bool = False
    lesion_inside_cord: bool = False
    min_object_mm3: float | None = None

    def as_dict(self) -> dict:
        return {
            "keep_largest_cord": self.keep_largest_cord,
            "fill_holes": self.fill_holes,
            "lesion_inside_cord": self.lesion_inside_cord,
            "min_object_mm3": self.min_object_mm3,
        }

    @property
    def any(self) -> bool:
        return self.keep_largest_cord or self.fill_holes or self.lesion_inside_cord or bool(self.min_object_mm3)


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a binary mask (an empty mask stays empty)."""
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill cavities that the background cannot reach (26-connected structuring element)."""
    return ndimage.binary_fill_holes(mask, structure=np.ones((3, 3, 3), dtype=bool))


def remove_small_objects(mask: np.ndarray, spacing_zyx_mm: tuple[float, float, float], min_volume_mm3: float) -> np.ndarray:
    """Remove 6-connected components whose volume is below ``min_volume_mm3``."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask.astype(bool)
    voxel_mm3 = float(np.prod(spacing_zyx_mm))
    volumes = np.bincount(labels.ravel()) * voxel_mm3
    keep = volumes >= min_volume_mm3
    keep[0] = False
    return keep[labels]


def clean_masks(
    cord: np.ndarray, lesion: np.ndarray, spacing_zyx_mm: tuple[float, float, float], settings: PostprocessSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the selected clean-ups; returns new (cord, lesion) boolean arrays."""
    cord, lesion = cord.astype(bool), lesion.astype(bool)
    if settings.min_object_mm3:
        cord = remove_small_objects(cord, spacing_zyx_mm, settings.min_object_mm3)
        lesion = remove_small_objects(lesion, spacing_zyx_mm, settings.min_object_mm3)
    if settings.keep_largest_cord:
        cord = keep_largest_component(cord)
    if settings.fill_holes:
        cord = fill_holes(cord)
        lesion = fill_holes(lesion)
    if settings.lesion_inside_cord:
        lesion = lesion & cord
    return cord, lesion
