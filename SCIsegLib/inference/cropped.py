"""The cord-cropped two-pass run, on nnU-Net's preprocessed grid (channels, z, y, x after its transpose).

The cord fills a small part of a full field-of-view scan. Pass 1 finds it cheaply: the whole
preprocessed image is shrunk (trilinear, by at most :data:`MAX_FIRST_PASS_ZOOM` per axis, so the
cord keeps a size the network was trained on) until it fits in as few tiles as possible, and the
network runs once with non-overlapping tiles (step 1.0). Pass 2 runs at full resolution only the
tiles of a per-axis plan (:func:`tile_plan`) around that cord plus a margin in mm:

- along an axis where the cord and its margin need more than one tile, the reference's own tile
  positions that meet them: every voxel within the margin sees exactly the tiles, gaussian weights and
  context it has in the reference run, so its logits are the reference's;
- along an axis where the cord and its margin fit in one tile but the reference runs several
  overlapping tiles (SCIseg's 48-voxel tile on a 52-voxel-wide scan: 2 tiles 4 voxels apart), one
  tile: the reference tile that holds them and whose centre is nearest theirs (else one tile centred
  on them). Logits then differ from the reference's blend of overlapping tiles by what tile placement
  changes (measured on the demo model in ``benchmarks/inference_speed.md``).

Outside the tiles run, the logits are set to certain background. The whole image is run instead (and
the sidecar says why) when:

- the scan fits in one tile (cropping saves nothing): "smaller than a tile";
- the first pass plus one tile cost at least the tiles of the whole run: "crop would not pay";
- pass 1 finds no cord: "no cord found by the first pass";
- the plan around the cord costs as many tiles as the whole image: "the cord needs every tile";
- the cord of pass 2 still touches a face of the tiles run inside the image (it may go on outside)
  after the box was widened to the image's face on each touched side :data:`MAX_WIDENINGS` times:
  "cord touches the box edge".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

Box = tuple[tuple[int, int], ...]  # (start, stop) per axis, voxels, stop exclusive

#: Margin around the cord found by pass 1, mm.
DEFAULT_MARGIN_MM = 10.0
#: Largest shrink factor of the first pass along an axis (nnU-Net trains with scaling augmentation 0.7-1.4).
MAX_FIRST_PASS_ZOOM = 1.5
#: Pass-1 pieces smaller than this share of the largest piece are specks, not cord, and do not widen the box.
MIN_PIECE_SHARE = 0.1
#: How many times pass 2 is redone with the box widened to the image's face where the cord touched it.
MAX_WIDENINGS = 2
#: Logit magnitude meaning "certainly background" outside the box (fits fp16).
_CERTAIN = 50.0


def foreground_bounds(mask: np.ndarray) -> Box | None:
    """The tight box (start, stop) per axis around the foreground of ``mask``; None when it has none."""
    if not mask.any():
        return None
    bounds = []
    for axis in range(mask.ndim):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other_axes))
        bounds.append((int(present[0]), int(present[-1]) + 1))
    return tuple(bounds)


def touched_faces(mask_in_box: np.ndarray, box: Box, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """The faces (axis, 0 = low side / 1 = high side) of ``box`` inside the image on which ``mask_in_box`` has foreground."""
    faces = []
    for axis, (start, stop) in enumerate(box):
        if start > 0 and mask_in_box.take(0, axis=axis).any():
            faces.append((axis, 0))
        if stop < shape[axis] and mask_in_box.take(-1, axis=axis).any():
            faces.append((axis, 1))
    return faces


def touches_inner_face(mask_in_box: np.ndarray, box: Box, shape: tuple[int, ...]) -> bool:
    """True when foreground of ``mask_in_box`` lies on a face of ``box`` that is not a face of the image."""
    return bool(touched_faces(mask_in_box, box, shape))


def widen_to_image_faces(bounds: Box, faces: list[tuple[int, int]], shape: tuple[int, ...]) -> Box:
    """``bounds`` with each touched side moved to the image's face along its axis."""
    widened = [list(pair) for pair in bounds]
    for axis, side in faces:
        widened[axis][side] = 0 if side == 0 else shape[axis]
    return tuple((start, stop) for start, stop in widened)


def tile_count(shape: tuple[int, ...], patch: tuple[int, ...], step: float) -> int:
    """Number of sliding-window tiles nnU-Net runs on ``shape`` (voxels) with tiles ``patch`` at ``step``."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    padded = [max(s, p) for s, p in zip(shape, patch, strict=True)]
    return int(np.prod([len(steps) for steps in compute_steps_for_sliding_window(padded, patch, step)]))


def first_pass_shape(shape: tuple[int, ...], patch: tuple[int, ...], max_zoom: float = MAX_FIRST_PASS_ZOOM) -> tuple[int, ...]:
    """The grid (voxels) of the first pass: each axis longer than the tile shrunk towards the tile, by at most ``max_zoom``."""
    return tuple(s if s <= p else max(p, math.ceil(s / max_zoom)) for s, p in zip(shape, patch, strict=True))


def cord_pieces(mask: np.ndarray, min_share: float = MIN_PIECE_SHARE) -> np.ndarray:
    """The pieces (26-connected components) of ``mask`` holding at least ``min_share`` of the largest piece's voxels.

    A cord broken by a lesion or an artefact stays whole (its pieces are long); isolated false-positive
    specks far from the cord do not stretch the box over the whole field of view.
    """
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    kept = np.flatnonzero(sizes >= min_share * sizes.max()) + 1
    return np.isin(labels, kept)


def _foreground(predictor, logits: torch.Tensor) -> np.ndarray:
    segmentation = predictor.label_manager.convert_logits_to_segmentation(logits.float())
    return np.asarray(segmentation) > 0


def _fill_background(predictor, logits: torch.Tensor) -> None:
    """Set ``logits`` to "background" everywhere, in place: regions (sigmoid) all low; labels (softmax) channel 0 high."""
    logits.fill_(-_CERTAIN)
    if not predictor.label_manager.has_regions:
        logits[0] = _CERTAIN


@torch.inference_mode()
def locate_cord(predictor, data: torch.Tensor) -> Box | None:
    """Pass 1: the tight box (full-grid voxels) around what the network calls cord on the shrunk image; None if nothing.

    Only the pieces of :func:`cord_pieces` count: a speck the reference would also find far from the cord
    is left out of the box (and so out of the result), which the agreement figures include.

    ``data`` is (channels, z, y, x) on nnU-Net's preprocessed grid; the network runs with step 1.0 on
    :func:`first_pass_shape` of it, and the box found there is scaled back outwards (floor/ceil).
    """
    shape = tuple(int(s) for s in data.shape[1:])
    small_shape = first_pass_shape(shape, tuple(int(p) for p in predictor.configuration_manager.patch_size))
    small = data
    if small_shape != shape:
        small = torch.nn.functional.interpolate(data[None].float(), size=small_shape, mode="trilinear",
                                                align_corners=False)[0]
    fine_step = predictor.tile_step_size
    predictor.tile_step_size = 1.0
    try:
        coarse = predictor.predict_logits_from_preprocessed_data(small)
    finally:
        predictor.tile_step_size = fine_step
    bounds = foreground_bounds(cord_pieces(_foreground(predictor, coarse)))
    if bounds is None:
        return None
    return tuple((math.floor(start * size / small_size), min(size, math.ceil(stop * size / small_size)))
                 for (start, stop), size, small_size in zip(bounds, shape, small_shape, strict=True))


@dataclass
class CroppedLogits:
    """Logits on the whole preprocessed grid and how they were made.

    Attributes:
        logits: (channels, z, y, x) on nnU-Net's preprocessed grid.
        box: the box of pass 2 on that grid ((start, stop) voxels per axis), None when the whole image ran.
        note: "cropped" or why the whole image ran.
    """

    logits: torch.Tensor
    box: Box | None
    note: str


Locator = Callable[[object, torch.Tensor], "Box | None"]


def tile_plan(bounds: Box, shape: tuple[int, ...], patch: tuple[int, ...], step: float,
              margin_voxels: tuple[int, ...], single_tile_axes: bool = True) -> list[list[int]]:
    """Tile start positions (voxels) per axis for pass 2 (see the module's docstring); axes shorter than the tile: [0].

    Args:
        bounds: the cord's tight box from pass 1, (start, stop) voxels per axis.
        shape: the image (z, y, x) in voxels; patch: the tile; step: the fine tile step (fraction of the tile).
        margin_voxels: margin around ``bounds`` per axis.
        single_tile_axes: allow one tile along an axis where the reference blends several ("fast" crop);
            False keeps only the reference's tiles ("exact" crop).
    """
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    padded = [max(s, p) for s, p in zip(shape, patch, strict=True)]
    reference = compute_steps_for_sliding_window(padded, patch, step)
    plan = []
    for (first, stop), margin, size, tile, positions in zip(bounds, margin_voxels, shape, patch, reference, strict=True):
        low, high = max(first - margin, 0), min(stop + margin, size)
        meeting = [int(q) for q in positions if q < high and q + tile > low]
        if single_tile_axes and len(meeting) > 1 and high - low <= tile:
            holding = [q for q in meeting if q <= low and q + tile >= high]
            if holding:  # a reference tile holds it all: keep that tile's grid phase (strided networks are not shift-invariant)
                meeting = [min(holding, key=lambda q: abs(q + tile / 2 - (low + high) / 2))]
            else:
                centred = int(round((low + high - tile) / 2))
                meeting = [min(max(centred, 0), size - tile)]
        plan.append(meeting)
    return plan


def plan_box(plan: list[list[int]], shape: tuple[int, ...], patch: tuple[int, ...]) -> Box:
    """The box (start, stop) voxels per axis that the tiles of ``plan`` cover, inside the image."""
    return tuple((min(starts), min(max(starts) + tile, size)) for starts, size, tile in zip(plan, shape, patch, strict=True))


@torch.inference_mode()
def two_pass_logits(predictor, data: torch.Tensor, margin_mm: float = DEFAULT_MARGIN_MM,
                    locate: Locator = locate_cord, check_edges: bool = True,
                    single_tile_axes: bool = True, max_widenings: int = MAX_WIDENINGS) -> CroppedLogits:
    """Run ``predictor`` (nnU-Net predictor, tile step = the fine step) on ``data`` (channels, z, y, x), cropped to the cord.

    ``locate`` is pass 1 (:func:`locate_cord`): it returns the cord's tight box in voxels of ``data``'s grid.
    ``check_edges`` False skips the "cord touches the box edge" fallback (only for timing random weights,
    whose noise touches every edge). Pass 2 sets ``predictor.tile_positions`` (tile starts per axis, relative to the box) for one call.
    """
    shape = tuple(int(s) for s in data.shape[1:])
    patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)

    def whole(note: str) -> CroppedLogits:
        return CroppedLogits(predictor.predict_logits_from_preprocessed_data(data), None, note)

    if all(s <= p for s, p in zip(shape, patch, strict=True)):
        return whole("smaller than a tile")
    if len(patch) != len(shape):
        return whole("2D configuration")
    fine_step = predictor.tile_step_size
    whole_tiles = tile_count(shape, patch, fine_step)
    first_tiles = tile_count(first_pass_shape(shape, patch), patch, 1.0)
    if first_tiles + 1 >= whole_tiles:
        return whole(f"crop would not pay ({first_tiles} first-pass tiles for {whole_tiles} tiles in all)")
    bounds = locate(predictor, data)
    if bounds is None:
        return whole("no cord found by the first pass")
    spacing = [float(s) for s in predictor.configuration_manager.spacing]
    margin = tuple(math.ceil(margin_mm / s) for s in spacing)
    for widening in range(max_widenings + 1):
        plan = tile_plan(bounds, shape, patch, fine_step, margin, single_tile_axes)
        if math.prod(len(starts) for starts in plan) >= whole_tiles:
            return whole("the cord needs every tile")
        box = plan_box(plan, shape, patch)
        region = tuple(slice(start, stop) for start, stop in box)
        predictor.tile_positions = [[q - start for q in starts] for starts, (start, _) in zip(plan, box, strict=True)]
        try:
            inside = predictor.predict_logits_from_preprocessed_data(data[(slice(None), *region)].contiguous())
        finally:
            predictor.tile_positions = None
        faces = touched_faces(_foreground(predictor, inside), box, shape) if check_edges else []
        if not faces:
            logits = torch.empty((inside.shape[0], *shape), dtype=inside.dtype)
            _fill_background(predictor, logits)
            logits[(slice(None), *region)] = inside
            note = "cropped" if widening == 0 else f"cropped (box widened {widening}x where the cord touched it)"
            return CroppedLogits(logits, box, note)
        del inside
        bounds = widen_to_image_faces(bounds, faces, shape)  # pass 1 missed part of the cord: follow it to the image's face
    return whole("cord touches the box edge")
