"""How outputs name their sources, and the ``dataset_description.json`` of every derivatives folder written.

* A source is named by its path relative to its BIDS dataset's root (the nearest folder above it holding a
  ``dataset_description.json`` that is not itself a derivative ``derivatives/<name>``), plus its sha256; outside a
  BIDS dataset by its file name alone. Never an absolute path: it carries user names and breaks when the data move
  (:func:`source_path`, :func:`source_record`).
* An output folder under ``.../derivatives/<name>/...`` gets ``derivatives/<name>/dataset_description.json``
  (``DatasetType: derivative``, ``GeneratedBy: SCIseg``) when it has none (:func:`describe_derivative`); an existing
  description is left as it is.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from . import __version__
from .hashing import file_sha256

DESCRIPTION = "dataset_description.json"
DERIVATIVES = "derivatives"


def bids_root_of(path: Path) -> Path | None:
    """The BIDS dataset ``path`` lies in (its root folder, resolved), or None outside any."""
    for parent in Path(path).resolve().parents:
        if (parent / DESCRIPTION).is_file() and parent.parent.name != DERIVATIVES:
            return parent
    return None


def source_path(path: Path) -> str:
    """``path`` as outputs name it: relative to its BIDS root (``sub-01/anat/sub-01_T2w.nii.gz``; a mask in a
    derivative: ``derivatives/sciseg/sub-01/...``), else its file name."""
    resolved = Path(path).resolve()
    root = bids_root_of(resolved)
    return resolved.relative_to(root).as_posix() if root is not None else resolved.name


def source_record(path: Path, sha256: str | None = None) -> dict:
    """``{"Path": <relative to the BIDS root, else the name>, "Sha256": ...}`` (``sha256``: when already known)."""
    return {"Path": source_path(path), "Sha256": sha256 or file_sha256(path)}


def command_path(path: Path | str, folder: Path) -> str:
    """A path as written in a recorded command run from ``folder``: relative to it (never absolute)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(folder).resolve())).as_posix()


def recorded_command(arguments: list[str], folder: Path, program: str = "sciseg") -> str:
    """The command line as outputs record it: ``program`` and ``arguments``, each absolute path among them written
    relative to ``folder`` (the output folder, where the command is read), so no user name or mount point is kept."""
    words = [command_path(word, folder) if Path(word).is_absolute() else word for word in arguments]
    return shlex.join([program, *words])


def derivative_folder_of(folder: Path) -> Path | None:
    """The derivative dataset ``folder`` lies in (or is): the nearest folder above it that has a
    ``dataset_description.json``, else ``.../derivatives/<name>`` (or ``.../derivatives`` itself when that one is
    described); None when ``folder`` is not under a ``derivatives`` folder."""
    folder = Path(folder).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / DESCRIPTION).is_file():
            return candidate
        if candidate.parent.name == DERIVATIVES:
            return candidate.parent if (candidate.parent / DESCRIPTION).is_file() else candidate
    return None


def describe_derivative(folder: Path, description: str) -> Path | None:
    """Give the derivative folder holding ``folder`` its ``dataset_description.json`` when it has none (atomic);
    returns its path, None when ``folder`` is not in a ``derivatives/<name>`` folder."""
    from .volume import write_text_atomic  # not analysis_files: it imports pandas, which segment does not need

    derivative = derivative_folder_of(folder)
    if derivative is None:
        return None
    path = derivative / DESCRIPTION
    if not path.is_file():
        derivative.mkdir(parents=True, exist_ok=True)
        content = {"Name": f"SCIseg: {description}", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                   "GeneratedBy": [{"Name": "SCIseg", "Version": __version__, "Description": description}]}
        write_text_atomic(json.dumps(content, indent=2) + "\n", path)
    return path

