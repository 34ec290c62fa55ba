"""Checks of an image file that need no voxel in memory: its header, the memory it needs, its completeness.

These run in milliseconds before SimpleITK reads the voxels and before torch or a model is loaded, so a
damaged, hostile or oversized file is refused (``InputError``, one sentence) at once and cheaply. NIfTI
headers are read from their bytes (no library "fixes" them, and nibabel's import alone would cost more
than the rest of a refusal); NRRD/MetaImage headers with SimpleITK's ``ReadImageInformation``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

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


def unreadable(file: Path) -> InputError:
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
        raise unreadable(file)
    shape = tuple(dim[1 : dim[0] + 1])
    code = int(header["datatype"][0])
    if code not in _NIFTI_DTYPES:
        raise unreadable(file)
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
        raise unreadable(file) from None
    if not block:
        raise unreadable(file)
    size, order = int.from_bytes(block[:4], "little"), "<"
    if size not in _NIFTI_FIELDS:
        size, order = int.from_bytes(block[:4], "big"), ">"
    if size not in _NIFTI_FIELDS:
        raise unreadable(file)
    if len(block) < size:
        raise incomplete
    fields = {
        name: np.frombuffer(block, dtype=np.dtype(kind if kind.startswith("S") else order + kind), count=count, offset=offset)
        for name, (offset, kind, count) in _NIFTI_FIELDS[size].items()
    }
    if not bytes(fields["magic"][0]).startswith((b"n+1", b"n+2")):
        raise unreadable(file)
    fields["sizeof_hdr"] = np.array([size])
    return fields


def _read_header_itk(file: Path) -> ImageHeader:
    """Header of a NRRD/MetaImage file with SimpleITK's ``ReadImageInformation`` (no voxels read)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise unreadable(file) from None
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
