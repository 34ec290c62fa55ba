"""Recipe of the bundled demo model ``sciseg-demo`` (reproduces ``Resources/Models/sciseg-demo``).

nnU-Net v2's own pipeline, shrunk to train on a 2-core CPU in about an hour:

1. Training data (written as an nnU-Net raw dataset, images in SCT "RPI"):
   * synthetic phantoms (``SCIsegLib.phantom``): sagittal, axial and isotropic acquisitions in
     several orientations, 0-3 lesions each;
   * real scans of ``../shared/data`` with **manual** cord masks, with lesions painted by
     ``SCIsegLib.phantom.paint_lesions`` (the only way to get lesion truth on real anatomy).
   Real scans NOT used for training (held out for the model card): ``sct_testing_data/t2``,
   ``sct_2014_errsm/errsm_21`` and ``gm_challenge/sub-10062Ses1``.
2. ``nnUNetv2`` fingerprint + ``ExperimentPlanner``, then the 3d_fullres configuration is reduced
   (1 mm spacing, 4 stages of [16, 32, 64, 96] features, patch 80x64x48, batch 2) and preprocessed.
3. ``nnUNetTrainer`` (fold "all") for ``--epochs`` epochs of ``--iterations`` steps on CPU, with
   80 % of the patches centred on a foreground class (cord or lesion), Dice over the batch, and the
   lesion voxels weighted 10x in the BCE term (``nnUNetTrainerDemo``: nnU-Net's trainer with that loss),
   so the small lesion region is learnt within the ~1,600 iterations a 2-core CPU affords.
4. The checkpoint is stripped of the optimiser state and the model folder is copied to
   ``--output`` with the same layout as SCIseg's release (``nnUNetTrainer__nnUNetPlans__3d_fullres``).

Usage (one stage; the bundled model is three stages, each started from the last one's weights with
``--initial-checkpoint``, the later ones with ``--uncropped-copies`` so that real scans keep their whole
field of view: the exact commands are in ``Resources/Models/sciseg-demo/MODEL_CARD.md``)::

    python scripts/train_demo_model.py --work .work/demo_training --output Resources/Models/sciseg-demo
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from SCIsegLib import phantom  # noqa: E402
from SCIsegLib.checkpoints import load_checkpoint  # noqa: E402
from SCIsegLib.training import nnunet_raw  # noqa: E402

DATASET_ID = 990
DATASET_NAME = "SCIsegDemo"
SHARED = REPOSITORY.parent / "shared" / "data"

#: Real scans with manual cord masks used for training: (image, cord mask) relative to ../shared/data.
REAL_TRAINING = [
    ("sct_2014_errsm/errsm_11/t2.nii.gz", "sct_2014_errsm/errsm_11/t2_manual_segmentation.nii.gz"),
    ("sct_2014_errsm/errsm_18/t2.nii.gz", "sct_2014_errsm/errsm_18/t2_manual_segmentation.nii.gz"),
    (
        "gm_challenge/sub-9418/anat/sub-9418_run-1_T2starw.nii.gz",
        "gm_challenge/derivatives/labels/sub-9418/anat/sub-9418_run-1_T2starw_seg-manual.nii.gz",
    ),
    (
        "gm_challenge/sub-9584/anat/sub-9584_run-1_T2starw.nii.gz",
        "gm_challenge/derivatives/labels/sub-9584/anat/sub-9584_run-1_T2starw_seg-manual.nii.gz",
    ),
]

#: Real scans held out from training; the model card reports Dice on these.
REAL_HELD_OUT = [
    ("sct_testing_data/t2/t2.nii.gz", "sct_testing_data/t2/t2_seg-manual.nii.gz"),
    ("sct_2014_errsm/errsm_21/t2.nii.gz", "sct_2014_errsm/errsm_21/t2_manual_segmentation.nii.gz"),
    (
        "gm_challenge/sub-10062Ses1/anat/sub-10062Ses1_run-1_T2starw.nii.gz",
        "gm_challenge/derivatives/labels/sub-10062Ses1/anat/sub-10062Ses1_run-1_T2starw_seg-manual.nii.gz",
    ),
]

PHANTOM_ACQUISITIONS = [
    phantom.SAGITTAL,
    phantom.AXIAL,
    phantom.ISOTROPIC,
    phantom.Acquisition(spacing_mm=(0.8, 0.8, 0.8), fov_mm=(40.0, 60.0, 96.0), orientation="RAS"),
    phantom.Acquisition(spacing_mm=(0.5, 0.5, 5.0), fov_mm=(40.0, 40.0, 90.0), orientation="LPS"),
    phantom.Acquisition(spacing_mm=(3.0, 0.9, 0.9), fov_mm=(36.0, 72.0, 140.0), orientation="PIL", tilt_deg=8.0),
]


def crop_around_cord(image: sitk.Image, cord: sitk.Image, margin_mm: float = 30.0) -> tuple[sitk.Image, sitk.Image]:
    """Crop a large field of view to the cord's bounding box plus ``margin_mm`` in every direction."""
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(sitk.Cast(cord > 0, sitk.sitkUInt8))
    x, y, z, sx, sy, sz = statistics.GetBoundingBox(1)
    margin = [int(np.ceil(margin_mm / s)) for s in image.GetSpacing()]
    lower = [max(0, start - m) for start, m in zip((x, y, z), margin, strict=True)]
    upper = [min(n, start + extent + m) for n, start, extent, m in zip(image.GetSize(), (x, y, z), (sx, sy, sz), margin, strict=True)]
    region = [u - lo for lo, u in zip(lower, upper, strict=True)]
    return sitk.RegionOfInterest(image, region, lower), sitk.RegionOfInterest(cord, region, lower)


def build_raw_dataset(raw_root: Path, n_phantoms: int, seed: int, uncropped_copies: int = 0) -> Path:
    """Phantoms, and two painted copies of every real training scan; the last ``uncropped_copies`` copies keep the
    scan's whole field of view (brain, neck, back muscles), the others are cropped to 30 mm around the cord."""
    folder = nnunet_raw.dataset_folder(raw_root, DATASET_ID, DATASET_NAME)
    if folder.exists():
        shutil.rmtree(folder)
    rng = np.random.default_rng(seed)
    for index in range(n_phantoms):
        acquisition = PHANTOM_ACQUISITIONS[index % len(PHANTOM_ACQUISITIONS)]
        case = phantom.make_phantom(
            seed=seed * 1000 + index,
            acquisition=acquisition,
            lesions=int(rng.integers(0, 4)),
            noise=float(rng.uniform(0.01, 0.06)),
            bias=float(rng.uniform(0.0, 0.25)),
        )
        nnunet_raw.write_case(folder, f"phantom_{index:03d}", case.image, case.labels)
    real_cases = 0
    for copy in range(2):
        for index, (image_path, cord_path) in enumerate(REAL_TRAINING):
            if not (SHARED / image_path).exists():
                print(f"skipping {image_path}: ../shared/data is not here")
                continue
            image = sitk.Cast(sitk.ReadImage(str(SHARED / image_path)), sitk.sitkFloat32)
            cord = sitk.ReadImage(str(SHARED / cord_path))
            cord = sitk.Cast(sitk.Cast(cord, sitk.sitkFloat32) > 0.5, sitk.sitkUInt8)
            cord.CopyInformation(image)
            if copy < 2 - uncropped_copies:
                image, cord = crop_around_cord(image, cord)
            painted = phantom.paint_lesions(image, cord, lesions=1 + copy, seed=seed + 17 * index + copy)
            nnunet_raw.write_case(folder, f"real_{index:02d}_{copy}", painted.image, painted.labels)
            real_cases += 1
    nnunet_raw.write_dataset_json(
        folder,
        description=f"SCIseg demo: {n_phantoms} phantoms and {real_cases} real scans with painted lesions",
    )
    return folder


def shrink_plans(plans_file: Path, configuration_name: str, spacing_mm: list[float], patch_size: list[int],
                 features: list[int], batch_size: int, batch_dice: bool | None = None) -> None:
    """Reduce one configuration's network so that it trains on a CPU, and drop the other configurations; keep
    nnU-Net's plans format (both demo recipes).

    ``spacing_mm`` and ``patch_size`` (voxels) are in nnU-Net's axis order; their length (3 or 2) is the network's:
    one stage per entry of ``features``, kernels of 3 voxels, stride 1 at the first stage and 2 after it, two
    convolutions per stage. ``batch_dice`` is set when given (else the planner's choice is kept).
    """
    plans = json.loads(plans_file.read_text())
    configuration = plans["configurations"][configuration_name]
    n_stages, axes = len(features), len(patch_size)
    configuration["spacing"] = spacing_mm
    configuration["patch_size"] = patch_size
    configuration["batch_size"] = batch_size
    if batch_dice is not None:
        configuration["batch_dice"] = batch_dice
    architecture = configuration["architecture"]["arch_kwargs"]
    architecture["n_stages"] = n_stages
    architecture["features_per_stage"] = features
    architecture["kernel_sizes"] = [[3] * axes] * n_stages
    architecture["strides"] = [[1] * axes] + [[2] * axes] * (n_stages - 1)
    architecture["n_conv_per_stage"] = [2] * n_stages
    architecture["n_conv_per_stage_decoder"] = [2] * (n_stages - 1)
    for name in list(plans["configurations"]):
        if name != configuration_name:
            del plans["configurations"][name]
    plans_file.write_text(json.dumps(plans, indent=2))


def recipe_parser(description: str, model: str, work: str, *, epochs: int, iterations: int, oversample: float,
                  oversample_help: str, seed: int, threads: int) -> argparse.ArgumentParser:
    """The options both demo recipes take (work folder, output model folder, training length, sampling, seed, threads),
    with each recipe's defaults; a recipe adds its own after them."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPOSITORY / ".work" / work)
    parser.add_argument("--output", type=Path, default=REPOSITORY / "Resources" / "Models" / model)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--iterations", type=int, default=iterations, help="training steps per epoch")
    parser.add_argument("--oversample", type=float, default=oversample, help=oversample_help)
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--threads", type=int, default=threads)
    return parser


def use_work_folder(work: Path) -> None:
    """Point nnU-Net at ``work/nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` (made if missing), and
    train without ``torch.compile`` (slow on a CPU)."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(work / name)
        (work / name).mkdir(parents=True, exist_ok=True)
    os.environ["nnUNet_compile"] = "false"


def main() -> None:
    parser = recipe_parser(__doc__, "sciseg-demo", "demo_training", epochs=35, iterations=45, oversample=0.8,
                           oversample_help="share of patches centred on cord or lesion (nnU-Net's default 0.33 starves the "
                                           "small lesion class)", seed=7, threads=2)
    parser.add_argument("--phantoms", type=int, default=36)
    parser.add_argument("--lesion-weight", type=float, default=10.0, help="BCE weight of lesion voxels (region 2)")
    parser.add_argument("--uncropped-copies", type=int, choices=(0, 1, 2), default=0,
                        help="painted copies of each real scan (of 2) that keep the whole field of view")
    parser.add_argument("--initial-checkpoint", type=Path, default=None,
                        help="start from these weights (e.g. the bundled model's checkpoint_final.pth) instead of random ones")
    parser.add_argument("--learning-rate", type=float, default=1e-2, help="initial learning rate (nnU-Net's 1e-2)")
    parser.add_argument("--package-only", action="store_true",
                        help="skip training: package the results already in --work (checkpoint_final, else checkpoint_best)")
    arguments = parser.parse_args()

    work = arguments.work.resolve()
    if arguments.package_only:
        results = work / "nnUNet_results" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}" / "nnUNetTrainerDemo__nnUNetPlans__3d_fullres"
        print(f"packaged {package_results(results, arguments.output)}")
        return
    use_work_folder(work)
    os.environ.setdefault("nnUNet_n_proc_DA", "2")

    import torch

    torch.set_num_threads(arguments.threads)
    torch.manual_seed(arguments.seed)
    started = time.time()
    folder = build_raw_dataset(work / "nnUNet_raw", arguments.phantoms, arguments.seed, arguments.uncropped_copies)
    print(f"raw dataset {folder} written in {time.time() - started:.0f} s")

    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainerDemo(nnUNetTrainer):  # noqa: N801 - nnU-Net's naming
        """nnUNetTrainer with the lesion region's positive voxels weighted in the BCE term.

        With 2 CPU cores the whole training is about 2,000 iterations; with nnU-Net's plain loss the
        tiny lesion region is still predicted empty after that many. The weight only changes training:
        the network is the one the plans describe, so the checkpoint is packaged as nnUNetTrainer's.
        """

        def _build_loss(self):
            loss = super()._build_loss()
            inner = getattr(loss, "loss", loss)  # DeepSupervisionWrapper around DC_and_BCE_loss
            weight = torch.tensor([1.0, arguments.lesion_weight], device=self.device).view(2, 1, 1, 1)
            inner.ce = torch.nn.BCEWithLogitsLoss(pos_weight=weight)
            return loss

    extract_fingerprints([DATASET_ID], num_processes=arguments.threads, check_dataset_integrity=True)
    plan_experiments([DATASET_ID])
    preprocessed = work / "nnUNet_preprocessed" / folder.name
    # Dice over the batch: steadier for the small lesion region
    shrink_plans(preprocessed / "nnUNetPlans.json", "3d_fullres", [1.0, 1.0, 1.0], [80, 64, 48], [16, 32, 64, 96], 2,
                 batch_dice=True)
    preprocess([DATASET_ID], configurations=("3d_fullres",), num_processes=(arguments.threads,))
    print(f"preprocessed in {time.time() - started:.0f} s")

    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    plans["continue_training"] = False  # nnunetv2 2.8 reads this flag from the plans dict
    trainer = nnUNetTrainerDemo(plans, "3d_fullres", "all", dataset_json, device=torch.device("cpu"))
    trainer.num_epochs = arguments.epochs
    trainer.num_iterations_per_epoch = arguments.iterations
    trainer.num_val_iterations_per_epoch = max(2, arguments.iterations // 8)
    trainer.oversample_foreground_percent = arguments.oversample
    trainer.initial_lr = arguments.learning_rate
    trainer.save_every = 5
    if arguments.initial_checkpoint is not None:
        trainer.initialize()  # every layer, the output layers included (same labels), as `sciseg finetune` does
        trainer.network.load_state_dict(load_checkpoint(arguments.initial_checkpoint)["network_weights"])
        print(f"starting from the weights of {arguments.initial_checkpoint}")
    trainer.run_training()
    print(f"trained in {time.time() - started:.0f} s")

    package_results(Path(trainer.output_folder).parent, arguments.output)
    print(f"model written to {arguments.output} ({time.time() - started:.0f} s in all)")


def package_results(results: Path, output: Path) -> Path:
    """Copy an nnU-Net results folder into ``output`` with a slim checkpoint (weights only, no optimiser).

    The demo trainer differs from nnUNetTrainer in its loss only, so the model is packaged as an
    ``nnUNetTrainer`` model (the predictor rebuilds the network from the plans with that class).
    """
    import torch

    target = output / "nnUNetTrainer__nnUNetPlans__3d_fullres"  # MODEL_CARD.md beside it is kept
    if target.exists():
        shutil.rmtree(target)
    (target / "fold_all").mkdir(parents=True)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy2(results / name, target / name)
    source = results / "fold_all" / "checkpoint_final.pth"
    if not source.is_file():
        source = results / "fold_all" / "checkpoint_best.pth"
    checkpoint = load_checkpoint(source)  # the full trainer checkpoint, loaded with weights_only=True
    keys = ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes", "current_epoch")
    slim = {key: checkpoint[key] for key in keys}
    slim["trainer_name"] = "nnUNetTrainer"
    slim["init_args"] = {**slim["init_args"], "plans": None}  # the plans are in plans.json; keep the file small
    torch.save(slim, target / "fold_all" / "checkpoint_final.pth")
    shutil.copy2(results / "fold_all" / "progress.png", target / "fold_all" / "progress.png")
    return target


if __name__ == "__main__":
    main()
