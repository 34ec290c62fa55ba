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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


#: Default upper limit on the voxels of one image (``--max-voxels``): 2**28 = 268 million voxels, e.g.
#: 1024 x 1024 x 256. Spinal cord scans hold 1-70 million voxels.
DEFAULT_MAX_VOXELS: int = 2**28

#: Bytes of memory segmenting one voxel needs, a deliberately high estimate: the image as read and as
#: float32 (reoriented copy, nnU-Net's normalised copy), three float32 class logits and probabilities,
#: their resampled copies and the uint8 masks.
SEGMENT_BYTES_PER_VOXEL: int = 64

#: Fewest voxels along any axis of an image we segment (a 2x2x2 "scan" holds no spinal cord).
MIN_VOXELS_PER_AXIS: int = 3

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: str | os.PathLike[str]) -> bool:
    """True for ``.nii`` and ``.nii.gz`` file names."""
    return str(path).lower().endswith(_NIFTI_SUFFIXES)


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without its voxels.

    Attributes:
        path: the file.
        size_xyz: voxels along each stored axis (i, j, k), trailing axes of length 1 dropped.
        spacing_mm: voxel size along each axis in mm.
        voxel_bytes: bytes of one stored voxel.
        data_bytes: bytes of the voxel data (``prod(size_xyz) * voxel_bytes``).
        data_offset: byte where the voxel data starts (NIfTI ``vox_offset``), 0 when unknown.
    """

    path: Path
    size_xyz: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    voxel_bytes: int
    data_bytes: int
    data_offset: int

    @property
    def voxels(self) -> int:
        return int(np.prod(self.size_xyz, dtype=np.int64))


def _check_path(file: Path) -> None:
    if not file.exists():
        raise InputError(f"{file}: no such file; check the path.")
    if file.is_dir():
        raise InputError(f"{file} is a folder; give an image file (.nii.gz, .nii or .nrrd).")
    if not os.access(file, os.R_OK):
        raise InputError(f"{file} cannot be read (permission denied).")


def _unreadable(file: Path) -> InputError:
    return InputError(f"{file} is not an image SimpleITK can read; give a NIfTI (.nii, .nii.gz) or NRRD (.nrrd) file.")


def _shape_sentence(file: Path, shape: tuple[int, ...]) -> None:
    """Refuse 2D and 4D+ shapes with a sentence that says which they are."""
    if len(shape) < 3:
        dims = "x".join(map(str, shape)) or "0"
        raise InputError(f"{file} is a 2D image ({dims} voxels); SCIseg segments 3D volumes, give the whole 3D scan.")
    if len(shape) > 3:
        raise InputError(
            f"{file} is {len(shape)}D with {int(np.prod(shape[3:]))} volumes; extract one volume first "
            f"(e.g. `sct_image -i IMAGE -split t` or `fslroi IMAGE OUT 0 1`) and segment that."
        )


def _check_spacing(file: Path, spacing: tuple[float, ...]) -> None:
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        shown = ", ".join(f"{v:g}" for v in spacing)
        raise InputError(
            f"{file} has voxel sizes (pixdim) of {shown} mm; each must be a positive number, so fix the header "
            "(e.g. with nibabel or `sct_image -set-zooms`)."
        )


def read_header(path: str | os.PathLike[str]) -> ImageHeader:
    """Read and check the header of an image file without reading its voxels (milliseconds, little memory).

    Refuses (``InputError``, one sentence) missing or unreadable files, 2D and 4D images, complex or
    multi-component voxels, voxel sizes that are zero, negative or not a number, non-finite
    orientation matrices, and a NIfTI ``vox_offset`` beyond the end of the file.
    """
    file = Path(path)
    _check_path(file)
    if not is_nifti(file):
        return _read_header_itk(file)
    header = _raw_nifti_header(file)
    dim = [int(n) for n in header["dim"]]
    if not 1 <= dim[0] <= 7 or any(n < 1 for n in dim[1 : dim[0] + 1]):
        raise _unreadable(file)
    shape = tuple(dim[1 : dim[0] + 1])
    code = int(header["datatype"][0])
    if code not in _NIFTI_DTYPES:
        raise _unreadable(file)
    dtype = np.dtype(_NIFTI_DTYPES[code])
    vox_offset = float(header["vox_offset"][0])
    if not np.isfinite(vox_offset) or vox_offset < 0:
        raise InputError(f"{file}: its header gives no valid start of the voxel data (vox_offset {vox_offset}); the header is damaged.")
    offset = max(int(vox_offset), int(header["sizeof_hdr"][0]) + 4)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    _shape_sentence(file, shape)
    if dtype.kind == "c":
        raise InputError(
            f"{file} holds complex-valued voxels ({dtype}); give a magnitude image (e.g. `fslcomplex -realabs`)."
        )
    if dtype.fields is not None or dtype.kind not in "uif":
        raise InputError(f"{file} has {dtype} voxels (colour or vector image); give a single-channel T2-weighted image.")
    _check_spacing(file, tuple(float(z) for z in header["pixdim"][1:4]))
    for name in ("qform", "sform"):
        if int(header[f"{name}_code"][0]) and not np.all(np.isfinite(header[name])):
            raise InputError(f"{file} has a {name} with values that are not numbers; fix the header.")
    data_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not file.name.lower().endswith(".gz"):
        on_disk = file.stat().st_size
        if offset > on_disk:
            raise InputError(
                f"{file}: its header puts the voxel data at byte {offset} (vox_offset), beyond the end of the "
                f"{on_disk}-byte file; the header is damaged."
            )
    zooms = tuple(float(z) for z in header["pixdim"][1:4])
    return ImageHeader(file, shape[:3], zooms, dtype.itemsize, data_bytes, offset)


#: NIfTI ``datatype`` code -> numpy type of one voxel (RGB as structured types, refused later).
_NIFTI_DTYPES: dict[int, str] = {
    2: "u1", 4: "i2", 8: "i4", 16: "f4", 32: "c8", 64: "f8", 128: "u1,u1,u1", 256: "i1", 512: "u2", 768: "u4",
    1024: "i8", 1280: "u8", 1536: "f16", 1792: "c16", 2048: "c32", 2304: "u1,u1,u1,u1",
}

#: Byte offsets and types of the header fields we check, NIfTI-1 (348 bytes) and NIfTI-2 (540 bytes).
_NIFTI_FIELDS: dict[int, dict[str, tuple[int, str, int]]] = {
    348: {
        "dim": (40, "i2", 8), "datatype": (70, "i2", 1), "pixdim": (76, "f4", 8), "vox_offset": (108, "f4", 1),
        "qform_code": (252, "i2", 1), "sform_code": (254, "i2", 1), "qform": (256, "f4", 6), "sform": (280, "f4", 12),
        "magic": (344, "S4", 1),
    },
    540: {
        "magic": (4, "S8", 1), "datatype": (12, "i2", 1), "dim": (16, "i8", 8), "pixdim": (104, "f8", 8),
        "vox_offset": (168, "i8", 1), "qform_code": (344, "i4", 1), "sform_code": (348, "i4", 1),
        "qform": (352, "f8", 6), "sform": (400, "f8", 12),
    },
}


def _raw_nifti_header(file: Path) -> dict[str, np.ndarray]:
    """The NIfTI-1 or NIfTI-2 header fields we check, as stored (no library "fixes" them; no nibabel import,
    which alone costs more than the rest of a refusal). ``qform`` = quatern_b/c/d + qoffset_x/y/z,
    ``sform`` = srow_x/y/z."""
    import gzip

    incomplete = InputError(f"{file}: the file ends before its header does; the copy is incomplete, copy it again.")
    try:
        opener = gzip.open if file.name.lower().endswith(".gz") else open
        with opener(file, "rb") as stream:
            block = stream.read(540)
    except EOFError:
        raise incomplete from None
    except OSError:
        raise _unreadable(file) from None
    if not block:
        raise _unreadable(file)
    size, order = int.from_bytes(block[:4], "little"), "<"
    if size not in _NIFTI_FIELDS:
        size, order = int.from_bytes(block[:4], "big"), ">"
    if size not in _NIFTI_FIELDS:
        raise _unreadable(file)
    if len(block) < size:
        raise incomplete
    fields = {
        name: np.frombuffer(block, dtype=np.dtype(kind if kind.startswith("S") else order + kind), count=count, offset=offset)
        for name, (offset, kind, count) in _NIFTI_FIELDS[size].items()
    }
    if not bytes(fields["magic"][0]).startswith((b"n+1", b"n+2")):
        raise _unreadable(file)
    fields["sizeof_hdr"] = np.array([size])
    return fields


def _read_header_itk(file: Path) -> ImageHeader:
    """Header of a NRRD/MetaImage file with SimpleITK's ``ReadImageInformation`` (no voxels read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise _unreadable(file) from None
    shape = tuple(int(n) for n in reader.GetSize())
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    _shape_sentence(file, shape)
    if reader.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputError(f"{file} holds complex-valued voxels; give a magnitude image.")
    components = reader.GetNumberOfComponents()
    if components != 1:
        raise InputError(
            f"{file} has {components} components per voxel (colour or vector image); give a single-channel T2-weighted image."
        )
    spacing = tuple(float(s) for s in reader.GetSpacing())[:3]
    _check_spacing(file, spacing)
    voxel_bytes = int(sitk.Image(1, 1, reader.GetPixelID()).GetSizeOfPixelComponent())
    return ImageHeader(file, shape, spacing, voxel_bytes, int(np.prod(shape, dtype=np.int64)) * voxel_bytes, 0)


def available_memory_bytes() -> int:
    """Memory this process can still use, in bytes (``MemAvailable`` on Linux, else physical memory)."""
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**62


def check_size(header: ImageHeader, *, max_voxels: int | None = DEFAULT_MAX_VOXELS, bytes_per_voxel: int = SEGMENT_BYTES_PER_VOXEL) -> None:
    """Refuse an image larger than ``max_voxels`` or needing more memory than the machine has now.

    The memory needed is estimated from the header as ``voxels * bytes_per_voxel`` (see
    :data:`SEGMENT_BYTES_PER_VOXEL`), before any voxel is read.
    """
    dims = "x".join(map(str, header.size_xyz))
    if max_voxels is not None and header.voxels > max_voxels:
        raise InputError(
            f"{header.path} has {header.voxels:,} voxels ({dims}), more than the limit of {max_voxels:,} "
            "(--max-voxels); crop or resample it, or raise --max-voxels if this machine has the memory."
        )
    needed, available = header.voxels * bytes_per_voxel, available_memory_bytes()
    if needed > available:
        raise InputError(
            f"{header.path} ({dims} voxels) needs about {needed / 2**30:.1f} GiB of memory to segment, more than "
            f"the {available / 2**30:.1f} GiB available here; crop or resample it, or use a machine with more memory."
        )


def check_complete(header: ImageHeader) -> None:
    """Refuse a NIfTI file that ends before its voxel data does (a truncated copy or download).

    A ``.nii`` is checked by its size; a ``.nii.gz`` is decompressed as a stream (nothing kept in
    memory, about 0.1 s per 10 MB) and its gzip end-of-stream and CRC checked too. SimpleITK would
    silently zero-fill the missing voxels.
    """
    file, needed = header.path, header.data_offset + header.data_bytes
    if not is_nifti(file):
        return
    ends = f"{file}: the file ends before its data does (a truncated copy or download); copy it again."
    if not file.name.lower().endswith(".gz"):
        if file.stat().st_size < needed:
            raise InputError(ends)
        return
    import gzip
    import zlib

    total = 0
    try:
        with gzip.open(file, "rb") as stream:
            while total < needed:
                chunk = stream.read(min(2**22, needed - total))
                if not chunk:
                    break
                total += len(chunk)
            while stream.read(2**22):  # the rest (if any) must still decompress, to the CRC
                pass
    except EOFError:
        raise InputError(ends) from None
    except (OSError, zlib.error):
        raise InputError(f"{file}: the compressed data is damaged (gzip error); copy the file again.") from None
    if total < needed:
        raise InputError(ends)


def check_file(path: str | os.PathLike[str], *, max_voxels: int | None = DEFAULT_MAX_VOXELS) -> ImageHeader:
    """Every check that needs no voxel in memory: header, size/memory, then completeness."""
    header = read_header(path)
    check_size(header, max_voxels=max_voxels)
    check_complete(header)
    return header


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
        raise _unreadable(file) from None
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
        raise _unreadable(file) from None
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


def check_images(
    inputs: list[Path],
    *,
    replace_nonfinite: bool = False,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    warn: Callable[[str], None] | None = None,
) -> None:
    """Check the inputs of a segmentation into one output folder, before torch or a model is loaded.

    Names first (two inputs with one stem would overwrite each other's outputs), then the headers, sizes
    and completeness of all files (milliseconds each, no voxel read), then each image's voxels, one at
    a time (none kept). ``warn`` receives the geometry warnings (:func:`geometry_warning`).
    """
    stems = [image_stem(p) for p in inputs]
    duplicates = {s for s in stems if stems.count(s) > 1}
    if duplicates:
        raise InputError(f"several inputs share the name '{sorted(duplicates)[0]}'; their outputs would overwrite each other.")
    for path in inputs:
        check_file(path, max_voxels=max_voxels)
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
