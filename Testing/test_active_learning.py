"""The active-learning loop end to end on CPU: segment -> correct -> export -> dataset -> fine-tune -> use."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from conftest import REPOSITORY
from SCIsegLib.checkpoints import load_checkpoint
from SCIsegLib.phantom import SAGITTAL, make_phantom
from SCIsegLib.training import export
from SCIsegLib.volume import write_image_atomic


def sciseg(*arguments: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "SCIsegLib", *arguments], capture_output=True, text=True, cwd=REPOSITORY, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_loop_segment_correct_export_build_finetune_use(tmp_path: Path, demo_model_path: Path) -> None:
    env = {**os.environ, "SCISEG_MODELS_DIR": str(tmp_path / "store"), "nnUNet_n_proc_DA": "0"}
    bids = tmp_path / "bids"
    sources = []
    for index, subject in enumerate(("01", "02", "03")):
        case = make_phantom(seed=500 + index, acquisition=SAGITTAL, lesions=1)
        source = write_image_atomic(case.image, bids / f"sub-{subject}" / "anat" / f"sub-{subject}_T2w.nii.gz")
        write_image_atomic(case.labels, tmp_path / "truth" / f"sub-{subject}_labels.nii.gz")
        sources.append(source)
    # 1. the model segments every scan
    sciseg("segment", *map(str, sources), "-o", str(tmp_path / "pred"), "--model", str(demo_model_path), "--device", "cpu", "--label-map", env=env)
    # 2. a rater corrects them (the simulated correction is the phantom's truth) and exports
    for source in sources:
        stem = source.name.removesuffix(".nii.gz")
        sciseg("export", "--root", str(bids), "--source", str(source), "--labels", str(tmp_path / "truth" / f"{stem.split('_')[0]}_labels.nii.gz"),
               "--predicted-labels", str(tmp_path / "pred" / f"{stem}_labels.nii.gz"), "--rater", "sim", "--model", "sciseg-demo", env=env)
    sidecar = json.loads((bids / "derivatives" / "labels" / "sub-01" / "anat" / "sub-01_T2w_dseg.json").read_text())
    assert sidecar["Corrections"]["sc"]["DicePredictionVsCorrection"] > 0.5
    # 3. the corrections become an nnU-Net dataset
    built = sciseg("dataset", "build", "--bids", str(bids), "-o", str(tmp_path / "raw"), "--id", "611", "--name", "Loop",
                   "--test-fraction", "0.34", env=env)
    assert "2 training and 1 test cases" in built.stdout
    # 4. fine-tuning from sciseg-demo for one short epoch (one training step; several epochs and resuming them are
    #    tested below), registered in the store
    sciseg("models", "install", str(demo_model_path), "--name", "base", env=env)
    tuned = sciseg("finetune", "--base", "base", "--dataset", str(tmp_path / "raw" / "Dataset611_Loop"), "--name", "tuned",
                   "--work", str(tmp_path / "work"), "--epochs", "1", "--iterations", "1", "--device", "cpu", env=env)
    assert "registered 'tuned'" in tuned.stdout
    info = json.loads(sciseg("models", "info", "tuned", env=env).stdout)
    lineage = info["lineage"]
    assert lineage["parent"] == "base" and lineage["epochs"] == 1 and len(lineage["dataset_sha256"]) == 64
    assert set(lineage["test_dice"]) == {"sc", "lesion"} and lineage["test_dice"]["sc"] is not None
    # 5. the new model segments at once
    sciseg("segment", str(sources[0]), "-o", str(tmp_path / "tuned_out"), "--model", "tuned", "--device", "cpu", env=env)
    mask = sitk.ReadImage(str(tmp_path / "tuned_out" / "sub-01_T2w_sc_seg.nii.gz"))
    assert mask.GetSize() == sitk.ReadImage(str(sources[0])).GetSize()
    generated = json.loads((tmp_path / "tuned_out" / "sub-01_T2w_sc_seg.json").read_text())["GeneratedBy"][0]
    assert generated["Model"]["Name"] == "tuned"
    assert np.count_nonzero(sitk.GetArrayViewFromImage(mask)) > 0


def test_finetune_resumes_after_being_killed(tmp_path: Path, demo_model_path: Path) -> None:
    import time

    env = {**os.environ, "SCISEG_MODELS_DIR": str(tmp_path / "store"), "nnUNet_n_proc_DA": "0"}
    bids = tmp_path / "bids"
    for index, subject in enumerate(("01", "02")):
        case = make_phantom(seed=800 + index, acquisition=SAGITTAL, lesions=1)
        source = write_image_atomic(case.image, bids / f"sub-{subject}" / "anat" / f"sub-{subject}_T2w.nii.gz")
        export.export_correction(root=bids, source=source, cord=case.cord, lesion=case.lesion, rater="sim")
    sciseg("dataset", "build", "--bids", str(bids), "-o", str(tmp_path / "raw"), "--id", "612", "--name", "Resume",
           "--test-fraction", "0", env=env)
    command = [sys.executable, "-m", "SCIsegLib", "finetune", "--base", str(demo_model_path), "--dataset",
               str(tmp_path / "raw" / "Dataset612_Resume"), "--name", "resumed", "--work", str(tmp_path / "work"),
               "--epochs", "3", "--iterations", "1", "--device", "cpu"]
    fold = tmp_path / "work" / "results" / "Dataset612_Resume" / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_all"
    first = subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600  # a safety net only
    while not (fold / "checkpoint_latest.pth").is_file():
        assert first.poll() is None and time.monotonic() < deadline, "the first run did not reach its first checkpoint"
        time.sleep(0.5)
    time.sleep(1.0)
    first.kill()  # interrupted after at least one epoch
    first.wait()
    interrupted_at = load_checkpoint(fold / "checkpoint_latest.pth")["current_epoch"]  # full trainer checkpoint, loaded safely
    assert 1 <= interrupted_at < 3 and not (fold / "checkpoint_final.pth").exists()
    resumed = sciseg(*command[3:], env=env)
    assert "registered 'resumed'" in resumed.stdout
    assert load_checkpoint(fold / "checkpoint_final.pth")["current_epoch"] == 3
    logs = sorted(fold.glob("training_log_*.txt"))
    assert len(logs) == 2
    epochs = [int(n) for n in re.findall(r": Epoch (\d+)\s*$", logs[-1].read_text(), flags=re.MULTILINE)]
    assert epochs == list(range(interrupted_at, 3)), epochs  # the second run went on where the first stopped
