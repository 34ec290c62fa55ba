"""``sciseg review`` end to end: the real command serves the app, headless Chromium (Playwright) uses it.

One server (``--allow-remote`` with a token from the environment) on a small BIDS dataset made from the
real scans, shared by the tests of this module in file order: case list, open a case, overlay pixels,
paint and erase strokes, export (files and sidecar on disk), next case (runs the demo model in a
child, with Cancel), refusals (token, ``../``, symlink). A second server plays a second rater exporting
the same case at the same time. Views are small (the page is 1100x560) to keep software rendering quick.
"""

from __future__ import annotations

import ctypes.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPOSITORY, SHARED_DATA, shared_file
from review_data import CASES, LESION_VOXELS_SUB01, make_review_bids

TOKEN = "review-test-token-0123456789"
VIEWPORT = {"width": 1100, "height": 560}


def _missing_requirement() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
        import trame_slicer  # noqa: F401
    except ImportError as error:
        return f"the web extra or playwright is not installed ({error.name})"
    if shutil.which("chromium") is None:
        return "chromium is not installed (apt-get install chromium; scripts/system_packages.sh)"
    if ctypes.util.find_library("EGL") is None and ctypes.util.find_library("OSMesa") is None:
        return "neither EGL nor OSMesa is installed (apt-get install libegl1 libosmesa6)"
    return None


pytestmark = pytest.mark.skipif(_missing_requirement() is not None, reason=str(_missing_requirement()))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(root: Path, queue: Path | None, token: str | None, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    command = [sys.executable, "-m", "SCIsegLib", "review", "--bids", str(root), "--port", str(port), "--model", "sciseg-demo"]
    if queue is not None:
        command += ["--queue", str(queue)]
    if token is not None:
        environment["SCISEG_REVIEW_TOKEN"] = token
        command.append("--allow-remote")
    process = subprocess.Popen(command, env=environment, stdout=open(log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the review server stopped: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2)
            return process, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the review server did not answer within 90 s")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    shared_file("sct_testing_data/t2/t2.nii.gz")
    base = tmp_path_factory.mktemp("review")
    data = make_review_bids(base / "bids", SHARED_DATA)
    outside = base / "outside" / "secret_T2w.nii.gz"
    outside.parent.mkdir()
    shutil.copyfile(data["root"] / f"{CASES['sub-01']}.nii.gz", outside)
    escaping = data["root"] / "sub-99" / "anat" / "sub-99_T2w.nii.gz"
    escaping.parent.mkdir(parents=True)
    escaping.symlink_to(outside)
    return data


@pytest.fixture(scope="module")
def server(dataset: dict[str, Path]):
    process, url = _start_server(dataset["root"], dataset["queue"], TOKEN, dataset["root"].parent / "server.log")
    yield url
    _stop(process)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser, server):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(f"{server}?secret={TOKEN}")
    page.wait_for_selector(".case-item", timeout=60_000)
    yield page
    context.close()


# ------------------------------------------------------------------------------------------------ helpers
def _counts(page) -> tuple[int, int]:
    text = page.inner_text("#voxel-counts")
    numbers = [int(word) for word in text.replace("·", " ").split() if word.isdigit()]
    return numbers[0], numbers[1]


def _wait_counts_change(page, before: tuple[int, int], timeout_s: float = 30, settle_s: float = 2.0) -> tuple[int, int]:
    """The voxel counts once they changed from ``before`` and then stayed the same for ``settle_s`` seconds.

    A stroke's counts can arrive in more than one refresh (the last ones after the mouse was released), so the
    first change alone is not the stroke's result.
    """
    deadline = time.monotonic() + timeout_s
    now = _counts(page)
    while now == before:
        if time.monotonic() > deadline:
            raise AssertionError(f"the voxel counts stayed {before}")
        time.sleep(0.1)
        now = _counts(page)
    stable_since = time.monotonic()
    while time.monotonic() - stable_since < settle_s:
        if time.monotonic() > deadline:
            raise AssertionError(f"the voxel counts did not settle (last {now})")
        time.sleep(0.1)
        latest = _counts(page)
        if latest != now:
            now, stable_since = latest, time.monotonic()
    return now


def _view_pixels(page, index: int = 0) -> np.ndarray:
    from PIL import Image

    png = page.locator(".remote-controlled-area").nth(index).screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _lesion_pixels(rgb: np.ndarray) -> np.ndarray:
    """Pixels tinted by the lesion's red (220, 55, 40) blended over grey: red well above green and blue."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (red - green > 50) & (red - blue > 50)


def _cord_pixels(rgb: np.ndarray) -> np.ndarray:
    """Pixels tinted by the cord's pale yellow (255, 244, 209): red and green above blue, not lesion red."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (red - blue > 12) & (green - blue > 8) & (red - green < 30)


def _wait_pixels(page, predicate, timeout_s: float = 20, index: int = 0) -> np.ndarray:
    deadline = time.monotonic() + timeout_s
    rgb = _view_pixels(page, index)
    while not predicate(rgb) and time.monotonic() < deadline:
        time.sleep(0.3)
        rgb = _view_pixels(page, index)
    return rgb


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# ------------------------------------------------------------------------------------------------ tests
def test_case_list_in_queue_order_with_statuses(page) -> None:
    items = page.locator(".case-item")
    ids = [items.nth(i).get_attribute("data-case") for i in range(items.count())]
    assert ids == [CASES["sub-02"], CASES["sub-01"], CASES["sub-03"]]  # the queue's order; sub-99 escapes the root
    texts = [items.nth(i).inner_text() for i in range(items.count())]
    assert "predicted" in texts[0] and "score 0.600" in texts[0]
    assert "not predicted" in texts[2]


def test_open_case_shows_image_and_overlay(page) -> None:
    page.click(f".case-item[data-case='{CASES['sub-01']}']")
    page.wait_for_function("document.querySelector('#voxel-counts').textContent.includes('lesion 27 ')", timeout=60_000)
    manual = int((_read(SHARED_DATA / "sct_testing_data/t2/t2_seg-manual.nii.gz") > 0).sum())
    assert _counts(page) == (manual - LESION_VOXELS_SUB01, LESION_VOXELS_SUB01)
    page.locator(".lesion-row").first.click()  # centre the views on the lesion (lesion table)
    page.wait_for_function("document.querySelector('#message').textContent.includes('centred on lesion 1')")
    rgb = _wait_pixels(page, lambda rgb: _lesion_pixels(rgb).sum() > 20)
    assert _lesion_pixels(rgb).sum() > 20, "no lesion overlay in the axial view"
    assert _cord_pixels(rgb).sum() > 5 * _lesion_pixels(rgb).sum(), "no cord overlay around the lesion"
    grey = rgb[~(_lesion_pixels(rgb) | _cord_pixels(rgb))]
    assert grey.std() > 10, "the axial view shows no image"
    page.evaluate("document.activeElement && document.activeElement.blur()")  # shortcuts are ignored in text inputs
    page.keyboard.press("l")  # lesion overlay off
    hidden = _wait_pixels(page, lambda rgb: _lesion_pixels(rgb).sum() == 0)
    assert _lesion_pixels(hidden).sum() == 0
    page.keyboard.press("l")
    shown = _wait_pixels(page, lambda rgb: _lesion_pixels(rgb).sum() > 20)
    assert _lesion_pixels(shown).sum() > 20


def test_paint_and_erase_strokes_change_the_counts_then_export(page, dataset) -> None:
    rgb = _view_pixels(page)
    rows, columns = np.nonzero(_lesion_pixels(rgb))
    centre_y, centre_x = rows.mean(), columns.mean()
    box = page.locator(".remote-controlled-area").nth(0).bounding_box()
    x0, y0 = box["x"] + centre_x, box["y"] + centre_y
    before = _counts(page)

    page.click("#segment-lesion")
    page.click("#effect-paint")
    page.wait_for_function("document.querySelector('#active-effect').textContent.includes('paint')")
    page.mouse.move(x0 - 25, y0)
    page.mouse.down()
    page.mouse.move(x0 + 25, y0, steps=12)
    page.mouse.up()
    painted = _wait_counts_change(page, before)
    gained, lost_cord_only = painted[1] - before[1], before[0] - painted[0]
    assert gained > 0 and 0 < lost_cord_only <= gained  # overwrite: lesion painted over the cord leaves "cord only"

    page.click("#effect-erase")
    page.wait_for_function("document.querySelector('#active-effect').textContent.includes('erase')")
    page.mouse.move(x0, y0 - 25)
    page.mouse.down()
    page.mouse.move(x0, y0 + 25, steps=12)
    page.mouse.up()
    erased = _wait_counts_change(page, painted)
    assert erased[1] < painted[1] and erased[0] == painted[0]  # erase removes lesion voxels only

    page.fill("#rater", "alice")
    page.click("#export")
    page.wait_for_function("document.querySelector('#message').textContent.includes('saved version v001')", timeout=30_000)
    labels_root = dataset["root"] / "derivatives" / "labels"
    version = labels_root / ".sciseg_versions" / "sub-01" / "anat" / "sub-01_T2w" / "v001"
    assert sorted(p.name for p in version.iterdir()) == sorted(
        f"sub-01_T2w{suffix}" for suffix in ("_dseg.json", "_dseg.nii.gz", "_label-SC_seg.json", "_label-SC_seg.nii.gz",
                                             "_label-lesion_seg.json", "_label-lesion_seg.nii.gz"))
    exported = _read(version / "sub-01_T2w_dseg.nii.gz")
    predicted_cord = _read(dataset["root"] / "derivatives/sciseg/sub-01/anat/sub-01_T2w_sc_seg.nii.gz") > 0
    predicted_lesion = _read(dataset["root"] / "derivatives/sciseg/sub-01/anat/sub-01_T2w_lesion_seg.nii.gz") > 0
    assert (int((exported == 1).sum()), int((exported == 2).sum())) == erased  # what the rater saw is what was saved
    changed = np.argwhere((exported == 2) != predicted_lesion)
    assert min(len(np.unique(changed[:, axis])) for axis in range(3)) == 1, "2D strokes changed voxels off their slice"
    sidecar = json.loads((version / "sub-01_T2w_dseg.json").read_text())
    assert sidecar["Rater"] == "alice"
    lesion_change = sidecar["Corrections"]["lesion"]
    assert lesion_change["VoxelsAdded"] == int(((exported == 2) & ~predicted_lesion).sum()) > 0
    assert lesion_change["VoxelsRemoved"] == int((~(exported == 2) & predicted_lesion).sum()) > 0
    assert sidecar["Corrections"]["sc"]["VoxelsRemoved"] == int((predicted_cord & (exported == 0)).sum())
    assert (labels_root / "sub-01" / "anat" / "sub-01_T2w_dseg.nii.gz").is_file()
    page.wait_for_function(
        f"document.querySelector(\".case-item[data-case='{CASES['sub-01']}']\").textContent.includes('corrected')")


def test_next_case_segments_in_a_child_with_progress_and_cancel(page, dataset) -> None:
    page.click("#next-case")  # after sub-01 the next uncorrected case is sub-03, not predicted yet
    page.wait_for_selector("#progress", timeout=20_000)
    page.click("#cancel-segmentation")
    page.wait_for_function("document.querySelector('#message').textContent.includes('cancelled')", timeout=30_000)
    predictions = dataset["root"] / "derivatives" / "sciseg" / "sub-03" / "anat"
    assert not predictions.exists() or not any(predictions.iterdir())
    page.click(f".case-item[data-case='{CASES['sub-03']}']")
    page.wait_for_selector("#progress", timeout=20_000)
    page.wait_for_function(
        f"document.querySelector('#case-title').textContent.includes('{CASES['sub-03']}')"
        " && document.querySelector('#message').textContent.startsWith('opened')", timeout=150_000)
    cord = _read(predictions / "sub-03_T2w_sc_seg.nii.gz") > 0
    lesion = _read(predictions / "sub-03_T2w_lesion_seg.nii.gz") > 0
    assert cord.sum() > 1000  # the demo model finds the cord of this real scan
    assert _counts(page) == (int((cord & ~lesion).sum()), int(lesion.sum()))


def test_two_raters_export_the_same_case_at_once(browser, page, dataset) -> None:
    process, url = _start_server(dataset["root"], dataset["queue"], None, dataset["root"].parent / "server_b.log")
    try:
        context = browser.new_context(viewport=VIEWPORT)
        second = context.new_page()
        second.goto(url)
        second.wait_for_selector(".case-item", timeout=60_000)
        for rater, tab in (("alice", page), ("bob", second)):
            tab.click(f".case-item[data-case='{CASES['sub-02']}']")
            tab.wait_for_function(f"document.querySelector('#case-title').textContent.includes('{CASES['sub-02']}')", timeout=60_000)
            tab.fill("#rater", rater)
        page.click("#export", no_wait_after=True)
        second.click("#export", no_wait_after=True)
        for tab in (page, second):
            tab.wait_for_function("document.querySelector('#message').textContent.includes('saved version')", timeout=60_000)
        messages = [page.inner_text("#message"), second.inner_text("#message")]
        context.close()
    finally:
        _stop(process)
    store = dataset["root"] / "derivatives/labels/.sciseg_versions/sub-02/anat/sub-02_T2w"
    assert sorted(p.name for p in store.iterdir()) == ["v001", "v002"]
    raters = {json.loads((store / v / "sub-02_T2w_dseg.json").read_text())["Rater"] for v in ("v001", "v002")}
    assert raters == {"alice", "bob"}
    told = [m for m in messages if "another version (v001) appeared" in m]
    assert len(told) == 1 and "v002" in told[0], messages


def test_connections_without_the_token_get_nothing(browser, server) -> None:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        for address in (server, f"{server}?secret=wrong-token-0123456789"):
            intruder = context.new_page()
            intruder.goto(address)
            time.sleep(2.5)  # an accepted connection lists the cases within about 1.5 s
            assert intruder.locator(".case-item").count() == 0
            assert "sub-01" not in intruder.content()
            intruder.close()
    finally:
        context.close()


def test_a_second_tab_on_the_same_server_is_warned(browser, server, page) -> None:
    context = browser.new_context(viewport=VIEWPORT)
    try:
        other = context.new_page()
        other.goto(f"{server}?secret={TOKEN}")
        other.wait_for_selector(".case-item", timeout=60_000)
        page.wait_for_selector("#tabs-warning", timeout=10_000)
        assert "2 browser tabs share this server" in page.inner_text("#tabs-warning")
    finally:
        context.close()


def test_case_ids_escaping_the_root_are_refused(page) -> None:
    title = page.inner_text("#case-title")
    for case_id, sentence in (
        ("../../../etc/passwd", "'../../../etc/passwd' is not a case id"),
        ("sub-01/anat/../../../outside/secret_T2w", "'sub-01/anat/../../../outside/secret_T2w' is not a case id"),
        ("sub-99/anat/sub-99_T2w", "sub-99_T2w.nii.gz lies outside the dataset"),
    ):
        page.evaluate("(id) => window.trame.trigger('open_case', [id])", case_id)
        page.wait_for_function("(s) => document.querySelector('#error').textContent.includes(s)", arg=sentence, timeout=10_000)
        assert page.inner_text("#case-title") == title
