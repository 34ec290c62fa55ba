"""The cord-cropped two-pass run, on nnU-Net's preprocessed grid (channels, z, y, x after its transpose).

The cord fills a small part of a full field-of-view scan. Pass 1 runs the network with
non-overlapping tiles (step 1.0) on the whole preprocessed image to find the cord; pass 2 runs,
at the requested step, only those tiles of the reference's own sliding window that meet a box
around that cord (plus a margin in mm). Every voxel inside the box is covered by exactly the tiles,
gaussian weights and context it has in the reference run, so its logits are the reference's;
outside the box the logits are set to certain background. The whole image is run instead when:

- the scan fits in one tile (cropping saves nothing): "smaller than a tile";
- the first pass alone would cost at least half the tiles of the whole run (large tiles on a small
  field of view, e.g. SCIseg's 192x256x48 patch on a 215x384x52 scan): "crop would not pay";
- pass 1 finds no cord: "no cord found by the first pass";
- the cord of pass 2 touches a face of the box inside the image (it may go on outside):
  "cord touches the box edge".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

Box = tuple[tuple[int, int], ...]  # (start, stop) per axis, voxels, stop exclusive

#: Margin around the cord found by pass 1, mm.
DEFAULT_MARGIN_MM = 10.0
#: The crop runs only when its first pass costs less than this share of the whole run's tiles.
MAX_FIRST_PASS_SHARE = 0.5
#: Logit magnitude meaning "certainly background" outside the box (fits fp16).
_CERTAIN = 50.0


def cord_box(mask: np.ndarray, margin_voxels: tuple[int, ...], min_size_voxels: tuple[int, ...]) -> Box | None:
    """The box around the foreground of ``mask`` plus ``margin_voxels``, at least ``min_size_voxels``, inside the array.

    Returns None when ``mask`` holds no foreground.
    """
    if not mask.any():
        return None
    box = []
    for axis, size in enumerate(mask.shape):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other_axes))
        start, stop = int(present[0]) - margin_voxels[axis], int(present[-1]) + 1 + margin_voxels[axis]
        missing = min_size_voxels[axis] - (stop - start)
        if missing > 0:
            start, stop = start - missing // 2, stop + missing - missing // 2
        if start < 0:
            start, stop = 0, stop - start
        if stop > size:
            start, stop = max(start - (stop - size), 0), size
        box.append((start, stop))
    return tuple(box)


def touches_inner_face(mask_in_box: np.ndarray, box: Box, shape: tuple[int, ...]) -> bool:
    """True when foreground of ``mask_in_box`` lies on a face of ``box`` that is not a face of the image."""
    for axis, (start, stop) in enumerate(box):
        if start > 0 and mask_in_box.take(0, axis=axis).any():
            return True
        if stop < shape[axis] and mask_in_box.take(-1, axis=axis).any():
            return True
    return False


def tile_count(shape: tuple[int, ...], patch: tuple[int, ...], step: float) -> int:
    """Number of sliding-window tiles nnU-Net runs on ``shape`` (voxels) with tiles ``patch`` at ``step``."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

    padded = [max(s, p) for s, p in zip(shape, patch, strict=True)]
    return int(np.prod([len(steps) for steps in compute_steps_for_sliding_window(padded, patch, step)]))


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


def _foreground(predictor, logits: torch.Tensor) -> np.ndarray:
    segmentation = predictor.label_manager.convert_logits_to_segmentation(logits.float())
    return np.asarray(segmentation) > 0


def _fill_background(predictor, logits: torch.Tensor) -> None:
    """Set ``logits`` to "background" everywhere, in place: regions (sigmoid) all low; labels (softmax) channel 0 high."""
    logits.fill_(-_CERTAIN)
    if not predictor.label_manager.has_regions:
        logits[0] = _CERTAIN


@torch.inference_mode()
def two_pass_logits(predictor, data: torch.Tensor, margin_mm: float = DEFAULT_MARGIN_MM) -> CroppedLogits:
    """Run ``predictor`` (nnU-Net predictor, tile step = the fine step) on ``data`` (channels, z, y, x), cropped to the cord."""
    shape = tuple(int(s) for s in data.shape[1:])
    patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)
    if all(s <= p for s, p in zip(shape, patch, strict=True)):
        return CroppedLogits(predictor.predict_logits_from_preprocessed_data(data), None, "smaller than a tile")
    fine_step = predictor.tile_step_size
    coarse_tiles, fine_tiles = tile_count(shape, patch, 1.0), tile_count(shape, patch, fine_step)
    if coarse_tiles >= MAX_FIRST_PASS_SHARE * fine_tiles:
        return CroppedLogits(predictor.predict_logits_from_preprocessed_data(data), None,
                             f"crop would not pay ({coarse_tiles} first-pass tiles for {fine_tiles} tiles in all)")
    predictor.tile_step_size = 1.0
    try:
        coarse = predictor.predict_logits_from_preprocessed_data(data)
    finally:
        predictor.tile_step_size = fine_step
    spacing = [float(s) for s in predictor.configuration_manager.spacing]
    margin = tuple(math.ceil(margin_mm / s) for s in spacing)
    box = cord_box(_foreground(predictor, coarse), margin, (1,) * len(shape))
    del coarse
    if box is None:
        return CroppedLogits(predictor.predict_logits_from_preprocessed_data(data), None, "no cord found by the first pass")
    if all(start == 0 and stop == size for (start, stop), size in zip(box, shape, strict=True)):
        return CroppedLogits(predictor.predict_logits_from_preprocessed_data(data), None, "the cord box is the whole image")
    predictor.tile_box = (box, shape)
    try:
        logits = predictor.predict_logits_from_preprocessed_data(data)  # NaN where no tile ran (0 / 0)
    finally:
        predictor.tile_box = None
    region = (slice(None), *(slice(start, stop) for start, stop in box))
    inside = logits[region].clone()
    if touches_inner_face(_foreground(predictor, inside), box, shape):
        del logits, inside
        return CroppedLogits(predictor.predict_logits_from_preprocessed_data(data), None, "cord touches the box edge")
    _fill_background(predictor, logits)
    logits[region] = inside
    return CroppedLogits(logits, box, "cropped")
