"""Reading, checking, reorienting and writing 3D images with SimpleITK.

Axis order and orientation conventions used in this package:

* A SimpleITK image is indexed (x, y, z) = (i, j, k); ``sitk.GetArrayFromImage`` returns the
  voxels as a numpy array indexed **(z, y, x)**, which is also nnU-Net's axis order.
* Orientation codes come in two flavours that use opposite letters:

  - *ITK/nibabel codes* (used by ``sitk.DICOMOrient`` and ``nibabel.aff2axcodes``) name the
    direction each axis **goes to**: "LAS" = axis 0 increases towards Left, axis 1 towards
    Anterior, axis 2 towards Superior.
  - *SCT codes* (used by the Spinal Cord Toolbox and in SCIseg's ``dataset.json``) name where
    each axis **starts**: SCT "RPI" (from Right, from Posterior, from Inferior) is the
    ITK/nibabel "LAS".

  Functions here say which flavour they take; :func:`sct_to_itk_orientation` converts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

#: File name endings SimpleITK reads for us, longest first so ".nii.gz" wins over ".gz".
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


def image_stem(path: str | os.PathLike[str]) -> str:
    """Return the file name without its image suffix: ``/a/sub-01_T2w.nii.gz`` -> ``sub-01_T2w``."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def sct_to_itk_orientation(sct_code: str) -> str:
    """Convert an SCT orientation code ("from" letters) to ITK/nibabel letters ("to")."""
    code = sct_code.upper()
    if len(code) != 3 or any(letter not in _OPPOSITE for letter in code):
        raise InputError(f"'{sct_code}' is not an orientation code; use three letters such as RPI or LAS.")
    if {_axis_of(letter) for letter in code} != {"RL", "AP", "SI"}:
        raise InputError(f"'{sct_code}' names one anatomical axis twice; use one of R/L, A/P and S/I each.")
    return "".join(_OPPOSITE[letter] for letter in code)


def itk_to_sct_orientation(itk_code: str) -> str:
    """Convert ITK/nibabel orientation letters ("to") to an SCT code ("from"); the inverse of the above."""
    return sct_to_itk_orientation(itk_code)


def _axis_of(letter: str) -> str:
    return {"R": "RL", "L": "RL", "A": "AP", "P": "AP", "S": "SI", "I": "SI"}[letter]


def orientation_of(image: sitk.Image) -> str:
    """Return the ITK/nibabel orientation code ("to" letters) closest to the image's direction cosines."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def reorient(image: sitk.Image, itk_code: str) -> sitk.Image:
    """Permute/flip the voxel axes so that they point as ``itk_code`` says; physical space is unchanged.

    This is a pure re-indexing (no interpolation): every voxel keeps its value and its position
    in mm. For oblique images the closest orientation is used, as SCT and nibabel do.
    """
    if orientation_of(image) == itk_code:
        return image
    return sitk.DICOMOrient(image, itk_code)


def reorient_like(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Undo :func:`reorient`: bring ``image`` back onto the voxel grid of ``reference``.

    ``image`` must be ``reference`` reoriented (same physical grid, other axis order). The result
    carries exactly the reference's origin, spacing and direction (copied, not recomputed), so
    masks written from it lie bit-for-bit on the input grid.
    """
    back = reorient(image, orientation_of(reference))
    if back.GetSize() != reference.GetSize():
        raise ValueError(f"cannot map a {back.GetSize()} grid back onto a {reference.GetSize()} reference grid")
    tolerance = 1e-3 * max(min(reference.GetSpacing()), 1e-6)
    if not np.allclose(back.GetOrigin(), reference.GetOrigin(), atol=max(tolerance, 1e-4)) or not np.allclose(
        back.GetDirection(), reference.GetDirection(), atol=1e-4
    ):
        raise ValueError("the reoriented image does not cover the same physical grid as its reference")
    back.CopyInformation(reference)
    return back


def on_grid_of(image: sitk.Image, reference: sitk.Image, *, what: str = "the mask", where: str = "the volume") -> sitk.Image:
    """``image`` on exactly the reference grid, re-indexed without interpolation when needed.

    The same voxels in mm may be stored with another axis order (Slicer's NIfTI reader flips an axis
    of left-handed files, qfac -1): such an image is re-indexed onto the reference grid exactly. Any
    other difference (size, spacing, position) raises ``ValueError``.
    """
    if same_grid(image, reference, tolerance_mm=1e-3):
        aligned = sitk.Image(image)
        aligned.CopyInformation(reference)
        return aligned
    try:
        return reorient_like(image, reference)
    except ValueError:
        raise ValueError(f"{what} does not lie on the grid of {where} (different size, spacing or position)") from None


def load_image(path: str | os.PathLike[str], *, replace_nonfinite: bool = False) -> sitk.Image:
    """Read a 3D scalar image (NIfTI or NRRD) and check that it can be segmented.

    Args:
        path: the image file.
        replace_nonfinite: replace NaN and +-inf voxels by 0 instead of refusing the image.

    Returns:
        The image as read (data type kept), geometry (origin mm, spacing mm, direction) intact.

    Raises:
        InputError: one sentence naming the file and what to do, for every input we cannot use.
    """
    file = Path(path)
    if not file.exists():
        raise InputError(f"{file}: no such file; check the path.")
    if file.is_dir():
        raise InputError(f"{file} is a folder; give an image file (.nii.gz, .nii or .nrrd).")
    if not os.access(file, os.R_OK):
        raise InputError(f"{file} cannot be read (permission denied).")
    try:
        image = sitk.ReadImage(str(file))
    except RuntimeError:
        raise InputError(
            f"{file} is not an image SimpleITK can read; give a NIfTI (.nii, .nii.gz) or NRRD (.nrrd) file."
        ) from None
    nonfinite = _nifti_nonfinite_mask_zyx(file, image)
    if nonfinite is not None:
        count = int(nonfinite.sum())
        if not replace_nonfinite:
            raise InputError(
                f"{file} has {count} NaN or infinite voxels; fix the image or pass --replace-nonfinite to set them to 0."
            )
        array = sitk.GetArrayFromImage(image)
        array[nonfinite] = 0
        image = image_from_array_zyx(array, image)
    return check_image(image, str(file), replace_nonfinite=replace_nonfinite)


def _nifti_nonfinite_mask_zyx(file: Path, image: sitk.Image) -> np.ndarray | None:
    """(z, y, x) mask of NaN/inf voxels of a floating-point NIfTI file, None when all are finite.

    ITK's NIfTI reader silently turns NaN into 0, so the file is checked with nibabel.
    """
    if not file.name.lower().endswith((".nii", ".nii.gz")) or image.GetDimension() != 3:
        return None
    import nibabel

    raw = nibabel.load(str(file))
    if not np.issubdtype(raw.get_data_dtype(), np.floating):
        return None
    data = np.asanyarray(raw.dataobj)
    if data.ndim != 3:
        return None
    finite = np.isfinite(data)
    if finite.all():
        return None
    return ~finite.transpose(2, 1, 0)


def load_mask(path: str | os.PathLike[str], *, binary: bool = True) -> sitk.Image:
    """Read a 3D mask (or image) with the same clear errors as :func:`load_image`; empty masks are allowed."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: no such file; check the path.")
    try:
        image = sitk.ReadImage(str(file))
    except RuntimeError:
        raise InputError(f"{file} is not an image SimpleITK can read; give a NIfTI or NRRD file.") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{file} is not a 3D single-channel image.")
    if binary:
        values = np.unique(sitk.GetArrayViewFromImage(image))
        if not set(values.tolist()) <= {0, 1}:
            raise InputError(f"{file} is not a binary mask with 0 and 1 values (found {', '.join(map(str, values[:6]))}).")
        image = sitk.Cast(image, sitk.sitkUInt8)
    return image


def check_image(image: sitk.Image, name: str = "the image", *, replace_nonfinite: bool = False) -> sitk.Image:
    """Refuse images that cannot be segmented (2D, 4D, multi-component, non-finite, constant)."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image); "
            "give a single-channel T2-weighted image."
        )
    dimension = image.GetDimension()
    size = image.GetSize()
    if dimension == 4:
        raise InputError(
            f"{name} is 4D with {size[3]} volumes; extract one volume first "
            f"(e.g. `sct_image -i IMAGE -split t` or `fslroi IMAGE OUT 0 1`) and segment that."
        )
    if dimension != 3:
        raise InputError(f"{name} is {dimension}D; SCIseg segments 3D images.")
    if min(size) < 2:
        raise InputError(f"{name} has a single slice (size {size[0]}x{size[1]}x{size[2]}); SCIseg needs a 3D volume.")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            count = int(array.size - np.count_nonzero(finite))
            if not replace_nonfinite:
                raise InputError(
                    f"{name} has {count} NaN or infinite voxels; fix the image or pass --replace-nonfinite "
                    "to set them to 0."
                )
            clean = np.where(finite, array, 0).astype(array.dtype)
            cleaned = sitk.GetImageFromArray(clean)
            cleaned.CopyInformation(image)
            image, array = cleaned, clean
    if array.size == 0 or array.min() == array.max():
        raise InputError(f"{name} is empty or constant (every voxel = {array.flat[0]}); it holds nothing to segment.")
    return image


def array_zyx(image: sitk.Image, dtype: type = np.float32) -> np.ndarray:
    """Return a copy of the voxels as a numpy array indexed (z, y, x), cast to ``dtype``."""
    return sitk.GetArrayFromImage(image).astype(dtype, copy=False)


def image_from_array_zyx(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """Wrap a (z, y, x) array as an image on exactly the reference's grid."""
    expected = tuple(reversed(reference.GetSize()))
    if array.shape != expected:
        raise ValueError(f"array of shape {array.shape} does not match the reference grid (z, y, x) {expected}")
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference)
    return image


def same_grid(a: sitk.Image, b: sitk.Image, tolerance_mm: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tolerance_mm``)."""
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance_mm)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance_mm)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    )


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_file(temporary: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Give a temporary file the usual permissions (0666 minus umask) and rename it atomically."""
    os.chmod(temporary, 0o666 & ~_current_umask())
    os.replace(temporary, final)


def write_image_atomic(image: sitk.Image, path: str | os.PathLike[str], *, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` through a temporary file in the same folder and an atomic rename.

    A crash or a cancel never leaves a half-written file under the final name.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = next((s for s in IMAGE_SUFFIXES if target.name.lower().endswith(s)), target.suffix)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{suffix}", dir=target.parent)
    os.close(handle)
    try:
        sitk.WriteImage(image, temporary, useCompression=compress)
        publish_file(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def write_mask(mask_zyx: np.ndarray, reference: sitk.Image, path: str | os.PathLike[str]) -> Path:
    """Write a binary or label (z, y, x) array as uint8 on the reference grid, atomically."""
    image = image_from_array_zyx(np.asarray(mask_zyx, dtype=np.uint8), reference)
    return write_image_atomic(image, path)


def voxel_volume_mm3(image: sitk.Image) -> float:
    """Volume of one voxel in mm3."""
    return float(np.prod(image.GetSpacing()))
