"""The case: one scan bound to the label map being edited, the base it was opened from, its drafts and its export."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..training.export import ExportResult, export_correction, labels_folder, version_store
from .bases import EMPTY, Base, base_labels, prediction_of, versions_of
from .drafts import Draft, draft_folder, draft_holds_more, draft_labels, drafts_in, rater_key, write_draft
from .leases import Lease, lease_folder, live_leases, remove_lease, write_lease
from .notes import CaseNote, checked_flags, checked_note, notes_folder, notes_in, read_note, write_note
from .scan import CaseRefused, Scan, scan_of


@dataclass(frozen=True)
class ExportOutcome:
    """An export: the exporter's result and, when newer versions than the base existed, a sentence saying so."""

    result: ExportResult
    warning: str | None


def derivatives_folder(root: Path) -> Path:
    """``<root>/derivatives`` resolved once: it may be a link (another disk); nothing below it may lead out of it."""
    return (Path(root) / "derivatives").resolve()


def inside_derivatives(root: Path, path: Path, what: str) -> Path:
    """``path`` when it resolves inside the resolved derivatives folder, else :class:`CaseRefused` (one sentence)."""
    try:
        base, resolved = derivatives_folder(root), Path(path).resolve()
    except RuntimeError:  # Python's "Symlink loop"
        raise CaseRefused(f"{what} {path} is a loop of symbolic links; this case is not read or written.") from None
    if resolved != base and base not in resolved.parents:
        raise CaseRefused(f"{what} {path} leads outside the derivatives folder {base} (a symbolic link); "
                          "this case is not read or written through it.")
    return Path(path)


def default_prediction_paths(root: Path, scan: Scan) -> tuple[Path, Path]:
    """``derivatives/sciseg/sub-X/[ses-Y/]anat/<stem>_sc_seg.nii.gz`` and ``_lesion_seg.nii.gz`` (SCT's names)."""
    folder = Path(root) / "derivatives" / "sciseg" / f"sub-{scan.subject}"
    folder = (folder / f"ses-{scan.session}" if scan.session else folder) / "anat"
    return folder / f"{scan.stem}_sc_seg.nii.gz", folder / f"{scan.stem}_lesion_seg.nii.gz"


def _digest(labels_zyx: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels_zyx, dtype=np.uint8).tobytes()).hexdigest()


class Case:
    """One scan, the base it was opened from and what has been saved of it since. Build it with :meth:`open`.

    Attributes: ``root`` (BIDS dataset), ``scan`` (:class:`Scan`), ``bases`` (what it could be opened from,
    newest version first, then the prediction, then empty), ``base`` (what it was opened from or last exported
    as), ``labels`` (the label map it was opened with, (z, y, x) uint8, or the draft restored), ``draft``
    (the draft restored at opening, if any).
    """

    def __init__(self, root: Path, scan: Scan, bases: list[Base], base: Base, labels: np.ndarray,
                 prediction: np.ndarray | None, draft: Draft | None = None) -> None:
        self.root = Path(root)
        self.scan = scan
        self.bases = bases
        self.base = base
        self.labels = labels
        self.prediction = prediction
        self.draft = draft
        self.draft_problem: str | None = None  # why the rater's draft could not be restored (kept on disk)
        self._saved = _digest(base_labels(base, scan)) if draft is not None else _digest(labels)
        self._drafted: str | None = _digest(labels) if draft is not None else None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, root: Path, image: Path, *, choice: str | None = None, draft_of: str | None = None,
             prediction: tuple[Path, Path] | Path | None = None, subject: str | None = None,
             session: str | None = None) -> Case:
        """Open a scan: the base named by ``choice`` (``v001``, ``prediction``, ``empty``; None: the default), or
        ``draft_of`` a rater's draft when there is one (restored over its base).

        The default is the latest exported version, else the prediction, else empty masks. ``prediction``: the
        masks (cord, lesion) or one label map (0, 1 cord only, 2 lesion); by default the masks in
        ``derivatives/sciseg/...`` (:func:`default_prediction_paths`). Every path under ``derivatives`` must stay
        inside it (:func:`inside_derivatives`); a prediction given elsewhere (a temporary file of the Slicer module)
        is the caller's.
        """
        scan = scan_of(image, subject, session)
        if prediction is None:
            prediction_files = default_prediction_paths(root, scan)
            for file in prediction_files:
                inside_derivatives(root, file, "the prediction")
        else:
            prediction_files = (prediction,) if isinstance(prediction, (str, Path)) else tuple(prediction)
        inside_derivatives(root, labels_folder(root), "the labels folder")
        inside_derivatives(root, version_store(root, scan.path, scan.subject, scan.session), "the versions folder")
        predicted = prediction_of(*prediction_files)
        versions = versions_of(root, scan)
        prediction_labels = None
        if predicted is not None:
            try:
                prediction_labels = base_labels(predicted, scan)
            except CaseRefused:
                if not versions or choice == "prediction":
                    raise  # nothing else to open from: say why
                predicted = None  # a version opens; the prediction that cannot be used is not offered
        bases = versions + ([predicted] if predicted is not None else []) + [EMPTY]
        draft, problem = None, None
        if draft_of is not None:
            draft = next((d for d in drafts_in(cls._draft_folder(root, scan)) if d.rater == draft_of.strip()), None)
        if draft is not None:
            base = next((b for b in bases if b.name == draft.base), EMPTY)
            try:
                labels = draft_labels(draft, scan)
            except CaseRefused as error:  # kept on disk, said at opening; the case opens as if there were none
                draft, problem = None, f"{error} It stays in {draft.path}."
        if draft is None:
            base = bases[0] if choice is None else next((b for b in bases if b.name == choice), None)
            if base is None:
                raise InputError(f"{scan.path.name} has no {choice} to open; choose one of {', '.join(b.name for b in bases)}.")
            labels = prediction_labels if base.kind == "prediction" and prediction_labels is not None else base_labels(base, scan)
        case = cls(root, scan, bases, base, labels, prediction_labels, draft)
        case.draft_problem = problem
        return case

    @staticmethod
    def _draft_folder(root: Path, scan: Scan) -> Path:
        return inside_derivatives(root, draft_folder(root, scan), "the drafts folder")

    def opening_sentence(self, name: str | None = None) -> str:
        """What was opened, in a rater's words (``name``: how to call the case; default the scan's stem), naming the
        newer version when an older base was chosen."""
        name = name or self.scan.stem
        text = f"opened {name}: {self.base.describe()}"
        if self.draft is not None:
            text = f"opened {name}: your {self.draft.describe()}"
        latest = self.bases[0]
        if latest.kind == "version" and latest != self.base:
            text += f"; the latest version is {latest.describe()}"
        if self.draft_problem:
            text += f". Your draft was not restored: {self.draft_problem}"
        return text

    # ------------------------------------------------------------------ the label map being edited
    def check(self, labels: sitk.Image, drawn_on: str | None, what: str = "the segmentation") -> sitk.Image:
        """``labels`` on this case's grid, or :class:`CaseRefused` when it was drawn on another scan or grid.

        ``drawn_on`` is the :attr:`Scan.key` the segmentation was bound to when it was made (None: not known, the
        grid alone decides). Export, measure and compare call this before using a segmentation.
        """
        if drawn_on is not None and drawn_on != self.scan.key:
            other = drawn_on.split("#", 1)[0]
            raise CaseRefused(f"{what} was made on {Path(other).name}, not on {self.scan.path.name}, the scan of this case; "
                              "nothing was written: open the case it belongs to, or segment this scan.")
        return self.scan.align(labels, what)

    def unsaved(self, labels_zyx: np.ndarray) -> bool:
        """True when the label map differs from what was opened or last exported (a draft does not count as saved)."""
        return _digest(labels_zyx) != self._saved

    def safe(self, labels_zyx: np.ndarray) -> bool:
        """True when nothing of this label map can be lost: exported or opened as is, or held by the last draft written."""
        digest = _digest(labels_zyx)
        return digest == self._saved or digest == self._drafted

    # ------------------------------------------------------------------ drafts
    def drafts(self) -> list[Draft]:
        """Drafts of this case on disk, every rater's, newest first."""
        return drafts_in(self._draft_folder(self.root, self.scan))

    def save_draft(self, labels_zyx: np.ndarray, rater: str) -> Draft | None:
        """Write the rater's draft (atomic) when the map has unsaved edits not drafted yet; remove it when there is nothing unsaved."""
        digest = _digest(labels_zyx)
        if digest == self._saved:
            self.discard_draft(rater)
            return None
        if digest == self._drafted:
            return None
        draft = write_draft(self._draft_folder(self.root, self.scan), self.scan, rater, labels_zyx, self.base.name)
        self._drafted = digest
        return draft

    def discard_draft(self, rater: str) -> None:
        """Remove the rater's draft of this case (nothing when there is none)."""
        (self._draft_folder(self.root, self.scan) / f"{rater_key(rater)}.nrrd").unlink(missing_ok=True)
        self._drafted = None

    def discard_exported_draft(self, rater: str, exported_zyx: np.ndarray, labels_taken: float | None) -> None:
        """After an export of ``exported_zyx``: remove the rater's draft, unless it was written after the exported
        labels were taken (``labels_taken``, a file time in s; None: never) and holds other labels -- edits made while
        the export ran, which no version has (:func:`draft_holds_more`)."""
        path = self._draft_folder(self.root, self.scan) / f"{rater_key(rater)}.nrrd"
        if not draft_holds_more(path, self.scan, exported_zyx, labels_taken):
            self.discard_draft(rater)

    # ------------------------------------------------------------------ note and flags; who else has it open
    def _notes_folder(self) -> Path:
        return inside_derivatives(self.root, notes_folder(self.root, self.scan), "the notes folder")

    def note_of(self, rater: str) -> CaseNote:
        """The rater's note and flags on this case (empty when none was set, or it was about another image)."""
        found = read_note(self._notes_folder() / f"{rater_key(rater)}.json", self.scan.sha256)
        return found if found is not None else CaseNote(rater.strip())

    def notes(self) -> list[CaseNote]:
        """Every rater's note on this case, newest first."""
        return notes_in(self._notes_folder(), self.scan.sha256)

    def set_note(self, rater: str, flags, note: str) -> CaseNote:
        """Keep the rater's flags (:data:`.notes.FLAGS`) and note (atomic); both empty removes them."""
        return write_note(self._notes_folder(), self.scan, rater, flags, note)

    def _lease_folder(self) -> Path:
        return inside_derivatives(self.root, lease_folder(self.root, self.scan), "the leases folder")

    def hold(self, holder: str, rater: str, opened: float | None = None) -> Lease:
        """Say (or, at each heartbeat, say again) that session ``holder`` has this case open."""
        return write_lease(self._lease_folder(), holder, rater, opened)

    def release(self, holder: str) -> None:
        remove_lease(self._lease_folder(), holder)

    def open_elsewhere(self, holder: str | None) -> list[Lease]:
        """The other sessions that have this case open now (stale leases ignored)."""
        return live_leases(self._lease_folder(), exclude=holder)

    # ------------------------------------------------------------------ export
    def export(self, labels: sitk.Image, rater: str, *, drawn_on: str | None, model: str | None = None,
               note: str | None = None, flags=None, draft_rater: str | None = None,
               extra_masks: dict[str, tuple[sitk.Image, dict]] | None = None,
               labels_taken: float | None = None) -> ExportOutcome:
        """A new version of the case's masks with lineage (parent = :attr:`base`); the draft goes, the base becomes it.

        Refuses (:class:`CaseRefused`, nothing written) a label map drawn on another scan or grid. ``draft_rater``
        names the draft to remove when it is not ``rater``'s (a name typed after the draft was written). ``note``
        and ``flags`` (None: the rater's kept ones, :meth:`note_of`) go into every sidecar of the version.
        ``extra_masks``: further masks of the version (the grey matter), checked against the case like the labels.
        ``labels_taken``: when ``labels`` were taken from the editor (a file time, s): a draft written later that holds
        other labels stays (:meth:`discard_exported_draft`); None: the drafts go.
        """
        kept = self.note_of(rater) if rater.strip() else CaseNote(rater)
        note = kept.note if note is None else note
        note, flags = checked_note(note), checked_flags(kept.flags if flags is None else flags)
        aligned = self.check(labels, drawn_on)
        array = sitk.GetArrayFromImage(aligned).astype(np.uint8)
        inside_derivatives(self.root, labels_folder(self.root), "the labels folder")
        predicted = {}
        if self.prediction is not None:
            predicted = {"predicted_cord": self.scan.grid.image_of(self.prediction > 0),
                         "predicted_lesion": self.scan.grid.image_of(self.prediction == 2)}
        result = export_correction(
            root=self.root, source=self.scan.path, cord=self.scan.grid.image_of(array > 0),
            lesion=self.scan.grid.image_of(array == 2), rater=rater, model=model, subject=self.scan.subject,
            session=self.scan.session, note=note, flags=flags, parent=self.base.lineage_parent, **predicted,
            extra_masks={suffix: (self.check(mask, drawn_on, f"the {suffix} mask"), fields)
                         for suffix, (mask, fields) in (extra_masks or {}).items()})
        warning = None
        if result.newer_than_parent:
            newer = ", ".join(f"v{n:03d}" for n in result.newer_than_parent)
            warning = (f"your correction started from {self.base.name} while {newer} existed; yours is "
                       f"v{result.version:03d} and now the latest, all are kept: check that it has what {newer} corrected.")
        for name in {rater, draft_rater or rater}:
            self.discard_exported_draft(name, array, labels_taken)
        self.bases = versions_of(self.root, self.scan) + [b for b in self.bases if b.kind != "version"]
        self.base = next(b for b in self.bases if b.version == result.version)
        self.labels, self.draft = array, None
        self._saved, self._drafted = _digest(array), None
        return ExportOutcome(result, warning)
