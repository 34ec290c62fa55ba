"""End to end: `sciseg segment` with the bundled demo model on CPU (phantoms and real scans)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPOSITORY, shared_file
from SCIsegLib.errors import CancelledError
from SCIsegLib.inference import CancelToken, InferenceSettings, NnUNetEngine
from SCIsegLib.metrics import dice
from SCIsegLib.models import read_model
from SCIsegLib.phantom import SAGITTAL, Acquisition, LesionSpec, make_phantom
from SCIsegLib.segment import segment_files, segment_image
from SCIsegLib.volume import reorient, write_image_atomic

LESIONS = [
    LesionSpec(center_si_mm=-15.0, length_mm=16.0, width_fraction=0.9, contrast=0.88),
    LesionSpec(center_si_mm=22.0, length_mm=10.0, width_fraction=0.8, contrast=0.85),
]


def sciseg(*arguments: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "SCIsegLib", *arguments], capture_output=True, text=True, cwd=REPOSITORY, **kwargs
    )


@pytest.fixture(scope="module")
def engine(demo_model_path: Path) -> NnUNetEngine:
    return NnUNetEngine(read_model(demo_model_path), InferenceSettings(device="cpu", threads=2))


@pytest.fixture(scope="module")
def phantom_case():
    return make_phantom(seed=101, acquisition=SAGITTAL, lesions=LESIONS)


def assert_same_grid(image: sitk.Image, reference: sitk.Image) -> None:
    assert image.GetSize() == reference.GetSize()
    assert image.GetOrigin() == reference.GetOrigin()
    assert image.GetSpacing() == reference.GetSpacing()
    assert image.GetDirection() == reference.GetDirection()


def test_cli_writes_sct_named_masks_on_the_input_grid(tmp_path: Path, demo_model_path: Path, phantom_case) -> None:
    source = write_image_atomic(phantom_case.image, tmp_path / "in" / "sub-01_T2w.nii.gz")
    result = sciseg("segment", str(source), "-o", str(tmp_path / "out"), "--model", str(demo_model_path), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["sub-01_T2w_lesion_seg.json", "sub-01_T2w_lesion_seg.nii.gz", "sub-01_T2w_sc_seg.json", "sub-01_T2w_sc_seg.nii.gz", "sub-01_T2w_sciseg_outputs.json"]
    cord = sitk.ReadImage(str(tmp_path / "out" / "sub-01_T2w_sc_seg.nii.gz"))
    lesion = sitk.ReadImage(str(tmp_path / "out" / "sub-01_T2w_lesion_seg.nii.gz"))
    for mask in (cord, lesion):
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert_same_grid(mask, sitk.ReadImage(str(source)))
    cord_array, lesion_array = sitk.GetArrayFromImage(cord), sitk.GetArrayFromImage(lesion)
    assert set(np.unique(cord_array)) <= {0, 1} and set(np.unique(lesion_array)) <= {0, 1}
    assert not np.any(lesion_array & (1 - cord_array)), "region outputs: lesion (label 2) lies inside the cord {1, 2}"
    assert dice(cord_array, sitk.GetArrayFromImage(phantom_case.cord)) > 0.8
    sidecar = json.loads((tmp_path / "out" / "sub-01_T2w_sc_seg.json").read_text())
    generated = sidecar["GeneratedBy"][0]
    assert generated["Name"] == "SCIseg" and generated["Model"]["Name"] == "sciseg-demo"
    assert len(generated["Model"]["WeightsSha256"]) == 64
    assert generated["Settings"]["step_size"] == 0.5 and generated["Settings"]["tta"] is False
    assert sidecar["VoxelCount"] == int(cord_array.sum())
    assert sidecar["Sources"] == [source.name]  # outside a BIDS dataset: its name (never an absolute path)


def test_same_scan_stored_in_other_orientations_gives_the_same_masks(engine: NnUNetEngine, phantom_case) -> None:
    """SCT reorients to RPI before the network, so the storage orientation must not change the result."""
    reference = segment_image(phantom_case.image, engine).masks
    for code in ("RAS", "LPI", "SPL"):
        stored = reorient(phantom_case.image, code)
        masks = segment_image(stored, engine).masks
        for name, mask in masks.items():
            assert_same_grid(mask, stored)
            back = reorient(mask, "PSR")
            np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(reference[name]))


def test_oblique_input_masks_lie_on_the_oblique_grid(engine: NnUNetEngine) -> None:
    case = make_phantom(seed=7, acquisition=Acquisition(spacing_mm=(1.0, 0.9, 0.9), fov_mm=(32, 56, 96), tilt_deg=12.0), lesions=1)
    result = segment_image(case.image, engine)
    assert_same_grid(result.masks["sc"], case.image)
    assert dice(sitk.GetArrayFromImage(result.masks["sc"]), sitk.GetArrayFromImage(case.cord)) > 0.7


def test_progress_events_then_cancel_leaves_no_files(tmp_path: Path, engine: NnUNetEngine) -> None:
    large = make_phantom(seed=8, acquisition=Acquisition(spacing_mm=(1.0, 0.8, 0.8), fov_mm=(48, 80, 180)), lesions=1)
    source = write_image_atomic(large.image, tmp_path / "big.nii.gz")
    events = []
    token = CancelToken()

    def on_progress(event) -> None:
        events.append(event)
        if event.stage == "predict" and event.message.startswith("tile 2/"):
            token.cancel()

    with pytest.raises(CancelledError):
        segment_files([source], tmp_path / "out", engine, settings=engine.settings, progress=on_progress, cancel=token)
    tiles = [e for e in events if e.message.startswith("tile")]
    assert len(tiles) == 2, "the run stops at the tile after the cancel request"
    total = int(tiles[0].message.split("/")[1])
    assert total > 3
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and 0.0 < fractions[-1] < 0.5
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_cli_jsonl_progress_and_sigterm_cancel(tmp_path: Path, demo_model_path: Path) -> None:
    large = make_phantom(seed=9, acquisition=Acquisition(spacing_mm=(1.0, 0.8, 0.8), fov_mm=(48, 80, 200)), lesions=1)
    source = write_image_atomic(large.image, tmp_path / "big.nii.gz")
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "SCIsegLib", "segment", str(source), "-o", str(out), "--model", str(demo_model_path),
         "--device", "cpu", "--threads", "1", "--progress", "jsonl"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPOSITORY,
    )
    events = []
    assert process.stdout is not None
    for line in process.stdout:
        events.append(json.loads(line))  # stdout carries nothing but JSON events
        if events[-1].get("stage") == "predict" and events[-1]["message"].startswith("tile"):
            sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            break
    remaining = [json.loads(line) for line in process.stdout]
    code = process.wait(timeout=60)
    assert time.monotonic() - sent < 10, "cancel must stop within a few seconds"
    assert code == 130
    assert remaining[-1]["event"] == "cancelled"
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["segment", "/no/such/file.nii.gz", "--model", "sciseg-demo"], "no such file"),
        (["segment", "{tmp}/four_d.nii.gz", "--model", "sciseg-demo"], "4D"),
        (["segment", "{tmp}/ok.nii.gz", "--model", "not-a-model"], "no model named"),
        (["segment", "{tmp}/ok.nii.gz", "--model", "sciseg-demo", "--step", "2"], "--step"),
        (["segment", "{tmp}/ok.nii.gz", "--model", "sciseg-demo", "--device", "tpu"], "unknown device"),
        (["segment"], "required"),
    ],
)
def test_cli_bad_input_exit_code_2_and_one_sentence(tmp_path: Path, arguments: list[str], words: str) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(8, 9, 10, 3)).astype(np.float32), np.eye(4)), str(tmp_path / "four_d.nii.gz"))
    write_image_atomic(make_phantom(seed=1).image, tmp_path / "ok.nii.gz")
    result = sciseg(*[a.replace("{tmp}", str(tmp_path)) for a in arguments])
    assert result.returncode == 2
    assert words in result.stderr
    assert "Traceback" not in result.stderr


def test_real_scan_segmentation_on_the_input_grid(tmp_path: Path, engine: NnUNetEngine) -> None:
    """SCT's t2 test scan (PSR, int16), held out from the demo model's training."""
    path = shared_file("sct_testing_data/t2/t2.nii.gz")
    manual = sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz")))
    [record] = segment_files([path], tmp_path, engine, settings=engine.settings, write_label_map=True)
    cord = sitk.ReadImage(str(tmp_path / "t2_sc_seg.nii.gz"))
    assert_same_grid(cord, sitk.ReadImage(str(path)))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "t2_labels.nii.gz")))
    np.testing.assert_array_equal(labels > 0, sitk.GetArrayFromImage(cord) > 0)
    assert dice(sitk.GetArrayFromImage(cord), sitk.GetArrayFromImage(manual)) > 0.6
    assert record["device"] == "cpu"


def test_demo_command(tmp_path: Path) -> None:
    result = sciseg("demo", "-o", str(tmp_path / "demo"), "--device", "cpu", env={**os.environ, "SCISEG_MODELS_DIR": str(tmp_path / "store")})
    assert result.returncode == 0, result.stderr
    assert "Dice vs truth" in result.stdout
    cord_dice = float(result.stdout.split("cord ")[1].split(",")[0])
    assert cord_dice > 0.8
    assert (tmp_path / "demo" / "sub-demo_T2w_sc_seg.nii.gz").is_file()
    assert (tmp_path / "demo" / "sub-demo_T2w_lesion_seg.nii.gz").is_file()


def test_cold_segment_imports_nothing_it_does_not_use(tmp_path: Path) -> None:
    """A cold `sciseg segment` never imports the nnU-Net trainer (plotting, scikit-learn): inference needs none of it."""
    arguments = ["segment", str(shared_file("sct_testing_data/t2/t2.nii.gz")), "--model", "sciseg-demo", "-o", str(tmp_path),
                 "--progress", "none"]
    code = (
        f"import sys\nfrom SCIsegLib.cli import main\ncode = main({arguments!r})\n"
        "heavy = [m for m in ('seaborn', 'matplotlib', 'sklearn', 'nnunetv2.training.nnUNetTrainer.nnUNetTrainer') if m in sys.modules]\n"
        "print('CODE', code, 'HEAVY', ','.join(heavy) or '-')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    assert run.stdout.strip().splitlines()[-1] == "CODE 0 HEAVY -", run.stdout + run.stderr
    assert (tmp_path / "t2_sc_seg.nii.gz").is_file()


def test_default_trainer_network_equals_the_trainers_own(demo_model_path: Path) -> None:
    """The network built without importing nnUNetTrainer is the trainer's: same parameters, same logits."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from SCIsegLib.inference.predictor import default_trainer_network

    model = read_model(demo_model_path)
    plans = PlansManager(json.loads((model.results_folder / "plans.json").read_text()))
    configuration = plans.get_configuration(model.configuration)
    ours = default_trainer_network(configuration, 1, 2)
    theirs = nnUNetTrainer.build_network_architecture(plans, configuration, 1, 2, enable_deep_supervision=False)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in theirs.state_dict().items()]
    theirs.load_state_dict(ours.state_dict())
    tile = torch.randn(1, 1, *configuration.patch_size)
    with torch.no_grad():
        assert torch.equal(ours.eval()(tile), theirs.eval()(tile))


def test_segment_exits_at_once_after_its_outputs() -> None:
    """`sciseg segment` skips the interpreter teardown (1-2 s of torch/OpenVINO clean-up) once its outputs are published."""
    from SCIsegLib.cli import QUICK_EXIT_COMMANDS, _command_of

    assert _command_of(["--verbose", "segment", "x.nii.gz"]) == "segment" and _command_of([]) is None
    assert "segment" in QUICK_EXIT_COMMANDS and "run" not in QUICK_EXIT_COMMANDS  # Dask's clean-up must run
