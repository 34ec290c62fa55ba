"""Export of rater-corrected masks into a BIDS derivatives folder, versioned and never overwritten.

Layout (``<root>`` is a BIDS dataset; labels go to ``<root>/derivatives/labels``)::

    derivatives/labels/dataset_description.json                  GeneratedBy kept up to date
    derivatives/labels/sub-01/[ses-01/]anat/
        sub-01_T2w_label-SC_seg.nii.gz (+ .json)                  the latest version (convenience copies)
        sub-01_T2w_label-lesion_seg.nii.gz (+ .json)
        sub-01_T2w_dseg.nii.gz (+ .json)                          0 background, 1 cord only, 2 lesion
    derivatives/labels/.sciseg_versions/sub-01/[ses-01/]anat/sub-01_T2w/v001/, v002/, ...   every version, immutable

Every export makes a new version folder: assembled under a temporary name, read back and checked,
then renamed (atomic) while holding a lock, so two raters exporting at once get v002 and v003, and a
crash leaves no half version. The convenience copies are replaced afterwards, one atomic rename each,
between a marker ``.<stem>.sciseg-publishing`` written first and removed last: while the marker is
there the copies may mix two versions, and readers (:func:`publishing_marker`, ``sciseg evaluate``)
refuse them; the next export of that scan republishes them. The version store is the source of truth
(:func:`latest_version`). Subject, session and file names are validated before they become paths.

Lineage: an export may name the base it was built on (``parent``: :data:`FROM_PREDICTION`, :data:`FROM_EMPTY`
or a version number). Every sidecar then records ``"Parent"`` (``{"Kind": "version", "Version": 2}``,
``{"Kind": "prediction"}`` or ``{"Kind": "empty"}``; ``null`` when not given), and the result lists the versions
that existed at the commit and are newer than that base (:attr:`ExportResult.newer_than_parent`): a correction
that started from the prediction, or an older version, while a newer correction existed.
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
from ..errors import InputError, SCIsegError
from ..file_checks import check_whole_image_file
from ..metrics import dice
from ..safe_paths import bids_label, contained, plain_name
from ..volume import image_from_array_zyx, image_stem, load_mask, on_grid_of, publish_file

VERSIONS = ".sciseg_versions"
FILES = {"sc": "_label-SC_seg.nii.gz", "lesion": "_label-lesion_seg.nii.gz", "labels": "_dseg.nii.gz"}
#: Further masks a version may hold (the grey matter, :mod:`SCIsegLib.compartments_segments`): its latest copy goes
#: when the latest version has none.
EXTRA_SUFFIXES = ("_label-GM_seg.nii.gz",)
_BIDS_ENTITY = re.compile(r"(?:^|_)(sub|ses)-([A-Za-z0-9]+)")
PUBLISHING = ".sciseg-publishing"  # suffix of the marker present while the latest copies are replaced
_OUR_TEMPORARY = re.compile(r"^\..+\.(?:nii\.gz|json)\.[A-Za-z0-9_]{8}$")  # mkstemp names of _publish_latest


@dataclass(frozen=True)
class ExportResult:
    """Where an export went: its version number, the immutable version folder and the latest copies."""

    version: int
    version_folder: Path
    files: dict[str, Path]
    newer_than_parent: tuple[int, ...] = ()  # versions newer than the parent, present when this one was committed


FROM_PREDICTION, FROM_EMPTY = "prediction", "empty"


def parent_record(parent: int | str | None) -> dict | None:
    """The sidecar's ``Parent`` for a base: a version number, :data:`FROM_PREDICTION` or :data:`FROM_EMPTY` (None: not known)."""
    if parent is None:
        return None
    if parent in (FROM_PREDICTION, FROM_EMPTY):
        return {"Kind": parent}
    if isinstance(parent, int) and not isinstance(parent, bool) and parent >= 1:
        return {"Kind": "version", "Version": parent}
    raise ValueError(f"parent must be a version number (>= 1), {FROM_PREDICTION!r} or {FROM_EMPTY!r}, not {parent!r}")


def bids_entities(source: Path, subject: str | None = None, session: str | None = None) -> tuple[str, str | None]:
    """(subject, session) labels from a BIDS file name (``sub-01_ses-02_T2w.nii.gz``), or the given ones."""
    found = dict(_BIDS_ENTITY.findall(source.name))
    subject = subject or found.get("sub")
    if not subject:
        raise InputError(f"{source.name} is not a BIDS file name (sub-<label>_...); give the subject with --subject.")
    session = session or found.get("ses") or None
    subject = bids_label(subject.removeprefix("sub-"), "subject")
    return subject, (bids_label(session.removeprefix("ses-"), "session") if session else None)


def publishing_marker(anat_folder: Path, stem: str) -> Path:
    """The marker that exists while (or since an interrupted export when) the latest copies of ``stem`` were replaced."""
    return Path(anat_folder) / f".{stem}{PUBLISHING}"


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


def version_store(root: Path, source: Path, subject: str | None = None, session: str | None = None) -> Path:
    """The folder holding a scan's versions ``v001, v002, ...`` (it may not exist yet); names validated."""
    subject, session = bids_entities(source, subject, session)
    stem = plain_name(image_stem(source), "source image name")
    return labels_folder(root) / VERSIONS / _anat_relative(subject, session) / stem


def latest_version(root: Path, source: Path, subject: str | None = None, session: str | None = None) -> Path | None:
    """The newest complete version folder of a scan's corrections (None when never exported)."""
    store = version_store(root, source, subject, session)
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
    parent: int | str | None = None,
    extra_masks: dict[str, tuple[sitk.Image, dict]] | None = None,
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
        extra_masks: further binary masks of the version, ``{suffix: (mask, sidecar fields)}`` (the grey matter:
            ``{"_label-GM_seg.nii.gz": (gm, {"Structure": "gm", ...})}``), written, checked and published with the others.
        parent: the base the masks were built on (a version number, ``"prediction"`` or ``"empty"``), recorded as
            ``Parent``; the result's ``newer_than_parent`` then lists versions newer than it (None: not known, empty).
    """
    if not rater.strip():
        raise InputError("a rater name is required to export corrections.")
    parent_sidecar = parent_record(parent)
    source = Path(source)
    if not source.is_file():
        raise InputError(f"{source}: no such source image.")
    if not Path(root).is_dir():
        raise InputError(f"--root {root} is not a folder; give the BIDS dataset's folder.")
    reference = load_mask(source, binary=False)  # header, size and completeness checked before any voxel is read
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
    extras = {}
    for suffix, (mask, fields) in (extra_masks or {}).items():
        if suffix not in EXTRA_SUFFIXES:
            raise ValueError(f"{suffix!r} is not a further mask's suffix ({', '.join(EXTRA_SUFFIXES)})")
        try:
            aligned = on_grid_of(mask, reference, what=f"the {suffix} mask", where=str(source))
        except ValueError as error:
            raise InputError(f"{error}; export masks drawn on this image.") from None
        extras[suffix] = (sitk.GetArrayFromImage(aligned) > 0, dict(fields))
    labels = label_map_from_masks(arrays["sc"], arrays["lesion"])
    masks = {"sc": labels > 0, "lesion": labels == 2}  # cord region = labels {1, 2}, as SCIseg's _sc_seg

    # <root>/derivatives may be a link (another disk, a common layout); a link below it leading out of it is refused
    labels_root = contained(labels_folder(root), Path(root) / "derivatives", "labels folder")
    anat = _anat_relative(subject, session)
    stem = plain_name(image_stem(source), "source image name")
    store = contained(labels_root / VERSIONS / anat / stem, labels_root, "version folder")
    contained(labels_root / anat, labels_root, "labels folder")
    store.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    source_info = {"Path": str(source.resolve()), "Sha256": file_sha256(source)}

    staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=store))
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
                "Parent": parent_sidecar,
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
        for suffix, (mask, fields) in extras.items():
            sitk.WriteImage(image_from_array_zyx(mask.astype(np.uint8), reference), str(staging / f"{stem}{suffix}"),
                            useCompression=True)
            sidecar = {"GeneratedBy": [{"Name": "SCIseg", "Version": __version__, "Description": "rater correction"}],
                       "Rater": rater, "Date": now, "Model": model, "SourceImage": source_info, "Note": note,
                       "Parent": parent_sidecar, **fields, "VoxelCount": int(mask.sum())}
            (staging / f"{stem}{suffix.removesuffix('.nii.gz')}.json").write_text(json.dumps(sidecar, indent=2))
        _verify_staged(staging, stem, {"labels": labels, "sc": masks["sc"], "lesion": masks["lesion"]},
                       {suffix: mask for suffix, (mask, _) in extras.items()})
        for file in staging.iterdir():
            os.chmod(file, 0o444)  # versions are read-only
        os.chmod(staging, 0o755)
        with FileLock(str(labels_root / ".sciseg.lock"), timeout=120):
            _remove_stale_temporaries(store, labels_root / anat)
            _republish_interrupted(store.parent, labels_root / anat)
            numbers = version_numbers(store)
            version = (numbers[-1] + 1) if numbers else 1
            version_folder = store / f"v{version:03d}"
            if parent is None:
                newer = ()
            else:
                newer = tuple(n for n in numbers if not isinstance(parent, int) or n > parent)
            for file in staging.glob("*.json"):
                content = json.loads(file.read_text())
                content["Version"] = version
                content["PreviousVersions"] = [str((store / f"v{n:03d}").relative_to(labels_root)) for n in numbers]
                os.chmod(file, 0o644)
                file.write_text(json.dumps(content, indent=2))
                os.chmod(file, 0o444)
            os.rename(staging, version_folder)  # the commit: the version exists completely or not at all
            _update_dataset_description(labels_root)
            latest = _publish_latest(version_folder, labels_root / anat, stem)
    finally:
        if staging.exists():
            for file in staging.iterdir():
                os.chmod(file, 0o644)
            shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(version=version, version_folder=version_folder, files=latest, newer_than_parent=newer)


def _verify_staged(staging: Path, stem: str, expected: dict[str, np.ndarray], extras: dict[str, np.ndarray]) -> None:
    """Read the staged files back (whole, every voxel) before they are committed as a version."""
    for suffix, mask in [(FILES[key], mask) for key, mask in expected.items()] + list(extras.items()):
        file = staging / f"{stem}{suffix}"
        check_whole_image_file(file, "staged label")
        written = sitk.GetArrayFromImage(sitk.ReadImage(str(file)))
        if written.shape != mask.shape or not np.array_equal(written, mask.astype(written.dtype)):
            raise SCIsegError(f"{file} does not read back as written (disk full or failing?); nothing was committed.")
        json.loads((staging / f"{stem}{suffix.removesuffix('.nii.gz')}.json").read_text())


def _remove_stale_temporaries(store: Path, anat_folder: Path) -> None:
    """Under the lock: delete what killed exports left (staging folders of dead processes, copies never renamed)."""
    for folder in store.glob(".staging-*"):
        pid = folder.name.split("-")[1]
        if pid.isdigit() and not _process_alive(int(pid)):
            for file in folder.iterdir():
                os.chmod(file, 0o644)
            shutil.rmtree(folder, ignore_errors=True)
    if anat_folder.is_dir():
        for file in anat_folder.iterdir():
            if _OUR_TEMPORARY.match(file.name):
                file.unlink(missing_ok=True)


def _republish_interrupted(stores: Path, anat_folder: Path) -> None:
    """Under the lock: publish again the latest copies of every scan whose publication was interrupted."""
    for marker in anat_folder.glob(f".*{PUBLISHING}") if anat_folder.is_dir() else ():
        stem = marker.name[1: -len(PUBLISHING)]
        numbers = version_numbers(stores / stem) if (stores / stem).is_dir() else []
        if numbers:
            _publish_latest(stores / stem / f"v{numbers[-1]:03d}", anat_folder, stem)
        else:
            marker.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # no permission to signal it (or not supported): assume it is alive
        return True
    return True


def _publish_latest(version_folder: Path, anat_folder: Path, stem: str) -> dict[str, Path]:
    """Copy a version's files to their BIDS names, each replaced atomically, the set framed by the marker."""
    anat_folder.mkdir(parents=True, exist_ok=True)
    marker = publishing_marker(anat_folder, stem)
    marker.write_text(json.dumps({"version": version_folder.name}))  # first: the set may mix versions from now
    published = {}
    for file in sorted(version_folder.iterdir()):
        handle, temporary = tempfile.mkstemp(prefix=f".{file.name}.", dir=anat_folder)
        os.close(handle)
        shutil.copyfile(file, temporary)
        publish_file(temporary, anat_folder / file.name)
        published[file.name] = anat_folder / file.name
    for suffix in EXTRA_SUFFIXES:  # a further mask of an earlier version that this one has not: not the latest any more
        for name in (f"{stem}{suffix}", f"{stem}{suffix.removesuffix('.nii.gz')}.json"):
            if not (version_folder / name).exists():
                (anat_folder / name).unlink(missing_ok=True)
    marker.unlink()  # last: the set is whole again
    return published


def masks_from_seg_nrrd(path: Path) -> tuple[sitk.Image, sitk.Image]:
    """(cord, lesion) masks from a Slicer ``.seg.nrrd`` (segments ``spinal_cord``/``lesion`` by id or name)."""
    import slicerio

    try:
        segmentation = slicerio.read_segmentation(str(path))
        segmentation["segments"], segmentation["ijkToLPS"]  # noqa: B018 - a .seg.nrrd has both
    except Exception as error:  # noqa: BLE001 - pynrrd/slicerio raise many kinds on foreign files
        raise InputError(f"{path} is not a Slicer segmentation (.seg.nrrd) ({type(error).__name__}: {str(error)[:120]}); "
                         "save the segmentation from Slicer or give --labels.") from None
    ijk_to_lps = np.array(segmentation["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    direction = ijk_to_lps[:3, :3] / spacing

    def find(identifier: str, name: str) -> dict:
        for segment in segmentation["segments"]:
            if segment.get("id") == identifier or segment.get("name", "").lower() == name.lower():
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
