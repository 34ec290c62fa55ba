"""What a case can be opened from: its exported versions (newest first), the model's prediction, or empty masks.

A version is a folder ``v001, v002, ...`` of the exporter's store (:mod:`..training.export`), read from its
``<stem>_dseg.json`` (rater, date, parent) and ``<stem>_dseg.nii.gz`` (0 background, 1 cord only, 2 lesion).
The prediction is the pair ``<stem>_sc_seg.nii.gz`` / ``<stem>_lesion_seg.nii.gz`` (SCT's names) with its JSON
sidecars when ``sciseg segment`` wrote them: a sidecar naming another source image (``SourceSha256``) refuses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..training.export import FROM_EMPTY, FROM_PREDICTION, label_map_from_masks, version_numbers, version_store
from .scan import CaseRefused, Scan

VERSION = "version"


@dataclass(frozen=True)
class Base:
    """One thing a case can start from. ``kind``: ``"version"``, ``"prediction"`` or ``"empty"``.

    ``parent`` (versions only) is the base that version was built on, as its sidecar records it:
    a version number, ``"prediction"``, ``"empty"`` or None (exported without lineage).
    """

    kind: str
    version: int | None = None
    rater: str | None = None
    date: str | None = None  # ISO 8601, UTC
    parent: int | str | None = None
    model: str | None = None
    files: tuple[Path, ...] = ()

    @property
    def name(self) -> str:
        """``v002``, ``prediction`` or ``empty``: what a sidecar's lineage and a draft record."""
        return f"v{self.version:03d}" if self.kind == VERSION else self.kind

    @property
    def lineage_parent(self) -> int | str:
        """What an export built on this base records as its parent (:func:`..training.export.parent_record`)."""
        return self.version if self.kind == VERSION else self.kind

    def describe(self) -> str:
        """A rater's words: ``v002 by bob on 2026-12-02 18:40 UTC (from v001)``."""
        if self.kind == VERSION:
            when = f" on {self.date.replace('T', ' ')[:16]} UTC" if self.date else ""
            origin = {None: "", FROM_PREDICTION: " (from the prediction)", FROM_EMPTY: " (drawn from empty)"}.get(
                self.parent, f" (from v{self.parent:03d})" if isinstance(self.parent, int) else "")
            return f"{self.name} by {self.rater or 'an unnamed rater'}{when}{origin}"
        if self.kind == FROM_PREDICTION:
            return f"the model's prediction{f' ({self.model})' if self.model else ''}"
        return "empty masks (no prediction, no version)"


EMPTY = Base(FROM_EMPTY)


def _parent_of(record: dict | None) -> int | str | None:
    if not isinstance(record, dict):
        return None
    if record.get("Kind") == VERSION and isinstance(record.get("Version"), int):
        return record["Version"]
    return record.get("Kind") if record.get("Kind") in (FROM_PREDICTION, FROM_EMPTY) else None


def versions_of(root: Path, scan: Scan) -> list[Base]:
    """The scan's exported versions, newest first (an unreadable sidecar gives a version without rater/date)."""
    store = version_store(root, scan.path, scan.subject, scan.session)
    bases = []
    for number in reversed(version_numbers(store) if store.is_dir() else []):
        folder = store / f"v{number:03d}"
        try:
            content = json.loads((folder / f"{scan.stem}_dseg.json").read_text())
        except (OSError, ValueError):
            content = {}
        content = content if isinstance(content, dict) else {}
        bases.append(Base(VERSION, number, content.get("Rater"), content.get("Date"), _parent_of(content.get("Parent")),
                          content.get("Model"), (folder / f"{scan.stem}_dseg.nii.gz",)))
    return bases


def prediction_of(*files: Path) -> Base | None:
    """The prediction as a base when its files exist, else None: the masks (cord, lesion), or one label map
    (0, 1 cord only, 2 lesion, as ``sciseg segment --label-map`` writes). The model's name comes from the first
    file's sidecar."""
    if len(files) not in (1, 2) or not all(Path(file).is_file() for file in files):
        return None
    model = None
    sidecar = Path(str(files[0]).removesuffix(".nii.gz") + ".json")
    try:
        content = json.loads(sidecar.read_text())
        model = content["GeneratedBy"][0]["Model"]["Name"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    return Base(FROM_PREDICTION, model=model, files=tuple(Path(file) for file in files))


def _read(path: Path, scan: Scan, what: str) -> np.ndarray:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise CaseRefused(f"{what} ({path.name}) cannot be read; choose another version or segment again.") from None
    return sitk.GetArrayFromImage(scan.align(image, what))


def base_labels(base: Base, scan: Scan) -> np.ndarray:
    """The base's label map on the scan's grid, (z, y, x) uint8: 0 background, 1 cord only, 2 lesion.

    Raises :class:`CaseRefused` when its files are not on the scan's grid, cannot be read, or (prediction with
    a sidecar) were computed from another image.
    """
    if base.kind == FROM_EMPTY:
        return np.zeros(scan.grid.shape_zyx, np.uint8)
    if base.kind == VERSION:
        labels = _read(base.files[0], scan, f"version {base.name}")
        return np.where(labels > 2, 0, labels).astype(np.uint8)
    for mask in base.files:
        sidecar = Path(str(mask).removesuffix(".nii.gz") + ".json")
        try:
            source_sha = json.loads(sidecar.read_text()).get("SourceSha256")
        except (OSError, ValueError, AttributeError):
            source_sha = None
        if source_sha and source_sha != scan.sha256:
            raise CaseRefused(f"the prediction {mask.name} was computed from another image than {scan.path.name} "
                              "(its sidecar's SourceSha256 differs); segment this scan again.")
    if len(base.files) == 1:
        labels = _read(base.files[0], scan, "the predicted label map")
        return label_map_from_masks(labels > 0, labels == 2)
    cord = _read(base.files[0], scan, "the cord prediction")
    lesion = _read(base.files[1], scan, "the lesion prediction")
    return label_map_from_masks(cord, lesion)
