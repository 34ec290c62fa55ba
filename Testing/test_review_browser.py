"""``sciseg review`` end to end: the real command serves the app, headless Chromium (Playwright) uses it.

One ``sciseg review`` (``--allow-remote`` with a token from the environment) on a small BIDS dataset made
from the real scans, shared by the tests of this module in file order: case list, open a case, overlay
pixels, paint and erase strokes, export (files and sidecar on disk), next case (runs the demo model in a
child, with Cancel), a second rater (another browser context, so another session and worker behind the
same address) on another case at the same time, then on the same case, a reload, a duplicated tab,
refusals (token at the front and at a worker, ``../``, symlink), and no worker left once the front is
killed. Views are small (the page is 1100x560) to keep software rendering quick.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPOSITORY, SHARED_DATA, shared_file
from review_data import CASES, LESION_VOXELS_SUB01, browser_requirement_missing, make_review_bids
from SCIsegLib.training.export import version_numbers

TOKEN = "review-test-token-0123456789"
VIEWPORT = {"width": 1100, "height": 560}


def _missing_requirement() -> str | None:
    return browser_requirement_missing()


pytestmark = pytest.mark.skipif(_missing_requirement() is not None, reason=str(_missing_requirement()))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(root: Path, queue: Path | None, token: str | None, log: Path) -> tuple[subprocess.Popen, str]:
    """The real command; it answers at once (the front), each browser tab's worker starts when the tab comes."""
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
            urllib.request.urlopen(f"http://127.0.0.1:{port}/s/x/", timeout=2)
            return process, f"http://127.0.0.1:{port}/"
        except urllib.error.HTTPError:  # 403 without the token: the front answers
            return process, f"http://127.0.0.1:{port}/"
        except OSError:
            time.sleep(0.2)
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
def front(dataset: dict[str, Path]):
    process, url = _start_server(dataset["root"], dataset["queue"], TOKEN, dataset["root"].parent / "server.log")
    yield process, url
    _stop(process)


@pytest.fixture(scope="module")
def server(front) -> str:
    return front[1]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _open_session(browser, server: str):
    """A new rater: a browser context of its own (cookies included) on the review address, so a session of its own."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(f"{server}?secret={TOKEN}", timeout=90_000)
    page.wait_for_selector(".case-item", timeout=90_000)
    return context, page


@pytest.fixture(scope="module")
def page(browser, server):
    context, page = _open_session(browser, server)
    yield page
    context.close()


@pytest.fixture(scope="module")
def second_page(browser, server, page):
    """The second rater, opened after the first (``page``) so that the first worker is up."""
    context, second = _open_session(browser, server)
    yield second
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
    page.click("#export")  # while sub-03 segments, the case in the views is still sub-01: its version, its name
    page.wait_for_function("document.querySelector('#message').textContent.includes('saved version v002')", timeout=30_000)
    assert page.inner_text("#message").startswith(f"saved version v002 of {CASES['sub-01']}")
    assert page.inner_text("#case-title") == CASES["sub-01"]
    assert version_numbers(_version_store(dataset["root"], "sub-01")) == [1, 2]
    assert not _version_store(dataset["root"], "sub-03").exists()
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


def _session_id(page) -> str:
    return page.url.split("/s/")[1].split("/")[0]


def _paint_lesion_across_the_centre(page, half_width_px: int = 20) -> None:
    """Lesion, Paint, then a horizontal stroke through the centre of the axial view."""
    page.click("#segment-lesion")
    page.click("#effect-paint")
    page.wait_for_function("document.querySelector('#active-effect').textContent.includes('paint')")
    box = page.locator(".remote-controlled-area").nth(0).bounding_box()
    x0, y0 = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x0 - half_width_px, y0)
    page.mouse.down()
    page.mouse.move(x0 + half_width_px, y0, steps=10)
    page.mouse.up()


def _version_store(root: Path, subject: str) -> Path:
    return root / "derivatives" / "labels" / ".sciseg_versions" / subject / "anat" / f"{subject}_T2w"


def test_two_raters_on_different_cases_at_once_lose_nothing(page, second_page, dataset) -> None:
    root = dataset["root"]
    first, second = page, second_page
    assert _session_id(first) != _session_id(second)  # one address, two sessions (two workers, two scenes)
    assert first.inner_text("#case-title") == CASES["sub-03"]  # opened by the previous test
    assert second.inner_text("#case-title") == ""  # a new session starts with no case: nothing is shared
    first_view = _view_pixels(first)
    second.click(f".case-item[data-case='{CASES['sub-02']}']")
    second.wait_for_function(
        f"document.querySelector('#case-title').textContent.includes('{CASES['sub-02']}')"
        " && document.querySelector('#message').textContent.startsWith('opened')", timeout=60_000)
    second_view = _wait_pixels(second, lambda rgb: _lesion_pixels(rgb).sum() > 20)
    time.sleep(1.0)
    assert np.abs(_view_pixels(first) - first_view).mean() < 2, "the second rater's case changed the first rater's view"
    assert first.inner_text("#case-title") == CASES["sub-03"]
    assert _lesion_pixels(second_view).sum() > 20 and np.abs(second_view - first_view).mean() > 5

    tabs = [(first, "sub-03", "alice"), (second, "sub-02", "bob")]
    before = [_counts(tab) for tab, _, _ in tabs]
    for tab, _, _ in tabs:
        _paint_lesion_across_the_centre(tab)  # one stroke right after the other: both workers edit at once
    after = [_wait_counts_change(tab, counts) for (tab, _, _), counts in zip(tabs, before, strict=True)]
    for tab, _, rater in tabs:
        tab.fill("#rater", rater)
    existing = {subject: set(version_numbers(_version_store(root, subject))) for _, subject, _ in tabs}
    for tab, _, _ in tabs:
        tab.click("#export", no_wait_after=True)
    for tab, _, _ in tabs:
        tab.wait_for_function("document.querySelector('#message').textContent.includes('saved version')", timeout=60_000)

    for (tab, subject, rater), counts_before, counts_after in zip(tabs, before, after, strict=True):
        store = _version_store(root, subject)
        (version,) = sorted(set(version_numbers(store)) - existing[subject])
        exported = _read(store / f"v{version:03d}" / f"{subject}_T2w_dseg.nii.gz")
        assert (int((exported == 1).sum()), int((exported == 2).sum())) == counts_after  # what this rater saw was saved
        predicted = _read(root / f"derivatives/sciseg/{subject}/anat/{subject}_T2w_lesion_seg.nii.gz") > 0
        sidecar = json.loads((store / f"v{version:03d}" / f"{subject}_T2w_dseg.json").read_text())
        assert sidecar["Rater"] == rater
        gained = counts_after[1] - counts_before[1]
        assert gained > 0 and sidecar["Corrections"]["lesion"]["VoxelsAdded"] == gained
        assert sidecar["Corrections"]["lesion"]["VoxelsRemoved"] == 0
        assert int(((exported == 2) & ~predicted).sum()) == gained
        assert tab.inner_text("#case-title") == CASES[subject]  # each tab still shows its own case
        stroke_row = _view_pixels(tab)[int(tab.locator(".remote-controlled-area").nth(0).bounding_box()["height"] / 2)]
        assert _lesion_pixels(stroke_row[None]).sum() >= 10, f"{rater}'s stroke is not in {rater}'s view"


def test_a_reload_returns_to_the_same_session(second_page) -> None:
    session, title, counts = _session_id(second_page), second_page.inner_text("#case-title"), _counts(second_page)
    second_page.reload()
    second_page.wait_for_selector(".case-item", timeout=60_000)
    second_page.wait_for_function(f"document.querySelector('#case-title').textContent.includes('{CASES['sub-02']}')")
    assert _session_id(second_page) == session and second_page.inner_text("#case-title") == title
    assert _counts(second_page) == counts  # the edits are still there, exported or not
    assert _lesion_pixels(_wait_pixels(second_page, lambda rgb: _lesion_pixels(rgb).sum() > 20)).sum() > 20


def test_two_raters_export_the_same_case_at_once(page, second_page, dataset) -> None:
    store = _version_store(dataset["root"], "sub-02")
    existing = set(version_numbers(store))
    for rater, tab in (("alice", page), ("bob", second_page)):
        tab.click(f".case-item[data-case='{CASES['sub-02']}']")
        tab.wait_for_function(f"document.querySelector('#case-title').textContent.includes('{CASES['sub-02']}')"
                              " && document.querySelector('#message').textContent.startsWith('opened')", timeout=60_000)
        tab.fill("#rater", rater)
    page.click("#export", no_wait_after=True)
    second_page.click("#export", no_wait_after=True)
    for tab in (page, second_page):
        tab.wait_for_function("document.querySelector('#message').textContent.includes('saved version')", timeout=60_000)
    messages = [page.inner_text("#message"), second_page.inner_text("#message")]
    new = sorted(set(version_numbers(store)) - existing)
    assert len(new) == 2
    raters = {json.loads((store / f"v{v:03d}" / "sub-02_T2w_dseg.json").read_text())["Rater"] for v in new}
    assert raters == {"alice", "bob"}
    told = [m for m in messages if f"while v{new[0]:03d} existed" in m]  # both started from the same latest version
    assert len(told) == 1 and f"yours is v{new[1]:03d}" in told[0], messages


def _worker_ports(front_process: subprocess.Popen) -> list[tuple[str, int]]:
    """(address, port) each worker of the front listens on."""
    import psutil

    return [(c.laddr.ip, c.laddr.port) for child in psutil.Process(front_process.pid).children()
            for c in child.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]


def test_connections_without_the_token_get_nothing(browser, front, server, second_page) -> None:
    workers = _worker_ports(front[0])
    assert len(workers) == 2 and all(ip == "127.0.0.1" for ip, _ in workers)  # workers never listen on the network
    context = browser.new_context(viewport=VIEWPORT)
    try:
        addresses = [server, f"{server}?secret=wrong-token-0123456789", f"{server}s/{_session_id(second_page)}/"]
        addresses += [f"http://127.0.0.1:{port}/" for _, port in workers]  # straight to a worker: wslink's own check
        for address in addresses:
            intruder = context.new_page()
            intruder.goto(address)
            time.sleep(2.5)  # an accepted connection lists the cases within about 1.5 s
            assert intruder.locator(".case-item").count() == 0, address
            assert "sub-01" not in intruder.content()
            intruder.close()
    finally:
        context.close()


def test_a_duplicated_tab_shares_its_session_and_both_are_warned(page, second_page) -> None:
    duplicate = second_page.context.new_page()  # the same browser on the same session address
    try:
        duplicate.goto(second_page.url)  # trame's page removed the secret from it: the front's cookie stands in
        duplicate.wait_for_selector(".case-item", timeout=60_000)
        assert _session_id(duplicate) == _session_id(second_page)
        duplicate.wait_for_function(f"document.querySelector('#case-title').textContent.includes('{CASES['sub-02']}')")
        second_page.wait_for_selector("#tabs-warning", timeout=10_000)
        assert "2 browser tabs show this session" in second_page.inner_text("#tabs-warning")
        assert page.locator("#tabs-warning").count() == 0  # the other rater's session has one tab
    finally:
        duplicate.close()


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


def test_no_worker_outlives_the_front(front, page, second_page) -> None:
    import psutil

    process = front[0]
    from SCIsegLib.lifetime import is_guardian

    workers = [child for child in psutil.Process(process.pid).children() if not is_guardian(child)]
    assert len(workers) == 2
    process.kill()  # the harshest stop: the front cannot stop them; they see their standard input close
    process.wait(timeout=10)
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert alive == [], f"workers left after the front was killed: {[w.pid for w in alive]}"
