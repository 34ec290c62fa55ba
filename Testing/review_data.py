"""A small BIDS dataset for the review app tests and benchmark, made from the real scans of ../shared/data.

sub-01: SCT's t2 (60x55x52, 1 mm) with its manual cord mask and a 3x3x3 lesion painted at the cord's centre (predicted);
sub-02: SCT's t2_fake_lesion (99x99x29, 0.8 mm) with its SCIsegV2 cord and lesion masks (predicted);
sub-03: SCT's t2 again, without prediction (the app runs ``sciseg segment`` on it).
The queue file ranks sub-02 first, then sub-01 (sub-03 is not scored).
"""

from __future__ import annotations

import ctypes.util
import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CASES = {"sub-01": "sub-01/anat/sub-01_T2w", "sub-02": "sub-02/anat/sub-02_T2w", "sub-03": "sub-03/anat/sub-03_T2w"}
LESION_VOXELS_SUB01 = 27


def browser_requirement_missing() -> str | None:
    """Why the review app cannot be served and driven in a real browser here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
        import trame_slicer  # noqa: F401
    except ImportError as error:
        return f"the web extra or playwright is not installed ({error.name})"
    if shutil.which("chromium") is None:
        return "chromium is not installed (apt-get install chromium; scripts/system_packages.sh)"
    if ctypes.util.find_library("EGL") is None and ctypes.util.find_library("OSMesa") is None:
        return "neither EGL nor OSMesa is installed (apt-get install libegl1 libosmesa6)"
    return None


def _cube_lesion(cord: sitk.Image, centre_zyx: tuple[int, int, int]) -> sitk.Image:
    """A 3x3x3 voxel lesion around ``centre_zyx`` (array index z, y, x), kept inside the cord mask."""
    array = sitk.GetArrayFromImage(cord) > 0
    z, y, x = centre_zyx
    lesion = np.zeros(array.shape, np.uint8)
    lesion[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2] = 1
    lesion &= array.astype(np.uint8)
    image = sitk.GetImageFromArray(lesion)
    image.CopyInformation(cord)
    return image


def _write(image: sitk.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def painted_lesion(cord: sitk.Image) -> sitk.Image:
    """A 3x3x3 voxel lesion centred on the cord mask's centre of mass (all inside the cord)."""
    array = sitk.GetArrayFromImage(cord) > 0
    return _cube_lesion(cord, tuple(int(round(v.mean())) for v in np.nonzero(array)))


def make_review_bids(root: Path, shared: Path) -> dict[str, Path]:
    """Write the dataset under ``root``; returns {"root", "queue"}."""
    t2 = shared / "sct_testing_data" / "t2"
    predictions = root / "derivatives" / "sciseg"
    for subject, source in (("sub-01", t2 / "t2.nii.gz"), ("sub-02", t2 / "t2_fake_lesion.nii.gz"), ("sub-03", t2 / "t2.nii.gz")):
        target = root / subject / "anat" / f"{subject}_T2w.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    cord = sitk.Cast(sitk.ReadImage(str(t2 / "t2_seg-manual.nii.gz")) > 0, sitk.sitkUInt8)
    _write(cord, predictions / "sub-01" / "anat" / "sub-01_T2w_sc_seg.nii.gz")
    _write(painted_lesion(cord), predictions / "sub-01" / "anat" / "sub-01_T2w_lesion_seg.nii.gz")
    for kind in ("sc", "lesion"):
        mask = sitk.Cast(sitk.ReadImage(str(t2 / f"t2_fake_lesion_{kind}_seg.nii.gz")) > 0, sitk.sitkUInt8)
        _write(mask, predictions / "sub-02" / "anat" / f"sub-02_T2w_{kind}_seg.nii.gz")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "review test", "BIDSVersion": "1.9.0"}))
    queue = root.parent / f"{root.name}_queue.json"
    scans = {}
    for subject, score in (("sub-02", 0.6), ("sub-01", 0.3)):
        path = str((root / f"{CASES[subject]}.nii.gz").resolve())
        scans[path] = {
            "path": path, "model": "sciseg-demo", "date": "2026-01-01T00:00:00+00:00",
            "score": score, "lesion_entropy": score, "cord_entropy": 0.0, "uncertain_lesion_mm3": 0.0,
        }
    queue.write_text(json.dumps({"scans": scans}))
    return {"root": root, "queue": queue}



def paint_lesion_voxels(app, count: int, skip: int = 0) -> None:
    """``count`` cord-only voxels (after the first ``skip``) become lesion through the editor's modifier of a review
    app (or session): an undoable stroke, as Paint makes."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    session = getattr(app, "session", app)
    labels = session.labels()
    session.editor.set_active_segment_id("lesion")
    modifier = session.editor.active_segment_modifier
    stroke = modifier.create_modifier_labelmap()
    dims = stroke.GetDimensions()
    voxels = vtk_to_numpy(stroke.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    voxels[:] = 0
    for z, y, x in np.argwhere(labels == 1)[skip : skip + count]:
        voxels[z, y, x] = 1
    stroke.Modified()
    modifier.apply_labelmap(stroke)


FULL_FOV_SUBJECTS = ("errsm_11", "errsm_18", "errsm_21")


def lesion_inside(cord: sitk.Image) -> sitk.Image:
    """A 3x3x3 voxel lesion around the cord voxel nearest the centre of the cord's middle slice (a curved
    cord's centre of mass may lie outside it), kept inside the cord."""
    array = sitk.GetArrayFromImage(cord) > 0
    voxels = np.argwhere(array)
    middle = voxels[voxels[:, 0] == int(np.median(voxels[:, 0]))]
    return _cube_lesion(cord, tuple(int(v) for v in middle[np.argmin(((middle - middle.mean(axis=0)) ** 2).sum(axis=1))]))


def make_full_fov_bids(root: Path, shared: Path) -> list[str]:
    """Cases at the realistic size (384 x ~216 x 52 voxels, 1 mm: ~4.3 M voxels) from ``sct_2014_errsm``; returns their ids.

    Each gets its manual cord mask as the cord prediction and a small lesion inside the cord. No queue file.
    """
    cases = []
    for index, subject in enumerate(FULL_FOV_SUBJECTS, start=1):
        case = f"sub-{index:02d}/anat/sub-{index:02d}_T2w"
        image_path = root / f"{case}.nii.gz"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared / "sct_2014_errsm" / subject / "t2.nii.gz", image_path)
        cord = sitk.Cast(sitk.ReadImage(str(shared / "sct_2014_errsm" / subject / "t2_manual_segmentation.nii.gz")) > 0.5, sitk.sitkUInt8)
        folder = root / "derivatives" / "sciseg" / f"sub-{index:02d}" / "anat"
        _write(cord, folder / f"sub-{index:02d}_T2w_sc_seg.nii.gz")
        _write(lesion_inside(cord), folder / f"sub-{index:02d}_T2w_lesion_seg.nii.gz")
        cases.append(case)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "review memory test", "BIDSVersion": "1.9.0"}))
    return cases
