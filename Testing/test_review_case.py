"""The review app bound to the case model, driven through its own actions (trame-slicer scene, no browser).

Issue 19's browser scenarios at the level of the app's methods: export while another case segments, opening
another case with unsaved strokes (list, ``n``, ``b``), reopening a corrected case, the worker's answer to the
front once a draft is safe; and issue 20's symlinked prediction or ``derivatives/sciseg`` (one case refused, the
app runs), with a ``derivatives`` folder on another disk. The browser side is in ``test_review_browser.py``.
"""

from __future__ import annotations

import ctypes.util
import itertools
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, shared_file
from review_data import CASES, LESION_VOXELS_SUB01, make_review_bids, paint_lesion_voxels
from SCIsegLib.errors import InputError
from SCIsegLib.review.cases import PREDICTED, REFUSED, list_cases
from SCIsegLib.training.export import version_numbers

_servers = itertools.count()


@pytest.fixture()
def bids(tmp_path: Path) -> dict[str, Path]:
    shared_file("sct_testing_data/t2/t2.nii.gz")
    return make_review_bids(tmp_path / "bids", SHARED_DATA)


@pytest.fixture()
def make_app(bids):
    pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
    if ctypes.util.find_library("EGL") is None:
        pytest.skip("EGL is not installed (apt-get install libegl1): the app's views need offscreen rendering")
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame.app import get_server

    from SCIsegLib.review.app import ReviewApp

    def make(root: Path | None = None):
        server = get_server(f"review_case_{next(_servers)}", client_type="vue3")
        return ReviewApp(root or bids["root"], bids["queue"], "sciseg-demo", server=server)

    return make


def store(root: Path, subject: str) -> Path:
    return root / "derivatives" / "labels" / ".sciseg_versions" / subject / "anat" / f"{subject}_T2w"


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def wait_finished(run) -> None:
    deadline = time.monotonic() + 60
    while not run.finished and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.05)


def painting(make_app, rater: str, case_id: str, voxels: int):
    """A new app where ``rater`` opened ``case_id`` and painted ``voxels`` cord-only voxels as lesion; (app, labels)."""
    app = make_app()
    app.state.rater = rater
    app.open_case(case_id)
    assert not app.state.unsaved
    paint_lesion_voxels(app, voxels)
    return app, app.session.labels()


def test_export_while_another_case_segments_writes_and_names_the_open_case(make_app, bids) -> None:
    root = bids["root"]
    app, painted = painting(make_app, "alice", CASES["sub-01"], 5)
    app.open_case(CASES["sub-03"])  # no prediction: asks first (unsaved strokes), then segments it in a child
    assert app.state.pending and not app.state.running
    app.resolve_pending("keep")
    try:
        assert app.state.running and app.state.segmenting_id == CASES["sub-03"]
        assert app.state.case_id == CASES["sub-01"]  # the title stays on the case in the scene
        app.export()
        assert app.state.message == f"saved version v001 of {CASES['sub-01']}", app.state.message
        np.testing.assert_array_equal(read(store(root, "sub-01") / "v001" / "sub-01_T2w_dseg.nii.gz"), painted)
        assert not store(root, "sub-03").exists()
    finally:
        app.cancel_segmentation()
        wait_finished(app.run)

    # a segmentation bound to another scan (same grid, same voxels: sub-03 is a copy of sub-01) is refused
    other_key = app.session.case.case.scan.key.replace("sub-01", "sub-03")
    app.session.case.segmentation_node.SetAttribute("SCIseg.Case", other_key)
    paint_lesion_voxels(app, 2)
    app.export()
    assert "was made on sub-03_T2w.nii.gz, not on sub-01_T2w.nii.gz" in app.state.error
    assert version_numbers(store(root, "sub-01")) == [1]


def test_opening_another_case_with_unsaved_strokes_asks_and_keeps_a_draft(make_app, bids) -> None:
    root = bids["root"]
    app, painted = painting(make_app, "alice", CASES["sub-01"], 5)
    app.on_key("n")  # next uncorrected case: sub-03 (queue order sub-02, sub-01, then sub-03)
    assert app.state.pending["case_id"] == CASES["sub-03"] and "not exported" in app.state.pending["text"]
    assert app.state.case_id == CASES["sub-01"] and app.state.unsaved
    drafts = root / "derivatives" / "labels" / ".drafts" / "sub-01" / "anat" / "sub-01_T2w"
    assert len(list(drafts.glob("*.nrrd"))) == 1  # the strokes are on disk before the question
    app.resolve_pending("stay")
    np.testing.assert_array_equal(app.session.labels(), painted)

    app.on_key("N")  # Shift+N, previous case in the list: sub-02 ("b" steps a slice, as in Slicer)
    assert app.state.pending["case_id"] == CASES["sub-02"]
    app.resolve_pending("keep")
    assert app.state.case_id == CASES["sub-02"] and not app.state.unsaved
    sub01 = next(case for case in app.state.cases if case["case_id"] == CASES["sub-01"])
    assert sub01["drafts"] == ["alice"]

    app.open_case(CASES["sub-01"])  # the list: her draft comes back, over the prediction it started from
    np.testing.assert_array_equal(app.session.labels(), painted)
    assert app.state.base_choice == "draft" and app.state.unsaved
    assert "your draft by alice" in app.state.opened_text and "started from prediction" in app.state.opened_text
    app.choose_base("prediction")  # the version list: asks, the strokes can be let go
    app.resolve_pending("discard")
    assert int((app.session.labels() == 2).sum()) == LESION_VOXELS_SUB01 and not list(drafts.glob("*.nrrd"))
    assert app.state.base_choice == "prediction"


def test_reopening_a_corrected_case_opens_its_latest_version_with_a_choice(make_app, bids) -> None:
    root = bids["root"]
    app, corrected = painting(make_app, "alice", CASES["sub-01"], 5)
    app.export()
    app.open_case(CASES["sub-02"])
    app.open_case(CASES["sub-01"])
    np.testing.assert_array_equal(app.session.labels(), corrected)  # not the prediction
    assert "v001 by alice on 20" in app.state.opened_text
    assert [item["value"] for item in app.state.bases] == ["v001", "prediction", "empty"]
    assert app.state.counts["lesion"] == LESION_VOXELS_SUB01 + 5

    bob = make_app()
    bob.state.rater = "bob"
    bob.open_case(CASES["sub-01"])
    bob.choose_base("prediction")  # bob chooses to start again from the prediction
    assert "the latest version is v001 by alice" in bob.state.opened_text
    paint_lesion_voxels(bob, 3, skip=100)
    bob.export()
    assert "started from prediction while v001 existed; yours is v002" in bob.state.message
    sidecar = json.loads((store(root, "sub-01") / "v002" / "sub-01_T2w_dseg.json").read_text())
    assert sidecar["Parent"] == {"Kind": "prediction"} and sidecar["Rater"] == "bob"


def test_the_worker_holds_its_slot_only_while_strokes_are_not_on_disk(make_app) -> None:
    from SCIsegLib.review.worker import unsaved_edits

    app, _ = painting(make_app, "carol", CASES["sub-02"], 4)
    assert unsaved_edits(app.session)  # only in this worker's memory: the front keeps the worker
    app.save_draft()  # what the app does once the strokes pause
    assert not unsaved_edits(app.session) and app.state.unsaved  # safe on disk: the slot may be released
    paint_lesion_voxels(app, 1, skip=50)
    assert unsaved_edits(app.session)


def test_a_prediction_leading_out_of_the_dataset_refuses_that_case_and_the_app_runs(make_app, bids, tmp_path) -> None:
    root = bids["root"]
    elsewhere = tmp_path / "elsewhere"
    shutil.move(root / "derivatives" / "sciseg" / "sub-02", elsewhere)
    (root / "derivatives" / "sciseg" / "sub-02").symlink_to(elsewhere, target_is_directory=True)
    cases = {case.case_id: case for case in list_cases(root)}
    assert cases[CASES["sub-02"]].status == REFUSED and "leads outside the derivatives folder" in cases[CASES["sub-02"]].reason
    assert cases[CASES["sub-01"]].status == PREDICTED
    looped = root / "derivatives" / "sciseg" / "sub-03"  # a loop of links, and a scan that is one
    looped.symlink_to(root / "derivatives" / "sciseg" / "sub-03", target_is_directory=True)
    (root / "sub-04" / "anat").mkdir(parents=True)
    (root / "sub-04" / "anat" / "sub-04_T2w.nii.gz").symlink_to(root / "sub-04" / "anat" / "sub-04_T2w.nii.gz")
    cases = {case.case_id: case for case in list_cases(root)}
    assert cases[CASES["sub-03"]].status == REFUSED and "loop of symbolic links" in cases[CASES["sub-03"]].reason
    assert "sub-04/anat/sub-04_T2w" not in cases
    app = make_app()  # the app (and so the worker) starts
    app.open_case(CASES["sub-02"])
    assert "leads outside the derivatives folder" in app.state.error and app.state.case_id == ""
    app.open_case(CASES["sub-01"])
    assert app.state.case_id == CASES["sub-01"] and not app.state.error

    sciseg = root / "derivatives" / "sciseg"  # the whole folder a link out: every predicted case refused, still running
    shutil.move(sciseg, tmp_path / "sciseg")
    sciseg.symlink_to(tmp_path / "sciseg", target_is_directory=True)
    assert {case.status for case in list_cases(root)} == {REFUSED}
    app.refresh_cases()  # what a new worker does at start
    assert [case["status"] for case in app.state.cases] == [REFUSED] * 3  # sub-04's image is a loop: not listed


def test_a_derivatives_folder_on_another_disk_is_used(make_app, bids, tmp_path) -> None:
    root = bids["root"]
    other_disk = tmp_path / "disk2" / "derivatives"
    shutil.move(root / "derivatives", other_disk)
    (root / "derivatives").symlink_to(other_disk, target_is_directory=True)
    assert [case.status for case in list_cases(root)] == [PREDICTED, PREDICTED, "not predicted"]
    app, _ = painting(make_app, "alice", CASES["sub-01"], 2)
    app.export()
    assert app.state.message.startswith("saved version v001") and (other_disk / "labels" / ".sciseg_versions").is_dir()
    with pytest.raises(InputError):
        app.session.open_case("sub-01/anat/../../x")


def test_lesion_numbers_sit_where_the_table_says_and_follow_the_case(make_app) -> None:
    app = make_app()
    app.open_case(CASES["sub-02"])
    app.update_measures()
    rows, points = app.state.lesions, app.session.lesion_numbers
    assert len(rows) >= 1 and points.GetNumberOfControlPoints() == len(rows)
    for index, row in enumerate(rows):
        assert points.GetNthControlPointLabel(index) == str(row["label"])
        assert points.GetNthControlPointPosition(index) == pytest.approx(row["centre_ras"], abs=1e-6)
        lesion = app.session.labels() == 2  # the number lies in its lesion: the centre's voxel is lesion
        ijk = app.session.reference_image().TransformPhysicalPointToIndex(
            (-row["centre_ras"][0], -row["centre_ras"][1], row["centre_ras"][2]))  # RAS -> LPS
        assert lesion[ijk[2], ijk[1], ijk[0]]
    assert points.GetLocked()
    app.open_case(CASES["sub-01"])
    assert points.GetNumberOfControlPoints() == 0  # the previous case's numbers are gone before its table comes


def test_a_case_never_predicted_opens_its_draft_instead_of_segmenting_again(make_app, bids) -> None:
    from SCIsegLib.cases import Case

    image = bids["root"] / f"{CASES['sub-03']}.nii.gz"
    case = Case.open(bids["root"], image)  # no prediction, no version: empty masks
    drawn = case.labels.copy()
    drawn[20:23, 25:28, 28:31] = 2
    case.save_draft(drawn, "alice")  # drawn by hand on the empty masks, e.g. before the worker died
    app = make_app()
    app.state.rater = "alice"
    app.open_case(CASES["sub-03"])
    assert not app.state.running and app.state.case_id == CASES["sub-03"]
    np.testing.assert_array_equal(app.session.labels(), drawn)
    assert "started from empty" in app.state.opened_text
