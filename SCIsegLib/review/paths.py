"""Case ids and path containment: nothing outside the BIDS root is read or written through the review app.

A case id is the image's path relative to the BIDS root without its suffix, e.g.
``sub-01/anat/sub-01_T2w`` or ``sub-01/ses-02/anat/sub-01_ses-02_T2w``. It is validated by pattern
(BIDS labels only: letters, digits, ``-``, ``_``; no ``..``, no absolute path) and the resolved file
(symlinks followed) must lie inside the resolved root. Paths under ``<root>/derivatives`` must lie inside that folder
resolved once: it may be a link to another disk, but nothing below it may lead out of it
(:func:`SCIsegLib.cases.inside_derivatives`); such a case is refused, the others stay usable.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..cases import CaseRefused, inside_derivatives
from ..errors import InputError

_CASE_ID = re.compile(r"^sub-[A-Za-z0-9]+/(?:ses-[A-Za-z0-9]+/)?anat/[A-Za-z0-9][A-Za-z0-9_-]*$")
#: The longest name in a case id (ASCII characters): with ``_lesion_seg.nii.gz`` added it stays within the 255 bytes
#: a file name may have, so a longer id is refused by its length, not by the file system (ENAMETOOLONG).
MAX_CASE_NAME_CHARS = 255 - len("_lesion_seg.nii.gz")
IMAGE_SUFFIX = ".nii.gz"


class PathRefused(InputError):
    """A case id or a path that would leave the BIDS root (or is not a case id at all)."""


def validate_case_id(case_id: str) -> str:
    """The case id unchanged when it has the BIDS shape ``sub-X/[ses-Y/]anat/<stem>``; raises :class:`PathRefused`."""
    if isinstance(case_id, str) and max(len(name) for name in case_id.split("/")) > MAX_CASE_NAME_CHARS:
        raise PathRefused(f"a case id of {len(case_id)} characters is not a case id of this dataset (its names have at "
                          f"most {MAX_CASE_NAME_CHARS} characters).")
    if not isinstance(case_id, str) or not _CASE_ID.fullmatch(case_id):
        raise PathRefused(f"'{case_id}' is not a case id of this dataset (sub-<label>/[ses-<label>/]anat/<name>).")
    return case_id


def contained(root: Path, path: Path) -> Path:
    """``path`` resolved (symlinks followed); raises :class:`PathRefused` when it lies outside the resolved ``root``."""
    try:
        root_resolved = Path(root).resolve()
        resolved = Path(path).resolve()
    except RuntimeError:  # Python's "Symlink loop"
        raise PathRefused(f"{path} is a loop of symbolic links; the review app does not follow it.") from None
    if resolved != root_resolved and root_resolved not in resolved.parents:
        raise PathRefused(f"{path} lies outside the dataset {root_resolved}; the review app reads and writes only inside it.")
    return resolved


def case_image_path(root: Path, case_id: str) -> Path:
    """The image file of a case, checked: valid id, existing file, inside the root after following symlinks."""
    validate_case_id(case_id)
    path = Path(root) / f"{case_id}{IMAGE_SUFFIX}"
    contained(root, path)
    if not path.is_file():
        raise PathRefused(f"case '{case_id}' has no image {path.name} in {Path(root).resolve()}.")
    return path


def case_id_of(root: Path, image: Path) -> str:
    """The case id of an image file under the root (its relative path without ``.nii.gz``)."""
    relative = Path(image).relative_to(Path(root)).as_posix()
    if not relative.endswith(IMAGE_SUFFIX):
        raise PathRefused(f"{image} is not a .nii.gz image.")
    return validate_case_id(relative[: -len(IMAGE_SUFFIX)])


def prediction_paths(root: Path, case_id: str) -> dict[str, Path]:
    """Where the model's masks of a case live: ``derivatives/sciseg/<case folder>/<stem>_sc_seg.nii.gz`` and
    ``_lesion_seg.nii.gz`` (SCT's names), checked to stay inside the derivatives folder."""
    validate_case_id(case_id)
    folder, stem = case_id.rsplit("/", 1)
    base = Path(root) / "derivatives" / "sciseg" / folder
    paths = {"sc": base / f"{stem}_sc_seg.nii.gz", "lesion": base / f"{stem}_lesion_seg.nii.gz"}
    for path in paths.values():
        try:
            inside_derivatives(root, path, "the prediction")
        except CaseRefused as error:
            raise PathRefused(str(error)) from None
    return paths
