"""Files of the cord compartments: the WM mask beside a GM mask, and the area tables with their sidecars.

Every file is published whole (temporary + rename); masks carry their GM mask's NIfTI header, as SCT's outputs do.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from . import __version__
from .analysis_files import write_table, write_text_atomic
from .compartments import areas_per_level, compartment_areas, gm_outside_cord_voxels, sct_equivalent_commands, white_matter
from .cord import SCT_VERSION
from .errors import InputError
from .hashing import file_sha256
from .provenance import command_path, describe_derivative, source_path
from .volume import image_stem, load_mask, write_image_atomic

#: Our cord masks that may stand beside a GM mask, in order of preference (``sciseg segment`` / SCT names).
CORD_MASK_SUFFIXES = ("_sc_seg", "_seg", "_label-SC_seg")


def gm_stem(gm_path: Path) -> str:
    """The scan's stem of a GM mask: ``t2s_gmseg.nii.gz`` -> ``t2s`` (other names: the file's stem)."""
    stem = image_stem(gm_path)
    for suffix in ("_gmseg", "_label-GM_seg", "_gmseg_manual", "_gmseg-manual"):
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def find_cord_mask(folder: Path, stem: str) -> Path | None:
    """Our cord mask of scan ``stem`` in ``folder`` (``<stem>_sc_seg.nii.gz``, ...), or None."""
    for suffix in CORD_MASK_SUFFIXES:
        candidate = folder / f"{stem}{suffix}.nii.gz"
        if candidate.is_file():
            return candidate
    return None


def load_binary(path: Path, what: str) -> sitk.Image:
    """A mask file (binary, or a soft/float manual mask thresholded at 0.5) as uint8 0/1."""
    image = load_mask(path, binary=False)
    values = sitk.GetArrayViewFromImage(image)
    if values.size and (float(values.min()) < 0 or float(values.max()) > 1):
        raise InputError(f"{path} is not a {what} mask (values outside 0-1); give a mask, not an image.")
    binary = sitk.Cast(sitk.Cast(image, sitk.sitkFloat32) >= 0.5, sitk.sitkUInt8)
    binary.CopyInformation(image)
    return binary


def write_white_matter(gm_path: Path, cord_path: Path, output_dir: Path) -> list[Path]:
    """``<stem>_wmseg.nii.gz`` (WM = cord - GM, on the GM's grid) and its JSON sidecar; returns both paths."""
    gm, cord = load_binary(gm_path, "grey-matter"), load_binary(cord_path, "cord")
    wm = white_matter(cord, gm)
    stem = gm_stem(gm_path)
    target = output_dir / f"{stem}_wmseg.nii.gz"
    write_image_atomic(wm, target, geometry_from=gm_path)
    describe_derivative(output_dir, "grey and white matter of the spinal cord")
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(wm)))
    sidecar = {
        "GeneratedBy": [{"Name": "SCIseg", "Version": __version__, "Description": "white matter = cord - grey matter",
                         "Date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}],
        "Sources": [source_path(cord_path), source_path(gm_path)],
        "SourceSha256": {"cord": file_sha256(cord_path), "gm": file_sha256(gm_path)},
        "Structure": "wm",
        "VoxelCount": voxels,
        "VolumeMm3": round(voxels * float(np.prod(wm.GetSpacing())), 4),
        "GMVoxelsOutsideCord": gm_outside_cord_voxels(gm, cord),
    }
    json_path = output_dir / f"{stem}_wmseg.json"
    write_text_atomic(json.dumps(sidecar, indent=2), json_path)
    return [target, json_path]


def write_area_tables(gm_path: Path, cord_path: Path, output_dir: Path, *, levels_path: Path | None = None,
                      angle_correction: bool = True, smooth: float = 30.0) -> tuple[pd.DataFrame, list[Path]]:
    """``<stem>_gmseg_areas.csv`` (per slice), ``<stem>_gmseg_areas_perlevel.csv`` with a level file, and a JSON
    sidecar naming the SCT calls the numbers follow. Returns (per-slice table, written paths)."""
    gm, cord = load_binary(gm_path, "grey-matter"), load_binary(cord_path, "cord")
    levels = load_mask(levels_path, binary=False) if levels_path is not None else None
    table = compartment_areas(gm, cord, levels=levels, angle_correction=angle_correction, smooth=smooth)
    stem = gm_stem(gm_path)
    path = output_dir / f"{stem}_gmseg_areas.csv"
    written = write_table(table, path, sheet="areas")
    describe_derivative(output_dir, "grey and white matter areas per slice")
    if levels is not None:
        written += write_table(areas_per_level(table), output_dir / f"{stem}_gmseg_areas_perlevel.csv", sheet="levels")
    commands = sct_equivalent_commands(command_path(gm_path, output_dir), command_path(cord_path, output_dir),
                                       f"{stem}_wmseg.nii.gz",
                                       command_path(levels_path, output_dir) if levels_path else None)
    if not angle_correction:
        commands = [c.replace(" -perslice 1", " -perslice 1 -angle-corr 0") for c in commands]
    sidecar = {
        "Description": "grey matter (GM), white matter (WM = cord - GM) and cord areas per axial slice (RPI z, I->S), "
                       "mm2; angles (degrees) of the cord's centerline, which also corrects the GM and WM sections",
        "FollowsSCTVersion": SCT_VERSION,
        "EquivalentCommands": commands,
        "AngleCorrection": angle_correction,
        "CenterlineSmooth": smooth,
        "Sources": {"gm": source_path(gm_path), "cord": source_path(cord_path),
                    "levels": source_path(levels_path) if levels_path else None},
        "GMVoxelsOutsideCord": gm_outside_cord_voxels(gm, cord),
    }
    written.append(write_text_atomic(json.dumps(sidecar, indent=2), path.with_suffix(".json")))
    return table, written
