"""The Slicer panel's grey matter, without Qt: which model segments it, the child that runs it, the segment it becomes
in the selected segmentation, and what Export passes on for ``_label-GM_seg``.

The **Grey matter** button runs a grey-matter model (:func:`grey_matter_model`: an installed one, e.g. SCT's
``graymatter``, before the bundled demo ``sciseg-gm-demo``) on the selected volume in a child (``sciseg segment
--model <gm>``, its 2D nnU-Net on the reference engine), then puts the mask into the selected segmentation as the
segment ``grey_matter`` (SNOMED CT 12958003 "Spinal cord gray matter", :data:`SCIsegLib.mrml.GREY_MATTER`) beside the
cord and lesion: the rater edits it in Segment Editor and **Export** writes it as ``<stem>_label-GM_seg.nii.gz``
with its sidecar, on the scan's grid. The model's mask is kept (SCT's ``<stem>_gmseg.nii.gz``) so the export records
what the rater changed. Tested on slicer-core with the demo model on a real T2*w scan
(``Testing/test_panel_grey_matter.py``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from .compartments_segments import GREY_MATTER, has_grey_matter
from .models import ModelInfo

#: Segmentation node attributes: the model's grey-matter mask (a file of the panel's session folder) and the model.
PREDICTION_ATTRIBUTE = "SCIseg.GreyMatterPrediction"
MODEL_ATTRIBUTE = "SCIseg.GreyMatterModel"
#: The bundled demonstration grey-matter model (``Resources/Models/sciseg-gm-demo``).
DEMO_GM_MODEL = "sciseg-gm-demo"
#: The grey-matter drafts' folder inside a case's drafts folder (not listed as label-map drafts; see
#: :mod:`SCIsegLib.panel_grey_matter_case`).
DRAFTS = "grey_matter"
#: The exported grey matter's file suffix (``<stem>_label-GM_seg.nii.gz``).
GM_FILE_SUFFIX = f"{GREY_MATTER.export_suffix}.nii.gz"
NO_MODEL = "No grey-matter model is installed: install SCT's with `sciseg models install graymatter`."
EDITED_DURING_RUN = ("The grey-matter segment of '{name}' was edited while the grey matter was being segmented. Replace "
                     "it with the model's grey matter (those edits are lost)?")
NOT_IMPORTED = "The model's grey matter was not imported: your edits of the grey-matter segment are kept."
REPLACE_QUESTION = ("'{name}' already has a grey-matter segment. Segment the grey matter again and replace it "
                    "(your edits of the grey matter are lost)?")


def grey_matter_model(infos: list[ModelInfo]) -> str | None:
    """The grey-matter model the Grey matter button runs: the first installed one that is not the bundled demo, else
    the demo; None when no model segments grey matter."""
    names = [info.name for info in infos if has_grey_matter(info)]
    real = [name for name in names if name != DEMO_GM_MODEL]
    return (real or names or [None])[0]


def segment_model_names(infos: list[ModelInfo]) -> list[str]:
    """The models the Segment button offers: those that segment the cord (a grey-matter model gives no cord and
    lesion to import; it runs from the Grey matter button)."""
    return [info.name for info in infos if not has_grey_matter(info)]


def model_sentence(name: str) -> str:
    """The status line when the grey-matter run starts."""
    if name == DEMO_GM_MODEL:
        return (f"Segmenting the grey matter with {DEMO_GM_MODEL}, a small demonstration model (3 training scans): "
                "install SCT's graymatter model for real scans.")
    return f"Segmenting the grey matter with {name}..."


def start(volume_node, model: str, device: str, python_executable: str, segment_at_click: str | None = None):
    """Write the volume to the run's private ``input.nii`` and start ``sciseg segment --model <model>`` in a child.
    ``segment_at_click``: the digest of the grey-matter segment when the rater clicked (None: none), kept on the run
    as ``grey_matter_at_click`` (:func:`may_import`)."""
    from . import mrml, runner

    run = runner.SegmentationRun(runner.RunOptions(model=model, device=device), python_executable=python_executable)
    run.grey_matter_at_click = segment_at_click
    run.input_path = run.work_dir / "input.nii"
    try:
        mrml.save_volume_node_as_nifti(volume_node, run.input_path)
        run.start()
    except Exception:
        run.cleanup()
        raise
    return run


def mask_path(run) -> Path:
    """The ``_gmseg`` mask of a finished grey-matter run (the child's ``result`` event lists its outputs)."""
    outputs = [Path(output) for record in (run.result or {}).get("records", []) for output in record.get("outputs", [])]
    found = [path for path in outputs if path.name.endswith("_gmseg.nii.gz")]
    if not found or not found[0].is_file():
        raise ValueError(f"the grey-matter model wrote no _gmseg mask (outputs: {', '.join(p.name for p in outputs) or 'none'}).")
    return found[0]


def add_grey_matter(scene, logic, segmentation_node, volume_node, mask, model: str, predictions_dir: str | os.PathLike[str]) -> str:
    """Put the grey-matter ``mask`` (on ``volume_node``'s grid) into ``segmentation_node`` as its grey-matter segment
    (replacing one there), keep the model's mask as ``<volume>_gmseg.nii.gz`` in a new folder of ``predictions_dir``;
    returns the segment id. Refused (ValueError, nothing changed) when the segmentation was made on another volume."""
    import SimpleITK as sitk

    from . import mrml, volume

    mrml.require_pairing(segmentation_node, volume_node)
    segment_id = mrml.grey_matter_segment(segmentation_node) or mrml.GREY_MATTER.segment_id
    spec = mrml.SegmentSpec(segment_id, *(getattr(mrml.GREY_MATTER, f) for f in ("name", "color", "terminology", "label_value")))
    mrml.set_segment_from_mask(logic, scene, segmentation_node, spec, mask, volume_node)
    from .panel_grey_matter_case import mark_saved

    mark_saved(segmentation_node, mrml.segment_mask(logic, scene, segmentation_node, segment_id, volume_node))
    folder = Path(tempfile.mkdtemp(prefix="sciseg-gm-", dir=predictions_dir))
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in volume_node.GetName()) or "volume"
    kept = volume.write_image_atomic(sitk.Cast(mask > 0, sitk.sitkUInt8), folder / f"{stem}_gmseg.nii.gz")
    segmentation_node.SetAttribute(PREDICTION_ATTRIBUTE, str(kept))
    segmentation_node.SetAttribute(MODEL_ATTRIBUTE, model)
    return segment_id


def import_run(scene, logic, run, segmentation_node, volume_node, predictions_dir: str | os.PathLike[str]) -> str:
    """A finished grey-matter run's mask into the segmentation (:func:`add_grey_matter`); returns the segment id."""
    import SimpleITK as sitk

    return add_grey_matter(scene, logic, segmentation_node, volume_node, sitk.ReadImage(str(mask_path(run))),
                           run.options.model, predictions_dir)


def export_arguments(scene, logic, segmentation_node, volume_node, folder: str | os.PathLike[str]) -> list[str]:
    """``panel_export``'s grey-matter arguments: the segment written as a mask on the volume's grid into ``folder``,
    the model's mask and the model; none when the segmentation has no grey-matter segment."""
    from . import mrml, volume

    segment_id = mrml.grey_matter_segment(segmentation_node)
    if segment_id is None:
        return []
    reference = mrml.image_from_volume_node(volume_node)
    mask = mrml.segment_mask(logic, scene, segmentation_node, segment_id, volume_node).astype("uint8")
    path = volume.write_image_atomic(mrml.image_from_array_zyx(mask, reference), Path(folder) / "grey_matter.nii.gz")
    arguments = ["--grey-matter", str(path)]
    prediction = segmentation_node.GetAttribute(PREDICTION_ATTRIBUTE)
    if prediction and Path(prediction).is_file():
        arguments += ["--predicted-grey-matter", prediction]
    model = segmentation_node.GetAttribute(MODEL_ATTRIBUTE)
    return arguments + (["--grey-matter-model", model] if model else [])


def may_replace(segmentation_node, ask: Any) -> bool:
    """True when the grey matter may be segmented into ``segmentation_node``: it has none yet, or ``ask`` (the
    view's Yes/No question) says to replace it."""
    from . import mrml

    try:
        existing = mrml.grey_matter_segment(segmentation_node)
    except ValueError:
        existing = "several"
    return existing is None or ask(REPLACE_QUESTION.format(name=segmentation_node.GetName()))


def may_import(scene, logic, run, segmentation_node, volume_node, ask: Any) -> bool:
    """True when a finished run's grey matter may replace the segmentation's grey-matter segment: it is as it was at
    the click (the rater agreed then, :func:`may_replace`), or ``ask`` says so after the rater edited it during the run."""
    from .panel_grey_matter_case import grey_matter_digest

    now = grey_matter_digest(scene, logic, segmentation_node, volume_node)
    return now is None or now == getattr(run, "grey_matter_at_click", None) or ask(
        EDITED_DURING_RUN.format(name=segmentation_node.GetName()))


def draft_path(case, rater: str) -> Path:
    """The rater's grey-matter draft of the case (it may not exist); contained in the derivatives folder."""
    from .cases.case import inside_derivatives
    from .cases.drafts import draft_folder, rater_key

    folder = inside_derivatives(case.root, draft_folder(case.root, case.scan) / DRAFTS, "the grey-matter drafts folder")
    return folder / f"{rater_key(rater)}.nrrd"


def discard_drafts(case, raters: set[str], exported_zyx=None, labels_taken: float | None = None) -> None:
    """Remove these raters' grey-matter drafts of the case (the export child, once the version is written), except
    one written after the exported masks were taken (``labels_taken``, a file time in s) that holds other grey matter
    than ``exported_zyx`` (0/1 on the case's grid; None: none was exported): edits made while the export ran."""
    from .cases.drafts import draft_holds_more

    for rater in raters:
        path = draft_path(case, rater)
        held = None if exported_zyx is None else (exported_zyx > 0).astype("uint8")
        if not draft_holds_more(path, case.scan, held, labels_taken):
            path.unlink(missing_ok=True)


def export_masks(mask_path: Path | None, predicted_path: Path | None, model: str | None) -> dict:
    """``Case.export``'s ``extra_masks`` for the panel's grey matter (the export child): ``{"_label-GM_seg.nii.gz":
    (mask, sidecar fields)}``, empty without a mask. The sidecar names the structure (SNOMED CT code, terminology),
    the grey-matter model and what the rater changed against its mask (voxels added and removed, Dice; None when
    the model's mask is not known). Both files lie on the grid of the volume the rater edited."""
    if mask_path is None:
        return {}
    import SimpleITK as sitk

    from .training.export import correction_summary

    mask = sitk.ReadImage(str(mask_path))
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(predicted_path))) if predicted_path is not None else None
    fields = {"Structure": "gm", "SegmentName": GREY_MATTER.name, "SNOMEDCode": GREY_MATTER.snomed_code,
              "Terminology": GREY_MATTER.terminology, "Model": model,
              **correction_summary(predicted, sitk.GetArrayFromImage(mask))}
    return {GM_FILE_SUFFIX: (mask, fields)}
