"""Which scans a cohort run takes, and where each scan's outputs go.

A scan is found in a BIDS dataset (``sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]``) or given as a file. Its
outputs go to the BIDS derivatives folder under the same relative folder (``sub-01/anat/``); a file
outside BIDS naming goes to ``<stem>/``. Nothing here reads voxels: the driver never holds images.
"""

from __future__ import annotations

import csv
import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..volume import image_stem

_ENTITY = re.compile(r"(?:^|_)(sub|ses)-([A-Za-z0-9]+)")
IMAGE_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Scan:
    """One input scan.

    Attributes:
        path: the image file (absolute).
        stem: file name without extension (``sub-01_T2w``); names every output.
        subject: BIDS participant id with its prefix (``sub-01``), or the stem outside BIDS.
        session: ``ses-xx`` or "" when there is none.
        relative_folder: output folder relative to the derivatives root (``sub-01/anat``).
    """

    path: Path
    stem: str
    subject: str
    session: str
    relative_folder: str


def _scan_from_path(path: Path, relative_folder: str | None = None) -> Scan:
    path = path.absolute()  # not resolve(): a symlinked scan (DataLad, git-annex) keeps its BIDS name
    stem = image_stem(path)
    entities = dict(_ENTITY.findall(path.name))
    subject = f"sub-{entities['sub']}" if "sub" in entities else stem
    session = f"ses-{entities['ses']}" if "ses" in entities else ""
    if relative_folder is None:
        relative_folder = "/".join(p for p in (subject, session, "anat") if p) if "sub" in entities else stem
    return Scan(path=path, stem=stem, subject=subject, session=session, relative_folder=relative_folder)


def find_bids_scans(
    root: Path, suffix: str = "T2w", include: str | None = None, participant_labels: list[str] | None = None
) -> list[Scan]:
    """Scans ``sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]`` of a BIDS dataset, sorted by path.

    ``include`` is a shell pattern on the subject folder name (``sub-0*``); ``participant_labels`` keeps only
    these participants (``01`` or ``sub-01``, as BIDS Apps' ``--participant_label``). Raises InputError when
    the root is not a folder, holds no matching scan, or a label has no matching scan.
    """
    wanted = participant_folders(participant_labels)
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; give the root of a BIDS dataset with --bids.")
    if not re.fullmatch(r"[A-Za-z0-9-]+", suffix):
        raise InputError(f"--suffix '{suffix}' must be a BIDS suffix such as T2w (letters, digits, '-').")
    scans = []
    for subject_folder in sorted(root.glob("sub-*")):
        if (not subject_folder.is_dir() or (include and not fnmatch.fnmatch(subject_folder.name, include))
                or (wanted is not None and subject_folder.name not in wanted)):
            continue
        for anat in sorted([*subject_folder.glob("anat"), *subject_folder.glob("ses-*/anat")]):
            for file in sorted(anat.iterdir()):
                name = file.name
                if name.startswith(".") or not name.endswith(tuple(f"_{suffix}{s}" for s in IMAGE_SUFFIXES)):
                    continue
                scans.append(_scan_from_path(file, anat.relative_to(root).as_posix()))
    if wanted is not None:
        missing = sorted(wanted - {scan.subject for scan in scans})
        if missing:
            raise InputError(
                f"{root} holds no scan sub-*/[ses-*/]anat/*_{suffix}.nii[.gz] for participant(s) {', '.join(missing)}; "
                "check --participant-label against the sub-* folders."
            )
    if not scans:
        pattern = f"sub-*/[ses-*/]anat/*_{suffix}.nii[.gz]" + (f" with subjects matching '{include}'" if include else "")
        raise InputError(f"{root} holds no scan {pattern}; check --bids, --suffix and --include.")
    return scans


def participant_folders(labels: list[str] | None) -> set[str] | None:
    """``sub-<label>`` folder names of participant labels given with or without ``sub-``; None keeps everyone.

    Raises InputError for a label that is not a BIDS label (letters and digits)."""
    if labels is None:
        return None
    folders = set()
    for label in labels:
        bare = label.removeprefix("sub-")
        if not re.fullmatch(r"[A-Za-z0-9]+", bare):
            raise InputError(f"participant label '{label}' is not a BIDS label (letters and digits, optionally after 'sub-').")
        folders.add(f"sub-{bare}")
    return folders


def scans_from_files(files: list[Path]) -> list[Scan]:
    """Scans given one by one; refuses missing files and two inputs with the same stem (same outputs)."""
    scans = []
    for file in files:
        if not Path(file).is_file():
            raise InputError(f"{file}: no such file; check the path.")
        scans.append(_scan_from_path(Path(file)))
    seen: dict[str, Path] = {}
    for scan in scans:
        key = f"{scan.relative_folder}/{scan.stem}"
        if key in seen:
            raise InputError(f"{seen[key]} and {scan.path} share the name '{scan.stem}'; their outputs would overwrite each other.")
        seen[key] = scan.path
    return scans


def check_output_folder(output: Path, scans: list[Scan], bids_root: Path | None) -> None:
    """Refuse an output folder inside a scan's ``sub-*`` folder (outputs would be found as inputs next time)."""
    output = Path(output).resolve()
    roots = {scan.path.parent for scan in scans}
    if bids_root is not None:
        roots |= {p.resolve() for p in Path(bids_root).glob("sub-*") if p.is_dir()}
    for folder in sorted(roots):
        subject_folder = next((p for p in [folder, *folder.parents] if p.name.startswith("sub-")), None)
        if subject_folder is not None and output.is_relative_to(subject_folder):
            raise InputError(
                f"the output folder {output} lies inside the input folder {subject_folder}; "
                "write derivatives outside the sub-* folders (e.g. BIDS_ROOT/derivatives/sciseg)."
            )


def read_participants(bids_root: Path | None) -> list[dict[str, str]]:
    """Rows of ``participants.tsv`` (empty when absent); every row keeps its ``participant_id``."""
    if bids_root is None:
        return []
    path = Path(bids_root) / "participants.tsv"
    if not path.is_file():
        return []
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    if rows and "participant_id" not in rows[0]:
        raise InputError(f"{path} has no participant_id column; fix the file or remove it.")
    return rows
