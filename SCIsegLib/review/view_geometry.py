"""What each slice view of ``sciseg review`` tells the rater, from matrices only: orientation letters, slice number,
the voxel under the pointer. Pure numpy (4x4 homogeneous matrices, RAS mm), so tests need no scene.

Conventions (Slicer's): a slice node's SliceToRAS maps the view's (x right, y up, normal) axes to RAS mm; a volume's
IJKToRAS maps voxel indices (i, j, k) = (x, y, z) of the image, i.e. array axes (z, y, x) reversed, to RAS mm.
"""

from __future__ import annotations

import numpy as np

_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))  # RAS axis: (positive end, negative end)


def direction_letter(vector: np.ndarray) -> str:
    """The patient direction a RAS vector points to most: R, L, A, P, S or I."""
    axis = int(np.argmax(np.abs(vector[:3])))
    return _LETTERS[axis][0 if vector[axis] > 0 else 1]


def orientation_letters(slice_to_ras: np.ndarray) -> dict[str, str]:
    """Letters at the view's edges ("left", "right", "top", "bottom") for a SliceToRAS matrix (4x4 or 3x3)."""
    x_axis, y_axis = np.asarray(slice_to_ras, float)[:3, 0], np.asarray(slice_to_ras, float)[:3, 1]
    return {"left": direction_letter(-x_axis), "right": direction_letter(x_axis),
            "top": direction_letter(y_axis), "bottom": direction_letter(-y_axis)}


def slice_position(slice_to_ras: np.ndarray, ijk_to_ras: np.ndarray, dimensions_ijk: tuple[int, int, int]) -> tuple[int, int, str]:
    """(index from 1, count, axis letter among i, j, k) of the volume's slice a view shows.

    The slice axis is the volume's voxel axis most parallel to the view's normal; the index is the voxel (rounded) of
    the view's plane origin along it, clipped to the volume (a plane outside it shows the nearest end)."""
    slice_to_ras, ijk_to_ras = np.asarray(slice_to_ras, float), np.asarray(ijk_to_ras, float)
    normal = slice_to_ras[:3, 2] / np.linalg.norm(slice_to_ras[:3, 2])
    columns = ijk_to_ras[:3, :3] / np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    axis = int(np.argmax(np.abs(normal @ columns)))
    ijk = np.linalg.solve(ijk_to_ras, np.append(slice_to_ras[:3, 3], 1.0))[:3]
    count = int(dimensions_ijk[axis])
    index = int(np.clip(np.rint(ijk[axis]), 0, count - 1))
    return index + 1, count, "ijk"[axis]


def voxel_at(ras: tuple[float, float, float], ijk_to_ras: np.ndarray, dimensions_ijk: tuple[int, int, int]) -> tuple[int, int, int] | None:
    """The voxel (i, j, k) holding a RAS point (mm), or None outside the volume."""
    ijk = np.linalg.solve(np.asarray(ijk_to_ras, float), np.append(np.asarray(ras, float), 1.0))[:3]
    voxel = tuple(int(v) for v in np.rint(ijk))
    if any(v < 0 or v >= n for v, n in zip(voxel, dimensions_ijk, strict=True)):
        return None
    return voxel
