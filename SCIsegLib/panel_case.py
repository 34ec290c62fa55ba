"""The Slicer panel bound to the case model (:mod:`SCIsegLib.cases`): which case a volume is, which segmentation
belongs to it, what it was opened from, and that unsaved work is drafted before the rater leaves it.

Qt-free; MRML through :mod:`SCIsegLib.mrml` (tested on slicer-core). A case needs the export folder (the BIDS
dataset its versions and drafts live in) and a volume read from a file (the scan's identity is its file and
sha256). A segmentation made for a case carries the case's :attr:`Scan.key` (:data:`DRAWN_ON_ATTRIBUTE`) and
the base it started from (:data:`BASE_ATTRIBUTE`); export, measure and compare refuse it on any other case.

One segmentation per case and volume node is the case's (its edits are drafted, in the rater's one draft, recording
its own base). When another one becomes the case's -- Segment again, or the rater makes an older one the case's again
-- the previous one is **superseded** (:func:`supersede`), never left sharing the draft: its edits no version has are
first written to a file of their own (``.drafts/.../<stem>/superseded/<rater key>.<UTC time>.nrrd``, the draft format,
recording its base; its grey matter beside it, ``.gm.nrrd``), then it is marked (:data:`SUPERSEDED_ATTRIBUTE`) and
renamed "... (superseded)", and the status line says where its edits are. A superseded segmentation is no longer
drafted and Export refuses it; Compare and Measure still take it; selecting it asks whether it becomes the case's
again (the panel's session, :mod:`SCIsegLib.panel_session`).

Label maps are (z, y, x) uint8 on the volume's grid: 0 background, 1 cord only, 2 lesion.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import mrml
from .cases import Case, Draft
from .cases.drafts import write_draft
from .cases.scan import CaseRefused
from .errors import InputError
from .panel_binding import DRAWN_ON_ATTRIBUTE, SUPERSEDED_ATTRIBUTE, is_bound
from .panel_grey_matter_case import add_base_grey_matter, grey_matter_unsaved, keep_draft, keep_superseded
from .panel_results import export_result
from .panel_view import superseded_now_sentence

#: Segmentation node attribute: the base it started from (the case it was made for and whether it was superseded:
#: :mod:`SCIsegLib.panel_binding`).
BASE_ATTRIBUTE = "SCIseg.Base"
#: Segmentation node attribute: the folder holding the model's masks of a Slicer segmentation (SCT's names).
PREDICTION_FOLDER_ATTRIBUTE = "SCIseg.PredictionFolder"
SUPERSEDED_SUFFIX = " (superseded)"


def image_path(volume_node) -> Path | None:
    """The file the volume was read from, None for a volume made in Slicer (it has no case)."""
    storage = volume_node.GetStorageNode()
    name = storage.GetFileName() if storage is not None else None
    return Path(name) if name and Path(name).is_file() else None


def subject_label(name: str) -> str:
    """A BIDS subject label from a node name: its letters and digits ("unnamed" when none)."""
    return "".join(c for c in name if c.isalnum()) or "unnamed"


def open_case(root: str | Path, volume_node, *, choice: str | None = None, draft_of: str | None = None,
              prediction: tuple[Path, Path] | None = None) -> Case | None:
    """The case of ``volume_node`` in the dataset ``root`` (latest version by default), None when the volume has
    no file or no export folder is set. A file without BIDS subject takes the node name's letters and digits."""
    path = image_path(volume_node)
    if path is None or not str(root).strip() or not Path(root).is_dir():
        return None
    subject = None if path.name.startswith("sub-") else subject_label(volume_node.GetName())
    return Case.open(Path(root), path, choice=choice, draft_of=draft_of, prediction=prediction, subject=subject)


def prediction_masks(segmentation_node) -> tuple[Path, Path] | None:
    """The model's cord and lesion masks of a segmentation made in Slicer (SCT's names), None for any other."""
    folder = segmentation_node.GetAttribute(PREDICTION_FOLDER_ATTRIBUTE)
    if not folder:
        return None
    cord, lesion = sorted(Path(folder).glob("*_sc_seg.nii.gz")), sorted(Path(folder).glob("*_lesion_seg.nii.gz"))
    return (cord[0], lesion[0]) if cord and lesion else None


def bind(segmentation_node, case: Case) -> None:
    """Mark ``segmentation_node`` as the case's: its scan key and the base it starts from."""
    segmentation_node.SetAttribute(DRAWN_ON_ATTRIBUTE, case.scan.key)
    segmentation_node.SetAttribute(BASE_ATTRIBUTE, case.base.name)


def case_of(root: str | Path, volume_node, segmentation_node) -> Case | None:
    """The case of a segmentation made for it, opened on the base the segmentation started from (a prediction made
    in Slicer lies in the panel's session folder, not in the dataset), so that its unsaved state is right. The
    latest version when that base is gone; None without a case."""
    started = segmentation_node.GetAttribute(BASE_ATTRIBUTE)
    try:
        return open_case(root, volume_node, choice=started or None, prediction=prediction_masks(segmentation_node))
    except InputError:
        return open_case(root, volume_node)


def superseded_folder(case: Case) -> Path:
    """Where superseded segmentations' unexported edits are kept: ``superseded/`` in the case's drafts folder (not a
    draft: never offered, never replaced)."""
    from .cases import draft_folder, inside_derivatives

    return inside_derivatives(case.root, draft_folder(case.root, case.scan) / "superseded", "the superseded folder")


def supersede(scene, logic, root: str | Path, segmentation_node, volume_node, rater: str) -> str:
    """Another segmentation became the case's: ``segmentation_node``'s edits no version has (cord and lesion, grey
    matter) are written to files of their own first (:func:`superseded_folder`; recording the base it started
    from), then it is marked superseded and renamed. Returns the sentence for the status line."""
    own = case_of(root, volume_node, segmentation_node)  # opened on its own base: what is unsaved of it
    kept = []
    if own is not None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        folder = superseded_folder(own)
        labels = labels_zyx(scene, logic, own, segmentation_node, volume_node)
        if labels is not None and own.unsaved(labels):
            kept.append(write_draft(folder, own.scan, rater, labels, own.base.name, suffix=f".{stamp}.nrrd").path)
        grey_matter = keep_superseded(scene, logic, own, segmentation_node, volume_node, rater, folder, f".{stamp}.gm.nrrd")
        kept += [grey_matter.path] if grey_matter is not None else []
    name = segmentation_node.GetName()
    segmentation_node.SetAttribute(SUPERSEDED_ATTRIBUTE, str(kept[0]) if kept else "")
    segmentation_node.SetName(name if name.endswith(SUPERSEDED_SUFFIX) else name + SUPERSEDED_SUFFIX)
    return superseded_now_sentence(name, segmentation_node.GetName(), [str(path) for path in kept])


def reclaim(segmentation_node) -> None:
    """A superseded segmentation becomes its case's again (the caller supersedes the other one first)."""
    segmentation_node.RemoveAttribute(SUPERSEDED_ATTRIBUTE)
    segmentation_node.SetName(segmentation_node.GetName().removesuffix(SUPERSEDED_SUFFIX))


def live_segmentations(scene, case: Case, volume_node) -> list:
    """Every segmentation of the scene that is the case's on ``volume_node`` (:func:`is_bound`, made on that node),
    oldest first."""
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]
    return [node for node in nodes if _made_for(node, case, volume_node)]


def case_segmentation(scene, case: Case, selected, volume_node=None):
    """The segmentation whose edits are the case's: the selected one when it belongs to the case (the rater may
    have several), else the newest one made for it; with ``volume_node``, only one made on that node
    (:func:`bound_segmentation`)."""
    return selected if _made_for(selected, case, volume_node) else bound_segmentation(scene, case, volume_node)


def _made_for(segmentation_node, case: Case, volume_node) -> bool:
    return is_bound(segmentation_node, case) and (volume_node is None or mrml.pairing_problem(segmentation_node, volume_node) is None)


def bound_segmentation(scene, case: Case, volume_node=None):
    """The segmentation node of the scene made for ``case`` (the newest one), None when there is none. With
    ``volume_node``, only one made on that very node: the same file loaded twice is two nodes, and a segmentation of
    the other one is refused by every action on this one (:func:`mrml.pairing_problem`)."""
    mine = live_segmentations(scene, case, volume_node)
    return mine[-1] if mine else None


def volume_of_file(scene, path: str | Path):
    """The scene's scalar volume (not a label map) read from the file ``path``, None when none was."""
    wanted = Path(path).resolve()
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        read = image_path(node) if not node.IsA("vtkMRMLLabelMapVolumeNode") else None
        if read is not None and read.resolve() == wanted:
            return node
    return None


def segmentation_from_labels(scene, logic, case: Case, volume_node, labels_zyx: np.ndarray, name: str, rater: str = ""):
    """A new segmentation node holding ``labels_zyx`` (the case's base or draft) on the volume, bound to the case;
    with the grey matter of the version it opened from, or ``rater``'s grey-matter draft of it, when there is one."""
    reference = mrml.image_from_volume_node(volume_node)
    labels = case.scan.grid.image_of(labels_zyx)
    labels = mrml.on_grid_of(labels, reference, what="the case's labels", where=f"volume '{volume_node.GetName()}'")
    cord, lesion = sitk.Cast(labels > 0, sitk.sitkUInt8), sitk.Cast(labels == 2, sitk.sitkUInt8)
    node = mrml.import_sciseg_masks(logic, scene, volume_node, cord, lesion, name)
    add_base_grey_matter(scene, logic, case, node, volume_node, rater)  # a version's _label-GM_seg, or the GM draft
    bind(node, case)
    return node


def labels_of(scene, logic, case: Case | None, segmentation_node, volume_node, chosen=None) -> sitk.Image:
    """The segmentation as SCIseg labels on the volume's grid, refused with one sentence (ValueError) when it was
    made on another volume (:func:`mrml.require_pairing`) or, with a case, for another case or grid (``Case.check``).
    With a case and ``volume_node`` None (the volume left the scene), on the segmentation's own reference geometry,
    which the case's check then puts on the case's grid or refuses."""
    if volume_node is None and case is None:
        raise ValueError("Select the segmentation's volume first.")
    if volume_node is not None:
        mrml.require_pairing(segmentation_node, volume_node)
    labels = mrml.export_sciseg_label_map(logic, scene, segmentation_node, volume_node, chosen)
    if case is not None:
        try:
            labels = case.check(labels, segmentation_node.GetAttribute(DRAWN_ON_ATTRIBUTE) or None)
        except CaseRefused as refused:
            raise ValueError(str(refused)[0].upper() + str(refused)[1:]) from None
    return labels


def labels_zyx(scene, logic, case: Case, segmentation_node, volume_node) -> np.ndarray | None:
    """The segmentation's label map on the case's grid for drafts and the unsaved check; None when it cannot be
    told (no cord/lesion segment found, another scan)."""
    try:
        return sitk.GetArrayFromImage(labels_of(scene, logic, case, segmentation_node, volume_node)).astype(np.uint8)
    except (ValueError, InputError, mrml.SegmentChoiceError):
        return None


def draft_unsaved(scene, logic, case: Case | None, segmentation_node, volume_node, rater: str) -> str | None:
    """Unsaved edits of the case's segmentation not drafted yet are written to the rater's draft (grey matter: its
    grey-matter draft). Returns what was written (``"draft by alice of ..."``), None when nothing was. Only the case's
    own segmentation (:func:`is_bound`) is drafted; ``volume_node`` None: the volume left the scene, the segmentation
    is read on its reference geometry and drafted on the case's grid."""
    if case is None or not is_bound(segmentation_node, case):
        return None
    labels = labels_zyx(scene, logic, case, segmentation_node, volume_node)
    draft = None if labels is None or case.safe(labels) else case.save_draft(labels, rater)
    grey_matter = keep_draft(scene, logic, case, segmentation_node, volume_node, rater)  # after the label map's
    if draft is None and grey_matter is None:
        return None
    return draft.describe() if draft is not None else "grey-matter " + grey_matter.describe()


def keep_work(scene, logic, case: Case | None, segmentation_node, volume_node, rater: str) -> str | None:
    """Before the rater leaves a case (Next case, another volume, scene close, Reload, exit): unsaved edits are
    written to the rater's draft (:func:`draft_unsaved`). Returns a sentence saying so, None when nothing was
    unsaved."""
    kept = draft_unsaved(scene, logic, case, segmentation_node, volume_node, rater)
    if kept is None and volume_node is None and case is not None and is_bound(segmentation_node, case):
        if labels_zyx(scene, logic, case, segmentation_node, None) is None:  # nothing to draft it on: say so
            return (f"The volume of {case.scan.stem} left the scene and '{segmentation_node.GetName()}' could not be read "
                    "on the case's grid: its edits since the last pause are only in that segmentation. Load the scan "
                    "again and select it to have them drafted.")
    return None if kept is None else f"Your unsaved edits of {case.scan.stem} are kept as a {kept}: open the case again to continue."


def has_unsaved_edits(scene, logic, case: Case | None, segmentation_node, volume_node) -> bool:
    """True when the case's segmentation holds edits no version has: its cord and lesion differ from what it was
    opened from or last exported as, or its grey matter from what was saved (a draft does not count as saved)."""
    if case is None or segmentation_node is None or volume_node is None:
        return False
    labels = labels_zyx(scene, logic, case, segmentation_node, volume_node)
    return (labels is not None and case.unsaved(labels)) or grey_matter_unsaved(scene, logic, case, segmentation_node, volume_node)


def draft_to_offer(case: Case, rater: str) -> Draft | None:
    """The draft to offer when a case opens (Slicer closed or crashed before export): the rater's newest, else
    the newest of any rater; None when the case has no draft."""
    drafts = case.drafts()
    own = [draft for draft in drafts if draft.rater == rater.strip()]
    return (own or drafts or [None])[0]


@dataclass(frozen=True)
class Opening:
    """What the panel does when a volume is selected: the case (None: none), the segmentation to show (an existing
    one bound to the case, else a new one to make from ``labels``), the draft to offer, the status sentence."""

    case: Case | None
    segmentation: object | None = None
    labels: np.ndarray | None = None
    sentence: str = ""
    segment: bool = False  # no version, no prediction, no draft: the model should segment this scan
    offer: Draft | None = None  # a draft the rater may restore (ask, then call :func:`opening` with it)
    rater: str = ""  # whose grey-matter draft comes back with the segmentation made from ``labels``


def opening(scene, root: str | Path, volume_node, rater: str = "", draft: Draft | None = None) -> Opening:
    """Open the volume's case.

    A segmentation already bound to the case is shown again (the case reopened on the base it started from, so
    its unsaved state is right). Else, with ``draft`` (the rater accepted it), the draft over its base; else the
    latest version (or the prediction) with the newest draft offered (:func:`draft_to_offer`). Refusals (another
    scan's draft, an unreadable version) become the sentence and no case.
    """
    try:
        case = open_case(root, volume_node, draft_of=draft.rater if draft is not None else None)
        if case is None:
            return Opening(None, sentence=no_case_sentence(volume_node))
        existing = bound_segmentation(scene, case, volume_node) if draft is None else None
        if existing is not None:
            case = case_of(root, volume_node, existing) or case
            return Opening(case, existing, None, case.opening_sentence())
    except (CaseRefused, InputError) as error:
        return Opening(None, sentence=str(error))
    offer = draft_to_offer(case, rater) if draft is None else None
    empty = case.base.kind == "empty" and case.draft is None
    return Opening(case, None, None if empty else case.labels, case.opening_sentence(), empty and offer is None, offer,
                   rater)


def no_case_sentence(volume_node) -> str:
    """Why a selected volume opened no case (:func:`open_case`): nothing of it is drafted, which the rater must know."""
    name = volume_node.GetName()
    if image_path(volume_node) is None:
        return (f"'{name}' was not loaded from a file, so it has no case: its edits are not drafted (save it, then load "
                "the saved file to have them drafted).")
    return (f"No export folder (BIDS dataset) is set: '{name}' has no case, so its edits are not drafted and no version "
            "opens. Choose the export folder, then select the volume again.")


def paired_segmentation(scene, volume_node):
    """Without a case: the newest segmentation node made on ``volume_node`` (:func:`mrml.pairing_problem` finds
    nothing), None when there is none -- never the previous volume's."""
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLSegmentationNode")
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"))]
    paired = [node for node in nodes if mrml.pairing_problem(node, volume_node) is None]
    return paired[-1] if paired else None


def after_export(segmentation_node, stdout: str) -> str | None:
    """A finished export (``panel_export``'s JSON line) makes its version the segmentation's base; returns it."""
    result = export_result(stdout)
    if segmentation_node is None or result is None:
        return None
    base = f"v{int(result['version']):03d}"
    segmentation_node.SetAttribute(BASE_ATTRIBUTE, base)
    return base


def _show_live(scene, labels: sitk.Image, volume_node, table, points):
    from .panel_lesions import live_lesions, live_table_rows

    lesions = live_lesions(labels)
    table, points = mrml.show_live_lesions(scene, volume_node.GetName(), *live_table_rows(lesions), table=table, points=points)
    return table, points, {lesion.number: lesion.centre_ras for lesion in lesions}


@dataclass(frozen=True)
class Settled:
    """What the panel does once the rater paused: the draft written (None: none), the live nodes and lesion centres
    (``centres`` None: the segmentation cannot be read as cord and lesion; nothing was updated)."""

    draft: Draft | None
    table: object
    points: object
    centres: dict[int, tuple[float, float, float]] | None


def edits_settled(scene, logic, case: Case | None, segmentation_node, volume_node, rater: str,
                  table=None, points=None) -> Settled:
    """The rater paused after strokes: one label-map export (~50-70 ms for a 4.3-Mvoxel scan) feeds both the draft
    (only for the case's own segmentation, only when something is unsaved and not drafted yet) and the live list."""
    try:
        labels = labels_of(scene, logic, None, segmentation_node, volume_node)
    except (ValueError, mrml.SegmentChoiceError):
        return Settled(None, table, points, None)
    draft = None
    if case is not None and is_bound(segmentation_node, case):
        try:
            array = sitk.GetArrayFromImage(case.check(labels, segmentation_node.GetAttribute(DRAWN_ON_ATTRIBUTE) or None))
            draft = case.save_draft(array, rater) if case.unsaved(array) else None
        except CaseRefused:
            draft = None
        keep_draft(scene, logic, case, segmentation_node, volume_node, rater)  # grey matter: its own draft
    return Settled(draft, *_show_live(scene, labels, volume_node, table, points))


def selected_segmentation(scene, logic, opened: Opening, volume_node):
    """The segmentation the panel selects for a just-opened volume: the case's own, else one made from the base or
    the restored draft (named after the volume and the base), else -- no case -- one made on this volume; None:
    nothing yet (never the previous volume's)."""
    if opened.segmentation is not None:
        return opened.segmentation
    if opened.case is not None and opened.labels is not None:
        name = f"{volume_node.GetName()} {'draft' if opened.case.draft is not None else opened.case.base.name}"
        return segmentation_from_labels(scene, logic, opened.case, volume_node, opened.labels, name, opened.rater)
    return paired_segmentation(scene, volume_node) if opened.case is None else None


def segment_after_opening(next_case: bool, opened: Opening, selected) -> bool:
    """Next case segments the new scan only when its case gave nothing to show or restore (no segmentation, no
    version, no prediction, no draft offered)."""
    return next_case and selected is None and opened.offer is None
