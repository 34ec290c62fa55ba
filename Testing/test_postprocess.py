"""Clean-ups on hand-built masks with known answers."""

from __future__ import annotations

import numpy as np

from SCIsegLib.postprocess import (
    PostprocessSettings,
    clean_masks,
    fill_holes,
    keep_largest_component,
    remove_small_objects,
)


def _blocks() -> np.ndarray:
    mask = np.zeros((10, 12, 14), bool)
    mask[1:6, 1:6, 1:6] = True  # 125 voxels
    mask[7:9, 8:10, 10:12] = True  # 8 voxels
    return mask


def test_keep_largest_component() -> None:
    kept = keep_largest_component(_blocks())
    assert kept.sum() == 125 and not kept[7, 8, 10]
    assert keep_largest_component(np.zeros((3, 3, 3), bool)).sum() == 0


def test_diagonal_neighbours_are_separate_components_as_in_sct() -> None:
    mask = np.zeros((3, 3, 3), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[1, 1, 2] = True
    assert keep_largest_component(mask).sum() == 2


def test_fill_holes() -> None:
    mask = np.zeros((7, 7, 7), bool)
    mask[1:6, 1:6, 1:6] = True
    mask[3, 3, 3] = False
    assert fill_holes(mask)[3, 3, 3]
    open_mask = mask.copy()
    open_mask[3, 3, 1:4] = False  # tunnel to the outside: not a hole
    assert not fill_holes(open_mask)[3, 3, 3]


def test_remove_small_objects_in_mm3() -> None:
    spacing = (2.0, 1.0, 0.5)  # 1 mm3 per voxel
    cleaned = remove_small_objects(_blocks(), spacing, min_volume_mm3=9.0)
    assert cleaned.sum() == 125
    assert remove_small_objects(_blocks(), spacing, min_volume_mm3=8.0).sum() == 133
    assert remove_small_objects(_blocks(), (2.0, 2.0, 2.0), min_volume_mm3=64.0).sum() == 133  # 8 voxels = 64 mm3


def test_clean_masks_lesion_inside_cord_and_defaults_do_nothing() -> None:
    cord = _blocks()
    lesion = np.zeros_like(cord)
    lesion[2:4, 2:4, 2:4] = True
    lesion[0, 0, 0] = True  # outside the cord
    same_cord, same_lesion = clean_masks(cord, lesion, (1.0, 1.0, 1.0), PostprocessSettings())
    assert np.array_equal(same_cord, cord) and np.array_equal(same_lesion, lesion)
    new_cord, new_lesion = clean_masks(
        cord, lesion, (1.0, 1.0, 1.0), PostprocessSettings(keep_largest_cord=True, lesion_inside_cord=True)
    )
    assert new_cord.sum() == 125 and new_lesion.sum() == 8 and not new_lesion[0, 0, 0]
