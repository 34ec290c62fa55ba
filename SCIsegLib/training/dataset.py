"""nnU-Net v2 raw datasets from BIDS datasets of corrected labels (``sciseg dataset build``).

Each case is a source image with the latest version of its exported correction
(:mod:`SCIsegLib.training.export`). Cases are split train/test at the patient level (every session
and acquisition of a subject on the same side), seeded, and stratified by site when the dataset's
``participants.tsv`` has a ``site`` (or ``institution``) column. A mapping file
``sciseg_sources.json`` records where every case came from; building again only rewrites cases
whose labels changed and adds new ones (a subject keeps the split it was given first).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import SimpleITK as sitk

from ..hashing import file_sha256
from ..errors import InputError
from ..safe_paths import contained
from ..volume import grid_difference, image_stem, publish_file
from .export import FILES, VERSIONS, labels_folder, version_numbers
from .nnunet_raw import dataset_folder, write_case, write_dataset_json

MAPPING_FILE = "sciseg_sources.json"


@dataclass
class Case:
    """One image with its latest corrected label map."""

    case_id: str
    subject: str
    session: str | None
    site: str
    source: str
    labels: str
    version: int
    labels_sha256: str
    split: str = ""




def _sites(bids_root: Path) -> dict[str, str]:
    table = bids_root / "participants.tsv"
    if not table.is_file():
        return {}
    with open(table, newline="") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    column = next((c for c in ("site", "institution", "institution_id") if rows and c in rows[0]), None)
    if column is None:
        return {}
    return {row["participant_id"].removeprefix("sub-"): row[column] for row in rows}


def find_cases(bids_root: Path, tag: str) -> list[Case]:
    """Every scan of ``bids_root`` that has an exported correction, with its latest version."""
    bids_root = Path(bids_root)
    store = labels_folder(bids_root) / VERSIONS
    sites = _sites(bids_root)
    cases = []
    for scan_folder in sorted(p for p in store.glob("sub-*/**/*") if p.is_dir() and version_numbers(p)):
        version = version_numbers(scan_folder)[-1]
        stem = scan_folder.name
        anat = scan_folder.parent.relative_to(store)
        labels = scan_folder / f"v{version:03d}" / f"{stem}{FILES['labels']}"
        source = next((p for p in sorted((bids_root / anat).glob(f"{stem}.nii*")) if image_stem(p) == stem), None)
        if source is None:
            sidecar = json.loads(labels.with_name(f"{stem}_dseg.json").read_text())
            source = bids_root / sidecar["SourceImage"]["Path"]  # relative to the BIDS root (absolute: older exports)
        if not source.is_file():
            raise InputError(f"the image of {labels} is missing ({source}); restore it or remove its labels.")
        parts = anat.parts
        subject = parts[0].removeprefix("sub-")
        session = parts[1].removeprefix("ses-") if len(parts) > 2 and parts[1].startswith("ses-") else None
        case_id = re.sub(r"[^A-Za-z0-9_-]", "-", f"{tag}_{stem}")
        cases.append(
            Case(case_id=case_id, subject=f"{tag}:{subject}", session=session, site=sites.get(subject, tag),
                 source=str(source), labels=str(labels), version=version, labels_sha256=file_sha256(labels))
        )
    return cases


def assign_splits(cases: list[Case], previous: dict[str, str], test_fraction: float, seed: int) -> None:
    """Give every case the split of its subject: kept from ``previous``, else seeded and stratified by site."""
    subject_split = dict(previous)
    by_site: dict[str, list[str]] = {}
    for case in cases:
        by_site.setdefault(case.site, [])
        if case.subject not in by_site[case.site]:
            by_site[case.site].append(case.subject)
    for _site, subjects in sorted(by_site.items()):
        known = [s for s in subjects if s in subject_split]
        test_count = sum(subject_split[s] == "test" for s in known)
        fresh = sorted((s for s in subjects if s not in subject_split), key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
        for subject in fresh:
            wanted = round(test_fraction * (len(known) + 1))
            subject_split[subject] = "test" if test_count < wanted else "train"
            test_count += subject_split[subject] == "test"
            known.append(subject)
    for case in cases:
        case.split = subject_split[case.subject]


def build_dataset(
    bids_roots: list[Path],
    raw_root: Path,
    dataset_id: int,
    name: str,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Path, list[Case], list[str]]:
    """Build or update ``raw_root/DatasetXXX_Name``; returns (folder, cases, ids of the cases (re)written).

    The id (1-999), the name (letters, digits, '_', '-') and the test fraction are checked before anything
    is written, and the folder they make must lie inside ``raw_root``.
    """
    if not 1 <= dataset_id <= 999:
        raise InputError(f"--id must be an nnU-Net dataset id from 1 to 999, got {dataset_id}.")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]*$", name or ""):
        raise InputError(f"the dataset name {name!r} cannot be used; use letters, digits, '_' and '-' (e.g. SCIsegFinetune).")
    if not 0 <= test_fraction < 1:
        raise InputError(f"--test-fraction must be at least 0 and below 1, got {test_fraction}.")
    if Path(raw_root).exists() and not Path(raw_root).is_dir():
        raise InputError(f"-o {raw_root} is a file; give the nnU-Net raw folder.")
    folder = contained(dataset_folder(raw_root, dataset_id, name), raw_root, "dataset folder")
    mapping_file = folder / MAPPING_FILE
    old = {c["case_id"]: Case(**c) for c in json.loads(mapping_file.read_text())["cases"]} if mapping_file.is_file() else {}
    cases = []
    for index, root in enumerate(bids_roots):
        tag = re.sub(r"[^A-Za-z0-9]", "", Path(root).resolve().name) or f"ds{index}"
        cases += find_cases(Path(root), tag)
    if not cases:
        raise InputError(f"no exported corrections found in {', '.join(map(str, bids_roots))}; export some first (sciseg export).")
    assign_splits(cases, {c.subject: c.split for c in old.values()}, test_fraction, seed)
    created = [p for p in (Path(raw_root), folder) if not p.exists()]  # removed again if this build is refused
    folder.mkdir(parents=True, exist_ok=True)
    try:
        written = _write_cases(folder, cases, old)
    except BaseException:
        for made in reversed(created):
            if made == folder:
                shutil.rmtree(made, ignore_errors=True)
            else:
                _remove_if_empty(made)
        raise
    write_dataset_json(folder, description=f"SCIseg fine-tuning data from {', '.join(str(r) for r in bids_roots)}")
    handle, temporary = tempfile.mkstemp(prefix=f".{MAPPING_FILE}.", dir=folder)
    with os.fdopen(handle, "w") as stream:
        json.dump({"test_fraction": test_fraction, "seed": seed, "cases": [asdict(c) for c in cases]}, stream, indent=2)
    publish_file(temporary, mapping_file)
    return folder, cases, written


def _write_cases(folder: Path, cases: list[Case], old: dict[str, Case]) -> list[str]:
    """Write every new or changed case into ``folder``; returns the ids written."""
    written = []
    for case in cases:
        before = old.get(case.case_id)
        if before and before.labels_sha256 == case.labels_sha256 and before.split == case.split and _case_files_exist(folder, case):
            continue
        image = sitk.ReadImage(case.source)
        labels = sitk.ReadImage(case.labels)
        difference = grid_difference(labels, image)
        if difference:
            raise InputError(f"{case.labels} does not lie on the grid of its image {case.source} ({difference}); "
                             "re-export it from that image.")
        for other in ("imagesTr", "imagesTs"):
            (folder / other / f"{case.case_id}_0000.nii.gz").unlink(missing_ok=True)
        for other in ("labelsTr", "labelsTs"):
            (folder / other / f"{case.case_id}.nii.gz").unlink(missing_ok=True)
        write_case(folder, case.case_id, image, labels, training=case.split == "train")
        written.append(case.case_id)
    return written


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()


def _case_files_exist(folder: Path, case: Case) -> bool:
    images, labels = ("imagesTr", "labelsTr") if case.split == "train" else ("imagesTs", "labelsTs")
    return (folder / images / f"{case.case_id}_0000.nii.gz").is_file() and (folder / labels / f"{case.case_id}.nii.gz").is_file()
