"""The panel's click path, end to end, on any MRML scene: what ``SCIsegTest`` runs inside Slicer (Reload and Test,
CTest) and ``Testing/test_panel_selftest.py`` runs on slicer-core.

Segment a synthetic T2w scan with two lesions (the bundled demo model, in a child), check the cord against the
phantom's truth, add lesion voxels as a rater would, measure (``sciseg analyze`` child), export twice through the
case (two versions, the second built on the first), compare the correction with the model's result, and measure a
scan without lesion at the NLI slice. ``wait(run, timeout_s)`` polls a child until it ends (Slicer: processing
events between polls); ``say(text)`` shows a step. Raises AssertionError with what differed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

from . import dependencies, models, mrml, panel, panel_jobs, panel_results, runner, volume
from .panel_case import after_export
from .phantom import SAGITTAL, LesionSpec, make_phantom

SEGMENT_TIMEOUT_S = 900.0
CHILD_TIMEOUT_S = 300.0


#: What the click path's children import: every child action's modules.
ACTIONS = panel.CHILD_ACTIONS
#: Why SCIsegTest stops under CTest when they are missing ({missing}: the module names).
NOBODY_TO_ASK = ("SCIsegTest stops: {missing} not installed in this Slicer and nobody can consent to installing them "
                 "under CTest. Open SCIseg and click Segment once (it offers the install), then run the test again.")


def missing_dependencies() -> list[str]:
    """The modules the click path's children import that Slicer's Python lacks (nothing is imported)."""
    needed = sorted({name for action in ACTIONS for name in panel.modules_needed(action)})
    return dependencies.missing_modules(tuple(needed))


def wait_for(run: Any, timeout_s: float, process_events: Callable[[], Any],
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], Any] = time.sleep) -> list:
    """Poll a child until it ends, calling ``process_events`` between polls (Slicer's UI stays alive); its progress
    events. Past ``timeout_s`` seconds the child is cancelled and TimeoutError raised."""
    deadline = clock() + timeout_s
    events: list = []
    while True:
        polled = run.poll()
        if isinstance(polled, list):
            events += polled
        if run.finished:
            return events
        if clock() > deadline:
            run.cancel()
            raise TimeoutError(f"the child process did not finish within {timeout_s} s")
        process_events()
        sleep(0.05)


def expect(condition: Any, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def click_path(scene, logic, python_executable: str, wait: Callable[[Any, float], list], say: Callable[[str], None]) -> None:
    """Run the scenario in ``scene`` (``logic``: the Segmentations module logic); temporary files are removed."""
    work = tempfile.mkdtemp(prefix="sciseg-selftest-")
    try:
        _click_path(scene, logic, python_executable, wait, say, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _finished(command, wait, what: str):
    wait(command, CHILD_TIMEOUT_S)
    expect(command.returncode == 0, f"{what} failed: {command.stderr}")
    return command


def _click_path(scene, logic, python_executable, wait, say, work: str) -> None:
    say("Synthesising a T2w scan with two lesions")
    case = make_phantom(seed=5, acquisition=SAGITTAL,
                        lesions=[LesionSpec(center_si_mm=-15.0, length_mm=16.0, width_fraction=0.9), LesionSpec(center_si_mm=20.0)])
    volume_node = mrml.add_volume_node(scene, case.image, "phantom")

    say("Segmenting with sciseg-demo in a child process")
    options = runner.RunOptions(model=models.BUNDLED_DEMO, device="cpu")
    run = panel_jobs.start_segmentation(volume_node, options, python_executable)
    events = wait(run, SEGMENT_TIMEOUT_S)
    expect(any(e.get("event") == "progress" for e in events), "the segmentation reported no progress")
    automatic = panel_jobs.import_result(scene, logic, run, volume_node, work)
    segmentation = panel_jobs.import_result(scene, logic, run, volume_node, work)  # the copy the rater corrects
    run.cleanup()
    expect(not run.work_dir.exists(), "the segmentation's work folder was left behind")
    ids = [segmentation.GetSegmentation().GetNthSegmentID(i) for i in range(2)]
    expect(ids == ["spinal_cord", "lesion"], f"segments {ids}")
    truth = sitk.GetArrayFromImage(case.cord) > 0
    labels = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, segmentation, volume_node))
    cord = labels > 0
    dice = 2 * np.sum(cord & truth) / (np.sum(cord) + np.sum(truth))
    expect(dice > 0.8, f"cord Dice {dice:.3f} against the phantom's truth")

    say("Editing: the rater adds lesion voxels")
    added = np.zeros_like(cord)
    z, y, x = np.argwhere(cord)[len(np.argwhere(cord)) // 2]
    added[z - 1 : z + 2, y, x] = True
    reference = mrml.image_from_volume_node(volume_node)
    lesion = mrml.image_from_array_zyx(((labels == 2) | added).astype(np.uint8), reference)
    mrml.set_segment_from_mask(logic, scene, segmentation, mrml.LESION, lesion, volume_node)
    written = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(logic, scene, segmentation, volume_node))
    expect(np.all(written[added] == 2) and set(np.unique(written).tolist()) <= {0, 1, 2}, "the edit is not in the labels")

    say("Measuring the lesions")
    command = _finished(panel_jobs.start_measurement(scene, logic, segmentation, volume_node, python_executable), wait, "measure")
    table, chart, centres = panel_jobs.finish_measurement(scene, command, volume_node)
    shutil.rmtree(command.folder, ignore_errors=True)
    expect(table.GetNumberOfRows() >= 1 and table.GetTable().GetColumnName(1) == "volume [mm3]", "no lesion table")
    expect(chart.GetNumberOfPlotSeriesNodes() == 2 and len(centres) == table.GetNumberOfRows(), "plot or centres missing")

    say("Exporting for training (twice: two versions, the second built on the first)")
    root = f"{work}/bids"
    for expected, parent in ((1, "prediction"), (2, "v001")):
        command = _finished(panel_jobs.start_export(scene, logic, segmentation, volume_node, root, "SCIsegTest",
                                                    python_executable), wait, "export")
        shutil.rmtree(command.folder, ignore_errors=True)
        result = json.loads(command.stdout.strip().splitlines()[-1])
        expect((result["version"], result["parent"]) == (expected, parent), f"export gave {result}")
        after_export(segmentation, command.stdout)  # what the panel does: the new version is the base
    exported = sitk.GetArrayFromImage(sitk.ReadImage(f"{root}/derivatives/labels/sub-phantom/anat/sub-phantom_T2w_dseg.nii.gz"))
    expect(np.all(exported[added] == 2), "the exported labels lack the rater's voxels")

    say("Comparing the correction with the model's result")
    command = _finished(panel_jobs.start_compare(scene, logic, automatic, segmentation, volume_node, python_executable),
                        wait, "compare")
    shutil.rmtree(command.folder, ignore_errors=True)
    changes = panel_results.compare_result(command.stdout)
    expect(changes["lesion_voxels_added"] > 0 and changes["lesion_dice"] < 1.0, f"compare gave {changes}")

    say("Measuring a scan without lesion at the NLI slice")
    empty = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(reference)
    mrml.set_segment_from_mask(logic, scene, segmentation, mrml.LESION, empty, volume_node)
    cord_image = mrml.image_from_array_zyx(cord.astype(np.uint8), reference)
    cord_rpi = sitk.GetArrayFromImage(volume.reorient(cord_image, volume.sct_to_itk_orientation("RPI")))  # (z I->S, y, x)
    nli_slice = int(np.nonzero(cord_rpi.any(axis=(1, 2)))[0].mean())
    command = _finished(panel_jobs.start_measurement(scene, logic, segmentation, volume_node, python_executable, nli_slice),
                        wait, "measure at the NLI")
    table, _chart, centres = panel_jobs.finish_measurement(scene, command, volume_node)
    shutil.rmtree(command.folder, ignore_errors=True)
    total = float(table.GetCellText(0, table.GetColumnIndex("interpolated_total_bridge_width [mm]")))
    expect(table.GetNumberOfRows() == 1 and centres == {} and total > 0.0, "no bridges at the NLI slice")
