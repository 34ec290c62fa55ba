"""Writing nnU-Net v2 raw datasets with SCIseg's region-based labels.

Layout written (nnU-Net's dataset format)::

    DatasetXXX_Name/
        dataset.json                    channel_names, labels, regions_class_order, image_orientation
        imagesTr/<case>_0000.nii.gz     the image, reoriented to the model orientation (SCT "RPI")
        labelsTr/<case>.nii.gz          uint8 labels: 0 background, 1 cord only, 2 lesion

SCIseg's labels are regions: ``"sc": [1, 2]`` (cord = labels 1 and 2) and ``"lesion": 2``,
with ``regions_class_order`` [1, 2] so that lesion is painted over cord when converting back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..volume import grid_difference, reorient, sct_to_itk_orientation, write_image_atomic

#: SCIseg's region-based label definition, as in its dataset.json.
SCISEG_LABELS: dict[str, object] = {"background": 0, "sc": [1, 2], "lesion": 2}
SCISEG_REGIONS_CLASS_ORDER: list[int] = [1, 2]
SCISEG_ORIENTATION = "RPI"  # SCT letters (= ITK/nibabel "LAS")


def dataset_folder(raw_root: str | Path, dataset_id: int, name: str) -> Path:
    """``raw_root/DatasetXXX_Name`` (XXX zero-padded to 3 digits, as nnU-Net requires)."""
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"nnU-Net dataset ids are 1..999, got {dataset_id}")
    return Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"


def write_case(folder: Path, case_id: str, image: sitk.Image, labels: sitk.Image, *, training: bool = True) -> None:
    """Write one case (image and 0/1/2 labels on the same grid) in the model orientation."""
    difference = grid_difference(labels, image)
    if difference:
        raise ValueError(f"case {case_id}: the labels do not lie on the image grid ({difference})")
    values = np.unique(sitk.GetArrayViewFromImage(labels))
    if not set(values.tolist()) <= {0, 1, 2}:
        raise ValueError(f"case {case_id}: labels must be 0, 1 or 2, found {values.tolist()}")
    orientation = sct_to_itk_orientation(SCISEG_ORIENTATION)
    images_dir, labels_dir = ("imagesTr", "labelsTr") if training else ("imagesTs", "labelsTs")
    write_image_atomic(
        reorient(sitk.Cast(image, sitk.sitkFloat32), orientation), folder / images_dir / f"{case_id}_0000.nii.gz"
    )
    write_image_atomic(reorient(sitk.Cast(labels, sitk.sitkUInt8), orientation), folder / labels_dir / f"{case_id}.nii.gz")


def write_dataset_json(folder: Path, *, channel_name: str = "T2w", description: str = "", extra: dict | None = None) -> dict:
    """Write ``dataset.json`` counting the cases present in ``imagesTr``; return its content."""
    count = len(list((folder / "labelsTr").glob("*.nii.gz")))
    content = {
        "channel_names": {"0": channel_name},
        "labels": SCISEG_LABELS,
        "regions_class_order": SCISEG_REGIONS_CLASS_ORDER,
        "numTraining": count,
        "file_ending": ".nii.gz",
        "image_orientation": SCISEG_ORIENTATION,
        "description": description,
    }
    content.update(extra or {})
    (folder / "dataset.json").write_text(json.dumps(content, indent=2))
    return content
