"""Drafts: a rater's unsaved label map of one case, kept on disk until it is exported or discarded.

One file per rater and case, ``derivatives/labels/.drafts/sub-X/[ses-Y/]anat/<stem>/<rater key>.nrrd``: an NRRD
label map (0, 1 cord only, 2 lesion) on the scan's grid, whose header carries ``SCIseg_Draft`` (JSON: rater,
date, the scan's sha256, the base it started from). It is written to a temporary file and renamed, so a draft
is the previous one or the new one, whole, even after ``kill -9``. Slicer opens it as a label map volume.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..training.export import _anat_relative, labels_folder
from ..provenance import source_path
from ..volume import publish_file
from .scan import CaseRefused, Scan

DRAFTS = ".drafts"
_KEY = "SCIseg_Draft"


@dataclass(frozen=True)
class Draft:
    """A draft on disk: who, when (ISO 8601 UTC), which base it started from (``v002``, ``prediction``, ``empty``)."""

    path: Path
    rater: str
    date: str
    base: str
    scan_sha256: str

    def describe(self) -> str:
        return f"draft by {self.rater or 'an unnamed rater'} of {self.date.replace('T', ' ')[:19]} UTC (started from {self.base})"


def rater_key(rater: str) -> str:
    """A file name for a rater: the name's letters and digits, then 8 hex of its sha256 (``Dr. Li`` -> ``Dr-Li-3f0a91c2``)."""
    readable = re.sub(r"[^A-Za-z0-9]+", "-", rater.strip()).strip("-")[:40] or "unnamed"
    return f"{readable}-{hashlib.sha256(rater.strip().encode()).hexdigest()[:8]}"


def draft_folder(root: Path, scan: Scan) -> Path:
    return labels_folder(root) / DRAFTS / _anat_relative(scan.subject, scan.session) / scan.stem


def write_draft(folder: Path, scan: Scan, rater: str, labels_zyx: np.ndarray, base: str, *, key: str = _KEY,
                suffix: str = ".nrrd") -> Draft:
    """Publish the rater's draft of the scan atomically (temporary file in the same folder, then rename).

    ``key`` and ``suffix``: the header key and file name ending of another kind of draft (the review app's grey
    matter: ``<rater key>.gm.nrrd``), which :func:`drafts_in` does not list."""
    image = scan.grid.image_of(labels_zyx)
    date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
    record = {"Rater": rater.strip(), "Date": date, "SourceSha256": scan.sha256, "Base": base, "Source": source_path(scan.path)}
    image.SetMetaData(key, json.dumps(record))
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{rater_key(rater)}{suffix}"
    handle, temporary = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".nrrd", dir=folder)
    os.close(handle)
    try:
        sitk.WriteImage(image, temporary, useCompression=True)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())  # on disk before the rename makes it the draft
        publish_file(temporary, final)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return Draft(final, record["Rater"], date, base, scan.sha256)


def read_record(path: Path, key: str = _KEY) -> Draft | None:
    """The draft's record from its header (no voxels), None when the file is not a readable draft (of that ``key``)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        record = json.loads(reader.GetMetaData(key))
        return Draft(path, str(record["Rater"]), str(record["Date"]), str(record["Base"]), str(record["SourceSha256"]))
    except (RuntimeError, ValueError, KeyError, TypeError):
        return None


#: The review app's grey-matter draft beside a rater's draft: its header key and file name ending (``<rater key>.gm.nrrd``).
GREY_MATTER_KEY, GREY_MATTER_SUFFIX = "SCIseg_GreyMatterDraft", ".gm.nrrd"


def grey_matter_drafts_in(folder: Path) -> list[Draft]:
    """Every readable grey-matter draft in a case's draft folder, newest first."""
    found = [read_record(path, GREY_MATTER_KEY) for path in folder.glob(f"[!.]*{GREY_MATTER_SUFFIX}")] if folder.is_dir() else []
    return sorted((d for d in found if d is not None), key=lambda d: d.date, reverse=True)


def drafts_in(folder: Path) -> list[Draft]:
    """Every readable draft in a case's draft folder, newest first (temporary files of interrupted writes skipped)."""
    found = [read_record(path) for path in folder.glob("[!.]*.nrrd")] if folder.is_dir() else []
    return sorted((d for d in found if d is not None), key=lambda d: d.date, reverse=True)


def draft_holds_more(path: Path, scan: Scan, exported_zyx: np.ndarray | None, taken: float | None,
                     key: str = _KEY) -> bool:
    """True when the draft at ``path`` must outlive an export of ``exported_zyx`` (None: nothing of that kind was
    exported): it was written after the exported labels were taken (``taken``, a file time in s; None: no draft
    does) and holds other labels, or cannot be read to tell (kept, never guessed away)."""
    if taken is None or not path.is_file() or path.stat().st_mtime <= taken:
        return False
    record = read_record(path, key)
    try:
        held = draft_labels(record, scan) if record is not None else None
    except CaseRefused:
        return True
    return held is None or exported_zyx is None or not np.array_equal(held, exported_zyx)


def draft_labels(draft: Draft, scan: Scan) -> np.ndarray:
    """The draft's (z, y, x) label map; :class:`CaseRefused` when it was drawn on another scan or grid."""
    if draft.scan_sha256 != scan.sha256:
        raise CaseRefused(f"the {draft.describe()} was drawn on another version of {scan.path.name} "
                          "(the image's content changed since); it cannot be restored on this one.")
    try:
        image = sitk.ReadImage(str(draft.path))
    except RuntimeError:
        raise CaseRefused(f"the {draft.describe()} cannot be read.") from None
    return sitk.GetArrayFromImage(scan.align(image, f"the {draft.describe()}")).astype(np.uint8)
