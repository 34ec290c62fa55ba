"""The review app's grey-matter segment on slicer-core (no browser): opened from the model's ``_gmseg`` or a version's
``_label-GM_seg``, painted without taking cord voxels, exported in the same version on the image's grid.

Runs on the review test dataset made from SCT's real t2 scan; its grey matter is the manual cord mask eroded by two
voxels (a stand-in: what matters is the file path, not anatomy).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, shared_file
from review_data import CASES, make_review_bids
from SCIsegLib.review.cases import list_cases
from SCIsegLib.training.export import export_correction

pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
SUB01 = CASES["sub-01"]


@pytest.fixture()
def bids(tmp_path: Path) -> Path:
    shared_file("sct_testing_data/t2/t2.nii.gz")
    root = make_review_bids(tmp_path / "bids", SHARED_DATA)["root"]
    cord = sitk.ReadImage(str(root / "derivatives/sciseg/sub-01/anat/sub-01_T2w_sc_seg.nii.gz"))
    grey = sitk.BinaryErode(cord, [2, 2, 0])
    sitk.WriteImage(grey, str(root / "derivatives/sciseg/sub-01/anat/sub-01_T2w_gmseg.nii.gz"), useCompression=True)
    return root


def _session(root: Path, grey_matter: bool | None = None):
    from trame_slicer.core import SlicerApp

    from SCIsegLib.review.session import ReviewSession

    return ReviewSession(SlicerApp(), root, "sciseg-demo", grey_matter=grey_matter)


def _stroke(session, segment_id: str, voxels_zyx: np.ndarray) -> None:
    """Paint ``voxels_zyx`` into ``segment_id`` through the editor's own modifier (as Paint does), in the overwrite mode
    the app uses while that segment is active."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    from SCIsegLib.review.grey_matter import overwrite_mode

    session.editor.set_active_segment_id(segment_id)
    session.editor.set_overwrite_mode(overwrite_mode(segment_id))
    modifier = session.editor.active_segment_modifier
    stroke = modifier.create_modifier_labelmap()
    dims = stroke.GetDimensions()
    array = vtk_to_numpy(stroke.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    array[:] = 0
    for z, y, x in voxels_zyx:
        array[z, y, x] = 1
    stroke.Modified()
    modifier.apply_labelmap(stroke)


def test_grey_matter_opens_from_the_prediction_is_painted_inside_the_cord_and_exported(bids: Path) -> None:
    from SCIsegLib.review.grey_matter import grey_matter_mask, grey_matter_model

    assert grey_matter_model() == "sciseg-gm-demo"  # bundled: the app offers the segment
    predicted = sitk.GetArrayFromImage(sitk.ReadImage(str(bids / "derivatives/sciseg/sub-01/anat/sub-01_T2w_gmseg.nii.gz"))) > 0
    session = _session(bids)
    session.open_case(SUB01)
    assert np.array_equal(grey_matter_mask(session), predicted)
    labels = session.labels()
    cord_only = np.argwhere((labels == 1) & ~predicted)[:6]  # cord voxels outside the grey matter become grey matter too
    _stroke(session, "grey_matter", cord_only)
    assert np.array_equal(session.labels(), labels)  # allow overlap: no cord voxel taken
    assert session.voxel_counts()["grey_matter"] == int(predicted.sum()) + 6
    outcome = session.export("alice")
    image = sitk.ReadImage(str(bids / f"{SUB01}.nii.gz"))
    for folder in (outcome.result.version_folder, bids / "derivatives/labels/sub-01/anat"):
        written = sitk.ReadImage(str(folder / "sub-01_T2w_label-GM_seg.nii.gz"))
        assert written.GetSize() == image.GetSize() and np.allclose(written.GetOrigin(), image.GetOrigin())
        assert np.allclose(written.GetDirection(), image.GetDirection())
        assert int(sitk.GetArrayFromImage(written).sum()) == int(predicted.sum()) + 6
        sidecar = json.loads((folder / "sub-01_T2w_label-GM_seg.json").read_text())
        assert sidecar["SNOMEDCode"] == "12958003" and sidecar["Parent"] == {"Kind": "prediction"}

    _stroke(session, "lesion", cord_only[:2])  # with the lesion active: overwrite all, as before
    assert session.voxel_counts()["grey_matter"] == int(predicted.sum()) + 4
    reopened = _session(bids)
    reopened.open_case(SUB01)  # the version opens, with its grey matter
    assert reopened.case.case.base.name == "v001"
    assert int(grey_matter_mask(reopened).sum()) == int(predicted.sum()) + 6


def test_a_version_without_grey_matter_removes_its_latest_copy_and_a_session_without_the_model_has_none(bids: Path) -> None:
    session = _session(bids)
    session.open_case(SUB01)
    first = session.export("alice")
    latest = bids / "derivatives/labels/sub-01/anat/sub-01_T2w_label-GM_seg.nii.gz"
    assert latest.is_file()
    image = bids / f"{SUB01}.nii.gz"
    cord = sitk.ReadImage(str(bids / "derivatives/sciseg/sub-01/anat/sub-01_T2w_sc_seg.nii.gz"))
    export_correction(root=bids, source=image, cord=cord, lesion=cord * 0, rater="bob")  # no grey matter (the CLI's export)
    assert not latest.exists() and not latest.with_name("sub-01_T2w_label-GM_seg.json").exists()
    assert (first.result.version_folder / "sub-01_T2w_label-GM_seg.nii.gz").is_file()  # v001 keeps it
    with pytest.raises(ValueError):
        export_correction(root=bids, source=image, cord=cord, lesion=cord, rater="bob",
                          extra_masks={"../x.nii.gz": (cord, {})})

    without = _session(bids, grey_matter=False)
    without.open_case(SUB01)
    segmentation = without.case.segmentation_node.GetSegmentation()
    assert segmentation.GetSegment("grey_matter") is None and "grey_matter" not in without.voxel_counts()


def test_grey_matter_strokes_are_unsaved_drafted_restored_with_the_draft_and_gone_at_export(bids: Path) -> None:
    from SCIsegLib.cases import rater_key
    from SCIsegLib.review.grey_matter import grey_matter_mask

    session = _session(bids)
    session.open_case(SUB01, draft_of="alice")
    labels = session.labels()
    assert not session.unsaved(labels) and session.safe(labels)
    opened = grey_matter_mask(session)
    voxels = np.argwhere((labels == 1) & ~opened)[:4]
    _stroke(session, "grey_matter", voxels)  # grey matter only: cord and lesion as opened
    assert session.unsaved() and not session.safe()  # nothing of it is on disk yet: a worker may not be stopped
    session.save_draft("alice")
    folder = bids / "derivatives/labels/.drafts/sub-01/anat/sub-01_T2w"
    draft = folder / f"{rater_key('alice')}.gm.nrrd"
    assert draft.is_file() and session.safe()
    listed = {case.case_id: case for case in list_cases(bids)}[SUB01]
    assert listed.drafts == ("alice",)  # the case list says so, as for a cord or lesion draft
    assert int(sitk.GetArrayFromImage(sitk.ReadImage(str(draft))).sum()) == int(opened.sum()) + 4

    restored = _session(bids)  # a new tab after the worker stopped
    restored.open_case(SUB01, draft_of="alice")
    assert int(grey_matter_mask(restored).sum()) == int(opened.sum()) + 4 and restored.unsaved()
    other = _session(bids)
    other.open_case(SUB01, choice="prediction")  # not for alice's draft: the base's grey matter
    assert np.array_equal(grey_matter_mask(other), opened)
    restored.export("alice")
    assert not draft.exists() and not restored.unsaved()
    version = bids / "derivatives/labels/.sciseg_versions/sub-01/anat/sub-01_T2w/v001/sub-01_T2w_label-GM_seg.nii.gz"
    assert int(sitk.GetArrayFromImage(sitk.ReadImage(str(version))).sum()) == int(opened.sum()) + 4
