"""Checks of user files before they are used: whole (not truncated), and masks holding mask values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError


def check_whole_image_file(path: Path, what: str = "image") -> None:
    """Refuse a NIfTI file whose header is broken or that ends before its voxel data does.

    The header and completeness checks of :mod:`SCIsegLib.image_header` (no voxel kept in memory); a missing
    file gets its own message from the reader, and formats other than NIfTI are left to SimpleITK.
    """
    from .image_header import check_complete, is_nifti, read_header

    path = Path(path)
    if not is_nifti(path) or not path.is_file():
        return
    check_complete(read_header(path))


def check_mask_values(array: np.ndarray, path: Path, allowed: tuple[int, ...] = (0, 1, 2)) -> None:
    """Refuse an array that is not a mask or label map: values outside ``allowed`` (an image given as a mask)."""
    values = np.unique(array)
    extra = [v for v in values.tolist() if v not in allowed]
    if extra:
        shown = ", ".join(f"{v:g}" for v in extra[:4])
        kind = "binary mask (0 and 1)" if allowed == (0, 1) else "mask or label map (0, 1 and 2)"
        raise InputError(f"{path} is not a {kind}: it holds {shown}{'...' if len(extra) > 4 else ''}; "
                         "give a mask, not an image.")
