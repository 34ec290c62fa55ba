"""The panel's jobs on the MRML scene: start a child on a segmentation and its volume, bring a result back.

What ``SCIseg/SCIseg.py``'s logic did, without Qt, so tests reach it on slicer-core (``Testing/test_panel.py``).
Every function takes the scene and the Segmentations module logic (``slicer.mrmlScene``,
``slicer.modules.segmentations.logic()`` in Slicer). Measure, export and compare first check that the
segmentation belongs to the volume (:func:`SCIsegLib.mrml.require_pairing`): a segmentation made on another
scan is refused with one sentence and nothing is written or started. Children are ``python -m SCIsegLib ...``
(:mod:`SCIsegLib.runner`); each one's temporary files are in its ``folder`` (removed by
:func:`SCIsegLib.panel.remove_job_files`). SimpleITK is imported here, so the Slicer module imports this
module only when a job starts, not at Slicer's start-up.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import SimpleITK as sitk

from . import mrml, panel, panel_binding, panel_case, panel_grey_matter, runner, volume

#: Segmentation node attribute: the model that made it.
MODEL_ATTRIBUTE = "SCIseg.Model"


def start_segmentation(volume_node, options: runner.RunOptions, python_executable: str,
                       engine=None) -> runner.SegmentationRun:
    """Write the volume to the run's private ``input.nii`` and start ``sciseg segment`` in a child, or send it to the
    warm ``engine`` (a :class:`~SCIsegLib.warm_client.WarmEngine`; :class:`~SCIsegLib.warm_run.EngineRun`, which
    runs it cold after a refusal or a crash)."""
    if engine is None:
        run = runner.SegmentationRun(options, python_executable=python_executable)
    else:
        from .warm_run import EngineRun

        run = EngineRun(engine, options, python_executable=python_executable)
    # Written on the UI thread (MRML is not thread-safe): uncompressed, a 4.3-Mvoxel scan takes 13-35 ms instead
    # of 350-525 ms gzipped (benchmarks/ui_thread_mrml.txt). The child names its outputs input_*.nii.gz either way.
    run.input_path = run.work_dir / "input.nii"
    try:
        mrml.save_volume_node_as_nifti(volume_node, run.input_path)
        run.start()
    except Exception:
        run.cleanup()  # the work folder and the input copy
        raise
    return run


def import_result(scene, logic, run: runner.SegmentationRun, volume_node, predictions_dir: str | os.PathLike[str],
                  case=None):
    """A new segmentation node with the run's masks on ``volume_node``, bound to ``case`` when there is one (its
    base becomes the prediction). The model's masks are kept, with SCT's names, in a folder of ``predictions_dir``
    (the panel's session folder, removed with the session: nothing is left in the user data folder), so an export
    records what the rater changed. Raises with the reason when the run failed."""
    outputs = run.outputs()
    cord, lesion = sitk.ReadImage(str(outputs["sc"])), sitk.ReadImage(str(outputs["lesion"]))
    node = mrml.import_sciseg_masks(logic, scene, volume_node, cord, lesion)
    folder = Path(tempfile.mkdtemp(prefix=f"{run.work_dir.name}-", dir=predictions_dir))
    stem = case.scan.stem if case is not None else "prediction"
    volume.write_image_atomic(sitk.Cast(cord > 0, sitk.sitkUInt8), folder / f"{stem}_sc_seg.nii.gz")
    volume.write_image_atomic(sitk.Cast(lesion > 0, sitk.sitkUInt8), folder / f"{stem}_lesion_seg.nii.gz")
    node.SetAttribute(panel_case.PREDICTION_FOLDER_ATTRIBUTE, str(folder))
    node.SetAttribute(MODEL_ATTRIBUTE, run.options.model)
    if case is not None:
        node.SetAttribute(panel_binding.DRAWN_ON_ATTRIBUTE, case.scan.key)
        node.SetAttribute(panel_case.BASE_ATTRIBUTE, "prediction")
    node.CreateClosedSurfaceRepresentation()
    return node


def label_map(scene, logic, segmentation_node, volume_node, chosen=None, case=None) -> sitk.Image:
    """The segmentation as SCIseg labels (0, 1 cord only, 2 lesion) on the volume's grid, after the pairing and
    case checks (:func:`SCIsegLib.panel_case.labels_of`)."""
    return panel_case.labels_of(scene, logic, case, segmentation_node, volume_node, chosen)


def start_compare(scene, logic, first_node, second_node, volume_node, python_executable: str,
                  first_choices=None, second_choices=None, case=None) -> runner.ChildCommand:
    """What changed from ``first_node`` to ``second_node``: ``sciseg compare`` in a child (numbers in its stdout).

    Both segmentations must belong to the volume (and its case)."""
    labels = [label_map(scene, logic, node, volume_node, chosen, case)
              for node, chosen in ((first_node, first_choices), (second_node, second_choices))]
    folder = tempfile.mkdtemp(prefix="sciseg-compare-")
    paths = [os.path.join(folder, f"labels_{index}.nii.gz") for index in range(2)]
    for image, path in zip(labels, paths, strict=True):
        volume.write_image_atomic(image, path)
    command = runner.ChildCommand(["compare", *paths], python_executable)
    command.folder = folder
    command.otherName = first_node.GetName()
    return command


def source_image_path(volume_node, root: str) -> str:
    """The file the volume was loaded from; a volume without one is saved into the BIDS dataset first."""
    path = panel_case.image_path(volume_node)
    if path is not None:
        return str(path)
    subject = panel_case.subject_label(volume_node.GetName())
    target = os.path.join(root, f"sub-{subject}", "anat", f"sub-{subject}_T2w.nii.gz")
    if not os.path.exists(target):
        mrml.save_volume_node_as_nifti(volume_node, target)
    return target


def start_export(scene, logic, segmentation_node, volume_node, root: str, rater: str, python_executable: str,
                 chosen=None, case=None) -> runner.ChildCommand:
    """Write the corrected label map and export it as a new version of the volume's case in a child
    (``python -m SCIsegLib.panel_export``): refused before anything is written when the segmentation belongs to
    another volume or case. The version's parent is the base the segmentation started from (its
    ``SCIseg.Base``; a Slicer prediction: ``prediction``; not known: the latest version)."""
    labels = panel_case.labels_of(scene, logic, case, segmentation_node, volume_node, chosen)
    folder = tempfile.mkdtemp(prefix="sciseg-export-")
    labels_path = os.path.join(folder, "corrected_labels.nii.gz")
    volume.write_image_atomic(labels, labels_path)
    source = source_image_path(volume_node, root)
    arguments = ["--root", root, "--image", source, "--labels", labels_path, "--rater", rater]
    if not os.path.basename(source).startswith("sub-"):
        arguments += ["--subject", panel_case.subject_label(volume_node.GetName())]
    masks = panel_case.prediction_masks(segmentation_node)
    base = segmentation_node.GetAttribute(panel_case.BASE_ATTRIBUTE) or ("prediction" if masks else None)
    if base == "prediction" and masks is None and segmentation_node.GetAttribute(panel_case.PREDICTION_FOLDER_ATTRIBUTE):
        # A Slicer prediction whose session folder is gone (a saved scene reopened after a restart): the case cannot
        # open that base, so the export is built on "empty" -- it still goes through, and warns when versions exist.
        base = "empty"
    if base:
        arguments += ["--base", base]
    if masks:
        arguments += ["--prediction-cord", str(masks[0]), "--prediction-lesion", str(masks[1])]
    drawn_on = segmentation_node.GetAttribute(panel_binding.DRAWN_ON_ATTRIBUTE)
    if drawn_on:
        arguments += ["--drawn-on", drawn_on]
    model = segmentation_node.GetAttribute(MODEL_ATTRIBUTE)
    if model:
        arguments += ["--model", model]
    arguments += panel_grey_matter.export_arguments(scene, logic, segmentation_node, volume_node, folder)  # _label-GM_seg
    command = runner.ChildCommand(arguments, python_executable, module="SCIsegLib.panel_export")
    command.folder = folder
    return command


def start_measurement(scene, logic, segmentation_node, volume_node, python_executable: str, nli_slice: int = -1,
                      chosen=None, case=None) -> runner.ChildCommand:
    """Write the current segments as masks and run ``sciseg analyze`` on them in a child process.

    nli_slice: axial slice (I->S) of the neurological level of injury, used when there is no lesion; -1 for none.
    """
    labels = label_map(scene, logic, segmentation_node, volume_node, chosen, case)
    folder = tempfile.mkdtemp(prefix="sciseg-measure-")
    stem = volume_node.GetName().replace(" ", "_") or "volume"
    cord_path = os.path.join(folder, f"{stem}_sc_seg.nii.gz")
    lesion_path = os.path.join(folder, f"{stem}_lesion_seg.nii.gz")
    volume.write_image_atomic(sitk.Cast(labels > 0, sitk.sitkUInt8), cord_path)
    volume.write_image_atomic(sitk.Cast(labels == 2, sitk.sitkUInt8), lesion_path)
    arguments = ["analyze", "--lesion", lesion_path, "--cord", cord_path, "-o", folder]
    if nli_slice >= 0:
        arguments += ["--nli-slice", str(nli_slice)]
    command = runner.ChildCommand(arguments, python_executable)
    command.folder, command.stem = folder, f"{stem}_lesion_seg"
    return command


def finish_measurement(scene, command: runner.ChildCommand, volume_node):
    """Table node (one row per lesion), plot of the per-slice damage ratio and cord area, lesion centres (RAS mm)."""
    if command.returncode != 0:
        raise RuntimeError(panel.failure_message(command))
    base = os.path.join(command.folder, command.stem)
    name = volume_node.GetName()
    table = mrml.table_node_from_csv(scene, base + "_analysis.csv", f"{name} lesions")
    profile = mrml.table_node_from_csv(scene, base + "_perslice.csv", f"{name} per slice")
    chart = mrml.plot_chart_from_table(
        scene, profile, "slice (I->S)", ["axial_damage_ratio []", "cord_area [mm2]"], f"{name} damage ratio and cord area")
    centres = mrml.lesion_centroids_ras(sitk.ReadImage(base + "_label.nii.gz"))
    return table, chart, centres
