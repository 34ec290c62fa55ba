"""The active-learning loop on CPU, run once per test session: segment -> correct -> export -> dataset -> fine-tune -> use.

Three synthetic sagittal scans (phantoms, one lesion each) form a BIDS dataset; the bundled demo model segments
them; a simulated rater exports the phantoms' truth as corrections; ``dataset build`` turns them into the nnU-Net
raw dataset ``Dataset611_Loop`` (2 training, 1 test case); ``finetune`` trains ``tuned`` from ``base`` (the demo
model installed under that name) for one epoch of one step; ``tuned`` segments the first scan.

Every step is a ``python -m SCIsegLib`` process and must exit 0. Testing/test_active_learning.py checks what each
step wrote; the fine-tuning tests that need a dataset nnU-Net has already preprocessed (resuming, killing while
training) start from a copy of :attr:`LoopRun.preprocessed`, so that they do not repeat nnU-Net's fingerprint and
preprocessing process pools (each worker imports torch). The loop's folders are read-only for the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from SCIsegLib.phantom import SAGITTAL, make_phantom
from SCIsegLib.volume import write_image_atomic

REPOSITORY = Path(__file__).resolve().parents[1]
SUBJECTS = ("01", "02", "03")


def sciseg(*arguments: str, env: dict) -> subprocess.CompletedProcess:
    """``python -m SCIsegLib ARGUMENTS`` run to its end; it must exit 0."""
    result = subprocess.run([sys.executable, "-m", "SCIsegLib", *arguments], capture_output=True, text=True, cwd=REPOSITORY, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@dataclass(frozen=True)
class LoopRun:
    """Where the loop wrote, and the output of the steps whose text the tests check."""

    folder: Path
    bids: Path
    sources: list[Path]
    built: subprocess.CompletedProcess
    tuned: subprocess.CompletedProcess
    info: subprocess.CompletedProcess

    @property
    def dataset(self) -> Path:
        """The nnU-Net raw dataset built from the corrections."""
        return self.folder / "raw" / "Dataset611_Loop"

    @property
    def preprocessed(self) -> Path:
        """nnU-Net's preprocessed copy of :attr:`dataset` (plans, fingerprint, cases), as ``finetune`` left it."""
        return self.folder / "work" / "preprocessed" / "Dataset611_Loop"

    @property
    def tuned_output(self) -> Path:
        """What ``tuned`` wrote for the first scan."""
        return self.folder / "tuned_out"


def run_learning_loop(folder: Path, demo_model: Path) -> LoopRun:
    """Run the loop in ``folder`` (its own model store, ``folder/store``) and return what it wrote."""
    env = {**os.environ, "SCISEG_MODELS_DIR": str(folder / "store"), "nnUNet_n_proc_DA": "0"}
    bids = folder / "bids"
    sources = []
    for index, subject in enumerate(SUBJECTS):
        case = make_phantom(seed=500 + index, acquisition=SAGITTAL, lesions=1)
        source = write_image_atomic(case.image, bids / f"sub-{subject}" / "anat" / f"sub-{subject}_T2w.nii.gz")
        write_image_atomic(case.labels, folder / "truth" / f"sub-{subject}_labels.nii.gz")
        sources.append(source)
    # 1. the model segments every scan
    sciseg("segment", *map(str, sources), "-o", str(folder / "pred"), "--model", str(demo_model), "--device", "cpu", "--label-map", env=env)
    # 2. a rater corrects them (the simulated correction is the phantom's truth) and exports
    for source in sources:
        stem = source.name.removesuffix(".nii.gz")
        sciseg("export", "--root", str(bids), "--source", str(source), "--labels", str(folder / "truth" / f"{stem.split('_')[0]}_labels.nii.gz"),
               "--predicted-labels", str(folder / "pred" / f"{stem}_labels.nii.gz"), "--rater", "sim", "--model", "sciseg-demo", env=env)
    # 3. the corrections become an nnU-Net dataset
    built = sciseg("dataset", "build", "--bids", str(bids), "-o", str(folder / "raw"), "--id", "611", "--name", "Loop",
                   "--test-fraction", "0.34", env=env)
    # 4. fine-tuning from sciseg-demo for one short epoch (one training step), registered in the store
    sciseg("models", "install", str(demo_model), "--name", "base", env=env)
    tuned = sciseg("finetune", "--base", "base", "--dataset", str(folder / "raw" / "Dataset611_Loop"), "--name", "tuned",
                   "--work", str(folder / "work"), "--epochs", "1", "--iterations", "1", "--device", "cpu", env=env)
    info = sciseg("models", "info", "tuned", env=env)
    # 5. the new model segments at once
    sciseg("segment", str(sources[0]), "-o", str(folder / "tuned_out"), "--model", "tuned", "--device", "cpu", env=env)
    return LoopRun(folder=folder, bids=bids, sources=sources, built=built, tuned=tuned, info=info)
