"""The review app's case list: every T2w image of a BIDS dataset with its status, in review-queue order.

Order: scans scored by ``sciseg queue score`` first, most uncertain first (:func:`training.queue.ranked`);
then the others by case id. A status is read from the files on disk each time (no cache), so
exports made by other raters or other servers show up at the next refresh, with the raters who keep a
draft of the case, the raters' flags and notes (:mod:`SCIsegLib.cases.notes`) and who else has it open now (the
leases of other sessions, :mod:`SCIsegLib.cases.leases`). A case whose prediction, labels or drafts lead out of the derivatives folder (a symbolic
link) is listed as refused with the reason; it never stops the list (nor the app).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..cases import DRAFTS, Draft, drafts_in, inside_derivatives
from ..cases.drafts import grey_matter_drafts_in
from ..cases.leases import LEASES, live_leases
from ..cases.notes import FLAGS, NOTES, notes_in
from ..errors import InputError
from ..training.export import labels_folder, latest_version, version_numbers
from ..training.queue import load_queue, ranked
from .paths import IMAGE_SUFFIX, PathRefused, case_id_of, contained, prediction_paths

NOT_PREDICTED, PREDICTED, CORRECTED, REFUSED = "not predicted", "predicted", "corrected", "refused"
STATUSES = (NOT_PREDICTED, PREDICTED, CORRECTED, REFUSED)


@dataclass(frozen=True)
class Case:
    """One scan to review. ``score`` is the queue's uncertainty (None when not scored)."""

    case_id: str
    status: str
    score: float | None
    versions: int
    rater: str | None
    date: str | None
    drafts: tuple[str, ...] = ()  # raters with a draft of this case, newest first
    reason: str | None = None  # why a refused case cannot be opened
    flags: tuple[str, ...] = ()  # every rater's flags (keys of FLAGS, display order)
    notes: tuple[str, ...] = ()  # one line per rater with a note or flags, newest first (CaseNote.describe)
    open_by: tuple[str, ...] = ()  # other sessions that have the case open now (Lease.describe)

    def as_dict(self) -> dict:
        """JSON-ready (what the browser's list shows)."""
        return {**asdict(self), "drafts": list(self.drafts), "flags": list(self.flags), "notes": list(self.notes),
                "open_by": list(self.open_by)}


def find_images(root: Path) -> list[Path]:
    """T2w images ``sub-*/[ses-*/]anat/*_T2w.nii.gz`` of a BIDS root (derivatives and escaping symlinks skipped)."""
    root = Path(root)
    found = []
    for pattern in ("sub-*/anat/*_T2w.nii.gz", "sub-*/ses-*/anat/*_T2w.nii.gz"):
        for path in root.glob(pattern):
            try:
                contained(root, path)
                case_id_of(root, path)
            except PathRefused:
                continue
            found.append(path)
    return sorted(found)


def case_status(root: Path, case_id: str, holder: str | None = None) -> Case:
    """Status of one case from the files: corrected (versions exist), predicted (masks exist), not predicted, or
    refused (with the reason) when one of its paths leads out of the derivatives folder; with its flags, notes and
    the sessions other than ``holder`` (this session's lease holder id) that have it open."""
    try:
        status = _status(Path(root), case_id)
        return replace(status, **_notes_and_leases(Path(root), case_id, holder))
    except (InputError, OSError) as error:  # PathRefused, CaseRefused; a folder that cannot be read
        return Case(case_id, REFUSED, None, 0, None, None, reason=str(error))


def _notes_and_leases(root: Path, case_id: str, holder: str | None) -> dict:
    """The list's view of a case's notes (any image content: the case itself checks the sha256) and leases."""
    folder, stem = case_id.rsplit("/", 1)
    notes = notes_in(inside_derivatives(root, labels_folder(root) / NOTES / folder / stem, "the notes folder"))
    leases = live_leases(inside_derivatives(root, labels_folder(root) / LEASES / folder / stem, "the leases folder"),
                         exclude=holder)
    flags = {flag for note in notes for flag in note.flags}
    return {"flags": tuple(flag for flag in FLAGS if flag in flags),
            "notes": tuple(note.describe() for note in notes if not note.empty),
            "open_by": tuple(lease.describe() for lease in leases)}


def case_drafts(root: Path, case_id: str) -> list[Draft]:
    """Every rater's draft of a case, newest first (its drafts folder must stay inside the derivatives folder)."""
    folder, stem = case_id.rsplit("/", 1)
    return drafts_in(inside_derivatives(root, labels_folder(root) / DRAFTS / folder / stem, "the drafts folder"))


def grey_matter_drafts(root: Path, case_id: str) -> list[Draft]:
    """Every rater's grey-matter draft of a case (the review app's grey-matter segment), newest first."""
    folder, stem = case_id.rsplit("/", 1)
    return grey_matter_drafts_in(inside_derivatives(root, labels_folder(root) / DRAFTS / folder / stem, "the drafts folder"))


def _status(root: Path, case_id: str) -> Case:
    image = root / f"{case_id}{IMAGE_SUFFIX}"
    stem = case_id.rsplit("/", 1)[1]
    drafts = tuple(dict.fromkeys(draft.rater for draft in case_drafts(root, case_id) + grey_matter_drafts(root, case_id)))
    latest = latest_version(root, image)
    if latest is not None:
        inside_derivatives(root, latest, "the versions folder")
        sidecar = latest / f"{stem}_dseg.json"
        try:
            content = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            content = {}
        content = content if isinstance(content, dict) else {}
        return Case(case_id, CORRECTED, None, len(version_numbers(latest.parent)), content.get("Rater"), content.get("Date"),
                    drafts)
    predicted = all(path.is_file() for path in prediction_paths(root, case_id).values())
    return Case(case_id, PREDICTED if predicted else NOT_PREDICTED, None, 0, None, None, drafts)


def list_cases(root: Path, queue_path: Path | None = None, status: str | None = None,
               holder: str | None = None) -> list[Case]:
    """Every case of the dataset with its status, queue order first; ``status`` keeps only that status; ``holder``:
    this session's lease holder id (its own leases are not "open elsewhere")."""
    root = Path(root)
    images = find_images(root)
    scores: dict[str, float] = {}
    order: list[str] = []
    if queue_path is not None:
        for record in ranked(load_queue(Path(queue_path))):
            path = Path(record["path"])
            try:
                contained(root, path)
                case_id = case_id_of(root.resolve(), path.resolve())
            except (PathRefused, ValueError):
                continue  # a queued scan of another dataset
            scores[case_id] = float(record["score"])
            order.append(case_id)
    ids = [case_id_of(root, image) for image in images]
    ordered = [case_id for case_id in order if case_id in ids] + [case_id for case_id in ids if case_id not in scores]
    cases = []
    for case_id in ordered:
        case = replace(case_status(root, case_id, holder), score=scores.get(case_id))
        if status is None or case.status == status:
            cases.append(case)
    return cases


def next_uncorrected(cases: list[Case], after: str | None = None) -> Case | None:
    """The first case not corrected yet after ``after`` in list order (wrapping around), else None."""
    ids = [case.case_id for case in cases]
    start = ids.index(after) + 1 if after in ids else 0
    for case in cases[start:] + cases[:start]:
        if case.status not in (CORRECTED, REFUSED) and case.case_id != after:
            return case
    return None
