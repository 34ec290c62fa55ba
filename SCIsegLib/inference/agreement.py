"""Agreement of an engine's label map with the reference's (SCT's call) on the same scan and weights.

The two figures every fast engine is held to (``benchmarks/inference_speed.py`` and the int8 gate):

- **main-cord Dice**: Dice of the largest 6-connected cord piece (labels >= 1) of each label map;
- **lesions-in-cord Dice**: Dice of the lesion voxels (label 2) lying in or within 3 voxels of the
  reference's main cord piece (lesions the network places elsewhere in the image are not the cord's).

Label maps are arrays on the same grid (any axis order, voxels), 0 background, 1 cord, 2 lesion.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..metrics import dice
from ..postprocess import keep_largest_component

#: Both figures must reach this for the int8 engine to be chosen by ``auto``.
AGREEMENT_GATE = 0.99
#: Voxels around the reference's main cord piece in which lesions count as the cord's.
CORD_NEIGHBOURHOOD_VOXELS = 3


def agreement(reference: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Main-cord Dice, lesions-in-cord Dice, and the whole-image cord and lesion Dice of ``labels`` against ``reference``."""
    if reference.shape != labels.shape:
        raise ValueError(f"label maps of different shapes: {reference.shape} and {labels.shape}")
    main_cord = keep_largest_component(reference >= 1)
    near = ndimage.binary_dilation(main_cord, iterations=CORD_NEIGHBOURHOOD_VOXELS)
    return {"main_cord_dice": round(dice(main_cord, keep_largest_component(labels >= 1)), 5),
            "lesion_in_cord_dice": round(dice((reference == 2) & near, (labels == 2) & near), 5),
            "cord_dice": round(dice(reference >= 1, labels >= 1), 5),
            "lesion_dice": round(dice(reference == 2, labels == 2), 5)}


def passes_gate(figures: dict[str, float], gate: float = AGREEMENT_GATE) -> bool:
    """True when main-cord Dice and lesions-in-cord Dice both reach ``gate``."""
    return all(float(figures.get(name, 0.0)) >= gate for name in ("main_cord_dice", "lesion_in_cord_dice"))
