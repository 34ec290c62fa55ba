"""The fast engines: agreement with SCT's call, the cord crop and its fallbacks, the compiled-model cache, engine choice."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPOSITORY, shared_file
from SCIsegLib.checkpoints import UnsafeCheckpointError
from SCIsegLib.inference import InferenceSettings, NnUNetEngine, make_engine
from SCIsegLib.inference.choice import EngineChoice, engine_candidates
from SCIsegLib.inference.cropped import cord_box, tile_count, touches_inner_face, two_pass_logits
from SCIsegLib.inference.fast import FallbackEngine, FastEngine
from SCIsegLib.inference.openvino_cache import CacheKey, CompiledModelCache
from SCIsegLib.metrics import dice
from SCIsegLib.models import read_model
from SCIsegLib.volume import array_zyx, load_image, reorient, sct_to_itk_orientation

NO_BF16 = frozenset({"sse4_2", "avx2", "fma"})
WITH_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})


def model_array(relative: str, model, crop_zyx: tuple[slice, ...] | None = None):
    image = reorient(load_image(shared_file(relative)), sct_to_itk_orientation(model.orientation))
    array = array_zyx(image).astype(np.float32)
    if crop_zyx is not None:
        array = np.ascontiguousarray(array[crop_zyx])
    return array, tuple(float(s) for s in reversed(image.GetSpacing()))


@pytest.fixture(scope="module")
def demo(demo_model_path: Path):
    return read_model(demo_model_path)


@pytest.fixture(scope="module")
def reference(demo) -> NnUNetEngine:
    return NnUNetEngine(demo, InferenceSettings(device="cpu"))


@pytest.fixture(scope="module")
def lesion_scan(demo, reference):
    """t2_fake_lesion in the model orientation, its spacing and the reference's label map."""
    array, spacing = model_array("sct_testing_data/t2/t2_fake_lesion.nii.gz", demo)
    return array, spacing, reference.predict(array, spacing).label_map


@pytest.fixture(scope="module")
def small_scan(demo, reference):
    array, spacing = model_array("sct_testing_data/t2/t2.nii.gz", demo)
    return array, spacing, reference.predict(array, spacing).label_map


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> CompiledModelCache:
    return CompiledModelCache(tmp_path_factory.mktemp("compiled"))


# ---------------------------------------------------------------- agreement with SCT's call (demo model, real scans)

@pytest.mark.parametrize("runtime, precision", [("openvino", "bf16"), ("openvino", "fp32"), ("torch", "bf16")])
def test_fast_engine_agrees_with_reference_on_a_real_lesion_scan(demo, lesion_scan, cache, runtime, precision):
    """t2_fake_lesion (99x99x29 at 0.8 mm, a painted lesion): cord Dice >= 0.99, lesion Dice >= 0.97."""
    array, spacing, expected = lesion_scan
    assert (expected >= 1).sum() > 1000 and (expected == 2).sum() > 20  # the reference sees cord and lesion
    output = FastEngine(demo, InferenceSettings(), runtime, precision, cache).predict(array, spacing)
    assert output.run["engine"] == runtime and output.run["precision"] == precision
    assert dice(output.label_map >= 1, expected >= 1) >= 0.99
    assert dice(output.label_map == 2, expected == 2) >= 0.97


def test_cropped_run_on_a_full_field_of_view_scan_matches_the_reference(demo, reference, cache, monkeypatch):
    """errsm_21 (a 100x200x52 part of the full-FOV sagittal scan): the two-pass run crops and agrees.

    With the demo model's small tiles the first pass costs 16 of the run's 24 tiles, so the crop is forced here
    (it would be skipped as not paying) to check that the cropped labels are the reference's.
    """
    import SCIsegLib.inference.cropped as cropped

    monkeypatch.setattr(cropped, "MAX_FIRST_PASS_SHARE", 1.0)
    array, spacing = model_array("sct_2014_errsm/errsm_21/t2.nii.gz", demo, (slice(60, 160), slice(100, 300), slice(None)))
    expected = reference.predict(array, spacing).label_map
    output = FastEngine(demo, InferenceSettings(crop=True), "openvino", "bf16", cache).predict(array, spacing)
    assert output.run["crop_note"] == "cropped", output.run
    box = output.run["crop_box"]
    assert (np.array(box["stop_zyx"]) - np.array(box["start_zyx"])).prod() < array.size
    inside = tuple(slice(a, b) for a, b in zip(box["start_zyx"], box["stop_zyx"], strict=True))
    assert (expected >= 1).sum() > 1000 and (expected[inside] >= 1).sum() == (expected >= 1).sum()
    assert dice(output.label_map >= 1, expected >= 1) >= 0.99


# ---------------------------------------------------------------- the crop's fallbacks (logic on a scripted predictor)

class ScriptedPredictor:
    """Stands for nnU-Net's predictor: logits from a mask per pass (coarse = step 1.0), records what ran."""

    def __init__(self, coarse: np.ndarray, fine: np.ndarray, patch=(8, 8, 8)) -> None:
        from types import SimpleNamespace

        self.coarse, self.fine = coarse, fine
        self.tile_step_size, self.tile_box = 0.5, None
        self.configuration_manager = SimpleNamespace(patch_size=list(patch), spacing=[1.0, 1.0, 1.0])
        self.label_manager = SimpleNamespace(has_regions=True, num_segmentation_heads=1,
                                             convert_logits_to_segmentation=lambda logits: (logits[0] > 0).numpy())
        self.calls: list[tuple[float, object]] = []

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.tile_step_size, self.tile_box))
        mask = self.coarse if self.tile_step_size == 1.0 else self.fine
        return torch.from_numpy(np.where(mask, 5.0, -5.0).astype(np.float16))[None]


def cube(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


def test_crop_runs_the_fine_pass_only_around_the_cord():
    shape = (40, 40, 40)
    cord = cube(shape, (5, 18, 18), (35, 22, 22))
    predictor = ScriptedPredictor(cord, cord)
    result = two_pass_logits(predictor, torch.zeros((1, *shape)), margin_mm=3)
    assert result.note == "cropped" and result.box == ((2, 38), (15, 25), (15, 25))
    assert [step for step, _ in predictor.calls] == [1.0, 0.5] and predictor.calls[1][1] == (result.box, shape)
    assert np.array_equal((result.logits[0] > 0).numpy(), cord)  # inside: the fine pass; outside: background


def test_crop_falls_back_to_the_whole_image_when_the_first_pass_finds_nothing():
    shape = (40, 40, 40)
    fine = cube(shape, (5, 18, 18), (35, 22, 22))
    predictor = ScriptedPredictor(np.zeros(shape, bool), fine)
    result = two_pass_logits(predictor, torch.zeros((1, *shape)))
    assert result.note == "no cord found by the first pass" and result.box is None
    assert predictor.calls[-1] == (0.5, None) and np.array_equal((result.logits[0] > 0).numpy(), fine)


def test_crop_falls_back_when_the_cord_touches_the_box_edge():
    shape = (40, 40, 40)
    coarse = cube(shape, (10, 18, 18), (20, 22, 22))  # the first pass saw only part of the cord
    fine = cube(shape, (0, 18, 18), (40, 22, 22))
    predictor = ScriptedPredictor(coarse, fine)
    result = two_pass_logits(predictor, torch.zeros((1, *shape)), margin_mm=2)
    assert result.note == "cord touches the box edge" and result.box is None
    assert [c[1] is None for c in predictor.calls] == [True, False, True]
    assert np.array_equal((result.logits[0] > 0).numpy(), fine)


def test_crop_is_skipped_for_a_scan_smaller_than_a_tile_and_when_it_cannot_pay():
    small = (6, 8, 5)
    predictor = ScriptedPredictor(np.ones(small, bool), np.ones(small, bool))
    assert two_pass_logits(predictor, torch.zeros((1, *small))).note == "smaller than a tile"
    assert predictor.calls == [(0.5, None)]
    two_tiles = (12, 8, 8)  # 2 tiles at step 1.0 and 2 at step 0.5: the first pass would cost as much as the run
    predictor = ScriptedPredictor(np.ones(two_tiles, bool), np.ones(two_tiles, bool))
    assert two_pass_logits(predictor, torch.zeros((1, *two_tiles))).note.startswith("crop would not pay")
    assert tile_count((215, 384, 52), (192, 256, 48), 0.5) == 8 and tile_count((215, 384, 52), (192, 256, 48), 1.0) == 8


def test_cord_box_and_inner_faces():
    mask = cube((20, 30, 40), (5, 10, 0), (8, 12, 40))
    assert cord_box(mask, (2, 2, 2), (1, 1, 1)) == ((3, 10), (8, 14), (0, 40))
    assert cord_box(mask, (0, 0, 0), (10, 10, 10)) == ((2, 12), (6, 16), (0, 40))
    assert cord_box(np.zeros((4, 4, 4), bool), (1, 1, 1), (1, 1, 1)) is None
    box = ((3, 10), (8, 14), (0, 40))
    inside = mask[3:10, 8:14, 0:40]
    assert not touches_inner_face(inside, box, mask.shape)  # along x it spans the image: image faces are fine
    assert touches_inner_face(mask[5:8, 8:14, :], ((5, 8), (8, 14), (0, 40)), mask.shape)


# ---------------------------------------------------------------- the compiled-model cache

class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def tiny_key(tmp_path: Path, weights: bytes) -> CacheKey:
    checkpoint = tmp_path / "checkpoint.pth"
    checkpoint.write_bytes(weights)
    import hashlib

    return CacheKey(str(tmp_path), hashlib.sha256(weights).hexdigest(), "0", (1, 1, 8, 8, 8), "fp32", "test cpu", "test")


def test_compiled_model_cache_hit_corruption_and_invalidation(tmp_path: Path):
    import openvino as ov

    core, network, x = ov.Core(), Tiny().eval(), torch.randn(1, 1, 8, 8, 8)
    fp32 = {"INFERENCE_PRECISION_HINT": "f32"}  # OpenVINO's default on a bf16 CPU is bf16
    cache = CompiledModelCache(tmp_path / "cache")
    build = lambda: ov.convert_model(network, example_input=x)  # noqa: E731
    key = tiny_key(tmp_path, b"weights one")
    compiled, status = cache.load_or_build(key, core, fp32, build)
    assert status == "built"
    expected = network(x).detach().numpy()
    assert np.allclose(compiled(x.numpy())[0], expected, atol=1e-5)
    compiled, status = cache.load_or_build(key, core, fp32, build)
    assert status == "cached" and np.allclose(compiled(x.numpy())[0], expected, atol=1e-5)

    blob, manifest = cache.paths(key)
    blob.write_bytes(blob.read_bytes()[: len(blob.read_bytes()) // 2])  # a truncated (corrupt) blob
    compiled, status = cache.load_or_build(key, core, fp32, build)
    assert status == "rebuilt" and np.allclose(compiled(x.numpy())[0], expected, atol=1e-5)
    assert cache.load_or_build(key, core, fp32, build)[1] == "cached"

    new_key = tiny_key(tmp_path, b"weights two")  # the checkpoint changed: a new entry, the old one removed
    assert cache.load_or_build(new_key, core, fp32, build)[1] == "built"
    assert not blob.exists() and not manifest.exists() and cache.paths(new_key)[0].exists()


def test_openvino_engine_uses_the_cache_and_rebuilds_after_the_weights_change(demo, tmp_path: Path):
    model_copy = tmp_path / "model"
    shutil.copytree(demo.path, model_copy)
    cache = CompiledModelCache(tmp_path / "cache")
    first = FastEngine(read_model(model_copy), InferenceSettings(), "openvino", "fp32", cache)
    again = FastEngine(read_model(model_copy), InferenceSettings(), "openvino", "fp32", cache)
    assert first.cache_status == ["built"] and again.cache_status == ["cached"]
    checkpoint_file = read_model(model_copy).checkpoint_files()[0]
    checkpoint = torch.load(checkpoint_file, weights_only=False)
    for tensor in checkpoint["network_weights"].values():
        tensor.mul_(1.01)
    torch.save(checkpoint, checkpoint_file)
    assert FastEngine(read_model(model_copy), InferenceSettings(), "openvino", "fp32", cache).cache_status == ["built"]


# ---------------------------------------------------------------- engine choice and fallbacks

def test_engine_choice_follows_the_cpu_and_the_gpu():
    common = dict(device="auto", cuda=False, cuda_bf16=False, mps=False, openvino=True)
    assert engine_candidates("auto", cpu_flags=WITH_BF16, **common)[0] == EngineChoice("openvino", "bf16")
    without = engine_candidates("auto", cpu_flags=NO_BF16, **common)
    assert without == [EngineChoice("openvino", "fp32"), EngineChoice("reference", "fp32")]  # no emulated bf16
    assert engine_candidates("reference", cpu_flags=WITH_BF16, **common) == [EngineChoice("reference", "fp32")]
    gpu = dict(common, cuda=True)
    assert engine_candidates("auto", cpu_flags=NO_BF16, **gpu)[0] == EngineChoice("cuda", "fp16")
    assert engine_candidates("auto", cpu_flags=NO_BF16, **dict(gpu, cuda_bf16=True))[0] == EngineChoice("cuda", "bf16")
    assert engine_candidates("auto", cpu_flags=WITH_BF16, **dict(gpu, device="cpu"))[0] == EngineChoice("openvino", "bf16")
    assert engine_candidates("auto", cpu_flags=WITH_BF16, **dict(common, openvino=False))[0] == EngineChoice("torch", "bf16")
    with pytest.raises(Exception, match="CUDA"):
        engine_candidates("cuda", cpu_flags=NO_BF16, **common)


def test_a_cpu_without_bf16_gets_openvino_fp32(demo, cache, monkeypatch):
    import SCIsegLib.inference.choice as choice

    monkeypatch.setattr(choice, "available_devices", lambda: {"cpu": "CPU"})
    engine = make_engine(demo, InferenceSettings(engine="auto"), cpu_flags_reader=lambda: NO_BF16, cache=cache)
    assert isinstance(engine, FallbackEngine) and (engine.fast.runtime, engine.fast.precision) == ("openvino", "fp32")


def test_a_fast_engine_that_cannot_start_falls_back_to_the_reference_with_a_warning(demo, small_scan, monkeypatch):
    import SCIsegLib.inference.fast as fast

    def broken(self, *args, **kwargs):
        raise RuntimeError("no OpenVINO CPU plugin")

    monkeypatch.setattr(fast.FastEngine, "__init__", broken)
    with pytest.warns(RuntimeWarning, match="could not start"):
        engine = make_engine(demo, InferenceSettings(engine="auto", device="cpu"), cpu_flags_reader=lambda: WITH_BF16)
    array, spacing, expected = small_scan
    output = engine.predict(array, spacing)
    assert output.run["engine"] == "reference" and len(output.run["fallbacks"]) == 3
    assert np.array_equal(output.label_map, expected)


def test_a_fast_engine_that_fails_on_an_image_falls_back_to_the_reference(demo, small_scan, cache):
    engine = FallbackEngine(FastEngine(demo, InferenceSettings(), "openvino", "fp32", cache), [])

    def broken(*args, **kwargs):
        raise RuntimeError("tile shape mismatch")

    engine.fast.predict = broken
    array, spacing, expected = small_scan
    with pytest.warns(RuntimeWarning, match="failed"):
        output = engine.predict(array, spacing)
    assert output.run["engine"] == "reference" and "tile shape mismatch" in output.run["fallbacks"][0]
    assert np.array_equal(output.label_map, expected)


# ---------------------------------------------------------------- safe loading and the CLI

class Payload:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_the_predictor_refuses_a_checkpoint_that_would_run_code(demo, tmp_path: Path):
    model_copy = tmp_path / "model"
    shutil.copytree(demo.path, model_copy)
    checkpoint_file = read_model(model_copy).checkpoint_files()[0]
    checkpoint = torch.load(checkpoint_file, weights_only=False)
    checkpoint["payload"] = Payload()
    with open(checkpoint_file, "wb") as stream:
        torch.save(checkpoint, stream, pickle_module=pickle)
    for build in (lambda m: NnUNetEngine(m, InferenceSettings()),
                  lambda m: FastEngine(m, InferenceSettings(), "torch", "bf16")):
        with pytest.raises(UnsafeCheckpointError):
            build(read_model(model_copy))


@pytest.mark.parametrize("engine, expected", [("openvino", "openvino")])
def test_cli_engine_option_is_recorded_in_the_sidecar(demo_model_path, tmp_path: Path, engine, expected):
    source = shared_file("sct_testing_data/t2/t2.nii.gz")
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "SCISEG_COMPILED_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "SCIsegLib", "segment", str(source), "-o", str(tmp_path),
                             "--model", str(demo_model_path), "--device", "cpu", "--engine", engine, "--progress", "none"],
                            capture_output=True, text=True, cwd=REPOSITORY, env=env)
    assert result.returncode == 0, result.stderr
    sidecar = json.loads((tmp_path / "t2_sc_seg.json").read_text())
    ran = sidecar["GeneratedBy"][0]["Engine"]
    assert ran["engine"] == expected and "precision" in ran and "crop_box" in ran
    assert sidecar["GeneratedBy"][0]["Settings"]["engine"] == engine
