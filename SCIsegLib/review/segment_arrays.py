"""The open case's segments as (z, y, x) numpy arrays, read straight from the segmentation's binary labelmaps.

Slicer's export (:func:`SCIsegLib.mrml.export_sciseg_label_map`: a temporary label map node per segment, resampled
onto the volume's grid) took 0.02-0.09 s per segment on a full field-of-view scan (384 x 216 x 52 voxels), and the
review app read three segments after every stroke. In the scene, each segment lives in a binary labelmap layer (a
``vtkOrientedImageData`` that segments which do not overlap share, each segment's voxels holding its label value).
When that layer lies on the volume's grid (the same IJK-to-RAS matrix; its extent may be smaller or larger than the
volume's: the part inside the volume is the segment) and neither node is transformed, its voxels are the export's:
they are read here with numpy, in a few milliseconds. Otherwise the functions answer None and the caller uses
Slicer's export. ``Testing/test_review_counts.py`` compares both after random strokes, undos and redos.

Call them on the thread that owns the scene (the app's event loop): VTK arrays are not locked.
"""

from __future__ import annotations

import numpy as np
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from .. import mrml

BINARY_LABELMAP = "Binary labelmap"  # Slicer's vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
MATRIX_TOLERANCE = 1e-6  # mm: a layer's IJK-to-RAS must equal the volume's to be read without resampling


def _matrix(getter) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    getter(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def segment_array_zyx(segmentation_node, segment_id: str, volume_node) -> np.ndarray | None:
    """Segment ``segment_id`` as a (z, y, x) bool array on ``volume_node``'s grid, read from its binary labelmap layer;
    None when it cannot be read so (no such segment, another source representation, another grid, a transform)."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    image = volume_node.GetImageData()
    if segment is None or image is None or segmentation_node.GetParentTransformNode() is not None \
            or volume_node.GetParentTransformNode() is not None:
        return None
    layer = segment.GetRepresentation(BINARY_LABELMAP)
    if layer is None or layer.GetPointData() is None:
        return None
    if not np.allclose(_matrix(layer.GetImageToWorldMatrix), _matrix(volume_node.GetIJKToRASMatrix),
                       atol=MATRIX_TOLERANCE, rtol=0):
        return None
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    mask = np.zeros((z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1), dtype=bool)
    lx0, lx1, ly0, ly1, lz0, lz1 = layer.GetExtent()
    if lx1 < lx0 or ly1 < ly0 or lz1 < lz0:
        return mask  # an empty layer
    scalars = layer.GetPointData().GetScalars()
    if scalars is None or scalars.GetNumberOfComponents() != 1:
        return None
    voxels = vtk_to_numpy(scalars).reshape(lz1 - lz0 + 1, ly1 - ly0 + 1, lx1 - lx0 + 1)  # a view: nothing copied
    low = (max(z0, lz0), max(y0, ly0), max(x0, lx0))
    high = (min(z1, lz1), min(y1, ly1), min(x1, lx1))
    if any(h < lo for lo, h in zip(low, high, strict=True)):
        return mask  # the layer lies outside the volume
    inside = tuple(slice(lo - origin, h - origin + 1) for lo, h, origin in zip(low, high, (z0, y0, x0), strict=True))
    in_layer = tuple(slice(lo - origin, h - origin + 1) for lo, h, origin in zip(low, high, (lz0, ly0, lx0), strict=True))
    mask[inside] = voxels[in_layer] == segment.GetLabelValue()
    return mask


def sciseg_labels_zyx(segmentation_node, volume_node) -> np.ndarray | None:
    """The segments as :func:`SCIsegLib.mrml.export_sciseg_label_map` writes them, a (z, y, x) uint8 array: 0 background,
    1 cord only (grey matter included), 2 lesion (lesion wins); None when a segment cannot be read directly.

    The segments are found as the export finds them (:func:`SCIsegLib.mrml.resolve_sciseg_segments`, which raises
    when the cord or lesion cannot be told)."""
    resolved = mrml.resolve_sciseg_segments(segmentation_node)
    cord = resolved[mrml.CORD.segment_id]
    grey_matter = mrml.grey_matter_segment(segmentation_node) if cord is not None else None
    image = volume_node.GetImageData()
    if image is None:
        return None
    x0, x1, y0, y1, z0, z1 = image.GetExtent()
    labels = np.zeros((z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    for segment_id, value in ((grey_matter, mrml.CORD.label_value), (cord, mrml.CORD.label_value),
                              (resolved[mrml.LESION.segment_id], mrml.LESION.label_value)):
        if segment_id is None:
            continue
        mask = segment_array_zyx(segmentation_node, segment_id, volume_node)
        if mask is None:
            return None
        labels[mask] = value
    return labels
