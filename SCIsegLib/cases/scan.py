"""One scan's identity: its file, content (sha256), BIDS entities and voxel grid, read from the header only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..hashing import file_sha256
from ..image_header import read_header
from ..training.export import bids_entities
from ..volume import image_stem, on_grid_of, same_grid


class CaseRefused(InputError):
    """A segmentation, a draft or a version that does not belong to the case (other scan, other grid)."""


@dataclass(frozen=True)
class Grid:
    """A voxel grid: size (i, j, k) in voxels, spacing in mm, origin (mm, LPS) and direction (3x3, row-major)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of_image(cls, image: sitk.Image) -> Grid:
        return cls(tuple(int(v) for v in image.GetSize()), tuple(float(v) for v in image.GetSpacing()),
                   tuple(float(v) for v in image.GetOrigin()), tuple(float(v) for v in image.GetDirection()))

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """The numpy shape of an array on this grid, (z, y, x) as ``sitk.GetArrayFromImage`` gives it."""
        return self.size[2], self.size[1], self.size[0]

    def blank(self) -> sitk.Image:
        """An all-zero uint8 image on this grid."""
        image = sitk.Image(list(self.size), sitk.sitkUInt8)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def image_of(self, array_zyx: np.ndarray) -> sitk.Image:
        """A uint8 image on this grid from a (z, y, x) array of its shape."""
        if tuple(array_zyx.shape) != self.shape_zyx:
            raise CaseRefused(f"a label array of shape {tuple(array_zyx.shape)} (z, y, x) is not on this case's grid "
                              f"{self.describe()}.")
        image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx, dtype=np.uint8))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def matches(self, image: sitk.Image, tolerance_mm: float = 1e-3) -> bool:
        """True when ``image`` lies on this grid (size, spacing, origin, direction)."""
        return same_grid(image, self.blank(), tolerance_mm=tolerance_mm)

    def describe(self) -> str:
        size = "x".join(str(v) for v in self.size)
        spacing = "x".join(f"{v:g}" for v in self.spacing)
        return f"{size} voxels of {spacing} mm"


@dataclass(frozen=True)
class Scan:
    """The scan a case is about. ``key`` names it exactly (file and content): a segmentation bound to a case carries it."""

    path: Path  # resolved
    sha256: str
    subject: str
    session: str | None
    stem: str
    grid: Grid

    @property
    def key(self) -> str:
        return f"{self.path}#{self.sha256}"

    def align(self, image: sitk.Image, what: str) -> sitk.Image:
        """``image`` on this scan's grid (re-indexed when only the axis order differs), else :class:`CaseRefused`."""
        try:
            return on_grid_of(image, self.grid.blank(), what=what, where=self.path.name)
        except ValueError as error:
            raise CaseRefused(f"{error}: it belongs to another scan ({Grid.of_image(image).describe()}, this case is "
                              f"{self.grid.describe()}).") from None


def scan_of(path: Path, subject: str | None = None, session: str | None = None) -> Scan:
    """The identity of the image at ``path``: header (no voxels read), sha256, BIDS subject/session from its name or given."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such image.")
    read_header(path)  # a clear sentence for files that are not images
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise InputError(f"{path} cannot be read as an image.") from None
    if reader.GetDimension() != 3:
        raise InputError(f"{path} is not a 3D image.")
    grid = Grid(tuple(int(v) for v in reader.GetSize()), tuple(float(v) for v in reader.GetSpacing()),
                tuple(float(v) for v in reader.GetOrigin()), tuple(float(v) for v in reader.GetDirection()))
    subject, session = bids_entities(path, subject, session)
    return Scan(path.resolve(), file_sha256(path), subject, session, image_stem(path), grid)
