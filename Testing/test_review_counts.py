"""The review app's counts, lesion table and drafts after edits, against independent full recomputations.

The app reads the masks from the segments' layers (:mod:`SCIsegLib.review.segment_arrays`), measures the lesion table on
the cord's box and writes drafts in the background; here every step of a random series of strokes (add and erase, in
cord, lesion and grey matter, with the overwrite modes the app uses), undos and redos, including strokes that merge
two lesions and split one, is compared with Slicer's own export (``mrml.export_sciseg_label_map``) and ``sciseg
analyze``'s measures of the whole scan.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, shared_file
from review_data import CASES, make_review_bids

pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")


@pytest.fixture()
def bids(tmp_path: Path) -> dict[str, Path]:
    shared_file("sct_testing_data/t2/t2.nii.gz")
    return make_review_bids(tmp_path / "bids", SHARED_DATA)


def _apply(editor, segment_id: str, voxels: np.ndarray, erase: bool = False) -> None:
    """One undoable stroke through the editor's modifier (as Paint or Erase), in the app's overwrite mode for the segment."""
    from trame_slicer.segmentation.segment_modifier import ModificationMode
    from vtkmodules.util.numpy_support import vtk_to_numpy

    from SCIsegLib.review.grey_matter import overwrite_mode

    editor.set_active_segment_id(segment_id)
    editor.set_overwrite_mode(overwrite_mode(segment_id))
    modifier = editor.active_segment_modifier
    stroke = modifier.create_modifier_labelmap()
    dims = stroke.GetDimensions()
    array = vtk_to_numpy(stroke.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    array[:] = voxels
    stroke.Modified()
    modifier.apply_labelmap(stroke, modification_mode=ModificationMode.Remove if erase else ModificationMode.Add)


def _reference(session) -> tuple[np.ndarray, np.ndarray]:
    """(labels, grey matter) as Slicer's export writes them: one temporary label map per segment, resampled."""
    from SCIsegLib import mrml

    case = session.case
    labels = sitk.GetArrayFromImage(mrml.export_sciseg_label_map(session.logic, session.scene, case.segmentation_node,
                                                                 case.volume_node))
    grey = mrml.segment_mask(session.logic, session.scene, case.segmentation_node, "grey_matter", case.volume_node)
    return labels, grey


def _reference_counts(labels: np.ndarray, grey: np.ndarray) -> dict[str, int]:
    cord_only, lesion = int((labels == 1).sum()), int((labels == 2).sum())
    return {"cord_only": cord_only, "lesion": lesion, "cord": cord_only + lesion, "grey_matter": int(grey.sum())}


def _reference_table(labels: np.ndarray, session) -> list[tuple]:
    """``sciseg analyze``'s lesions of the whole scan (no box), rounded as the table shows them."""
    from SCIsegLib.review.session import measure_lesions

    rows, _ = measure_lesions(labels, session.reference_image())
    return [(r["label"], r["volume_mm3"], r["length_mm"], r["width_mm"], tuple(np.round(r["centre_ras"], 3))) for r in rows]


def _table(rows: list[dict]) -> list[tuple]:
    return [(r["label"], r["volume_mm3"], r["length_mm"], r["width_mm"], tuple(np.round(r["centre_ras"], 3))) for r in rows]


def _box(shape, centre, radius) -> np.ndarray:
    voxels = np.zeros(shape, dtype=np.uint8)
    z, y, x = centre
    voxels[max(0, z - radius):z + radius + 1, max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1] = 1
    return voxels


def test_layer_reads_equal_slicers_export_after_random_strokes_undos_and_redos(bids) -> None:
    from trame_slicer.core import SlicerApp
    from undo_stack import UndoStack

    from SCIsegLib.review.lesion_table import lesion_rows
    from SCIsegLib.review.segment_arrays import segment_array_zyx
    from SCIsegLib.review.session import ReviewSession

    session = ReviewSession(SlicerApp(), bids["root"], "sciseg-demo", grey_matter=True)
    undo = UndoStack(undo_limit=50)
    session.editor.set_undo_stack(undo)
    case = session.open_case(CASES["sub-01"])
    labels, _ = _reference(session)
    cord = np.argwhere(labels > 0)
    shape = labels.shape
    rng = np.random.default_rng(22)
    steps = []
    for _ in range(24):
        action = rng.choice(["stroke", "stroke", "stroke", "undo", "redo"])
        if action == "undo" and undo.can_undo():
            undo.undo()
        elif action == "redo" and undo.can_redo():
            undo.redo()
        else:
            segment = str(rng.choice(["lesion", "lesion", "spinal_cord", "grey_matter"]))
            centre = tuple(int(v) for v in cord[rng.integers(len(cord))])
            _apply(session.editor, segment, _box(shape, centre, int(rng.integers(0, 3))), erase=bool(rng.random() < 0.3))
            action = f"{segment} stroke"
        steps.append(action)
        expected_labels, expected_grey = _reference(session)
        assert np.array_equal(session.labels(), expected_labels), steps
        assert np.array_equal(segment_array_zyx(case.segmentation_node, "grey_matter", case.volume_node), expected_grey)
        assert session.voxel_counts() == _reference_counts(expected_labels, expected_grey), steps
    assert {"undo", "redo"} <= set(steps) and (session.labels() == 2).any() and _reference(session)[1].any()

    # two lesions, a stroke between them merges them, erasing its middle splits them again
    _apply(session.editor, "lesion", (session.labels() == 2).astype(np.uint8), erase=True)
    z, y, x = (int(v) for v in cord[len(cord) // 2])
    left, right = _box(shape, (z, y, x - 3), 0), _box(shape, (z, y, x + 3), 0)
    _apply(session.editor, "lesion", left | right)
    tables = [_table(lesion_rows(session.labels(), session.reference_image())[0])]
    assert tables[-1] == _reference_table(_reference(session)[0], session)
    bridge = np.zeros(shape, np.uint8)
    bridge[z, y, x - 3:x + 4] = 1
    for voxels, erase in ((bridge, False), (_box(shape, (z, y, x), 0), True)):
        _apply(session.editor, "lesion", voxels, erase)
        tables.append(_table(lesion_rows(session.labels(), session.reference_image())[0]))
        assert tables[-1] == _reference_table(_reference(session)[0], session)
    assert [len(table) for table in tables] == [2, 1, 2]  # two, merged, then split
    undo.undo()  # the split undone: one lesion again
    assert _table(lesion_rows(session.labels(), session.reference_image())[0]) == tables[1]


def test_a_layer_off_the_volumes_grid_or_transformed_is_read_through_slicers_export(bids) -> None:
    from trame_slicer.core import SlicerApp
    import vtk

    from SCIsegLib.review.segment_arrays import sciseg_labels_zyx, segment_array_zyx
    from SCIsegLib.review.session import ReviewSession

    session = ReviewSession(SlicerApp(), bids["root"], "sciseg-demo", grey_matter=False)
    case = session.open_case(CASES["sub-01"])
    expected = sitk.GetArrayFromImage(session.label_image())  # Slicer's export
    assert np.array_equal(sciseg_labels_zyx(case.segmentation_node, case.volume_node), expected)
    transform = session.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 2.0)
    transform.SetMatrixTransformToParent(matrix)
    case.segmentation_node.SetAndObserveTransformNodeID(transform.GetID())
    assert segment_array_zyx(case.segmentation_node, "lesion", case.volume_node) is None
    assert sciseg_labels_zyx(case.segmentation_node, case.volume_node) is None  # session.labels(): Slicer's export
    case.segmentation_node.SetAndObserveTransformNodeID(None)
    spacing = list(case.volume_node.GetSpacing())
    case.volume_node.SetSpacing(spacing[0] * 2, spacing[1], spacing[2])  # the layers no longer lie on its grid
    assert segment_array_zyx(case.segmentation_node, "lesion", case.volume_node) is None


def _settle(app, timeout_s: float = 60.0) -> None:
    """Run the app's event loop until its counts, draft and lesion table are done (a safety-net timeout only)."""
    async def idle() -> None:
        deadline = time.monotonic() + timeout_s
        while not app.measures_idle:
            assert time.monotonic() < deadline, "the measures did not finish"
            await asyncio.sleep(0.01)

    from trame_server.utils.asynchronous import get_event_loop

    get_event_loop().run_until_complete(idle())


def test_the_apps_counts_table_and_draft_follow_strokes_undos_and_redos_exactly(bids) -> None:
    import ctypes.util

    if ctypes.util.find_library("EGL") is None:
        pytest.skip("EGL is not installed (apt-get install libegl1): the app's views need offscreen rendering")
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame.app import get_server

    from SCIsegLib.cases import Case
    from SCIsegLib.review.app import ReviewApp
    from SCIsegLib.review.paths import case_image_path

    app = ReviewApp(bids["root"], bids["queue"], "sciseg-demo", server=get_server("review_counts", client_type="vue3"))
    app.state.rater = "counter"
    app.open_case(CASES["sub-01"])
    _settle(app)
    session = app.session
    labels, _ = _reference(session)
    cord = np.argwhere(labels == 1)
    rng = np.random.default_rng(8)
    for step in range(8):
        if step in (3, 6):
            app.undo()
        elif step == 4:
            app.redo()
        else:
            centre = tuple(int(v) for v in cord[rng.integers(len(cord))])
            _apply(session.editor, str(rng.choice(["lesion", "spinal_cord", "grey_matter"])), _box(labels.shape, centre, 1))
        _settle(app)
        expected, grey = _reference(session)
        assert app.state.counts == _reference_counts(expected, grey), step
        assert _table(app.state.lesions) == _reference_table(expected, session), step
        assert app.state.unsaved
        draft = Case.open(bids["root"], case_image_path(bids["root"], CASES["sub-01"]), draft_of="counter").labels
        assert np.array_equal(draft, expected), step  # the draft on disk holds the last edit
    # a stroke, then at once another case: its draft lands under its own case, whole, before the question
    centre = tuple(int(v) for v in cord[0])
    _apply(session.editor, "lesion", _box(labels.shape, centre, 1))
    expected, _ = _reference(session)
    app.open_case(CASES["sub-02"])
    assert app.state.pending and app.state.case_id == CASES["sub-01"]
    draft = Case.open(bids["root"], case_image_path(bids["root"], CASES["sub-01"]), draft_of="counter").labels
    assert np.array_equal(draft, expected)
    app.resolve_pending("keep")
    _settle(app)
    assert app.state.case_id == CASES["sub-02"] and not app.state.unsaved
    assert not list((bids["root"] / "derivatives").rglob("sub-02_T2w*/*.nrrd"))  # nothing filed under sub-02


def test_counting_a_full_scan_after_a_stroke_costs_little_cpu(tmp_path) -> None:
    """errsm_21 (384 x 215 x 52 voxels): reading the masks and counting them (cord, lesion, grey matter) after a stroke,
    in CPU seconds of this process (the fewest of three). Slicer's export took 0.04 s (quiet) to 0.3 s (loaded); the layers
    are read and counted in about 2 ms."""
    from trame_slicer.core import SlicerApp

    from review_data import make_full_fov_bids
    from SCIsegLib.review.session import ReviewSession

    shared_file("sct_2014_errsm/errsm_21/t2.nii.gz")
    cases = make_full_fov_bids(tmp_path / "bids", SHARED_DATA)
    session = ReviewSession(SlicerApp(), tmp_path / "bids", "sciseg-demo", grey_matter=True)
    session.open_case(cases[2])
    labels, _ = _reference(session)
    _apply(session.editor, "lesion", _box(labels.shape, tuple(int(v) for v in np.argwhere(labels == 1)[500]), 1))
    times = []
    for _ in range(3):
        started = time.process_time()
        counts = session.voxel_counts(session.labels())  # the grey matter read too
        times.append(time.process_time() - started)
    assert counts == _reference_counts(*_reference(session))
    print(f"labels and counts of a full scan: {min(times):.3f} s CPU")
    assert min(times) < 0.015  # Slicer's export: 0.04 s CPU on a quiet machine


def test_during_a_paint_stroke_only_its_view_renders_and_every_view_renders_after(bids) -> None:
    """Slicer's model displayable manager asks every slice view to render when the brush moves: during a stroke the
    other views are held (one frame each after the release), so the release is not queued behind their frames."""
    import ctypes.util

    if ctypes.util.find_library("EGL") is None:
        pytest.skip("EGL is not installed (apt-get install libegl1): the app's views need offscreen rendering")
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame.app import get_server
    from vtkmodules.vtkCommonCore import vtkCommand

    from SCIsegLib.review.app import ReviewApp

    app = ReviewApp(bids["root"], bids["queue"], "sciseg-demo", server=get_server("review_stroke_views", client_type="vue3"))
    app.open_case(CASES["sub-01"])
    _settle(app)
    views = app.slicer_app.view_manager.get_slice_views()
    asked = {view.get_view_node().GetID(): 0 for view in views}
    for view in views:  # what the views' render strategies are asked for (a blocked view drops the request)
        view._displayable_manager_group.AddObserver(
            vtkCommand.UpdateEvent, lambda *_, view=view: asked.__setitem__(
                view.get_view_node().GetID(), asked[view.get_view_node().GetID()] + (not view.is_render_blocked)))
    app.state.effect = "paint"
    app.set_effect("paint")
    lesion_before = app.state.counts["lesion"]
    stroked = views[1]
    interactor = stroked.interactor()
    size = stroked.render_window().GetSize()
    x, y = size[0] // 2, size[1] // 2
    smoothed = stroked.render_window().GetMultiSamples()
    interactor.SetEventInformation(x, y, 0, 0, "\0", 0)
    interactor.LeftButtonPressEvent()
    assert [view.is_render_blocked for view in views] == [view is not stroked for view in views]
    assert smoothed > 0 and stroked.render_window().GetMultiSamples() == 0  # its stroke frames: no anti-aliasing
    before = dict(asked)
    for step in range(4):
        interactor.SetEventInformation(x + step, y + step, 0, 0, "\0", 0)
        interactor.MouseMoveEvent()
    moved = {key: asked[key] - before[key] for key in asked}
    assert moved[stroked.get_view_node().GetID()] > 0 and sum(moved.values()) == moved[stroked.get_view_node().GetID()]
    interactor.LeftButtonReleaseEvent()  # the stroke is applied: every view waits for its counts, then renders
    _settle(app)
    assert not any(view.is_render_blocked for view in views)
    assert stroked.render_window().GetMultiSamples() == smoothed  # the frames after the stroke are smoothed again
    assert app.state.counts["lesion"] > lesion_before and app.state.unsaved  # the stroke was painted and counted


def _review_app(bids, name: str):
    import ctypes.util

    if ctypes.util.find_library("EGL") is None:
        pytest.skip("EGL is not installed (apt-get install libegl1): the app's views need offscreen rendering")
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    from trame.app import get_server

    from SCIsegLib.review.app import ReviewApp

    app = ReviewApp(bids["root"], bids["queue"], "sciseg-demo", server=get_server(name, client_type="vue3"))
    app.state.rater = "tabler"
    app.open_case(CASES["sub-01"])
    _settle(app)
    return app


def test_a_quick_lesion_table_is_sent_before_the_views_render_a_slow_one_after(bids) -> None:
    """Measured in a thread after the counts, the table waited for the views' frames (0.2 s after the counts in the
    page); a table whose last measurement was quick is now measured at once, before the frames; a slow one still goes
    to a thread, and its rows arrive after the frames, right."""
    from SCIsegLib.review import measures

    app = _review_app(bids, "review_table_first")
    session = app.session
    cord = np.argwhere(_reference(session)[0] == 1)
    table_when_rendered = []
    render = app.render_every_view
    app.render_every_view = lambda: (table_when_rendered.append(_table(app.state.lesions)), render())
    for step, slow in enumerate((False, False, True)):
        if slow:
            app._last_table_cpu_s = measures.INLINE_TABLE_S + 1.0  # as after a measurement of many lesions
        table_when_rendered.clear()
        centre = tuple(int(v) for v in cord[(step + 1) * len(cord) // 5])
        _apply(session.editor, "lesion", _box(_reference(session)[0].shape, centre, 0))
        _settle(app)
        expected = _reference_table(_reference(session)[0], session)
        assert _table(app.state.lesions) == expected and len(expected) == step + 2
        assert table_when_rendered, "the views did not render after the stroke"
        if slow:
            assert table_when_rendered[0] != expected  # measured in the thread: after the frames
        else:
            assert table_when_rendered[0] == expected  # before the frames


def _run_until(app, condition, timeout_s: float = 60.0) -> None:
    async def wait() -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, "the condition was not reached"
            await asyncio.sleep(0.01)

    from trame_server.utils.asynchronous import get_event_loop

    get_event_loop().run_until_complete(wait())


def test_a_table_measured_in_a_thread_never_replaces_a_newer_one(bids, monkeypatch) -> None:
    """The opening's table still measuring in its thread when a quick stroke's table is shown at once: the older
    rows, arriving last, are dropped."""
    import threading

    from SCIsegLib.review import measures

    app = _review_app(bids, "review_table_order")
    session = app.session
    before = session.labels()
    cord = np.argwhere(before == 1)
    entered, release = threading.Event(), threading.Event()
    measure = measures.lesion_rows

    def held_first(labels, grid):
        if not entered.is_set():
            entered.set()
            assert release.wait(60)
        return measure(labels, grid)

    monkeypatch.setattr(measures, "lesion_rows", held_first)
    app._ask_lesion_table(session.case.opening, before)  # the older table, held in its thread
    _run_until(app, entered.is_set)
    _apply(session.editor, "lesion", _box(before.shape, tuple(int(v) for v in cord[len(cord) // 3]), 0))
    _run_until(app, lambda: not app._counts_pending)  # the stroke counted, its table shown at once
    newer = _table(app.state.lesions)
    assert len(newer) == 2
    release.set()
    _settle(app)
    assert _table(app.state.lesions) == newer == _reference_table(_reference(session)[0], session)
