"""Checks of user files before they are used: whole (not truncated), and masks holding mask values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError


def check_whole_image_file(path: Path, what: str = "image") -> None:
    """Refuse a NIfTI file that ends before its voxel data does (SimpleITK would fill the rest with zeros).

    nibabel reads every voxel (and the gzip stream to its end); NRRD and other formats are left to SimpleITK.
    """
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")) or not path.is_file():
        return  # a missing file gets its own message from the reader
    import nibabel

    try:
        np.asarray(nibabel.load(str(path)).dataobj)
    except Exception as error:  # noqa: BLE001 - EOFError, zlib/gzip errors, ValueError of a short mmap...
        raise InputError(f"{path}: the file ends before its data does or is damaged ({type(error).__name__}); "
                         f"give the whole {what} file.") from None


def check_mask_values(array: np.ndarray, path: Path, allowed: tuple[int, ...] = (0, 1, 2)) -> None:
    """Refuse an array that is not a mask or label map: values outside ``allowed`` (an image given as a mask)."""
    values = np.unique(array)
    extra = [v for v in values.tolist() if v not in allowed]
    if extra:
        shown = ", ".join(f"{v:g}" for v in extra[:4])
        kind = "binary mask (0 and 1)" if allowed == (0, 1) else "mask or label map (0, 1 and 2)"
        raise InputError(f"{path} is not a {kind}: it holds {shown}{'...' if len(extra) > 4 else ''}; "
                         "give a mask, not an image.")
