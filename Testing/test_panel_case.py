"""The Slicer panel bound to the case model (SCIsegLib/panel_case.py) on slicer-core's real MRML, real scans, real
export children: unsaved work is drafted before the rater leaves a case, offered after a crash, the latest version
opens by default, exports record their parent, and a segmentation is never filed under another case."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is a test dependency (pip install .[test])")

from conftest import shared_file  # noqa: E402
from SCIsegLib import mrml, panel, panel_case, panel_jobs, panel_results  # noqa: E402
from SCIsegLib.panel import Action, Outcome, PanelState  # noqa: E402
from slicer_scene import load_with_slicer  # noqa: E402


def model_labels() -> np.ndarray:
    """The model's labels of t2, (z, y, x) on its file's grid: the manual cord (1) with a 4x4x4 lesion (2)."""
    manual = sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz")))
    labels = (sitk.GetArrayFromImage(manual) > 0).astype(np.uint8)
    labels[20:24, 25:29, 28:32] = 2
    return labels


def dataset(tmp_path: Path) -> Path:
    """A BIDS dataset with two scans on the same grid (t2, and t2 with other voxels: a second session's protocol);
    sub-01 has the model's prediction in derivatives/sciseg (SCT's names), as ``sciseg run`` writes it."""
    root = tmp_path / "bids"
    image = sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2.nii.gz")))
    for subject, scaled in (("01", image), ("02", image * 2)):
        path = root / f"sub-{subject}" / "anat" / f"sub-{subject}_T2w.nii.gz"
        path.parent.mkdir(parents=True)
        sitk.WriteImage(scaled, str(path))
    predicted = root / "derivatives" / "sciseg" / "sub-01" / "anat"
    predicted.mkdir(parents=True)
    for name, mask in (("sc_seg", model_labels() > 0), ("lesion_seg", model_labels() == 2)):
        written = sitk.GetImageFromArray(mask.astype(np.uint8))
        written.CopyInformation(image)
        sitk.WriteImage(written, str(predicted / f"sub-01_T2w_{name}.nii.gz"))
    return root


def scan_path(root: Path, subject: str) -> Path:
    return root / f"sub-{subject}" / "anat" / f"sub-{subject}_T2w.nii.gz"


def paint_lesion(scene, logic, case, segmentation, volume, box) -> np.ndarray:
    """The rater paints lesion voxels in ``box`` (z, y, x slices of the volume's grid in Slicer); returns the new
    label map on the case's grid."""
    labels = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, segmentation, volume))
    labels[box] = 2
    reference = mrml.image_from_volume_node(volume)
    lesion = mrml.image_from_array_zyx((labels == 2).astype(np.uint8), reference)
    cord = mrml.image_from_array_zyx((labels == 1).astype(np.uint8), reference)
    mrml.set_segment_from_mask(logic, scene, segmentation, mrml.LESION, lesion, volume)
    mrml.set_segment_from_mask(logic, scene, segmentation, mrml.CORD, cord, volume)
    return panel_case.labels_zyx(scene, logic, case, segmentation, volume)


def exported(scene, logic, segmentation, volume, root: Path, rater: str, case) -> dict:
    """Export through the real child (``python -m SCIsegLib.panel_export``) as the panel does; its JSON line."""
    command = panel_jobs.start_export(scene, logic, segmentation, volume, str(root), rater, sys.executable, case=case)
    state = PanelState()
    state.start(Action.EXPORT, command)
    deadline = time.monotonic() + 120
    while state.jobs:
        _events, ended = state.poll()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    [finished] = ended
    panel.remove_job_files(finished.job)
    assert finished.outcome == Outcome.SUCCEEDED, finished.message
    return json.loads(command.stdout.strip().splitlines()[-1])


def test_next_case_and_another_volume_keep_unsaved_edits_as_a_draft_offered_after_a_crash(scene, tmp_path: Path) -> None:
    scene, logic = scene
    root = dataset(tmp_path)
    first = load_with_slicer(scene, scan_path(root, "01"))
    opened = panel_case.opening(scene, root, first, rater="alice")
    assert opened.case.base.name == "prediction" and not opened.segment and "the model's prediction" in opened.sentence
    np.testing.assert_array_equal(opened.labels, model_labels())
    assert panel_case.keep_work(scene, logic, opened.case, None, first, "alice") is None
    segmentation = panel_case.segmentation_from_labels(scene, logic, opened.case, first, opened.labels, "sub-01 SCIseg")
    # Opened as is: nothing to keep. Then alice paints a second lesion.
    assert panel_case.keep_work(scene, logic, opened.case, segmentation, first, "alice") is None
    edited = paint_lesion(scene, logic, opened.case, segmentation, first, np.s_[30:33, 25:28, 28:31])
    assert np.count_nonzero(edited != model_labels()) > 0

    # A second segmentation of the case (segmented again): the one the rater selected is the one whose edits count.
    newer = panel_case.segmentation_from_labels(scene, logic, opened.case, first, opened.labels, "sub-01 again")
    assert panel_case.case_segmentation(scene, opened.case, segmentation) is segmentation
    assert panel_case.case_segmentation(scene, opened.case, None) is newer
    scene.RemoveNode(newer)

    # Next case (or another volume): the edits go to alice's draft, atomically, in the dataset's hidden drafts folder.
    sentence = panel_case.keep_work(scene, logic, opened.case, segmentation, first, "alice")
    assert sentence.startswith("Your unsaved edits of sub-01_T2w are kept as a draft by alice")
    [draft_file] = (root / "derivatives" / "labels" / ".drafts").rglob("*.nrrd")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file))), edited)
    assert panel_case.keep_work(scene, logic, opened.case, segmentation, first, "alice") is None  # drafted already

    second = load_with_slicer(scene, scan_path(root, "02"))
    other = panel_case.opening(scene, root, second, rater="alice")
    assert other.case.scan.stem == "sub-02_T2w" and other.segmentation is None and other.segment  # nothing: segment it
    assert panel_case.selected_segmentation(scene, logic, other, second) is None  # never case 1's segmentation
    assert panel_case.segment_after_opening(True, other, None) and not panel_case.segment_after_opening(False, other, None)
    # Case 1's segmentation with case 2's scan: refused even without Slicer's source reference (same grid).
    segmentation.RemoveNodeReferenceIDs(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    with pytest.raises(ValueError, match="was made on sub-01_T2w.nii.gz, not on sub-02_T2w.nii.gz"):
        panel_jobs.start_export(scene, logic, segmentation, second, str(root), "alice", sys.executable, case=other.case)
    assert not (root / "derivatives" / "labels" / "sub-02").exists()

    # Back on case 1 in the same scene: its own segmentation is shown again, with its unsaved state.
    again = panel_case.opening(scene, root, first, rater="alice")
    assert again.segmentation is segmentation and again.case.unsaved(edited)

    # Slicer crashed: a new scene, the case reopened, the draft offered and restored.
    scene.Clear(True)
    first = load_with_slicer(scene, scan_path(root, "01"))
    reopened = panel_case.opening(scene, root, first, rater="alice")
    assert reopened.offer is not None and reopened.offer.rater == "alice" and reopened.offer.base == "prediction"
    restored = panel_case.opening(scene, root, first, rater="alice", draft=reopened.offer)
    np.testing.assert_array_equal(restored.labels, edited)
    assert "your draft by alice" in restored.sentence
    assert not panel_case.segment_after_opening(True, reopened, None)  # Next case: the draft is offered, not overwritten
    node = panel_case.selected_segmentation(scene, logic, restored, first)
    assert node.GetName() == "sub-01_T2w draft" and node.GetAttribute(panel_case.BASE_ATTRIBUTE) == "prediction"
    np.testing.assert_array_equal(panel_case.labels_zyx(scene, logic, restored.case, node, first), edited)


def test_the_latest_version_opens_by_default_and_every_export_records_its_parent(scene, tmp_path: Path) -> None:
    scene, logic = scene
    root = dataset(tmp_path)
    volume = load_with_slicer(scene, scan_path(root, "01"))
    opened = panel_case.opening(scene, root, volume, rater="alice")
    segmentation = panel_case.segmentation_from_labels(scene, logic, opened.case, volume, opened.labels, "sub-01 SCIseg")
    edited = paint_lesion(scene, logic, opened.case, segmentation, volume, np.s_[30:33, 25:28, 28:31])
    first = exported(scene, logic, segmentation, volume, root, "alice", opened.case)
    assert (first["version"], first["parent"], first["warning"]) == (1, "prediction", None)
    assert panel_results.export_summary(json.dumps(first)).startswith("Exported version v001 (from prediction)")

    # Reopened (a new scene): v001 by alice, not the prediction; bob corrects it further.
    scene.Clear(True)
    volume = load_with_slicer(scene, scan_path(root, "01"))
    opened = panel_case.opening(scene, root, volume, rater="bob")
    assert opened.case.base.name == "v001" and "v001 by alice" in opened.sentence and not opened.segment
    np.testing.assert_array_equal(opened.labels, edited)
    bobs = panel_case.segmentation_from_labels(scene, logic, opened.case, volume, opened.labels, "sub-01 v001")
    paint_lesion(scene, logic, opened.case, bobs, volume, np.s_[10:12, 25:27, 28:30])
    second = exported(scene, logic, bobs, volume, root, "bob", opened.case)
    assert (second["version"], second["parent"], second["warning"]) == (2, "v001", None)
    sidecar = json.loads((Path(second["folder"]) / "sub-01_T2w_dseg.json").read_text())
    assert sidecar["Parent"] == {"Kind": "version", "Version": 1} and sidecar["Rater"] == "bob"

    # A segmentation that started from the prediction while v001 and v002 exist: exported as v003, with a warning.
    stale = panel_case.segmentation_from_labels(scene, logic, opened.case, volume, model_labels(), "stale")
    stale.SetAttribute(panel_case.BASE_ATTRIBUTE, "prediction")
    third = exported(scene, logic, stale, volume, root, "carol", opened.case)
    assert third["version"] == 3 and third["parent"] == "prediction" and "v001, v002 existed" in third["warning"]


def test_the_live_lesion_table_follows_the_strokes_numbered_as_sciseg_analyze(scene, tmp_path: Path) -> None:
    """A stroke fires the segmentation's event; once the rater pauses the table and the numbers at the lesions are
    recomputed in process: same numbers, volumes and centres as ``sciseg analyze`` (SCIsegLib.lesions)."""
    from SCIsegLib.lesions import analyze_lesions
    from SCIsegLib.panel_lesions import EditDebounce, live_lesions, live_table_rows

    scene, logic = scene
    root = dataset(tmp_path)
    volume = load_with_slicer(scene, scan_path(root, "01"))
    opened = panel_case.opening(scene, root, volume)
    segmentation = panel_case.segmentation_from_labels(scene, logic, opened.case, volume, opened.labels, "sub-01 SCIseg")
    strokes = []
    # What the widget observes: the node, which re-invokes its segmentation's SourceRepresentationModified.
    observer = segmentation.AddObserver(slicer.vtkSegmentation.SourceRepresentationModified,
                                        lambda caller, event: strokes.append(event))
    debounce = EditDebounce(quiet_s=1.0)
    paint_lesion(scene, logic, opened.case, segmentation, volume, np.s_[40:43, 26:29, 29:32])
    assert strokes, "a stroke must reach the panel through the segmentation's SourceRepresentationModified event"
    segmentation.RemoveObserver(observer)
    debounce.touch(100.0)
    assert not debounce.due(100.5) and debounce.due(101.2) and not debounce.due(102.0)  # once, after a pause

    labels = mrml.export_sciseg_label_map(logic, scene, segmentation, volume)
    lesions = live_lesions(labels)
    reference = analyze_lesions(sitk.Cast(labels == 2, sitk.sitkUInt8), sitk.Cast(labels > 0, sitk.sitkUInt8))
    assert [lesion.number for lesion in lesions] == reference.table["label"].astype(int).tolist() and len(lesions) == 2
    np.testing.assert_allclose([lesion.volume_mm3 for lesion in lesions], reference.table["volume [mm3]"], rtol=1e-6)
    centres = mrml.lesion_centroids_ras(reference.labels)
    for lesion in lesions:
        np.testing.assert_allclose(lesion.centre_ras, centres[lesion.number], atol=1e-6)

    settled = panel_case.edits_settled(scene, logic, opened.case, segmentation, volume, "alice")  # what the panel runs
    table, points = settled.table, settled.points
    assert settled.centres == {lesion.number: lesion.centre_ras for lesion in lesions}
    assert settled.draft is not None and settled.draft.rater == "alice"  # the same pause drafted the stroke
    again = panel_case.edits_settled(scene, logic, opened.case, segmentation, volume, "alice", table, points)
    assert again.draft is None and (again.table, again.points) == (table, points)  # drafted already: nothing written
    assert table.GetNumberOfRows() == 2 and points.GetNumberOfControlPoints() == 2
    for row, lesion in enumerate(lesions):  # the number shown where the lesion is; a click on row k goes to lesion k
        assert points.GetNthControlPointLabel(row) == str(lesion.number)
        position = [0.0, 0.0, 0.0]
        points.GetNthControlPointPosition(row, position)
        np.testing.assert_allclose(position, lesion.centre_ras, atol=1e-6)
        by_number = {lesion.number: lesion.centre_ras for lesion in lesions}
        assert panel_results.lesion_centre_for_row(table, table.GetID(), row, by_number) == lesion.centre_ras
    # The rater removes every lesion: the same nodes empty out.
    empty = sitk.Cast(labels > 0, sitk.sitkUInt8)
    again = mrml.show_live_lesions(scene, "sub-01", *live_table_rows(live_lesions(empty)), table=table, points=points)
    assert again == (table, points) and table.GetNumberOfRows() == 0 and points.GetNumberOfControlPoints() == 0


def test_without_a_case_the_previous_volumes_segmentation_is_never_selected_for_the_next(scene, tmp_path: Path) -> None:
    """No export folder (no case): another volume selects the newest segmentation made on it, or none."""
    scene, logic = scene
    root = dataset(tmp_path)
    first = load_with_slicer(scene, scan_path(root, "01"))
    second = load_with_slicer(scene, scan_path(root, "02"))
    nothing = panel_case.opening(scene, "", first)
    assert nothing.case is None and nothing.sentence.startswith("No export folder (BIDS dataset) is set: 'sub-01_T2w' has")
    assert "not drafted" in nothing.sentence  # before, nothing said that edits of this scan are not kept anywhere
    unsaved = mrml.add_volume_node(scene, mrml.image_from_volume_node(second), "made in Slicer")
    made_here = panel_case.opening(scene, root, unsaved)
    assert made_here.case is None and made_here.sentence.startswith("'made in Slicer' was not loaded from a file")
    made = mrml.import_sciseg_masks(logic, scene, first, *(mrml.image_from_volume_node(first) * 0,) * 2)
    assert panel_case.paired_segmentation(scene, first) is made
    assert panel_case.paired_segmentation(scene, second) is None
    export = {"version": 4, "folder": "x", "parent": "v003", "warning": None}
    assert panel_case.after_export(made, json.dumps(export)) == "v004" and made.GetAttribute(panel_case.BASE_ATTRIBUTE) == "v004"


KILLED_SESSION = """
import sys, time
sys.path.insert(0, {testing!r})
import numpy as np, slicer
from pathlib import Path
from SCIsegLib import panel_case
from slicer_scene import load_with_slicer
from test_panel_case import paint_lesion, scan_path
scene = slicer.vtkMRMLScene()
logic = slicer.vtkSlicerSegmentationsModuleLogic()
logic.SetMRMLScene(scene)
root = Path({root!r})
volume = load_with_slicer(scene, scan_path(root, "01"))
opened = panel_case.opening(scene, root, volume, rater="alice")
node = panel_case.segmentation_from_labels(scene, logic, opened.case, volume, opened.labels, "sub-01 SCIseg")
first = paint_lesion(scene, logic, opened.case, node, volume, np.s_[30:33, 25:28, 28:31])
assert panel_case.edits_settled(scene, logic, opened.case, node, volume, "alice").draft is not None  # the rater paused
np.save({first_path!r}, first)
paint_lesion(scene, logic, opened.case, node, volume, np.s_[40:42, 25:27, 28:30])  # a last stroke, no pause
print("painted", flush=True)
time.sleep(600)
"""


def test_a_kill_9_mid_edit_loses_at_most_the_strokes_since_the_last_pause(scene, tmp_path: Path) -> None:
    """Slicer killed (SIGKILL) while alice edits: reopened, the case offers her draft, which holds every stroke
    up to her last pause (the panel drafts ~1 s after each pause); only the strokes after it are lost."""
    import signal
    import subprocess

    from conftest import REPOSITORY

    scene, logic = scene
    root = dataset(tmp_path)
    first_path = tmp_path / "first.npy"
    code = KILLED_SESSION.format(testing=str(REPOSITORY / "Testing"), root=str(root), first_path=str(first_path))
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPOSITORY, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "painted"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    volume = load_with_slicer(scene, scan_path(root, "01"))
    reopened = panel_case.opening(scene, root, volume, rater="alice")
    assert reopened.offer is not None and reopened.offer.rater == "alice"
    restored = panel_case.opening(scene, root, volume, rater="alice", draft=reopened.offer)
    np.testing.assert_array_equal(restored.labels, np.load(first_path))
    # No partial file was left beside the draft (each is written to a temporary name, then renamed).
    assert [p.name for p in (root / "derivatives" / "labels" / ".drafts").rglob("*") if p.is_file()] == [reopened.offer.path.name]


def test_an_export_removes_only_the_drafts_its_version_holds(tmp_path: Path) -> None:
    """The export child removed the rater's draft whatever it held; a draft written after the exported labels were
    taken (edits made while the export ran, or drafted as the scene closed) and holding other labels now stays."""
    import os

    from SCIsegLib.cases import Case
    from SCIsegLib.cases.drafts import draft_folder, draft_holds_more, write_draft

    root = dataset(tmp_path)
    case = Case.open(root, scan_path(root, "01"))
    exported = case.labels.copy()
    exported[20:23, 26:29, 29:32] = 2
    later = exported.copy()
    later[30:33, 26:29, 29:32] = 2
    taken = 1_000_000.0  # a file time (s); the drafts' times are set around it
    outcomes = {}
    for name, labels, delta in (("before", later, -5), ("same", exported, 5), ("later", later, 5)):
        draft = write_draft(draft_folder(root, case.scan), case.scan, name, labels, case.base.name)
        os.utime(draft.path, (taken + delta, taken + delta))
        outcomes[name] = draft_holds_more(draft.path, case.scan, exported, taken)
    assert outcomes == {"before": False, "same": False, "later": True}
    assert not draft_holds_more(case.drafts()[0].path, case.scan, exported, None)  # no time given: every draft goes

    later_draft = write_draft(draft_folder(root, case.scan), case.scan, "alice", later, case.base.name)
    outcome = case.export(case.scan.grid.image_of(exported), "alice", drawn_on=None,
                          labels_taken=later_draft.path.stat().st_mtime - 1)
    assert outcome.result.version == 1 and later_draft.path.is_file()
    earlier = write_draft(draft_folder(root, case.scan), case.scan, "bob", later, case.base.name)
    case.export(case.scan.grid.image_of(later), "bob", drawn_on=None, labels_taken=earlier.path.stat().st_mtime + 1)
    assert not earlier.path.exists()
