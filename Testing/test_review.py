"""``sciseg review`` library parts: case ids and containment, the case list, the token rules, the scene session.

The session tests run on trame-slicer's ``SlicerApp`` (slicer-core, no browser); the browser tests are in
``test_review_browser.py``.
"""

from __future__ import annotations

import gc
import json
import time
import os
import weakref
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, shared_file
from review_data import CASES, LESION_VOXELS_SUB01, make_review_bids, paint_lesion_voxels
from SCIsegLib.errors import InputError
from SCIsegLib.review import auth
from SCIsegLib.review.cases import CORRECTED, NOT_PREDICTED, PREDICTED, REFUSED, list_cases, next_uncorrected
from SCIsegLib.review.command import review_url
from SCIsegLib.review.paths import PathRefused, case_image_path, contained, prediction_paths, validate_case_id


@pytest.fixture()
def bids(tmp_path: Path) -> dict[str, Path]:
    shared_file("sct_testing_data/t2/t2.nii.gz")
    return make_review_bids(tmp_path / "bids", SHARED_DATA)


@pytest.mark.parametrize("case_id", [
    "../sub-01/anat/sub-01_T2w", "sub-01/anat/../../../etc/passwd", "/etc/passwd", "sub-01/anat/sub-01_T2w/..",
    "sub-01\\anat\\x", "sub-01/anat/.hidden", "sub-01/../anat/x", "", "sub-01/anat/sub 01", "derivatives/labels/x",
])
def test_case_ids_outside_the_bids_shape_are_refused(case_id: str) -> None:
    with pytest.raises(PathRefused):
        validate_case_id(case_id)


def test_valid_case_ids_pass() -> None:
    assert validate_case_id("sub-01/anat/sub-01_T2w") == "sub-01/anat/sub-01_T2w"
    assert validate_case_id("sub-A1/ses-02/anat/sub-A1_ses-02_T2w")


def test_symlinks_escaping_the_root_are_refused(bids: dict[str, Path], tmp_path: Path) -> None:
    root = bids["root"]
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes((root / f"{CASES['sub-01']}.nii.gz").read_bytes())
    escaping = root / "sub-99" / "anat" / "sub-99_T2w.nii.gz"
    escaping.parent.mkdir(parents=True)
    escaping.symlink_to(outside)
    with pytest.raises(PathRefused, match="outside the dataset"):
        case_image_path(root, "sub-99/anat/sub-99_T2w")
    assert "sub-99/anat/sub-99_T2w" not in [case.case_id for case in list_cases(root)]
    # a folder symlink escaping the root: predictions written there would land outside
    (root / "derivatives" / "sciseg" / "sub-98").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(PathRefused):
        prediction_paths(root, "sub-98/anat/sub-98_T2w")
    inside = root / "sub-97"
    inside.symlink_to(root / "sub-01", target_is_directory=True)  # a symlink inside the root stays allowed
    assert contained(root, inside / "anat" / "sub-01_T2w.nii.gz")


def test_case_list_follows_the_queue_and_reads_statuses(bids: dict[str, Path]) -> None:
    root, queue = bids["root"], bids["queue"]
    cases = list_cases(root, queue)
    assert [case.case_id for case in cases] == [CASES["sub-02"], CASES["sub-01"], CASES["sub-03"]]
    assert [case.status for case in cases] == [PREDICTED, PREDICTED, NOT_PREDICTED]
    assert [case.score for case in cases] == [0.6, 0.3, None]
    assert [case.case_id for case in list_cases(root, queue, status=NOT_PREDICTED)] == [CASES["sub-03"]]
    assert next_uncorrected(cases).case_id == CASES["sub-02"]
    assert next_uncorrected(cases, after=CASES["sub-01"]).case_id == CASES["sub-03"]
    assert [case.case_id for case in list_cases(root)] == [CASES["sub-01"], CASES["sub-02"], CASES["sub-03"]]


def test_bind_rules_and_tokens() -> None:
    assert auth.access_token("127.0.0.1", False, {}) == (None, False)
    assert auth.access_token("localhost", False, {}) == (None, False)
    with pytest.raises(InputError, match="--allow-remote"):
        auth.access_token("0.0.0.0", False, {})
    with pytest.raises(InputError, match="--allow-remote"):
        auth.access_token("192.168.1.5", False, {})
    token, generated = auth.access_token("0.0.0.0", True, {})
    assert generated and len(token) >= 24
    assert auth.access_token("0.0.0.0", True, {})[0] != token  # a new random token each start
    chosen = "x" * 20
    assert auth.access_token("0.0.0.0", True, {auth.TOKEN_ENVIRONMENT: chosen}) == (chosen, False)
    with pytest.raises(InputError, match="shorter"):
        auth.access_token("0.0.0.0", True, {auth.TOKEN_ENVIRONMENT: "short"})
    assert review_url("10.0.0.2", 8080, chosen) == f"http://10.0.0.2:8080/?secret={chosen}"
    assert review_url("127.0.0.1", 8080, None) == "http://127.0.0.1:8080/"


def test_review_command_refuses_bad_input_with_exit_2(tmp_path: Path) -> None:
    from SCIsegLib.cli import main

    assert main(["review", "--bids", str(tmp_path / "missing")]) == 2
    assert main(["review", "--bids", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert main(["review", "--bids", str(tmp_path), "--queue", str(tmp_path / "q.json")]) == 2


# ---------------------------------------------------------------------------------------------- scene session
@pytest.fixture()
def session_factory(bids: dict[str, Path]):
    pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
    from trame_slicer.core import SlicerApp

    from SCIsegLib.review.session import ReviewSession

    return lambda: ReviewSession(SlicerApp(), bids["root"], "sciseg-demo")


def test_session_loads_masks_as_our_segments_and_counts_voxels(session_factory, bids) -> None:
    from SCIsegLib import mrml

    session = session_factory()
    case = session.open_case(CASES["sub-01"])
    segmentation = case.segmentation_node.GetSegmentation()
    # the grey matter too: a grey-matter model is bundled (sciseg-gm-demo), see test_review_grey_matter.py
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == ["spinal_cord", "lesion", "grey_matter"]
    assert segmentation.GetSegment("lesion").GetName() == mrml.LESION.name
    cord = sitk.GetArrayFromImage(sitk.ReadImage(str(SHARED_DATA / "sct_testing_data/t2/t2_seg-manual.nii.gz"))) > 0
    assert session.voxel_counts() == {"cord_only": int(cord.sum()) - LESION_VOXELS_SUB01, "lesion": LESION_VOXELS_SUB01, "cord": int(cord.sum()),
                                      "grey_matter": 0}
    rows = session.lesion_table()
    assert len(rows) == 1 and rows[0]["volume_mm3"] == pytest.approx(27.0)  # 27 voxels of 1 mm3
    assert session.editor.get_overwrite_mode().name == "OVERWRITE_ALL"
    session.open_case(CASES["sub-02"])  # the previous case leaves the scene
    names = [session.scene.GetNthNode(i).GetName() for i in range(session.scene.GetNumberOfNodes())]
    assert "sub-01_T2w" not in names


def test_painted_lesion_takes_cord_voxels_undo_and_export_records_the_change(session_factory, bids) -> None:
    from undo_stack import UndoStack
    from vtkmodules.util.numpy_support import vtk_to_numpy

    session = session_factory()
    undo = UndoStack(undo_limit=5)
    session.editor.set_undo_stack(undo)
    session.open_case(CASES["sub-01"])
    before = session.labels()
    session.editor.set_active_segment_id("lesion")
    modifier = session.editor.active_segment_modifier
    stroke = modifier.create_modifier_labelmap()  # the editor's own modifier grid (IJK of the image), as Paint fills it
    dims = stroke.GetDimensions()
    voxels = vtk_to_numpy(stroke.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    voxels[:] = 0
    cord_only = np.argwhere(before == 1)[:5]  # five cord-only voxels become lesion
    for z, y, x in cord_only:
        voxels[z, y, x] = 1
    stroke.Modified()
    modifier.apply_labelmap(stroke)
    cord_segment = modifier.get_segment_labelmap("spinal_cord", as_numpy_array=True)
    assert not any(cord_segment[z, y, x] for z, y, x in cord_only)  # overwrite: taken from "cord only"
    counts = session.voxel_counts()
    assert counts["lesion"] == LESION_VOXELS_SUB01 + 5 and counts["cord_only"] == int((before == 1).sum()) - 5
    undo.undo()
    assert session.voxel_counts()["lesion"] == LESION_VOXELS_SUB01
    undo.redo()
    after = session.labels()
    outcome = session.export("alice")
    assert outcome.result.version == 1 and outcome.warning is None
    sidecar = json.loads((outcome.result.version_folder / "sub-01_T2w_dseg.json").read_text())
    assert sidecar["Rater"] == "alice" and sidecar["Model"] == "sciseg-demo"
    assert sidecar["Corrections"]["lesion"]["VoxelsAdded"] == 5 and sidecar["Corrections"]["lesion"]["VoxelsRemoved"] == 0
    assert sidecar["Corrections"]["sc"]["VoxelsAdded"] == 0  # the cord region (cord only + lesion) is unchanged
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(outcome.result.version_folder / "sub-01_T2w_dseg.nii.gz")))
    assert np.array_equal(written, after)


def test_a_labels_folder_symlinked_outside_the_root_refuses_its_cases(session_factory, bids, tmp_path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (bids["root"] / "derivatives" / "labels").symlink_to(outside, target_is_directory=True)
    session = session_factory()
    with pytest.raises(InputError, match="leads outside the derivatives folder"):
        session.open_case(CASES["sub-01"])
    assert list(outside.iterdir()) == []
    export_correction_outside = outside / ".sciseg_versions" / "sub-02" / "anat" / "sub-02_T2w" / "v001"
    export_correction_outside.mkdir(parents=True)
    (export_correction_outside / "sub-02_T2w_dseg.json").write_text(json.dumps({"Rater": "planted"}))
    cases = list_cases(bids["root"])
    assert [case.status for case in cases] == [REFUSED] * 3 and all(case.rater is None for case in cases)  # not read
    assert "leads outside the derivatives folder" in cases[0].reason


def test_second_rater_on_the_same_case_gets_a_version_and_is_told(session_factory, bids) -> None:
    first, second = session_factory(), session_factory()
    first.open_case(CASES["sub-02"])
    second.open_case(CASES["sub-02"])
    assert first.export("alice").warning is None
    outcome = second.export("bob")
    assert outcome.result.version == 2
    assert "started from prediction while v001 existed; yours is v002" in outcome.warning
    folders = sorted(p.name for p in outcome.result.version_folder.parent.iterdir())
    assert folders == ["v001", "v002"]
    assert list_cases(bids["root"], status=CORRECTED)[0].rater == "bob"
    assert not os.access(outcome.result.version_folder / "sub-02_T2w_dseg.nii.gz", os.W_OK) or os.geteuid() == 0


# ---------------------------------------------------------------------------------------------- the app's actions
def test_app_actions_apply_slicer_effects(bids) -> None:
    """The buttons' methods of the trame app (no browser): threshold, undo, islands, effects, window/level."""
    pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
    import ctypes.util

    if ctypes.util.find_library("EGL") is None:
        pytest.skip("EGL is not installed (apt-get install libegl1): the app's views need offscreen rendering")
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame.app import get_server
    from trame_slicer.core import VolumeWindowLevel
    from vtkmodules.util.numpy_support import vtk_to_numpy

    from SCIsegLib.review.app import EFFECTS, ReviewApp

    app = ReviewApp(bids["root"], bids["queue"], "sciseg-demo", server=get_server("review_actions", client_type="vue3"))
    app.open_case(CASES["sub-01"])
    before = app.session.labels()
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(bids["root"] / f"{CASES['sub-01']}.nii.gz")))
    low, high = float(np.percentile(image, 99)), float(image.max())
    app.state.threshold = [low, high]
    app._set_segment("lesion")
    app.apply_threshold()
    after = app.session.labels()
    inside = (image >= low) & (image <= high)
    assert np.any(inside & (before == 0))  # the range holds voxels outside the cord...
    assert np.array_equal(after == 2, (inside & (before > 0)) | (before == 2))  # ...but adds lesion inside it only
    assert np.array_equal(after > 0, before > 0)  # taking the voxels from "cord only"
    app.undo()
    assert np.array_equal(app.session.labels(), before)
    app.state.threshold = [float(image.min()), float(image.max())]  # the whole cord: 4275 mm3, more than a few lesions
    app.apply_threshold()
    assert "Apply it anyway?" in app.state.threshold_pending["text"] and np.array_equal(app.session.labels(), before)
    app.apply_threshold(confirmed=True)
    assert app.state.threshold_pending is None and np.array_equal(app.session.labels() == 2, before > 0)
    app.undo()
    app.state.threshold_region = "slice"  # the first slice view (axial): its one slice of the cord only
    app.apply_threshold(confirmed=True)
    changed = np.argwhere(app.session.labels() != before)
    assert len(changed) > 0 and min(len(np.unique(changed[:, axis])) for axis in range(3)) == 1
    app.undo()
    app.state.threshold_region = "cord"
    assert np.array_equal(app.session.labels(), before)

    modifier = app.slicer_app.segmentation_editor.active_segment_modifier
    island = modifier.create_modifier_labelmap()
    dims = island.GetDimensions()
    voxels = vtk_to_numpy(island.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    voxels[:] = 0
    voxels[0, 0, 0] = 1  # a one-voxel lesion island in a corner
    island.Modified()
    modifier.apply_labelmap(island)
    assert app.session.voxel_counts()["lesion"] == LESION_VOXELS_SUB01 + 1
    app.keep_largest_island()
    assert app.state.counts["lesion"] == LESION_VOXELS_SUB01

    for name, effect_type in EFFECTS.items():
        app.set_effect(name)
        assert app.slicer_app.segmentation_editor.active_effect_name == effect_type.get_effect_name()
    app._apply_window_level(200.0, 100.0)
    assert VolumeWindowLevel.get_volume_display_range(app.session.case.volume_node) == pytest.approx((0.0, 200.0))
    app.next_case()  # after sub-01 comes sub-03, which has no prediction: a segmentation starts in a child
    assert app.state.running and app.run is not None
    app.cancel_segmentation()  # returns at once; the child stops by itself (the runner's cooperative cancel)
    deadline = time.monotonic() + 30
    while not app.run.finished and time.monotonic() < deadline:
        app.run.poll()
        time.sleep(0.05)
    assert app.run.cancelled and app.run.finished and not app.run.is_running


# ---------------------------------------------------------------------------------------------- case changes leave nothing
def _node_classes(scene) -> dict[str, int]:
    counts: dict[str, int] = {}
    for index in range(scene.GetNumberOfNodes()):
        name = scene.GetNthNode(index).GetClassName()
        counts[name] = counts.get(name, 0) + 1
    return counts


def test_changing_case_leaves_no_node_no_undo_and_no_reference_behind(bids) -> None:
    """Eight openings through the app's own action, each edited (undo history) and measured: the scene holds
    exactly the same nodes after every change, the history is empty, and the closed case's nodes (with their
    voxels) are freed at once by reference counting: no view, pipeline, editor or reference cycle keeps them
    (Python's cyclic collector is off during the loop; a full collection took 80-200 ms here)."""
    pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
    import ctypes.util

    if ctypes.util.find_library("EGL") is None:
        pytest.skip("EGL is not installed (apt-get install libegl1): the app's views need offscreen rendering")
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame.app import get_server

    from SCIsegLib.review.app import ReviewApp

    app = ReviewApp(bids["root"], bids["queue"], "sciseg-demo", server=get_server("review_case_changes", client_type="vue3"))
    scene = app.slicer_app.scene
    first_nodes, previous = None, []
    app.open_case(CASES["sub-02"])  # first use: lazy imports whose caught exceptions keep their callers' frames in cycles
    gc.collect()
    gc.disable()
    try:
        for opening in range(8):
            case_id = CASES["sub-01"] if opening % 2 == 0 else CASES["sub-02"]
            app.open_case(case_id)
            if opening:  # the previous opening's strokes are unsaved: the rater is asked, and lets them go
                assert app.state.pending["case_id"] == case_id and app.state.case_id != case_id
                app.resolve_pending("discard")
            assert app.state.case_id == case_id and not app.state.error
            assert app.undo_stack.n_commands() == 0  # the previous case's strokes cannot be undone into this one
            nodes = _node_classes(scene)
            first_nodes = first_nodes or nodes
            assert nodes == first_nodes, f"opening {opening + 1}: the scene went from {first_nodes} to {nodes}"
            alive = [name for name, node in previous if node() is not None]
            assert not alive, f"opening {opening + 1}: the closed case's {alive} still exist"
            paint_lesion_voxels(app, 5)
            assert app.undo_stack.n_commands() == 1
            app.update_measures()
            assert app.state.lesions and app.state.counts["lesion"] > 0
            case = app.session.case
            previous = [(node.GetClassName(), weakref.ref(node)) for node in (case.volume_node, case.segmentation_node)]
            del case
    finally:
        gc.enable()
    assert sum(first_nodes.values()) == scene.GetNumberOfNodes()


def test_a_case_that_cannot_open_leaves_the_open_case_and_the_scene_as_they_were(session_factory, bids, monkeypatch) -> None:
    root = bids["root"]
    broken = "sub-05/anat/sub-05_T2w"
    (root / "sub-05" / "anat").mkdir(parents=True)
    (root / f"{broken}.nii.gz").write_bytes((root / f"{CASES['sub-01']}.nii.gz").read_bytes())
    predictions = prediction_paths(root, broken)
    predictions["sc"].parent.mkdir(parents=True)
    off_grid = sitk.Image([10, 10, 10], sitk.sitkUInt8)  # not the image's 60x55x52 grid
    for path in predictions.values():
        sitk.WriteImage(off_grid, str(path))
    session = session_factory()
    session.open_case(CASES["sub-02"])
    session.close_case()
    empty = _node_classes(session.scene)  # with the editor's own nodes, made at the first opening
    case = session.open_case(CASES["sub-01"])
    nodes = _node_classes(session.scene)
    with pytest.raises(InputError, match="sub-05_T2w: the cord prediction does not lie on the grid"):
        session.open_case(broken)
    assert session.case is case and _node_classes(session.scene) == nodes
    assert session.voxel_counts()["lesion"] == LESION_VOXELS_SUB01

    def failing_import(*_args, **_kwargs):
        raise RuntimeError("simulated failure after the volume node was added")

    monkeypatch.setattr("SCIsegLib.review.session.mrml.import_sciseg_masks", failing_import)
    with pytest.raises(RuntimeError, match="simulated"):
        session.open_case(CASES["sub-02"])
    assert session.case is None and _node_classes(session.scene) == empty  # the half-added case left nothing
