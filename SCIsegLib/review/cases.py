"""The review app's case list: every T2w image of a BIDS dataset with its status, in review-queue order.

Order: scans scored by ``sciseg queue score`` first, most uncertain first (:func:`training.queue.ranked`);
then the others by case id. A status is read from the files on disk each time (no cache), so
exports made by other raters or other servers show up at the next refresh.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..training.export import latest_version, version_numbers
from ..training.queue import load_queue, ranked
from .paths import IMAGE_SUFFIX, PathRefused, case_id_of, contained, prediction_paths

NOT_PREDICTED, PREDICTED, CORRECTED = "not predicted", "predicted", "corrected"
STATUSES = (NOT_PREDICTED, PREDICTED, CORRECTED)


@dataclass(frozen=True)
class Case:
    """One scan to review. ``score`` is the queue's uncertainty (None when not scored)."""

    case_id: str
    status: str
    score: float | None
    versions: int
    rater: str | None
    date: str | None

    def as_dict(self) -> dict:
        return asdict(self)


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
    """Status of one case from the files: corrected (versions exist), predicted (masks exist) or not predicted."""
    image = Path(root) / f"{case_id}{IMAGE_SUFFIX}"
    latest = latest_version(Path(root), image)
    if latest is not None:
        try:
            contained(root, latest)
        except PathRefused:
            latest = None  # a labels folder symlinked outside the root is not read (and the export refuses it)
    if latest is not None:
        sidecar = latest / f"{case_id.rsplit('/', 1)[1]}_dseg.json"
        content = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        return Case(case_id, CORRECTED, None, len(version_numbers(latest.parent)), content.get("Rater"), content.get("Date"))
    predicted = all(path.is_file() for path in prediction_paths(root, case_id).values())
    return Case(case_id, PREDICTED if predicted else NOT_PREDICTED, None, 0, None, None)


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
        case = case_status(root, case_id)
        case = Case(case.case_id, case.status, scores.get(case_id), case.versions, case.rater, case.date)
        if status is None or case.status == status:
            cases.append(case)
    return cases


def next_uncorrected(cases: list[Case], after: str | None = None) -> Case | None:
    """The first case not corrected yet after ``after`` in list order (wrapping around), else None."""
    ids = [case.case_id for case in cases]
    start = ids.index(after) + 1 if after in ids else 0
    for case in cases[start:] + cases[:start]:
        if case.status != CORRECTED and case.case_id != after:
            return case
    return None
