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
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .image_header import (  # noqa: F401 - re-exported: volume.py is where image reads and their checks live
    DEFAULT_MAX_VOXELS,
    MIN_VOXELS_PER_AXIS,
    SEGMENT_BYTES_PER_VOXEL,
    ImageHeader,
    available_memory_bytes,
    check_complete,
    check_file,
    check_size,
    is_nifti,
    read_header,
    unreadable,
)

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
    difference = grid_difference(back, reference)
    if difference:
        raise ValueError(f"the reoriented image does not cover the same physical grid as its reference ({difference})")
    back.CopyInformation(reference)
    return back


def on_grid_of(image: sitk.Image, reference: sitk.Image, *, what: str = "the mask", where: str = "the volume") -> sitk.Image:
    """``image`` on exactly the reference grid, re-indexed without interpolation when needed.

    The same voxels in mm may be stored with another axis order (Slicer's NIfTI reader flips an axis
    of left-handed files, qfac -1): such an image is re-indexed onto the reference grid exactly. Any
    other difference (size, spacing, origin, direction beyond :func:`grid_difference`'s tolerance) raises
    ``ValueError`` naming it.
    """
    difference = grid_difference(image, reference)
    if difference is None:
        aligned = sitk.Image(image)
        aligned.CopyInformation(reference)
        return aligned
    try:
        return reorient_like(image, reference)
    except ValueError:
        raise ValueError(f"{what} does not lie on the grid of {where} ({difference})") from None


def _read_quietly(file: Path) -> sitk.Image:
    """``sitk.ReadImage`` without ITK's multi-line console warnings (e.g. "unexpected scales in sform"):
    the checks here and :func:`geometry_warning` say what matters in one sentence."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return sitk.ReadImage(str(file))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def load_image(
    path: str | os.PathLike[str], *, replace_nonfinite: bool = False, max_voxels: int | None = DEFAULT_MAX_VOXELS
) -> sitk.Image:
    """Read a 3D scalar image (NIfTI or NRRD) and check that it can be segmented.

    The header, the memory it needs and the file's completeness are checked before any voxel is read
    (:func:`check_file`).

    Args:
        path: the image file.
        replace_nonfinite: replace NaN and +-inf voxels by 0 instead of refusing the image.
        max_voxels: refuse images with more voxels (None: only the memory limit).

    Returns:
        The image as read (data type kept), geometry (origin mm, spacing mm, direction) intact.

    Raises:
        InputError: one sentence naming the file and what to do, for every input we cannot use.
    """
    file = Path(path)
    size = check_file(file, max_voxels=max_voxels).size_xyz
    if len(size) == 3 and 1 < min(size) < MIN_VOXELS_PER_AXIS:
        raise InputError(
            f"{file} is only {size[0]}x{size[1]}x{size[2]} voxels, too small to hold a spinal cord; "
            f"SCIseg needs at least {MIN_VOXELS_PER_AXIS} voxels along each axis."
        )
    try:
        image = _read_quietly(file)
    except RuntimeError:
        raise unreadable(file) from None
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
    _check_float32_range(file, image)
    return check_image(image, str(file), replace_nonfinite=replace_nonfinite)


def _check_float32_range(file: Path, image: sitk.Image) -> None:
    """Refuse float64 values beyond float32's range (the network computes in float32: they would become inf)."""
    if image.GetPixelID() != sitk.sitkFloat64:
        return
    array = sitk.GetArrayViewFromImage(image)
    finite = array[np.isfinite(array)]
    if finite.size and float(np.abs(finite).max()) > float(np.finfo(np.float32).max):
        raise InputError(
            f"{file} holds float64 values up to {float(np.abs(finite).max()):.3g}, beyond the float32 range the "
            "network computes in; rescale the image (e.g. to 0-1000)."
        )


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


def load_mask(path: str | os.PathLike[str], *, binary: bool = True, max_voxels: int | None = DEFAULT_MAX_VOXELS) -> sitk.Image:
    """Read a 3D mask (or image) with the same checks as :func:`load_image` (header, size, completeness);
    empty masks are allowed."""
    file = Path(path)
    check_file(file, max_voxels=max_voxels)
    try:
        image = _read_quietly(file)
    except RuntimeError:
        raise unreadable(file) from None
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


def check_model_grid(header: ImageHeader, target_spacing_mm: Sequence[float] | None,
                     max_voxels: int | None = DEFAULT_MAX_VOXELS) -> None:
    """Refuse an image that nnU-Net's resampling to the model's voxel size would leave empty or make too large.

    nnU-Net resamples to ``target_spacing_mm`` (the plans' spacing): ``round(size * spacing / target)`` voxels per
    axis. Which image axis meets which target spacing depends on the orientations, so bounds true for any pairing
    are used: an axis whose extent (size x spacing, mm) is under half the largest target spacing may round to 0
    voxels; a 3D model's voxel count after resampling is the image's volume in mm3 over one target voxel's.
    """
    if not target_spacing_mm:
        return
    extent = [n * s for n, s in zip(header.size_xyz, header.spacing_mm, strict=False)]
    target = [float(t) for t in target_spacing_mm]
    shown = " x ".join(f"{e:.3g}" for e in extent)
    model = " x ".join(f"{t:g}" for t in target)
    if min(extent) < 0.5 * max(target):
        raise InputError(f"{header.path} covers {shown} mm (voxel sizes {', '.join(f'{v:g}' for v in header.spacing_mm)} mm): "
                         f"resampled to the model's {model} mm voxels it would have no voxel along an axis; check its "
                         "voxel sizes (pixdim) in the header.")
    if max_voxels is not None and len(target) == len(extent):
        resampled = float(np.prod(extent)) / float(np.prod(target))
        if resampled > max_voxels:
            raise InputError(f"{header.path} covers {shown} mm: resampled to the model's {model} mm voxels it would have "
                             f"{resampled:,.0f} voxels, more than the limit of {max_voxels:,} (--max-voxels); check its "
                             "voxel sizes (pixdim) in the header.")


def check_images(
    inputs: list[Path],
    *,
    replace_nonfinite: bool = False,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    warn: Callable[[str], None] | None = None,
    target_spacing_mm: Sequence[float] | None = None,
) -> None:
    """Check the inputs of a segmentation into one output folder, before torch or a model is loaded.

    Names first (two inputs with one stem would overwrite each other's outputs), then the headers, sizes
    and completeness of all files (milliseconds each, no voxel read), then each image's voxels, one at
    a time (none kept). ``warn`` receives the geometry warnings (:func:`geometry_warning`). With the model's
    ``target_spacing_mm``, each image must also survive resampling to it (:func:`check_model_grid`).
    """
    stems = [image_stem(p) for p in inputs]
    duplicates = {s for s in stems if stems.count(s) > 1}
    if duplicates:
        raise InputError(f"several inputs share the name '{sorted(duplicates)[0]}'; their outputs would overwrite each other.")
    for path in inputs:
        check_model_grid(check_file(path, max_voxels=max_voxels), target_spacing_mm, max_voxels)
    for path in inputs:
        image = load_image(path, replace_nonfinite=replace_nonfinite, max_voxels=max_voxels)
        note = geometry_warning(path, image)
        if note and warn is not None:
            warn(note)


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The image's 4x4 voxel (i, j, k) -> RAS mm matrix, as nibabel writes it (ITK's LPS flipped)."""
    matrix = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix[:3, :3] = direction * np.array(image.GetSpacing())
    matrix[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix


def geometry_warning(path: str | os.PathLike[str], image: sitk.Image) -> str | None:
    """A sentence when a NIfTI header's qform and sform disagree (or an sform-only file's scales differ
    from its pixdim), saying which one the segmentation used; None when the header is consistent.

    Masks are written with the input's own header (:func:`write_image_file`), so they carry both
    matrices unchanged whichever a tool reads.
    """
    if not is_nifti(path):
        return None
    import nibabel

    header = nibabel.load(str(path)).header
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    used = ras_affine(image)

    def near(a: np.ndarray) -> bool:
        return bool(np.allclose(a, used, atol=1e-3))

    if qcode and scode and not np.allclose(qform, sform, atol=1e-3):
        which = "sform" if near(sform) and not near(qform) else "qform" if near(qform) else "neither (ITK's own fallback)"
        gap = float(np.abs(qform - sform).max())
        return (
            f"{path}: its qform and sform disagree (by up to {gap:.3g} mm); the segmentation used the {which}, as "
            "SimpleITK/ITK-SNAP read it, and the masks carry both unchanged, so they overlay the input in every tool "
            "that reads the same matrix."
        )
    if scode and not qcode:
        scales = np.sqrt((sform[:3, :3] ** 2).sum(axis=0))
        pixdim = np.asarray(header["pixdim"][1:4], dtype=float)
        if not np.allclose(scales, pixdim, rtol=1e-3):
            which = "sform" if near(sform) else "pixdim voxel sizes with the sform's directions"
            return (
                f"{path}: it has only an sform, whose voxel sizes ({', '.join(f'{v:.4g}' for v in scales)} mm) differ "
                f"from its pixdim ({', '.join(f'{v:.4g}' for v in pixdim)} mm); the segmentation used the {which}, "
                "and the masks carry the same header unchanged."
            )
    return None


def write_image_file(image: sitk.Image, path: str | os.PathLike[str], *, geometry_from: str | os.PathLike[str] | None = None) -> None:
    """Write ``image`` to exactly ``path`` (compressed NIfTI/NRRD by its name; not atomic, see callers).

    When ``geometry_from`` is a NIfTI file on the same voxel grid, the file is written with nibabel
    using a copy of that file's header: qform, sform, their codes, pixdim, units and dim_info are the
    input's own bytes (as SCT's outputs), so nibabel/FSL/SCT and ITK read the same geometry from the
    mask as from its input. Only the data type, scaling, intent, description and extensions change.
    """
    if geometry_from is None or not is_nifti(geometry_from):
        sitk.WriteImage(image, str(path), useCompression=True)
        return
    import nibabel

    source = nibabel.load(str(geometry_from))
    size_xyz = tuple(int(n) for n in source.header.get_data_shape()[:3])
    if tuple(image.GetSize()) != size_xyz:
        raise ValueError(f"the image of size {image.GetSize()} is not on the {size_xyz} grid of {geometry_from}")
    data_xyz = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    header = source.header.copy()
    header.extensions.clear()
    header.set_data_dtype(data_xyz.dtype)
    header.set_data_shape(data_xyz.shape)
    header.set_slope_inter(1.0, 0.0)
    header.set_intent("none")
    header["cal_min"], header["cal_max"] = 0.0, float(data_xyz.max()) if data_xyz.size else 0.0
    header["descrip"] = b"SCIseg"
    output = type(source)(np.ascontiguousarray(data_xyz), None, header=header)
    nibabel.save(output, str(path))


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


#: How far two grids may differ and still be one (mm for spacing and origin; direction cosines, unitless):
#: what NIfTI's float32 header fields and Slicer's round trips leave, far below any real voxel size.
GRID_TOLERANCE_MM = 1e-3
GRID_DIRECTION_TOLERANCE = 1e-4


def grid_difference(a: sitk.Image, b: sitk.Image, tolerance_mm: float = GRID_TOLERANCE_MM) -> str | None:
    """The one grid check of SCIsegLib: what differs between two images' voxel grids, or None when they are one.

    Compares size (voxels), spacing (mm), origin (mm) and direction, in SimpleITK's (x, y, z) order; the
    sentence names the first difference with both values, e.g. "spacing (2.0, 2.0, 2.0) mm vs (1.0, 1.0, 1.0) mm".
    """
    def values(v: tuple) -> str:
        return "(" + ", ".join(f"{x:g}" for x in v) + ")"

    if a.GetDimension() != b.GetDimension() or a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()} voxels"
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=tolerance_mm):
        return f"spacing {values(a.GetSpacing())} mm vs {values(b.GetSpacing())} mm"
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=tolerance_mm):
        return f"origin {values(a.GetOrigin())} mm vs {values(b.GetOrigin())} mm"
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=GRID_DIRECTION_TOLERANCE):
        return f"direction {values(a.GetDirection())} vs {values(b.GetDirection())}"
    return None


def same_grid(a: sitk.Image, b: sitk.Image, tolerance_mm: float = GRID_TOLERANCE_MM) -> bool:
    """True when two images share size, spacing, origin and direction (:func:`grid_difference` finds nothing)."""
    return grid_difference(a, b, tolerance_mm) is None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_file(temporary: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Give a temporary file the usual permissions (0666 minus umask) and rename it atomically."""
    os.chmod(temporary, 0o666 & ~_current_umask())
    os.replace(temporary, final)


def write_text_atomic(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` through a temporary in the same folder and an atomic rename (whole or not at all)."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    publish_file(temporary, path)
    return path


def write_image_atomic(
    image: sitk.Image, path: str | os.PathLike[str], *, compress: bool = True, geometry_from: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``image`` to ``path`` through a registered temporary in the same folder and an atomic rename.

    A crash or a cancel never leaves a half-written file under the final name; a temporary left by a
    killed process is removed by the next run in that folder (:func:`SCIsegLib.staging.recover_folder`).
    ``geometry_from``: a NIfTI whose header the file carries (see :func:`write_image_file`).
    """
    from .staging import new_temporary, publish

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    register: list[Path] = []
    try:
        temporary = new_temporary(target, register)
        if geometry_from is not None:
            write_image_file(image, temporary, geometry_from=geometry_from)
        else:
            sitk.WriteImage(image, str(temporary), useCompression=compress)
        publish(temporary, target)
    finally:
        for leftover in register:
            leftover.unlink(missing_ok=True)
    return target


def write_mask(mask_zyx: np.ndarray, reference: sitk.Image, path: str | os.PathLike[str]) -> Path:
    """Write a binary or label (z, y, x) array as uint8 on the reference grid, atomically."""
    image = image_from_array_zyx(np.asarray(mask_zyx, dtype=np.uint8), reference)
    return write_image_atomic(image, path)


def voxel_volume_mm3(image: sitk.Image) -> float:
    """Volume of one voxel in mm3."""
    return float(np.prod(image.GetSpacing()))
