"""The grey-matter segment of ``sciseg review``, offered when a grey-matter model is installed (or bundled).

* The segment: :data:`SCIsegLib.compartments_segments.GREY_MATTER` (id ``grey_matter``, SNOMED CT 12958003 "Spinal
  cord gray matter" in our terminology, its colour), added to every case's segmentation beside cord and lesion.
* What it opens with: the version's ``<stem>_label-GM_seg.nii.gz`` when the case opens from a version that has one;
  the model's ``derivatives/sciseg/.../<stem>_gmseg.nii.gz`` (``sciseg segment --model graymatter``) when it opens
  from the prediction; else empty. A draft restores cord and lesion only (its label map has no grey matter): the
  grey matter then opens from the draft's base.
* Editing: grey matter lies inside the cord, so while it is the active segment the editor lets segments overlap
  (Slicer's "allow overlap": a grey-matter stroke never takes voxels from cord or lesion); with cord or lesion active
  it is Slicer's "overwrite all" as before (those strokes take the voxels they paint from the grey matter too).
* Drafts: the grey matter's own draft beside the rater's draft, ``<rater key>.gm.nrrd`` (written whole when it differs
  from what was opened or exported, restored with the rater's draft, gone at export); grey-matter strokes count as
  unsaved strokes like the others (:class:`GreyMatterDrafts`).
* Export: ``<stem>_label-GM_seg.nii.gz`` (+ sidecar: structure, SNOMED code) in the same version as cord and lesion,
  on the scan's grid, when the segment holds voxels or the base had grey matter (an emptied one is recorded as empty).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

import hashlib

from .. import mrml
from ..cases import Case, draft_folder, inside_derivatives, rater_key
from ..cases.drafts import GREY_MATTER_KEY, GREY_MATTER_SUFFIX, draft_labels, read_record, write_draft
from ..compartments_segments import GREY_MATTER, gm_output_names, has_grey_matter
from ..models import list_models
from .segment_arrays import segment_array_zyx

GM_SUFFIX = f"{GREY_MATTER.export_suffix}.nii.gz"  # _label-GM_seg.nii.gz
GM_SEGMENT = mrml.SegmentSpec(GREY_MATTER.segment_id, GREY_MATTER.name, GREY_MATTER.color, GREY_MATTER.terminology,
                              label_value=1)
GM_FIELDS = {"Structure": "gm", "SegmentName": GREY_MATTER.name, "SNOMEDCode": GREY_MATTER.snomed_code,
             "Terminology": GREY_MATTER.terminology}


def grey_matter_model(store: Path | None = None) -> str | None:
    """The name of the first installed or bundled model that segments grey matter, None when there is none."""
    return next((model.name for model in list_models(store) if has_grey_matter(model)), None)


def base_grey_matter_file(case: Case) -> Path | None:
    """The grey-matter mask the case's base has (version file or model prediction), None when it has none."""
    if case.base.kind == "version" and case.base.files:
        path = case.base.files[0].parent / f"{case.scan.stem}{GM_SUFFIX}"
    elif case.base.kind == "prediction":
        folder = Path(case.root) / "derivatives" / "sciseg" / f"sub-{case.scan.subject}"
        folder = (folder / f"ses-{case.scan.session}" if case.scan.session else folder) / "anat"
        path = inside_derivatives(case.root, folder / gm_output_names(case.scan.stem)["gm"], "the grey-matter prediction")
    else:
        return None
    return path if path.is_file() else None


def base_grey_matter(case: Case) -> sitk.Image:
    """The base's grey matter as a binary uint8 image on the scan's grid (empty when it has none)."""
    path = base_grey_matter_file(case)
    if path is None:
        return case.scan.grid.blank()
    mask = sitk.GetArrayFromImage(case.scan.align(sitk.ReadImage(str(path)), f"the grey matter {path.name}")) > 0
    return case.scan.grid.image_of(mask.astype(np.uint8))


def add_grey_matter_segment(session, case: Case, segmentation_node, volume_node) -> None:
    """Add the grey-matter segment (the base's mask, or empty) to a case's segmentation."""
    mrml.set_segment_from_mask(session.logic, session.scene, segmentation_node, GM_SEGMENT, base_grey_matter(case),
                               volume_node)


def has_grey_matter_segment(segmentation_node) -> bool:
    return segmentation_node.GetSegmentation().GetSegment(GM_SEGMENT.segment_id) is not None


def grey_matter_mask(session) -> np.ndarray | None:
    """The open case's grey matter now, (z, y, x) bool, None when it has no grey-matter segment."""
    case = session.case
    if case is None or not has_grey_matter_segment(case.segmentation_node):
        return None
    mask = segment_array_zyx(case.segmentation_node, GM_SEGMENT.segment_id, case.volume_node)  # milliseconds
    if mask is None:  # not on the volume's grid: Slicer's export resamples it
        mask = mrml.segment_mask(session.logic, session.scene, case.segmentation_node, GM_SEGMENT.segment_id, case.volume_node)
    return mask


def grey_matter_export(session) -> dict[str, tuple[sitk.Image, dict]]:
    """What an export adds for the grey matter: ``{GM_SUFFIX: (mask on the scan's grid, sidecar fields)}``, or {}
    when the case has no grey-matter segment, or an empty one and a base without grey matter."""
    mask = grey_matter_mask(session)
    if mask is None:
        return {}
    case = session.case.case
    if not mask.any() and base_grey_matter_file(case) is None:
        return {}
    return {GM_SUFFIX: (case.scan.grid.image_of(mask.astype(np.uint8)), dict(GM_FIELDS))}


def overwrite_mode(segment_id: str):
    """The editor's overwrite mode while ``segment_id`` is the active segment (see the module's docstring)."""
    from trame_slicer.segmentation import SegmentationOverwriteMode

    if segment_id == GM_SEGMENT.segment_id:
        return SegmentationOverwriteMode.ALLOW_OVERLAP
    return SegmentationOverwriteMode.OVERWRITE_ALL


def bind_grey_matter(app) -> None:
    """The app's binding: ``gm_available`` (the segment toggle shows "Grey matter") and the overwrite mode that follows
    the active segment (:func:`overwrite_mode`)."""
    app.state.gm_available = bool(app.session.grey_matter)

    def follow(segment: str, **_) -> None:
        if app.session.case is not None:
            app.slicer_app.segmentation_editor.set_overwrite_mode(overwrite_mode(segment))

    app.state.change("segment")(follow)


GM_DRAFT_KEY, GM_DRAFT_SUFFIX = GREY_MATTER_KEY, GREY_MATTER_SUFFIX


SCENE = object()  # "read the grey matter from the scene now" (the default of GreyMatterDrafts' methods)


def _digest(mask: np.ndarray | None) -> str | None:
    return None if mask is None else hashlib.sha256(np.packbits(mask.astype(bool)).tobytes()).hexdigest()


class GreyMatterDrafts:
    """What of the open case's grey matter is saved: as opened or exported (``saved``), or held by the last grey-matter
    draft written (``drafted``); digests of the (z, y, x) masks. One per review session."""

    def __init__(self) -> None:
        self.saved: str | None = None
        self.drafted: str | None = None

    @staticmethod
    def _path(case: Case, rater: str) -> Path:
        folder = inside_derivatives(case.root, draft_folder(case.root, case.scan), "the drafts folder")
        return folder / f"{rater_key(rater)}{GM_DRAFT_SUFFIX}"

    def opened(self, session, draft_of: str | None) -> None:
        """After the case opened with its base's grey matter: restore the rater's grey-matter draft when the case
        was opened for the rater's draft (``draft_of``) and that draft started from the base it opened (same image
        content), and remember what is saved."""
        mask = grey_matter_mask(session)
        self.saved, self.drafted = _digest(mask), None
        case = session.case.case
        if mask is None or draft_of is None:
            return
        path = self._path(case, draft_of)
        record = read_record(path, GM_DRAFT_KEY) if path.is_file() else None
        if record is None or record.scan_sha256 != case.scan.sha256 or record.base != case.base.name:
            return
        drafted = draft_labels(record, case.scan) > 0
        mrml.set_segment_from_mask(session.logic, session.scene, session.case.segmentation_node, GM_SEGMENT,
                                   case.scan.grid.image_of(drafted.astype(np.uint8)), session.case.volume_node)
        self.drafted = _digest(drafted)

    def unsaved(self, session, mask=SCENE) -> bool:
        """True when the grey matter (``mask``: a copy read before, else the scene's now) differs from what was opened
        or last exported."""
        mask = grey_matter_mask(session) if mask is SCENE else mask
        return mask is not None and _digest(mask) != self.saved

    def safe(self, session, mask=SCENE) -> bool:
        """True when nothing of the grey matter exists only in memory (as saved, or in the last draft written)."""
        digest = _digest(grey_matter_mask(session) if mask is SCENE else mask)
        return digest is None or digest in (self.saved, self.drafted)

    def save(self, session, rater: str, previous: str | None = None, mask=SCENE) -> None:
        """Write the grey matter's draft (atomic) when it changed since the last one; remove it when saved again.
        ``previous``: the name the drafts were written under before (the draft moves to the new name); ``mask``: the
        grey matter read before (a background write never reads the scene), else the scene's now."""
        mask = grey_matter_mask(session) if mask is SCENE else mask
        if mask is None:
            return
        case = session.case.case
        if previous is not None and previous.strip() != rater.strip():
            self.discard(session, previous)
        digest = _digest(mask)
        if digest == self.saved:
            self.discard(session, rater)
        elif digest != self.drafted:
            folder = self._path(case, rater).parent
            write_draft(folder, case.scan, rater, mask.astype(np.uint8), case.base.name, key=GM_DRAFT_KEY,
                        suffix=GM_DRAFT_SUFFIX)
            self.drafted = digest

    def discard(self, session, rater: str) -> None:
        if session.case is not None:
            self._path(session.case.case, rater).unlink(missing_ok=True)
        self.drafted = None

    def exported(self, session, *raters: str | None) -> None:
        """After an export: the grey matter now is saved; the raters' grey-matter drafts go."""
        for rater in {r for r in raters if r is not None}:
            self.discard(session, rater)
        self.saved = _digest(grey_matter_mask(session))
