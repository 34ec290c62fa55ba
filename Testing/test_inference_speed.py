"""The fast engines: agreement with SCT's call, the cord crop and its fallbacks, the compiled-model cache, engine choice."""

from __future__ import annotations

import json
import math
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
from SCIsegLib.inference.cropped import (
    central_window,
    cord_pieces,
    first_pass_shape,
    fitted_tile,
    foreground_bounds,
    locate_cord,
    network_strides,
    plan_box,
    superior_inferior_axis,
    tile_count,
    tile_plan,
    tile_size,
    touched_faces,
    weighing_tiles,
    touches_inner_face,
    two_pass_logits,
    widen_to_image_faces,
)
from SCIsegLib.inference.fast import FallbackEngine, FastEngine
from SCIsegLib.inference.openvino_cache import CacheKey, CompiledModelCache
from SCIsegLib.inference.runtimes import convert_network
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


@pytest.fixture(scope="module")
def painted_full_fov(demo, reference):
    """errsm_21's full-FOV sagittal T2w (52x384x215) with 2 lesions painted in its manual cord mask, and SCT's call on it."""
    from SCIsegLib.phantom import paint_lesions

    cord = load_image(shared_file("sct_2014_errsm/errsm_21/t2_manual_segmentation.nii.gz")) > 0.5
    painted = paint_lesions(load_image(shared_file("sct_2014_errsm/errsm_21/t2.nii.gz")), cord, lesions=2, seed=1).image
    image = reorient(painted, sct_to_itk_orientation(demo.orientation))
    array = array_zyx(image).astype(np.float32)
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    return array, spacing, reference.predict(array, spacing).label_map


@pytest.mark.parametrize("crop", ["fast", "exact"])
def test_cropped_run_on_a_full_field_of_view_scan_agrees_with_the_reference(demo, cache, painted_full_fov, crop):
    """Both crops run far fewer tiles than the reference and agree with it on the cord and on the lesions in it.

    Measured on the whole image, the demo model also calls a few specks far from the cord "cord" or
    "lesion"; the crop never looks there (``benchmarks/inference_speed.md`` gives both figures), so the
    agreement is taken on the reference's main cord piece and on lesions within 3 voxels of it.
    """
    from scipy import ndimage

    from SCIsegLib.postprocess import keep_largest_component

    array, spacing, expected = painted_full_fov
    engine = FastEngine(demo, InferenceSettings(crop=crop), "openvino", "bf16", cache)
    planned: list[int] = []
    engine._predictor.slicers_hook = planned.append
    output = engine.predict(array, spacing)
    assert output.run["crop_note"] == "cropped" and output.run["crop"] == crop, output.run
    whole = tile_count((215, 382, 52), tuple(demo_patch(demo)), 0.5)  # the preprocessed grid of this scan
    # pass 1: the central window (not trusted on this sagittal scan of neck and brain, whose cord does not run along
    # 90 % of it), then the whole shrunk image: "fast" runs each as one tile fitted to it, "exact" the plan's tiles
    # (2, then 8); pass 2: the plan's tiles around the cord
    first = [1, 1] if crop == "fast" else [2, 8]
    assert planned[:2] == first and len(planned) == 3 and sum(planned) < whole / 2, (planned, whole)
    cord = keep_largest_component(expected >= 1)
    assert cord.sum() > 10000 and (expected == 2).sum() > 300
    assert dice(keep_largest_component(output.label_map >= 1), cord) >= 0.99
    near = ndimage.binary_dilation(cord, iterations=3)
    assert ((expected == 2) & near).sum() > 300
    assert dice((output.label_map == 2) & near, (expected == 2) & near) >= 0.97


@pytest.fixture(scope="module")
def painted_axial(demo, reference):
    """gm_challenge sub-10062Ses1 (held out of the demo's training): an axial T2*w slab, 256x256x20 voxels of
    0.7x0.7x2.5 mm (180 mm across), with 2 lesions painted in its manual cord mask, and SCT's call on it."""
    from SCIsegLib.phantom import paint_lesions

    cord = load_image(shared_file(
        "gm_challenge/derivatives/labels/sub-10062Ses1/anat/sub-10062Ses1_run-1_T2starw_seg-manual.nii.gz")) > 0.5
    painted = paint_lesions(load_image(shared_file("gm_challenge/sub-10062Ses1/anat/sub-10062Ses1_run-1_T2starw.nii.gz")),
                            cord, lesions=2, seed=3).image
    image = reorient(painted, sct_to_itk_orientation(demo.orientation))
    array = array_zyx(image).astype(np.float32)
    spacing = tuple(float(s) for s in reversed(image.GetSpacing()))
    return array, spacing, reference.predict(array, spacing).label_map


def test_an_axial_slab_is_located_in_the_central_window_and_agrees_with_the_reference(demo, cache, painted_axial):
    """Pass 1 runs one central window instead of the shrunk slab's 6 tiles, pass 2 one tile of the reference's 35."""
    from scipy import ndimage

    from SCIsegLib.postprocess import keep_largest_component

    array, spacing, expected = painted_axial
    engine = FastEngine(demo, InferenceSettings(), "openvino", "bf16", cache)
    assert engine.along_axis == 0  # RPI, no transpose: the grid's axis 0 runs along the body
    planned: list[int] = []
    engine._predictor.slicers_hook = planned.append
    output = engine.predict(array, spacing)
    assert output.run["crop_note"] == "cropped", output.run
    assert tile_count((50, 180, 179), tuple(demo_patch(demo)), 0.5) == 35 and planned == [1, 1], planned
    cord = keep_largest_component(expected >= 1)
    assert cord.sum() > 3000 and (expected == 2).sum() > 50
    assert dice(keep_largest_component(output.label_map >= 1), cord) >= 0.99
    near = ndimage.binary_dilation(cord, iterations=3)
    assert dice((output.label_map == 2) & near, (expected == 2) & near) >= 0.97


def test_exact_crop_gives_the_reference_logits_around_the_cord(demo):
    """crop "exact" on the reference's own runtime (torch fp32): the logits within the margin around the cord are
    bit-identical to those of SCT's call, while fewer tiles run."""
    from SCIsegLib.inference.predictor import preprocess

    array, spacing = model_array("sct_2014_errsm/errsm_21/t2.nii.gz", demo, (slice(60, 160), slice(100, 300), slice(None)))
    engine = FastEngine(demo, InferenceSettings(crop="exact"), "torch", "fp32")
    predictor = engine._predictor
    data, _ = preprocess(predictor, array, spacing)
    reference = predictor.predict_logits_from_preprocessed_data(data)
    bounds = locate_cord(predictor, data)
    assert bounds is not None
    planned: list[int] = []
    predictor.slicers_hook = planned.append
    result = two_pass_logits(predictor, data, margin_mm=10, locate=lambda _p, _d: bounds, single_tile_axes=False)
    shape = tuple(data.shape[1:])
    assert result.note == "cropped" and planned[0] < tile_count(shape, tuple(demo_patch(demo)), 0.5), planned
    near = (slice(None), *(slice(max(a - 10, 0), min(b + 10, n)) for (a, b), n in zip(bounds, shape, strict=True)))
    assert torch.equal(result.logits[near], reference[near])


def demo_patch(model) -> list[int]:
    plans = json.loads((model.results_folder / "plans.json").read_text())
    return plans["configurations"]["3d_fullres"]["patch_size"]


# ---------------------------------------------------------------- the crop's plan and fallbacks (scripted predictor)

class ThresholdPredictor:
    """Stands for nnU-Net's predictor: its "network" calls foreground where the input is above 0.5; records each pass."""

    def __init__(self, patch=(8, 8, 8)) -> None:
        from types import SimpleNamespace

        self.tile_step_size, self.tile_positions = 0.5, None
        self.configuration_manager = SimpleNamespace(patch_size=list(patch), spacing=[1.0, 1.0, 1.0])
        self.label_manager = SimpleNamespace(has_regions=True, num_segmentation_heads=1,
                                             convert_logits_to_segmentation=lambda logits: (logits[0] > 0).numpy())
        self.calls: list[tuple[float, tuple[int, ...], object]] = []

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.tile_step_size, tuple(data.shape[1:]), self.tile_positions))
        return torch.where(data[:1] > 0.5, 5.0, -5.0).to(torch.float16)


def cube(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


def image_of(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask.astype(np.float32))[None]


def test_crop_finds_the_cord_on_a_shrunk_image_and_runs_the_fine_pass_only_around_it():
    shape = (40, 40, 40)
    cord = cube(shape, (5, 18, 18), (35, 22, 22))
    predictor = ThresholdPredictor()
    result = two_pass_logits(predictor, image_of(cord), margin_mm=3)
    assert result.note == "cropped"
    (first_step, first_shape, _), (fine_step, fine_shape, positions) = predictor.calls
    assert first_step == 1.0 and first_shape == first_pass_shape(shape, (8, 8, 8)) == (27, 27, 27)
    assert fine_step == 0.5 and fine_shape == tuple(b - a for a, b in result.box) and positions is not None
    low, high = np.array([5, 18, 18]) - 3, np.array([35, 22, 22]) + 3
    assert all(a <= lo and b >= hi for (a, b), lo, hi in zip(result.box, low, high, strict=True))  # cord + margin inside
    assert np.array_equal((result.logits[0] > 0).numpy(), cord)  # inside: the fine pass; outside: background
    assert [len(p) for p in positions] == [9, 5, 5]  # of the reference's 9 x 9 x 9 tiles


def test_tile_plan_keeps_the_reference_tiles_or_one_tile():
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    shape, patch = (40, 40, 12), (8, 8, 8)
    reference = compute_steps_for_sliding_window(shape, patch, 0.5)
    plan = tile_plan(((5, 35), (18, 22), (5, 7)), shape, patch, 0.5, (1, 1, 1))
    # z: cord + margin (4..36) needs several tiles: exactly the reference's tiles that meet it
    assert plan[0] == [int(q) for q in reference[0] if q < 36 and q + 8 > 4] and len(plan[0]) > 1
    # y: 17..23 fits one tile, which 3 reference tiles meet: the reference tile holding it (16..24)
    assert plan[1] == [16] and sum(1 for q in reference[1] if q < 23 and q + 8 > 17) == 3
    # x: 4..8: the reference runs 2 overlapping tiles (0 and 4), both hold it, centres 4 and 8 tie: the first
    assert list(reference[2]) == [0, 4] and plan[2] == [0]
    assert plan_box(plan, shape, patch) == ((0, 40), (16, 24), (0, 8))
    # x: 3..10 fits one tile but no reference tile holds it: the reference's tiles that meet it (a tile placed
    # elsewhere would see other context than any reference tile)
    assert tile_plan(((5, 35), (18, 22), (4, 9)), shape, patch, 0.5, (1, 1, 1))[2] == [0, 4]
    short = tile_plan(((0, 5), (1, 3), (0, 4)), (6, 40, 5), patch, 0.5, (1, 1, 1))
    assert short[0] == [0] and short[2] == [0]  # axes shorter than a tile: one (padded) tile


def test_fast_crop_drops_the_reference_tiles_that_weigh_nothing_on_the_cord():
    """An axial slab 161 voxels across, SCIseg's 48-voxel tile: the reference runs 6 tiles along that axis and no
    one of them holds the cord (73..91) and its margin (63..101); the two whose gaussians carry the cord run."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    positions = [int(q) for q in compute_steps_for_sliding_window((51, 191, 161), (192, 256, 48), 0.5)[2]]
    assert positions == [0, 23, 45, 68, 90, 113]
    meeting = [q for q in positions if q < 101 and q + 48 > 63]
    assert meeting == [23, 45, 68, 90]
    assert weighing_tiles(meeting, positions, 48, (73, 91), (63, 101)) == [45, 68]
    # the share is nnU-Net's: tile 90's gaussian (centre 114, sigma 6) is 0.035 % of the blend at voxel 90
    assert weighing_tiles(meeting, positions, 48, (73, 91), (63, 101), min_share=0.0003) == [45, 68, 90]
    # tiles that would leave part of the margin uncovered are not dropped
    assert weighing_tiles(meeting, positions, 48, (73, 91), (40, 101)) == meeting
    plan = tile_plan(((0, 51), (80, 110), (73, 91)), (51, 191, 161), (192, 256, 48), 0.5, (10, 10, 10))
    assert plan == [[0], [0], [45, 68]]
    assert tile_plan(((0, 51), (80, 110), (73, 91)), (51, 191, 161), (192, 256, 48), 0.5, (10, 10, 10),
                     single_tile_axes=False)[2] == [23, 45, 68, 90]  # exact: every reference tile that meets them


def test_the_first_pass_runs_one_tile_fitted_to_the_shrunk_image():
    """SCIseg's plan (strides 32, 32, 8): errsm_21's 215x382x52 grid shrunk 1.5x is one 160x256x40 tile, not 192x256x48."""
    assert first_pass_shape((215, 382, 52), (192, 256, 48)) == (192, 256, 48)  # the plan's tiles: shrunk to the tile only
    small = first_pass_shape((215, 382, 52), (192, 256, 48), fitted=True)
    assert small == (144, 255, 35) and fitted_tile(small, (32, 32, 8)) == (160, 256, 40)
    assert math.prod(fitted_tile(small, (32, 32, 8))) < 0.7 * 192 * 256 * 48
    assert fitted_tile((1, 33, 0), (32, 32, 8)) == (32, 64, 8)


def test_network_strides_and_the_tile_size_override(demo):
    """The demo plan's strides multiply to 8 per axis; within ``tile_size`` nnU-Net's sliding window uses the given tile."""
    from SCIsegLib.inference.predictor import build_predictor

    predictor, _ = build_predictor(demo, InferenceSettings(), torch.device("cpu"), on_device=False)
    assert network_strides(predictor) == (8, 8, 8)
    planned = list(predictor.configuration_manager.patch_size)
    shapes: list[tuple] = []
    predictor.network.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    with tile_size(predictor, (24, 16, 16)):
        logits = predictor.predict_logits_from_preprocessed_data(torch.zeros(1, 20, 16, 16))
    assert shapes == [(1, 1, 24, 16, 16)] and tuple(logits.shape[1:]) == (20, 16, 16)  # padded to the tile, cut back
    assert list(predictor.configuration_manager.patch_size) == planned
    predictor.configuration_manager.configuration.pop("architecture")
    assert network_strides(predictor) is None  # an old plan that does not say: the plan's tiles only


def test_openvino_runs_tiles_of_any_size_from_one_cached_conversion(demo, reference, tmp_path: Path):
    """The converted network keeps its tile size free: a fitted tile gives torch fp32's logits; the IR is reused."""
    cache = CompiledModelCache(tmp_path / "cache")
    engine = FastEngine(demo, InferenceSettings(), "openvino", "fp32", cache)
    network = engine._predictor.network
    assert network.any_shape and network.free_status == ["built"] and network.cache_status == ["built"]
    assert engine.strides == (8, 8, 8)
    x = torch.randn(1, 1, 40, 24, 16)
    with torch.no_grad():
        expected = reference._predictor.network(x).numpy()
    assert np.abs(network(x).numpy() - expected).max() < 0.01
    again = FastEngine(demo, InferenceSettings(), "openvino", "fp32", cache)._predictor.network
    assert again.free_status == ["cached"] and again.cache_status == ["cached"]
    assert np.abs(again(x).numpy() - expected).max() < 0.01
    exact = FastEngine(demo, InferenceSettings(crop="exact"), "openvino", "fp32", cache)
    assert exact.strides is None and not exact._predictor.network.any_shape  # --crop exact: the plan's tiles, as before


def test_crop_falls_back_to_the_whole_image_when_the_first_pass_finds_nothing():
    shape = (40, 40, 40)
    cord = cube(shape, (5, 18, 18), (35, 22, 22))
    predictor = ThresholdPredictor()
    result = two_pass_logits(predictor, image_of(cord), locate=lambda _p, _d: None)
    assert result.note == "no cord found by the first pass" and result.box is None
    assert predictor.calls == [(0.5, shape, None)] and np.array_equal((result.logits[0] > 0).numpy(), cord)


def test_crop_follows_a_cord_that_touches_the_box_edge_and_falls_back_when_it_still_does():
    shape = (40, 40, 40)
    cord = cube(shape, (0, 18, 18), (40, 22, 22))
    seen_partly = ((15, 20), (18, 22), (18, 22))  # the first pass saw only part of the cord

    predictor = ThresholdPredictor()
    result = two_pass_logits(predictor, image_of(cord), margin_mm=5, locate=lambda _p, _d: seen_partly)
    assert result.note == "cropped (box widened 1x where the cord touched it)"
    assert result.box is not None and result.box[0] == (0, 40)  # widened to both z faces of the image
    assert [positions is None for _, _, positions in predictor.calls] == [False, False]
    assert np.array_equal((result.logits[0] > 0).numpy(), cord)

    predictor = ThresholdPredictor()
    result = two_pass_logits(predictor, image_of(cord), margin_mm=5, locate=lambda _p, _d: seen_partly, max_widenings=0)
    assert result.note == "cord touches the box edge" and result.box is None
    assert [positions is None for _, _, positions in predictor.calls] == [False, True]
    assert np.array_equal((result.logits[0] > 0).numpy(), cord)


def test_only_the_cord_in_line_touches_the_box_and_a_speck_beside_it_does_not_widen_it():
    shape = (40, 40, 40)
    cord = cube(shape, (0, 18, 18), (40, 22, 22))
    speck = cube(shape, (20, 26, 9), (21, 28, 11))  # near a face of the box (x = 8), 8 mm beside the cord
    bounds = ((0, 40), (18, 22), (18, 22))
    predictor = ThresholdPredictor()
    result = two_pass_logits(predictor, image_of(cord | speck), margin_mm=3, locate=lambda _p, _d: bounds)
    assert result.note.startswith("cropped (box widened")  # without the body's axis any foreground counts
    predictor = ThresholdPredictor()
    result = two_pass_logits(predictor, image_of(cord | speck), margin_mm=3, locate=lambda _p, _d: bounds, along_axis=0)
    assert result.note == "cropped" and result.box == ((0, 40), (8, 32), (8, 32)), result.box
    # the cord itself within TOUCH_BAND_MM (4 mm) of a face, not on it, still widens the box
    near_face = cube(shape, (0, 18, 18), (40, 22, 22)) | cube(shape, (0, 22, 18), (10, 30, 22))  # 2 voxels from y = 32
    predictor = ThresholdPredictor()
    result = two_pass_logits(predictor, image_of(near_face), margin_mm=3, locate=lambda _p, _d: bounds, along_axis=0)
    assert result.note.startswith("cropped (box widened") and result.box[1][1] == 40, result


def test_touched_faces_and_widening():
    mask = cube((20, 30, 40), (0, 10, 5), (4, 12, 8))
    box = ((0, 4), (9, 12), (5, 9))
    # z: low side is the image's face (not counted), high side touched; y: high side touched; x: low side touched
    assert touched_faces(mask[0:4, 9:12, 5:9], box, (20, 30, 40)) == [(0, 1), (1, 1), (2, 0)]
    assert widen_to_image_faces(((0, 4), (10, 12), (5, 8)), [(0, 1), (1, 1), (2, 0)], (20, 30, 40)) == ((0, 20), (10, 30), (0, 8))


def test_crop_is_skipped_when_small_when_it_cannot_pay_and_when_the_cord_needs_every_tile():
    small = (6, 8, 5)
    predictor = ThresholdPredictor()
    assert two_pass_logits(predictor, image_of(np.ones(small, bool))).note == "smaller than a tile"
    assert predictor.calls == [(0.5, small, None)]
    two_tiles = (12, 8, 8)  # 2 tiles at step 0.5; the first pass + one tile cost as much
    predictor = ThresholdPredictor()
    assert two_pass_logits(predictor, image_of(np.ones(two_tiles, bool))).note.startswith("crop would not pay")
    everywhere = (40, 40, 40)
    predictor = ThresholdPredictor()
    assert two_pass_logits(predictor, image_of(np.ones(everywhere, bool))).note == "the cord needs every tile"
    assert tile_count((215, 384, 52), (192, 256, 48), 0.5) == 8 and first_pass_shape((215, 384, 52), (192, 256, 48)) == (192, 256, 48)


def test_cord_pieces_drop_specks_but_keep_a_broken_cord():
    mask = cube((60, 30, 30), (5, 12, 12), (25, 17, 17)) | cube((60, 30, 30), (28, 12, 12), (55, 17, 17))
    mask[2, 2, 2] = mask[50, 27, 27] = True  # two specks far from the cord
    kept = cord_pieces(mask)
    assert kept.sum() == mask.sum() - 2 and not kept[2, 2, 2] and kept[6, 14, 14] and kept[40, 14, 14]
    assert foreground_bounds(kept) == ((5, 55), (12, 17), (12, 17))


def test_cord_pieces_across_the_body_keep_the_cord_in_line_and_drop_what_lies_beside_it():
    """Axis 0 runs along the body (S-I): a big blob beside the cord is dropped, a curved cord in pieces is kept."""
    shape = (90, 60, 60)
    cord = cube(shape, (5, 28, 28), (40, 34, 34)) | cube(shape, (42, 30, 28), (60, 36, 34))  # broken, slightly moved
    cord |= cube(shape, (62, 35, 28), (85, 41, 34))  # further on: in line with the piece before it, not with the first
    beside = cube(shape, (20, 50, 5), (35, 58, 15))  # a big false structure 15 mm beside the cord (>10 % of it)
    mask = cord | beside
    assert np.array_equal(cord_pieces(mask), mask)  # by size alone, it widens the box
    kept = cord_pieces(mask, along_axis=0, spacing_mm=(1.0, 1.0, 1.0))
    assert np.array_equal(kept, cord)
    # the distance counts in mm: at 0.25 mm voxels the blob is 4 mm away, in line within IN_LINE_MM (5 mm)
    assert np.array_equal(cord_pieces(mask, along_axis=0, spacing_mm=(1.0, 0.25, 0.25)), mask)


def test_superior_inferior_axis_follows_the_orientation_letters_and_the_transpose():
    assert superior_inferior_axis("RPI", [0, 1, 2]) == 0  # SCIseg: arrays (z=I-S, y, x); no transpose
    assert superior_inferior_axis("RPI", [2, 0, 1]) == 1  # grid axis 1 is array axis 0
    assert superior_inferior_axis("PIL", [0, 1, 2]) == 1  # y is I-S
    assert superior_inferior_axis("LPA", [0, 1, 2]) is None


def test_first_pass_tries_the_central_window_before_the_whole_shrunk_image():
    """An axial-like grid (axis 0 along the body, wide across it): a centred cord is found with one window."""
    shape, patch = (20, 72, 72), (24, 16, 16)
    small = first_pass_shape(shape, patch)
    assert small == (20, 48, 48) and central_window(small, patch, 0) == ((0, 20), (16, 32), (16, 32))
    assert central_window((20, 16, 16), patch, 0) is None  # one tile across already: no window

    def run(mask: np.ndarray):
        predictor, report = ThresholdPredictor(patch), {}
        bounds = locate_cord(predictor, image_of(mask), along_axis=0, report=report)
        return bounds, report["windows"], [call[1] for call in predictor.calls]

    centred = cube(shape, (0, 33, 33), (20, 39, 39))
    bounds, windows, shapes = run(centred)
    assert windows == ["centre"] and shapes == [(20, 16, 16)]  # one tile across instead of 3 x 3
    assert all(a <= lo and b >= hi for (a, b), lo, hi in zip(bounds, (0, 33, 33), (20, 39, 39), strict=True)), bounds

    aside = cube(shape, (0, 3, 33), (20, 9, 39))  # the cord is not in the window
    bounds, windows, shapes = run(aside)
    assert windows == ["centre", "whole"] and shapes == [(20, 16, 16), (20, 48, 48)]
    assert bounds[1][0] <= 3 and bounds[1][1] >= 9

    leaving = cube(shape, (0, 30, 33), (20, 58, 39))  # crosses the window's side: it may go on outside
    bounds, windows, _ = run(leaving)
    assert windows == ["centre", "whole"] and bounds[1][1] >= 58

    short = cube(shape, (8, 33, 33), (12, 39, 39)) | cube(shape, (0, 3, 3), (20, 9, 9))  # only a blob in the window
    bounds, windows, _ = run(short)
    assert windows == ["centre", "whole"]
    assert bounds[1][0] <= 3  # the cord along the whole image is found

    bounds, windows, _ = run(np.zeros(shape, bool))
    assert bounds is None and windows == ["centre", "whole"]


def test_locate_cord_scales_the_box_back_to_the_full_grid():
    shape = (90, 60, 12)
    cord = cube(shape, (10, 25, 4), (80, 33, 8))
    bounds = locate_cord(ThresholdPredictor(patch=(32, 32, 8)), image_of(cord))
    assert bounds is not None
    assert all(a <= lo and b >= hi and (b - a) <= (hi - lo) + 4
               for (a, b), lo, hi in zip(bounds, (10, 25, 4), (80, 33, 8), strict=True)), bounds


def test_foreground_bounds_and_inner_faces():
    mask = cube((20, 30, 40), (5, 10, 0), (8, 12, 40))
    assert foreground_bounds(mask) == ((5, 8), (10, 12), (0, 40))
    assert foreground_bounds(np.zeros((4, 4, 4), bool)) is None
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


def test_converting_a_network_for_openvino_sends_nothing_and_writes_nothing_home(tmp_path: Path, monkeypatch):
    """OpenVINO's converter reports usage to Google Analytics and counts it in ~/intel unless opted out; ours does neither."""
    import socket
    import time

    from SCIsegLib.inference.openvino_quiet import import_openvino

    monkeypatch.setenv("HOME", str(tmp_path))  # where openvino-telemetry keeps its consent file and usage counter
    monkeypatch.delenv("CI", raising=False)  # openvino-telemetry is silent under CI=true; users have no such variable
    lookups: list = []

    def refuse(*arguments, **keywords):
        lookups.append(arguments[:2])
        raise OSError("no network in this test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    ov = import_openvino()
    converted = convert_network(ov, Tiny().eval(), (1, 1, 8, 8, 8))
    assert converted.inputs and converted.outputs
    time.sleep(0.5)  # openvino-telemetry sends from a worker thread
    assert lookups == [] and not (tmp_path / "intel").exists(), (lookups, list(tmp_path.rglob("*")))


def test_compiled_model_cache_hit_corruption_and_invalidation(tmp_path: Path):
    from SCIsegLib.inference.openvino_quiet import import_openvino

    ov = import_openvino()

    core, network, x = ov.Core(), Tiny().eval(), torch.randn(1, 1, 8, 8, 8)
    fp32 = {"INFERENCE_PRECISION_HINT": "f32"}  # OpenVINO's default on a bf16 CPU is bf16
    cache = CompiledModelCache(tmp_path / "cache")
    build = lambda: convert_network(ov, network, tuple(x.shape))  # noqa: E731
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
                             "--model", str(demo_model_path), "--device", "cpu", "--engine", engine, "--crop", "exact",
                             "--progress", "none"],
                            capture_output=True, text=True, cwd=REPOSITORY, env=env)
    assert result.returncode == 0, result.stderr
    sidecar = json.loads((tmp_path / "t2_sc_seg.json").read_text())
    ran = sidecar["GeneratedBy"][0]["Engine"]
    assert ran["engine"] == expected and "precision" in ran and "crop_box" in ran and ran["crop"] == "exact"
    assert ran["crop_note"]  # why the whole image ran, or "cropped"
    assert sidecar["GeneratedBy"][0]["Settings"]["engine"] == engine
    assert sidecar["GeneratedBy"][0]["Settings"]["crop"] == "exact"


def _gpu_check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPOSITORY / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_gpu_check_without_cuda_stops_with_one_sentence_and_writes_nothing(tmp_path):
    shared_file("sct_2014_errsm/errsm_21/t2.nii.gz")
    report = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, str(REPOSITORY / "benchmarks" / "gpu_check.py"), "-o", str(report)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    assert run.returncode == 2 and "no CUDA GPU" in run.stderr and run.stderr.count("\n") == 1, run.stderr
    assert not report.exists() and list(tmp_path.iterdir()) == []


def test_gpu_check_arguments_agreement_and_report(tmp_path):
    gpu_check = _gpu_check_module()
    with pytest.raises(SystemExit) as missing:
        gpu_check.parse_arguments(["-o", str(tmp_path / "r.json"), "--data", str(tmp_path), "--scans", "nope.nii.gz"])
    assert missing.value.code == 2
    with pytest.raises(SystemExit):
        gpu_check.parse_arguments(["-o", str(tmp_path / "r.json"), "--repeats", "0"])
    reference = np.zeros((4, 5, 6), np.uint8)
    reference[1:3, 1:4, 1:5] = 1
    reference[2, 2, 2] = 2
    other = reference.copy()
    other[1, 1, 1] = 0
    figures = gpu_check.agreement(reference, other)
    assert figures == {"cord_dice": round(2 * 23 / (24 + 23), 5), "lesion_dice": 1.0, "differing_voxels": 1}
    with pytest.raises(ValueError):
        gpu_check.agreement(reference, other[:3])
    target = tmp_path / "out" / "gpu.json"
    gpu_check.write_report({"engines": {"cuda": figures}}, target)
    assert json.loads(target.read_text()) == {"engines": {"cuda": figures}}
    assert [p.name for p in target.parent.iterdir()] == ["gpu.json"]


class NormBlock(torch.nn.Module):
    """nnU-Net's stage: convolution, instance norm (affine), leaky ReLU; strided once."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.norm = torch.nn.InstanceNorm3d(4, eps=1e-5, affine=True)
        self.down = torch.nn.Conv3d(4, 2, 3, stride=2, padding=1)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 2.0)
            self.norm.bias.uniform_(-1.0, 1.0)

    def forward(self, x):
        return self.down(torch.nn.functional.leaky_relu(self.norm(self.conv(x)), 0.01))


def test_openvino_conversion_takes_a_path_torch_keeps_and_old_entries_are_rebuilt(tmp_path: Path):
    """No torch.jit.trace (deprecated): the network goes through torch.export; its logits are the network's.

    The instance norm stays one MVN operation (decomposed, it was three ReduceMean and a dozen element-wise
    operations, slower and quantized by NNCF); with free tile sizes too. Entries of earlier conversions are rebuilt.
    """
    import warnings

    from SCIsegLib.inference.openvino_quiet import import_openvino

    ov = import_openvino()
    network = NormBlock().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = convert_network(ov, network, (1, 1, 8, 8, 8))
        free = convert_network(ov, network, (1, 1, 8, 8, 8), strides=(2, 2, 2))
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert deprecations == []
    for model in (converted, free):
        types = [op.get_type_name() for op in model.get_ordered_ops()]
        assert types.count("MVN") == 1 and "ReduceMean" not in types
    for model, shape in ((converted, (1, 1, 8, 8, 8)), (free, (1, 1, 8, 8, 8)), (free, (1, 1, 12, 6, 10))):
        model = model.clone()
        model.reshape(list(shape))
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        x = torch.randn(*shape)
        assert np.allclose(compiled(x.numpy())[0], network(x).detach().numpy(), atol=1e-4)
    fields = [getattr(tiny_key(tmp_path, b"w"), f) for f in ("model_folder", "weights_sha256", "fold", "input_shape",
                                                           "precision", "cpu", "openvino")]
    for earlier in ("torch.jit.trace", "torch.export"):
        assert CacheKey(*fields, converter=earlier).digest() != tiny_key(tmp_path, b"w").digest()
