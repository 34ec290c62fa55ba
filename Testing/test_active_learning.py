"""The active-learning loop end to end on CPU: segment -> correct -> export -> dataset -> fine-tune -> use."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from conftest import REPOSITORY
from learning_loop import LoopRun, sciseg
from SCIsegLib.checkpoints import load_checkpoint


def test_loop_segment_correct_export_build_finetune_use(learning_loop: LoopRun) -> None:
    """Each step of the loop (run once per session by the ``learning_loop`` fixture) wrote what it should."""
    loop = learning_loop
    # 2. the exported correction records how far it is from the prediction
    sidecar = json.loads((loop.bids / "derivatives" / "labels" / "sub-01" / "anat" / "sub-01_T2w_dseg.json").read_text())
    assert sidecar["Corrections"]["sc"]["DicePredictionVsCorrection"] > 0.5
    # 3. the corrections became an nnU-Net dataset
    assert "2 training and 1 test cases" in loop.built.stdout
    # 4. fine-tuning from sciseg-demo for one short epoch (one training step; several epochs and resuming them are
    #    tested below), registered in the store
    assert "registered 'tuned'" in loop.tuned.stdout
    info = json.loads(loop.info.stdout)
    lineage = info["lineage"]
    assert lineage["parent"] == "base" and lineage["epochs"] == 1 and len(lineage["dataset_sha256"]) == 64
    assert set(lineage["test_dice"]) == {"sc", "lesion"} and lineage["test_dice"]["sc"] is not None
    # 5. the new model segmented at once
    mask = sitk.ReadImage(str(loop.tuned_output / "sub-01_T2w_sc_seg.nii.gz"))
    assert mask.GetSize() == sitk.ReadImage(str(loop.sources[0])).GetSize()
    generated = json.loads((loop.tuned_output / "sub-01_T2w_sc_seg.json").read_text())["GeneratedBy"][0]
    assert generated["Model"]["Name"] == "tuned"
    assert np.count_nonzero(sitk.GetArrayViewFromImage(mask)) > 0


def test_finetune_resumes_after_being_killed(tmp_path: Path, demo_model_path: Path, learning_loop: LoopRun) -> None:
    """From the loop's dataset, already preprocessed by nnU-Net (a copy of its work folder's part): killed after
    its first epoch's checkpoint, the same command goes on from there to the last epoch."""
    import time

    env = {**os.environ, "SCISEG_MODELS_DIR": str(tmp_path / "store"), "nnUNet_n_proc_DA": "0"}
    dataset = learning_loop.dataset
    shutil.copytree(learning_loop.preprocessed, tmp_path / "work" / "preprocessed" / dataset.name)
    command = [sys.executable, "-m", "SCIsegLib", "finetune", "--base", str(demo_model_path), "--dataset", str(dataset),
               "--name", "resumed", "--work", str(tmp_path / "work"), "--epochs", "3", "--iterations", "1", "--device", "cpu"]
    fold = tmp_path / "work" / "results" / dataset.name / "nnUNetTrainer__nnUNetPlans__3d_fullres" / "fold_all"
    first = subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def logged_epochs() -> list[int]:
        return [int(n) for log in sorted(fold.glob("training_log_*.txt"))
                for n in re.findall(r": Epoch (\d+)\s*$", log.read_text(), flags=re.MULTILINE)]

    deadline = time.monotonic() + 600  # a safety net only
    while 1 not in logged_epochs():  # nnU-Net starts epoch 1 once epoch 0's checkpoint_latest.pth is written whole
        assert first.poll() is None and time.monotonic() < deadline, "the first run did not reach its first checkpoint"
        time.sleep(0.1)
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
