"""QC images of one scan, as in SCT's ``sct_qc``: an axial mosaic cropped around the cord and a sagittal view
of the whole cord, each as a grey PNG and a transparent PNG of the cord (yellow) and lesion (red) contours,
stacked by the report so a key toggles the overlay.

Each mosaic tile carries its slice number (RPI z, I->S: the ``Slice (I->S)`` of the CSA table). The sagittal view
follows the cord: on every axial slice it samples the image at the cord's R-L centre (a curved reformat, so a
cord curving left and right stays in view), and its contours are the cord and lesion projected along R-L, so no
lesion is missed for lying off the midline.

Display conventions: images are resampled to square pixels of ``PIXEL_MM``; axial slices are shown with
anterior at the top and the patient's right on the viewer's left (radiological); the sagittal view has
superior at the top and anterior on the left.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw
from scipy import ndimage

from ..volume import reorient, sct_to_itk_orientation

PIXEL_MM = 0.5
AXIAL_CROP_MM = 32.0
MOSAIC_COLUMNS = 6
MOSAIC_MAX_SLICES = 18
CORD_RGBA = (255, 220, 0, 255)
LESION_RGBA = (255, 0, 0, 255)


def _rpi_arrays(image: sitk.Image, cord: sitk.Image, lesion: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Image, cord and lesion in RPI as (x R->L, y P->A, z I->S) arrays, and the spacing (mm) in that order."""
    code = sct_to_itk_orientation("RPI")
    arrays = [sitk.GetArrayFromImage(reorient(item, code)).transpose(2, 1, 0) for item in (image, cord, lesion)]
    spacing = reorient(image, code).GetSpacing()
    return arrays[0].astype(np.float32), arrays[1] > 0, arrays[2] > 0, tuple(float(s) for s in spacing)


def _grey(plane: np.ndarray, low: float, high: float) -> np.ndarray:
    return (np.clip((plane - low) / max(high - low, 1e-6), 0, 1) * 255).astype(np.uint8)


def _resize(plane: np.ndarray, rows_mm: float, columns_mm: float, nearest: bool) -> np.ndarray:
    """Resample a 2D plane to square pixels of PIXEL_MM (rows_mm, columns_mm = pixel size of the input)."""
    height = max(1, int(round(plane.shape[0] * rows_mm / PIXEL_MM)))
    width = max(1, int(round(plane.shape[1] * columns_mm / PIXEL_MM)))
    mode = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(plane).resize((width, height), mode))


def _contour(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def _overlay(cord: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*cord.shape, 4), dtype=np.uint8)
    rgba[_contour(cord)] = CORD_RGBA
    rgba[_contour(lesion)] = LESION_RGBA
    return rgba


def _axial_slices(cord: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """RPI z indices shown in the mosaic: the lesion's slices (with a margin) when there is a lesion, else the cord's."""
    present = np.nonzero(lesion.any(axis=(0, 1)))[0]
    if present.size:
        low, high = max(0, present.min() - 2), min(cord.shape[2] - 1, present.max() + 2)
    else:
        present = np.nonzero(cord.any(axis=(0, 1)))[0]
        if not present.size:
            present = np.arange(cord.shape[2])
        low, high = present.min(), present.max()
    candidates = np.arange(low, high + 1)
    if candidates.size > MOSAIC_MAX_SLICES:
        candidates = np.unique(np.linspace(low, high, MOSAIC_MAX_SLICES).round().astype(int))
    return candidates[::-1]  # superior first


def _axial_tile(image: np.ndarray, cord: np.ndarray, lesion: np.ndarray, z: int, spacing: tuple, centre: tuple[float, float]):
    """One axial slice cropped to AXIAL_CROP_MM around the cord centre; rows A->P, columns R->L."""
    half_x = int(math.ceil(AXIAL_CROP_MM / 2 / spacing[0]))
    half_y = int(math.ceil(AXIAL_CROP_MM / 2 / spacing[1]))
    cx, cy = int(round(centre[0])), int(round(centre[1]))
    pad = ((half_x, half_x), (half_y, half_y))
    planes = []
    for volume in (image, cord, lesion):
        plane = np.pad(volume[:, :, z], pad)[cx : cx + 2 * half_x, cy : cy + 2 * half_y]
        planes.append(plane.T[::-1])  # rows y (A at the top), columns x (R on the left)
    return planes


def _label_tile(tile: np.ndarray, text: str) -> np.ndarray:
    """The grey tile with ``text`` in white on black in its top-left corner."""
    picture = Image.fromarray(tile)
    draw = ImageDraw.Draw(picture)
    left, top, right, bottom = draw.textbbox((2, 1), text)
    draw.rectangle((0, 0, right + 2, bottom + 1), fill=0)
    draw.text((2, 1), text, fill=255)
    return np.asarray(picture)


def cord_centre_x(cord: np.ndarray, fallback: float) -> np.ndarray:
    """R-L centre (voxels) of the cord on every axial slice: the mean x of its voxels, interpolated linearly across
    slices without cord and held constant beyond its ends; ``fallback`` everywhere when there is no cord."""
    nz = cord.shape[2]
    present = np.nonzero(cord.any(axis=(0, 1)))[0]
    if not present.size:
        return np.full(nz, fallback)
    centres = np.array([np.nonzero(cord[:, :, z])[0].mean() for z in present])
    return np.interp(np.arange(nz), present, centres)


def curved_sagittal(volume: np.ndarray, centre_x: np.ndarray) -> np.ndarray:
    """(y, z) plane sampling ``volume`` (x, y, z) at x = ``centre_x[z]`` on every slice (linear along x)."""
    low = np.clip(np.floor(centre_x).astype(int), 0, volume.shape[0] - 1)
    high = np.clip(low + 1, 0, volume.shape[0] - 1)
    weight = (centre_x - np.floor(centre_x))[None, :]
    z = np.arange(volume.shape[2])
    return (1 - weight) * volume[low, :, z].T + weight * volume[high, :, z].T


def write_qc_images(image: sitk.Image, cord: sitk.Image, lesion: sitk.Image, folder: Path, stem: str) -> dict[str, str]:
    """Write ``<stem>_axial.png``, ``<stem>_axial_overlay.png``, ``<stem>_sagittal.png``, ``<stem>_sagittal_overlay.png``
    into ``folder``; return their file names by role (``axial``, ``axial_overlay``, ...) and, under ``slices``, the
    mosaic's slice numbers in tile order (comma-separated)."""
    folder.mkdir(parents=True, exist_ok=True)
    volume, cord_xyz, lesion_xyz, spacing = _rpi_arrays(image, cord, lesion)
    inside = volume[cord_xyz] if cord_xyz.any() else volume
    low, high = np.percentile(volume, 1), max(np.percentile(volume, 99.5), float(np.percentile(inside, 99)))

    # Axial mosaic
    centres = {}
    cord_slices = np.nonzero(cord_xyz.any(axis=(0, 1)))[0]
    fallback = ((volume.shape[0] - 1) / 2, (volume.shape[1] - 1) / 2)
    tiles, tile_masks = [], []
    shown = _axial_slices(cord_xyz, lesion_xyz)
    for z in shown:
        if cord_xyz[:, :, z].any():
            centres[z] = ndimage.center_of_mass(cord_xyz[:, :, z])
        elif cord_slices.size:
            nearest = cord_slices[np.argmin(np.abs(cord_slices - z))]
            centres[z] = ndimage.center_of_mass(cord_xyz[:, :, nearest])
        else:
            centres[z] = fallback
        grey, cord_plane, lesion_plane = _axial_tile(volume, cord_xyz, lesion_xyz, int(z), spacing, centres[z])
        tiles.append(_label_tile(_resize(_grey(grey, low, high), spacing[1], spacing[0], nearest=False), f"z{int(z)}"))
        tile_masks.append(
            (_resize(cord_plane.astype(np.uint8), spacing[1], spacing[0], True) > 0,
             _resize(lesion_plane.astype(np.uint8), spacing[1], spacing[0], True) > 0)
        )
    height, width = tiles[0].shape
    rows = int(math.ceil(len(tiles) / MOSAIC_COLUMNS))
    columns = min(MOSAIC_COLUMNS, len(tiles))
    mosaic = np.zeros((rows * height, columns * width), np.uint8)
    overlay = np.zeros((rows * height, columns * width, 4), np.uint8)
    for index, (tile, (cord_tile, lesion_tile)) in enumerate(zip(tiles, tile_masks, strict=True)):
        r, c = divmod(index, MOSAIC_COLUMNS)
        mosaic[r * height : (r + 1) * height, c * width : (c + 1) * width] = tile
        overlay[r * height : (r + 1) * height, c * width : (c + 1) * width] = _overlay(cord_tile, lesion_tile)

    # Sagittal view along the cord (curved reformat), contours projected along R-L
    centre_x = cord_centre_x(cord_xyz, (volume.shape[0] - 1) / 2)
    planes = (curved_sagittal(volume, centre_x), cord_xyz.any(axis=0), lesion_xyz.any(axis=0))
    sagittal = [plane.T[::-1, ::-1] for plane in planes]  # rows z (S top), cols y (A left)
    sagittal_grey = _resize(_grey(sagittal[0], low, high), spacing[2], spacing[1], nearest=False)
    sagittal_cord = _resize(sagittal[1].astype(np.uint8), spacing[2], spacing[1], True) > 0
    sagittal_lesion = _resize(sagittal[2].astype(np.uint8), spacing[2], spacing[1], True) > 0

    names = {
        "axial": f"{stem}_axial.png",
        "axial_overlay": f"{stem}_axial_overlay.png",
        "sagittal": f"{stem}_sagittal.png",
        "sagittal_overlay": f"{stem}_sagittal_overlay.png",
    }
    slices = ",".join(str(int(z)) for z in shown)
    Image.fromarray(mosaic).save(folder / names["axial"], optimize=True)
    Image.fromarray(overlay, "RGBA").save(folder / names["axial_overlay"], optimize=True)
    Image.fromarray(sagittal_grey).save(folder / names["sagittal"], optimize=True)
    Image.fromarray(_overlay(sagittal_cord, sagittal_lesion), "RGBA").save(folder / names["sagittal_overlay"], optimize=True)
    return {**names, "slices": slices}
