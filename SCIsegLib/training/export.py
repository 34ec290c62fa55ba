"""Export of rater-corrected masks into a BIDS derivatives folder, versioned and never overwritten.

Layout (``<root>`` is a BIDS dataset; labels go to ``<root>/derivatives/labels``)::

    derivatives/labels/dataset_description.json                  GeneratedBy kept up to date
    derivatives/labels/sub-01/[ses-01/]anat/
        sub-01_T2w_label-SC_seg.nii.gz (+ .json)                  the latest version (convenience copies)
        sub-01_T2w_label-lesion_seg.nii.gz (+ .json)
        sub-01_T2w_dseg.nii.gz (+ .json)                          0 background, 1 cord only, 2 lesion
    derivatives/labels/.sciseg_versions/sub-01/[ses-01/]anat/sub-01_T2w/v001/, v002/, ...   every version, immutable

Every export makes a new version folder: assembled under a temporary name, then renamed (atomic)
while holding a lock, so two raters exporting at once get v002 and v003, and a crash leaves no
half version. The convenience copies are replaced afterwards, one atomic rename each; the version
store is the source of truth (:func:`latest_version`), and the next export re-synchronises the copies.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from filelock import FileLock

from .. import __version__
from ..hashing import file_sha256
from ..errors import InputError
from ..metrics import dice
from ..volume import image_from_array_zyx, image_stem, on_grid_of, publish_file

VERSIONS = ".sciseg_versions"
FILES = {"sc": "_label-SC_seg.nii.gz", "lesion": "_label-lesion_seg.nii.gz", "labels": "_dseg.nii.gz"}
_BIDS_ENTITY = re.compile(r"(?:^|_)(sub|ses)-([A-Za-z0-9]+)")


@dataclass(frozen=True)
class ExportResult:
    """Where an export went: its version number, the immutable version folder and the latest copies."""

    version: int
    version_folder: Path
    files: dict[str, Path]


def bids_entities(source: Path, subject: str | None = None, session: str | None = None) -> tuple[str, str | None]:
    """(subject, session) labels from a BIDS file name (``sub-01_ses-02_T2w.nii.gz``), or the given ones."""
    found = dict(_BIDS_ENTITY.findall(source.name))
    subject = subject or found.get("sub")
    if not subject:
        raise InputError(f"{source.name} is not a BIDS file name (sub-<label>_...); give the subject with --subject.")
    return subject.removeprefix("sub-"), (session or found.get("ses") or None)


def labels_folder(root: Path) -> Path:
    return Path(root) / "derivatives" / "labels"


def _anat_relative(subject: str, session: str | None) -> Path:
    relative = Path(f"sub-{subject}")
    if session:
        relative = relative / f"ses-{session.removeprefix('ses-')}"
    return relative / "anat"




def label_map_from_masks(cord: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """0 background, 1 cord only, 2 lesion (lesion wins: nnU-Net's region convention)."""
    labels = (cord > 0).astype(np.uint8)
    labels[lesion > 0] = 2
    return labels


def correction_summary(predicted: np.ndarray | None, corrected: np.ndarray) -> dict:
    """What the rater changed in one structure: voxels added and removed, Dice before/after."""
    if predicted is None:
        return {"Corrected": None, "VoxelsAdded": None, "VoxelsRemoved": None, "DicePredictionVsCorrection": None}
    predicted, corrected = predicted > 0, corrected > 0
    added = int(np.count_nonzero(corrected & ~predicted))
    removed = int(np.count_nonzero(predicted & ~corrected))
    return {
        "Corrected": bool(added or removed),
        "VoxelsAdded": added,
        "VoxelsRemoved": removed,
        "DicePredictionVsCorrection": round(dice(predicted, corrected), 6),
    }


def version_numbers(folder: Path) -> list[int]:
    return sorted(int(p.name[1:]) for p in folder.glob("v[0-9][0-9][0-9]*") if p.is_dir() and p.name[1:].isdigit())


def latest_version(root: Path, source: Path, subject: str | None = None, session: str | None = None) -> Path | None:
    """The newest complete version folder of a scan's corrections (None when never exported)."""
    subject, session = bids_entities(source, subject, session)
    store = labels_folder(root) / VERSIONS / _anat_relative(subject, session) / image_stem(source)
    numbers = version_numbers(store) if store.is_dir() else []
    return store / f"v{numbers[-1]:03d}" if numbers else None


def _update_dataset_description(labels_root: Path) -> None:
    path = labels_root / "dataset_description.json"
    content = json.loads(path.read_text()) if path.is_file() else {
        "Name": "Spinal cord and lesion labels (SCIseg, rater-corrected)",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
    }
    generated = [g for g in content.get("GeneratedBy", []) if g.get("Name") != "SCIseg"]
    generated.append({"Name": "SCIseg", "Version": __version__, "Description": "rater-corrected cord and lesion masks"})
    content["GeneratedBy"] = generated
    handle, temporary = tempfile.mkstemp(prefix=".dataset_description.", dir=labels_root)
    with os.fdopen(handle, "w") as stream:
        json.dump(content, stream, indent=2)
    publish_file(temporary, path)
    ignore = labels_root / ".bidsignore"
    if not ignore.is_file():
        ignore.write_text(f"{VERSIONS}/\n")


def export_correction(
    *,
    root: Path,
    source: Path,
    cord: sitk.Image,
    lesion: sitk.Image,
    rater: str,
    model: str | None = None,
    predicted_cord: sitk.Image | None = None,
    predicted_lesion: sitk.Image | None = None,
    subject: str | None = None,
    session: str | None = None,
    note: str = "",
) -> ExportResult:
    """Write a new version of a scan's corrected masks; never overwrites an earlier version.

    Args:
        root: the BIDS dataset (labels go to ``root/derivatives/labels``).
        source: the image the masks were drawn on (its grid is the reference; its sha256 is recorded).
        cord, lesion: the corrected binary masks (cord may or may not include the lesion).
        rater: who corrected them.
        model: the model that made the prediction, if any.
        predicted_cord, predicted_lesion: the model's masks, to record what the rater changed.
        subject, session: BIDS labels when the file name does not carry them.
        note: free text kept in the sidecars.
    """
    if not rater.strip():
        raise InputError("a rater name is required to export corrections.")
    source = Path(source)
    if not source.is_file():
        raise InputError(f"{source}: no such source image.")
    reference = sitk.ReadImage(str(source))
    subject, session = bids_entities(source, subject, session)
    arrays = {}
    for name, mask in (("sc", cord), ("lesion", lesion), ("predicted_sc", predicted_cord), ("predicted_lesion", predicted_lesion)):
        if mask is None:
            continue
        try:
            aligned = on_grid_of(mask, reference, what=f"the {name.replace('_', ' ')} mask", where=str(source))
        except ValueError as error:
            raise InputError(f"{error}; export masks drawn on this image.") from None
        arrays[name] = sitk.GetArrayFromImage(aligned) > 0
    labels = label_map_from_masks(arrays["sc"], arrays["lesion"])
    masks = {"sc": labels > 0, "lesion": labels == 2}  # cord region = labels {1, 2}, as SCIseg's _sc_seg

    labels_root = labels_folder(root)
    anat = _anat_relative(subject, session)
    stem = image_stem(source)
    store = labels_root / VERSIONS / anat / stem
    store.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    source_info = {"Path": str(source.resolve()), "Sha256": file_sha256(source)}

    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=store))
    try:
        for key, suffix in FILES.items():
            data = labels if key == "labels" else masks[key].astype(np.uint8)
            sitk.WriteImage(image_from_array_zyx(data, reference), str(staging / f"{stem}{suffix}"), useCompression=True)
            sidecar = {
                "GeneratedBy": [{"Name": "SCIseg", "Version": __version__, "Description": "rater correction"}],
                "Rater": rater,
                "Date": now,
                "Model": model,
                "SourceImage": source_info,
                "Note": note,
            }
            if key == "labels":
                sidecar["Labels"] = {"0": "background", "1": "spinal cord (no lesion)", "2": "lesion"}
                sidecar["Corrections"] = {
                    name: correction_summary(arrays.get(f"predicted_{name}"), masks[name]) for name in ("sc", "lesion")
                }
            else:
                sidecar.update(correction_summary(arrays.get(f"predicted_{key}"), masks[key]))
                sidecar["VoxelCount"] = int(masks[key].sum())
            (staging / f"{stem}{suffix.removesuffix('.nii.gz')}.json").write_text(json.dumps(sidecar, indent=2))
        for file in staging.iterdir():
            os.chmod(file, 0o444)  # versions are read-only
        os.chmod(staging, 0o755)
        with FileLock(str(labels_root / ".sciseg.lock"), timeout=120):
            numbers = version_numbers(store)
            version = (numbers[-1] + 1) if numbers else 1
            version_folder = store / f"v{version:03d}"
            for file in staging.glob("*.json"):
                content = json.loads(file.read_text())
                content["Version"] = version
                content["PreviousVersions"] = [str((store / f"v{n:03d}").relative_to(labels_root)) for n in numbers]
                os.chmod(file, 0o644)
                file.write_text(json.dumps(content, indent=2))
                os.chmod(file, 0o444)
            os.rename(staging, version_folder)  # the commit: the version exists completely or not at all
            _update_dataset_description(labels_root)
            latest = _publish_latest(version_folder, labels_root / anat)
    finally:
        if staging.exists():
            for file in staging.iterdir():
                os.chmod(file, 0o644)
            shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(version=version, version_folder=version_folder, files=latest)


def _publish_latest(version_folder: Path, anat_folder: Path) -> dict[str, Path]:
    """Copy a version's files to their BIDS names (each replaced atomically)."""
    anat_folder.mkdir(parents=True, exist_ok=True)
    published = {}
    for file in sorted(version_folder.iterdir()):
        handle, temporary = tempfile.mkstemp(prefix=f".{file.name}.", dir=anat_folder)
        os.close(handle)
        shutil.copyfile(file, temporary)
        publish_file(temporary, anat_folder / file.name)
        published[file.name] = anat_folder / file.name
    return published


def masks_from_seg_nrrd(path: Path) -> tuple[sitk.Image, sitk.Image]:
    """(cord, lesion) masks from a Slicer ``.seg.nrrd`` (segments ``spinal_cord``/``lesion`` by id or name)."""
    import slicerio

    segmentation = slicerio.read_segmentation(str(path))
    ijk_to_lps = np.array(segmentation["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing

    def find(identifier: str, name: str) -> dict:
        for segment in segmentation["segments"]:
            if segment["id"] == identifier or segment.get("name", "").lower() == name.lower():
                return segment
        raise InputError(f"{path} has no '{name}' segment (id '{identifier}').")

    images = []
    for identifier, name in (("spinal_cord", "Spinal cord"), ("lesion", "Lesion")):
        mask_ijk = slicerio.segment_mask(segmentation, find(identifier, name))  # indexed (i, j, k)
        image = sitk.GetImageFromArray(np.ascontiguousarray(mask_ijk.transpose(2, 1, 0)).astype(np.uint8))
        image.SetSpacing([float(s) for s in spacing])
        image.SetDirection([float(v) for v in direction.ravel()])
        image.SetOrigin([float(v) for v in ijk_to_lps[:3, 3]])
        images.append(image)
    return images[0], images[1]
