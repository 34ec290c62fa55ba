"""The demo model's recipe builds the dataset it says: phantoms, and real scans cropped or with their whole field of view."""

from __future__ import annotations

import json
import sys

import numpy as np
import SimpleITK as sitk

from conftest import REPOSITORY, shared_file

sys.path.insert(0, str(REPOSITORY / "scripts"))
import train_demo_model  # noqa: E402


def test_one_copy_cropped_one_uncropped(tmp_path) -> None:
    image_path, cord_path = train_demo_model.REAL_TRAINING[0]
    original = sitk.ReadImage(str(shared_file(image_path)))
    for other, _ in train_demo_model.REAL_TRAINING[1:]:
        shared_file(other)
    folder = train_demo_model.build_raw_dataset(tmp_path, n_phantoms=1, seed=3, uncropped_copies=1)

    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["numTraining"] == 1 + 2 * len(train_demo_model.REAL_TRAINING)
    cropped = sitk.ReadImage(str(folder / "imagesTr" / "real_00_0_0000.nii.gz"))
    whole = sitk.ReadImage(str(folder / "imagesTr" / "real_00_1_0000.nii.gz"))
    voxels = int(np.prod(original.GetSize()))
    assert int(np.prod(whole.GetSize())) == voxels  # the whole field of view, reoriented only
    assert int(np.prod(cropped.GetSize())) < voxels / 2  # 30 mm around the cord of a whole neck and brain
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "real_00_1.nii.gz")))
    manual = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_file(cord_path)))) > 0.5
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    assert (labels > 0).sum() == manual.sum()  # painted lesions lie inside the manual cord
