"""The panel's decisions (SCIsegLib/panel.py) on Slicer's real MRML (slicer-core), real scans and real child processes."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is a test dependency (pip install .[test])")

from conftest import REPOSITORY, shared_file  # noqa: E402
from SCIsegLib import dependencies, mrml, panel, panel_case, panel_devices, panel_install, panel_jobs, panel_results, runner  # noqa: E402
from slicer_scene import load_with_slicer  # noqa: E402
from SCIsegLib.panel import Action, Outcome, PanelInputs, PanelState  # noqa: E402


class PythonChild:
    """A real child process (``python -c CODE``) seen through the runner's non-blocking job interface.

    poll() never blocks, cancel() returns at once (terminate), finished/returncode/stderr once it ended.
    """

    def __init__(self, code: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.returncode: int | None = None
        self.stderr = ""

    def poll(self) -> list[dict]:
        if self.returncode is None and self.process.poll() is not None:
            self.stderr = self.process.stderr.read()
            self.returncode = self.process.returncode
        return []

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    def cancel(self, grace_s: float | None = None) -> None:
        self.process.terminate()


def poll_until_done(state: PanelState, timeout_s: float = 30.0) -> list[panel.Finished]:
    """Poll like the widget's timer does; every poll must return within 100 ms."""
    deadline = time.monotonic() + timeout_s
    ended: list[panel.Finished] = []
    while state.jobs:
        started = time.monotonic()
        _events, finished = state.poll()
        assert time.monotonic() - started < 0.1, "PanelState.poll blocked the UI thread"
        ended += finished
        assert time.monotonic() < deadline, "the job never finished"
        time.sleep(0.02)
    return ended


def test_buttons_follow_inputs_and_running_jobs() -> None:
    state = PanelState()
    nothing = state.enabled(PanelInputs())
    assert not any(nothing[name] for name in ("segmentButton", "cancelButton", "editButton", "measureButton", "exportButton",
                                               "compareButton", "nextCaseButton"))
    ready = PanelInputs("vtkMRMLScalarVolumeNode1", "vtkMRMLSegmentationNode1", "vtkMRMLSegmentationNode2", True, "rater A",
                        "/data/bids", "/data/queue.json")
    enabled = state.enabled(ready)
    assert all(enabled[name] for name in ("segmentButton", "editButton", "measureButton", "exportButton", "compareButton",
                                          "nextCaseButton", "inputVolumeSelector"))
    assert not enabled["cancelButton"]
    # Next case follows the queue path alone (it was never re-evaluated when the path changed).
    assert state.enabled(PanelInputs(queue_path="/data/queue.json"))["nextCaseButton"]
    assert not state.enabled(PanelInputs(queue_path=""))["nextCaseButton"]
    # Export needs a rater and a folder; compare needs another segmentation.
    assert not state.enabled(PanelInputs("v", "s", "s", True, "rater A", "/data/bids"))["compareButton"]
    assert not state.enabled(PanelInputs("v", "s", None, True, "  ", "/data/bids"))["exportButton"]

    child = PythonChild("import time; time.sleep(30)")
    state.start(Action.SEGMENT, child, volume_id="vtkMRMLScalarVolumeNode1")
    running = state.enabled(ready)
    assert running["cancelButton"] and not running["segmentButton"] and not running["inputVolumeSelector"]
    assert not running["nextCaseButton"] and not running["modelMenuButton"] and running["measureButton"]
    with pytest.raises(RuntimeError, match="already running"):
        state.start(Action.SEGMENT, child)
    state.cancel()
    assert not state.enabled(ready)["cancelButton"]  # asked once; the child is stopping
    [finished] = poll_until_done(state)
    assert finished.outcome == Outcome.CANCELLED and not finished.import_result
    assert state.enabled(ready)["segmentButton"] and state.enabled(ready)["inputVolumeSelector"]


def test_the_result_goes_to_the_segmented_volume_even_after_the_selection_changed(scene) -> None:
    scene, logic = scene
    segmented = load_with_slicer(scene, shared_file("sct_testing_data/t2/t2.nii.gz"))
    other = load_with_slicer(scene, shared_file("sct_testing_data/t1/t1w.nii.gz"))
    state = PanelState()
    state.start(Action.SEGMENT, PythonChild("import time; time.sleep(0.3)"), volume_id=segmented.GetID())
    inputs = PanelInputs(input_volume_id=other.GetID(), has_model=True)  # the rater picks t1w during the run
    assert not state.enabled(inputs)["inputVolumeSelector"]
    [finished] = poll_until_done(state)
    assert finished.outcome == Outcome.SUCCEEDED and finished.import_result
    volume = panel.result_volume(scene, finished.job)
    assert volume.GetID() == segmented.GetID()
    # The t2 masks import onto t2 (on another grid they would be refused): the result lands on the right scan.
    cord = sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz")))
    empty = sitk.Image(cord.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(cord)
    node = mrml.import_sciseg_masks(logic, scene, volume, cord, empty)
    assert node.GetName() == "t2 SCIseg"
    with pytest.raises(ValueError, match="does not lie on the grid"):
        mrml.import_sciseg_masks(logic, scene, other, cord, empty)

    # The segmented volume is deleted during a run: nothing is imported anywhere.
    state.start(Action.SEGMENT, PythonChild("pass"), volume_id=segmented.GetID())
    scene.RemoveNode(segmented)
    [finished] = poll_until_done(state)
    with pytest.raises(ValueError, match="removed from the scene during the run"):
        panel.result_volume(scene, finished.job)


def test_failed_and_cancelled_jobs(tmp_path: Path) -> None:
    state = PanelState()
    state.start(Action.MEASURE, PythonChild("import sys; sys.stderr.write('loading\\nsciseg: the lesion mask x.nii.gz is empty.\\n'); sys.exit(2)"))
    state.start(Action.INSTALL_MODEL, PythonChild("import time; time.sleep(30)"))
    assert state.cancel() and state.jobs[Action.INSTALL_MODEL].cancel_requested
    assert not state.jobs[Action.MEASURE].cancel_requested  # Cancel stops the segmentation and the model install only
    ended = {f.job.action: f for f in poll_until_done(state)}
    assert ended[Action.MEASURE].outcome == Outcome.FAILED
    assert ended[Action.MEASURE].message == "the lesion mask x.nii.gz is empty."
    assert ended[Action.INSTALL_MODEL].outcome == Outcome.CANCELLED and not ended[Action.INSTALL_MODEL].refresh_models
    # A child that exits 130 itself (cooperative cancel) is cancelled too; a model install that ends well refreshes.
    state.start(Action.SEGMENT, PythonChild("import sys; sys.exit(130)"))
    state.start(Action.INSTALL_MODEL, PythonChild("pass"))
    ended = {f.job.action: f for f in poll_until_done(state)}
    assert ended[Action.SEGMENT].outcome == Outcome.CANCELLED and not ended[Action.SEGMENT].import_result
    assert ended[Action.INSTALL_MODEL].outcome == Outcome.SUCCEEDED and ended[Action.INSTALL_MODEL].refresh_models


def test_a_command_stopped_at_its_time_limit_failed_rather_than_was_cancelled() -> None:
    """runner.ChildCommand cancels itself at its time limit (timed_out, then cancelled): the rater did not cancel it."""
    child = PythonChild("import time; time.sleep(30)")
    state = PanelState()
    state.start(Action.MEASURE, child)
    child.timed_out = True  # what ChildCommand._check_deadline sets before it cancels
    child.cancelled = True
    child.cancel()
    [finished] = poll_until_done(state)
    assert finished.outcome == Outcome.FAILED and "time limit" in finished.message


def test_scene_close_stops_the_segmentation_and_shows_no_result() -> None:
    state = PanelState()
    state.start(Action.SEGMENT, PythonChild("import time; time.sleep(30)"))
    state.start(Action.EXPORT, PythonChild("import time; time.sleep(0.3)"))  # an export finishes writing its version
    state.start(Action.NEXT_CASE, PythonChild("import time; time.sleep(30)"))
    started = time.monotonic()
    state.scene_closing()
    assert time.monotonic() - started < 0.1
    ended = {f.job.action: f for f in poll_until_done(state)}
    assert ended[Action.SEGMENT].outcome == Outcome.CANCELLED and ended[Action.SEGMENT].job.run.returncode != 0
    assert ended[Action.NEXT_CASE].outcome == Outcome.CANCELLED and ended[Action.NEXT_CASE].job.run.returncode != 0
    assert "scene was closed" in ended[Action.SEGMENT].message and not ended[Action.SEGMENT].import_result
    # The export wrote its version: it is reported as done, not as "nothing was changed".
    assert ended[Action.EXPORT].job.run.returncode == 0 and ended[Action.EXPORT].outcome == Outcome.SUCCEEDED


def test_device_list_keeps_the_saved_device_and_is_probed_again_after_installing() -> None:
    assert panel_devices.device_choices(None, "cuda") == [("Auto", "auto"), ("CPU", "cpu"), ("cuda (not found)", "cuda")]
    assert panel_devices.device_choices({"cuda": "NVIDIA H100", "cpu": "x86_64"}, "cuda") == [
        ("Auto", "auto"), ("GPU (NVIDIA H100)", "cuda"), ("CPU", "cpu")]
    assert panel_devices.device_choices({}, "auto") == [("Auto", "auto"), ("CPU", "cpu")]
    assert "not installed" in panel_devices.device_summary({}) and "NVIDIA H100" in panel_devices.device_summary({"cuda": "NVIDIA H100"})
    state = PanelState(devices={}, probe_wanted=False)
    state.dependencies_installed()
    assert state.probe_wanted and state.devices is None


def test_the_gpu_probe_runs_once_wanted_and_says_why_it_found_nothing() -> None:
    class Probe(PythonChild):
        def __init__(self, found: dict, timed_out: bool = False) -> None:
            super().__init__("import sys; sys.stderr.write('torch is not installed\\n')")
            self.found, self.timed_out = found, timed_out

        def devices(self) -> dict:
            return self.found

        def new_log_lines(self) -> list[str]:
            return self.stderr.splitlines()

    state = PanelState()
    started = []
    assert state.poll_probe(lambda: started.append(1) or Probe({"cpu": "x86_64", "cuda": "NVIDIA H100"})) == (False, [])
    while state.probe is not None:
        changed, lines = state.poll_probe(lambda: started.append(1))
        time.sleep(0.02)
    assert changed and lines == [] and state.devices["cuda"] == "NVIDIA H100" and started == [1]  # started once
    assert state.poll_probe(lambda: started.append(1)) == (False, [])
    state.dependencies_installed()
    state.poll_probe(lambda: Probe({}, timed_out=True))
    while state.probe is not None:
        changed, lines = state.poll_probe(None)
        time.sleep(0.02)
    assert state.devices == {} and lines == ["torch is not installed", "GPU detection did not finish within its time limit."]

    def no_python():
        raise runner.RunnerError("cannot start PythonSlicer (No such file); check the Python executable.")

    state.dependencies_installed()
    assert state.poll_probe(no_python) == (True, ["cannot start PythonSlicer (No such file); check the Python executable."])
    assert state.devices == {} and state.probe is None


def test_every_child_action_is_guarded_by_the_modules_its_child_imports() -> None:
    """Import what each child's handler imports, in a fresh Python, and compare with the declared list."""
    handlers = {
        Action.MEASURE: "import SCIsegLib.lesions, SCIsegLib.analysis_files",
        Action.EXPORT: "import SCIsegLib.panel_export, SCIsegLib.cases",
        Action.NEXT_CASE: "import SCIsegLib.training.queue",
        Action.SEGMENT: "import SCIsegLib.inference, SCIsegLib.segment",
        Action.GREY_MATTER: "import SCIsegLib.inference, SCIsegLib.segment",
        Action.INSTALL_MODEL: "import SCIsegLib.cli, SCIsegLib.models, SCIsegLib.download",
        Action.COMPARE: "import SCIsegLib.cli, SCIsegLib.metrics",
    }
    not_in_fresh_slicer = {"pandas", "skimage", "filelock", "torch", "nnunetv2"}
    for action, code in handlers.items():
        probe = f"{code}; import sys, json; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
        result = subprocess.run([sys.executable, "-c", probe], cwd=REPOSITORY, capture_output=True, text=True, check=True)
        loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
        needed = loaded & not_in_fresh_slicer
        assert needed <= set(panel.modules_needed(action)), f"{action.value} child imports {sorted(needed)}"
        assert action in panel.CHILD_ACTIONS
    assert panel_install.packages_to_install(["pandas", "skimage"]) == ["nnunetv2"]
    assert panel_install.packages_to_install(["torch", "nnunetv2"]) == ["torch", "nnunetv2"]
    assert panel_install.packages_to_install([], nnunet_version_problem=True) == ["nnunetv2"]
    assert panel_install.packages_to_install([]) == []
    assert panel_install.packages_to_install(["openvino"]) == ["nnunetv2"]  # the nnunetv2 step installs OpenVINO with it
    assert set(panel_install.NNUNET_STEP) == {dependencies.NNUNET_REQUIREMENT, dependencies.PIP_REQUIREMENTS["openvino"]}
    requirements, options = panel_install.pip_install_call(list(panel_install.NNUNET_STEP), "C:\\Temp dir\\c.txt", (5, 10))
    assert requirements == [*panel_install.NNUNET_STEP, "-c", "C:\\Temp dir\\c.txt"] and options == {}


def test_pip_arguments_are_a_list_with_constraints_for_each_slicer_version() -> None:
    windows_path = r"C:\Users\Dr Smith\AppData\Local\Temp\sciseg-ab12\constraints.txt"
    arguments, options = panel_install.pip_install_call("nnunetv2==2.8.1", windows_path, (5, 10))
    assert arguments == ["nnunetv2==2.8.1", "-c", windows_path] and options == {}
    # What Slicer 5.10 does with one string (shlex.split): the path loses its backslashes and splits at the space.
    assert windows_path not in shlex.split(f"nnunetv2 -c {windows_path}")
    arguments, options = panel_install.pip_install_call("nnunetv2==2.8.1", windows_path, (5, 12))
    assert arguments == ["nnunetv2==2.8.1"] and options == {"constraints": windows_path, "requester": "SCIseg"}
    assert panel_install.version_mismatch("nnunetv2==2.8.1", "2.8.1") is None
    assert panel_install.version_mismatch("nnunetv2==2.8.1", None) is None
    assert panel_install.version_mismatch("nnunetv2==2.8.1", "2.6.2") == (
        "nnunetv2 2.6.2 is installed but SCIseg was tested with 2.8.1: install nnunetv2==2.8.1 from the SCIseg panel.")
    assert panel_install.torch_build("2.5.1+cu124") == "CUDA 12.4"
    assert panel_install.torch_build("2.13.0+cpu") == "CPU"
    assert panel_install.torch_build("2.4.0+rocm6.1") == "ROCm 6.1"
    assert panel_install.torch_build("2.13.0").startswith("the default PyPI build")


def test_a_clicked_row_jumps_to_that_rows_lesion_not_the_next_one(scene, tmp_path: Path) -> None:
    """Slicer's table view shows column titles in its first row unless UseColumnTitleAsColumnHeader is set
    (qMRMLTableModel::mrmlTableRowIndex): a click on lesion k's row jumped to lesion k+1."""
    scene, _logic = scene
    lesions = tmp_path / "t2_lesion_seg_analysis.csv"
    lesions.write_text("label,volume [mm3]\n1,41.5\n2,12.0\n3,8.0\n")
    table = mrml.table_node_from_csv(scene, lesions, "t2 lesions")
    centres = {1: (1.0, 1.0, 1.0), 2: (2.0, 2.0, 2.0), 3: (3.0, 3.0, 3.0)}
    assert table.GetUseColumnTitleAsColumnHeader()  # view row k is table row k
    for view_row, label in ((0, 1), (1, 2), (2, 3)):
        assert panel_results.lesion_centre_for_row(table, table.GetID(), view_row, centres) == centres[label]
    # A table shown the default way: its view row 0 is the title row, view row k is table row k - 1.
    table.SetUseColumnTitleAsColumnHeader(False)
    assert panel_results.lesion_centre_for_row(table, table.GetID(), 0, centres) is None
    assert panel_results.lesion_centre_for_row(table, table.GetID(), 1, centres) == centres[1]


def test_a_clicked_row_jumps_only_from_the_lesion_table(scene, tmp_path: Path) -> None:
    scene, _logic = scene
    lesions = tmp_path / "t2_lesion_seg_analysis.csv"
    lesions.write_text("label,volume [mm3],length [mm]\n3,41.5,12.0\n7,12.0,4.5\n")
    profile = tmp_path / "t2_lesion_seg_perslice.csv"
    profile.write_text("slice (I->S),axial_damage_ratio [],note\n12,0.4,a\n13,0.5,b\n")
    lesion_table = mrml.table_node_from_csv(scene, lesions, "t2 lesions")
    profile_table = mrml.table_node_from_csv(scene, profile, "t2 per slice")
    centres = {3: (1.0, 2.0, 3.0), 7: (4.0, 5.0, 6.0)}
    assert panel_results.lesion_centre_for_row(lesion_table, lesion_table.GetID(), 1, centres) == (4.0, 5.0, 6.0)
    assert panel_results.lesion_centre_for_row(lesion_table, lesion_table.GetID(), 0, centres) == (1.0, 2.0, 3.0)
    assert panel_results.lesion_centre_for_row(profile_table, lesion_table.GetID(), 0, centres) is None  # slice 12 is no lesion
    assert panel_results.lesion_centre_for_row(lesion_table, lesion_table.GetID(), 2, centres) is None
    assert panel_results.lesion_centre_for_row(lesion_table, None, 0, centres) is None


def test_the_rater_is_asked_which_segment_is_the_lesion(scene) -> None:
    scene, logic = scene
    volume = load_with_slicer(scene, shared_file("sct_testing_data/t2/t2.nii.gz"))
    reference = mrml.image_from_volume_node(volume)
    cord = sitk.GetArrayFromImage(mrml.on_grid_of(sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz"))), reference))
    node = mrml.create_segmentation_node(scene, volume, "rater C")
    for segment_id, name, array in (("Segment_1", "cord", cord), ("Segment_2", "Segment_2", np.zeros_like(cord))):
        mrml.set_segment_from_mask(logic, scene, node, mrml.SegmentSpec(segment_id, name, (1, 1, 1), "", 0),
                                   mrml.image_from_array_zyx(array.astype(np.uint8), reference), volume)
        node.GetSegmentation().GetSegment(segment_id).RemoveTag(slicer.vtkSegment.GetTerminologyEntryTagName())
    with pytest.raises(mrml.SegmentChoiceError) as raised:
        mrml.export_sciseg_label_map(logic, scene, node, volume)
    items = panel_results.segment_choice_items(raised.value.choices["lesion"], raised.value.segments, "lesion")
    assert items == [("cord (Segment_1)", "Segment_1"), ("Segment_2 (Segment_2)", "Segment_2"), ("None: no lesion in this segmentation", None)]
    labels = mrml.export_sciseg_label_map(logic, scene, node, volume, chosen={"lesion": items[1][1]})
    assert np.count_nonzero(sitk.GetArrayFromImage(labels) == 1) == np.count_nonzero(cord)


def test_compare_runs_in_a_child_and_gives_what_the_library_computes(scene, tmp_path: Path) -> None:
    """Compare (360 ms on a full-FOV scan in Slicer's thread) runs as ``sciseg compare``: same numbers as in process."""
    from SCIsegLib.metrics import compare_label_maps

    scene, logic = scene
    volume = load_with_slicer(scene, shared_file("sct_2014_errsm/errsm_11/t2.nii.gz"))
    reference = mrml.image_from_volume_node(volume)
    manual = sitk.ReadImage(str(shared_file("sct_2014_errsm/errsm_11/t2_manual_segmentation.nii.gz")))
    cord = sitk.GetArrayFromImage(mrml.on_grid_of(sitk.Cast(manual > 0.5, sitk.sitkUInt8), reference))
    automatic = mrml.import_sciseg_masks(logic, scene, volume, mrml.image_from_array_zyx(cord, reference),
                                         mrml.image_from_array_zyx(np.zeros_like(cord), reference))
    z, y, x = np.argwhere(cord)[len(np.argwhere(cord)) // 2]
    lesion = np.zeros_like(cord)
    lesion[z - 2 : z + 3, y - 1 : y + 2, x - 1 : x + 2] = 1
    lesion &= cord  # painted inside the cord: the cord region stays the same
    corrected = mrml.import_sciseg_masks(logic, scene, volume, mrml.image_from_array_zyx(cord, reference),
                                         mrml.image_from_array_zyx(lesion, reference))
    paths = []
    for node in (automatic, corrected):
        paths.append(tmp_path / f"{node.GetName()}.nii.gz")
        sitk.WriteImage(mrml.export_sciseg_label_map(logic, scene, node, volume), str(paths[-1]))
    state = PanelState()
    state.start(Action.COMPARE, CliChild(["compare", *map(str, paths)]))
    [finished] = poll_until_done(state, timeout_s=120)
    assert finished.outcome == Outcome.SUCCEEDED, finished.message
    result = panel_results.compare_result(finished.job.run.stdout)
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in paths)
    expected = compare_label_maps(a, b, tuple(reversed(reference.GetSpacing())))
    assert result == pytest.approx(expected)
    assert result["lesion_voxels_added"] == np.count_nonzero(lesion) and result["cord_dice"] == 1.0
    # Label maps of two different scans: exit 2 with one sentence.
    other = tmp_path / "t2_other.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz"))), str(other))
    state.start(Action.COMPARE, CliChild(["compare", str(paths[0]), str(other)]))
    [finished] = poll_until_done(state, timeout_s=120)
    assert finished.outcome == Outcome.FAILED and finished.job.run.returncode == 2
    assert "does not lie on the grid" in finished.message and "export both label maps on the same volume" in finished.message


class CliChild(PythonChild):
    """``python -m SCIsegLib ARGUMENTS`` (this checkout's) through the same job interface, with its stdout."""

    def __init__(self, arguments: list[str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "SCIsegLib", *arguments], cwd=REPOSITORY,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.returncode = None
        self.stderr = self.stdout = ""

    def poll(self) -> list[dict]:
        if self.returncode is None and self.process.poll() is not None:
            self.stdout, self.stderr = self.process.communicate()
            self.returncode = self.process.returncode
        return []


def test_comparison_sentence_and_next_case_arguments() -> None:
    result = {"cord_dice": 0.9512, "cord_voxels_added": 12, "cord_voxels_removed": 3, "lesion_dice": 0.5, "lesion_f1": 0.667,
              "lesions_a": 1, "lesions_b": 2}
    assert panel_results.comparison_sentence("t2 SCIseg", result) == (
        "Versus 't2 SCIseg': cord Dice 0.951 (+12 / -3 voxels), lesion Dice 0.500, lesion-wise F1 0.67 (1 -> 2 lesions).")
    assert panel_results.next_case_arguments("/q.json", "") == ["queue", "next", "--queue", "/q.json"]
    assert panel_results.next_case_arguments("/q.json", "/bids") == ["queue", "next", "--queue", "/q.json", "--bids", "/bids"]


def test_next_case_path(tmp_path: Path) -> None:
    scan = tmp_path / "sub-01_T2w.nii.gz"
    scan.write_bytes(b"")
    assert panel_results.next_case_path(0, f"0.731  {scan}\n", lambda p: Path(p).is_file()) == str(scan)
    assert panel_results.next_case_path(0, "the queue is done\n", lambda p: Path(p).is_file()) is None
    assert panel_results.next_case_path(2, f"0.731  {scan}\n", lambda p: Path(p).is_file()) is None


def test_segment_click_path_with_the_real_runner_and_the_demo_model(scene, demo_model_path: Path, tmp_path: Path) -> None:
    """Segment t2 with the bundled model in a real child while the rater selects t1w; then Cancel a second run.

    The panel's timer loop without Qt: every poll returns within 100 ms, Cancel returns at once, the masks go
    onto t2 (cord Dice against the manual mask), a cancelled run leaves no work folder.
    """
    from SCIsegLib import runner

    if not hasattr(runner.SegmentationRun, "new_log_lines"):
        pytest.skip("needs the non-blocking runner of issue 10 (runner.py: new_log_lines, cancel returning at once)")
    scene, logic = scene
    t2 = load_with_slicer(scene, shared_file("sct_testing_data/t2/t2.nii.gz"))
    t1w = load_with_slicer(scene, shared_file("sct_testing_data/t1/t1w.nii.gz"))
    state = PanelState()

    def start() -> runner.SegmentationRun:
        run = runner.SegmentationRun(runner.RunOptions(model=str(demo_model_path), device="cpu"), python_executable=sys.executable)
        run.input_path = run.work_dir / "input.nii"  # as panel_jobs.start_segmentation writes it
        mrml.save_volume_node_as_nifti(t2, run.input_path)
        run.start()
        state.start(Action.SEGMENT, run, volume_id=t2.GetID())
        return run

    run = start()
    assert not state.enabled(PanelInputs(input_volume_id=t1w.GetID(), has_model=True))["inputVolumeSelector"]
    events: list[dict] = []
    ended: list[panel.Finished] = []
    deadline = time.monotonic() + 600
    while state.jobs:
        started = time.monotonic()
        panel.new_log_lines(run)
        polled, finished = state.poll()
        assert time.monotonic() - started < 0.1
        events += polled
        ended += finished
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [finished] = ended
    assert finished.outcome == Outcome.SUCCEEDED and finished.import_result, finished.message
    assert any(event.get("event") == "progress" for event in events)
    volume = panel.result_volume(scene, finished.job)
    assert volume.GetID() == t2.GetID()
    predictions = tmp_path / "predictions"  # the panel's session folder: no prediction file left in the user data folder
    predictions.mkdir()
    node = panel_jobs.import_result(scene, logic, run, volume, predictions)
    [folder] = predictions.iterdir()
    assert node.GetAttribute(panel_case.PREDICTION_FOLDER_ATTRIBUTE) == str(folder)
    prediction, _lesion = panel_case.prediction_masks(node)
    cord = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, node, volume)) > 0
    manual = mrml.on_grid_of(sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz"))), mrml.image_from_volume_node(volume))
    truth = sitk.GetArrayFromImage(manual) > 0
    assert 2 * np.sum(cord & truth) / (cord.sum() + truth.sum()) > 0.85  # 0.946 measured with the demo model
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(prediction))).max() == 1
    panel.remove_job_files(finished.job)
    assert not run.work_dir.exists()

    run = start()
    while not any(event.get("event") == "progress" for event in state.poll()[0]):
        time.sleep(0.05)
    started = time.monotonic()
    state.cancel()
    assert time.monotonic() - started < 0.1
    [finished] = poll_until_done(state, timeout_s=60)
    assert finished.outcome == Outcome.CANCELLED and not finished.import_result
    assert not run.work_dir.exists()


def lesion_segmentation(scene, logic, volume, lesion_box):
    """A SCIseg segmentation of ``volume``: the manual t2 cord and a lesion in ``lesion_box`` (z, y, x slices)."""
    reference = mrml.image_from_volume_node(volume)
    manual = sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz")))
    cord = sitk.GetArrayFromImage(mrml.on_grid_of(manual, reference)).astype(np.uint8)
    lesion = np.zeros_like(cord)
    lesion[lesion_box] = 1
    return mrml.import_sciseg_masks(logic, scene, volume, mrml.image_from_array_zyx(cord, reference),
                                    mrml.image_from_array_zyx(lesion, reference))


def test_export_measure_and_compare_refuse_the_previous_cases_segmentation(scene, tmp_path: Path) -> None:
    """Next case (or another volume picked) left case 1's segmentation selected: Export wrote case 1's lesion as
    case 2's labels. Now export, measure and compare compare the segmentation's source and reference geometry
    with the volume and refuse with one sentence, before writing or starting anything."""
    scene, logic = scene
    case_1 = load_with_slicer(scene, shared_file("sct_testing_data/t2/t2.nii.gz"))
    # Case 2 on the same grid (a second session with the same protocol: other voxels, same header)...
    image = sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2.nii.gz")))
    sitk.WriteImage(image * 2, str(tmp_path / "sub-02_T2w.nii.gz"))
    same_grid = load_with_slicer(scene, tmp_path / "sub-02_T2w.nii.gz")
    # ... and case 3 on another grid.
    other_grid = load_with_slicer(scene, shared_file("sct_testing_data/t1/t1w.nii.gz"))
    segmentation = lesion_segmentation(scene, logic, case_1, np.s_[20:24, 25:29, 28:32])
    assert mrml.pairing_problem(segmentation, case_1) is None
    # What Export did before (mrml.export_sciseg_label_map on the selected pair): case 1's lesion as case 2's labels.
    leaked = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, segmentation, same_grid))
    assert np.count_nonzero(leaked == 2) == 4 * 4 * 4

    root = tmp_path / "bids"
    for volume in (same_grid, other_grid):
        problem = mrml.pairing_problem(segmentation, volume)
        assert problem == (f"Segmentation 't2 SCIseg' was made on 't2', not on '{volume.GetName()}': select its own volume, "
                           f"or segment '{volume.GetName()}' first.")
        before = set(Path(tempfile.gettempdir()).glob("sciseg-*"))
        for start in (
            lambda v=volume: panel_jobs.start_export(scene, logic, segmentation, v, str(root), "rater A", sys.executable),
            lambda v=volume: panel_jobs.start_measurement(scene, logic, segmentation, v, sys.executable),
            lambda v=volume: panel_jobs.start_compare(scene, logic, segmentation, segmentation, v, sys.executable),
        ):
            with pytest.raises(ValueError, match="^" + re.escape(problem) + "$"):
                start()
        assert not root.exists() and set(Path(tempfile.gettempdir()).glob("sciseg-*")) == before

    # Without its source reference (a segmentation from another scene or file) the grid still tells case 3 apart.
    segmentation.RemoveNodeReferenceIDs(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    assert "lies on another grid than 't1w'" in mrml.pairing_problem(segmentation, other_grid)
    assert mrml.pairing_problem(segmentation, case_1) is None


def test_a_segmentation_exported_with_its_own_volume_is_its_own_lesion(scene, tmp_path: Path) -> None:
    """The right pair still exports: a real ``sciseg export`` child writes case 1's lesion under case 1."""
    scene, logic = scene
    root = tmp_path / "bids"
    source = root / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    source.parent.mkdir(parents=True)
    sitk.WriteImage(sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2.nii.gz"))), str(source))
    case_1 = load_with_slicer(scene, source)
    segmentation = lesion_segmentation(scene, logic, case_1, np.s_[20:24, 25:29, 28:32])
    command = panel_jobs.start_export(scene, logic, segmentation, case_1, str(root), "rater A", sys.executable)
    state = PanelState()
    state.start(Action.EXPORT, command)
    [finished] = poll_until_done(state, timeout_s=120)
    assert finished.outcome == Outcome.SUCCEEDED, finished.message
    assert panel_results.export_summary(command.stdout).startswith("Exported version v001 (from empty)")
    panel.remove_job_files(finished.job)
    assert not Path(command.folder).exists()
    # A Slicer prediction whose session folder is gone (saved scene, Slicer restarted): the rater can still export.
    segmentation.SetAttribute(panel_case.BASE_ATTRIBUTE, "prediction")
    segmentation.SetAttribute(panel_case.PREDICTION_FOLDER_ATTRIBUTE, str(tmp_path / "removed"))
    again = panel_jobs.start_export(scene, logic, segmentation, case_1, str(root), "rater A", sys.executable)
    state.start(Action.EXPORT, again)
    [finished] = poll_until_done(state, timeout_s=120)
    panel.remove_job_files(finished.job)
    assert finished.outcome == Outcome.SUCCEEDED, finished.message
    assert panel_results.export_result(again.stdout)["version"] == 2 and "v001 existed" in panel_results.export_result(again.stdout)["warning"]
    [dseg] = root.glob("derivatives/labels/sub-01/anat/sub-01_T2w*dseg.nii.gz")
    written = sitk.ReadImage(str(dseg))
    expected = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, segmentation, case_1))
    assert written.GetSize() == sitk.ReadImage(str(source)).GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.on_grid_of(written, mrml.image_from_volume_node(case_1))), expected)


def test_every_action_button_is_disabled_while_the_dependencies_install() -> None:
    """pip_install processes Qt events between pip's lines: a second click there started a second install."""
    state = PanelState()
    ready = PanelInputs("v", "s", "s2", True, "rater A", "/data/bids", "/data/queue.json")
    assert all(state.enabled(ready)[name] for name in panel.ACTION_WIDGETS)
    assert all(state.may_start(action) for action in Action)
    state.installing_dependencies = True
    enabled = state.enabled(ready)
    assert not any(enabled[name] for name in panel.ACTION_WIDGETS), enabled
    assert not any(state.may_start(action) for action in Action)
    state.installing_dependencies = False
    assert state.enabled(ready)["segmentButton"] and state.may_start(Action.SEGMENT)


def test_scene_close_lets_the_model_download_and_an_export_finish_and_reports_the_export(tmp_path: Path) -> None:
    state = PanelState()
    state.start(Action.INSTALL_MODEL, PythonChild("import time; time.sleep(0.5)"))
    state.start(Action.EXPORT, PythonChild("import time; time.sleep(0.3)"))
    state.start(Action.MEASURE, PythonChild("import time; time.sleep(30)"))
    state.scene_closing()
    ended = {f.job.action: f for f in poll_until_done(state)}
    assert ended[Action.INSTALL_MODEL].job.run.returncode == 0 and not ended[Action.INSTALL_MODEL].job.cancel_requested
    assert ended[Action.EXPORT].outcome == Outcome.SUCCEEDED and "nothing was changed" not in ended[Action.EXPORT].message
    assert ended[Action.MEASURE].outcome == Outcome.CANCELLED and ended[Action.MEASURE].job.run.returncode != 0


def test_a_run_that_ends_without_a_result_does_not_say_exit_code_0(tmp_path: Path) -> None:
    run = runner.SegmentationRun(runner.RunOptions(), python_executable=sys.executable, log_dir=tmp_path)
    run.input_path.write_bytes(b"")
    run.command = lambda: [sys.executable, "-c", "pass"]  # a child that exits 0 and prints no result event
    run.start()
    state = PanelState()
    state.start(Action.SEGMENT, run)
    [finished] = poll_until_done(state)
    assert finished.outcome == Outcome.FAILED and not finished.import_result
    assert "exit code" not in finished.message and "without giving a result" in finished.message
    assert str(run.log_path) in finished.message
    panel.remove_job_files(finished.job)
    assert not run.work_dir.exists()


def test_reload_and_exit_stop_every_child_and_remove_their_folders(tmp_path: Path) -> None:
    """Reload or closing Slicer left measure/export/compare/next-case/device children running with their folders."""
    state = PanelState()
    children = {action: SleepingCommand(tmp_path, 60) for action in (Action.MEASURE, Action.COMPARE, Action.NEXT_CASE)}
    export = SleepingCommand(tmp_path, 0.5, write=tmp_path / "version.txt")
    for action, command in children.items():
        state.start(action, command)
    state.start(Action.EXPORT, export)
    state.probe = SleepingCommand(tmp_path, 60)
    started = time.monotonic()
    assert state.shutdown(timeout_s=30, export_s=30) == []
    assert time.monotonic() - started < 25
    assert export.returncode == 0 and (tmp_path / "version.txt").read_text() == "published"  # the export finished
    for command in [*children.values(), export]:
        assert command.process.poll() is not None and not Path(command.folder).exists()
    assert state.jobs == {} and state.probe is None


class SleepingCommand(runner.ChildCommand):
    """A real ``ChildCommand`` child that sleeps ``seconds`` (then writes ``write``) with a temporary folder."""

    def __init__(self, tmp_path: Path, seconds: float, write: Path | None = None) -> None:
        self.seconds, self.write = seconds, write
        super().__init__([], sys.executable)
        self.folder = tempfile.mkdtemp(prefix="job-", dir=tmp_path)

    def command(self) -> list[str]:
        code = f"import time, pathlib; time.sleep({self.seconds})"
        if self.write is not None:
            code += f"; pathlib.Path({str(self.write)!r}).write_text('published')"
        return [self.python_executable, "-c", code]


def test_reload_forgets_the_library_so_its_edited_files_are_read_again(tmp_path: Path) -> None:
    package = tmp_path / "edited_lib"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "decisions.py").write_text("VALUE = 1\n")
    code = f"""
import importlib, sys, pathlib
sys.path.insert(0, {str(tmp_path)!r})
sys.dont_write_bytecode = True
import edited_lib.decisions
pathlib.Path({str(package / "decisions.py")!r}).write_text("VALUE = 2\\n")
from SCIsegLib import panel
assert panel.forget_library_modules(package="edited_lib") == ["edited_lib", "edited_lib.decisions"]
importlib.invalidate_caches()
import edited_lib.decisions
print(edited_lib.decisions.VALUE)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True)
    assert result.stdout.strip() == "2", result.stderr
    assert panel.library_modules(["SCIsegLib", "SCIsegLib.panel", "SCIsegLibrary", "numpy"]) == ["SCIsegLib", "SCIsegLib.panel"]
