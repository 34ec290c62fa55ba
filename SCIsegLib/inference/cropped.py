"""The cord-cropped two-pass run, on nnU-Net's preprocessed grid (channels, z, y, x after its transpose).

The cord fills a small part of a full field-of-view scan. Pass 1 (:func:`locate_cord`) finds it cheaply:
the whole preprocessed image is shrunk (trilinear, by at most :data:`MAX_FIRST_PASS_ZOOM` per axis, so the
cord keeps a size the network was trained on) and the network runs with non-overlapping tiles (step 1.0).
Where that shrunk image still needs several tiles across the body (an axial slab 180 mm wide against
a 48 mm tile), pass 1 first runs only the central window (one tile across, the whole length along
the body): the cord of a centred patient lies there, and the window's answer is kept when its cord
runs along at least 90 % of the image's length and touches no side of the window; else the whole shrunk
image runs too. Where the runtime runs a tile of any size (OpenVINO's model converted with its tile size
free, torch), every axis is shrunk by :data:`FITTED_FIRST_PASS_ZOOM` and each window runs as one tile fitted
to it (a multiple of the network's strides: :func:`fitted_tile`), which holds fewer voxels than the plan's
tiles on a full field of view (SCIseg's plan on errsm_21: 160x256x40 against 192x256x48). Pass 2 always runs
the plan's tile size: one tile fitted to the cord and its margin was measured to change the demo model's
cord (main-cord Dice 0.93 against SCT's call; ``benchmarks/inference_speed.md``). Of what pass 1 finds, only the cord's pieces count (:func:`cord_pieces`: the largest
piece and the big pieces in line with it along the body). Pass 2 runs at full resolution only the tiles
of a per-axis plan (:func:`tile_plan`) around that cord plus a margin in mm:

- along an axis where the cord and its margin need more than one tile, the reference's own tile
  positions that meet them: every voxel within the margin sees exactly the tiles, gaussian weights and
  context it has in the reference run, so its logits are the reference's;
- along an axis where the cord and its margin fit in one tile but the reference runs several
  overlapping tiles (SCIseg's 48-voxel tile on a 52-voxel-wide scan: 2 tiles 4 voxels apart), one
  tile: the reference tile that holds them and whose centre is nearest theirs. Where no reference tile
  holds them, the reference's tiles that meet them less those whose gaussian weight is under
  :data:`MIN_TILE_SHARE` of the blend everywhere on the cord itself (:func:`weighing_tiles`); a single
  tile placed elsewhere was measured to cut the demo model's cord by 2.5 % (other context). Logits then
  differ from the reference's blend by what dropping the other tiles changes (measured on the demo
  model in ``benchmarks/inference_speed.md``).

Outside the tiles run, the logits are set to certain background. The whole image is run instead (and
the sidecar says why) when:

- the scan fits in one tile (cropping saves nothing): "smaller than a tile";
- the first pass plus one tile cost at least the tiles of the whole run: "crop would not pay";
- pass 1 finds no cord: "no cord found by the first pass";
- the plan around the cord costs as many tiles as the whole image: "the cord needs every tile";
- the cord of pass 2 still touches (comes within :data:`TOUCH_BAND_MM` of) a face of the tiles run
  inside the image (it may go on outside) after the box was widened to the image's face on each touched side :data:`MAX_WIDENINGS` times:
  "cord touches the box edge".
"""

from __future__ import annotations

import math
from contextlib import contextmanager
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
#: A piece is in line with the cord when, across the body, it lies within this distance (mm) of the largest piece.
IN_LINE_MM = 5.0
#: Pass 1's central window is trusted when its cord runs along at least this share of the image's length (S-I).
MIN_CORD_LENGTH_SHARE = 0.9
#: How many times pass 2 is redone with the box widened to the image's face where the cord touched it.
MAX_WIDENINGS = 2
#: "fast" crop: a reference tile weighing less than this share of the blend everywhere on the cord is not run.
MIN_TILE_SHARE = 0.01
#: Pass 2's cord "touches" a face of its box when it comes this close to it (mm).
TOUCH_BAND_MM = 4.0
#: Logit magnitude meaning "certainly background" outside the box (fits fp16).
_CERTAIN = 50.0
#: Fitted tiles: the first pass shrinks every axis by this factor (not only those longer than the tile).
FITTED_FIRST_PASS_ZOOM = 1.5


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


def touched_faces(mask_in_box: np.ndarray, box: Box, shape: tuple[int, ...],
                  band: tuple[int, ...] | None = None) -> list[tuple[int, int]]:
    """The faces (axis, 0 = low side / 1 = high side) of ``box`` inside the image near which ``mask_in_box`` has foreground.

    ``band``: per axis, how many voxels from a face count as touching it (default 1: the face's own plane). A
    cord leaving the box through a face that is also a tile's edge is often not called there (the network sees
    no context beyond it), so pass 2 looks a few mm in.
    """
    band = band or (1,) * len(box)
    faces = []
    for axis, (start, stop) in enumerate(box):
        depth = max(1, min(band[axis], mask_in_box.shape[axis]))
        if start > 0 and mask_in_box.take(range(depth), axis=axis).any():
            faces.append((axis, 0))
        if stop < shape[axis] and mask_in_box.take(range(mask_in_box.shape[axis] - depth, mask_in_box.shape[axis]), axis=axis).any():
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


def first_pass_shape(shape: tuple[int, ...], patch: tuple[int, ...], max_zoom: float = MAX_FIRST_PASS_ZOOM,
                     fitted: bool = False) -> tuple[int, ...]:
    """The grid (voxels) of the first pass: each axis longer than the tile shrunk towards the tile, by at most ``max_zoom``.

    ``fitted`` (the runtime runs a tile of any size): every axis is shrunk by :data:`FITTED_FIRST_PASS_ZOOM`.
    """
    if fitted:
        return tuple(max(1, math.ceil(s / FITTED_FIRST_PASS_ZOOM)) for s in shape)
    return tuple(s if s <= p else max(p, math.ceil(s / max_zoom)) for s, p in zip(shape, patch, strict=True))


def network_strides(predictor) -> tuple[int, ...] | None:
    """The network's total downsampling per axis (product of its stages' strides), voxels; None when the plan does not say.

    A tile whose length along each axis is a multiple of it gives the network the same grid alignment as its own tile.
    """
    try:
        strides = predictor.configuration_manager.network_arch_init_kwargs.get("strides")
    except (AttributeError, KeyError, TypeError):  # an older plan (no "architecture" entry)
        return None
    if not strides:
        return None
    return tuple(int(np.prod([stage[axis] for stage in strides])) for axis in range(len(strides[0])))


def fitted_tile(extent: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, ...]:
    """The smallest tile (voxels per axis) that holds ``extent`` and is a multiple of ``strides`` along each axis."""
    return tuple(max(stride, math.ceil(size / stride) * stride) for size, stride in zip(extent, strides, strict=True))


@contextmanager
def tile_size(predictor, size: tuple[int, ...] | None):
    """Within the block, nnU-Net's sliding window (padding, tiles, gaussian) uses tiles of ``size`` voxels (None: the plan's)."""
    if size is None:
        yield
        return
    configuration = predictor.configuration_manager.configuration
    saved = configuration["patch_size"]
    configuration["patch_size"] = [int(s) for s in size]
    try:
        yield
    finally:
        configuration["patch_size"] = saved


def superior_inferior_axis(orientation: str, transpose_forward) -> int | None:
    """The axis of nnU-Net's preprocessed grid that runs along the body (S-I); None when no letter says S or I.

    ``orientation``: the model orientation in SCT letters for the input's x, y, z (arrays are (z, y, x), so
    letter i is array axis 2 - i); ``transpose_forward``: nnU-Net's axis order (grid axis i = array axis t[i]).
    """
    for letter_index, letter in enumerate(orientation.upper()[:3]):
        if letter in "SI":
            return list(transpose_forward).index(2 - letter_index)
    return None


def cord_pieces(mask: np.ndarray, min_share: float = MIN_PIECE_SHARE, along_axis: int | None = None,
                spacing_mm: tuple[float, ...] | None = None, in_line_mm: float = IN_LINE_MM) -> np.ndarray:
    """The cord's pieces (26-connected components) in ``mask``: those holding at least ``min_share`` of the largest's voxels.

    A cord broken by a lesion or an artefact stays whole (its pieces are long); isolated false-positive
    specks far from the cord do not stretch the box over the whole field of view. With ``along_axis`` (the
    grid's S-I axis) and ``spacing_mm`` (per grid axis), a piece must also lie in line with the cord: across
    the body (the other axes) its extent must come within ``in_line_mm`` of the extent of the cord gathered so
    far (the largest piece, then each piece in line with it), so that a false structure beside the cord,
    however big, does not widen the box either.
    """
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())[1:]
    kept = [int(label) for label in np.flatnonzero(sizes >= min_share * sizes.max()) + 1]
    if along_axis is not None and spacing_mm is not None:
        extents = ndimage.find_objects(labels)
        across = [axis for axis in range(mask.ndim) if axis != along_axis]
        low = np.array([[piece[axis].start * spacing_mm[axis] for axis in across] for piece in extents])  # mm, (piece, axis)
        high = np.array([[piece[axis].stop * spacing_mm[axis] for axis in across] for piece in extents])
        main = int(np.argmax(sizes))
        chosen = np.zeros(count, bool)
        chosen[main] = True
        candidate = np.zeros(count, bool)
        candidate[np.array(kept) - 1] = True
        while True:  # pieces in line join the cord, and its extent across the body grows by them (a curved cord in pieces)
            line_low, line_high = low[chosen].min(axis=0), high[chosen].max(axis=0)
            joining = candidate & ~chosen & np.all((low < line_high + in_line_mm) & (high > line_low - in_line_mm), axis=1)
            if not joining.any():
                break
            chosen |= joining
        kept = [int(label) for label in np.flatnonzero(chosen) + 1]
    return np.isin(labels, kept)


def central_window(shape: tuple[int, ...], patch: tuple[int, ...], along_axis: int) -> Box | None:
    """The centred window one tile across the body and the whole image along it (``along_axis``); None if that is all of it."""
    window = tuple((0, size) if axis == along_axis or size <= tile else ((size - tile) // 2, (size - tile) // 2 + tile)
                   for axis, (size, tile) in enumerate(zip(shape, patch, strict=True)))
    return None if all(stop - start == size for (start, stop), size in zip(window, shape, strict=True)) else window


def _foreground(predictor, logits: torch.Tensor) -> np.ndarray:
    segmentation = predictor.label_manager.convert_logits_to_segmentation(logits.float())
    return np.asarray(segmentation) > 0


def _fill_background(predictor, logits: torch.Tensor) -> None:
    """Set ``logits`` to "background" everywhere, in place: regions (sigmoid) all low; labels (softmax) channel 0 high."""
    logits.fill_(-_CERTAIN)
    if not predictor.label_manager.has_regions:
        logits[0] = _CERTAIN


def _coarse_foreground(predictor, data: torch.Tensor, strides: tuple[int, ...] | None = None) -> np.ndarray:
    """The network's foreground on ``data`` with non-overlapping tiles (step 1.0).

    ``strides`` (:func:`network_strides`, given when the runtime runs a tile of any size): one tile fitted to
    ``data`` (:func:`fitted_tile`) when it holds fewer voxels than the plan's tiles would.
    """
    patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)
    shape = tuple(int(s) for s in data.shape[1:])
    size = None
    if strides is not None:
        fitted = fitted_tile(shape, strides)
        if math.prod(fitted) < tile_count(shape, patch, 1.0) * math.prod(patch):
            size = fitted
    fine_step = predictor.tile_step_size
    predictor.tile_step_size = 1.0
    try:
        with tile_size(predictor, size):
            return _foreground(predictor, predictor.predict_logits_from_preprocessed_data(data))
    finally:
        predictor.tile_step_size = fine_step


@torch.inference_mode()
def locate_cord(predictor, data: torch.Tensor, along_axis: int | None = None, *,
                windows: tuple[str, ...] = ("centre", "whole"), report: dict | None = None,
                strides: tuple[int, ...] | None = None) -> Box | None:
    """Pass 1: the tight box (full-grid voxels) around what the network calls cord on the shrunk image; None if nothing.

    Only the pieces of :func:`cord_pieces` count: a speck the reference would also find far from the cord
    is left out of the box (and so out of the result), which the agreement figures include.

    Args:
        data: (channels, z, y, x) on nnU-Net's preprocessed grid; the network runs with step 1.0 on
            :func:`first_pass_shape` of it, and the box found there is scaled back outwards (floor/ceil).
        along_axis: the grid's S-I axis (:func:`superior_inferior_axis`); None: no central window, and pieces
            are chosen by size only.
        windows: what pass 1 may run, in order: "centre" (the :func:`central_window`, trusted only when its
            cord runs along >= :data:`MIN_CORD_LENGTH_SHARE` of the image and touches none of its sides) and
            "whole" (the whole shrunk image). A benchmark replays another model's choice with it.
        report: if given, receives "windows" (what ran), for the tests and the benchmark.
        strides: the network's total strides (:func:`network_strides`) when the runtime runs tiles of any size:
            the shrunk image is :func:`first_pass_shape` with ``fitted`` and each window runs as one fitted tile
            where that is cheaper (:func:`_coarse_foreground`); None: the plan's tiles.
    """
    shape = tuple(int(s) for s in data.shape[1:])
    patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)
    small_shape = first_pass_shape(shape, patch, fitted=strides is not None)
    small = data
    if small_shape != shape:
        small = torch.nn.functional.interpolate(data[None].float(), size=small_shape, mode="trilinear",
                                                align_corners=False)[0]
    spacing = [float(s) * size / small_size for s, size, small_size in
               zip(predictor.configuration_manager.spacing, shape, small_shape, strict=True)]
    ran: list[str] = []
    bounds: Box | None = None
    for name in windows:
        window = central_window(small_shape, patch, along_axis) if name == "centre" and along_axis is not None else None
        region = window or tuple((0, size) for size in small_shape)  # no central window: the centre is the whole image
        ran.append(name if window is not None else "whole")
        inside = small[(slice(None), *(slice(a, b) for a, b in region))].contiguous()
        pieces = cord_pieces(_coarse_foreground(predictor, inside, strides), along_axis=along_axis, spacing_mm=tuple(spacing))
        found = foreground_bounds(pieces)
        if window is not None and (found is None or touches_inner_face(pieces, region, small_shape)
                                   or found[along_axis][1] - found[along_axis][0] < MIN_CORD_LENGTH_SHARE * small_shape[along_axis]):
            continue  # the cord may lie (partly) outside the window: look at the whole shrunk image
        if found is not None:
            bounds = tuple((a + start, b + start) for (a, b), (start, _) in zip(found, region, strict=True))
        break
    if report is not None:
        report["windows"] = ran
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


def weighing_tiles(meeting: list[int], positions: list[int], tile: int, cord: tuple[int, int],
                   covered: tuple[int, int], min_share: float = MIN_TILE_SHARE) -> list[int]:
    """Of the reference tiles ``meeting`` a region along one axis, those whose gaussian weight is at least ``min_share`` of
    the reference's blend somewhere on ``cord`` (start, stop voxels), if together they still cover ``covered``; else all.

    nnU-Net weights each tile with its gaussian importance map (``compute_gaussian``, sigma = tile / 8) and divides
    by the sum over all tiles (``positions``) covering a voxel; the map is a product over axes, so the share along
    one axis is the reference's.
    """
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    gaussian = compute_gaussian((tile,), 1.0 / 8, 1, dtype=torch.float32, device=torch.device("cpu")).numpy()
    voxels = np.arange(cord[0], cord[1])
    weights = {q: np.where((voxels >= q) & (voxels < q + tile), gaussian[np.clip(voxels - q, 0, tile - 1)], 0.0)
               for q in positions}
    total = np.maximum(np.sum(list(weights.values()), axis=0), np.finfo(np.float32).tiny)
    kept = sorted(q for q in meeting if np.max(weights[q] / total) >= min_share)
    holds = bool(kept) and kept[0] <= covered[0] and kept[-1] + tile >= covered[1] \
        and all(later <= earlier + tile for earlier, later in zip(kept, kept[1:], strict=False))
    return kept if holds else meeting


def tile_plan(bounds: Box, shape: tuple[int, ...], patch: tuple[int, ...], step: float,
              margin_voxels: tuple[int, ...], single_tile_axes: bool = True) -> list[list[int]]:
    """Tile start positions (voxels) per axis for pass 2 (see the module's docstring); axes shorter than the tile: [0].

    Args:
        bounds: the cord's tight box from pass 1, (start, stop) voxels per axis.
        shape: the image (z, y, x) in voxels; patch: the tile; step: the fine tile step (fraction of the tile).
        margin_voxels: margin around ``bounds`` per axis.
        single_tile_axes: "fast" crop: one tile along an axis where a reference tile holds the cord and margin,
            else the reference's tiles that weigh on the cord (:func:`weighing_tiles`); False keeps every
            reference tile that meets them ("exact" crop).
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
            else:  # the reference's tiles, less those that weigh nothing on the cord itself
                meeting = weighing_tiles(meeting, [int(q) for q in positions], tile, (first, stop), (low, high))
        plan.append(meeting)
    return plan


def plan_box(plan: list[list[int]], shape: tuple[int, ...], patch: tuple[int, ...]) -> Box:
    """The box (start, stop) voxels per axis that the tiles of ``plan`` cover, inside the image."""
    return tuple((min(starts), min(max(starts) + tile, size)) for starts, size, tile in zip(plan, shape, patch, strict=True))


@torch.inference_mode()
def two_pass_logits(predictor, data: torch.Tensor, margin_mm: float = DEFAULT_MARGIN_MM,
                    locate: Locator = locate_cord, check_edges: bool = True,
                    single_tile_axes: bool = True, max_widenings: int = MAX_WIDENINGS,
                    along_axis: int | None = None) -> CroppedLogits:
    """Run ``predictor`` (nnU-Net predictor, tile step = the fine step) on ``data`` (channels, z, y, x), cropped to the cord.

    ``locate`` is pass 1 (:func:`locate_cord`): it returns the cord's tight box in voxels of ``data``'s grid.
    ``check_edges`` False skips the "cord touches the box edge" fallback (only for timing random weights,
    whose noise touches every edge). Pass 2 sets ``predictor.tile_positions`` (tile starts per axis, relative to the box) for one call.
    ``along_axis`` (the grid's S-I axis, :func:`superior_inferior_axis`): only what lies in line with pass 2's cord
    (:func:`cord_pieces`, any size) can touch the box; None: any foreground does (a false speck beside the cord
    near a face then widens the box for nothing).
    """
    shape = tuple(int(s) for s in data.shape[1:])
    patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)

    def whole(note: str) -> CroppedLogits:
        return CroppedLogits(predictor.predict_logits_from_preprocessed_data(data), None, note)

    if len(patch) != len(shape):  # first: a 2D model's tile has one axis fewer than the image
        return whole("2D configuration")
    if all(s <= p for s, p in zip(shape, patch, strict=True)):
        return whole("smaller than a tile")
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
    band = tuple(math.ceil(TOUCH_BAND_MM / s) for s in spacing)
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
        faces = []
        if check_edges:
            found = _foreground(predictor, inside)
            if along_axis is not None:
                found = cord_pieces(found, min_share=0.0, along_axis=along_axis, spacing_mm=tuple(spacing))
            faces = touched_faces(found, box, shape, band)
        if not faces:
            logits = torch.empty((inside.shape[0], *shape), dtype=inside.dtype)
            _fill_background(predictor, logits)
            logits[(slice(None), *region)] = inside
            note = "cropped" if widening == 0 else f"cropped (box widened {widening}x where the cord touched it)"
            return CroppedLogits(logits, box, note)
        del inside
        bounds = widen_to_image_faces(bounds, faces, shape)  # pass 1 missed part of the cord: follow it to the image's face
    return whole("cord touches the box edge")
