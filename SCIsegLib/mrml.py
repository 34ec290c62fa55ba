"""The one bridge between SCIseg and Slicer's MRML scene. Imports ``slicer`` MRML/logic classes and ``vtk``, never Qt.

Every function takes the scene (and the Segmentations module logic where needed) as arguments, so it
runs the same inside Slicer (``slicer.mrmlScene``, ``slicer.modules.segmentations.logic()``) and in
tests with the Qt-free ``slicer-core`` wheel (a ``vtkMRMLScene`` and a ``vtkSlicerSegmentationsModuleLogic``
with ``SetMRMLScene(scene)``).

Geometry: a volume node stores IJK-to-RAS; SimpleITK stores origin/direction in LPS. Conversion flips
the first two physical axes. Arrays are indexed (z, y, x) = (k, j, i) on both sides.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from .compartments_segments import GREY_MATTER as _GREY_MATTER_OFFER
from .panel import TERMINOLOGY_FILE  # noqa: F401 - re-exported: the file this bridge's terminology strings come from
from .volume import image_from_array_zyx, on_grid_of, write_image_atomic

_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])
TERMINOLOGY_CONTEXT = "SCIseg"
#: Largest difference (mm, and unitless for direction cosines) between two grids that are the same grid.
GRID_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SegmentSpec:
    """A segment SCIseg creates: fixed id, display name, colour (0-1 RGB), terminology entry string."""

    segment_id: str
    name: str
    color: tuple[float, float, float]
    terminology: str
    label_value: int  # value in the exported label map (nnU-Net region convention)


CORD = SegmentSpec(
    segment_id="spinal_cord",
    name="Spinal cord",
    color=(1.0, 244 / 255, 209 / 255),
    terminology="SCIseg~SCT^123037004^Anatomical Structure~SCT^2748008^Spinal cord~^^~~^^~^^",
    label_value=1,
)
LESION = SegmentSpec(
    segment_id="lesion",
    name="Lesion",
    color=(220 / 255, 55 / 255, 40 / 255),
    terminology=(
        "SCIseg~SCT^49755003^Morphologically Altered Structure~SCT^52988006^Lesion~^^"
        "~Anatomic codes - DICOM master list~SCT^2748008^Spinal cord~^^"
    ),
    label_value=2,
)
#: Export order: later wins where segments overlap, so lesion voxels get 2 and cord-only voxels 1.
SCISEG_SEGMENTS = (CORD, LESION)
#: The grey-matter segment (SNOMED 12958003, :data:`SCIsegLib.compartments_segments.GREY_MATTER`). It lies inside the
#: cord and overlaps the cord segment; it is exported on its own (``_label-GM_seg``), never as a label of the 0/1/2 map.
#: Imported into a segmentation that has the cord, it gets a labelmap of its own and the cord keeps its voxels
#: (``ImportLabelmapToSegmentationNode`` clears only the named segment and gives it the imported image:
#: Slicer 5.10 ``vtkSlicerSegmentationsModuleLogic.cxx`` l. 1803-1808).
GREY_MATTER = SegmentSpec(_GREY_MATTER_OFFER.segment_id, _GREY_MATTER_OFFER.name, _GREY_MATTER_OFFER.color,
                          _GREY_MATTER_OFFER.terminology, label_value=1)


def ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    """4x4 IJK-to-RAS matrix (mm) of a SimpleITK image."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = _RAS_FROM_LPS @ direction @ np.diag(image.GetSpacing())
    matrix[:3, 3] = _RAS_FROM_LPS @ np.array(image.GetOrigin())
    return matrix


def _vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for column in range(4):
            matrix.SetElement(row, column, float(array[row, column]))
    return matrix


def _numpy_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def image_from_volume_node(node) -> sitk.Image:
    """A SimpleITK image with the voxels and exact geometry of a scalar volume node (parent transforms ignored)."""
    image_data = node.GetImageData()
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise ValueError(f"volume node '{node.GetName()}' has no voxels")
    dimensions = image_data.GetDimensions()
    array = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars())
    array = array.reshape(dimensions[2], dimensions[1], dimensions[0]).copy()
    return _with_geometry_of(sitk.GetImageFromArray(array), node)


def grid_of_volume_node(node) -> sitk.Image:
    """An all-zero uint8 image on a volume node's grid (size, spacing, origin, direction; parent transforms ignored):
    its geometry without copying its voxels (a full field-of-view scan's copy took 20-40 ms on every measurement)."""
    image_data = node.GetImageData()
    if image_data is None:
        raise ValueError(f"volume node '{node.GetName()}' has no voxels")
    return _with_geometry_of(sitk.Image([int(v) for v in image_data.GetDimensions()], sitk.sitkUInt8), node)


def _with_geometry_of(image: sitk.Image, node) -> sitk.Image:
    """``image`` (the node's size, x, y, z) given the node's spacing (mm), origin and direction in LPS, as ITK has them."""
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = _numpy_matrix(ijk_to_ras)
    spacing = np.array(node.GetSpacing())
    direction_lps = _RAS_FROM_LPS @ matrix[:3, :3] @ np.diag(1.0 / spacing)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in direction_lps.ravel()])
    image.SetOrigin([float(v) for v in _RAS_FROM_LPS @ matrix[:3, 3]])
    return image


def update_volume_node_from_image(node, image: sitk.Image) -> None:
    """Put the voxels and geometry of a SimpleITK image into an existing (scalar or labelmap) volume node."""
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image))
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    image_data.GetPointData().SetScalars(scalars)
    node.SetIJKToRASMatrix(_vtk_matrix(ijk_to_ras_from_image(image)))
    node.SetAndObserveImageData(image_data)


def add_volume_node(scene, image: sitk.Image, name: str, *, labelmap: bool = False):
    """Add a scalar (or labelmap) volume node holding ``image`` to the scene."""
    node = slicer.vtkMRMLLabelMapVolumeNode() if labelmap else slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    scene.AddNode(node)
    update_volume_node_from_image(node, image)
    return node


def save_volume_node_as_nifti(node, path: str | os.PathLike[str]) -> Path:
    """Write a volume node to NIfTI with SimpleITK (atomic), e.g. as the input of the segmentation child process."""
    return write_image_atomic(image_from_volume_node(node), path)


def unique_node_name(scene, base: str) -> str:
    """``base`` if no node has that name, else ``base 2``, ``base 3``..."""
    existing = {scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())}
    if base not in existing:
        return base
    index = 2
    while f"{base} {index}" in existing:
        index += 1
    return f"{base} {index}"


def create_segmentation_node(scene, reference_volume, name: str):
    """A new segmentation node (with display node) whose geometry is the reference volume's."""
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(unique_node_name(scene, name))
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    return node


@contextlib.contextmanager
def removing_nodes_added(scene) -> Iterator[None]:
    """Remove, on leaving, every node added to the scene inside the block (temporary label maps and the
    display and colour-table nodes Slicer's export creates for them), so nothing is left in a saved scene."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node is not None and node.GetID() not in before and scene.IsNodePresent(node):
                scene.RemoveNode(node)


def _geometry(ijk_to_ras: vtk.vtkMatrix4x4, extent) -> tuple[np.ndarray, tuple[int, ...]]:
    matrix = np.array([[ijk_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)])
    return matrix, tuple(int(v) for v in extent)


def segmentation_geometry(segmentation_node) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """The segmentation's reference image geometry: (4x4 IJK-to-RAS in mm, IJK extent), None when it has none."""
    serialized = segmentation_node.GetSegmentation().GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName())
    if not serialized:
        return None
    matrix, extent = vtk.vtkMatrix4x4(), [0] * 6
    if not slicer.vtkSegmentationConverter.DeserializeImageGeometry(serialized, matrix, extent):
        return None
    return _geometry(matrix, extent)


def grid_of_segmentation(segmentation_node) -> sitk.Image | None:
    """An all-zero uint8 image on the segmentation's reference image geometry (size, spacing, origin and direction
    in LPS, as ITK has them), None when it has none: the grid its segments are exported on without a volume node
    (the volume it was made on was removed from the scene)."""
    geometry = segmentation_geometry(segmentation_node)
    if geometry is None:
        return None
    matrix, extent = geometry
    size = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    if min(size) < 1:
        return None
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    image = sitk.Image([int(v) for v in size], sitk.sitkUInt8)
    image.SetSpacing([float(v) for v in spacing])
    image.SetDirection([float(v) for v in (_RAS_FROM_LPS @ matrix[:3, :3] @ np.diag(1.0 / spacing)).ravel()])
    image.SetOrigin([float(v) for v in _RAS_FROM_LPS @ (matrix @ [extent[0], extent[2], extent[4], 1.0])[:3]])
    return image


def volume_geometry(volume_node) -> tuple[np.ndarray, tuple[int, ...]]:
    """A volume's grid as (4x4 IJK-to-RAS in mm, IJK extent), the form of :func:`segmentation_geometry`."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return _geometry(matrix, volume_node.GetImageData().GetExtent())


def pairing_problem(segmentation_node, volume_node) -> str | None:
    """One sentence when ``segmentation_node`` was not made on ``volume_node``; None when they belong together.

    Compared: its source (the volume its reference geometry was taken from, Slicer's ``referenceImageGeometryRef``
    node reference, set by ``SetReferenceImageGeometryParameterFromVolumeNode`` and by Segment Editor) and its
    reference geometry (IJK-to-RAS within :data:`GRID_TOLERANCE` mm and the same extent). Exporting, measuring or
    comparing a pair that fails here would resample one scan's segments onto another scan's grid.
    """
    name, scan = segmentation_node.GetName(), volume_node.GetName()
    source = segmentation_node.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    if source is not None and source.GetID() != volume_node.GetID():
        return (f"Segmentation '{name}' was made on '{source.GetName()}', not on '{scan}': select its own volume, "
                f"or segment '{scan}' first.")
    geometry = segmentation_geometry(segmentation_node)
    if geometry is None:
        return f"Segmentation '{name}' has no reference geometry, so it cannot be told whether it belongs to '{scan}'."
    if volume_node.GetImageData() is None:
        return f"Volume '{scan}' holds no image."
    matrix, extent = volume_geometry(volume_node)
    if extent != geometry[1] or not np.allclose(matrix, geometry[0], atol=GRID_TOLERANCE, rtol=0):
        return (f"Segmentation '{name}' lies on another grid than '{scan}' (it was made on another scan, or its "
                f"geometry was changed): select its own volume, or segment '{scan}' first.")
    return None


def require_pairing(segmentation_node, volume_node) -> None:
    """Raise ValueError with :func:`pairing_problem`'s sentence when the two do not belong together."""
    problem = pairing_problem(segmentation_node, volume_node)
    if problem:
        raise ValueError(problem)


def set_segment_from_mask(logic, scene, segmentation_node, spec: SegmentSpec, mask: sitk.Image, reference_volume) -> None:
    """Create or replace segment ``spec.segment_id`` with a binary mask lying on the reference volume's grid."""
    reference = image_from_volume_node(reference_volume)
    mask = on_grid_of(mask, reference, what=f"the {spec.name} mask", where=f"volume '{reference_volume.GetName()}'")
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(spec.segment_id) is None:
        segmentation.AddEmptySegment(spec.segment_id, spec.name, list(spec.color))
    segment = segmentation.GetSegment(spec.segment_id)
    segment.SetName(spec.name)
    segment.SetColor(*spec.color)
    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), spec.terminology)
    binary = image_from_array_zyx((sitk.GetArrayFromImage(mask) > 0).astype(np.uint8), reference)
    with removing_nodes_added(scene):
        labelmap = add_volume_node(scene, binary, "__sciseg_temporary__", labelmap=True)
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(spec.segment_id)
        if not logic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node, ids):
            raise RuntimeError(f"Slicer could not import the {spec.name} mask into '{segmentation_node.GetName()}'")


def import_sciseg_masks(logic, scene, reference_volume, cord: sitk.Image, lesion: sitk.Image, name: str | None = None):
    """A new segmentation node "<volume> SCIseg" with segments ``spinal_cord`` and ``lesion``; never reuses a node.

    The segments do not overlap, like the labels 1 and 2 of the model: "Spinal cord" holds the cord
    voxels outside the lesion (label 1) and "Lesion" the lesion (label 2); the cord region of SCT's
    ``_sc_seg`` is their union. With Segment Editor's "overwrite all segments" mode, painting lesion
    takes the voxels from the cord and the other way round, so the two stay a partition.
    """
    node = create_segmentation_node(scene, reference_volume, name or f"{reference_volume.GetName()} SCIseg")
    reference = image_from_volume_node(reference_volume)
    lesion = on_grid_of(lesion, reference, what="the lesion mask", where=f"volume '{reference_volume.GetName()}'")
    cord = on_grid_of(cord, reference, what="the cord mask", where=f"volume '{reference_volume.GetName()}'")
    lesion_array = sitk.GetArrayFromImage(lesion) > 0
    cord_only = (sitk.GetArrayFromImage(cord) > 0) & ~lesion_array
    set_segment_from_mask(logic, scene, node, CORD, image_from_array_zyx(cord_only.astype(np.uint8), reference), reference_volume)
    set_segment_from_mask(logic, scene, node, LESION, image_from_array_zyx(lesion_array.astype(np.uint8), reference), reference_volume)
    return node


def segment_mask(logic, scene, segmentation_node, segment_id: str, reference_volume) -> np.ndarray:
    """The binary (z, y, x) array of one segment resampled on the reference volume's grid."""
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    return export_label_array(logic, scene, segmentation_node, reference_volume, ids) > 0


def export_label_array(logic, scene, segmentation_node, reference_volume, segment_ids: vtk.vtkStringArray) -> np.ndarray:
    """Export segments to a (z, y, x) label array on the reference grid (``reference_volume`` None: the segmentation's
    reference geometry); segment n gets value n+1, later wins.

    The temporary label map, and the display and colour-table nodes Slicer creates for it, leave the scene.
    """
    with removing_nodes_added(scene):
        labelmap = slicer.vtkMRMLLabelMapVolumeNode()
        labelmap.SetName("__sciseg_export__")
        scene.AddNode(labelmap)
        # No reference volume: the segmentation's whole reference geometry, not the segments' bounding box.
        extent = slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        if not logic.ExportSegmentsToLabelmapNode(segmentation_node, segment_ids, labelmap, reference_volume, extent):
            raise RuntimeError(f"Slicer could not export the segments of '{segmentation_node.GetName()}'")
        return sitk.GetArrayFromImage(image_from_volume_node(labelmap))


class SegmentChoiceError(ValueError):
    """The cord or lesion segment of a segmentation cannot be told without asking the rater.

    ``choices`` maps each SCIseg segment id (``spinal_cord``, ``lesion``) that needs a choice to the
    candidate segment ids (empty when none matched); ``segments`` lists every (id, name) of the node.
    """

    def __init__(self, message: str, choices: dict[str, list[str]], segments: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.choices = choices
        self.segments = segments


def _terminology_type_code(segment) -> str | None:
    """The type code of a segment's terminology entry (e.g. SNOMED ``2748008`` spinal cord), None without one.

    The tag is Slicer's serialized entry ``context~category~type~modifier~anatomicContext~region~modifier``,
    each field ``codingScheme^codeValue^codeMeaning``.
    """
    tag = vtk.mutable("")
    if not segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag) or not str(tag):
        return None
    fields = str(tag).split("~")
    if len(fields) < 3:
        return None
    parts = fields[2].split("^")
    return parts[1] if len(parts) > 1 and parts[1] else None


#: Names (lower case) a rater or another tool gives the SCIseg segments, besides their ids.
SEGMENT_NAMES = {
    CORD.segment_id: {"spinal cord", "spinal_cord", "spinalcord", "cord", "sc"},
    LESION.segment_id: {"lesion", "lesions", "sci lesion", "t2 lesion"},
    GREY_MATTER.segment_id: {"grey matter", "gray matter", "grey_matter", "gray_matter", "gm", "spinal cord grey matter",
                             "spinal cord gray matter"},
}


def _matching(segmentation_node, spec: SegmentSpec) -> list[str]:
    """The ids of the segments that are ``spec``: by terminology type code, else name, else id (first rule that matches)."""
    segmentation = segmentation_node.GetSegmentation()
    segments = [(segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i)) for i in range(segmentation.GetNumberOfSegments())]
    type_code = spec.terminology.split("~")[2].split("^")[1]
    names = SEGMENT_NAMES[spec.segment_id] | {spec.name.lower()}
    by_terminology = [sid for sid, segment in segments if _terminology_type_code(segment) == type_code]
    by_name = [sid for sid, segment in segments if segment.GetName().strip().lower() in names]
    by_id = [sid for sid, _segment in segments if sid == spec.segment_id]
    return by_terminology or by_name or by_id


def grey_matter_segment(segmentation_node) -> str | None:
    """The id of the segmentation's grey-matter segment (terminology, else name, else id), None when it has none.

    Raises ValueError with one sentence when several segments are grey matter (the export would have to guess).
    """
    found = _matching(segmentation_node, GREY_MATTER)
    if len(found) > 1:
        raise ValueError(f"In segmentation '{segmentation_node.GetName()}' several segments are grey matter "
                         f"({', '.join(found)}): delete or rename all but one before exporting.")
    return found[0] if found else None


def match_sciseg_segments(segmentation_node) -> dict[str, list[str]]:
    """For the cord and the lesion, the ids of the segments that are it: by terminology type, else name, else id.

    The first rule that matches any segment decides (a re-created ``Segment_1`` tagged "Lesion" is found by
    its terminology; a hand-made "Spinal cord" by its name). An empty list: nothing matched; more than one:
    ambiguous.
    """
    return {spec.segment_id: _matching(segmentation_node, spec) for spec in SCISEG_SEGMENTS}


def resolve_sciseg_segments(segmentation_node, chosen: dict[str, str | None] | None = None) -> dict[str, str | None]:
    """The segment id to export as cord and as lesion; raises :class:`SegmentChoiceError` when a rater must choose.

    ``chosen`` holds the rater's answers (SCIseg id -> segment id, or None for "no such segment: empty"); they
    win over the matching. Never silently empty: a cord or lesion that matches no segment, or several, raises.
    """
    chosen = dict(chosen or {})
    matches = match_sciseg_segments(segmentation_node)
    resolved: dict[str, str | None] = {}
    unclear: dict[str, list[str]] = {}
    segmentation = segmentation_node.GetSegmentation()
    for spec in SCISEG_SEGMENTS:
        if spec.segment_id in chosen:
            choice = chosen[spec.segment_id]
            if choice is not None and segmentation.GetSegment(choice) is None:
                raise ValueError(f"segmentation '{segmentation_node.GetName()}' has no segment '{choice}'")
            resolved[spec.segment_id] = choice
        elif len(matches[spec.segment_id]) == 1:
            resolved[spec.segment_id] = matches[spec.segment_id][0]
        else:
            unclear[spec.segment_id] = matches[spec.segment_id]
    if unclear:
        segments = [(segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i).GetName()) for i in range(segmentation.GetNumberOfSegments())]
        what = "; ".join(
            f"{'several segments could be' if ids else 'no segment is'} the {name}" + (f" ({', '.join(ids)})" if ids else "")
            for name, ids in ((next(s.name for s in SCISEG_SEGMENTS if s.segment_id == k).lower(), v) for k, v in unclear.items())
        )
        raise SegmentChoiceError(
            f"In segmentation '{segmentation_node.GetName()}' {what}: choose which segment it is (or none).", unclear, segments
        )
    return resolved


def reference_grid(segmentation_node, reference_volume) -> sitk.Image:
    """The grid segments are exported on: the reference volume's (:func:`grid_of_volume_node`), or, with
    ``reference_volume`` None, the segmentation's own reference geometry (:func:`grid_of_segmentation`; ValueError
    when it has none)."""
    if reference_volume is not None:
        return grid_of_volume_node(reference_volume)
    grid = grid_of_segmentation(segmentation_node)
    if grid is None:
        raise ValueError(f"Segmentation '{segmentation_node.GetName()}' has no reference geometry and no volume.")
    return grid


def export_sciseg_label_map(logic, scene, segmentation_node, reference_volume, chosen: dict[str, str | None] | None = None) -> sitk.Image:
    """The corrected segments as one uint8 image on the reference grid: 0 background, 1 cord only, 2 lesion.
    ``reference_volume`` None: on the segmentation's own reference geometry (:func:`reference_grid`).

    Segments are found by :func:`resolve_sciseg_segments` (terminology, then name, then id; ``chosen`` holds a
    rater's answers); when the cord or lesion cannot be told, it raises :class:`SegmentChoiceError` instead of
    exporting an empty label. Lesion wins where the segments overlap (nnU-Net's region convention: label 2
    lies inside the cord region {1, 2}).

    A grey-matter segment (:func:`grey_matter_segment`) is part of the cord: its voxels outside the lesion are cord
    (label 1). Segment Editor's "overwrite all segments" takes the voxels painted as grey matter from the cord
    segment; the cord region stays whole.
    """
    resolved = resolve_sciseg_segments(segmentation_node, chosen)
    grey_matter = grey_matter_segment(segmentation_node) if resolved[CORD.segment_id] is not None else None
    reference = reference_grid(segmentation_node, reference_volume)
    labels = np.zeros(tuple(reversed(reference.GetSize())), dtype=np.uint8)
    for segment_id, value in ((grey_matter, CORD.label_value),
                              *((resolved[spec.segment_id], spec.label_value) for spec in SCISEG_SEGMENTS)):
        if segment_id is None:
            continue
        mask = segment_mask(logic, scene, segmentation_node, segment_id, reference_volume)
        labels[mask] = value
    return image_from_array_zyx(labels, reference)


def table_node_from_csv(scene, csv_path: str | os.PathLike[str], name: str):
    """A table node holding a CSV file: numeric columns become double columns (empty cells NaN), others text."""
    import csv

    with open(csv_path, newline="") as stream:
        rows = list(csv.reader(stream))
    header, body = rows[0], rows[1:]
    table = vtk.vtkTable()
    for index, column_name in enumerate(header):
        cells = [row[index] if index < len(row) else "" for row in body]
        try:
            numbers = [float(cell) if cell != "" else float("nan") for cell in cells]
            column = vtk.vtkDoubleArray()
            for value in numbers:
                column.InsertNextValue(value)
        except ValueError:
            column = vtk.vtkStringArray()
            for cell in cells:
                column.InsertNextValue(cell)
        column.SetName(column_name)
        table.AddColumn(column)
    node = slicer.vtkMRMLTableNode()
    node.SetName(unique_node_name(scene, name))
    node.SetAndObserveTable(table)
    # Column titles in the view's header, not in its first row (SegmentStatistics does the same): view row k is
    # table row k (qMRMLTableModel::mrmlTableRowIndex).
    node.SetUseColumnTitleAsColumnHeader(True)
    scene.AddNode(node)
    return node


def show_live_lesions(scene, name: str, columns: list[str], rows: list[list[float]], table=None, points=None):
    """The live lesion table (one row per lesion, double columns) and a locked markups point list labelled with
    each lesion's number at its centre; ``rows`` hold ``label`` then the centre's R, A, S (mm) as their last three
    values. The nodes given are updated in place (the table view and the views follow); new ones are made when None.
    Returns (table node, point list node)."""
    if table is None or not scene.IsNodePresent(table):
        table = slicer.vtkMRMLTableNode()
        table.SetName(unique_node_name(scene, f"{name} lesions (live)"))
        table.SetUseColumnTitleAsColumnHeader(True)  # view row k = table row k (see table_node_from_csv)
        scene.AddNode(table)
    content = vtk.vtkTable()
    for index, column_name in enumerate(columns):
        column = vtk.vtkDoubleArray()
        column.SetName(column_name)
        for row in rows:
            column.InsertNextValue(float(row[index]))
        content.AddColumn(column)
    table.SetAndObserveTable(content)
    if points is None or not scene.IsNodePresent(points):
        points = slicer.vtkMRMLMarkupsFiducialNode()
        points.SetName(unique_node_name(scene, f"{name} lesion numbers"))
        scene.AddNode(points)
        points.CreateDefaultDisplayNodes()
        points.SetLocked(True)
    was_modifying = points.StartModify()
    points.RemoveAllControlPoints()
    for row in rows:
        points.AddControlPoint(vtk.vtkVector3d(*[float(v) for v in row[-3:]]), str(int(row[0])))
    points.EndModify(was_modifying)
    return table, points


def plot_chart_from_table(scene, table_node, x_column: str, y_columns: list[str], title: str):
    """A plot chart node with one line series per column of ``y_columns`` against ``x_column``."""
    chart = slicer.vtkMRMLPlotChartNode()
    chart.SetName(unique_node_name(scene, title))
    chart.SetTitle(title)
    chart.SetXAxisTitle(x_column)
    scene.AddNode(chart)
    for column in y_columns:
        series = slicer.vtkMRMLPlotSeriesNode()
        series.SetName(f"{title}: {column}")
        scene.AddNode(series)
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName(x_column)
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


def lesion_centroids_ras(labels: sitk.Image) -> dict[int, tuple[float, float, float]]:
    """Centre of every labelled lesion in RAS mm (Slicer's world coordinates), to jump the views to it."""
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(sitk.Cast(labels, sitk.sitkUInt32))
    centres = {}
    for value in statistics.GetLabels():
        x, y, z = statistics.GetCentroid(value)  # LPS mm
        centres[int(value)] = (-x, -y, z)
    return centres


def first_scan(scene):
    """The scene's first scalar volume that is not a label map (what the panel selects when nothing is); None.

    ``GetFirstNodeByClass`` would return a label map too (a scalar volume subclass the selector hides).
    """
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if not node.IsA("vtkMRMLLabelMapVolumeNode"):
            return node
    return None


#: The segmentation events after which the segments' voxels may have changed: a stroke modifies the source
#: representation; Segment Editor's Undo and Redo (``vtkSegmentationHistory::RestoreState``, which
#: ``vtkSlicerSegmentEditorLogic::Undo`` calls; Slicer 5.10) copy whole segments back and fire only ``SegmentModified``.
EDIT_EVENTS = (slicer.vtkSegmentation.SourceRepresentationModified, slicer.vtkSegmentation.SegmentModified)


def observe_edits(segmentation_node, callback) -> tuple[int, ...]:
    """Call ``callback(node, event)`` after each change of the segments' voxels (every stroke, an undo, a redo; also
    a segment renamed or recoloured); returns the tags for :func:`stop_observing_edits`. The node forwards its
    segmentation's events (:data:`EDIT_EVENTS`)."""
    return tuple(segmentation_node.AddObserver(event, callback) for event in EDIT_EVENTS)


def stop_observing_edits(segmentation_node, tags: tuple[int, ...]) -> None:
    for tag in tags:
        segmentation_node.RemoveObserver(tag)


def lesion_to_select(segmentation_node) -> str | None:
    """The segment Segment Editor selects on Edit: the lesion, when exactly one segment is it; else None."""
    found = match_sciseg_segments(segmentation_node)[LESION.segment_id]
    return found[0] if len(found) == 1 else None
