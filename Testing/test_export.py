"""Versioned export of corrections into BIDS derivatives: never overwrites, atomic, safe under concurrency."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SCIsegLib.errors import InputError
from SCIsegLib.phantom import SAGITTAL, make_phantom
from SCIsegLib.training import export
from SCIsegLib.volume import reorient, write_image_atomic


@pytest.fixture()
def scan(tmp_path: Path):
    case = make_phantom(seed=31, acquisition=SAGITTAL, lesions=1)
    source = write_image_atomic(case.image, tmp_path / "bids" / "sub-07" / "ses-02" / "anat" / "sub-07_ses-02_T2w.nii.gz")
    return tmp_path / "bids", source, case


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_first_export_writes_bids_files_with_provenance(scan) -> None:
    root, source, case = scan
    predicted_lesion = sitk.Image(case.lesion)
    predicted_lesion[5, 5, 5] = 1 - predicted_lesion[5, 5, 5]  # the rater will have changed one voxel
    result = export.export_correction(
        root=root, source=source, cord=case.cord, lesion=case.lesion, rater="A. Rater", model="sciseg-demo",
        predicted_cord=case.cord, predicted_lesion=predicted_lesion,
    )
    anat = root / "derivatives" / "labels" / "sub-07" / "ses-02" / "anat"
    assert result.version == 1
    for name in ("sub-07_ses-02_T2w_label-SC_seg.nii.gz", "sub-07_ses-02_T2w_label-lesion_seg.nii.gz", "sub-07_ses-02_T2w_dseg.nii.gz"):
        written = sitk.ReadImage(str(anat / name))
        assert written.GetSize() == case.image.GetSize() and written.GetOrigin() == pytest.approx(case.image.GetOrigin())
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(anat / "sub-07_ses-02_T2w_dseg.nii.gz")))
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(case.labels))
    lesion_sidecar = json.loads((anat / "sub-07_ses-02_T2w_label-lesion_seg.json").read_text())
    assert lesion_sidecar["Rater"] == "A. Rater" and lesion_sidecar["Model"] == "sciseg-demo"
    assert lesion_sidecar["SourceImage"]["Sha256"] == digest(source)
    assert lesion_sidecar["VoxelsAdded"] + lesion_sidecar["VoxelsRemoved"] == 1 and lesion_sidecar["Corrected"] is True
    assert lesion_sidecar["Version"] == 1 and lesion_sidecar["PreviousVersions"] == []
    cord_sidecar = json.loads((anat / "sub-07_ses-02_T2w_label-SC_seg.json").read_text())
    assert cord_sidecar["Corrected"] is False and cord_sidecar["DicePredictionVsCorrection"] == 1.0
    description = json.loads((root / "derivatives" / "labels" / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "SCIseg"


def test_a_new_correction_is_a_new_version_and_the_old_one_stays(scan) -> None:
    root, source, case = scan
    first = export.export_correction(root=root, source=source, cord=case.cord, lesion=case.lesion, rater="A")
    kept = {p.name: digest(p) for p in first.version_folder.iterdir()}
    smaller = sitk.BinaryErode(case.lesion, [1, 1, 1])
    second = export.export_correction(root=root, source=source, cord=case.cord, lesion=smaller, rater="B")
    assert second.version == 2 and second.version_folder.name == "v002"
    assert {p.name: digest(p) for p in first.version_folder.iterdir()} == kept
    assert export.latest_version(root, source) == second.version_folder
    latest = sitk.ReadImage(str(second.files["sub-07_ses-02_T2w_label-lesion_seg.nii.gz"]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(latest), sitk.GetArrayFromImage(smaller))
    sidecar = json.loads((second.version_folder / "sub-07_ses-02_T2w_dseg.json").read_text())
    assert sidecar["PreviousVersions"] == [".sciseg_versions/sub-07/ses-02/anat/sub-07_ses-02_T2w/v001"]
    assert {oct(p.stat().st_mode)[-3:] for p in first.version_folder.iterdir()} == {"444"}  # versions are read-only


def _export_in_child(arguments) -> int:
    root, source, rater = arguments
    case = make_phantom(seed=31, acquisition=SAGITTAL, lesions=1)
    return export.export_correction(root=Path(root), source=Path(source), cord=case.cord, lesion=case.lesion, rater=rater).version


def test_raters_exporting_at_the_same_time_lose_nothing(scan) -> None:
    root, source, _ = scan
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        versions = pool.map(_export_in_child, [(str(root), str(source), f"rater {i}") for i in range(6)])
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    store = export.latest_version(root, source).parent
    assert export.version_numbers(store) == [1, 2, 3, 4, 5, 6]
    raters = {json.loads((store / f"v{n:03d}" / "sub-07_ses-02_T2w_dseg.json").read_text())["Rater"] for n in range(1, 7)}
    assert raters == {f"rater {i}" for i in range(6)}


def test_a_crash_before_the_commit_leaves_the_dataset_as_it_was(scan, monkeypatch: pytest.MonkeyPatch) -> None:
    root, source, case = scan
    first = export.export_correction(root=root, source=source, cord=case.cord, lesion=case.lesion, rater="A")
    labels_root = root / "derivatives" / "labels"
    before = {str(p.relative_to(labels_root)): digest(p) for p in labels_root.rglob("*") if p.is_file() and p.name != ".sciseg.lock"}

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(export.os, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        export.export_correction(root=root, source=source, cord=case.cord, lesion=sitk.BinaryErode(case.lesion, [1, 1, 1]), rater="B")
    after = {str(p.relative_to(labels_root)): digest(p) for p in labels_root.rglob("*") if p.is_file() and p.name != ".sciseg.lock"}
    assert after == before
    assert export.latest_version(root, source) == first.version_folder


def test_bad_inputs(scan, tmp_path: Path) -> None:
    root, source, case = scan
    other = make_phantom(seed=1)
    with pytest.raises(InputError, match="does not lie on the grid"):
        export.export_correction(root=root, source=source, cord=other.cord, lesion=other.lesion, rater="A")
    with pytest.raises(InputError, match="rater"):
        export.export_correction(root=root, source=source, cord=case.cord, lesion=case.lesion, rater=" ")
    plain = write_image_atomic(case.image, tmp_path / "scan.nii.gz")
    with pytest.raises(InputError, match="--subject"):
        export.export_correction(root=root, source=plain, cord=case.cord, lesion=case.lesion, rater="A")
    result = export.export_correction(root=root, source=plain, cord=case.cord, lesion=case.lesion, rater="A", subject="x1")
    assert result.files["scan_dseg.nii.gz"].parent == root / "derivatives" / "labels" / "sub-x1" / "anat"


def test_masks_on_a_reindexed_grid_are_accepted_exactly(scan) -> None:
    root, source, case = scan
    flipped_cord, flipped_lesion = reorient(case.cord, "RAS"), reorient(case.lesion, "RAS")
    result = export.export_correction(root=root, source=source, cord=flipped_cord, lesion=flipped_lesion, rater="A")
    labels = sitk.ReadImage(str(result.files["sub-07_ses-02_T2w_dseg.nii.gz"]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(case.labels))


def test_slicer_seg_nrrd_is_read_with_slicerio(scan, tmp_path: Path) -> None:
    import slicerio

    _, _, case = scan
    lps = np.eye(4)
    lps[:3, :3] = np.array(case.image.GetDirection()).reshape(3, 3) * np.array(case.image.GetSpacing())
    lps[:3, 3] = case.image.GetOrigin()
    labels_ijk = sitk.GetArrayFromImage(case.labels).transpose(2, 1, 0)
    segmentation = slicerio.create_segmentation(labels_ijk.shape, lps)
    slicerio.add_segment(segmentation, labels_ijk == 1, {"id": "spinal_cord", "name": "Spinal cord"})
    slicerio.add_segment(segmentation, labels_ijk == 2, {"id": "lesion", "name": "Lesion"})
    slicerio.write_segmentation(str(tmp_path / "case.seg.nrrd"), segmentation)
    cord, lesion = export.masks_from_seg_nrrd(tmp_path / "case.seg.nrrd")
    assert cord.GetSize() == case.image.GetSize()
    np.testing.assert_allclose(cord.GetOrigin(), case.image.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(lesion), sitk.GetArrayFromImage(case.lesion))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(cord), sitk.GetArrayFromImage(case.labels) == 1)


def test_cli_export_from_a_label_map_twice(scan, tmp_path: Path) -> None:
    import subprocess
    import sys

    root, source, case = scan
    write_image_atomic(case.labels, tmp_path / "corrected.nii.gz")
    command = [sys.executable, "-m", "SCIsegLib", "export", "--root", str(root), "--source", str(source),
               "--labels", str(tmp_path / "corrected.nii.gz"), "--rater", "R", "--predicted-labels", str(tmp_path / "corrected.nii.gz")]
    first = subprocess.run(command, capture_output=True, text=True)
    second = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.startswith("version 1:") and second.stdout.startswith("version 2:")
    not_labels = [sys.executable, "-m", "SCIsegLib", "export", "--root", str(root), "--source", str(source),
                  "--labels", str(source), "--rater", "R"]  # the T2w image itself is no label map
    bad = subprocess.run(not_labels, capture_output=True, text=True)
    assert bad.returncode == 2 and "must hold 0, 1 and 2" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_export_records_its_parent_and_warns_when_a_newer_version_existed(scan, tmp_path: Path) -> None:
    import json

    from SCIsegLib.cli import main

    root, source, case = scan
    write_image_atomic(case.labels, tmp_path / "corrected.nii.gz")
    common = ["export", "--root", str(root), "--source", str(source), "--labels", str(tmp_path / "corrected.nii.gz"),
              "--rater", "R"]
    assert main([*common, "--parent", "prediction"]) == 0
    assert main([*common, "--parent", "v001"]) == 0
    assert main([*common, "--parent", "prediction"]) == 0  # started again from the prediction: v001 and v002 are newer
    sidecars = sorted((root / "derivatives" / "labels").rglob("*_label-SC_seg.json"))
    parents = {json.loads(p.read_text()).get("Parent", {}).get("Kind") for p in sidecars if ".sciseg_versions" in str(p)}
    assert parents == {"prediction", "version"}, parents
    assert main([*common, "--parent", "v0"]) == 2 and main([*common, "--parent", "latest"]) == 2
