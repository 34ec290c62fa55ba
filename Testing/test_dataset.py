"""nnU-Net raw datasets from exported corrections: patient-level seeded splits by site, incremental updates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk

from SCIsegLib.errors import InputError
from SCIsegLib.phantom import AXIAL, SAGITTAL, make_phantom
from SCIsegLib.training import export
from SCIsegLib.training.dataset import build_dataset
from SCIsegLib.volume import orientation_of, write_image_atomic

SITES = {"01": "A", "02": "A", "03": "A", "04": "A", "05": "B", "06": "B", "07": "B", "08": "B", "09": "B", "10": "B"}


def make_bids(root: Path, subjects: dict[str, str], sessions=("1", "2")) -> None:
    lines = ["participant_id\tsite"] + [f"sub-{s}\t{site}" for s, site in subjects.items()]
    (root / "participants.tsv").parent.mkdir(parents=True, exist_ok=True)
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    for index, subject in enumerate(subjects):
        for session in sessions:
            add_scan(root, subject, session, seed=index * 10 + int(session))


def add_scan(root: Path, subject: str, session: str, seed: int) -> Path:
    case = make_phantom(seed=seed, acquisition=SAGITTAL if seed % 2 else AXIAL, lesions=1, noise=0.02)
    source = write_image_atomic(case.image, root / f"sub-{subject}" / f"ses-{session}" / "anat" / f"sub-{subject}_ses-{session}_T2w.nii.gz")
    export.export_correction(root=root, source=source, cord=case.cord, lesion=case.lesion, rater="R")
    return source


def test_build_splits_by_patient_and_site_in_rpi(tmp_path: Path) -> None:
    bids = tmp_path / "site_study"
    make_bids(bids, SITES)
    folder, cases, written = build_dataset([bids], tmp_path / "raw", 501, "SCIsegFT", test_fraction=0.25, seed=3)
    assert folder.name == "Dataset501_SCIsegFT" and len(cases) == 20 and len(written) == 20
    by_subject: dict[str, set] = {}
    for case in cases:
        by_subject.setdefault(case.subject, set()).add(case.split)
    assert all(len(splits) == 1 for splits in by_subject.values()), "all sessions of a subject on one side"
    test_subjects = {s for s, splits in by_subject.items() if "test" in splits}
    assert len([s for s in test_subjects if SITES[s.split(":")[1]] == "A"]) == 1  # round(0.25 * 4)
    assert len([s for s in test_subjects if SITES[s.split(":")[1]] == "B"]) == 2  # round(0.25 * 6)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "sc": [1, 2], "lesion": 2}
    assert dataset_json["regions_class_order"] == [1, 2] and dataset_json["image_orientation"] == "RPI"
    assert dataset_json["numTraining"] == 14 == len(list((folder / "labelsTr").iterdir()))
    assert len(list((folder / "imagesTs").iterdir())) == 6
    image = sitk.ReadImage(str(next((folder / "imagesTr").iterdir())))
    assert orientation_of(image) == "LAS"  # SCT "RPI"
    mapping = json.loads((folder / "sciseg_sources.json").read_text())
    assert {c["case_id"] for c in mapping["cases"]} == {c.case_id for c in cases}
    # Same seed, fresh folder: the same splits.
    _, again, _ = build_dataset([bids], tmp_path / "raw2", 501, "SCIsegFT", test_fraction=0.25, seed=3)
    assert {c.case_id: c.split for c in again} == {c.case_id: c.split for c in cases}


def test_incremental_update_rewrites_only_what_changed(tmp_path: Path) -> None:
    bids = tmp_path / "study"
    make_bids(bids, {"01": "A", "02": "A", "03": "A"}, sessions=("1",))
    folder, cases, _ = build_dataset([bids], tmp_path / "raw", 502, "Inc", seed=1)
    splits = {c.subject: c.split for c in cases}
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.rglob("*.nii.gz")}
    # A new correction of one scan, and a new subject.
    source = bids / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_T2w.nii.gz"
    image = sitk.ReadImage(str(source))
    cord = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    cord.CopyInformation(image)
    cord[0, 0, 0] = 1
    export.export_correction(root=bids, source=source, cord=cord, lesion=cord, rater="R2")
    add_scan(bids, "04", "1", seed=5)
    _, updated, written = build_dataset([bids], tmp_path / "raw", 502, "Inc", seed=1)
    assert sorted(written) == sorted(c.case_id for c in updated if c.subject.endswith((":02", ":04")))
    assert {c.subject: c.split for c in updated if not c.subject.endswith(":04")} == splits
    unchanged = [p for p in folder.rglob("*.nii.gz") if "sub-01" in p.name]
    assert all(p.stat().st_mtime_ns == stamp[p.name] for p in unchanged)
    version = next(c for c in updated if c.subject.endswith(":02")).version
    assert version == 2


def test_labels_off_the_image_grid_are_refused(tmp_path: Path) -> None:
    bids = tmp_path / "study"
    make_bids(bids, {"01": "A"}, sessions=("1",))
    latest = export.latest_version(bids, bids / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T2w.nii.gz")
    broken = latest.parent / "v002"
    broken.mkdir()
    wrong = make_phantom(seed=9, acquisition=SAGITTAL).labels
    wrong.SetOrigin((5.0, 5.0, 5.0))
    sitk.WriteImage(wrong, str(broken / "sub-01_ses-1_T2w_dseg.nii.gz"))
    with pytest.raises(InputError, match="does not lie on the grid"):
        build_dataset([bids], tmp_path / "raw", 503, "Bad")


def test_no_corrections_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no exported corrections"):
        build_dataset([tmp_path / "empty"], tmp_path / "raw", 504, "None")
