"""One open case in a Slicer scene, bound to the case model (:mod:`SCIsegLib.cases`): load, count, measure, draft, export.

The scene is trame-slicer's (``SlicerApp``): the same ``SCIsegLib.mrml`` code as the Slicer module
puts the image and the case's label map in it (segments ``spinal_cord`` = cord only and ``lesion``, our
terminology, names and colours), trame-slicer's ``SegmentationEditor`` edits them with overwrite of all
segments (painting lesion takes the voxels from "cord only", as nnU-Net's nested regions), and the case
(:class:`SCIsegLib.cases.Case`) decides what is opened (latest version, prediction, a draft), what is unsaved,
where drafts go and what an export may write. The segmentation node carries the key of the scan it was made
for (attribute :data:`CASE_ATTRIBUTE`); export and measures refuse a segmentation whose key is not the case's.
Arrays are (z, y, x).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import mrml
from ..cases import Case, CaseNote, CaseRefused, Draft, ExportOutcome, Lease, new_holder
from ..cases.notes import checked_flags, checked_note
from ..training.export import latest_version
from ..volume import load_image
from ..warm_client import WarmEngines
from .cases import case_drafts
from .grey_matter import (
    SCENE,
    GreyMatterDrafts,
    add_grey_matter_segment,
    grey_matter_export,
    grey_matter_mask,
    grey_matter_model,
)
from .memory import release_freed_memory
from .lesion_table import measure_lesions
from .paths import case_image_path, prediction_paths
from .predictions import prediction_sidecar, publish_prediction, start_segmentation  # noqa: F401 - re-exported
from .segment_arrays import sciseg_labels_zyx
from .draft_writer import DraftWriter

CASE_ATTRIBUTE = "SCIseg.Case"  # the segmentation node's attribute: the Scan.key of the case it was made for
LESION_NUMBERS = "lesion numbers"  # the locked point list that shows the lesion table's numbers in the views
__all__ = ["CASE_ATTRIBUTE", "ExportOutcome", "OpenCase", "ReviewSession", "measure_lesions", "publish_prediction",
           "start_segmentation"]


@dataclass
class OpenCase:
    """The case in the scene: its id, the case model, its nodes, and the lesion centres last measured."""

    case_id: str
    case: Case
    volume_node: object
    segmentation_node: object
    lesion_centres_ras: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    opening: int = 0  # which opening of the session this is: what waits for a case names it so, holding no node

    @property
    def image_path(self) -> Path:
        return self.case.scan.path


class ReviewSession:
    """Open, edit, measure, draft and export cases of one BIDS root in a trame-slicer ``SlicerApp``.

    Opening a case closes the previous one first: its nodes leave the scene, the undo history is
    cleared, and the freed memory goes back to the system (:mod:`.memory`), so a rater can go through
    hundreds of cases in one server.
    """

    def __init__(self, slicer_app, root: Path, model: str | None = None, grey_matter: bool | None = None) -> None:
        self.app = slicer_app
        self.root = Path(root)
        self.model = model
        # a grey-matter segment in every case when a grey-matter model is installed (None: look for one)
        self.grey_matter = grey_matter_model() is not None if grey_matter is None else grey_matter
        self.grey_matter_drafts = GreyMatterDrafts()
        self.engines: WarmEngines | None = None  # the worker's warm engines (None: every segmentation is a child)
        self.case: OpenCase | None = None
        self._draft_rater: str | None = None  # the name the open case's draft was last written under
        self.holder = new_holder()  # this session's lease id: other sessions see that it has its case open
        self._opened_at: float | None = None
        self.lesion_numbers = self._lesion_numbers_node()
        self.drafts = DraftWriter()  # drafts after strokes, written in the background in order
        self.openings = 0

    def _lesion_numbers_node(self):
        """One locked point list for the session (kept across cases): label ``k`` at lesion ``k``'s centre."""
        node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", LESION_NUMBERS)
        node.CreateDefaultDisplayNodes()
        node.SetLocked(True)
        node.SetHideFromEditors(True)
        display = node.GetDisplayNode()
        display.SetPointLabelsVisibility(True)
        display.SetTextScale(4.0)
        display.SetGlyphScale(1.5)
        display.SetSelectedColor(1.0, 0.85, 0.0)  # yellow: apart from the lesion's red and the cord's pale yellow
        display.SetHandlesInteractive(False)
        return node

    def show_lesion_numbers(self, centres_ras: dict[int, tuple[float, float, float]]) -> None:
        """Put the lesion table's numbers where the lesions are: point ``k`` at lesion ``k``'s centre (RAS mm)."""
        self.lesion_numbers.RemoveAllControlPoints()
        for label, (r, a, s) in sorted(centres_ras.items()):
            self.lesion_numbers.AddControlPoint(float(r), float(a), float(s), str(label))

    @property
    def scene(self):
        return self.app.scene

    @property
    def logic(self):
        return self.app.segmentations_logic

    @property
    def editor(self):
        return self.app.segmentation_editor

    def close_case(self) -> None:
        """Remove the case's nodes (with their display and storage nodes) and its undo history; free the memory."""
        if self.case is None:
            return
        self.drafts.wait()  # every draft asked for lands under this case before it closes
        case, self.case = self.case, None
        self._draft_rater = None
        try:
            case.case.release(self.holder)
        except (OSError, CaseRefused):
            pass  # a lease left behind goes stale (STALE_S) or dies with this process
        self._opened_at = None
        self.lesion_numbers.RemoveAllControlPoints()
        self._discard(case.segmentation_node, case.volume_node)
        del case  # its arrays too, before the memory is given back
        release_freed_memory()

    def _discard(self, segmentation_node, volume_node) -> None:
        """Let the editor go of a case's nodes, then remove them (and their display and storage nodes) from the scene."""
        self.editor.clear()  # undo history (each command holds two copies of the segmentation) and active effect
        logic = self.editor.editor_logic  # it would hold both nodes until the next case is made active
        logic.SetSegmentationNode(None)
        logic.SetSourceVolumeNode(None)
        for node in (segmentation_node, volume_node):
            if node is None:
                continue
            if self.scene.IsNodePresent(node):
                helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
                helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
                for helper in helpers:
                    if helper is not None and self.scene.IsNodePresent(helper):
                        self.scene.RemoveNode(helper)
                self.scene.RemoveNode(node)
            # trame-slicer's wrapper of the segmentation observes its node with a lambda that refers to the
            # wrapper: a cycle through VTK that only a full gc.collect() would free, with the case's voxels.
            node.RemoveAllObservers()

    def has_prediction(self, case_id: str) -> bool:
        return all(path.is_file() for path in prediction_paths(self.root, case_id).values())

    def needs_segmentation(self, case_id: str) -> bool:
        """True when the case has no prediction, no exported version and no draft (the app segments it first)."""
        image = case_image_path(self.root, case_id)
        if self.has_prediction(case_id) or latest_version(self.root, image) is not None:
            return False
        return not case_drafts(self.root, case_id)

    def open_case(self, case_id: str, choice: str | None = None, draft_of: str | None = None,
                  rater: str | None = None) -> OpenCase:
        """Open a case as the case model chooses (:meth:`Case.open`: ``draft_of``'s draft, else ``choice``, else the
        latest version, else the prediction, else empty masks) and let the editor edit it.

        The files are read and checked before the scene changes: a case that cannot be opened leaves the
        open one as it was, and a failure while adding the nodes leaves none of them behind.
        """
        self.drafts.wait()  # the drafts asked for are on disk before a case (perhaps this one, from its draft) opens
        image_path = case_image_path(self.root, case_id)
        paths = prediction_paths(self.root, case_id)
        try:
            case = Case.open(self.root, image_path, choice=choice, draft_of=draft_of, prediction=(paths["sc"], paths["lesion"]))
        except CaseRefused as error:
            raise CaseRefused(f"cannot open {case_id}: {error}") from None
        image = load_image(image_path)
        cord, lesion = (self._image_on(image, mask) for mask in (case.labels > 0, case.labels == 2))
        self.close_case()
        volume = segmentation = None
        try:
            volume = mrml.add_volume_node(self.scene, image, case_id.rsplit("/", 1)[1])
            volume.CreateDefaultDisplayNodes()
            segmentation = mrml.import_sciseg_masks(self.logic, self.scene, volume, cord, lesion)
            segmentation.SetAttribute(CASE_ATTRIBUTE, case.scan.key)
            if self.grey_matter:
                add_grey_matter_segment(self, case, segmentation, volume)
            self.editor.set_active_segmentation(segmentation, volume)
            from trame_slicer.segmentation import SegmentationOverwriteMode

            self.editor.set_overwrite_mode(SegmentationOverwriteMode.OVERWRITE_ALL)
        except BaseException:
            self._discard(segmentation, volume)
            raise
        self.openings += 1
        self.case = OpenCase(case_id, case, volume, segmentation, opening=self.openings)
        self._draft_rater = case.draft.rater if case.draft is not None else None
        self.grey_matter_drafts.opened(self, draft_of)
        self.heartbeat(rater if rater is not None else draft_of or "")
        return self.case

    # ------------------------------------------------------------------ note, flags, presence (the case decides)
    def heartbeat(self, rater: str) -> list[Lease]:
        """Say again that this session has its case open (under ``rater``); the other sessions that have it open.

        A lease that cannot be written (read-only folder) never stops the rater: the others are still read."""
        if self.case is None:
            return []
        case = self.case.case
        try:
            self._opened_at = case.hold(self.holder, rater, self._opened_at).opened
        except (OSError, CaseRefused):
            pass
        try:
            return case.open_elsewhere(self.holder)
        except (OSError, CaseRefused):
            return []

    def note_of(self, rater: str) -> CaseNote:
        """The rater's flags and note on the open case (empty when none, or without a case or a name)."""
        if self.case is None or not rater.strip():
            return CaseNote(rater.strip())
        return self.case.case.note_of(rater)

    def set_note(self, rater: str, flags, note: str) -> CaseNote | None:
        """Keep the rater's flags and note on the open case when they changed (atomic); None when nothing was written."""
        if self.case is None:
            return None
        current = self.note_of(rater)
        if current.flags == checked_flags(flags) and current.note == checked_note(note):
            return None
        return self.case.case.set_note(rater, flags, note)

    @staticmethod
    def _image_on(reference: sitk.Image, mask: np.ndarray) -> sitk.Image:
        result = sitk.GetImageFromArray(mask.astype(np.uint8))
        result.CopyInformation(reference)
        return result

    def label_image(self) -> sitk.Image:
        """The current masks as a label map image (0, 1 cord only, 2 lesion) on the volume node's grid."""
        assert self.case is not None
        return mrml.export_sciseg_label_map(self.logic, self.scene, self.case.segmentation_node, self.case.volume_node)

    def labels(self) -> np.ndarray:
        """The current masks as a (z, y, x) uint8 array on the image grid: 0, 1 cord only, 2 lesion (read from the
        segments' layers in milliseconds, :mod:`.segment_arrays`; else Slicer's export, :meth:`label_image`)."""
        assert self.case is not None
        labels = sciseg_labels_zyx(self.case.segmentation_node, self.case.volume_node)
        return sitk.GetArrayFromImage(self.label_image()) if labels is None else labels

    def checked_labels(self, what: str, labels: np.ndarray | None = None) -> np.ndarray:
        """The current (z, y, x) labels (or ``labels``, read from the scene just before) once the case accepts them
        (its scan, its grid: the volume node's), else :class:`CaseRefused`."""
        assert self.case is not None
        image = self.label_image() if labels is None else self._image_on(self.volume_grid(), labels)
        return sitk.GetArrayFromImage(self.case.case.check(image, self.drawn_on(), what))

    def drawn_on(self) -> str | None:
        """The scan key the segmentation in the scene was made for (None when it carries none)."""
        assert self.case is not None
        return self.case.segmentation_node.GetAttribute(CASE_ATTRIBUTE)

    def voxel_counts(self, labels: np.ndarray | None = None, grey_matter=SCENE) -> dict[str, int]:
        """Voxels of each segment now (or in ``labels`` and ``grey_matter``, read before): ``cord_only`` (label 1),
        ``lesion`` (label 2), ``cord`` (their union), ``grey_matter`` when the case has that segment."""
        labels = self.labels() if labels is None else labels
        cord_only, lesion = int(np.count_nonzero(labels == 1)), int(np.count_nonzero(labels == 2))
        counts = {"cord_only": cord_only, "lesion": lesion, "cord": cord_only + lesion}
        grey_matter = grey_matter_mask(self) if grey_matter is SCENE else grey_matter
        if grey_matter is not None:  # and the grey matter's, when the case has that segment
            counts["grey_matter"] = int(np.count_nonzero(grey_matter))
        return counts

    def unsaved(self, labels: np.ndarray | None = None, grey_matter=SCENE) -> bool:
        """True when the masks (or ``labels`` and ``grey_matter``, read before) differ from what was opened or last
        exported (a draft does not make them saved)."""
        if self.case is None:
            return False
        self.drafts.wait()  # what is saved includes every draft asked for
        return self.case.case.unsaved(self.labels() if labels is None else labels) \
            or self.grey_matter_drafts.unsaved(self, grey_matter)

    def safe(self, labels: np.ndarray | None = None) -> bool:
        """True when nothing of the masks exists only in memory: exported, as opened, or held by the last draft."""
        if self.case is None:
            return True
        self.drafts.wait()
        return self.case.case.safe(self.labels() if labels is None else labels) and self.grey_matter_drafts.safe(self)

    def save_draft(self, rater: str, labels: np.ndarray | None = None) -> Draft | None:
        """Write the rater's draft of the open case now when its masks changed since (atomic), after every draft asked
        for before (:meth:`save_draft_later`); after a change of name the draft moves to the new name. Returns the
        draft written, None when nothing needed writing."""
        if self.case is None:
            return None
        self.drafts.wait()
        labels = self.labels() if labels is None else labels
        return self._write_draft(self.case.case, self.case.opening, rater, labels, grey_matter_mask(self))[0]

    def save_draft_later(self, rater: str, labels: np.ndarray, grey_matter) -> Future[tuple[Draft | None, bool]]:
        """:meth:`save_draft` in the background (:class:`.draft_writer.DraftWriter`: in order, off the event loop) with
        ``labels`` and ``grey_matter`` (:func:`.grey_matter.grey_matter_mask`) just read from the scene, which it
        never reads itself. Its future: (draft written or None, unsaved strokes left). Nothing is written when
        another case is open by then (each opening waits for the drafts asked before it, so that cannot happen)."""
        assert self.case is not None
        case, opening = self.case.case, self.case.opening
        return self.drafts.submit(lambda: self._write_draft(case, opening, rater, labels, grey_matter))

    def is_open(self, opening: int) -> bool:
        """True when the case in the scene is the one of opening number ``opening`` (:attr:`OpenCase.opening`)."""
        return self.case is not None and self.case.opening == opening

    def _write_draft(self, case: Case, opening: int, rater: str, labels: np.ndarray, grey_matter) -> tuple[Draft | None, bool]:
        if not self.is_open(opening):
            return None, False
        previous = self._draft_rater
        if previous is not None and previous.strip() != rater.strip():
            case.discard_draft(previous)  # forgets what it wrote: the draft is written again under the new name
        draft = case.save_draft(labels, rater)
        self.grey_matter_drafts.save(self, rater, previous, grey_matter)
        unsaved = case.unsaved(labels) or self.grey_matter_drafts.unsaved(self, grey_matter)
        self._draft_rater = rater if unsaved else None
        return draft, unsaved

    def discard_draft(self) -> None:
        """Remove the draft this session wrote for the open case."""
        self.drafts.wait()
        if self.case is not None and self._draft_rater is not None:
            self.case.case.discard_draft(self._draft_rater)
            self.grey_matter_drafts.discard(self, self._draft_rater)
            self._draft_rater = None

    def reference_image(self) -> sitk.Image:
        """The open case's scan (voxels and geometry) as SimpleITK reads it from the volume node."""
        assert self.case is not None
        return mrml.image_from_volume_node(self.case.volume_node)

    def volume_grid(self) -> sitk.Image:
        """The volume node's grid (geometry only: an empty uint8 image), on which :meth:`labels` lie."""
        assert self.case is not None
        return mrml.grid_of_volume_node(self.case.volume_node)

    def case_grid(self) -> sitk.Image:
        """The case's scan grid (geometry only), on which :meth:`checked_labels` lie: what the lesions are measured on."""
        assert self.case is not None
        return self.case.case.scan.grid.blank()

    def lesion_table(self) -> list[dict]:
        """``sciseg analyze``'s lesion measures of the current masks, one dict per lesion, with its centre (RAS mm)."""
        rows, centres = measure_lesions(self.checked_labels("the segmentation to measure"), self.case_grid())
        self.case.lesion_centres_ras = centres
        self.show_lesion_numbers(centres)
        return rows

    def largest_lesion_centre_ras(self) -> tuple[float, float, float] | None:
        """Centre (RAS mm) of the largest 26-connected lesion of the current masks (quick: no morphometrics)."""
        assert self.case is not None
        lesion = sitk.GetImageFromArray((self.labels() == 2).astype(np.uint8))
        lesion.CopyInformation(self.volume_grid())
        components = sitk.RelabelComponent(sitk.ConnectedComponent(lesion, True))  # 1 = largest
        centres = mrml.lesion_centroids_ras(components)
        return centres.get(1)

    def export(self, rater: str, note: str | None = None) -> ExportOutcome:
        """A new immutable version of the case's masks with the rater's name and its parent (the case's base).

        The case refuses a segmentation made for another scan or lying on another grid, and any labels, versions or
        drafts folder leading out of the derivatives folder; the exporter's lock orders raters; the draft goes.
        The rater's flags and note (:meth:`set_note`; ``note`` given: that text instead) go into the sidecars.
        """
        assert self.case is not None
        self.drafts.wait()  # the export removes the draft: none may land after it
        outcome = self.case.case.export(self.label_image(), rater, drawn_on=self.drawn_on(), model=self.model,
                                        note=note, draft_rater=self._draft_rater,
                                        extra_masks=grey_matter_export(self))
        self.grey_matter_drafts.exported(self, rater, self._draft_rater)
        self._draft_rater = None
        return outcome
