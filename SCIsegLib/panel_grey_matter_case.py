"""The grey-matter segment of a case's segmentation in the Slicer panel, without Qt: what is saved of it, the rater's
grey-matter draft, and what comes back when the case opens.

The case model (:mod:`SCIsegLib.cases`) drafts and versions the 0/1/2 label map (cord, lesion); grey matter lies
inside the cord and is kept beside it:

* a version's grey matter is its ``<stem>_label-GM_seg.nii.gz`` (:data:`SCIsegLib.panel_grey_matter.GM_FILE_SUFFIX`);
* a rater's unsaved grey matter is a draft ``.drafts/.../<stem>/grey_matter/<rater key>.nrrd`` (the same NRRD and
  header as :mod:`SCIsegLib.cases.drafts`, 0/1 on the scan's grid), written about a second after the rater paused and
  before the rater leaves the case, removed by the export;
* what is saved is the sha256 of the grey-matter mask on the volume's grid (:data:`SAVED_ATTRIBUTE`), set when the
  model's mask is imported, when a version is opened and when an export finished.

When the case opens again, the grey matter is the rater's draft when there is one of the base that opened, else the
base version's grey matter. Tested in ``Testing/test_panel_grey_matter.py``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import mrml
from .cases.drafts import GREY_MATTER_KEY, Draft, draft_labels, read_record, write_draft
from .cases.scan import CaseRefused
from .panel_binding import is_bound
from .panel_grey_matter import GM_FILE_SUFFIX, MODEL_ATTRIBUTE, draft_path

#: Segmentation node attributes: sha256 of the grey matter last saved (volume grid), and of the last one drafted.
SAVED_ATTRIBUTE = "SCIseg.GreyMatterSaved"
DRAFTED_ATTRIBUTE = "SCIseg.GreyMatterDrafted"


def digest(mask_zyx: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(mask_zyx > 0, dtype=np.uint8).tobytes()).hexdigest()


def mark_saved(segmentation_node, mask_zyx: np.ndarray | None) -> None:
    """The grey matter ``mask_zyx`` (volume grid; None: none) is what is saved; nothing is drafted since."""
    if mask_zyx is None:
        segmentation_node.RemoveAttribute(SAVED_ATTRIBUTE)
    else:
        segmentation_node.SetAttribute(SAVED_ATTRIBUTE, digest(mask_zyx))
    segmentation_node.RemoveAttribute(DRAFTED_ATTRIBUTE)


def _segment_zyx(scene, logic, segmentation_node, volume_node) -> np.ndarray | None:
    """The grey-matter segment on the volume's grid; None without one (or with several: nothing is guessed)."""
    try:
        segment_id = mrml.grey_matter_segment(segmentation_node)
    except ValueError:
        return None
    return None if segment_id is None else mrml.segment_mask(logic, scene, segmentation_node, segment_id, volume_node)


def grey_matter_digest(scene, logic, segmentation_node, volume_node) -> str | None:
    """The digest of the segmentation's grey-matter segment on the volume's grid; None without one (or with several)."""
    mask = _segment_zyx(scene, logic, segmentation_node, volume_node)
    return None if mask is None else digest(mask)


def grey_matter_unsaved(scene, logic, case, segmentation_node, volume_node) -> bool:
    """True when the case's own segmentation has a grey-matter segment that differs from what was saved (the
    model's mask, the version's, the last export)."""
    if case is None or not is_bound(segmentation_node, case):
        return False
    mask = _segment_zyx(scene, logic, segmentation_node, volume_node)
    return mask is not None and digest(mask) != segmentation_node.GetAttribute(SAVED_ATTRIBUTE)


def keep_draft(scene, logic, case, segmentation_node, volume_node, rater: str) -> Draft | None:
    """Unsaved grey-matter edits of the case's own segmentation go to the rater's grey-matter draft (atomic); back to
    what is saved, the draft goes. Returns the draft written, None when nothing was written. ``volume_node`` None:
    the volume left the scene; the segmentation is read on its own reference geometry."""
    if case is None or not is_bound(segmentation_node, case):
        return None
    mask = _segment_zyx(scene, logic, segmentation_node, volume_node)
    if mask is None:
        return None
    current, path = digest(mask), draft_path(case, rater)
    if current == segmentation_node.GetAttribute(SAVED_ATTRIBUTE):
        path.unlink(missing_ok=True)
        return None
    if current == segmentation_node.GetAttribute(DRAFTED_ATTRIBUTE) and path.is_file():
        return None
    on_case_grid = _on_case_grid(case, mask, segmentation_node, volume_node)
    if on_case_grid is None:
        return None
    draft = write_draft(path.parent, case.scan, rater, on_case_grid, case.base.name)
    segmentation_node.SetAttribute(DRAFTED_ATTRIBUTE, current)
    return draft


def _on_case_grid(case, mask_zyx: np.ndarray, segmentation_node, volume_node) -> np.ndarray | None:
    """A grey-matter mask read on the volume's grid (None: the segmentation's reference geometry) on the case's grid;
    None when it lies on another grid."""
    image = mrml.image_from_array_zyx(mask_zyx.astype(np.uint8), mrml.reference_grid(segmentation_node, volume_node))
    try:
        return sitk.GetArrayFromImage(case.check(image, case.scan.key, "the grey matter")).astype(np.uint8)
    except CaseRefused:
        return None


def keep_superseded(scene, logic, case, segmentation_node, volume_node, rater: str, folder: Path, suffix: str) -> Draft | None:
    """Before the case's segmentation is superseded (``panel_case.supersede``): its unsaved grey matter is written to
    ``folder`` (``<rater key><suffix>``, the grey-matter draft's format), never to the rater's grey-matter draft,
    which follows the case's new segmentation. Returns what was written, None when nothing was unsaved."""
    if case is None or not is_bound(segmentation_node, case):
        return None
    mask = _segment_zyx(scene, logic, segmentation_node, volume_node)  # read once: the test below and the file
    if mask is None or digest(mask) == segmentation_node.GetAttribute(SAVED_ATTRIBUTE):
        return None
    on_case_grid = _on_case_grid(case, mask, segmentation_node, volume_node)
    if on_case_grid is None:
        return None
    return write_draft(folder, case.scan, rater, on_case_grid, case.base.name, key=GREY_MATTER_KEY, suffix=suffix)


def _read_base(case) -> tuple[np.ndarray, str | None] | None:
    """The base version's grey matter on the case's grid and its model; None when the base has none."""
    if case.base.kind != "version" or not case.base.files:
        return None
    path = case.base.files[0].parent / f"{case.scan.stem}{GM_FILE_SUFFIX}"
    if not path.is_file():
        return None
    try:
        mask = sitk.GetArrayFromImage(case.scan.align(sitk.ReadImage(str(path)), f"the grey matter of {case.base.name}"))
    except (RuntimeError, CaseRefused) as error:
        logging.warning("SCIseg: %s was not loaded: %s", path, error)
        return None
    try:
        model = json.loads(path.with_name(path.name.removesuffix(".nii.gz") + ".json").read_text()).get("Model")
    except (OSError, ValueError, AttributeError):
        model = None
    return (mask > 0).astype(np.uint8), model


def _read_draft(case, rater: str) -> np.ndarray | None:
    """The rater's grey-matter draft of the base that opened, on the case's grid; None when there is none."""
    path = draft_path(case, rater) if rater.strip() else None
    draft = read_record(path) if path is not None and path.is_file() else None
    if draft is None or draft.base != case.base.name:
        return None
    try:
        return (draft_labels(draft, case.scan) > 0).astype(np.uint8)
    except CaseRefused as error:
        logging.warning("SCIseg: %s was not restored: %s", path, error)
        return None


def add_base_grey_matter(scene, logic, case, segmentation_node, volume_node, rater: str = "") -> str | None:
    """The grey matter of a just-opened case into its new segmentation: the base version's ``_label-GM_seg`` (saved),
    or the rater's unsaved grey-matter draft of that base (restored, still unsaved). Returns what came back
    (``"version"``, ``"draft"``) or None. A file that cannot be read or lies on another grid is left out with a warning
    in Slicer's log."""
    base = _read_base(case)
    draft = _read_draft(case, rater)
    if base is None and draft is None:
        return None
    reference = mrml.image_from_volume_node(volume_node)

    def on_volume(mask_zyx: np.ndarray) -> sitk.Image:
        return mrml.on_grid_of(case.scan.grid.image_of(mask_zyx), reference, what="the grey matter",
                               where=f"volume '{volume_node.GetName()}'")

    shown = draft if draft is not None else base[0]
    mrml.set_segment_from_mask(logic, scene, segmentation_node, mrml.GREY_MATTER, on_volume(shown), volume_node)
    mark_saved(segmentation_node, sitk.GetArrayFromImage(on_volume(base[0])) if base is not None else None)
    if draft is not None:
        segmentation_node.SetAttribute(DRAFTED_ATTRIBUTE, digest(sitk.GetArrayFromImage(on_volume(draft))))
    if base is not None and base[1]:
        segmentation_node.SetAttribute(MODEL_ATTRIBUTE, str(base[1]))
    return "draft" if draft is not None else "version"


def after_export(segmentation_node, volume_node, stdout: str) -> None:
    """A finished export (``panel_export``'s JSON line): the grey matter it wrote is what is saved now."""
    from .panel_results import export_result

    result = export_result(stdout)
    if segmentation_node is None or volume_node is None or result is None:
        return
    files = sorted(Path(result["folder"]).glob(f"*{GM_FILE_SUFFIX}"))
    if not files:
        mark_saved(segmentation_node, None)
        return
    mask = mrml.on_grid_of(sitk.ReadImage(str(files[0])), mrml.image_from_volume_node(volume_node), what="the exported grey matter")
    mark_saved(segmentation_node, sitk.GetArrayFromImage(mask))
