"""The ``sciseg`` options of the cord compartments: ``segment --cord`` (WM), ``cord --gm`` (areas), ``consensus --cord``
(reproducibility). Each checks its inputs, calls the library and prints what it wrote; bad input is an InputError."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import InputError


def _check_file(path: Path, what: str) -> None:
    from .file_checks import check_whole_image_file

    if not path.is_file():
        raise InputError(f"{path}: no such {what} file; check the path.")
    check_whole_image_file(path, what)


def run_compartment_areas(gm: Path | None, cord: Path, levels: Path | None, output: Path, angle_correction: bool,
                          smooth: float) -> list[Path]:
    """``sciseg cord --gm GM --cord CORD [--levels LEVELS]``: write and print the area tables."""
    from .compartments_files import write_area_tables

    if gm is None:
        raise InputError("--levels goes with --gm (the grey-matter mask whose areas are given per level).")
    for path, what in ((gm, "grey-matter mask"), (cord, "cord mask")) + (((levels, "level"),) if levels else ()):
        _check_file(path, what)
    _, written = write_area_tables(gm, cord, output, levels_path=levels, angle_correction=angle_correction, smooth=smooth)
    for path in written:
        print(path)
    return written


def write_white_matter_after_segment(records: list[dict], cord: Path | None, warn) -> list[Path]:
    """After ``sciseg segment`` with a grey-matter model: ``<stem>_wmseg.nii.gz`` beside every ``<stem>_gmseg.nii.gz``,
    from ``cord`` (one input only) or our ``<stem>_sc_seg.nii.gz`` beside it; a warning where no cord mask is found."""
    from .compartments_files import find_cord_mask, gm_stem, write_white_matter

    if cord is not None and len(records) != 1:
        raise InputError("--cord is the cord mask of one scan; segment one image with it (or leave --cord out to use "
                         "each scan's <stem>_sc_seg.nii.gz).")
    written: list[Path] = []
    for record in records:
        gm_paths = [Path(p) for p in record["outputs"] if p.endswith("_gmseg.nii.gz")]
        for gm_path in gm_paths:
            cord_path = cord or find_cord_mask(gm_path.parent, gm_stem(gm_path))
            if cord_path is None:
                warn(f"no cord mask for {gm_path.name} (give --cord, or segment the cord first): the white matter "
                     "was not written.")
                continue
            written += write_white_matter(gm_path, cord_path, gm_path.parent)
            record["outputs"].append(str(written[-2]))
    return written


def run_compartment_consensus(gm_paths: list[Path], cord_paths: list[Path], output: Path | None) -> int:
    """``sciseg consensus GM... --cord CORD...``: SCORE's reproducibility of GM/WM areas (JSON on stdout); with ``-o``
    also the majority-vote consensus of the GM masks (they must share one grid)."""
    import numpy as np
    import SimpleITK as sitk

    from .compartments_files import load_binary
    from .consensus import compartment_reproducibility, majority_vote
    from .volume import grid_difference, write_image_atomic

    if len(gm_paths) < 2:
        raise InputError("reproducibility needs at least two grey-matter masks (repeated scans or raters).")
    if len(cord_paths) not in (1, len(gm_paths)):
        raise InputError(f"give one cord mask per grey-matter mask ({len(gm_paths)}), or one for all; got {len(cord_paths)}.")
    if output is not None and (not str(output).lower().endswith((".nii", ".nii.gz", ".nrrd")) or output.is_dir()):
        raise InputError(f"-o {output} must be a file name ending in .nii.gz, .nii or .nrrd.")
    for path in gm_paths:
        _check_file(path, "grey-matter mask")
    for path in cord_paths:
        _check_file(path, "cord mask")
    gms = [load_binary(path, "grey-matter") for path in gm_paths]
    cords = [load_binary(path, "cord") for path in cord_paths]
    cords = cords * len(gms) if len(cords) == 1 else cords
    result = compartment_reproducibility(gms, cords)
    result["gm_masks"], result["cord_masks"] = [str(p) for p in gm_paths], [str(p) for p in cord_paths]
    if output is not None:
        differences = [d for d in (grid_difference(gm, gms[0]) for gm in gms[1:]) if d is not None]
        if differences:
            raise InputError(f"the grey-matter masks are not on one voxel grid ({differences[0]}); a consensus file needs "
                             "masks of one scan (leave -o out for the areas' reproducibility).")
        vote = majority_vote([sitk.GetArrayViewFromImage(gm) > 0 for gm in gms]).astype(np.uint8)
        image = sitk.GetImageFromArray(vote)
        image.CopyInformation(gms[0])
        write_image_atomic(image, output)
        result["consensus"] = str(output)

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    print(json.dumps(clean(result), indent=2, allow_nan=False))
    return 0
