"""Every writer's outputs in a BIDS dataset: each derivatives folder has its ``dataset_description.json``, and no JSON
file (sidecar, marker, table description) names a file by an absolute path; sources are relative to the BIDS
root with their sha256. The review app's prediction carries ``sciseg segment``'s sidecar.

The writers run as users run them (the ``sciseg`` command; the review app's segmentation child and publish; the case
export and draft) on two small phantoms with the demo model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from SCIsegLib.cases import Case
from SCIsegLib.compartments_files import write_white_matter
from SCIsegLib.hashing import file_sha256
from SCIsegLib.phantom import Acquisition, LesionSpec, make_phantom
from SCIsegLib.provenance import derivative_folder_of, describe_derivative, source_path
from SCIsegLib.volume import write_image_atomic

REPOSITORY = Path(__file__).resolve().parents[1]
TINY = Acquisition(spacing_mm=(2.0, 0.8, 0.8), fov_mm=(24.0, 40.0, 64.0), orientation="PSR")
SUBJECTS = ("sub-01", "sub-02")


def sciseg(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    result = subprocess.run([sys.executable, "-m", "SCIsegLib", *args], capture_output=True, text=True,
                            env=environment, timeout=timeout, cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from SCIsegLib.review.session import publish_prediction, start_segmentation

    bids = tmp_path_factory.mktemp("provenance") / "bids"
    for index, subject in enumerate(SUBJECTS):
        case = make_phantom(index, TINY, [LesionSpec(center_si_mm=0.0, length_mm=12.0, width_fraction=0.8)])
        write_image_atomic(case.image, bids / subject / "anat" / f"{subject}_T2w.nii.gz")
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "phantoms", "BIDSVersion": "1.9.0"}))
    image = bids / "sub-01/anat/sub-01_T2w.nii.gz"
    predictions = bids / "derivatives/sciseg/sub-01/anat"
    sciseg("segment", str(image), "-o", str(predictions), "--model", "sciseg-demo", "--device", "cpu")  # segment
    cord, lesion = predictions / "sub-01_T2w_sc_seg.nii.gz", predictions / "sub-01_T2w_lesion_seg.nii.gz"
    sciseg("analyze", "--lesion", str(lesion), "--cord", str(cord), "-o", str(bids / "derivatives/measures/sub-01/anat"))
    sciseg("cord", "--cord", str(cord), "-o", str(bids / "derivatives/measures/sub-01/anat"))
    grey = sitk.BinaryErode(sitk.ReadImage(str(cord)), [1, 1, 1])  # a grey-matter mask inside the cord
    gm = write_image_atomic(grey, bids / "derivatives/gm/sub-01/anat/sub-01_T2w_gmseg.nii.gz")
    sciseg("cord", "--gm", str(gm), "--cord", str(cord), "-o", str(gm.parent))  # GM/WM areas
    write_white_matter(gm, cord, gm.parent)  # what `segment --model graymatter --cord` writes after the GM
    case = Case.open(bids, image)  # export and draft (review app and Slicer panel alike)
    case.export(case.scan.grid.image_of(case.labels), "alice", drawn_on=case.scan.key, model="sciseg-demo")
    drafted = case.labels.copy()
    drafted[drafted.shape[0] // 2, 0, 0] = 2
    draft = case.save_draft(drafted, "alice")
    run = start_segmentation(bids, "sub-02/anat/sub-02_T2w", "sciseg-demo")  # the review app's prediction
    deadline = time.monotonic() + 600
    while not run.finished:
        assert time.monotonic() < deadline, run.log_tail()
        run.poll()
        time.sleep(0.1)
    assert run.returncode == 0, run.log_tail()
    publish_prediction(bids, "sub-02/anat/sub-02_T2w", run)
    sciseg("run", "--bids", str(bids), "-o", str(bids / "derivatives/cohort"), "--model", "sciseg-demo", "--device",
           "cpu", "--workers", "1", "--memory-per-worker", "1300MiB")  # cohort, its tables and QC report
    return {"bids": bids, "draft": draft.path}


def test_every_derivatives_folder_written_has_its_dataset_description(written: dict) -> None:
    folders = sorted(path for path in (written["bids"] / "derivatives").iterdir() if path.is_dir())
    assert [folder.name for folder in folders] == ["cohort", "gm", "labels", "measures", "sciseg"]
    for folder in folders:
        description = json.loads((folder / "dataset_description.json").read_text())
        assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "SCIseg", folder


def test_no_written_json_names_a_file_by_an_absolute_path(written: dict) -> None:
    bids = written["bids"]
    absolute = (str(bids.parent), str(bids.parent.resolve()), os.path.expanduser("~") + "/")
    checked, offenders = 0, []
    for path in sorted(bids.rglob("*.json")):  # sidecars, markers, descriptions (not the QC page's entries.js)
        if any(prefix in path.read_text() for prefix in absolute):
            offenders.append(path.relative_to(bids).as_posix())
        checked += 1
    assert offenders == [] and checked > 20
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(written["draft"]))
    reader.ReadImageInformation()
    record = json.loads(reader.GetMetaData("SCIseg_Draft"))
    assert record["Source"] == "sub-01/anat/sub-01_T2w.nii.gz"  # the draft's header too


def test_sidecars_name_the_source_relative_to_the_bids_root_with_its_sha256(written: dict) -> None:
    bids = written["bids"]
    image = bids / "sub-01/anat/sub-01_T2w.nii.gz"
    segment = json.loads((bids / "derivatives/sciseg/sub-01/anat/sub-01_T2w_sc_seg.json").read_text())
    assert segment["Sources"] == ["sub-01/anat/sub-01_T2w.nii.gz"] and segment["SourceSha256"] == file_sha256(image)
    exported = json.loads((bids / "derivatives/labels/sub-01/anat/sub-01_T2w_dseg.json").read_text())
    assert exported["SourceImage"] == {"Path": "sub-01/anat/sub-01_T2w.nii.gz", "Sha256": file_sha256(image)}
    areas = json.loads((bids / "derivatives/gm/sub-01/anat/sub-01_T2w_gmseg_areas.json").read_text())
    assert areas["Sources"]["cord"] == "derivatives/sciseg/sub-01/anat/sub-01_T2w_sc_seg.nii.gz"
    assert " -i sub-01_T2w_gmseg.nii.gz" in " ".join(areas["EquivalentCommands"])  # run from the output folder


def test_the_review_apps_prediction_has_the_sidecar_of_sciseg_segment(written: dict) -> None:
    bids = written["bids"]
    image = bids / "sub-02/anat/sub-02_T2w.nii.gz"
    ours = bids / "derivatives/sciseg/sub-02/anat"
    theirs = bids / "derivatives/sciseg/sub-01/anat"
    for kind in ("sc", "lesion"):
        app = json.loads((ours / f"sub-02_T2w_{kind}_seg.json").read_text())
        cli = json.loads((theirs / f"sub-01_T2w_{kind}_seg.json").read_text())
        assert set(app) == set(cli) and app["Structure"] == cli["Structure"] == kind
        assert app["GeneratedBy"][0]["Model"] == cli["GeneratedBy"][0]["Model"]
        assert app["Sources"] == ["sub-02/anat/sub-02_T2w.nii.gz"] and app["SourceSha256"] == file_sha256(image)
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(ours / f"sub-02_T2w_{kind}_seg.nii.gz")))
        assert app["VoxelCount"] == int(mask.sum())
    assert Case.open(bids, image).base.model == "sciseg-demo"  # the case reads the model's name from it


def test_derivative_folders_are_found_and_described_once(tmp_path: Path) -> None:
    inside = tmp_path / "bids/derivatives/tool/sub-01/anat"
    assert derivative_folder_of(inside) == (tmp_path / "bids/derivatives/tool").resolve()
    assert derivative_folder_of(tmp_path / "elsewhere") is None and describe_derivative(tmp_path / "elsewhere", "x") is None
    described = describe_derivative(inside, "first")
    describe_derivative(inside, "second")  # an existing description is kept as it is
    assert json.loads(described.read_text())["GeneratedBy"][0]["Description"] == "first"
    (tmp_path / "run/derivatives").mkdir(parents=True)  # an output folder itself named "derivatives" and described
    (tmp_path / "run/derivatives/dataset_description.json").write_text("{}")
    assert derivative_folder_of(tmp_path / "run/derivatives/sub-01/anat") == (tmp_path / "run/derivatives").resolve()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain/x.nii.gz").write_bytes(b"")
    assert source_path(tmp_path / "plain/x.nii.gz") == "x.nii.gz"  # outside a BIDS dataset: the name only
