"""Fine-tuning an installed model on a built dataset with nnU-Net v2's own machinery (``sciseg finetune``).

Steps: the base model's plans are transferred to the new dataset (same architecture, spacing,
patch and normalisation, so the base weights fit), nnU-Net fingerprints and preprocesses the
dataset with them, ``nnUNetTrainer`` starts from the base checkpoint (all layers, the labels being
the same) for a chosen number of epochs, and the result is installed in the model store as a new
model with its lineage (parent, dataset and its hash, epochs, date, test Dice). An interrupted run
resumes from nnU-Net's ``checkpoint_latest.pth`` when started again with the same work folder.

What a work folder already holds is checked before nnU-Net reads it: its plans against the model store's
allow-list (:func:`~SCIsegLib.checkpoints.check_plans_safe`), every preprocessed ``.pkl`` (nnU-Net unpickles them)
with the checkpoint scan, and ``checkpoint_latest.pth`` with :func:`~SCIsegLib.checkpoints.load_checkpoint`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from ..checkpoints import check_dataset_json_safe, check_pickle_file, check_plans_safe, load_checkpoint, weights_only_everywhere
from ..errors import InputError
from ..metrics import dice
from ..models import ModelInfo, install, read_model


@dataclass
class FinetuneResult:
    """The registered model and what was measured."""

    model: ModelInfo
    epochs: int
    test_dice: dict[str, float | None]


def dataset_sha256(dataset_folder: Path) -> str:
    """One hash of every image and label file of an nnU-Net raw dataset (names and bytes)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in dataset_folder.rglob("*.nii.gz")):
        digest.update(str(file.relative_to(dataset_folder)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def spawned_workers() -> Iterator[None]:
    """Start multiprocessing's workers by *spawn*, not *fork*, for the block (then restore the previous method).

    The trainer runs threads (torch, the augmenter's pin-memory thread) before batchgenerators starts its
    data augmentation processes with the default context; a fork then copies locks other threads hold, and
    a forked worker can block forever on one (one was found blocked on a futex, orphaned, holding 400 MB).
    """
    import multiprocessing

    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(previous, force=True)


def _dataset_id(dataset_folder: Path) -> int:
    name = dataset_folder.name
    if not name.startswith("Dataset") or not name[7:10].isdigit():
        raise InputError(f"{dataset_folder} is not an nnU-Net raw dataset folder (DatasetXXX_Name).")
    return int(name[7:10])


def _transfer_plans(base: ModelInfo, dataset_name: str, target: Path) -> dict:
    """The base model's plans with the new dataset's name (architecture and preprocessing kept)."""
    plans = json.loads((base.results_folder / "plans.json").read_text())
    plans["dataset_name"] = dataset_name
    plans["configurations"] = {base.configuration: plans["configurations"][base.configuration]}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(plans, indent=2))
    return plans


def _check_work_folder(preprocessed: Path, plans: dict, configuration: str) -> None:
    """Refuse a work folder whose plans name code or lead outside it, or whose case properties could run code.

    nnU-Net reads the preprocessed cases from ``<preprocessed root>/<plans dataset_name>/<data_identifier>`` and
    unpickles every ``<case>.pkl`` there: the plans must name this dataset and a plain folder, and each pickle
    passes :func:`~SCIsegLib.checkpoints.check_pickle_file` (numpy arrays and plain values only).
    """
    plans_file = preprocessed / "nnUNetPlans.json"
    dataset_file = preprocessed / "dataset.json"
    check_plans_safe(plans, plans_file, json.loads(dataset_file.read_text()) if dataset_file.is_file() else None)
    identifier = plans.get("configurations", {}).get(configuration, {}).get("data_identifier", "")
    if plans.get("dataset_name") != preprocessed.name or not re.fullmatch(r"\w[\w.-]*", str(identifier)) or ".." in identifier:
        raise InputError(f"{plans_file} names another dataset or folder ({plans.get('dataset_name')!r}, {identifier!r}) "
                         "than this work folder holds; give an empty --work folder.")
    for properties in sorted((preprocessed / identifier).glob("*.pkl")):  # nnU-Net unpickles these while training
        check_pickle_file(properties)


def finetune(
    base: ModelInfo,
    dataset_folder: Path,
    *,
    name: str,
    work_dir: Path,
    epochs: int = 10,
    iterations_per_epoch: int = 50,
    learning_rate: float = 1e-3,
    device: str = "auto",
    store: Path | None = None,
) -> FinetuneResult:
    """Fine-tune ``base`` on an nnU-Net raw dataset and register the result as model ``name``."""
    from ..inference import InferenceSettings, NnUNetEngine, choose_device

    dataset_folder = Path(dataset_folder).resolve()
    if not (dataset_folder / "dataset.json").is_file():
        raise InputError(f"{dataset_folder} has no dataset.json; build it with `sciseg dataset build`.")
    dataset_json = json.loads((dataset_folder / "dataset.json").read_text())
    check_dataset_json_safe(dataset_json, dataset_folder / "dataset.json")  # nnU-Net's preprocessing reads it
    if dataset_json.get("labels") != base.labels:
        raise InputError(f"the dataset's labels {dataset_json.get('labels')} differ from the model's {base.labels}.")
    dataset_id = _dataset_id(dataset_folder)
    work_dir = Path(work_dir).resolve()
    for variable, sub in (("nnUNet_raw", None), ("nnUNet_preprocessed", "preprocessed"), ("nnUNet_results", "results")):
        path = dataset_folder.parent if sub is None else work_dir / sub
        path.mkdir(parents=True, exist_ok=True)
        os.environ[variable] = str(path)
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, preprocess
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    preprocessed = work_dir / "preprocessed" / dataset_folder.name
    plans_file = preprocessed / "nnUNetPlans.json"
    if not plans_file.is_file():
        extract_fingerprints([dataset_id], num_processes=max(1, min(4, os.cpu_count() or 1)), check_dataset_integrity=True)
        _transfer_plans(base, dataset_folder.name, plans_file)
        shutil.copy2(dataset_folder / "dataset.json", preprocessed / "dataset.json")
        preprocess([dataset_id], plans_identifier="nnUNetPlans", configurations=(base.configuration,),
                   num_processes=(max(1, min(4, os.cpu_count() or 1)),))
    plans = json.loads(plans_file.read_text())
    _check_work_folder(preprocessed, plans, base.configuration)
    plans["continue_training"] = False
    trainer = nnUNetTrainer(plans, base.configuration, "all", json.loads((preprocessed / "dataset.json").read_text()),
                            device=choose_device(device))
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations_per_epoch
    trainer.num_val_iterations_per_epoch = max(2, iterations_per_epoch // 5)
    trainer.initial_lr = learning_rate
    trainer.save_every = 1
    output = Path(trainer.output_folder)
    if (output / "checkpoint_latest.pth").is_file() and not (output / "checkpoint_final.pth").is_file():
        load_checkpoint(output / "checkpoint_latest.pth")  # refuses an unsafe file before nnU-Net opens it
        with weights_only_everywhere():  # nnU-Net's own checkpoint loading, forced to weights_only (resume after an interruption)
            trainer.load_checkpoint(str(output / "checkpoint_latest.pth"))
    elif not (output / "checkpoint_final.pth").is_file():
        trainer.initialize()
        checkpoint = load_checkpoint(base.checkpoint_files()[0])
        trainer.network.load_state_dict(checkpoint["network_weights"])
    if not (output / "checkpoint_final.pth").is_file():
        with spawned_workers():
            trainer.run_training()

    results = output.parent
    package = work_dir / "package" / results.name
    if package.parent.exists():
        shutil.rmtree(package.parent)
    (package / "fold_all").mkdir(parents=True)
    for file in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        if (results / file).is_file():
            shutil.copy2(results / file, package / file)
    final = load_checkpoint(output / "checkpoint_final.pth")
    slim = {k: final[k] for k in ("network_weights", "init_args", "trainer_name", "inference_allowed_mirroring_axes", "current_epoch")}
    torch.save(slim, package / "fold_all" / "checkpoint_final.pth")

    candidate = read_model(package.parent, name=name)
    test_dice = _test_dice(NnUNetEngine(candidate, InferenceSettings(device=device)), dataset_folder)
    lineage = {
        "parent": base.name,
        "parent_weights_sha256": base.weights_sha256(),
        "dataset": str(dataset_folder),
        "dataset_sha256": dataset_sha256(dataset_folder),
        "epochs": epochs,
        "iterations_per_epoch": iterations_per_epoch,
        "learning_rate": learning_rate,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "test_dice": test_dice,
    }
    model = install(str(package.parent), name=name, store=store, force=True, lineage=lineage)
    return FinetuneResult(model=model, epochs=epochs, test_dice=test_dice)


def _test_dice(engine, dataset_folder: Path) -> dict[str, float | None]:
    """Mean Dice of cord (labels {1, 2}) and lesion (label 2) over the held-out imagesTs/labelsTs cases."""
    from ..segment import segment_image

    scores: dict[str, list[float]] = {"sc": [], "lesion": []}
    for label_file in sorted((dataset_folder / "labelsTs").glob("*.nii.gz")):
        image_file = dataset_folder / "imagesTs" / label_file.name.replace(".nii.gz", "_0000.nii.gz")
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        masks = segment_image(sitk.ReadImage(str(image_file)), engine).masks
        scores["sc"].append(dice(sitk.GetArrayFromImage(masks["sc"]) > 0, truth > 0))
        scores["lesion"].append(dice(sitk.GetArrayFromImage(masks["lesion"]) > 0, truth == 2))
    return {k: (round(float(np.mean(v)), 4) if v else None) for k, v in scores.items()}
