"""The live lesion list of the Slicer panel: recomputed in Slicer's own process after the rater's strokes.

Only numpy, SciPy and SimpleITK (all bundled with Slicer; no pandas or scikit-image, which arrive with nnU-Net):
fast enough for a debounced update (a few tens of ms for a full-FOV scan). Lesions are numbered exactly as
``sciseg analyze`` numbers them (:mod:`SCIsegLib.lesions`): the 18-connected components of the lesion mask in
SCT's RPI orientation, array (x, y, z) = (R->L, P->A, I->S), in the order a C-order scan of that array meets
them -- so row k of the live table, the number shown at the lesion and row k of a Measure table are one lesion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .volume import reorient, sct_to_itk_orientation

RPI = sct_to_itk_orientation("RPI")
#: 18-connectivity in 3D (faces and edges), skimage's ``connectivity=2`` that ``sciseg analyze`` uses.
CONNECTIVITY_18 = ndimage.generate_binary_structure(3, 2)


@dataclass(frozen=True)
class LiveLesion:
    """One lesion: its number (``label`` of ``sciseg analyze``), volume in mm3, voxel count, centre in RAS mm."""

    number: int
    volume_mm3: float
    voxels: int
    centre_ras: tuple[float, float, float]


def live_lesions(labels: sitk.Image) -> list[LiveLesion]:
    """The lesions (label 2) of a SCIseg label map (0, 1 cord only, 2 lesion), numbered as ``sciseg analyze`` does.

    Only the box around the lesion voxels is reoriented and labelled (a box keeps the order in which a C-order
    scan meets the components, so the numbers are those of the whole image): ~10 ms instead of ~1 s for a
    4.3-Mvoxel scan.
    """
    lesion_zyx = sitk.GetArrayViewFromImage(labels) == 2
    found = np.nonzero(lesion_zyx)
    if not found[0].size:
        return []
    low = [int(axis.min()) for axis in found]  # z, y, x
    size = [int(axis.max()) + 1 - start for axis, start in zip(found, low, strict=True)]
    box = sitk.RegionOfInterest(sitk.Cast(labels == 2, sitk.sitkUInt8), size[::-1], low[::-1])  # (x, y, z) for ITK
    rpi = reorient(box, RPI)
    lesion_xyz = sitk.GetArrayFromImage(rpi).transpose(2, 1, 0).astype(bool)
    numbered, count = ndimage.label(lesion_xyz, structure=CONNECTIVITY_18)
    numbers = np.arange(1, count + 1)
    voxels = np.bincount(numbered.ravel(), minlength=count + 1)[1:]
    centres = ndimage.center_of_mass(lesion_xyz, numbered, numbers)
    voxel_mm3 = float(np.prod(rpi.GetSpacing()))
    lesions = []
    for number, count_voxels, (x, y, z) in zip(numbers, voxels, centres, strict=True):
        lx, ly, lz = rpi.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))  # LPS mm
        lesions.append(LiveLesion(int(number), float(count_voxels) * voxel_mm3, int(count_voxels), (-lx, -ly, lz)))
    return lesions


def live_table_rows(lesions: list[LiveLesion]) -> tuple[list[str], list[list[float]]]:
    """Column names and rows of the live lesion table (the ``label`` column is what a row click reads)."""
    columns = ["label", "volume [mm3]", "voxels", "R [mm]", "A [mm]", "S [mm]"]
    rows = [[float(lesion.number), round(lesion.volume_mm3, 3), float(lesion.voxels), *map(float, lesion.centre_ras)]
            for lesion in lesions]
    return columns, rows


class EditDebounce:
    """Runs the live update once the rater paused: ``touch()`` at every stroke, ``due()`` from the panel's
    200 ms timer is True once, ``quiet_s`` seconds after the last stroke (times from ``time.monotonic``)."""

    def __init__(self, quiet_s: float = 1.0) -> None:
        self.quiet_s = quiet_s
        self._last: float | None = None

    def touch(self, now: float) -> None:
        self._last = now

    @property
    def pending(self) -> bool:
        return self._last is not None

    def due(self, now: float) -> bool:
        if self._last is None or now - self._last < self.quiet_s:
            return False
        self._last = None
        return True
