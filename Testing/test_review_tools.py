"""The review app's tool decisions without a browser: Slicer's keys, the threshold's limits, the lesion table on the
cord's box, Draw's double-click. The browser uses them in ``test_review_browser_tools.py``."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, shared_file
from SCIsegLib.review import keys
from SCIsegLib.review.threshold import CONFIRM_ABOVE_MM3, plan_threshold, region_mask, slice_index_of


def test_keys_are_slicers() -> None:
    assert keys.action_for("b") == "previous_slice" and keys.action_for("f") == "next_slice"  # not cases, as in Slicer
    assert [keys.action_for(k) for k in ("ArrowRight", "ArrowUp", "PageUp")] == ["next_slice"] * 3
    assert [keys.action_for(k) for k in ("ArrowLeft", "ArrowDown", "PageDown")] == ["previous_slice"] * 3
    assert keys.action_for("z", control=True) == "undo" and keys.action_for("y", control=True) == "redo"
    assert keys.action_for("Z", control=True) == "redo" and keys.action_for("b", control=True) is None
    assert keys.action_for("z") == "undo" and keys.action_for("p", alt=True) is None
    assert keys.action_for("N") == "previous_case" and keys.action_for("?") == "shortcuts"
    assert keys.scaled_brush(5.0, larger=True) == 6.0 and keys.scaled_brush(5.0, larger=False) == 4.0  # Slicer's 20 %
    assert keys.scaled_brush(keys.BRUSH_MAX_MM, larger=True) == keys.BRUSH_MAX_MM
    assert keys.clamp_brush(0.01) == keys.BRUSH_MIN_MM
    assert keys.stepped_slice(10.0, 0.8, -2, 0.0, 20.0) == pytest.approx(8.4)
    assert keys.stepped_slice(19.5, 0.8, 3, 0.0, 20.0) == 20.0
    bound = {action for action in keys.PLAIN_KEYS.values()} | set(keys.CONTROL_KEYS.values())
    card = " ".join(shortcut.keys for shortcut in keys.SHORTCUTS)
    for key in keys.PLAIN_KEYS:  # every key is on the card, every action has a key
        assert key.replace("Arrow", "").replace("Escape", "Esc") in card.replace("→", "Right").replace("←", "Left").replace(
            "↑", "Up").replace("↓", "Down") or key in ("=", "_", "N"), key
    assert "previous_case" in bound and "toggle_intensity_mask" in bound


def test_threshold_adds_inside_the_cord_only_and_asks_above_a_few_lesions() -> None:
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[:, 1:4, 1:4] = 1
    labels[2, 2, 2] = 2
    image = np.full(labels.shape, 100.0)
    image[:, 2, 2] = 500.0  # bright: inside the cord on every slice...
    image[:, 0, 0] = 500.0  # ...and outside it
    plan = plan_threshold(image, labels, 400.0, 600.0, region_mask(labels, "cord"), voxel_mm3=0.5)
    assert np.argwhere(plan.added).tolist() == [[0, 2, 2], [1, 2, 2], [3, 2, 2]]  # not the lesion there, not outside
    assert plan.volume_mm3 == 1.5 and not plan.needs_confirmation
    one_slice = plan_threshold(image, labels, 400.0, 600.0, region_mask(labels, "slice", 0, 1), voxel_mm3=0.5)
    assert np.argwhere(one_slice.added).tolist() == [[1, 2, 2]]
    assert not region_mask(labels, "slice", 0, 9).any()  # a slice off the volume limits to nothing
    big = plan_threshold(np.ones((20, 20, 20)), np.ones((20, 20, 20), np.uint8), 0, 2, np.ones((20, 20, 20), bool), 1.0)
    assert big.volume_mm3 == 8000 > CONFIRM_ABOVE_MM3 and big.needs_confirmation and "8000 voxels" in big.question()
    with pytest.raises(ValueError, match="unknown threshold region"):
        region_mask(labels, "everywhere")


def test_slice_index_of_a_view_maps_its_centre_through_the_grid() -> None:
    ijk_to_ras = np.diag([-0.5, -0.5, 2.0, 1.0])  # LPS-like axes, 2 mm slices along k
    ijk_to_ras[:3, 3] = [10.0, 20.0, -30.0]
    ras_to_ijk = np.linalg.inv(ijk_to_ras)
    centre = ijk_to_ras @ np.array([4.0, 6.0, 7.0, 1.0])
    assert slice_index_of(ras_to_ijk, centre[:3], np.array([0.0, 0.0, 1.0])) == (0, 7)  # axial: array axis 0 (z)
    assert slice_index_of(ras_to_ijk, centre[:3], np.array([1.0, 0.0, 0.0])) == (2, 4)  # sagittal: axis 2 (x)


def test_lesion_table_on_the_cord_box_equals_the_whole_scan() -> None:
    from SCIsegLib.review.lesion_table import labelled_box, lesion_rows, totals_text
    from SCIsegLib.review.session import measure_lesions

    image = sitk.ReadImage(str(shared_file("sct_testing_data/t2/t2.nii.gz")))
    cord = sitk.GetArrayFromImage(sitk.ReadImage(str(SHARED_DATA / "sct_testing_data/t2/t2_seg-manual.nii.gz"))) > 0
    labels = cord.astype(np.uint8)
    voxels = np.argwhere(cord)
    for index in (len(voxels) // 3, 2 * len(voxels) // 3):
        z, y, x = voxels[index]
        labels[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2][cord[z - 1 : z + 2, y - 1 : y + 2, x - 1 : x + 2]] = 2
    full_rows, full_centres = measure_lesions(labels, image)
    rows, centres = lesion_rows(labels, image)
    assert len(rows) == 2 and [r["volume_mm3"] for r in rows] == [r["volume_mm3"] for r in full_rows]
    for row, full in zip(rows, full_rows, strict=True):
        assert (row["length_mm"], row["width_mm"]) == (full["length_mm"], full["width_mm"])
        assert row["centre_ras"] == pytest.approx(full["centre_ras"], abs=1e-4)
    box = labelled_box(labels)
    assert np.prod([s.stop - s.start for s in box]) < labels.size / 4  # the box is a fraction of the scan
    assert lesion_rows(np.zeros_like(labels), image) == ([], {})
    total = sum(r["volume_mm3"] for r in rows)
    assert totals_text(rows) == f"2 lesions, {total:.1f} mm³" and totals_text([]) == "no lesion"


def test_a_drag_sets_window_and_level_by_the_image_range() -> None:
    pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
    from SCIsegLib.review.window_level import dragged_window_level

    assert dragged_window_level((100.0, 50.0), (200.0, 0.0), (400.0, 300.0), (0.0, 1000.0)) == (600.0, 50.0)
    assert dragged_window_level((100.0, 50.0), (0.0, -150.0), (400.0, 300.0), (0.0, 1000.0)) == (100.0, -450.0)
    assert dragged_window_level((100.0, 50.0), (-400.0, 0.0), (400.0, 300.0), (0.0, 1000.0))[0] == 1.0  # never <= 0


def test_draw_double_click_is_a_press_on_the_previous_one() -> None:
    pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
    from SCIsegLib.review.draw import is_double_click

    assert is_double_click((10.0, 10.0), (12.0, 13.0))
    assert not is_double_click((10.0, 10.0), (30.0, 10.0))  # too far: another point
    assert not is_double_click(None, (0.0, 0.0))


def test_a_strokes_counts_table_and_undo_cost_little_cpu_on_a_full_scan(tmp_path) -> None:
    """errsm_21 (384 x 215 x 52 voxels) in the app without a browser: the work after a stroke (labels, counts, draft,
    lesion table) and an undo with its counts, in CPU seconds of this process (wall time on a shared 2-core machine
    measures the other processes too). Targets: 0.5 s from a stroke to counts and table, 0.3 s for an undo."""
    pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
    import ctypes.util
    import os

    if ctypes.util.find_library("EGL") is None:
        pytest.skip("EGL is not installed (apt-get install libegl1): the app's views need offscreen rendering")
    shared_file("sct_2014_errsm/errsm_21/t2.nii.gz")
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import asyncio
    import time

    from trame.app import get_server

    from review_data import make_full_fov_bids, paint_lesion_voxels
    from SCIsegLib.review.app import ReviewApp
    from SCIsegLib.review.lesion_table import lesion_rows

    cases = make_full_fov_bids(tmp_path / "bids", SHARED_DATA)
    app = ReviewApp(tmp_path / "bids", None, "sciseg-demo", server=get_server("review_tools_speed", client_type="vue3"))
    app._open(cases[2], None)
    paint_lesion_voxels(app, 40, skip=2000)
    started = time.process_time()
    labels = app.session.labels()
    counts = app.session.voxel_counts(labels)
    app.save_draft(labels)
    rows, _ = lesion_rows(app.session.checked_labels("the segmentation to measure"), app.session.reference_image())
    after_stroke = time.process_time() - started
    assert counts["lesion"] == sum(round(row["volume_mm3"] / np.prod(app.session.case.volume_node.GetSpacing())) for row in rows)
    from trame_server.utils.asynchronous import get_event_loop

    async def settled() -> None:  # the event loop runs until they are done (the timeout is a safety net)
        deadline = time.monotonic() + 60
        while not app.measures_idle and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    get_event_loop().run_until_complete(settled())  # the stroke's own counts, draft and table reach the state
    assert app.state.counts == counts and len(app.state.lesions) == len(rows)
    started = time.process_time()
    app.undo()  # the undo; its counts, draft and lesion table follow in the next turns of the event loop
    after_undo = time.process_time() - started
    get_event_loop().run_until_complete(settled())
    assert app.state.counts["lesion"] == counts["lesion"] - 40
    print(f"after a stroke {after_stroke:.3f} s CPU (labels, counts, draft, lesion table); undo {after_undo:.3f} s CPU")
    assert after_stroke < 0.5 and after_undo < 0.3
