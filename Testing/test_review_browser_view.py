"""The review app's views in a real browser: what the rater sees, checked on the views' pixels.

One ``sciseg review`` and one rater (headless Chromium, Playwright) on the real scans of ``review_data``, in file
order: the layout (a large sagittal view first, view names, orientation letters, slice numbers), no control that
does nothing ("Show in 3D"), the overlay's colours unchanged by undo and redo, per-segment overlay control (cord
as an outline by default, opacity, hide), one view maximised, the crosshair and the intensity under the pointer,
every icon button and slider labelled, and the dark theme.
"""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA, shared_file
from review_data import CASES, browser_requirement_missing, make_review_bids
from test_review_browser import TOKEN, _counts, _lesion_pixels, _start_server, _stop, _wait_counts_change

pytestmark = pytest.mark.skipif(browser_requirement_missing() is not None, reason=str(browser_requirement_missing()))
SUB01 = CASES["sub-01"]
VIEWPORT = {"width": 1280, "height": 640}
SHOTS = Path(__file__).resolve().parent / "screenshots"  # kept for a person to look at (ignored by git)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    shared_file("sct_testing_data/t2/t2.nii.gz")
    return make_review_bids(tmp_path_factory.mktemp("review_view") / "bids", SHARED_DATA)


@pytest.fixture(scope="module")
def front(dataset):
    process, url = _start_server(dataset["root"], dataset["queue"], TOKEN, dataset["root"].parent / "server.log")
    yield process, url, dataset["root"]
    _stop(process)


@pytest.fixture(scope="module")
def page(front):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        context = chromium.new_context(viewport=VIEWPORT)
        page = context.new_page()
        context.dataset_root = front[2]
        page.goto(f"{front[1]}?secret={TOKEN}", timeout=90_000)
        page.wait_for_selector(".case-item", timeout=90_000)
        page.click(f".case-item[data-case='{SUB01}']")
        page.wait_for_function("document.querySelector('#voxel-counts').textContent.includes('lesion 27 ')", timeout=60_000)
        page.wait_for_selector(".lesion-row", timeout=60_000)
        page.locator(".lesion-row").first.click()
        page.wait_for_function("document.querySelector('#message').textContent.includes('centred on lesion 1')")
        yield page
        context.close()
        chromium.close()


def _view(page, name: str):
    """The remote-rendered image of the view named ``name`` (its name label and it share a parent)."""
    return page.locator(f"div:has(> div > .sciseg-view-name[data-view='{name}']) > .remote-controlled-area")


def _pixels(page, name: str) -> np.ndarray:
    from PIL import Image

    png = _view(page, name).screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _settled(page, name: str, timeout_s: float = 30) -> np.ndarray:
    """The view's pixels once two screenshots 0.4 s apart agree (the remote image stopped changing)."""
    deadline = time.monotonic() + timeout_s
    previous = _pixels(page, name)
    while True:
        time.sleep(0.4)
        now = _pixels(page, name)
        if now.shape == previous.shape and np.abs(now - previous).max() <= 3:
            return now
        if time.monotonic() > deadline:
            raise AssertionError(f"the {name} view kept changing")
        previous = now


def _wait(page, name: str, predicate, timeout_s: float = 30) -> np.ndarray:
    deadline = time.monotonic() + timeout_s
    rgb = _pixels(page, name)
    while not predicate(rgb):
        if time.monotonic() > deadline:
            raise AssertionError(f"the {name} view never showed what was expected")
        time.sleep(0.2)
        rgb = _pixels(page, name)
    return rgb


def _shot(page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"review_{name}.png"))


def _blur(page) -> None:
    page.evaluate("document.activeElement && document.activeElement.blur()")  # shortcuts are ignored in text inputs


# ------------------------------------------------------------------------------------------------ tests
def test_no_show_in_3d_control_that_does_nothing(page) -> None:
    """trame-slicer's slice gutter offers "Show in 3D", which toggles slices in a 3D view the layout lacks."""
    assert page.locator("text=Show in 3D").count() == 0
    assert page.locator(".mdi-video-3d").count() == 0


def test_undo_and_redo_keep_the_overlay_colours(page) -> None:
    """After a stroke and its undo the view is the view before the stroke (colours included); redo shows it again."""
    page.click("#segment-lesion")
    page.click("#effect-paint")
    page.wait_for_function("document.querySelector('#active-effect').textContent.includes('paint')")
    before = _settled(page, "axial")
    counts = _counts(page)
    box = _view(page, "axial").bounding_box()
    x0, y0 = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x0 - 15, y0 + 8)
    page.mouse.down()
    page.mouse.move(x0 + 15, y0 + 8, steps=8)
    page.mouse.up()
    painted = _wait_counts_change(page, counts)
    after_stroke = _settled(page, "axial")
    assert _lesion_pixels(after_stroke).sum() > _lesion_pixels(before).sum()
    page.click("#effect-none")
    page.click("#undo")
    _wait_counts_change(page, painted)
    undone = _settled(page, "axial")
    differing = (np.abs(undone - before).max(axis=2) > 24).mean()
    assert differing < 0.002, f"{differing:.2%} of the view changed colour after undo"
    page.click("#redo")
    _wait_counts_change(page, counts)
    redone = _settled(page, "axial")
    differing = (np.abs(redone - after_stroke).max(axis=2) > 24).mean()
    assert differing < 0.002, f"{differing:.2%} of the view differs from the stroke's after redo"
    page.click("#undo")
    _wait_counts_change(page, painted)


def _tinted(rgb: np.ndarray) -> np.ndarray:
    """Pixels of a coloured overlay (cord's pale yellow, lesion's red, crosshair): channels far apart; grey is not."""
    return (rgb.max(axis=2) - rgb.min(axis=2)) > 25


def _cord(rgb: np.ndarray) -> np.ndarray:
    """Pixels tinted by the cord's pale yellow (255, 244, 209): not grey, blue well above the crosshair's, not red;
    the view's edges (40 px: its name, buttons, letters, slice number and slider, drawn over it) are left out."""
    cord = _tinted(rgb) & (rgb[..., 2] > 120) & (rgb[..., 1] > 0.75 * rgb[..., 0])
    cord[:40], cord[-40:], cord[:, :40], cord[:, -40:] = False, False, False, False
    return cord


def test_layout_large_sagittal_view_names_letters_and_slice_numbers(page) -> None:
    boxes = {name: _view(page, name).bounding_box() for name in ("axial", "sagittal", "coronal")}
    sagittal = boxes["sagittal"]["width"] * boxes["sagittal"]["height"]
    assert all(sagittal > 2.5 * boxes[name]["width"] * boxes[name]["height"] for name in ("axial", "coronal"))
    assert boxes["axial"]["x"] < boxes["sagittal"]["x"] and boxes["axial"]["y"] < boxes["coronal"]["y"]
    letters = {name: {edge: page.inner_text(f".sciseg-letter-{edge}[data-view='{name}']") for edge in ("left", "right", "top", "bottom")}
               for name in ("axial", "sagittal", "coronal")}
    assert letters["axial"] == {"left": "R", "right": "L", "top": "A", "bottom": "P"}  # radiological, as in Slicer
    assert letters["sagittal"] == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    assert letters["coronal"] == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    # centred on lesion 1 (voxel centre of the 3x3x3 cube): the slice numbers are that voxel's, from 1
    import SimpleITK as sitk

    lesion = sitk.ReadImage(str(page.context.dataset_root / "derivatives/sciseg/sub-01/anat/sub-01_T2w_lesion_seg.nii.gz"))
    k, j, i = (int(round(v.mean())) for v in np.nonzero(sitk.GetArrayFromImage(lesion)))
    size = lesion.GetSize()
    texts = {name: page.inner_text(f".sciseg-slice[data-view='{name}']") for name in ("axial", "sagittal", "coronal")}
    expected = {f"slice {i + 1} / {size[0]}", f"slice {j + 1} / {size[1]}", f"slice {k + 1} / {size[2]}"}
    assert set(texts.values()) == expected, texts
    for name in ("axial", "sagittal", "coronal"):
        rgb = _pixels(page, name)
        assert rgb[_tinted(rgb)].size > 0 and rgb[~_tinted(rgb)].std() > 10, f"the {name} view shows no image or no overlay"
    _shot(page, "layout")


def test_one_view_maximised_then_restored(page) -> None:
    small = _view(page, "axial").bounding_box()
    page.click(".sciseg-maximise[data-view='axial']")
    page.wait_for_function("document.querySelectorAll('.sciseg-view-name').length === 1", timeout=30_000)
    large = _view(page, "axial").bounding_box()
    assert large["width"] * large["height"] > 4 * small["width"] * small["height"]
    rgb = _wait(page, "axial", lambda rgb: _lesion_pixels(rgb).sum() > 4 * 20 and rgb.shape[1] > 2 * small["width"])
    assert rgb[~_tinted(rgb)].std() > 10  # the image fills the large view
    _shot(page, "maximised")
    page.click(".sciseg-maximise[data-view='axial']")
    page.wait_for_function("document.querySelectorAll('.sciseg-view-name').length === 3", timeout=30_000)
    _settled(page, "sagittal")


def test_cord_outline_by_default_then_fill_opacity_and_hide(page) -> None:
    """The cord's inside shows the image's own grey (outline only); a fill opacity tints it; hiding removes it."""
    rgb = _settled(page, "sagittal")
    outline = _cord(rgb)
    assert outline.sum() > 50, "no cord outline"
    rows = np.nonzero(outline.any(axis=1))[0]
    row = rows[len(rows) // 4]  # above the lesion and the crosshair's horizontal line
    left, right = np.nonzero(outline[row])[0][[0, -1]]
    assert right - left > 6
    inside = rgb[row, left + 3 : right - 2]
    assert not _cord(inside[None]).any(), "the cord's inside is tinted: its signal is hidden"
    page.evaluate("window.trame.state.set('overlay', {...window.trame.state.get('overlay'),"
                  " spinal_cord: {...window.trame.state.get('overlay').spinal_cord, fill: 0.6}})")
    filled = _wait(page, "sagittal", lambda rgb: _cord(rgb).sum() > 3 * outline.sum())
    _shot(page, "cord_filled")
    page.click("#overlay-visible-spinal_cord")
    page.click("#lesion-visible")
    _wait(page, "sagittal", lambda rgb: _cord(rgb).sum() < 0.02 * _cord(filled).sum() and _lesion_pixels(rgb).sum() == 0)
    tint = filled[row, left + 3 : right - 2]
    assert (tint[:, 0] - tint[:, 2]).mean() > 15, "a 0.6 fill does not tint the cord's inside"  # 0.6 x (255 - 209)
    page.click("#overlay-visible-spinal_cord")
    page.click("#lesion-visible")
    page.evaluate("window.trame.state.set('overlay', {...window.trame.state.get('overlay'),"
                  " spinal_cord: {...window.trame.state.get('overlay').spinal_cord, fill: 0.0}})")
    _wait(page, "sagittal", lambda rgb: 0.5 * outline.sum() < _cord(rgb).sum() < 2 * outline.sum() and _lesion_pixels(rgb).sum() > 0)
    page.click("#overlay-outline-spinal_cord")  # no fill and no outline: nothing of the cord is drawn
    _wait(page, "sagittal", lambda rgb: _cord(rgb).sum() < 0.02 * _cord(filled).sum() and _lesion_pixels(rgb).sum() > 0)
    page.click("#overlay-outline-spinal_cord")
    _wait(page, "sagittal", lambda rgb: 0.5 * outline.sum() < _cord(rgb).sum() < 2 * outline.sum())


def test_pointer_value_is_the_image_value_under_the_pointer(page) -> None:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(page.context.dataset_root / f"{SUB01}.nii.gz"))
    box = _view(page, "sagittal").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.4)
    page.mouse.move(box["x"] + box["width"] * 0.5 + 3, box["y"] + box["height"] * 0.4 + 2)
    page.wait_for_function("document.querySelector('#pointer-value').textContent.includes('voxel')", timeout=20_000)
    text = page.inner_text("#pointer-value")
    voxel = tuple(int(v) for v in text.split("voxel (")[1].split(")")[0].split(","))
    value = float(text.rsplit("·", 1)[1])
    assert value == pytest.approx(image.GetPixel(*voxel), abs=0.01)


def _crosshair(rgb: np.ndarray) -> np.ndarray:
    """Pixels of Slicer's crosshair, a thin yellow-orange line (JPEG-blurred): red above green above blue."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (red > 100) & (red - blue > 40) & (green - blue > 25) & (blue < 120) & (red >= green)


def _crosshair_lines(rgb: np.ndarray) -> int:
    """Rows and columns of crosshair colour across more than a fifth of the view (the lesion number's glyph is not)."""
    crosshair = _crosshair(rgb)
    return int((crosshair.mean(axis=1) > 0.2).sum() + (crosshair.mean(axis=0) > 0.2).sum())


def test_crosshair_marks_the_lesion_in_every_view(page) -> None:
    """After a click on the lesion row, Slicer's crosshair (its own colour) crosses the lesion in each view."""
    page.locator(".lesion-row").first.click()
    for name in ("axial", "sagittal", "coronal"):
        rgb = _settled(page, name)
        lesion = np.argwhere(_lesion_pixels(rgb))
        row, column = (int(v) for v in lesion.mean(axis=0))
        rows = np.nonzero(_crosshair(rgb).mean(axis=1) > 0.2)[0]
        columns = np.nonzero(_crosshair(rgb).mean(axis=0) > 0.2)[0]
        assert np.abs(rows - row).min(initial=999) <= 6 and np.abs(columns - column).min(initial=999) <= 6, name
    page.click("#crosshair-toggle")  # hidden: no crosshair line left across the sagittal view
    _wait(page, "sagittal", lambda rgb: _crosshair_lines(rgb) == 0)
    page.click("#crosshair-toggle")
    _wait(page, "sagittal", lambda rgb: _crosshair_lines(rgb) >= 2)


def test_every_icon_button_and_slider_is_labelled(page) -> None:
    unlabelled = page.evaluate("""() => {
        const name = (el) => (el.getAttribute('aria-label') || el.getAttribute('title') || el.innerText || '').trim()
            || (el.getAttribute('aria-labelledby') ? document.getElementById(el.getAttribute('aria-labelledby'))?.innerText : '');
        const missing = [];
        for (const el of document.querySelectorAll('button, [role=slider], input[type=range]')) {
            if (el.offsetParent === null) continue;
            let labelled = name(el);
            const field = el.closest('.v-input');
            if (!labelled && field) labelled = (field.getAttribute('aria-label') || field.getAttribute('title')
                || (field.querySelector('label') || {}).innerText || '').trim();
            if (!labelled) missing.push(el.outerHTML.slice(0, 160));
        }
        return missing;
    }""")
    assert unlabelled == []


def test_dark_theme_by_default_and_light_on_request(page) -> None:
    def panel_brightness() -> float:
        from PIL import Image

        rgb = np.asarray(Image.open(io.BytesIO(page.locator("#tools").screenshot())).convert("L")).astype(float)
        return float(np.median(rgb))

    assert panel_brightness() < 80, "the tools panel is not dark"
    _shot(page, "dark")
    page.click("#theme-toggle")
    page.wait_for_function("!window.trame.state.get('dark')")
    deadline = time.monotonic() + 10
    while panel_brightness() < 170 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert panel_brightness() >= 170
    _shot(page, "light")
    page.click("#theme-toggle")
