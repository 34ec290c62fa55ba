"""Recipe of the bundled demo grey-matter model ``sciseg-gm-demo`` (reproduces ``Resources/Models/sciseg-gm-demo``).

A tiny 2D nnU-Net v2 model of the spinal cord's grey matter, for the tests and the demo only (not research):

1. Training data (an nnU-Net raw dataset, images in SCT "RPI" so that nnU-Net's 2D slices are axial): the public
   axial T2*w scans of ``../shared/data`` with **manual** grey-matter masks, cropped to ``--margin`` mm (60) around
   the cord mask: ``gm_challenge`` sub-9418 and sub-9584, and ``sct_testing_data/t2s``. Held out (never seen):
   ``gm_challenge/sub-10062Ses1`` (a third site), on which ``benchmarks/gm_demo_dice.py`` reports Dice.
2. ``nnUNetv2`` fingerprint + ``ExperimentPlanner``; the ``2d`` configuration is reduced (0.5 mm pixels, 4 stages of
   [8, 16, 32, 64] features, patch 64 x 64, batch 12) and preprocessed; the 3D configurations are dropped.
3. ``nnUNetTrainer`` (fold "all") on CPU with torch limited to ``--threads`` threads, ``--epochs`` x
   ``--iterations`` steps, ``--oversample`` (60 %) of the patches centred on grey matter.
4. The checkpoint is stripped of the optimiser state and copied to ``--output`` as
   ``nnUNetTrainer__nnUNetPlans__2d`` (the layout of SCT's ``graymatter`` release).

Usage (about 15 minutes on 2 shared CPU cores)::

    python scripts/train_demo_gm_model.py --work .work/gm_training --output Resources/Models/sciseg-gm-demo
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import SimpleITK as sitk

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))
sys.path.insert(0, str(REPOSITORY / "scripts"))

from train_demo_model import crop_around_cord, recipe_parser, shrink_plans, use_work_folder  # noqa: E402
from train_demo_model import package_results as package_3d_recipe_results  # noqa: E402

from SCIsegLib.training import nnunet_raw  # noqa: E402

DATASET_ID = 991
DATASET_NAME = "SCIsegGMDemo"
CONFIGURATION = "2d"
SHARED = REPOSITORY.parent / "shared" / "data"
LABELS = {"background": 0, "gm": 1}
_GMC = "gm_challenge/derivatives/labels"

#: (image, cord mask, grey-matter mask) relative to ../shared/data.
GM_TRAINING = [
    ("gm_challenge/sub-9418/anat/sub-9418_run-1_T2starw.nii.gz",
     f"{_GMC}/sub-9418/anat/sub-9418_run-1_T2starw_seg-manual.nii.gz",
     f"{_GMC}/sub-9418/anat/sub-9418_run-1_T2starw_gmseg-manual.nii.gz"),
    ("gm_challenge/sub-9584/anat/sub-9584_run-1_T2starw.nii.gz",
     f"{_GMC}/sub-9584/anat/sub-9584_run-1_T2starw_seg-manual.nii.gz",
     f"{_GMC}/sub-9584/anat/sub-9584_run-1_T2starw_gmseg-manual.nii.gz"),
    ("sct_testing_data/t2s/t2s.nii.gz", "sct_testing_data/t2s/t2s_seg-deepseg.nii.gz",
     "sct_testing_data/t2s/t2s_gmseg_manual.nii.gz"),
]

#: Held out from training: the benchmark's Dice is measured on it.
GM_HELD_OUT = [
    ("gm_challenge/sub-10062Ses1/anat/sub-10062Ses1_run-1_T2starw.nii.gz",
     f"{_GMC}/sub-10062Ses1/anat/sub-10062Ses1_run-1_T2starw_seg-manual.nii.gz",
     f"{_GMC}/sub-10062Ses1/anat/sub-10062Ses1_run-1_T2starw_gmseg-manual.nii.gz"),
]


def binary_on(image: sitk.Image, mask: sitk.Image) -> sitk.Image:
    """A mask (any type, soft or binary) thresholded at 0.5 as uint8 on ``image``'s grid."""
    binary = sitk.Cast(sitk.Cast(mask, sitk.sitkFloat32) > 0.5, sitk.sitkUInt8)
    binary.CopyInformation(image)
    return binary


def build_raw_dataset(raw_root: Path, margin_mm: float) -> Path:
    """Every training scan cropped to ``margin_mm`` around its cord, with its 0/1 grey-matter labels."""
    folder = nnunet_raw.dataset_folder(raw_root, DATASET_ID, DATASET_NAME)
    if folder.exists():
        shutil.rmtree(folder)
    for index, (image_path, cord_path, gm_path) in enumerate(GM_TRAINING):
        image = sitk.Cast(sitk.ReadImage(str(SHARED / image_path)), sitk.sitkFloat32)
        cord = binary_on(image, sitk.ReadImage(str(SHARED / cord_path)))
        gm = binary_on(image, sitk.ReadImage(str(SHARED / gm_path)))
        cropped_image, cropped_cord = crop_around_cord(image, cord, margin_mm)
        cropped_gm = sitk.Resample(gm, cropped_cord, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        nnunet_raw.write_case(folder, f"gm_{index:02d}", cropped_image, cropped_gm)
    content = {
        "channel_names": {"0": "T2starw"},
        "labels": LABELS,
        "numTraining": len(GM_TRAINING),
        "file_ending": ".nii.gz",
        "image_orientation": nnunet_raw.SCISEG_ORIENTATION,
        "description": "SCIseg demo grey matter: axial T2*w scans with manual grey-matter masks (tests and demo only)",
    }
    (folder / "dataset.json").write_text(json.dumps(content, indent=2))
    return folder


def package_results(results: Path, output: Path, staging: Path) -> Path:
    """The SCIseg demo recipe's packaging (weights-only checkpoint, packaged as an nnUNetTrainer model), moved to
    ``output/nnUNetTrainer__nnUNetPlans__2d`` without the training curve (keeps the model small)."""
    packaged = package_3d_recipe_results(results, staging)
    target = output / f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"  # MODEL_CARD.md beside it is kept
    if target.exists():
        shutil.rmtree(target)
    output.mkdir(parents=True, exist_ok=True)
    (packaged / "fold_all" / "progress.png").unlink(missing_ok=True)
    shutil.move(str(packaged), str(target))
    return target


def main() -> None:
    parser = recipe_parser(__doc__, "sciseg-gm-demo", "gm_training", epochs=60, iterations=50, oversample=0.6,
                           oversample_help="share of patches centred on grey matter", seed=11, threads=1)
    parser.add_argument("--margin", type=float, default=60.0,
                        help="mm kept around the cord (neck and back muscles teach the model what is not GM)")
    arguments = parser.parse_args()

    work = arguments.work.resolve()
    use_work_folder(work)
    os.environ["nnUNet_n_proc_DA"] = "1"
    os.environ["OMP_NUM_THREADS"] = str(arguments.threads)

    import torch

    torch.set_num_threads(arguments.threads)
    torch.manual_seed(arguments.seed)
    started = time.time()
    folder = build_raw_dataset(work / "nnUNet_raw", arguments.margin)

    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True)
    plan_experiments([DATASET_ID])
    preprocessed = work / "nnUNet_preprocessed" / folder.name
    shrink_plans(preprocessed / "nnUNetPlans.json", CONFIGURATION, [0.5, 0.5], [64, 64], [8, 16, 32, 64], 12)
    preprocess([DATASET_ID], configurations=(CONFIGURATION,), num_processes=(1,))
    print(f"preprocessed in {time.time() - started:.0f} s")

    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    plans["continue_training"] = False
    trainer = nnUNetTrainer(plans, CONFIGURATION, "all", dataset_json, device=torch.device("cpu"))
    trainer.num_epochs = arguments.epochs
    trainer.num_iterations_per_epoch = arguments.iterations
    trainer.num_val_iterations_per_epoch = max(2, arguments.iterations // 8)
    trainer.oversample_foreground_percent = arguments.oversample
    trainer.save_every = 5
    trainer.run_training()
    print(f"trained in {time.time() - started:.0f} s")
    package_results(Path(trainer.output_folder).parent, arguments.output, work / "package")
    print(f"model written to {arguments.output} ({time.time() - started:.0f} s in all)")


if __name__ == "__main__":
    main()
