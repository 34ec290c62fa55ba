"""The panel's controller and case session (SCIsegLib/panel_controller.py, panel_session.py) driven as the widget
drives them, on slicer-core's real MRML with real scans and real children; the view records what it is told.
Every decision SCIseg.py used to make is asserted here on its outcome."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is a test dependency (pip install .[test])")

from SCIsegLib import mrml, panel, panel_binding, panel_case, panel_controller, panel_view  # noqa: E402
from SCIsegLib.panel import Action, PanelInputs  # noqa: E402
from slicer_scene import PanelParameters, RecordingView, load_with_slicer  # noqa: E402
from test_panel import PythonChild  # noqa: E402
from test_panel_case import dataset, paint_lesion, scan_path  # noqa: E402


def controller_for(scene, logic, view, ensure=lambda action: True, installed=None):
    controller = panel_controller.PanelController(scene, logic, view, sys.executable, ensure, installed)
    controller.parameters = PanelParameters()
    return controller


def wait_for_jobs(controller, timeout_s: float = 120.0) -> None:
    """Poll as the widget's 200 ms timer does, until no job runs."""
    deadline = time.monotonic() + timeout_s
    while controller.state.jobs:
        controller.poll(probe=lambda: None)
        assert time.monotonic() < deadline, "the job never finished"
        time.sleep(0.02)


def test_a_selected_volume_opens_its_case_edits_are_drafted_and_segment_again_drafts_first(scene, tmp_path: Path) -> None:
    scene, logic = scene
    root = dataset(tmp_path)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a label map")
    first = load_with_slicer(scene, scan_path(root, "01"))
    second = load_with_slicer(scene, scan_path(root, "02"))
    view = RecordingView(scene, PanelInputs(rater="alice", export_folder=str(root)))
    controller = controller_for(scene, logic, view)
    now = [100.0]
    controller.session.clock = lambda: now[0]

    # Nothing selected: the first scan, never the label map listed before it (the selector hides label maps).
    controller.select_first_scan()
    assert controller.parameters.inputVolume is first and labelmap.IsA("vtkMRMLScalarVolumeNode")
    # The parameter node's observer fires several times: the case opens once, after the slot returned.
    controller.session.selection_changed()
    controller.session.selection_changed()
    assert view.run_later() == 1 and controller.state.case_volume_id == first.GetID()
    segmentation = controller.parameters.segmentation
    assert segmentation.GetName() == "sub-01_T2w prediction" and "the model's prediction" in view.said[-1]
    assert mrml.pairing_problem(segmentation, first) is None
    shown = PanelInputs.of(controller.parameters, segmentation, True, "alice", str(root), "")
    assert (shown.input_volume_id, shown.segmentation_id, shown.compare_id) == (first.GetID(), segmentation.GetID(), segmentation.GetID())
    assert PanelInputs.of(None, None, False, "", "", "") == PanelInputs()

    # The selected segmentation's strokes are observed (a real VTK observer); after a 1 s pause the edits are
    # drafted and the live lesion table, which has a lesion, is shown once, in a layout with a table view.
    controller.session.selection_changed()
    assert controller.session.observed is segmentation and not controller.session.edits.due(now[0])
    edited = paint_lesion(scene, logic, controller.session.case, segmentation, first, np.s_[40:43, 26:29, 29:32])
    assert controller.session.edits.pending
    controller.session.tick()
    assert controller.session.edits.pending  # not yet: the rater may go on
    now[0] += 1.5
    controller.session.tick()
    assert view.said[-1].startswith("Unsaved edits kept as a draft by alice") and "(started from prediction)" in view.said[-1]
    [draft_file] = (root / "derivatives" / "labels" / ".drafts").rglob("*.nrrd")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file))), edited)
    [(table, chart)] = view.tables
    assert chart is None and table.GetNumberOfRows() == 2
    label = table.GetColumnIndex("label")
    centre = controller.session.lesion_centre(table, 0)  # view row 0 is table row 0 (column titles are the header)
    assert centre == controller.session.lesion_tables[table.GetID()][int(float(table.GetCellText(0, label)))]
    assert controller.session.lesion_centre(None, 0) is None
    controller.row_clicked(table, [1], 0)  # the selected row, not the current index (a keyboard move)
    controller.row_clicked(table, [], 0)  # no selection: the current index
    controller.row_clicked(None, [0], 0)  # another table view
    assert view.jumps == [controller.session.lesion_centre(table, 1), centre]
    paint_lesion(scene, logic, controller.session.case, segmentation, first, np.s_[46:49, 26:29, 29:32])
    now[0] += 1.5
    controller.session.tick()
    assert len(view.tables) == 1 and table.GetNumberOfRows() == 3  # the same table follows the strokes

    # Edit selects the lesion segment in Segment Editor.
    controller.edit()
    assert view.editors == [(segmentation, first, mrml.lesion_to_select(segmentation))]
    assert view.editors[0][2] is not None

    # Segment again: the corrected segmentation's edits are drafted before the new result can replace them.
    drafted = draft_file.stat().st_mtime_ns
    paint_lesion(scene, logic, controller.session.case, segmentation, first, np.s_[40:42, 25:27, 28:30])
    controller.parameters.model = "no-such-model"  # the child refuses it; the draft is what counts here
    view.answers.append(True)  # "Segment again anyway?" (test_segment_again_on_corrections_not_exported_asks_first)
    controller.segment()
    assert view.said[-2].startswith("Your unsaved edits of sub-01_T2w are kept as a draft by alice")
    assert draft_file.stat().st_mtime_ns != drafted and view.said[-1] == "Starting..."
    assert controller.state.jobs[Action.SEGMENT].volume_id == first.GetID() and view.per_mille == 0
    wait_for_jobs(controller)
    assert view.said[-1].startswith("Failed: ") and view.errors and view.log_shown

    # Another volume: its case opens with nothing to show (no prediction), never case 1's segmentation.
    controller.parameters.inputVolume = second
    controller.session.selection_changed()
    assert view.run_later() == 1 and controller.parameters.segmentation is None
    assert controller.session.case.scan.stem == "sub-02_T2w" and controller.session.case_of(first) is None
    controller.shutdown()


def queued_panel(scene, logic, tmp_path: Path, scores: dict[str, float]):
    """The test dataset, a review queue of its scans (subject -> uncertainty score) and a panel with both set."""
    root = dataset(tmp_path)
    queue = tmp_path / "queue.json"
    scans = {str(scan_path(root, s)): {"path": str(scan_path(root, s)), "score": score} for s, score in scores.items()}
    queue.write_text(json.dumps({"scans": scans}))
    view = RecordingView(scene, PanelInputs(rater="alice", export_folder=str(root), queue_path=str(queue)))
    return queue, view, controller_for(scene, logic, view)


def test_next_case_loads_the_queues_scan_and_segments_it_when_its_case_has_nothing(scene, tmp_path: Path) -> None:
    scene, logic = scene
    queue, view, controller = queued_panel(scene, logic, tmp_path, {"01": 0.2, "02": 0.9})
    controller.next_case()
    assert view.settings == {"SCIseg/Queue": str(queue)} and view.said[-1] == "Looking for the next case..."
    wait_for_jobs(controller)
    volume = controller.parameters.inputVolume
    assert volume is not None and volume.GetName() == "sub-02_T2w" and controller.session.segment_when_opened
    controller.session.selection_changed()
    assert view.run_later() == 1  # the case opened: nothing to show, so Segment is queued
    assert controller.parameters.segmentation is None and view.queued == [controller.segment]
    assert not controller.session.segment_when_opened


def test_why_an_action_did_not_start_and_what_a_finished_job_shows(scene, tmp_path: Path) -> None:
    scene, logic = scene
    view = RecordingView(scene)
    installing = []
    controller = controller_for(scene, logic, view, ensure=lambda action: installing.append(controller.state.installing_dependencies))
    assert not controller.ready(Action.MEASURE)  # the installer said no
    assert installing == [True] and not controller.state.installing_dependencies  # every action widget was disabled
    assert view.said[-1].startswith("Not started: ") and view.said[-1].endswith(" must be installed first.")

    installed = ["Installed torch 2.5.1+cu124 (CUDA 12.4)"]
    controller = controller_for(scene, logic, view, ensure=lambda action: True, installed=installed)
    controller.state.devices = {"cpu": "x86_64"}
    assert controller.ready(Action.SEGMENT)
    assert view.said[-1] == "Installed torch 2.5.1+cu124 (CUDA 12.4)" and installed == [] and view.devices == 1
    assert controller.state.devices is None and controller.state.probe_wanted  # torch arrived: probe again
    controller.state.start(Action.MEASURE, PythonChild("import sys; sys.stderr.write('sciseg: the lesion mask is empty.\\n'); sys.exit(2)"))
    asked = len(installing)
    assert not controller.ready(Action.MEASURE) and len(installing) == asked  # one measure at a time

    wait_for_jobs(controller)
    assert view.said[-1] == "Failed: the lesion mask is empty." and view.errors[-1][0] == "the lesion mask is empty."
    assert "the lesion mask is empty." in view.errors[-1][1] and view.log_shown
    job = controller.state.start(Action.SEGMENT, PythonChild("import time; time.sleep(30)"))
    controller.cancel()
    assert view.said[-1] == "Cancelling..." and job.cancel_requested
    view.per_mille = 500
    wait_for_jobs(controller)
    assert view.said[-1] == "Cancelled: nothing was changed." and view.per_mille == 0

    # The end of a job whose result cannot be shown: the reason is shown, the other jobs go on.
    job = panel.Job(Action.MEASURE, PythonChild("pass"), volume_id="vtkMRMLScalarVolumeNode999")
    wait = time.monotonic() + 30
    while not job.run.finished and time.monotonic() < wait:
        job.run.poll()
    with pytest.raises(ValueError, match="removed from the scene"):
        controller.finished(panel.decide(job))
    assert view.failures[-1] == "The measurements could not be shown."


def test_the_panels_sentences_and_model_choice() -> None:
    assert panel_view.measurement_sentence(0, 12) == "No lesion: the tissue bridges are the cord A-P diameter at the NLI slice 12."
    assert panel_view.measurement_sentence(2, -1) == "2 lesion(s) measured: click a row to jump to the lesion."
    assert panel_view.segment_tooltip(True) != panel_view.segment_tooltip(False)
    assert panel_view.not_ready_sentence([]) == "Not started: a dependency must be installed first."
    assert panel_view.segment_subject(True) == "lesion" and panel_view.segment_subject(False) == "spinal cord"
    # A scene saved elsewhere names a model this computer lacks: Segment runs the model shown; none shown: unchanged.
    assert panel_controller.model_to_run("sciseg-v2", "sciseg-demo", 1) == "sciseg-demo"
    assert panel_controller.model_to_run("sciseg-v2", "", 0) == "sciseg-v2"
    view = RecordingView(None)
    controller = panel_controller.PanelController(None, None, view, sys.executable, lambda action: True)
    controller.parameters = PanelParameters(model="sciseg-v2")
    controller.model_shown("sciseg-demo", 1)
    assert controller.parameters.model == "sciseg-demo" and view.said == []  # shown at start-up: no warning
    controller.model_chosen("sciseg-demo", 1)
    assert view.said == [panel_view.DEMO_WARNING]
    controller.device_chosen(-1, None)
    assert controller.parameters.device == "auto"
    controller.device_chosen(1, "cuda")
    assert controller.parameters.device == "cuda"
    controller.report_versions(["nnunetv2 2.6.2 is installed but SCIseg was tested with 2.8.1."])
    assert view.said[-1].startswith("nnunetv2 2.6.2") and view.logged == [view.said[-1]]
    options = panel_controller.run_options(PanelParameters(model="m", device="cpu", stepSize=0.7, fillHoles=True))
    assert (options.model, options.device, options.step, options.fill_holes, options.tta) == ("m", "cpu", 0.7, True, False)


def test_the_timer_is_not_re_entered_from_a_dialog_of_a_finished_job(scene, tmp_path: Path) -> None:
    """An error dialog runs a nested event loop in which the 200 ms timer fires again: that poll does nothing, so a
    job that ends while the dialog is open is shown after it closed, never inside it."""
    scene, logic = scene
    opened = tmp_path / "dialog-open"

    class DialogView(RecordingView):
        depth = 0
        deepest = 0

        def error(self, message: str, detail: str = "") -> None:
            self.depth += 1
            self.deepest = max(self.deepest, self.depth)
            opened.touch()  # the compare child ends while this dialog is open
            compare = controller.state.jobs.get(Action.COMPARE)
            while compare is not None and not compare.run.finished:
                compare.run.poll()
            controller.poll(probe=lambda: None)  # the timer firing inside the dialog's event loop
            super().error(message, detail)
            self.depth -= 1

    view = DialogView(scene)
    controller = controller_for(scene, logic, view)
    controller.state.start(Action.MEASURE, PythonChild("import sys; sys.stderr.write('sciseg: measure failed.\\n'); sys.exit(2)"))
    controller.state.start(Action.COMPARE, PythonChild(
        f"import os, sys, time\nwhile not os.path.exists({str(opened)!r}): time.sleep(0.01)\n"
        "sys.stderr.write('sciseg: compare failed.\\n'); sys.exit(2)"))
    measure = controller.state.jobs[Action.MEASURE]
    while not measure.run.finished:
        measure.run.poll()
    controller.poll(probe=lambda: None)
    assert [message for message, _detail in view.errors] == ["measure failed."]
    controller.poll(probe=lambda: None)
    assert [message for message, _detail in view.errors] == ["measure failed.", "compare failed."] and view.deepest == 1


def test_scene_close_and_exit_draft_the_open_cases_edits_and_forget_the_scene(scene, tmp_path: Path) -> None:
    scene, logic = scene
    root = dataset(tmp_path)
    first = load_with_slicer(scene, scan_path(root, "01"))
    view = RecordingView(scene, PanelInputs(rater="bob", export_folder=str(root)))
    controller = controller_for(scene, logic, view)
    controller.parameters.inputVolume = first
    controller.session.selection_changed()
    view.run_later()
    segmentation = controller.parameters.segmentation
    edited = paint_lesion(scene, logic, controller.session.case, segmentation, first, np.s_[40:43, 26:29, 29:32])
    controller.state.start(Action.MEASURE, PythonChild("import time; time.sleep(30)"))
    controller.scene_closing()  # before the nodes go: the edits are drafted, the measure stops, the case is forgotten
    assert view.said[-1].startswith("Your unsaved edits of sub-01_T2w are kept as a draft by bob")
    [draft_file] = (root / "derivatives" / "labels" / ".drafts").rglob("*.nrrd")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file))), edited)
    assert controller.session.case is None and controller.state.case_volume_id is None and controller.session.observed is None
    assert controller.state.jobs[Action.MEASURE].cancel_requested
    wait_for_jobs(controller)
    assert view.said[-1].startswith("The scene was closed before measure ended")

    # Exit (or Reload): every child stops and the session's prediction folder goes.
    controller.predictions = str(tmp_path / "predictions")
    Path(controller.predictions).mkdir()
    controller.state.start(Action.COMPARE, PythonChild("import time; time.sleep(30)"))
    controller.shutdown()
    assert not controller.state.jobs and not Path(controller.predictions).exists()


def opened_and_corrected(scene, logic, tmp_path: Path, rater: str = "alice"):
    """sub-01's case opened in the panel (the model's prediction), a lesion painted and drafted after a pause."""
    root = dataset(tmp_path)
    first = load_with_slicer(scene, scan_path(root, "01"))
    view = RecordingView(scene, PanelInputs(rater=rater, export_folder=str(root)))
    controller = controller_for(scene, logic, view)
    now = [100.0]
    controller.session.clock = lambda: now[0]
    controller.parameters.inputVolume = first
    controller.session.selection_changed()
    assert view.run_later() == 1
    segmentation = controller.parameters.segmentation
    controller.session.selection_changed()
    edited = paint_lesion(scene, logic, controller.session.case, segmentation, first, np.s_[40:43, 26:29, 29:32])
    now[0] += 1.5
    controller.session.tick()
    [draft_file] = (root / "derivatives" / "labels" / ".drafts").rglob("*.nrrd")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file))), edited)
    return root, first, view, controller, now, segmentation, draft_file


def test_segment_again_on_corrections_not_exported_asks_first(scene, tmp_path: Path) -> None:
    """Segment again made a new segmentation the case's: the first autosave of its edits replaced the draft of the
    corrections, which then lived only in the old node and were lost with the scene, without a word. Now Segment
    asks; No starts nothing and leaves the corrections and their draft as they were."""
    scene, logic = scene
    root, first, view, controller, now, segmentation, draft_file = opened_and_corrected(scene, logic, tmp_path)
    drafted = draft_file.read_bytes()
    view.answers.append(False)
    controller.segment()
    [question] = view.questions
    assert question.startswith("Your corrections of sub-01_T2w in 'sub-01_T2w prediction' are not exported.")
    assert Action.SEGMENT not in controller.state.jobs and view.said[-1] == "Not segmented: export your corrections first."
    assert draft_file.read_bytes() == drafted and controller.parameters.segmentation is segmentation

    # Grey matter the rater edited counts as unsaved too; back to what was opened, nothing is asked.
    assert controller.session.unsaved_segmentation(first) is segmentation
    case, reference = controller.session.case, mrml.image_from_volume_node(first)
    opened = sitk.GetArrayFromImage(mrml.on_grid_of(case.scan.grid.image_of(case.labels), reference))  # the volume's grid
    for spec, mask in ((mrml.CORD, opened == 1), (mrml.LESION, opened == 2)):
        mrml.set_segment_from_mask(logic, scene, segmentation, spec, mrml.image_from_array_zyx(mask.astype(np.uint8), reference), first)
    assert controller.session.unsaved_segmentation(first) is None
    gm = np.zeros_like(opened)
    gm[30:33, 26:29, 29:32] = 1
    mrml.set_segment_from_mask(logic, scene, segmentation, mrml.GREY_MATTER, mrml.image_from_array_zyx(gm, reference), first)
    assert controller.session.unsaved_segmentation(first) is segmentation
    mrml.set_segment_from_mask(logic, scene, segmentation, mrml.GREY_MATTER, mrml.image_from_array_zyx(gm * 0, reference), first)
    from SCIsegLib import panel_grey_matter_case

    panel_grey_matter_case.mark_saved(segmentation, gm * 0)
    controller.parameters.model = "no-such-model"  # the child refuses it: only the question matters here
    controller.segment()
    assert len(view.questions) == 1 and Action.SEGMENT in controller.state.jobs
    wait_for_jobs(controller)
    controller.shutdown()


def test_edits_made_while_an_export_runs_are_drafted_again_when_it_ends(scene, tmp_path: Path) -> None:
    """The export child removes the rater's draft once its version is written; strokes painted after the click
    (drafted after a pause meanwhile) are in no version and their draft was gone: a kill -9 then lost them. Now the
    panel drafts them again when it shows the finished export, and says so."""
    scene, logic = scene
    root, first, view, controller, now, segmentation, draft_file = opened_and_corrected(scene, logic, tmp_path)
    exported = panel_case.labels_zyx(scene, logic, controller.session.case, segmentation, first)
    controller.export()
    child = controller.state.jobs[Action.EXPORT].run
    os.kill(child.process.pid, signal.SIGSTOP)  # held until the later strokes are drafted: no race with its discard
    try:
        later = paint_lesion(scene, logic, controller.session.case, segmentation, first, np.s_[46:49, 26:29, 29:32])
        now[0] += 1.5
        controller.session.tick()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file))), later)
    finally:
        os.kill(child.process.pid, signal.SIGCONT)
    wait_for_jobs(controller)
    [version] = (root / "derivatives" / "labels" / ".sciseg_versions").rglob("v001")
    [dseg] = version.glob("*_dseg.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(dseg))), exported)
    assert draft_file.is_file(), "the edits made while the export ran have no draft"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file))), later)
    assert view.said[-1].startswith("Exported version v001 (from prediction)")
    assert "Your edits made while it ran are not in it: they are kept as a draft by alice" in view.said[-1]

    # An export with nothing painted meanwhile leaves no draft and says only what it wrote.
    controller.export()
    wait_for_jobs(controller)
    assert not draft_file.exists() and view.said[-1].startswith("Exported version v002 (from v001)")
    assert "while it ran" not in view.said[-1]
    controller.shutdown()


def test_undo_in_segment_editor_is_drafted_like_a_stroke(scene, tmp_path: Path) -> None:
    """Segment Editor's Undo restores whole segments (vtkSegmentationHistory::RestoreState, called by
    vtkSlicerSegmentEditorLogic::Undo in a modify block, Slicer 5.10) and fires SegmentModified, not the stroke
    event: the undone stroke stayed in the draft (a crash brought it back) and in the live lesion list."""
    scene, logic = scene
    root, first, view, controller, now, segmentation, draft_file = opened_and_corrected(scene, logic, tmp_path)
    before = sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file)))
    history = slicer.vtkSegmentationHistory()
    history.SetSegmentation(segmentation.GetSegmentation())
    history.SaveState()  # Segment Editor saves the state before each stroke
    stroke = paint_lesion(scene, logic, controller.session.case, segmentation, first, np.s_[46:49, 26:29, 29:32])
    now[0] += 1.5
    controller.session.tick()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file))), stroke)
    rows = controller.session.live[0].GetNumberOfRows()

    was_modifying = segmentation.StartModify()  # vtkSlicerSegmentEditorLogic::Undo: MRMLNodeModifyBlocker around it
    assert history.RestorePreviousState()
    segmentation.EndModify(was_modifying)
    assert controller.session.edits.pending, "the undo is not seen"
    now[0] += 1.5
    controller.session.tick()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file))), before)
    assert controller.session.live[0].GetNumberOfRows() == rows - 1  # the undone lesion left the live list
    controller.shutdown()


def test_an_export_that_ends_after_the_scene_closed_keeps_later_edits_and_leaves_the_new_scene_alone(scene, tmp_path: Path) -> None:
    """The scene closes (or Slicer exits) while an export runs: the close drafts the edits made since the click, then
    the export child removed that draft (they were lost), and the finished export set its version as the base of the
    new scene's segmentation that reuses the old node id (another opening's lineage)."""
    scene, logic = scene
    root, first, view, controller, now, segmentation, draft_file = opened_and_corrected(scene, logic, tmp_path)
    exported = panel_case.labels_zyx(scene, logic, controller.session.case, segmentation, first)
    old_id = segmentation.GetID()
    controller.export()
    child = controller.state.jobs[Action.EXPORT].run
    os.kill(child.process.pid, signal.SIGSTOP)  # the export is still running when the scene closes
    try:
        later = paint_lesion(scene, logic, controller.session.case, segmentation, first, np.s_[46:49, 26:29, 29:32])

        def start_close(*unused) -> None:  # SCIseg.py's onSceneStartClose
            controller.scene_closing()
            controller.parameters = None

        tag = scene.AddObserver(scene.StartCloseEvent, start_close)
        scene.Clear(0)
        scene.RemoveObserver(tag)
        assert view.said[-1].startswith("Your unsaved edits of sub-01_T2w are kept as a draft by alice")
        controller.parameters = PanelParameters()  # onSceneEndClose with the module shown
        again = load_with_slicer(scene, scan_path(root, "01"))
        controller.parameters.inputVolume = again
        controller.session.selection_changed()
        view.answers.append(False)  # the draft of the closed scene is offered; not restored now
        assert view.run_later() == 1 and "was never exported" in view.questions[-1]
        reopened = controller.parameters.segmentation
        assert reopened.GetID() == old_id and reopened.GetAttribute(panel_case.BASE_ATTRIBUTE) == "prediction"
    finally:
        os.kill(child.process.pid, signal.SIGCONT)
    wait_for_jobs(controller)
    assert view.said[-1].startswith("Exported version v001 (from prediction)")
    [version] = (root / "derivatives" / "labels" / ".sciseg_versions").rglob("v001")
    [dseg] = version.glob("*_dseg.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(dseg))), exported)
    assert draft_file.is_file(), "the export removed the draft of the edits made after its click"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file))), later)
    assert reopened.GetAttribute(panel_case.BASE_ATTRIBUTE) == "prediction", "the old scene's export rebased a new node"
    controller.shutdown()


def test_a_selected_segmentation_not_made_for_the_case_says_its_edits_are_not_drafted(scene, tmp_path: Path) -> None:
    """Drafts are written only for a segmentation bound to the open case; one made in Segment Editor (or imported)
    and selected in the panel was edited with no draft and no word about it."""
    scene, logic = scene
    root, first, view, controller, now, segmentation, draft_file = opened_and_corrected(scene, logic, tmp_path)
    reference = mrml.image_from_volume_node(first)
    own = mrml.import_sciseg_masks(logic, scene, first, *(reference * 0,) * 2, name="made in Segment Editor")
    controller.parameters.segmentation = own
    controller.session.selection_changed()
    assert view.said[-1].startswith("'made in Segment Editor' was not made for the case sub-01_T2w: its edits are not drafted")
    drafted = draft_file.read_bytes()
    paint_lesion(scene, logic, None, own, first, np.s_[46:49, 26:29, 29:32])
    now[0] += 1.5
    controller.session.tick()
    assert draft_file.read_bytes() == drafted  # as said: the case's draft is not this segmentation's
    controller.parameters.segmentation = segmentation  # the case's own: nothing to say
    said = len(view.said)
    controller.session.selection_changed()
    assert len(view.said) == said
    controller.shutdown()


def test_next_case_finds_the_open_scan_again_and_loads_no_second_copy(scene, tmp_path: Path) -> None:
    """The queue's next case is the first scan without an exported version: Next case before exporting gave the open
    scan again, which was loaded as a second volume node; the case's segmentation (made on the first node) was then
    selected for it, refused by Export, and its strokes were no longer drafted."""
    scene, logic = scene
    _queue, view, controller = queued_panel(scene, logic, tmp_path, {"01": 0.9, "02": 0.2})
    controller.next_case()
    wait_for_jobs(controller)
    volume = controller.parameters.inputVolume
    controller.session.selection_changed()
    assert view.run_later() == 1 and volume.GetName() == "sub-01_T2w"
    segmentation = controller.parameters.segmentation
    paint_lesion(scene, logic, controller.session.case, segmentation, volume, np.s_[40:43, 26:29, 29:32])

    controller.next_case()
    wait_for_jobs(controller)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1, "the open scan was loaded a second time"
    assert controller.parameters.inputVolume is volume and controller.parameters.segmentation is segmentation
    assert view.said[-1] == panel_view.still_next_sentence("sub-01_T2w")
    controller.shutdown()


def test_the_same_scan_loaded_twice_never_gets_the_other_nodes_segmentation(scene, tmp_path: Path) -> None:
    """Two volume nodes of one file (File > Add Data twice) are one case: the second opened with the first node's
    segmentation, which every action refuses on it and which was then never drafted. Now it opens its own, from the
    draft of the first node's edits when the rater restores it."""
    scene, logic = scene
    root = dataset(tmp_path)
    first, second = (load_with_slicer(scene, scan_path(root, "01")) for _ in range(2))
    view = RecordingView(scene, PanelInputs(rater="alice", export_folder=str(root)))
    controller = controller_for(scene, logic, view)
    controller.parameters.inputVolume = first
    controller.session.selection_changed()
    view.run_later()
    edited = paint_lesion(scene, logic, controller.session.case, controller.parameters.segmentation, first, np.s_[40:43, 26:29, 29:32])
    controller.parameters.inputVolume = second
    controller.session.selection_changed()
    view.answers.append(True)  # restore the draft of the first node's edits (kept as the first node was left)
    assert view.run_later() == 1 and "was never exported" in view.questions[-1]
    segmentation = controller.parameters.segmentation
    assert mrml.pairing_problem(segmentation, second) is None
    np.testing.assert_array_equal(panel_case.labels_zyx(scene, logic, controller.session.case, segmentation, second), edited)
    controller.shutdown()


class FinishedSegmentation:
    """A Segment run that ended with the model's masks ``cord`` and ``lesion`` (what ``panel_jobs.import_result``
    reads of a real one)."""

    def __init__(self, work_dir: Path, cord: Path, lesion: Path) -> None:
        from types import SimpleNamespace

        work_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir, self.masks, self.options = work_dir, {"sc": cord, "lesion": lesion}, SimpleNamespace(model="sciseg-demo")

    def outputs(self) -> dict[str, Path]:
        return self.masks


def draft_record(path: Path):
    from SCIsegLib.cases.drafts import read_record

    return read_record(path)


def test_segment_again_supersedes_the_corrected_segmentation_and_drafts_never_record_another_nodes_base(scene, tmp_path: Path) -> None:
    """Two segmentations bound to one case shared the rater's one draft: after Segment again, selecting the corrected
    one again drafted its edits over the new one's with the new one's base (``prediction``, not its ``v001``). Now
    the new result supersedes it: its unexported edits are kept in a file of their own (with their base), it is
    renamed and no longer drafted; selecting it asks whether it becomes the case's again (the other one is then
    superseded the same way), and each draft records the base of the segmentation it holds."""
    from SCIsegLib import panel_shown

    scene, logic = scene
    root, first, view, controller, now, corrected, draft_file = opened_and_corrected(scene, logic, tmp_path)
    controller.export()
    wait_for_jobs(controller)
    assert corrected.GetAttribute(panel_case.BASE_ATTRIBUTE) == "v001"
    case = controller.session.case
    unexported = paint_lesion(scene, logic, case, corrected, first, np.s_[46:49, 26:29, 29:32])
    now[0] += 1.5
    controller.session.tick()
    assert draft_record(draft_file).base == "v001"

    # Segment again (asked and answered Yes): the model's result arrives as a new segmentation of the case.
    masks = root / "derivatives" / "sciseg" / "sub-01" / "anat"
    run = FinishedSegmentation(tmp_path / "run", masks / "sub-01_T2w_sc_seg.nii.gz", masks / "sub-01_T2w_lesion_seg.nii.gz")
    panel_shown.show_segmentation(controller, panel.Job(Action.SEGMENT, run, volume_id=first.GetID()))
    fresh = controller.parameters.segmentation
    assert fresh is not corrected and fresh.GetAttribute(panel_case.BASE_ATTRIBUTE) == "prediction"
    assert corrected.GetName().endswith("(superseded)"), "the corrected segmentation is still bound to the case"
    assert not panel_binding.is_bound(corrected, controller.session.case)
    [kept] = (root / "derivatives" / "labels" / ".drafts").rglob("superseded/*.nrrd")
    assert draft_record(kept).base == "v001" and draft_record(kept).rater == "alice"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(kept))), unexported)
    assert any(str(kept) in said and "superseded" in said for said in view.said)
    assert controller.session.case.base.name == "prediction"
    controller.session.selection_changed()
    fresh_edit = paint_lesion(scene, logic, controller.session.case, fresh, first, np.s_[30:33, 26:29, 29:32])
    now[0] += 1.5
    controller.session.tick()
    assert draft_record(draft_file).base == "prediction"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file))), fresh_edit)

    # Selecting the superseded one asks; No: it stays superseded, its strokes are not drafted, Export refuses it.
    controller.parameters.segmentation = corrected
    controller.session.selection_changed()
    view.answers.append(False)
    view.run_later()
    assert view.questions and "sub-01_T2w" in view.questions[-1] and corrected.GetName() in view.questions[-1]
    drafted = draft_file.read_bytes()
    paint_lesion(scene, logic, None, corrected, first, np.s_[20:22, 26:29, 29:32])
    now[0] += 1.5
    controller.session.tick()
    assert draft_file.read_bytes() == drafted, "a superseded segmentation's strokes replaced the case's draft"
    controller.export()
    assert Action.EXPORT not in controller.state.jobs and "superseded" in view.said[-1]

    # Yes: it is the case's again, on its own base; the other one is superseded with its edits kept.
    controller.parameters.segmentation = fresh
    controller.session.selection_changed()
    controller.parameters.segmentation = corrected
    controller.session.selection_changed()
    view.answers.append(True)
    view.run_later()
    assert panel_binding.is_bound(corrected, controller.session.case) and not corrected.GetName().endswith("(superseded)")
    assert controller.session.case.base.name == "v001" and fresh.GetName().endswith("(superseded)")
    kept_fresh = [path for path in (root / "derivatives" / "labels" / ".drafts").rglob("superseded/*.nrrd") if path != kept]
    assert [draft_record(path).base for path in kept_fresh] == ["prediction"]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(kept_fresh[0]))), fresh_edit)
    assert draft_record(draft_file).base == "v001", "the draft does not record the base of the segmentation it holds"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file))),
                                  panel_case.labels_zyx(scene, logic, controller.session.case, corrected, first))
    controller.shutdown()


def test_strokes_of_a_case_whose_volume_was_removed_are_drafted_on_the_cases_grid(scene, tmp_path: Path) -> None:
    """The rater deletes the open case's volume (Data module): the selector moves to another volume and keep_work
    found no volume, so the strokes since the last autosave (up to ~1 s) stayed only in the segmentation node."""
    scene, logic = scene
    root, first, view, controller, now, segmentation, draft_file = opened_and_corrected(scene, logic, tmp_path)
    second = load_with_slicer(scene, scan_path(root, "02"))
    latest = paint_lesion(scene, logic, controller.session.case, segmentation, first, np.s_[46:49, 26:29, 29:32])
    scene.RemoveNode(first)  # no pause since the strokes: not autosaved yet
    controller.parameters.inputVolume = second  # the selector moves to another volume
    controller.session.selection_changed()
    assert view.run_later() == 1 and controller.session.case.scan.stem == "sub-02_T2w"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file))), latest)
    assert any(said.startswith("Your unsaved edits of sub-01_T2w are kept as a draft by alice") for said in view.said)
    controller.shutdown()


def test_a_scene_holding_two_segmentations_of_the_case_opens_one_and_supersedes_the_other(scene, tmp_path: Path) -> None:
    """A scene saved before superseding existed (or put together by hand) holds two segmentations bound to the open
    case, each with edits no version has. Opening the case makes one of them the case's; the other is superseded at
    once, its edits written whole to ``superseded/`` first: neither rater's strokes are lost, and the one draft then
    holds only the case's segmentation, recording its base."""
    import slicer

    scene, logic = scene
    root, first, view, controller, now, corrected, draft_file = opened_and_corrected(scene, logic, tmp_path)
    case = controller.session.case
    twin = slicer.vtkMRMLSegmentationNode()
    scene.AddNode(twin)
    twin.CreateDefaultDisplayNodes()
    twin.GetSegmentation().DeepCopy(corrected.GetSegmentation())
    twin.SetReferenceImageGeometryParameterFromVolumeNode(first)
    for name in corrected.GetAttributeNames():
        twin.SetAttribute(name, corrected.GetAttribute(name))
    twin.SetName(f"{corrected.GetName()} copy")
    assert panel_binding.is_bound(twin, case) and panel_binding.is_bound(corrected, case)
    corrected_labels = panel_case.labels_zyx(scene, logic, case, corrected, first)
    twin_labels = paint_lesion(scene, logic, case, twin, first, np.s_[30:33, 26:29, 29:32])
    assert not np.array_equal(twin_labels, corrected_labels)

    second = load_with_slicer(scene, scan_path(root, "02"))  # leave the case, then open it again
    controller.parameters.inputVolume = second
    controller.session.selection_changed()
    view.run_later()
    view.answers.extend([True] * 4)  # restore the draft when asked
    controller.parameters.inputVolume = first
    controller.session.selection_changed()
    view.run_later()
    assert controller.session.case.scan.stem == "sub-01_T2w"
    bound = [node for node in (corrected, twin) if panel_binding.is_bound(node, controller.session.case)]
    superseded = [node for node in (corrected, twin) if panel_binding.is_superseded(node)]
    assert len(bound) == 1 and len(superseded) == 1, "two segmentations are still the case's"
    [kept] = (root / "derivatives" / "labels" / ".drafts").rglob("superseded/*.nrrd")
    expected = twin_labels if superseded[0] is twin else corrected_labels
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(kept))), expected)
    assert superseded[0].GetName().endswith("(superseded)")
    assert any(str(kept) in said for said in view.said)

    case = controller.session.case
    controller.parameters.segmentation = bound[0]
    controller.session.selection_changed()
    latest = paint_lesion(scene, logic, case, bound[0], first, np.s_[20:23, 26:29, 29:32])
    now[0] += 1.5
    controller.session.tick()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(draft_file))), latest)
    assert draft_record(draft_file).base == bound[0].GetAttribute(panel_case.BASE_ATTRIBUTE)
    controller.shutdown()
