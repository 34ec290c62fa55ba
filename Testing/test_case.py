"""The case model (``SCIsegLib.cases``): identity, bases and lineage, drafts, and export that refuses another scan.

Runs on the review test dataset made from SCT's real scans (``review_data``): sub-01 and sub-03 hold the same
image file at two paths, sub-02 another scan on another grid.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, shared_file
from review_data import CASES, LESION_VOXELS_SUB01, make_review_bids
from SCIsegLib.cases import Case, CaseRefused, rater_key
from SCIsegLib.errors import InputError
from SCIsegLib.training.export import version_numbers, version_store


@pytest.fixture()
def bids(tmp_path: Path) -> Path:
    shared_file("sct_testing_data/t2/t2.nii.gz")
    return make_review_bids(tmp_path / "bids", SHARED_DATA)["root"]


def image(root: Path, subject: str) -> Path:
    return root / f"{CASES[subject]}.nii.gz"


def labels_image(case: Case, labels: np.ndarray) -> sitk.Image:
    return case.scan.grid.image_of(labels)


def with_stroke(labels: np.ndarray, offset: int = 0) -> np.ndarray:
    """A copy with a 3-voxel lesion stroke next to the painted lesion (``offset`` slices further)."""
    changed = labels.copy()
    z, y, x = (int(round(v.mean())) for v in np.nonzero(labels == 2))
    changed[z + offset, y, x + 2 : x + 5] = 2
    return changed


def sidecar(version_folder: Path, stem: str) -> dict:
    return json.loads((version_folder / f"{stem}_dseg.json").read_text())


def test_a_case_opens_the_latest_version_saying_whose_with_the_others_as_choices(bids: Path) -> None:
    case = Case.open(bids, image(bids, "sub-01"))
    assert [b.name for b in case.bases] == ["prediction", "empty"] and case.base.name == "prediction"
    assert int((case.labels == 2).sum()) == LESION_VOXELS_SUB01 and case.scan.subject == "01"
    assert case.scan.grid.shape_zyx == case.labels.shape
    corrected = with_stroke(case.labels)
    case.export(labels_image(case, corrected), "alice", drawn_on=case.scan.key)

    reopened = Case.open(bids, image(bids, "sub-01"))
    assert [b.name for b in reopened.bases] == ["v001", "prediction", "empty"]
    assert reopened.base.name == "v001" and reopened.base.rater == "alice" and reopened.base.parent == "prediction"
    np.testing.assert_array_equal(reopened.labels, corrected)  # not the prediction: the correction is kept
    assert "v001 by alice on 20" in reopened.opening_sentence() and "(from the prediction)" in reopened.opening_sentence()
    from_prediction = Case.open(bids, image(bids, "sub-01"), choice="prediction")
    assert int((from_prediction.labels == 2).sum()) == LESION_VOXELS_SUB01
    assert "the latest version is v001 by alice" in from_prediction.opening_sentence()
    assert Case.open(bids, image(bids, "sub-01"), choice="empty").labels.max() == 0
    with pytest.raises(InputError, match="has no v007 to open"):
        Case.open(bids, image(bids, "sub-01"), choice="v007")


def test_every_version_records_its_parent_and_an_older_base_is_warned(bids: Path) -> None:
    source = image(bids, "sub-01")
    first = Case.open(bids, source)
    outcome = first.export(labels_image(first, with_stroke(first.labels)), "alice", drawn_on=first.scan.key)
    assert outcome.warning is None and outcome.result.newer_than_parent == ()
    assert sidecar(outcome.result.version_folder, "sub-01_T2w")["Parent"] == {"Kind": "prediction"}

    alice = Case.open(bids, source)  # v001
    bob = Case.open(bids, source, choice="prediction")  # bob starts again from the prediction although v001 exists
    late = bob.export(labels_image(bob, with_stroke(bob.labels, 1)), "bob", drawn_on=bob.scan.key)
    assert late.result.version == 2 and late.result.newer_than_parent == (1,)
    assert "started from prediction while v001 existed" in late.warning and "yours is v002" in late.warning
    assert sidecar(late.result.version_folder, "sub-01_T2w")["Parent"] == {"Kind": "prediction"}
    assert bob.base.name == "v002" and not bob.unsaved(bob.labels)  # the next export of bob builds on v002

    third = alice.export(labels_image(alice, with_stroke(alice.labels, -1)), "alice", drawn_on=alice.scan.key)
    assert third.result.version == 3 and "started from v001 while v002 existed" in third.warning
    record = sidecar(third.result.version_folder, "sub-01_T2w")
    assert record["Parent"] == {"Kind": "version", "Version": 1}
    lesion_sidecar = json.loads((third.result.version_folder / "sub-01_T2w_label-lesion_seg.json").read_text())
    assert lesion_sidecar["Parent"] == record["Parent"] and lesion_sidecar["VoxelsAdded"] == 6  # two strokes vs the prediction
    bases = Case.open(bids, source).bases
    assert [(b.name, b.parent) for b in bases[:3]] == [("v003", 1), ("v002", "prediction"), ("v001", "prediction")]
    assert "(from v001)" in bases[0].describe()


def test_export_refuses_a_segmentation_of_another_scan_or_grid_and_writes_nothing(bids: Path) -> None:
    case = Case.open(bids, image(bids, "sub-01"))
    twin = Case.open(bids, image(bids, "sub-03"))  # the same image file at another path: same grid, same content
    other = Case.open(bids, image(bids, "sub-02"))  # another scan, another grid
    assert twin.scan.sha256 == case.scan.sha256 and twin.scan.key != case.scan.key
    with pytest.raises(CaseRefused, match="made on sub-03_T2w.nii.gz, not on sub-01_T2w.nii.gz"):
        case.export(labels_image(twin, twin.labels), "alice", drawn_on=twin.scan.key)
    with pytest.raises(CaseRefused, match="does not lie on the grid of sub-01_T2w.nii.gz"):
        case.export(labels_image(other, other.labels), "alice", drawn_on=None)
    with pytest.raises(CaseRefused, match="does not lie on the grid"):
        case.check(labels_image(other, other.labels), drawn_on=None)  # what measure and compare call
    assert not (bids / "derivatives" / "labels").exists()
    original = labels_image(case, case.labels)
    flipped = sitk.GetImageFromArray(case.labels[:, :, ::-1].copy())  # the same voxels in mm, stored with i reversed
    flipped.SetSpacing(original.GetSpacing())
    flipped.SetOrigin(original.TransformIndexToPhysicalPoint((case.scan.grid.size[0] - 1, 0, 0)))
    direction = np.array(original.GetDirection()).reshape(3, 3)
    direction[:, 0] *= -1
    flipped.SetDirection(direction.ravel().tolist())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(case.check(flipped, drawn_on=case.scan.key)), case.labels)


def test_drafts_are_per_rater_whole_offered_on_reopen_and_gone_on_export(bids: Path) -> None:
    source = image(bids, "sub-01")
    case = Case.open(bids, source)
    assert not case.unsaved(case.labels) and case.safe(case.labels)
    assert case.save_draft(case.labels, "alice") is None  # nothing unsaved: no draft
    edited = with_stroke(case.labels)
    assert case.unsaved(edited) and not case.safe(edited)
    draft = case.save_draft(edited, "Dr. Alice")
    assert draft.path == bids / "derivatives/labels/.drafts/sub-01/anat/sub-01_T2w" / f"{rater_key('Dr. Alice')}.nrrd"
    assert case.safe(edited) and case.unsaved(edited)  # drafted, not exported
    assert case.save_draft(edited, "Dr. Alice") is None  # unchanged: not written again
    assert [p.name for p in draft.path.parent.iterdir()] == [draft.path.name]  # no temporary left
    case.save_draft(with_stroke(case.labels, 1), "bob")
    assert [d.rater for d in case.drafts()] == ["bob", "Dr. Alice"]  # newest first

    restored = Case.open(bids, source, draft_of="Dr. Alice")
    np.testing.assert_array_equal(restored.labels, edited)
    assert restored.base.name == "prediction" and restored.unsaved(restored.labels) and restored.safe(restored.labels)
    assert "your draft by Dr. Alice of 20" in restored.opening_sentence() and "(started from prediction)" in restored.opening_sentence()
    assert Case.open(bids, source, draft_of="carol").draft is None  # no draft of hers: the default base

    restored.export(labels_image(restored, restored.labels), "Dr. Alice", drawn_on=restored.scan.key)
    assert [d.rater for d in Case.open(bids, source).drafts()] == ["bob"]  # hers went with the export; bob's stays
    reopened = Case.open(bids, source)
    reopened.save_draft(reopened.labels, "bob")  # back to what is saved: bob's draft is not needed any more
    assert reopened.drafts() == []

    case.save_draft(edited, "dave")
    rescanned = sitk.ReadImage(str(source))
    rescanned[10, 10, 10] = rescanned[10, 10, 10] + 1
    sitk.WriteImage(rescanned, str(bids / "sub-01_other.nii.gz"))
    os.replace(bids / "sub-01_other.nii.gz", source)  # the scan's content changed since the draft (same grid)
    changed = Case.open(bids, source, draft_of="dave")  # opens as if there were no draft, and says why
    assert changed.draft is None and changed.base.name == "v001"
    assert "Your draft was not restored: the draft by dave" in changed.opening_sentence()
    assert "drawn on another version of sub-01_T2w.nii.gz" in changed.opening_sentence()
    assert [d.rater for d in changed.drafts()] == ["dave"]  # kept on disk


def test_a_prediction_or_derivatives_folder_leading_outside_refuses_that_case_only(bids: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    shutil.copytree(bids / "derivatives" / "sciseg" / "sub-02", outside / "sub-02")
    shutil.rmtree(bids / "derivatives" / "sciseg" / "sub-02")
    (bids / "derivatives" / "sciseg" / "sub-02").symlink_to(outside / "sub-02", target_is_directory=True)
    with pytest.raises(CaseRefused, match="leads outside the derivatives folder"):
        Case.open(bids, image(bids, "sub-02"))
    assert Case.open(bids, image(bids, "sub-01")).base.name == "prediction"  # the other cases open

    prediction = bids / "derivatives" / "sciseg" / "sub-01" / "anat" / "sub-01_T2w_lesion_seg.nii.gz"
    moved = outside / prediction.name
    shutil.move(prediction, moved)
    prediction.symlink_to(moved)
    with pytest.raises(CaseRefused, match="the prediction .* leads outside"):
        Case.open(bids, image(bids, "sub-01"))


def test_a_derivatives_folder_on_another_disk_is_used_and_contained(bids: Path, tmp_path: Path) -> None:
    other_disk = tmp_path / "other-disk" / "derivatives"
    shutil.move(bids / "derivatives", other_disk)
    (bids / "derivatives").symlink_to(other_disk, target_is_directory=True)
    case = Case.open(bids, image(bids, "sub-01"))
    assert case.base.name == "prediction"
    outcome = case.export(labels_image(case, with_stroke(case.labels)), "alice", drawn_on=case.scan.key)
    assert version_numbers(version_store(bids, image(bids, "sub-01"))) == [1]
    assert outcome.result.version_folder.resolve().is_relative_to(other_disk)
    (other_disk / "labels" / ".drafts").symlink_to(tmp_path, target_is_directory=True)  # below it, a link out
    with pytest.raises(CaseRefused, match="drafts folder"):
        Case.open(bids, image(bids, "sub-01")).drafts()


def test_a_prediction_given_as_one_label_map_outside_the_dataset(bids: Path, tmp_path: Path) -> None:
    """As the Slicer module holds it: one predicted label map (0, 1 cord only, 2 lesion) in a temporary folder."""
    predicted = Case.open(bids, image(bids, "sub-01")).labels
    label_map = tmp_path / "predicted_labels.nii.gz"
    source = sitk.ReadImage(str(image(bids, "sub-01")))
    written = sitk.GetImageFromArray(predicted)
    written.CopyInformation(source)
    sitk.WriteImage(written, str(label_map))
    shutil.rmtree(bids / "derivatives" / "sciseg")
    case = Case.open(bids, image(bids, "sub-01"), prediction=label_map)
    assert case.base.name == "prediction" and case.base.files == (label_map,)
    np.testing.assert_array_equal(case.labels, predicted)
    outcome = case.export(labels_image(case, with_stroke(case.labels)), "alice", drawn_on=case.scan.key)
    assert json.loads((outcome.result.version_folder / "sub-01_T2w_label-lesion_seg.json").read_text())["VoxelsAdded"] == 3
    assert Case.open(bids, image(bids, "sub-01")).base.name == "v001"  # without the prediction: the version opens


def test_a_prediction_off_the_grid_refuses_the_case_unless_a_version_opens(bids: Path) -> None:
    source = image(bids, "sub-01")
    prediction = bids / "derivatives" / "sciseg" / "sub-01" / "anat" / "sub-01_T2w_lesion_seg.nii.gz"
    case = Case.open(bids, source)
    case.export(labels_image(case, with_stroke(case.labels)), "alice", drawn_on=case.scan.key)
    sitk.WriteImage(sitk.Image([10, 10, 10], sitk.sitkUInt8), str(prediction))  # not this scan's grid
    reopened = Case.open(bids, source)
    assert reopened.base.name == "v001" and [b.name for b in reopened.bases] == ["v001", "empty"]
    with pytest.raises(CaseRefused, match="the lesion prediction does not lie on the grid"):
        Case.open(bids, source, choice="prediction")
    shutil.rmtree(version_store(bids, source))
    with pytest.raises(CaseRefused, match="the lesion prediction does not lie on the grid"):
        Case.open(bids, source)  # nothing else to open from: the case is refused, not opened empty
