"""One scan's output set: its file names, its completion marker, the resume check, publishing it whole.

Every file of a scan is written into a private staging folder ``DERIV/.sciseg-staging/<id>/`` first. When all
are complete, the scan's old marker (if any) is removed, each staged file is renamed into place (``os.replace``:
atomic, same file system), and the marker ``<stem>_sciseg-run.json`` is written last, atomically. A scan counts
as done only when its marker exists, names the same source sha256, model sha256 and settings, and every file it
lists exists. A kill at any moment therefore leaves either the previous complete set with its marker, or files
without a marker (redone by the next run); never a half-written file under a final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from ..volume import publish_file
from .discovery import Scan

PIPELINE = "sciseg-run/1"
STAGING = ".sciseg-staging"
MARKER_SUFFIX = "_sciseg-run.json"
RUN_LOCK = ".sciseg-run.lock"
#: What the BIDS validator should not read as data in a run's derivatives folder.
BIDS_IGNORE = ("qc/", "logs/", "run_summary.*", "cohort_subjects.*", "cohort_lesions.*")


def write_dataset_description(deriv: Path, source_dataset: Path | None) -> Path:
    """``DERIV/dataset_description.json`` of a BIDS derivative (``GeneratedBy`` SCIseg with its version; the source
    dataset when the run took a BIDS dataset), and a ``.bidsignore`` for the run's tables and QC report."""
    from .. import __version__
    from ..analysis_files import write_text_atomic
    from ..provenance import command_path

    deriv = Path(deriv)
    description = {
        "Name": "SCIseg: spinal cord and lesion segmentation and morphometrics",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "SCIseg", "Version": __version__,
                         "Description": "sciseg run: nnU-Net v2 segmentation (or rater corrections), SCT 7.3 morphometrics, QC"}],
    }
    if source_dataset is not None:
        description["SourceDatasets"] = [{"URL": command_path(source_dataset, deriv)}]  # relative: no user names
    path = write_text_atomic(json.dumps(description, indent=2) + "\n", deriv / "dataset_description.json")
    write_text_atomic("\n".join(BIDS_IGNORE) + "\n", deriv / ".bidsignore")
    return path


def tidy_after_run(deriv: Path) -> None:
    """Remove the empty staging root left by a finished run (call while holding the run lock, before releasing it)."""
    root = Path(deriv) / STAGING
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


def marker_path(deriv: Path, scan: Scan) -> Path:
    """``DERIV/<relative folder>/<stem>_sciseg-run.json``: the scan's completion marker."""
    return Path(deriv) / scan.relative_folder / f"{scan.stem}{MARKER_SUFFIX}"


def read_marker(deriv: Path, scan: Scan) -> dict | None:
    """The marker's content, or None when it is missing or unreadable."""
    path = marker_path(deriv, scan)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def completed_marker(deriv: Path, scan: Scan, source_sha256: str, model_sha256: str, settings: dict,
                     labels: dict | None = None) -> dict | None:
    """The marker when the scan is done with this source, model, settings and measured labels (the model's masks or
    one rater correction, :mod:`SCIsegLib.cohort.corrections`) and all its files exist; else None."""
    marker = read_marker(deriv, scan)
    if marker is None:
        return None
    same = (
        marker.get("Pipeline") == PIPELINE
        and marker.get("SourceSha256") == source_sha256
        and marker.get("ModelSha256") == model_sha256
        and marker.get("Settings") == settings
        and marker.get("Labels", {"From": "model"}) == (labels or {"From": "model"})
    )
    if not same:
        return None
    if not all((Path(deriv) / relative).is_file() for relative in marker.get("Files", [])):
        return None
    return marker


def new_staging_folder(deriv: Path) -> Path:
    """A fresh private folder under ``DERIV/.sciseg-staging`` (same file system as the final names)."""
    folder = Path(deriv) / STAGING / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder


def publish_output_set(staging: Path, deriv: Path, scan: Scan, marker: dict) -> dict:
    """Move every staged file to its final name, then write the marker; returns the marker written.

    ``marker["Files"]`` is set to the published files, relative to ``deriv`` (POSIX separators).
    """
    deriv = Path(deriv)
    files = sorted(p for p in staging.rglob("*") if p.is_file() and ".part" not in p.name)
    marker = {**marker, "Pipeline": PIPELINE, "Files": [p.relative_to(staging).as_posix() for p in files]}
    final_marker = marker_path(deriv, scan)
    final_marker.unlink(missing_ok=True)  # from now on the old set no longer counts as done
    for file in files:
        target = deriv / file.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(file, target)
    final_marker.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{final_marker.name}.", suffix=".part", dir=final_marker.parent)
    with os.fdopen(handle, "w") as stream:
        json.dump(marker, stream, indent=2, default=str)
    publish_file(temporary, final_marker)
    shutil.rmtree(staging, ignore_errors=True)
    return marker


def remove_stale_staging(deriv: Path) -> int:
    """Delete staging folders left by killed runs (call only while holding the run lock); returns how many."""
    root = Path(deriv) / STAGING
    if not root.is_dir():
        return 0
    stale = [p for p in root.iterdir() if p.is_dir()]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return len(stale)
