"""`sciseg run` over a small BIDS cohort on a real Dask LocalCluster (1 worker process, 1 thread):
outputs, tables, run summary, resume, --force, the bad inputs of issue 12 and the SLURM job script."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from SCIsegLib.cohort import outputs
from SCIsegLib.cohort.cluster import SlurmOptions, plan_cluster, slurm_cluster_kwargs
from SCIsegLib.cohort.discovery import find_bids_scans
from SCIsegLib.errors import InputError
from SCIsegLib.hashing import file_sha256
from SCIsegLib.metrics import dice
from SCIsegLib.phantom import Acquisition, LesionSpec, make_phantom
from SCIsegLib.volume import same_grid, write_image_atomic

REPOSITORY = Path(__file__).resolve().parents[1]
TINY = Acquisition(spacing_mm=(2.0, 0.8, 0.8), fov_mm=(24.0, 40.0, 64.0), orientation="PSR")
GOOD = ["sub-00", "sub-01", "sub-02"]
MEMORY_LIMIT = "1300MiB"  # a worker holding torch and the demo model uses 740-850 MiB here


def sciseg(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    return subprocess.run([sys.executable, "-m", "SCIsegLib", *args], capture_output=True, text=True,
                          env=environment, timeout=timeout, cwd=REPOSITORY)


def make_cohort(root: Path) -> dict[str, sitk.Image]:
    """Three tiny phantoms (with truth), a 4D scan, a file that is no image, and a scan too big for the worker memory."""
    truth = {}
    for index, subject in enumerate(GOOD):
        case = make_phantom(index, TINY, [LesionSpec(center_si_mm=0.0, length_mm=12.0, width_fraction=0.8)])
        path = root / subject / "anat" / f"{subject}_T2w.nii.gz"
        if subject == "sub-02":  # stored as DataLad/git-annex do: a symlink to a blob with another name
            blob = write_image_atomic(case.image, root.parent / "annex" / "MD5E-s1234--blob.nii.gz")
            path.parent.mkdir(parents=True)
            path.symlink_to(blob)
        else:
            write_image_atomic(case.image, path)
        truth[subject] = case.labels
    four_d = sitk.JoinSeries([make_phantom(9, TINY, 0).image] * 2)
    write_image_atomic(four_d, root / "sub-03" / "anat" / "sub-03_T2w.nii.gz")
    (root / "sub-04" / "anat").mkdir(parents=True)
    (root / "sub-04" / "anat" / "sub-04_T2w.nii.gz").write_bytes(b"not a NIfTI file at all" * 40)
    big = sitk.Image([768, 768, 320], sitk.sitkFloat32)  # 755 MB of voxels, read twice (ITK, nibabel): more than the worker may hold
    big.SetPixel([5, 5, 5], 1.0)
    write_image_atomic(big, root / "sub-05" / "anat" / "sub-05_T2w.nii.gz")
    (root / "participants.tsv").write_text(
        "participant_id\tsite\tais\n" + "".join(f"sub-{i:02d}\tsite{i % 2}\t{'ABCD'[i % 4]}\n" for i in range(6))
    )
    return truth


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cohort")
    bids, deriv = root / "bids", root / "derivatives"
    truth = make_cohort(bids)
    started = time.perf_counter()
    result = sciseg("run", "--bids", str(bids), "-o", str(deriv), "--model", "sciseg-demo", "--device", "cpu",
                    "--workers", "1", "--memory-per-worker", MEMORY_LIMIT, "--progress", "jsonl")
    return {"bids": bids, "deriv": deriv, "truth": truth, "result": result, "seconds": time.perf_counter() - started}


def test_run_isolates_failures_and_writes_every_output(cohort: dict) -> None:
    result, deriv = cohort["result"], cohort["deriv"]
    assert result.returncode == 3, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["start"] + ["scan"] * 6 + ["result"]
    assert events[-1]["done"] == 3 and events[-1]["failed"] == 3

    summary = pd.read_csv(deriv / "run_summary.csv", keep_default_na=False).set_index("subject")
    assert list(summary.loc[GOOD, "status"]) == ["done"] * 3
    assert "4D" in summary.loc["sub-03", "reason"]
    assert "not an image SimpleITK can read" in summary.loc["sub-04", "reason"]
    assert "died twice" in summary.loc["sub-05", "reason"] and "memory" in summary.loc["sub-05", "reason"]
    assert (summary.loc[GOOD, "seconds_segment"].astype(float) > 0).all()

    for subject in GOOD:
        anat = deriv / subject / "anat"
        source = cohort["bids"] / subject / "anat" / f"{subject}_T2w.nii.gz"
        marker = json.loads((anat / f"{subject}_T2w_sciseg-run.json").read_text())
        assert marker["SourceSha256"] == file_sha256(source)
        assert all((deriv / f).is_file() for f in marker["Files"])
        cord = sitk.ReadImage(str(anat / f"{subject}_T2w_sc_seg.nii.gz"))
        assert same_grid(cord, sitk.ReadImage(str(source)))
        truth_cord = sitk.GetArrayFromImage(cohort["truth"][subject]) >= 1
        assert dice(sitk.GetArrayFromImage(cord) > 0, truth_cord) > 0.7
        assert (anat / f"{subject}_T2w_sc_seg_csa.csv").is_file()
        for role in ("axial", "axial_overlay", "sagittal", "sagittal_overlay"):
            png = deriv / "qc" / marker["QC"][role]
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 300_000
    leftovers = [p for p in deriv.rglob("*") if ".part" in p.name or outputs.STAGING in p.parts and p.is_file()]
    assert leftovers == []
    assert not (deriv / "sub-03").exists() and not (deriv / "sub-05").exists()  # failed scans publish nothing
    assert not (deriv / outputs.STAGING).exists() and not (deriv / outputs.RUN_LOCK).exists()  # nothing left behind
    description = json.loads((deriv / "dataset_description.json").read_text())  # a complete BIDS derivative
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "SCIseg" and description["GeneratedBy"][0]["Version"]
    assert description["SourceDatasets"] == [{"URL": "../bids"}]  # relative to the derivative: no absolute path


def test_cohort_tables_join_participants_and_sum_the_lesions(cohort: dict) -> None:
    deriv = cohort["deriv"]
    subjects = pd.read_csv(deriv / "cohort_subjects.csv").set_index("subject")
    lesions = pd.read_csv(deriv / "cohort_lesions.csv")
    assert sorted(subjects.index) == GOOD
    assert list(subjects.loc[GOOD, "site"]) == ["site0", "site1", "site0"]
    assert list(subjects.loc[GOOD, "ais"]) == ["A", "B", "C"]
    for subject in GOOD:
        own = lesions[lesions["subject"] == subject]
        assert len(own) == subjects.loc[subject, "lesion_count"]
        assert subjects.loc[subject, "volume [mm3]"] == pytest.approx(own["volume [mm3]"].sum())
        sct_table = pd.read_csv(deriv / subject / "anat" / f"{subject}_T2w_lesion_seg_analysis.csv")
        assert subjects.loc[subject, "max_axial_damage_ratio []"] == pytest.approx(sct_table["max_axial_damage_ratio []"].max())
        # CSA at the lesion from the per-slice CSA table over the lesion's slices (RPI z), computed here independently
        lesion = sitk.DICOMOrient(sitk.ReadImage(str(deriv / subject / "anat" / f"{subject}_T2w_lesion_seg.nii.gz")), "LAS")
        slices = np.nonzero(sitk.GetArrayFromImage(lesion).any(axis=(1, 2)))[0]
        csa = pd.read_csv(deriv / subject / "anat" / f"{subject}_T2w_sc_seg_csa.csv").set_index("Slice (I->S)")["MEAN(area)"]
        assert subjects.loc[subject, "csa_at_lesion_mean [mm2]"] == pytest.approx(csa.loc[csa.index.isin(slices)].mean())
        assert 30 < subjects.loc[subject, "csa_above_lesion [mm2]"] < 200  # phantom cords: radii 5-6.5 x 3.5-4.3 mm
    assert "volume [mm3]" in subjects.columns and "length [mm]" in subjects.columns  # `sciseg stats` default columns


def test_one_model_load_per_worker_process(cohort: dict) -> None:
    summary = pd.read_csv(cohort["deriv"] / "run_summary.csv", keep_default_na=False)
    done = summary[summary["status"] == "done"]
    loads = done["seconds_model"].astype(float) > 0.5
    assert loads.sum() == 1, done[["scan", "seconds_model", "worker"]]  # one worker: the first scan loads, the rest reuse


def test_second_run_skips_complete_scans_and_force_redoes(cohort: dict) -> None:
    bids, deriv = cohort["bids"], cohort["deriv"]
    markers = {s: deriv / s / "anat" / f"{s}_T2w_sciseg-run.json" for s in GOOD}
    before = {s: m.stat().st_mtime_ns for s, m in markers.items()}
    started = time.perf_counter()
    again = sciseg("run", "--bids", str(bids), "--include", "sub-0[012]", "-o", str(deriv), "--model", "sciseg-demo",
                   "--device", "cpu", "--workers", "1", "--progress", "none")
    seconds = time.perf_counter() - started
    assert again.returncode == 0, again.stderr[-2000:]
    summary = pd.read_csv(deriv / "run_summary.csv", keep_default_na=False)
    assert list(summary["status"]) == ["skipped"] * 3
    assert {s: m.stat().st_mtime_ns for s, m in markers.items()} == before
    assert seconds < cohort["seconds"]

    forced = sciseg("run", str(bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz"), "-o", str(deriv), "--model", "sciseg-demo",
                    "--device", "cpu", "--workers", "1", "--force", "--progress", "none")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert markers["sub-01"].stat().st_mtime_ns > before["sub-01"]
    assert markers["sub-00"].stat().st_mtime_ns == before["sub-00"]


def test_rerun_after_one_exported_correction_measures_that_scan_from_it(cohort: dict) -> None:
    """A rater exports a correction of sub-00 (the model's lesion replaced by a slab of the cord); the next run measures
    sub-00 on it, says so in run_summary.csv and the cohort table, and leaves the other scans as they were."""
    from skimage.measure import label

    from SCIsegLib.training.export import export_correction

    bids, deriv = cohort["bids"], cohort["deriv"]
    source = bids / "sub-00" / "anat" / "sub-00_T2w.nii.gz"
    anat = deriv / "sub-00" / "anat"
    cord = sitk.ReadImage(str(anat / "sub-00_T2w_sc_seg.nii.gz"))
    cord_array = sitk.GetArrayFromImage(cord) > 0
    rows = np.nonzero(cord_array.any(axis=(0, 2)))[0]
    lesion_array = cord_array.copy()
    lesion_array[:, : rows[len(rows) // 3]] = False
    lesion_array[:, rows[len(rows) // 2] :] = False
    lesion = sitk.GetImageFromArray(lesion_array.astype(np.uint8))
    lesion.CopyInformation(cord)
    export_correction(root=bids, source=source, cord=cord, lesion=lesion, rater="alice")
    markers = {s: deriv / s / "anat" / f"{s}_T2w_sciseg-run.json" for s in GOOD}
    before = {s: m.stat().st_mtime_ns for s, m in markers.items()}

    def rerun() -> pd.DataFrame:
        result = sciseg("run", "--bids", str(bids), "--include", "sub-0[012]", "-o", str(deriv), "--model", "sciseg-demo",
                        "--device", "cpu", "--workers", "1", "--progress", "none")
        assert result.returncode == 0, result.stderr[-2000:]
        return pd.read_csv(deriv / "run_summary.csv", keep_default_na=False).set_index("subject")

    summary = rerun()
    assert list(summary.loc[GOOD, "status"]) == ["done", "skipped", "skipped"]
    assert list(summary.loc[GOOD, "measured_on"]) == ["correction v001 (alice)", "model", "model"]
    assert {s: markers[s].stat().st_mtime_ns == before[s] for s in GOOD} == {"sub-00": False, "sub-01": True, "sub-02": True}
    subjects = pd.read_csv(deriv / "cohort_subjects.csv").set_index("subject")
    assert subjects.loc["sub-00", "measured_on"] == "correction v001 (alice)"
    voxel_mm3 = float(np.prod(cord.GetSpacing()))
    assert subjects.loc["sub-00", "volume [mm3]"] == pytest.approx(lesion_array.sum() * voxel_mm3)
    assert subjects.loc["sub-00", "lesion_count"] == label(lesion_array, connectivity=2).max()
    measured = sitk.GetArrayFromImage(sitk.ReadImage(str(anat / "sub-00_T2w_lesion_seg.nii.gz"))) > 0
    assert np.array_equal(measured, lesion_array)
    assert json.loads((anat / "sub-00_T2w_lesion_seg.json").read_text())["Version"] == 1

    assert list(rerun().loc[GOOD, "status"]) == ["skipped"] * 3  # nothing changed since: nothing redone


def test_resume_check_and_an_interrupted_publish(cohort: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    deriv = cohort["deriv"]
    [scan] = find_bids_scans(cohort["bids"], include="sub-02")
    marker = outputs.read_marker(deriv, scan)
    current = (marker["SourceSha256"], marker["ModelSha256"], marker["Settings"])
    assert outputs.completed_marker(deriv, scan, *current) is not None
    assert outputs.completed_marker(deriv, scan, "0" * 64, *current[1:]) is None
    assert outputs.completed_marker(deriv, scan, current[0], "1" * 64, current[2]) is None
    assert outputs.completed_marker(deriv, scan, *current[:2], {**current[2], "postprocess": {}}) is None

    # A kill in the middle of publishing: the old marker is gone, so the scan counts as not done; no partial file.
    copy = tmp_path / "deriv"
    staging = outputs.new_staging_folder(copy)
    for relative in marker["Files"]:
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        (staging / relative).write_bytes((deriv / relative).read_bytes())
    outputs.publish_output_set(staging, copy, scan, marker)
    assert outputs.completed_marker(copy, scan, *current) is not None
    staging = outputs.new_staging_folder(copy)
    for relative in marker["Files"][:3]:
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        (staging / relative).write_bytes(b"new")
    real_replace, moved = os.replace, []

    def replace_then_die(source, target):
        if moved:
            raise KeyboardInterrupt  # stands for SIGKILL between two renames
        moved.append(target)
        real_replace(source, target)

    monkeypatch.setattr(outputs.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        outputs.publish_output_set(staging, copy, scan, marker)
    monkeypatch.undo()
    assert outputs.completed_marker(copy, scan, *current) is None
    assert not [p for p in copy.rglob("*") if ".part" in p.name]
    assert outputs.remove_stale_staging(copy) == 1


def test_bad_inputs_exit_2_with_one_sentence(tmp_path: Path) -> None:
    empty = tmp_path / "empty_bids"
    (empty / "sub-01" / "anat").mkdir(parents=True)
    result = sciseg("run", "--bids", str(empty), "-o", str(tmp_path / "out"), "--model", "sciseg-demo")
    assert result.returncode == 2 and "holds no scan" in result.stderr

    bids = tmp_path / "bids"
    write_image_atomic(make_phantom(1, TINY, 0).image, bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    result = sciseg("run", "--bids", str(bids), "-o", str(bids / "sub-01" / "derivatives"), "--model", "sciseg-demo")
    assert result.returncode == 2 and "lies inside the input folder" in result.stderr

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    result = sciseg("run", "--bids", str(bids), "-o", str(tmp_path / "out"), "--model", "sciseg-demo",
                    "--scheduler", f"tcp://127.0.0.1:{port}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "did not answer" in result.stderr and "Traceback" not in result.stderr
    assert time.perf_counter() - started < 30  # 5 s connect timeout + interpreter start on a loaded 2-core machine

    result = sciseg("run", "--bids", str(bids), "-o", str(tmp_path / "out"), "--scheduler", "slurm", "--slurm-walltime", "soon")
    assert result.returncode == 2 and "walltime" in result.stderr


def test_slurm_job_script_has_the_cluster_options() -> None:
    from dask_jobqueue import SLURMCluster

    options = SlurmOptions(queue="gpu", account="lab42", walltime="02:00:00", memory="24GB", cores=6, gpus=1,
                           job_extra=("--constraint=a100",))
    plan = plan_cluster("slurm", 8, "auto", None, options)
    assert plan.device == "cuda" and plan.workers == 8
    with SLURMCluster(**slurm_cluster_kwargs(plan)) as cluster:
        script = cluster.job_script()
    for directive in ("#SBATCH -p gpu", "#SBATCH -A lab42", "#SBATCH -t 02:00:00", "#SBATCH --cpus-per-task=6",
                      "#SBATCH --mem=23G", "#SBATCH --gres=gpu:1", "#SBATCH --constraint=a100"):
        assert directive in script, script
    assert "--nthreads 1" in script and sys.executable in script


def test_local_cluster_is_sized_to_the_machine() -> None:
    plan = plan_cluster(None, None, "cpu", None)
    cores = os.cpu_count() or 1
    assert plan.workers == max(1, cores // 4) and plan.torch_threads == max(1, cores // plan.workers)
    assert plan.memory_per_worker.endswith("MiB")
    with pytest.raises(InputError):
        plan_cluster("http://nowhere", None, "cpu", None)


def _rpi_image(array_xyz: np.ndarray, spacing=(0.8, 0.6, 2.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)).astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # ITK LAS = SCT RPI
    return image


def _cord_xyz(shape=(20, 24, 40)) -> np.ndarray:
    x, y, _ = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return ((x - 10) * 0.8 / 5.0) ** 2 + ((y - 12) * 0.6 / 4.0) ** 2 <= 1.0  # 10 mm R-L, 8 mm A-P


def test_plausibility_flags_a_broken_cord_a_stray_lesion_and_a_bridge_wider_than_the_cord() -> None:
    from SCIsegLib.cohort.plausibility import plausibility_flags
    from SCIsegLib.cord import cord_morphometry
    from SCIsegLib.lesions import analyze_lesions

    cord = _cord_xyz()
    cord[:, :, 30:32] = False  # a gap: the top 8 slices are a second piece
    lesion = np.zeros_like(cord)
    lesion[9:12, 11:14, 10:14] = True  # in the main piece
    lesion[9:12, 11:14, 34:36] = True  # in the stray piece
    cord_image, lesion_image = _rpi_image(cord), _rpi_image(lesion)
    analysis = analyze_lesions(lesion_image, cord_image)
    csa = cord_morphometry(cord_image)
    flags = plausibility_flags(cord_image, analysis.labels, analysis.table, csa)
    assert [f["code"] for f in flags] == ["cord_pieces", "lesion_off_cord"]
    assert "2 pieces" in flags[0]["reason"] and flags[1]["label"] == 2

    whole = _cord_xyz()
    table = analysis.table.iloc[:1].copy()
    cord_ap = csa["MEAN(diameter_AP)"].iloc[10:14].max()
    assert cord_ap == pytest.approx(8.0, rel=0.05)
    table["interpolated_total_bridge_width [mm]"] = cord_ap + 0.5  # within one voxel (0.6 mm): plausible
    assert plausibility_flags(_rpi_image(whole), analysis.labels, table, cord_morphometry(_rpi_image(whole))) == []
    table["interpolated_total_bridge_width [mm]"] = 2 * cord_ap
    [flag] = plausibility_flags(_rpi_image(whole), analysis.labels, table, cord_morphometry(_rpi_image(whole)))
    assert flag["code"] == "bridge_wider_than_cord" and flag["label"] == 1


def test_flagged_values_are_left_out_of_the_cohort_tables_with_the_reason(tmp_path: Path) -> None:
    from SCIsegLib.cohort.tables import cohort_tables

    measures = {"lesion_count": 1, "volume [mm3]": 50.0, "length [mm]": 10.0, "max_axial_damage_ratio []": 0.4,
                "interpolated_total_bridge_width [mm]": 19.0, "csa_at_lesion_mean [mm2]": 60.0}
    flag = {"code": "bridge_wider_than_cord", "label": 1, "reason": "lesion 1: its tissue bridge (19.0 mm) is wider",
            "columns": ["interpolated_total_bridge_width [mm]"]}
    pd.DataFrame([{"label": 1, "volume [mm3]": 50.0, "interpolated_total_bridge_width [mm]": 19.0}]).to_csv(
        tmp_path / "a.csv", index=False)
    rows = [{"subject": s, "session": "", "scan": f"{s}_T2w", "file": f"/{s}.nii.gz", "status": "done",
             "marker": {"Measures": measures, "Flags": f, "LesionTable": "a.csv"}} for s, f in (("sub-01", [flag]), ("sub-02", []))]
    subjects, lesions = cohort_tables(rows, tmp_path, [])
    subjects = subjects.set_index("subject")
    assert np.isnan(subjects.loc["sub-01", "interpolated_total_bridge_width [mm]"])
    assert subjects.loc["sub-01", "flags"] == flag["reason"] and subjects.loc["sub-01", "volume [mm3]"] == 50.0
    assert subjects.loc["sub-02", "interpolated_total_bridge_width [mm]"] == 19.0 and subjects.loc["sub-02", "flags"] == ""
    assert subjects["interpolated_total_bridge_width [mm]"].mean() == 19.0  # the flagged value is not averaged in
    lesions = lesions.set_index("subject")
    assert np.isnan(lesions.loc["sub-01", "interpolated_total_bridge_width [mm]"]) and lesions.loc["sub-01", "flags"]
