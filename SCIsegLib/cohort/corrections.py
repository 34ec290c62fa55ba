"""Which masks a cohort scan is measured on: the rater's latest corrected version, else the model's masks.

Corrections are the versions ``sciseg export`` (and the Slicer panel, the review app) write into
``<BIDS root>/derivatives/labels/.sciseg_versions/<sub>/[<ses>/]anat/<stem>/vNNN/`` (SCIsegLib.training.export,
read here, never written). The newest complete version wins. What a scan was measured on is recorded in its
completion marker (version number and sha256 of the label map), so a rerun after a new export redoes exactly
the scans whose correction changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk

from ..errors import InputError
from ..hashing import file_sha256
from ..provenance import source_path
from ..training.export import FILES, latest_version
from ..volume import load_mask, same_grid
from .discovery import Scan

#: What a marker written before corrections were read stands for.
MODEL_LABELS = {"From": "model"}


@dataclass(frozen=True)
class MeasuredLabels:
    """The masks a scan is measured on.

    Attributes:
        version_folder: the correction's version folder, or None for the model's masks.
        version: its number (1 for ``v001``); 0 for the model.
        rater: who made the correction ("" for the model).
        sha256: sha256 of the correction's label map (``_dseg.nii.gz``); "" for the model.
    """

    version_folder: Path | None = None
    version: int = 0
    rater: str = ""
    sha256: str = ""

    @property
    def corrected(self) -> bool:
        return self.version_folder is not None

    def key(self) -> dict:
        """What the completion marker records and the resume check compares."""
        if not self.corrected:
            return dict(MODEL_LABELS)
        return {"From": "correction", "Version": self.version, "Rater": self.rater, "Sha256": self.sha256}

    def describe(self) -> str:
        """The ``measured_on`` cell: ``model`` or ``correction v002 (alice)``."""
        return describe_labels(self.key())

    def file(self, stem: str, structure: str) -> Path:
        """The correction's mask of ``structure`` ("sc", "lesion" or "labels")."""
        assert self.version_folder is not None
        return self.version_folder / f"{stem}{FILES[structure]}"


def describe_labels(key: dict) -> str:
    """``model`` or ``correction vNNN (rater)`` from a marker's ``Labels`` entry."""
    if key.get("From") != "correction":
        return "model"
    return f"correction v{int(key.get('Version', 0)):03d} ({key.get('Rater', '')})"


def measured_labels(bids_root: Path | None, scan: Scan) -> MeasuredLabels:
    """The latest complete correction of ``scan`` under ``bids_root/derivatives/labels``; the model's masks when
    there is none, when ``bids_root`` is None, or when the scan's name carries no BIDS subject."""
    if bids_root is None:
        return MeasuredLabels()
    try:
        folder = latest_version(Path(bids_root), scan.path)
    except InputError:  # not a BIDS name: no correction can be filed for it
        return MeasuredLabels()
    if folder is None:
        return MeasuredLabels()
    labels = folder / f"{scan.stem}{FILES['labels']}"
    if not all((folder / f"{scan.stem}{suffix}").is_file() for suffix in FILES.values()):
        return MeasuredLabels()
    try:
        rater = str(json.loads(labels.with_name(labels.name.replace(".nii.gz", ".json")).read_text()).get("Rater", ""))
    except (OSError, ValueError):
        rater = ""
    return MeasuredLabels(folder, int(folder.name[1:]), rater, file_sha256(labels))


def load_corrected_masks(labels: MeasuredLabels, scan: Scan, image: sitk.Image) -> dict[str, sitk.Image]:
    """The correction's cord and lesion masks ({"sc", "lesion"}), checked to lie on the scan's grid."""
    masks = {}
    for structure in ("sc", "lesion"):
        path = labels.file(scan.stem, structure)
        mask = load_mask(path)
        if not same_grid(mask, image, tolerance_mm=1e-3):
            raise InputError(f"{path} does not lie on the grid of {scan.path.name}; export the correction again.")
        mask = sitk.Cast(mask > 0, sitk.sitkUInt8)
        mask.CopyInformation(image)
        masks[structure] = mask
    return masks


def write_measured_masks(masks: dict[str, sitk.Image], labels: MeasuredLabels, scan: Scan, folder: Path,
                         labels_root: Path) -> list[Path]:
    """The correction's masks as the scan's ``<stem>_sc_seg`` / ``<stem>_lesion_seg`` (what the tables measured),
    each with a sidecar naming the version, the rater and the label map's sha256."""
    from ..analysis_files import write_text_atomic
    from ..volume import write_image_atomic

    written = []
    for structure, suffix in (("sc", "_sc_seg"), ("lesion", "_lesion_seg")):
        path = write_image_atomic(masks[structure], folder / f"{scan.stem}{suffix}.nii.gz", geometry_from=scan.path)
        sidecar = {
            "MeasuredOn": labels.describe(),
            "Correction": labels.version_folder.relative_to(labels_root).as_posix() if labels.version_folder else None,
            **labels.key(),
            "Source": source_path(scan.path),
        }
        written += [path, write_text_atomic(json.dumps(sidecar, indent=2), path.with_name(f"{scan.stem}{suffix}.json"))]
    return written
