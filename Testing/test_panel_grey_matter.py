"""The Slicer panel's grey matter (SCIsegLib/panel_grey_matter.py) on slicer-core's real MRML: the Grey matter button
runs the bundled demo GM model on the real t2s scan in a real child, the mask becomes a SNOMED-tagged segment of the
selected segmentation beside the cord and lesion, the cord, lesion and live lesion list still hold, and Export writes
``_label-GM_seg`` with its sidecar on the scan's grid (read back from disk)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is a test dependency (pip install .[test])")
vtk = pytest.importorskip("vtk")

from conftest import REPOSITORY, shared_file  # noqa: E402
from SCIsegLib import models, mrml, panel_case, panel_grey_matter  # noqa: E402
from SCIsegLib.volume import grid_difference  # noqa: E402
from SCIsegLib.panel import Action, PanelInputs, PanelState  # noqa: E402
from slicer_scene import RecordingView, load_with_slicer  # noqa: E402
from test_panel_controller import controller_for, wait_for_jobs  # noqa: E402

GM_DEMO = REPOSITORY / "Resources" / "Models" / "sciseg-gm-demo"
T2S = "sct_testing_data/t2s/"


def terminology(segmentation, segment_id: str) -> str:
    tag = vtk.mutable("")
    assert segmentation.GetSegmentation().GetSegment(segment_id).GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
    return str(tag)


def t2s_case(scene, logic, tmp_path: Path):
    """The t2s scan as a BIDS file of a dataset in ``tmp_path`` (a copy: its case is written there), loaded as Slicer
    does, with a SCIseg segmentation: SCT's automatic cord and a 3x3x1-voxel lesion inside it."""
    root = tmp_path / "bids"
    source = root / "sub-t2s" / "anat" / "sub-t2s_T2starw.nii.gz"
    source.parent.mkdir(parents=True)
    shutil.copyfile(shared_file(T2S + "t2s.nii.gz"), source)
    volume = load_with_slicer(scene, source)
    reference = mrml.image_from_volume_node(volume)
    cord = sitk.GetArrayFromImage(mrml.on_grid_of(sitk.ReadImage(str(shared_file(T2S + "t2s_seg-deepseg.nii.gz"))), reference)) > 0
    lesion = np.zeros_like(cord)
    z, y, x = (int(round(v)) for v in np.argwhere(cord).mean(axis=0))
    lesion[z, y - 1:y + 2, x - 1:x + 2] = True
    assert (lesion <= cord).all()
    segmentation = mrml.import_sciseg_masks(logic, scene, volume, mrml.image_from_array_zyx(cord.astype(np.uint8), reference),
                                            mrml.image_from_array_zyx(lesion.astype(np.uint8), reference))
    return root, source, volume, segmentation


def test_grey_matter_button_segments_edits_and_exports_label_gm_seg(scene, tmp_path: Path, model_store: Path) -> None:
    scene, logic = scene
    root, source, volume, segmentation = t2s_case(scene, logic, tmp_path)
    view = RecordingView(scene, PanelInputs(rater="alice", export_folder=str(root)))
    controller = controller_for(scene, logic, view)
    controller.parameters.inputVolume, controller.parameters.segmentation = volume, segmentation
    controller.parameters.device = "cpu"
    before = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, segmentation, volume))
    cord_segment_before = mrml.segment_mask(logic, scene, segmentation, "spinal_cord", volume)

    # The button runs the bundled demo GM model (the only grey-matter model of an empty store) in a child.
    controller.grey_matter()
    job = controller.state.jobs[Action.GREY_MATTER]
    assert job.run.options.model == "sciseg-gm-demo" and "demonstration model" in view.said[-1]
    assert job.segmentation_id == segmentation.GetID() and job.volume_id == volume.GetID()
    # The rater paints a grey-matter segment while the model runs (there was none at the click, so nothing was
    # asked then): the import asks before replacing it. Before, it was replaced without a word.
    reference = mrml.image_from_volume_node(volume)
    during = np.zeros_like(cord_segment_before)
    during[np.argwhere(cord_segment_before)[0][0]] = cord_segment_before[np.argwhere(cord_segment_before)[0][0]]
    mrml.set_segment_from_mask(logic, scene, segmentation, mrml.GREY_MATTER, mrml.image_from_array_zyx(during.astype(np.uint8), reference), volume)
    view.answers.append(True)
    wait_for_jobs(controller, timeout_s=300)
    assert view.questions == [panel_grey_matter.EDITED_DURING_RUN.format(name=segmentation.GetName())]
    assert view.said[-1].startswith(f"Done: grey matter added to '{segmentation.GetName()}'"), (view.said, view.errors)
    assert not job.run.work_dir.exists()  # the child's work folder went with the job

    # One more segment in the same node, tagged SNOMED CT 12958003 in SCIseg's terminology context.
    ids = [segmentation.GetSegmentation().GetNthSegmentID(i) for i in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert ids == ["spinal_cord", "lesion", "grey_matter"]
    assert terminology(segmentation, "grey_matter") == (
        "SCIseg~SCT^123037004^Anatomical Structure~SCT^12958003^Spinal cord gray matter~^^~~^^~^^")
    assert segmentation.GetSegmentation().GetSegment("grey_matter").GetName() == "Grey matter"
    assert mrml.grey_matter_segment(segmentation) == "grey_matter"
    # It overlaps the cord segment (Slicer keeps it in a layer of its own): the cord segment keeps every voxel.
    np.testing.assert_array_equal(mrml.segment_mask(logic, scene, segmentation, "spinal_cord", volume), cord_segment_before)
    # The segment is the model's mask, voxel for voxel, on the volume's grid (t2s is left-handed: Slicer's reader
    # re-indexes it, so the node's grid is the file's voxels in another axis order); it is the grey matter of t2s
    # (the demo model saw t2s in training: this checks the path, not the model).
    gm = mrml.segment_mask(logic, scene, segmentation, "grey_matter", volume)
    kept = sitk.ReadImage(segmentation.GetAttribute(panel_grey_matter.PREDICTION_ATTRIBUTE))
    assert grid_difference(kept, mrml.image_from_volume_node(volume)) is None
    np.testing.assert_array_equal(sitk.GetArrayFromImage(kept) > 0, gm)
    manual = sitk.GetArrayFromImage(mrml.on_grid_of(sitk.ReadImage(str(shared_file(T2S + "t2s_gmseg_manual.nii.gz"))),
                                                    mrml.image_from_volume_node(volume))) > 0
    assert gm.sum() > 500 and 2 * np.sum(gm & manual) / (gm.sum() + manual.sum()) > 0.8

    # The cord and lesion hold: lesion voxels stay lesion, grey matter counts as cord, nothing else moved.
    after = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, segmentation, volume))
    expected = before.copy()
    expected[gm & (before == 0)] = 1
    np.testing.assert_array_equal(after, expected)
    assert mrml.lesion_to_select(segmentation) == "lesion"

    # A "No" keeps the rater's grey matter: nothing of the run is imported (the finished job shown again, after an edit).
    edited = gm.copy()
    edited[np.argwhere(gm)[0][0]] = False
    mrml.set_segment_from_mask(logic, scene, segmentation, mrml.GREY_MATTER, mrml.image_from_array_zyx(edited.astype(np.uint8), reference), volume)
    view.answers.append(False)
    from SCIsegLib import panel_shown

    panel_shown.show_grey_matter(controller, job)
    assert view.said[-1] == panel_grey_matter.NOT_IMPORTED and len(view.questions) == 2
    np.testing.assert_array_equal(mrml.segment_mask(logic, scene, segmentation, "grey_matter", volume), edited)
    mrml.set_segment_from_mask(logic, scene, segmentation, mrml.GREY_MATTER, mrml.image_from_array_zyx(gm.astype(np.uint8), reference), volume)

    # The rater paints grey matter with "overwrite all segments": Segment Editor takes the voxels from the cord segment.
    # The cord region stays whole, the lesion list still finds the one lesion.
    painted = gm.copy()
    z = int(np.argwhere(gm)[:, 0].max())
    box = np.zeros_like(gm)
    box[z, :, :] = (after[z] == 1)
    painted |= box
    cord_segment = mrml.segment_mask(logic, scene, segmentation, "spinal_cord", volume) & ~painted
    mrml.set_segment_from_mask(logic, scene, segmentation, mrml.GREY_MATTER, mrml.image_from_array_zyx(painted.astype(np.uint8), reference), volume)
    mrml.set_segment_from_mask(logic, scene, segmentation, mrml.CORD, mrml.image_from_array_zyx(cord_segment.astype(np.uint8), reference), volume)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, segmentation, volume)), after)
    settled = panel_case.edits_settled(scene, logic, None, segmentation, volume, "alice")
    assert settled.centres is not None and len(settled.centres) == 1
    # Measure lesions (sciseg analyze in a child) still finds the one 3 x 3 x 1-voxel lesion and its volume.
    controller.measure()
    wait_for_jobs(controller, timeout_s=300)
    table, chart = view.tables[-1]
    assert chart is not None and table.GetNumberOfRows() == 1, (view.said, view.errors)
    spacing = volume.GetSpacing()
    assert float(table.GetCellText(0, table.GetColumnIndex("volume [mm3]"))) == pytest.approx(9 * np.prod(spacing), rel=1e-6)

    # Export writes the grey matter as _label-GM_seg with its sidecar, on the scan's grid, beside the cord and lesion.
    controller.export()
    wait_for_jobs(controller, timeout_s=300)
    assert view.said[-1].startswith("Exported version v001"), (view.said, view.errors)
    anat = root / "derivatives" / "labels" / "sub-t2s" / "anat"
    written = sitk.ReadImage(str(anat / "sub-t2s_T2starw_label-GM_seg.nii.gz"))
    scan = sitk.ReadImage(str(source))
    assert written.GetSize() == scan.GetSize() and grid_difference(written, scan) is None  # the file's own grid
    assert np.allclose(written.GetOrigin(), scan.GetOrigin(), atol=1e-6) and np.allclose(written.GetDirection(), scan.GetDirection(), atol=1e-6)
    in_slicer = sitk.GetArrayFromImage(mrml.on_grid_of(written, reference))  # the same voxels in mm as the segment
    np.testing.assert_array_equal(in_slicer, painted.astype(np.uint8))
    assert (sitk.GetArrayFromImage(written) != in_slicer).any()  # re-indexed: a copy of the node's array would differ
    sidecar = json.loads((anat / "sub-t2s_T2starw_label-GM_seg.json").read_text())
    assert sidecar["Model"] == "sciseg-gm-demo" and sidecar["Rater"] == "alice" and sidecar["Version"] == 1
    assert (sidecar["Structure"], sidecar["SNOMEDCode"], sidecar["Terminology"]) == ("gm", "12958003", mrml.GREY_MATTER.terminology)
    assert sidecar["VoxelCount"] == int(painted.sum()) and sidecar["Corrected"] is True
    assert sidecar["VoxelsAdded"] == int((painted & ~gm).sum()) and sidecar["VoxelsRemoved"] == 0
    for suffix, expected_mask in (("SC", after > 0), ("lesion", after == 2)):
        file = sitk.ReadImage(str(anat / f"sub-t2s_T2starw_label-{suffix}_seg.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.on_grid_of(file, reference)), expected_mask.astype(np.uint8))

    # The case opened again (another Slicer session): v001 comes back with its grey matter as the tagged segment, and
    # nothing is unsaved (the grey matter lies in v001's cord).
    opened = panel_case.opening(scene, root, volume, "alice")
    reopened = panel_case.selected_segmentation(scene, logic, opened, volume)
    case = opened.case
    assert case.base.name == "v001" and reopened is not segmentation
    assert mrml.grey_matter_segment(reopened) == "grey_matter" and terminology(reopened, "grey_matter").split("~")[2] == (
        "SCT^12958003^Spinal cord gray matter")
    np.testing.assert_array_equal(mrml.segment_mask(logic, scene, reopened, "grey_matter", volume), painted)
    assert reopened.GetAttribute(panel_grey_matter.MODEL_ATTRIBUTE) == "sciseg-gm-demo"
    assert not case.unsaved(panel_case.labels_zyx(scene, logic, case, reopened, volume))
    assert panel_case.keep_work(scene, logic, case, reopened, volume, "alice") is None

    # Grey-matter edits inside the cord leave the 0/1/2 map as it was, so its draft would not hold them: after a
    # pause they go to alice's grey-matter draft, and leaving the case says so.
    gm_draft = panel_grey_matter.draft_path(case, "alice")
    edited = painted.copy()
    low = int(np.argwhere(painted)[:, 0].min())
    edited[low] |= after[low] == 1
    mrml.set_segment_from_mask(logic, scene, reopened, mrml.GREY_MATTER, mrml.image_from_array_zyx(edited.astype(np.uint8), reference), volume)
    assert panel_case.edits_settled(scene, logic, case, reopened, volume, "alice").draft is None and gm_draft.is_file()
    assert case.drafts() == []  # not a label-map draft of the case
    edited[low + 1] |= after[low + 1] == 1
    mrml.set_segment_from_mask(logic, scene, reopened, mrml.GREY_MATTER, mrml.image_from_array_zyx(edited.astype(np.uint8), reference), volume)
    assert panel_case.keep_work(scene, logic, case, reopened, volume, "alice").startswith(
        "Your unsaved edits of sub-t2s_T2starw are kept as a grey-matter draft by alice")
    # Slicer crashes: the segmentation is gone. Opening the case again for alice brings her grey matter back; for bob,
    # v001's.
    scene.RemoveNode(reopened)
    for rater, expected_gm in (("bob", painted), ("alice", edited)):
        opened = panel_case.opening(scene, root, volume, rater)
        again = panel_case.selected_segmentation(scene, logic, opened, volume)
        assert opened.offer is None and opened.case.base.name == "v001"
        np.testing.assert_array_equal(mrml.segment_mask(logic, scene, again, "grey_matter", volume), expected_gm)
        if rater == "bob":
            scene.RemoveNode(again)
    assert panel_case.keep_work(scene, logic, opened.case, again, volume, "alice") is None  # drafted already
    # Export v002: the grey-matter draft goes, the version holds the edited grey matter, which is now what is saved.
    controller.parameters.segmentation = again
    controller.export()
    wait_for_jobs(controller, timeout_s=300)
    assert view.said[-1].startswith("Exported version v002 (from v001)"), (view.said, view.errors)
    assert not gm_draft.exists()
    exported_gm = sitk.ReadImage(str(anat / "sub-t2s_T2starw_label-GM_seg.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.on_grid_of(exported_gm, reference)), edited.astype(np.uint8))
    assert panel_case.keep_work(scene, logic, opened.case, again, volume, "alice") is None and not gm_draft.exists()

    # The rater deletes the grey-matter segment and exports again: v003 has no grey matter, and the latest copies
    # no longer show v002's (it stays in v002).
    again.GetSegmentation().RemoveSegment("grey_matter")
    controller.export()
    wait_for_jobs(controller, timeout_s=300)
    assert view.said[-1].startswith("Exported version v003 (from v002)"), (view.said, view.errors)
    assert not (anat / "sub-t2s_T2starw_label-GM_seg.nii.gz").exists() and not (anat / "sub-t2s_T2starw_label-GM_seg.json").exists()
    versions = root / "derivatives/labels/.sciseg_versions/sub-t2s/anat/sub-t2s_T2starw"
    assert [len(list((versions / v).glob("*_label-GM_seg*"))) for v in ("v001", "v002", "v003")] == [2, 2, 0]
    controller.shutdown()


def test_the_grey_matter_model_the_segment_choices_and_the_refusals(scene, tmp_path: Path, model_store: Path) -> None:
    scene, logic = scene
    # Which model: the bundled demo while nothing else is installed; an installed GM model (SCT's graymatter) first.
    assert panel_grey_matter.grey_matter_model(models.list_models()) == "sciseg-gm-demo"
    assert panel_grey_matter.segment_model_names(models.list_models()) == ["sciseg-demo"]  # Segment offers no GM model
    models.install(str(GM_DEMO), name="graymatter")
    assert panel_grey_matter.grey_matter_model(models.list_models()) == "graymatter"
    assert panel_grey_matter.model_sentence("graymatter") == "Segmenting the grey matter with graymatter..."
    assert panel_grey_matter.grey_matter_model([models.resolve_model("sciseg-demo")]) is None

    # The button needs a volume and its segmentation, and waits while Segment runs (its result would replace it).
    state = PanelState()
    assert not state.enabled(PanelInputs(input_volume_id="v"))["greyMatterButton"]
    assert state.enabled(PanelInputs(input_volume_id="v", segmentation_id="s"))["greyMatterButton"]
    state.start(Action.SEGMENT, object(), volume_id="v")
    assert not state.enabled(PanelInputs(input_volume_id="v", segmentation_id="s"))["greyMatterButton"]

    # Refused before anything starts: another volume's segmentation; a segmentation that has grey matter already is
    # replaced only when the rater says so.
    root, source, volume, segmentation = t2s_case(scene, logic, tmp_path)
    other = load_with_slicer(scene, shared_file("sct_testing_data/t2/t2.nii.gz"))
    view = RecordingView(scene, PanelInputs(rater="alice", export_folder=str(root)))
    controller = controller_for(scene, logic, view)
    controller.parameters.inputVolume, controller.parameters.segmentation = other, segmentation
    controller.grey_matter()
    assert not controller.state.jobs and view.errors and "was made on" in view.said[-1]
    controller.parameters.inputVolume = volume
    # Cancel stops the grey-matter child at once: nothing is added, its work folder goes.
    controller.grey_matter()
    job = controller.state.jobs[Action.GREY_MATTER]
    controller.cancel()
    assert view.said[-1] == "Cancelling..."
    wait_for_jobs(controller)
    assert view.said[-1] == "Cancelled: nothing was changed." and not job.run.work_dir.exists()
    assert mrml.grey_matter_segment(segmentation) is None
    reference = mrml.image_from_volume_node(volume)
    gm = np.zeros(tuple(reversed(reference.GetSize())), dtype=np.uint8)
    gm[1, 20:24, 20:24] = 1
    panel_grey_matter.add_grey_matter(scene, logic, segmentation, volume, mrml.image_from_array_zyx(gm, reference),
                                      "graymatter", tmp_path)
    view.answers = [False]
    controller.grey_matter()
    assert not controller.state.jobs and view.questions[-1].startswith(f"'{segmentation.GetName()}' already has a grey-matter")
    # A grey matter added by the rater by hand (named, not tagged) is found by its name and replaced in place.
    segmentation.GetSegmentation().RemoveSegment("grey_matter")
    segmentation.GetSegmentation().AddEmptySegment("Segment_7", "Gray matter", [0.5, 0.5, 0.5])
    assert mrml.grey_matter_segment(segmentation) == "Segment_7"
    assert panel_grey_matter.add_grey_matter(scene, logic, segmentation, volume, mrml.image_from_array_zyx(gm, reference),
                                             "graymatter", tmp_path) == "Segment_7"
    assert terminology(segmentation, "Segment_7").split("~")[2] == "SCT^12958003^Spinal cord gray matter"
    # Two grey-matter segments: the export would have to guess, so it refuses with one sentence.
    segmentation.GetSegmentation().AddEmptySegment("gm_2", "GM", [0.5, 0.5, 0.5])
    segmentation.GetSegmentation().GetSegment("gm_2").SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), mrml.GREY_MATTER.terminology)
    with pytest.raises(ValueError, match="several segments are grey matter"):
        panel_grey_matter.export_arguments(scene, logic, segmentation, volume, tmp_path)
    with pytest.raises(ValueError, match="several segments are grey matter"):
        mrml.export_sciseg_label_map(logic, scene, segmentation, volume)
    # Without grey matter, Export passes nothing for it.
    for segment_id in ("Segment_7", "gm_2"):
        segmentation.GetSegmentation().RemoveSegment(segment_id)
    assert panel_grey_matter.export_arguments(scene, logic, segmentation, volume, tmp_path) == []
