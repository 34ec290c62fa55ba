"""The MRML bridge against Slicer's real MRML and Segmentations logic (PyPI ``slicer-core``, no Qt, no mocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is a test dependency (pip install .[test])")
import vtk  # noqa: E402

from conftest import shared_file  # noqa: E402
from SCIsegLib import mrml  # noqa: E402
from slicer_scene import load_with_slicer  # noqa: E402
from SCIsegLib.phantom import LesionSpec, paint_lesions  # noqa: E402

REAL_SCANS = {
    "t2 (PSR, int16)": ("sct_testing_data/t2/t2.nii.gz", "sct_testing_data/t2/t2_seg-manual.nii.gz"),
    "t1w (RAS)": ("sct_testing_data/t1/t1w.nii.gz", "sct_testing_data/t1/t1w_seg-manual.nii.gz"),
    "t2s (LAS, anisotropic)": ("sct_testing_data/t2s/t2s.nii.gz", "sct_testing_data/t2s/t2s_seg-deepseg.nii.gz"),
    "gm challenge (LAS, float64 mask)": (
        "gm_challenge/sub-9418/anat/sub-9418_run-1_T2starw.nii.gz",
        "gm_challenge/derivatives/labels/sub-9418/anat/sub-9418_run-1_T2starw_seg-manual.nii.gz",
    ),
    "errsm_11 (full FOV)": ("sct_2014_errsm/errsm_11/t2.nii.gz", "sct_2014_errsm/errsm_11/t2_manual_segmentation.nii.gz"),
}


def assert_same_physical_image(a: sitk.Image, b: sitk.Image) -> None:
    """Same voxels at the same positions in mm; the index order may differ (Slicer flips left-handed files)."""
    aligned = mrml.on_grid_of(a, b)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(aligned), sitk.GetArrayViewFromImage(b))
    resampled = sitk.Resample(a, b, sitk.Transform(), sitk.sitkNearestNeighbor)  # independent check: ITK resampling
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(resampled), sitk.GetArrayViewFromImage(b))


def assert_same_geometry(a: sitk.Image, b: sitk.Image, atol: float = 1e-4) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("case", list(REAL_SCANS))
def test_volume_node_round_trip_and_segments_on_real_scans(scene, tmp_path: Path, case: str) -> None:
    scene, logic = scene
    image_path, cord_path = (shared_file(p) for p in REAL_SCANS[case])
    volume = load_with_slicer(scene, image_path)
    expected = sitk.ReadImage(str(image_path))
    as_image = mrml.image_from_volume_node(volume)
    assert_same_physical_image(as_image, expected)
    grid = mrml.grid_of_volume_node(volume)  # the geometry alone, no voxels copied
    assert_same_geometry(grid, as_image, atol=0.0)
    assert grid.GetPixelID() == sitk.sitkUInt8 and not sitk.GetArrayViewFromImage(grid).any()

    # The temporary NIfTI the module hands to the child process is the same scan.
    written = sitk.ReadImage(str(mrml.save_volume_node_as_nifti(volume, tmp_path / "input.nii.gz")))
    assert_same_geometry(written, as_image)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(written), sitk.GetArrayViewFromImage(as_image))

    # Masks in, segments out: voxel-exact and on the reference grid.
    cord = sitk.ReadImage(str(cord_path))
    cord = sitk.Cast(sitk.Cast(cord, sitk.sitkFloat64) > 0.5, sitk.sitkUInt8)
    cord.CopyInformation(expected)
    painted = paint_lesions(expected, cord, lesions=[LesionSpec(length_mm=12.0, width_fraction=0.9)])
    lesion = painted.lesion
    node = mrml.import_sciseg_masks(logic, scene, volume, cord, lesion)
    assert node.GetName() == f"{volume.GetName()} SCIseg"
    labels = mrml.export_sciseg_label_map(logic, scene, node, volume)
    assert_same_geometry(labels, as_image)  # exported on the volume node's grid
    assert_same_physical_image(labels, painted.labels)  # voxel-exact against the masks given


def test_segment_ids_names_colours_and_terminology(scene) -> None:
    scene, logic = scene
    volume = load_with_slicer(scene, shared_file("sct_testing_data/t2/t2.nii.gz"))
    cord = sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz")))
    empty = sitk.Image(cord.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(cord)
    node = mrml.import_sciseg_masks(logic, scene, volume, cord, empty)
    segmentation = node.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == ["spinal_cord", "lesion"]
    terminology = slicer.vtkSlicerTerminologiesModuleLogic()
    assert terminology.LoadContextFromFile(str(mrml.TERMINOLOGY_FILE))
    for spec in mrml.SCISEG_SEGMENTS:
        segment = segmentation.GetSegment(spec.segment_id)
        assert segment.GetName() == spec.name
        assert segment.GetColor() == pytest.approx(spec.color)
        tag = vtk.mutable("")
        assert segment.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminology.DeserializeTerminologyEntry(str(tag), entry)
        assert entry.GetTerminologyContextName() == "SCIseg"
    cord_entry = slicer.vtkSlicerTerminologyEntry()
    terminology.DeserializeTerminologyEntry(mrml.CORD.terminology, cord_entry)
    assert (cord_entry.GetTypeObject().GetCodeValue(), cord_entry.GetCategoryObject().GetCodeValue()) == ("2748008", "123037004")
    lesion_entry = slicer.vtkSlicerTerminologyEntry()
    terminology.DeserializeTerminologyEntry(mrml.LESION.terminology, lesion_entry)
    assert lesion_entry.GetTypeObject().GetCodeValue() == "52988006"
    assert lesion_entry.GetRegionObject().GetCodeValue() == "2748008"
    # The shipped terminology file knows both types, with the segment colours.
    category = slicer.vtkSlicerTerminologyCategory()
    assert terminology.GetNthCategoryInTerminology("SCIseg", 1, category)
    kind = slicer.vtkSlicerTerminologyType()
    terminology.GetNthTypeInTerminologyCategory("SCIseg", category, 0, kind)
    assert kind.GetCodeValue() == "52988006"


def t2_in_slicer(scene):
    """SCT's t2 loaded by Slicer, its image, the manual cord on that grid (array z, y, x) and a voxel mid-cord."""
    volume = load_with_slicer(scene, shared_file("sct_testing_data/t2/t2.nii.gz"))
    reference = mrml.image_from_volume_node(volume)
    cord = mrml.on_grid_of(sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz"))), reference)
    cord_array = sitk.GetArrayFromImage(cord)
    inside = np.argwhere(cord_array > 0)
    return volume, reference, cord, cord_array, tuple(inside[len(inside) // 2])


def test_rater_edits_are_exported_lesion_wins_and_nodes_are_never_reused(scene) -> None:
    scene, logic = scene
    volume, reference, cord, cord_array, (z, y, x) = t2_in_slicer(scene)
    lesion_array = np.zeros_like(cord_array)
    node = mrml.import_sciseg_masks(logic, scene, volume, cord, _on(reference, lesion_array))

    # A rater paints a lesion: inside the cord (becomes 2) and one voxel outside it (2 as well: lesion wins).
    edited = np.zeros_like(cord_array)
    edited[z - 1 : z + 2, y, x] = 1
    outside = tuple(np.argwhere(cord_array == 0)[0])
    edited[outside] = 1
    mrml.set_segment_from_mask(logic, scene, node, mrml.LESION, _on(reference, edited), volume)
    labels = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, node, volume))
    expected = (cord_array > 0).astype(np.uint8)
    expected[edited > 0] = 2
    np.testing.assert_array_equal(labels, expected)
    assert np.array_equal(mrml.segment_mask(logic, scene, node, "lesion", volume), edited > 0)
    # The imported segments are a partition: "Spinal cord" holds label 1 only.
    imported = mrml.import_sciseg_masks(logic, scene, volume, cord, _on(reference, edited))
    assert not np.any(mrml.segment_mask(logic, scene, imported, "spinal_cord", volume) & (edited > 0))

    # Segmenting again makes a new node; the rater's node is untouched.
    second = mrml.import_sciseg_masks(logic, scene, volume, cord, _on(reference, np.zeros_like(cord_array)))
    assert second.GetID() != node.GetID() and second.GetName() == "t2 SCIseg 3"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, node, volume)), expected)


def test_masks_on_another_grid_are_refused(scene) -> None:
    scene, logic = scene
    volume = load_with_slicer(scene, shared_file("sct_testing_data/t2/t2.nii.gz"))
    other = sitk.ReadImage(str(shared_file("sct_testing_data/t1/t1w_seg-manual.nii.gz")))
    node = mrml.create_segmentation_node(scene, volume, "x")
    with pytest.raises(ValueError, match="does not lie on the grid"):
        mrml.set_segment_from_mask(logic, scene, node, mrml.CORD, other, volume)


def test_geometry_conversion_of_an_oblique_image(scene) -> None:
    scene, _ = scene
    image = sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 100, size=(7, 8, 9)).astype(np.int16))
    transform = sitk.Euler3DTransform()
    transform.SetRotation(0.3, -0.2, 1.1)
    image.SetDirection(transform.GetMatrix())
    image.SetSpacing((0.5, 0.8, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    node = mrml.add_volume_node(scene, image, "oblique")
    back = mrml.image_from_volume_node(node)
    assert_same_geometry(back, image, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    ras = mrml.ijk_to_ras_from_image(image) @ np.array([1, 2, 3, 1.0])
    lps = image.TransformIndexToPhysicalPoint((1, 2, 3))
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-9)


def _on(reference: sitk.Image, array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def test_lesion_table_plot_and_centroids(scene, tmp_path: Path) -> None:
    import pandas as pd

    scene, _ = scene
    table = pd.DataFrame({"label": [1, 2], "volume [mm3]": [12.5, 40.0], "length [mm]": [3.0, 8.25]})
    table.to_csv(tmp_path / "t_analysis.csv", index=False)
    node = mrml.table_node_from_csv(scene, tmp_path / "t_analysis.csv", "lesions")
    vtk_table = node.GetTable()
    assert node.GetNumberOfRows() == 2 and vtk_table.GetColumnByName("volume [mm3]").GetValue(1) == 40.0
    assert vtk_table.GetColumnByName("length [mm]").GetValue(0) == 3.0
    chart = mrml.plot_chart_from_table(scene, node, "label", ["volume [mm3]", "length [mm]"], "profile")
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    assert chart.GetNthPlotSeriesNode(0).GetYColumnName() == "volume [mm3]"

    labels = sitk.Image([10, 12, 14], sitk.sitkUInt16)
    labels.SetOrigin((5.0, -3.0, 2.0))
    labels.SetSpacing((0.5, 1.0, 2.0))
    labels[2, 3, 4] = 1
    labels[6, 7, 8] = 2
    centres = mrml.lesion_centroids_ras(labels)
    lps = labels.TransformIndexToPhysicalPoint((6, 7, 8))
    assert centres[2] == pytest.approx((-lps[0], -lps[1], lps[2]))


def test_an_empty_mask_clears_the_segment(scene) -> None:
    """A rater who erases the lesion: the segment becomes empty (Slicer imports nothing from an empty label map)."""
    scene, logic = scene
    volume, reference, cord, cord_array, (z, y, x) = t2_in_slicer(scene)
    lesion_array = np.zeros_like(cord_array)
    lesion_array[z - 1 : z + 2, y, x] = 1
    node = mrml.import_sciseg_masks(logic, scene, volume, cord, _on(reference, lesion_array))
    assert mrml.segment_mask(logic, scene, node, "lesion", volume).sum() == 3
    mrml.set_segment_from_mask(logic, scene, node, mrml.LESION, _on(reference, np.zeros_like(cord_array)), volume)
    assert not mrml.segment_mask(logic, scene, node, "lesion", volume).any()
    labels = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, node, volume))
    assert not np.any(labels == 2) and np.count_nonzero(labels) == np.count_nonzero(cord_array) - 3


def _node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def test_import_export_and_measure_leave_no_node_behind(scene) -> None:
    """Slicer's export adds a LabelMapVolumeDisplay and a '<seg>_ColorTable' node per label map: none may stay."""
    scene, logic = scene
    volume, reference, cord, cord_array, (z, y, x) = t2_in_slicer(scene)
    lesion_array = np.zeros_like(cord_array)
    lesion_array[z - 1 : z + 2, y, x] = 1
    node = mrml.import_sciseg_masks(logic, scene, volume, cord, _on(reference, lesion_array))
    before = _node_ids(scene)
    labels = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, node, volume))
    mrml.segment_mask(logic, scene, node, "lesion", volume)
    mrml.set_segment_from_mask(logic, scene, node, mrml.LESION, _on(reference, lesion_array), volume)
    assert _node_ids(scene) == before
    assert np.count_nonzero(labels == 2) == 3
    classes = {scene.GetNthNode(i).GetClassName() for i in range(scene.GetNumberOfNodes())}
    assert "vtkMRMLLabelMapVolumeNode" not in classes and "vtkMRMLLabelMapVolumeDisplayNode" not in classes


def _add_segment(logic, scene, node, segment_id: str, name: str, mask: np.ndarray, reference, volume, terminology: str = "") -> None:
    """A segment made the way a rater makes one: any id and name, optional terminology, painted voxels."""
    spec = mrml.SegmentSpec(segment_id, name, (0.5, 0.5, 0.5), terminology, 0)
    mrml.set_segment_from_mask(logic, scene, node, spec, _on(reference, mask), volume)
    if not terminology:
        node.GetSegmentation().GetSegment(segment_id).RemoveTag(slicer.vtkSegment.GetTerminologyEntryTagName())


def test_segments_found_by_terminology_then_name_and_never_exported_silently_empty(scene) -> None:
    scene, logic = scene
    volume, reference, cord, cord_array, (z, y, x) = t2_in_slicer(scene)
    lesion = np.zeros_like(cord_array)
    lesion[z - 1 : z + 2, y, x] = 1

    # The rater deleted "lesion" and painted a new Segment_1, tagged Lesion in the terminology picker.
    node = mrml.import_sciseg_masks(logic, scene, volume, cord, _on(reference, np.zeros_like(cord_array)))
    node.GetSegmentation().RemoveSegment("lesion")
    _add_segment(logic, scene, node, "Segment_1", "Segment_1", lesion, reference, volume, mrml.LESION.terminology)
    assert mrml.match_sciseg_segments(node) == {"spinal_cord": ["spinal_cord"], "lesion": ["Segment_1"]}
    labels = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, node, volume))
    assert np.count_nonzero(labels == 2) == 3 and np.count_nonzero(labels) == np.count_nonzero(cord_array)

    # A hand-made segmentation (another tool's names, no terminology) is found by name.
    handmade = mrml.create_segmentation_node(scene, volume, "rater B")
    _add_segment(logic, scene, handmade, "Segment_1", "Spinal Cord", cord_array, reference, volume)
    _add_segment(logic, scene, handmade, "Segment_2", "lesion", lesion, reference, volume)
    assert mrml.resolve_sciseg_segments(handmade) == {"spinal_cord": "Segment_1", "lesion": "Segment_2"}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, handmade, volume)), labels)

    # Nothing named like a lesion: the export asks instead of writing an empty lesion.
    unnamed = mrml.create_segmentation_node(scene, volume, "rater C")
    _add_segment(logic, scene, unnamed, "Segment_1", "cord", cord_array, reference, volume)
    _add_segment(logic, scene, unnamed, "Segment_2", "Segment_2", lesion, reference, volume)
    with pytest.raises(mrml.SegmentChoiceError, match="no segment is the lesion") as raised:
        mrml.export_sciseg_label_map(logic, scene, unnamed, volume)
    assert raised.value.choices == {"lesion": []}
    assert raised.value.segments == [("Segment_1", "cord"), ("Segment_2", "Segment_2")]
    answered = mrml.export_sciseg_label_map(logic, scene, unnamed, volume, chosen={"lesion": "Segment_2"})
    np.testing.assert_array_equal(sitk.GetArrayFromImage(answered), labels)
    no_lesion = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, unnamed, volume, chosen={"lesion": None}))
    assert not np.any(no_lesion == 2) and np.count_nonzero(no_lesion) == np.count_nonzero(cord_array)

    # Two segments tagged Lesion: ambiguous, the rater chooses.
    _add_segment(logic, scene, node, "Segment_2", "Segment_2", lesion, reference, volume, mrml.LESION.terminology)
    with pytest.raises(mrml.SegmentChoiceError, match=r"several segments could be the lesion \(Segment_1, Segment_2\)"):
        mrml.export_sciseg_label_map(logic, scene, node, volume)


def test_first_scan_edits_observed_and_the_lesion_to_select(scene) -> None:
    """What the panel selects in a new scene (never a label map), the stroke event it follows, Edit's segment."""
    scene, logic = scene
    assert mrml.first_scan(scene) is None
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    volume = load_with_slicer(scene, shared_file("sct_testing_data/t2/t2.nii.gz"))
    assert mrml.first_scan(scene) is volume
    image = mrml.image_from_volume_node(volume)
    cord = sitk.Cast(image * 0, sitk.sitkUInt8)
    cord[20:40, 20:35, 10:40] = 1
    lesion = sitk.Cast(image * 0, sitk.sitkUInt8)
    lesion[28:31, 25:28, 20:23] = 1
    segmentation = mrml.import_sciseg_masks(logic, scene, volume, cord, lesion)
    strokes = []
    tag = mrml.observe_edits(segmentation, lambda caller, event: strokes.append(event))
    mrml.set_segment_from_mask(logic, scene, segmentation, mrml.LESION, cord, volume)
    assert strokes, "a change of the segments' voxels reaches the observer"
    mrml.stop_observing_edits(segmentation, tag)
    seen = len(strokes)
    mrml.set_segment_from_mask(logic, scene, segmentation, mrml.LESION, lesion, volume)
    assert len(strokes) == seen
    [lesion_id] = mrml.match_sciseg_segments(segmentation)[mrml.LESION.segment_id]
    assert mrml.lesion_to_select(segmentation) == lesion_id
    second = slicer.vtkSegment()
    second.DeepCopy(segmentation.GetSegmentation().GetSegment(lesion_id))  # its terminology too: two lesion segments
    segmentation.GetSegmentation().AddSegment(second, "lesion_copy")
    assert len(mrml.match_sciseg_segments(segmentation)[mrml.LESION.segment_id]) == 2
    assert mrml.lesion_to_select(segmentation) is None
