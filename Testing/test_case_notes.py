"""A case's note and flags (kept per rater, in every export's sidecars, in the review list) and who else has it open.

The case model without a browser (``SCIsegLib.cases``), on the review test dataset made from SCT's real scans.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SHARED_DATA, shared_file
from review_data import CASES, make_review_bids
from SCIsegLib.cases import Case, CaseRefused, new_holder, rater_key
from SCIsegLib.cases.leases import STALE_S, lease_folder, live_leases, write_lease
from SCIsegLib.cases.notes import MAX_NOTE_CHARS, notes_folder
from SCIsegLib.review.cases import list_cases


@pytest.fixture()
def bids(tmp_path: Path) -> Path:
    shared_file("sct_testing_data/t2/t2.nii.gz")
    return make_review_bids(tmp_path / "bids", SHARED_DATA)["root"]


def _open(root: Path, subject: str = "sub-01") -> Case:
    return Case.open(root, root / f"{CASES[subject]}.nii.gz")


def test_flags_and_note_are_kept_per_rater_and_written_into_every_sidecar_of_the_export(bids: Path) -> None:
    case = _open(bids)
    case.set_note("alice", ["unsure", "artifact", "unsure"], "motion at C3\x07\n")
    stored = notes_folder(bids, case.scan) / f"{rater_key('alice')}.json"
    assert json.loads(stored.read_text())["Flags"] == ["artifact", "unsure"]  # display order, once each
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]  # no temporary left
    reopened = _open(bids)
    assert reopened.note_of("alice").flags == ("artifact", "unsure") and reopened.note_of("alice").note == "motion at C3"
    assert reopened.note_of("bob").empty
    outcome = reopened.export(case.scan.grid.image_of(reopened.labels), "alice", drawn_on=reopened.scan.key)
    for sidecar in outcome.result.version_folder.glob("*.json"):
        content = json.loads(sidecar.read_text())
        assert content["Flags"] == ["artifact", "unsure"] and content["Note"] == "motion at C3", sidecar.name
    published = bids / "derivatives/labels/sub-01/anat/sub-01_T2w_dseg.json"
    assert json.loads(published.read_text())["Flags"] == ["artifact", "unsure"]
    # bob exports with flags of his own (none kept): his, not alice's
    second = reopened.export(case.scan.grid.image_of(reopened.labels), "bob", drawn_on=reopened.scan.key,
                             flags=["accept"], note="")
    content = json.loads((second.result.version_folder / "sub-01_T2w_dseg.json").read_text())
    assert content["Flags"] == ["accept"] and content["Note"] == ""
    case.set_note("alice", [], "")  # nothing left: the file goes
    assert not stored.exists()


def test_bad_flags_notes_and_names_are_refused_with_one_sentence_and_nothing_written(bids: Path) -> None:
    case = _open(bids)
    folder = notes_folder(bids, case.scan)
    for flags, note, rater in ((["great"], "", "alice"), ("artifact", "", "alice"), ([], "x" * (MAX_NOTE_CHARS + 1), "alice"),
                               (["artifact"], "", "  ")):
        with pytest.raises(CaseRefused) as refused:
            case.set_note(rater, flags, note)
        assert "\n" not in str(refused.value)
    with pytest.raises(CaseRefused):
        case.export(case.scan.grid.image_of(case.labels), "alice", drawn_on=case.scan.key, flags=["../x"])
    assert not folder.exists() and not (bids / "derivatives/labels/.sciseg_versions").exists()
    case.set_note("../../etc/passwd", ["unsure"], "")  # the rater's name never becomes a path as typed
    (written,) = folder.iterdir()
    assert written.parent == folder and written.name.startswith("etc-passwd-")


def test_a_note_about_another_content_of_the_image_is_not_shown(bids: Path) -> None:
    case = _open(bids)
    case.set_note("alice", ["artifact"], "ghosting")
    path = notes_folder(bids, case.scan) / f"{rater_key('alice')}.json"
    content = json.loads(path.read_text())
    path.write_text(json.dumps({**content, "SourceSha256": "0" * 64}))
    assert _open(bids).note_of("alice").empty


def test_a_session_holding_the_case_is_seen_by_others_until_released_stale_or_dead(bids: Path) -> None:
    alice, bob = _open(bids), _open(bids)
    mine, theirs = new_holder(), new_holder()
    alice.hold(mine, "alice")
    assert alice.open_elsewhere(mine) == []  # its own lease is not "elsewhere"
    (seen,) = bob.open_elsewhere(theirs)
    assert seen.rater == "alice" and "alice (open since" in seen.describe()
    cases = {case.case_id: case for case in list_cases(bids, holder=theirs)}
    assert cases[CASES["sub-01"]].open_by == (seen.describe(),) and cases[CASES["sub-02"]].open_by == ()
    assert {case.case_id: case for case in list_cases(bids, holder=mine)}[CASES["sub-01"]].open_by == ()
    alice.release(mine)
    assert bob.open_elsewhere(theirs) == []

    folder = lease_folder(bids, alice.scan)
    stale = new_holder()
    write_lease(folder, stale, "carol", now=time.time() - STALE_S - 1)  # no heartbeat for longer than STALE_S
    assert live_leases(folder) == [] and not (folder / f"{stale}.json").exists()

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = new_holder()
        write_lease(folder, dead, "dave")
        path = folder / f"{dead}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "Pid": child.pid}))
        assert [lease.rater for lease in live_leases(folder)] == ["dave"]  # its process runs
    finally:
        child.kill()
        child.wait()
    assert live_leases(folder) == []  # killed (kill -9): not open any more, at once


def test_the_review_list_shows_every_raters_flags_and_notes(bids: Path) -> None:
    case = _open(bids)
    case.set_note("alice", ["artifact"], "motion at C3")
    case.set_note("bob", ["accept"], "")
    listed = {item.case_id: item for item in list_cases(bids)}[CASES["sub-01"]]
    assert listed.flags == ("accept", "artifact")
    assert set(listed.notes) == {'alice: artifact - "motion at C3"', "bob: accept as is"}
    assert listed.as_dict()["flags"] == ["accept", "artifact"]
    assert {item.case_id: item for item in list_cases(bids)}[CASES["sub-02"]].flags == ()


def test_the_apps_flags_and_note_follow_the_case_and_a_name_typed_afterwards_keeps_them(bids: Path) -> None:
    pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
    import ctypes.util

    if ctypes.util.find_library("EGL") is None:
        pytest.skip("EGL is not installed (apt-get install libegl1): the app's views need offscreen rendering")
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame.app import get_server

    from SCIsegLib.review.app import ReviewApp
    from SCIsegLib.review.case_notes import keep_case_notes, show_case_notes

    app = ReviewApp(bids, None, "sciseg-demo", server=get_server("case_notes_app", client_type="vue3"))
    # the state's change handlers run in a served app (the browser test); here they are called as they would be
    app.open_case(CASES["sub-01"])
    show_case_notes(app)
    app.state.flags, app.state.note = ["unsure"], "check C4"  # no rater name yet: refused, kept on screen
    keep_case_notes(app)
    assert "type your name" in app.state.error and not notes_folder(bids, _open(bids).scan).exists()
    app.state.rater = "alice"  # the name typed afterwards: what was set is kept under it
    show_case_notes(app, keep_typed=True)
    assert _open(bids).note_of("alice").flags == ("unsure",) and _open(bids).note_of("alice").note == "check C4"
    listed = {case["case_id"]: case for case in app.state.cases}[CASES["sub-01"]]
    assert listed["flags"] == ["unsure"]
    app.open_case(CASES["sub-02"])  # another case: its own (none)
    show_case_notes(app)
    assert app.state.flags == [] and app.state.note == ""
    app.open_case(CASES["sub-01"])
    show_case_notes(app)
    assert app.state.flags == ["unsure"] and app.state.note == "check C4"
