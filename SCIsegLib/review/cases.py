"""The review app's case list: every T2w image of a BIDS dataset with its status, in review-queue order.

Order: scans scored by ``sciseg queue score`` first, most uncertain first (:func:`training.queue.ranked`);
then the others by case id. A status is read from the files on disk each time (no cache), so
exports made by other raters or other servers show up at the next refresh, with the raters who keep a
draft of the case. A case whose prediction, labels or drafts lead out of the derivatives folder (a symbolic
link) is listed as refused with the reason; it never stops the list (nor the app).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..cases import DRAFTS, Draft, drafts_in, inside_derivatives
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

    def as_dict(self) -> dict:
        """JSON-ready (what the browser's list shows)."""
        return {**asdict(self), "drafts": list(self.drafts)}


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


def case_status(root: Path, case_id: str) -> Case:
    """Status of one case from the files: corrected (versions exist), predicted (masks exist), not predicted, or
    refused (with the reason) when one of its paths leads out of the derivatives folder."""
    try:
        return _status(Path(root), case_id)
    except (InputError, OSError) as error:  # PathRefused, CaseRefused; a folder that cannot be read
        return Case(case_id, REFUSED, None, 0, None, None, reason=str(error))


def case_drafts(root: Path, case_id: str) -> list[Draft]:
    """Every rater's draft of a case, newest first (its drafts folder must stay inside the derivatives folder)."""
    folder, stem = case_id.rsplit("/", 1)
    return drafts_in(inside_derivatives(root, labels_folder(root) / DRAFTS / folder / stem, "the drafts folder"))


def _status(root: Path, case_id: str) -> Case:
    image = root / f"{case_id}{IMAGE_SUFFIX}"
    stem = case_id.rsplit("/", 1)[1]
    drafts = tuple(dict.fromkeys(draft.rater for draft in case_drafts(root, case_id)))
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


def list_cases(root: Path, queue_path: Path | None = None, status: str | None = None) -> list[Case]:
    """Every case of the dataset with its status, queue order first; ``status`` keeps only that status."""
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
        case = replace(case_status(root, case_id), score=scores.get(case_id))
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
