"""``sciseg review``'s tools and input as a Slicer user expects them, in headless Chromium at 1600x1000.

One ``sciseg review`` on three full field-of-view scans (``review_data.make_full_fov_bids``: SCT's errsm_11,
errsm_18 with 24 small lesions, errsm_21), one rater, in file order: Slicer's slice keys (``b`` steps a slice, not
a case), Ctrl+Z / Ctrl+Y, brush keys and Shift+wheel shown on the slider, Draw closed by clicks, double-click,
right-click and Enter, the threshold limited to the cord and asked for above a few lesions, masking (lesion only
inside the cord, paint only in an intensity range), the lesion table (current lesion, totals, Export within reach
of a long table), the shortcut card, messages (no stale "saved" above an error, the end of the queue), and the time
from a stroke to its counts and lesion table on errsm_21. Each looks at view pixels or files written, not only at
the page's text.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, shared_file
from review_data import browser_requirement_missing, make_full_fov_bids
from SCIsegLib.review.keys import scaled_brush
from test_review_browser import (
    TOKEN,
    _counts,
    _lesion_pixels,
    _start_server,
    _stop,
    _view_pixels,
    _wait_counts_change,
    _wait_pixels,
)

pytestmark = pytest.mark.skipif(browser_requirement_missing() is not None, reason=str(browser_requirement_missing()))
VIEWPORT = {"width": 1600, "height": 1000}
MANY_LESIONS = 24


def _many_lesions(cord_path: Path, lesion_path: Path, count: int) -> None:
    """``count`` 3x3x3 voxel lesions spread along the cord (each kept inside it), written over ``lesion_path``."""
    cord_image = sitk.ReadImage(str(cord_path))
    cord = sitk.GetArrayFromImage(cord_image) > 0
    lesion = np.zeros(cord.shape, np.uint8)
    voxels = np.argwhere(cord)
    order = np.argsort(voxels[:, 1] * cord.shape[2] + voxels[:, 2], kind="stable")  # along the cord, head to feet
    for index in np.linspace(0, len(voxels) - 1, count + 2)[1:-1].astype(int):
        z, y, x = voxels[order][index]
        box = (slice(z - 1, z + 2), slice(y - 1, y + 2), slice(x - 1, x + 2))
        lesion[box] = cord[box]
    image = sitk.GetImageFromArray(lesion)
    image.CopyInformation(cord_image)
    sitk.WriteImage(image, str(lesion_path), useCompression=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    shared_file("sct_2014_errsm/errsm_21/t2.nii.gz")
    root = tmp_path_factory.mktemp("review_tools") / "bids"
    cases = make_full_fov_bids(root, SHARED_DATA)
    predictions = root / "derivatives" / "sciseg" / "sub-02" / "anat"
    _many_lesions(predictions / "sub-02_T2w_sc_seg.nii.gz", predictions / "sub-02_T2w_lesion_seg.nii.gz", MANY_LESIONS)
    return {"root": root, "cases": cases}


@pytest.fixture(scope="module")
def page(dataset):
    from playwright.sync_api import sync_playwright

    process, url = _start_server(dataset["root"], None, TOKEN, dataset["root"].parent / "server.log")
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = chromium.new_context(viewport=VIEWPORT).new_page()
            page.goto(f"{url}?secret={TOKEN}", timeout=90_000)
            page.wait_for_selector(".case-item", timeout=90_000)
            yield page
            chromium.close()
    finally:
        _stop(process)


# ------------------------------------------------------------------------------------------------ helpers
def _open(page, case_id: str) -> None:
    """Open a case from the list (strokes left unexported by an earlier test are discarded when asked)."""
    page.click(f".case-item[data-case='{case_id}']")
    page.wait_for_function(f"document.querySelector('#pending') || document.querySelector('#case-title').textContent"
                           f".includes('{case_id}')", timeout=90_000)
    if page.locator("#pending").count():
        page.click("#pending-discard")
    page.wait_for_function(
        f"document.querySelector('#case-title').textContent.includes('{case_id}')"
        " && document.querySelector('#message').textContent.startsWith('opened')", timeout=90_000)
    page.wait_for_selector(".lesion-row", timeout=60_000)


def _view_centre(page, index: int = 0) -> tuple[float, float]:
    box = page.locator(".remote-controlled-area").nth(index).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def _keys_to_page(page) -> None:
    """Shortcuts are ignored in text fields: leave whatever the last click focused."""
    page.evaluate("document.activeElement && document.activeElement.blur()")


def _point_at(page, index: int) -> None:
    """Move the pointer into view ``index`` until the app knows it is there (the slice keys step that view)."""
    page.mouse.move(*_view_centre(page, (index + 1) % 3), steps=3)
    page.wait_for_function("window.trame.state.get('pointer_view')")
    other = page.evaluate("window.trame.state.get('pointer_view')")
    page.mouse.move(*_view_centre(page, index), steps=5)
    page.wait_for_function("(other) => window.trame.state.get('pointer_view') !== other", arg=other, timeout=10_000)


def _tool(page, name: str) -> None:
    page.click(f"#effect-{name}")
    page.wait_for_function(f"document.querySelector('#active-effect').textContent.includes('{name}')")
    _keys_to_page(page)


def _state(page, name: str):
    return page.evaluate(f"window.trame.state.get('{name}')")


def _wait_state(page, name: str, predicate: str, timeout_ms: int = 20_000) -> None:
    page.wait_for_function(f"(() => {{ const value = window.trame.state.get('{name}'); return {predicate}; }})()",
                           timeout=timeout_ms)


def _lesion_in_row(page, index: int = 0) -> int:
    """Lesion-red pixels of view ``index``, the pointer moved out of the views first (a brush outline is red too)."""
    _pointer_away(page)
    return int(_lesion_pixels(_view_pixels(page, index)).sum())


def _about(pixels: int) -> int:
    """A pixel count give or take the views' image compression (an interaction's images are sent at lower quality)."""
    return pixels + max(15, pixels // 10)


def _pointer_away(page) -> None:
    page.mouse.move(20, VIEWPORT["height"] - 20)


def _stroke(page, x0: float, y0: float, x1: float, y1: float, steps: int = 10) -> None:
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=steps)
    page.mouse.up()


def _centre_on_first_lesion(page) -> None:
    page.locator(".lesion-row").first.click()
    page.wait_for_function("document.querySelector('#message').textContent.includes('centred on lesion 1')")
    _keys_to_page(page)


# ------------------------------------------------------------------------------------------------ tests
def test_slice_keys_are_slicers_and_b_stays_on_the_case(page, dataset) -> None:
    case = dataset["cases"][0]
    _open(page, case)
    _centre_on_first_lesion(page)
    _point_at(page, 1)  # the slice keys step the view under the pointer (the sagittal view here)
    before_other, before = _view_pixels(page, 0), _wait_pixels(page, lambda rgb: _lesion_pixels(rgb).sum() > 5, index=1)
    page.keyboard.press("b")
    moved = _wait_pixels(page, lambda rgb: np.abs(rgb - before).mean() > 0.2, index=1)
    assert page.inner_text("#case-title") == case  # "b" is "previous slice" in Slicer, not "previous case"
    assert np.abs(moved - before).mean() > 0.2, "b did not step the slice under the pointer"
    page.keyboard.press("f")
    back = _wait_pixels(page, lambda rgb: np.abs(rgb - before).mean() < 0.02, index=1)
    assert np.abs(back - before).mean() < 0.02, "f did not step back to the same slice"
    for forward, backward in (("ArrowRight", "ArrowLeft"), ("ArrowUp", "ArrowDown"), ("PageUp", "PageDown")):
        page.keyboard.press(forward)
        _wait_pixels(page, lambda rgb: np.abs(rgb - before).mean() > 0.2, index=1)
        page.keyboard.press(backward)
        assert np.abs(_wait_pixels(page, lambda rgb: np.abs(rgb - before).mean() < 0.02, index=1) - before).mean() < 0.02
    assert np.abs(_view_pixels(page, 0) - before_other).mean() < 1.0, "the other view moved too"
    assert page.evaluate("window.scrollY") == 0  # the browser did not scroll on arrows and PageDown


def test_left_drag_with_no_tool_sets_window_level_and_the_sliders_follow(page) -> None:
    _keys_to_page(page)
    page.keyboard.press("Escape")  # no tool
    page.wait_for_function("document.querySelector('#active-effect').textContent.includes('none')")
    _pointer_away(page)
    before, window, level = _view_pixels(page, 1), _state(page, "wl_window"), _state(page, "wl_level")
    x, y = _view_centre(page, 1)
    _stroke(page, x, y, x + 80, y + 60)  # right: wider window; down: lower level (brighter)
    _wait_state(page, "wl_window", f"value > {window}")
    _wait_state(page, "wl_level", f"value < {level}")
    _pointer_away(page)
    brighter = _wait_pixels(page, lambda rgb: rgb.mean() > before.mean() + 5, index=1)
    assert brighter.mean() > before.mean() + 5
    for name in ("window", "level"):  # the sliders show the values the view uses
        shown = float(page.locator(f".v-input:has(input#{name}) [role='slider']").get_attribute("aria-valuenow"))
        assert shown == pytest.approx(_state(page, f"wl_{name}"), abs=1.0)
    page.evaluate(f"window.trame.state.set('wl_window', {window}); window.trame.state.set('wl_level', {level})")
    _wait_pixels(page, lambda rgb: abs(rgb.mean() - before.mean()) < 1, index=1)


def test_ctrl_z_and_ctrl_y_undo_and_redo_a_stroke(page) -> None:
    _centre_on_first_lesion(page)
    page.click("#segment-lesion")
    _tool(page, "paint")
    x, y = _view_centre(page, 0)
    before, pixels_before = _counts(page), _lesion_in_row(page)
    _stroke(page, x - 40, y, x + 40, y)
    painted = _wait_counts_change(page, before, settle_s=1.0)
    assert painted[1] > before[1] + 10
    assert _lesion_in_row(page) > _about(pixels_before)
    page.keyboard.press("Control+z")
    assert _wait_counts_change(page, painted, settle_s=0.5) == before
    _pointer_away(page)
    undone = _wait_pixels(page, lambda rgb: _lesion_pixels(rgb).sum() <= _about(pixels_before))
    assert _lesion_pixels(undone).sum() <= _about(pixels_before)
    page.keyboard.press("Control+y")
    assert _wait_counts_change(page, before, settle_s=0.5) == painted
    page.keyboard.press("Control+z")
    assert _wait_counts_change(page, painted, settle_s=0.5) == before


def _brush(page) -> float:
    return float(_state(page, "brush_mm"))


def _slider_value(page) -> float:
    return float(page.locator(".v-input:has(input#brush-size) [role='slider']").get_attribute("aria-valuenow"))


def test_brush_keys_and_shift_wheel_move_the_slider_and_switching_segment_keeps_it(page) -> None:
    _tool(page, "paint")
    x, y = _view_centre(page, 0)
    page.mouse.move(x, y)
    start = _brush(page)
    page.keyboard.down("Shift")
    page.mouse.wheel(0, -120)  # Shift+wheel in the view: Slicer's brush size
    page.keyboard.up("Shift")
    _wait_state(page, "brush_mm", f"value > {start}")
    wheel = _brush(page)
    assert _slider_value(page) == pytest.approx(wheel, abs=0.05)  # the slider shows the size the view paints with
    page.keyboard.press("+")
    _wait_state(page, "brush_mm", f"value > {wheel}")
    assert _brush(page) == pytest.approx(round(wheel * 1.2, 1), abs=0.06) and _slider_value(page) == pytest.approx(_brush(page))
    large = _brush(page)
    for _ in range(6):
        page.keyboard.press("+")
        large = scaled_brush(large, larger=True)
    _wait_state(page, "brush_mm", f"value === {large}")
    page.keyboard.press("1")  # cord segment, then back to lesion: the brush stays as it is
    page.keyboard.press("2")
    _wait_state(page, "segment", "value === 'lesion'")
    assert _brush(page) == large
    before, pixels_before = _counts(page), _lesion_in_row(page)
    _stroke(page, x - 10, y, x + 10, y, steps=4)
    large_stroke = _wait_counts_change(page, before, settle_s=1.0)
    large_pixels = _lesion_in_row(page) - pixels_before
    page.keyboard.press("Control+z")
    _wait_counts_change(page, large_stroke, settle_s=0.5)
    _pointer_away(page)
    _wait_pixels(page, lambda rgb: _lesion_pixels(rgb).sum() <= _about(pixels_before))
    small = large
    for _ in range(8):
        page.keyboard.press("-")
        small = scaled_brush(small, larger=False)
    _wait_state(page, "brush_mm", f"value === {small}")
    assert _slider_value(page) == pytest.approx(_brush(page))
    _stroke(page, x - 10, y, x + 10, y, steps=4)
    small_stroke = _wait_counts_change(page, before, settle_s=1.0)
    small_pixels = _lesion_in_row(page) - pixels_before
    assert large_stroke[1] - before[1] > 3 * (small_stroke[1] - before[1]) > 0  # the stroke painted with what it shows
    assert large_pixels > 2 * small_pixels > 0, (large_pixels, small_pixels)  # and the view shows it
    page.keyboard.press("Control+z")
    _wait_counts_change(page, small_stroke, settle_s=0.5)


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _export(page, dataset: dict, subject: str) -> np.ndarray:
    """Export the open case (as rater "tools") and return the (z, y, x) label map the version wrote."""
    store = dataset["root"] / "derivatives" / "labels" / ".sciseg_versions" / subject / "anat" / f"{subject}_T2w"
    number = len(list(store.glob("v[0-9][0-9][0-9]"))) + 1 if store.exists() else 1
    page.fill("#rater", "tools")
    page.click("#export")
    page.wait_for_function(f"document.querySelector('#message').textContent.includes('saved version v{number:03d} ')",
                           timeout=60_000)
    _keys_to_page(page)
    return _read(store / f"v{number:03d}" / f"{subject}_T2w_dseg.nii.gz")


def _prediction(dataset: dict, subject: str, kind: str) -> np.ndarray:
    return _read(dataset["root"] / "derivatives" / "sciseg" / subject / "anat" / f"{subject}_T2w_{kind}_seg.nii.gz") > 0


def _click_outline(page, points: list[tuple[float, float]]) -> None:
    for x, y in points:
        page.mouse.click(x, y)


def test_draw_fills_on_double_click_right_click_and_enter(page) -> None:
    _centre_on_first_lesion(page)
    page.click("#segment-lesion")
    _tool(page, "draw")
    x, y = _view_centre(page, 0)
    square = [(x - 20, y - 20), (x + 20, y - 20), (x + 20, y + 20)]
    baseline = _lesion_in_row(page)
    for finish in ("double-click", "right-click", "Enter", "drag then a"):
        before = _counts(page)
        if finish == "drag then a":
            _stroke(page, x - 20, y - 20, x + 20, y + 20, steps=8)  # Slicer: a drag adds points, its release fills nothing
            page.mouse.click(x + 20, y - 20)
            page.keyboard.press("a")
        else:
            _click_outline(page, square)
            if finish == "double-click":  # a rater's pace: an instant double-click's events do not all reach the view
                page.mouse.dblclick(x - 20, y + 20, delay=60)
            elif finish == "right-click":
                page.mouse.click(x - 20, y + 20, button="right")
            else:
                page.mouse.click(x - 20, y + 20)
                page.keyboard.press("Enter")
        filled = _wait_counts_change(page, before, settle_s=1.0)
        assert filled[1] > before[1] + 50, (finish, before, filled)
        _pointer_away(page)
        pixels = _lesion_pixels(_wait_pixels(page, lambda rgb: _lesion_pixels(rgb).sum() > baseline + 200))
        rows, columns = np.nonzero(pixels)
        box = page.locator(".remote-controlled-area").nth(0).bounding_box()
        inside = (np.abs(columns + box["x"] - x) <= 22) & (np.abs(rows + box["y"] - y) <= 22)
        assert pixels.sum() - baseline > 200 and inside.sum() > 0.8 * (pixels.sum() - baseline), (
            finish, int(pixels.sum()), baseline, int(inside.sum()))
        page.keyboard.press("Control+z")
        assert _wait_counts_change(page, filled, settle_s=0.5) == before
        _wait_pixels(page, lambda rgb: _lesion_pixels(rgb).sum() <= _about(baseline))


def test_threshold_adds_inside_the_cord_only_and_asks_first(page, dataset) -> None:
    before = _counts(page)
    low, high = _state(page, "level_min"), _state(page, "level_max")
    page.evaluate(f"window.trame.state.set('threshold', [{low}, {high}])")  # the whole intensity range
    page.click("#apply-threshold")
    page.wait_for_selector("#threshold-pending", timeout=20_000)
    assert "Apply it anyway?" in page.inner_text("#threshold-pending") and _counts(page) == before  # asked, not applied
    page.click("#threshold-cancel")
    page.wait_for_selector("#threshold-pending", state="detached")
    page.click("#apply-threshold")
    page.click("#threshold-confirm")
    after = _wait_counts_change(page, before, settle_s=1.0)
    assert after == (0, before[0] + before[1])  # the whole cord became lesion, nothing outside it
    labels = _export(page, dataset, "sub-01")
    assert np.array_equal(labels == 2, _prediction(dataset, "sub-01", "sc") | _prediction(dataset, "sub-01", "lesion"))
    assert _lesion_pixels(_view_pixels(page)).sum() > 50
    page.keyboard.press("Control+z")
    assert _wait_counts_change(page, after, settle_s=0.5) == before


def test_masking_keeps_paint_inside_the_cord_and_the_intensity_range(page, dataset) -> None:
    _centre_on_first_lesion(page)
    image = _read(dataset["root"] / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    cord = _prediction(dataset, "sub-01", "sc")
    page.click("#lesion-in-cord")  # Segment Editor's editable area: inside the segments (cord only + lesion)
    _wait_state(page, "lesion_in_cord", "value === true")
    page.click("#segment-lesion")
    _tool(page, "paint")
    page.evaluate("window.trame.state.set('brush_mm', 12)")
    _wait_state(page, "brush_mm", "value === 12")
    x, y = _view_centre(page, 0)
    before = _counts(page)
    _stroke(page, x - 60, y, x + 60, y)  # far wider than the cord
    inside = _wait_counts_change(page, before, settle_s=1.0)
    assert inside[0] + inside[1] == before[0] + before[1]  # "lesion only inside the cord": the cord did not grow
    labels = _export(page, dataset, "sub-01")
    assert not np.any((labels == 2) & ~cord) and int((labels == 2).sum()) == inside[1]
    page.keyboard.press("Control+z")
    _wait_counts_change(page, inside, settle_s=0.5)
    in_cord = image[cord]
    low, high = float(np.percentile(in_cord, 50)), float(in_cord.max())
    page.evaluate(f"window.trame.state.set('threshold', [{low}, {high}])")
    page.keyboard.press("i")  # Slicer's key: paint only within the intensity range
    _wait_state(page, "intensity_mask", "value === true")
    _stroke(page, x - 60, y, x + 60, y)
    ranged = _wait_counts_change(page, before, settle_s=1.0)
    labels = _export(page, dataset, "sub-01")
    added = (labels == 2) & ~_prediction(dataset, "sub-01", "lesion")
    assert added.sum() > 0 and np.all((image[added] >= low) & (image[added] <= high)) and not np.any(added & ~cord)
    assert ranged[1] - before[1] < inside[1] - before[1]  # the range left some of the stroke's cord voxels out
    page.keyboard.press("i")
    _wait_state(page, "intensity_mask", "value === false")
    page.click("#lesion-in-cord")
    _wait_state(page, "lesion_in_cord", "value === false")
    _keys_to_page(page)
    page.keyboard.press("Control+z")
    _wait_counts_change(page, ranged, settle_s=0.5)
    page.evaluate("window.trame.state.set('brush_mm', 3)")


def test_lesion_table_highlights_totals_and_export_stays_in_reach(page, dataset) -> None:
    _open(page, dataset["cases"][1])
    page.wait_for_function(f"document.querySelectorAll('.lesion-row').length === {MANY_LESIONS}", timeout=60_000)
    rows = _state(page, "lesions")
    total = sum(row["volume_mm3"] for row in rows)
    assert page.inner_text("#lesion-totals") == f"{MANY_LESIONS} lesions, {total:.1f} mm³"
    export = page.locator("#export").bounding_box()
    assert export["y"] + export["height"] <= VIEWPORT["height"]  # a long table does not push Export below the fold
    page.locator(".lesion-row").nth(4).click()
    page.wait_for_function("document.querySelector('#message').textContent.includes('centred on lesion 5')")
    row = page.locator(".lesion-row").nth(4)
    row.wait_for(state="visible")
    page.wait_for_selector(".lesion-row.current-lesion")
    assert page.locator(".current-lesion").count() == 1 and "5" in page.locator(".current-lesion td").first.inner_text()
    from PIL import Image
    import io

    colour = np.asarray(Image.open(io.BytesIO(row.screenshot())).convert("RGB")).reshape(-1, 3).mean(axis=0)
    plain = np.asarray(Image.open(io.BytesIO(page.locator(".lesion-row").nth(6).screenshot())).convert("RGB")).reshape(-1, 3).mean(axis=0)
    # the current row is tinted yellow (red well above blue) against an untinted row, in the dark or the light theme
    assert colour[0] - colour[2] > plain[0] - plain[2] + 40, (colour, plain)
    page.screenshot(path=str(dataset["root"].parent / "lesion_table.png"))
    labels = _export(page, dataset, "sub-02")  # the button in reach works: the version is on disk
    assert int((labels == 2).sum()) == int(_prediction(dataset, "sub-02", "lesion").sum())


def test_shortcut_card_opens_with_question_mark(page, dataset) -> None:
    _keys_to_page(page)
    page.keyboard.press("?")
    card = page.locator("#shortcuts-card")
    card.wait_for(state="visible", timeout=20_000)
    text = card.inner_text()
    for words in ("Ctrl+Z", "PageUp", "Shift+wheel", "double-click", "intensity range"):
        assert words in text, words
    from PIL import Image
    import io

    pixels = np.asarray(Image.open(io.BytesIO(card.screenshot())).convert("L"))
    assert (pixels < 100).mean() > 0.01  # text is drawn
    page.screenshot(path=str(dataset["root"].parent / "shortcuts.png"))
    page.click("#close-shortcuts")
    card.wait_for(state="hidden")


def test_an_error_replaces_the_saved_message_and_the_end_of_the_queue_is_told(page, dataset) -> None:
    _export(page, dataset, "sub-02")
    assert page.inner_text("#message").startswith("saved version")
    page.evaluate("window.trame.trigger('open_case', ['../../etc/passwd'])")
    page.wait_for_function("document.querySelector('#error').textContent.includes('is not a case id')")
    assert page.inner_text("#message") == ""  # no stale "saved" above the error
    _open(page, dataset["cases"][2])
    page.fill("#rater", "tools")
    page.click("#export-next")  # sub-01 and sub-02 have versions: sub-03 is the last uncorrected case
    page.wait_for_function("document.querySelector('#message').textContent.includes('end of the queue')", timeout=60_000)
    assert "saved version v001 of sub-03" in page.inner_text("#message")
    version = dataset["root"] / "derivatives/labels/.sciseg_versions/sub-03/anat/sub-03_T2w/v001/sub-03_T2w_dseg.nii.gz"
    assert version.is_file() and page.inner_text("#case-title") == dataset["cases"][2]


STROKE_TIMES_JS = """() => { window.strokeTimes = {};
  const counts = document.querySelector('#voxel-counts'), table = document.querySelector('#lesion-table');
  const seen = {counts: counts.textContent, table: table.textContent};
  window.addEventListener('pointerup', () => { window.strokeTimes.up = performance.now(); }, {capture: true, once: true});
  const watch = (element, name) => new MutationObserver((_, observer) => {
    if (element.textContent !== seen[name] && window.strokeTimes.up !== undefined) {
      window.strokeTimes[name] = performance.now() - window.strokeTimes.up; observer.disconnect(); } })
    .observe(element, {subtree: true, childList: true, characterData: true});
  watch(counts, 'counts'); watch(table, 'table'); }"""


def test_counts_and_lesion_table_follow_a_stroke_on_a_full_scan_quickly(page, dataset) -> None:
    """errsm_21 (384 x 215 x 52 voxels): from the mouse's release to the new counts and lesion table, in the page.

    The targets (0.5 s) are for a quiet machine; the server's own share is held to them in CPU seconds by
    ``test_review_tools``. Here, on a 2-core machine shared with other test runs (load 10-12), the wall time is
    mostly the views' software rendering queued before the counts; the assertion is a safety net, the figures are
    printed (``-s``)."""
    _open(page, dataset["cases"][2])
    _centre_on_first_lesion(page)
    page.click("#segment-lesion")
    _tool(page, "paint")
    x, y = _view_centre(page, 1)  # the sagittal view: the cord runs through it
    counts_s, table_s = [], []
    for step in range(5):
        before = _counts(page)
        page.evaluate(STROKE_TIMES_JS)
        _stroke(page, x - 6, y - 30 + 12 * step, x + 6, y - 30 + 12 * step, steps=4)
        page.wait_for_function("window.strokeTimes.counts !== undefined && window.strokeTimes.table !== undefined",
                               timeout=30_000)
        times = page.evaluate("window.strokeTimes")
        counts_s.append(times["counts"] / 1000)
        table_s.append(times["table"] / 1000)
        assert _counts(page) != before
    undo_s = []
    for _ in range(3):
        before = _counts(page)
        page.evaluate(STROKE_TIMES_JS.replace("pointerup", "keydown"))
        page.keyboard.press("Control+z")
        page.wait_for_function("window.strokeTimes.counts !== undefined", timeout=30_000)
        undo_s.append(page.evaluate("window.strokeTimes.counts") / 1000)
        assert _counts(page) != before
    print(f"stroke -> counts p50 {np.median(counts_s):.3f} s, max {max(counts_s):.3f} s; stroke -> lesion table p50 "
          f"{np.median(table_s):.3f} s, max {max(table_s):.3f} s; undo -> counts p50 {np.median(undo_s):.3f} s")
    assert np.median(counts_s) < 10.0 and np.median(table_s) < 10.0 and np.median(undo_s) < 10.0
