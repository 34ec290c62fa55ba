"""The review views' decisions without a browser: orientation letters, slice numbers, the voxel under the pointer,
and each segment's overlay settings on a real segmentation display node (slicer-core)."""

from __future__ import annotations

import numpy as np
import pytest

from SCIsegLib.review.overlay import DEFAULTS, SegmentOverlay, apply_overlay, default_state
from SCIsegLib.review.view_geometry import orientation_letters, slice_position, voxel_at

# Slicer's default SliceToRAS orientations (vtkMRMLSliceNode): columns are the view's x (right), y (up), normal.
AXIAL = np.array([[-1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
SAGITTAL = np.array([[0, 0, 1], [-1, 0, 0], [0, 1, 0]], float)
CORONAL = np.array([[-1, 0, 0], [0, 0, 1], [0, 1, 0]], float)


def _slice_to_ras(rotation: np.ndarray, origin: tuple[float, float, float]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = rotation, origin
    return matrix


def test_orientation_letters_are_slicers() -> None:
    assert orientation_letters(AXIAL) == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert orientation_letters(SAGITTAL) == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    assert orientation_letters(CORONAL) == {"left": "R", "right": "L", "top": "S", "bottom": "I"}


def test_slice_position_counts_voxels_along_the_views_normal_from_one() -> None:
    """A 1 mm LPS-stored scan (i: R->L, j: A->P, k: I->S) with its origin at RAS (10, 20, -30)."""
    ijk_to_ras = np.array([[-1, 0, 0, 10], [0, -1, 0, 20], [0, 0, 1, -30], [0, 0, 0, 1]], float)
    dimensions = (60, 55, 52)
    assert slice_position(_slice_to_ras(AXIAL, (0, 0, -30 + 26)), ijk_to_ras, dimensions) == (27, 52, "k")
    assert slice_position(_slice_to_ras(SAGITTAL, (10 - 4, 0, 0)), ijk_to_ras, dimensions) == (5, 60, "i")
    assert slice_position(_slice_to_ras(CORONAL, (0, 20 - 54, 0)), ijk_to_ras, dimensions) == (55, 55, "j")
    assert slice_position(_slice_to_ras(AXIAL, (0, 0, 500)), ijk_to_ras, dimensions) == (52, 52, "k")  # clipped


def test_voxel_at_inside_and_outside() -> None:
    ijk_to_ras = np.diag([0.5, 0.5, 2.0, 1.0])
    assert voxel_at((1.0, 1.4, 4.1), ijk_to_ras, (10, 10, 5)) == (2, 3, 2)
    assert voxel_at((-1.0, 0.0, 0.0), ijk_to_ras, (10, 10, 5)) is None
    assert voxel_at((0.0, 0.0, 10.0), ijk_to_ras, (10, 10, 5)) is None


def test_overlay_from_the_browser_is_clipped_and_typed() -> None:
    assert SegmentOverlay.from_state({"visible": 0, "fill": "7", "outline": 1}) == SegmentOverlay(False, 1.0, True)
    assert SegmentOverlay.from_state({"fill": "not a number"}) == SegmentOverlay(True, 0.5, True)
    assert SegmentOverlay.from_state({"fill": -3}).fill == 0.0
    assert default_state()["spinal_cord"] == {"visible": True, "fill": 0.0, "outline": True}  # cord: outline only


def test_apply_overlay_sets_the_display_nodes_segment_properties() -> None:
    pytest.importorskip("slicer")
    from slicer import vtkMRMLScene, vtkMRMLSegmentationNode

    scene = vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert isinstance(node, vtkMRMLSegmentationNode)
    node.CreateDefaultDisplayNodes()
    for segment in ("spinal_cord", "lesion"):
        node.GetSegmentation().AddEmptySegment(segment, segment, [1.0, 0.0, 0.0])
    display = node.GetDisplayNode()
    apply_overlay(display, "spinal_cord", DEFAULTS["spinal_cord"])
    apply_overlay(display, "lesion", SegmentOverlay(visible=False, fill=0.3, outline=False))
    assert (display.GetOpacity2DFill(), display.GetOpacity2DOutline()) == (1.0, 1.0)
    assert display.GetSegmentOpacity2DFill("spinal_cord") == 0.0 and display.GetSegmentOpacity2DOutline("spinal_cord") == 1.0
    assert display.GetSegmentVisibility("spinal_cord") and not display.GetSegmentVisibility("lesion")
    assert display.GetSegmentOpacity2DFill("lesion") == pytest.approx(0.3) and display.GetSegmentOpacity2DOutline("lesion") == 0.0
