"""A rater's work in the browser is never lost: versions, drafts, leaving the tab, a worker killed mid-edit.

One ``sciseg review`` and one rater (one Chromium context, so one ``localStorage``), in file order, on the real
scans of ``review_data``: export, reopen (latest version, whose and when), a stroke whose draft reaches the disk
(latency measured) while the lesion table follows it, another case asked for with unsaved strokes, the tab
closed (the browser's leave-page warning), the tab-less worker saying its strokes are safe (so the front may give
its slot away) and then killed with ``kill -9``, and a new tab that finds the case and the draft in a new
session; after the export, a further tab still leads back to the case.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SHARED_DATA, shared_file
from review_data import CASES, browser_requirement_missing, make_review_bids
from SCIsegLib.cases import rater_key
from SCIsegLib.review.launcher import STATUS_PATH
from test_review_browser import (
    TOKEN,
    VIEWPORT,
    _counts,
    _paint_lesion_across_the_centre,
    _start_server,
    _stop,
    _wait_counts_change,
    _wait_pixels,
    _worker_ports,
)

pytestmark = pytest.mark.skipif(browser_requirement_missing() is not None, reason=str(browser_requirement_missing()))
SUB01 = CASES["sub-01"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    shared_file("sct_testing_data/t2/t2.nii.gz")
    return make_review_bids(tmp_path_factory.mktemp("review_drafts") / "bids", SHARED_DATA)


@pytest.fixture(scope="module")
def front(dataset):
    process, url = _start_server(dataset["root"], dataset["queue"], TOKEN, dataset["root"].parent / "server.log")
    yield process, url
    _stop(process)


@pytest.fixture(scope="module")
def page(front):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=__import__("shutil").which("chromium"), args=["--no-sandbox"])
        context = chromium.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.goto(f"{front[1]}?secret={TOKEN}", timeout=90_000)
        page.wait_for_selector(".case-item", timeout=90_000)
        yield page
        context.close()
        chromium.close()


def _open(page, case_id: str, expect: str) -> None:
    page.click(f".case-item[data-case='{case_id}']")
    page.wait_for_function("(s) => document.querySelector('#opened').textContent.includes(s)", arg=expect, timeout=60_000)


def _draft(root: Path) -> Path:
    return root / "derivatives/labels/.drafts/sub-01/anat/sub-01_T2w" / f"{rater_key('alice')}.nrrd"


def _stroke(page, dy_px: int) -> None:
    """A horizontal stroke of the active tool ``dy_px`` pixels below the centre of the axial view."""
    box = page.locator(".remote-controlled-area").nth(0).bounding_box()
    x0, y0 = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2 + dy_px
    page.mouse.move(x0 - 12, y0)
    page.mouse.down()
    page.mouse.move(x0 + 12, y0, steps=8)
    page.mouse.up()


def _number_pixels(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the lesion numbers' yellow (drawn about (245, 229, 130)): red and green high, blue well below green
    (the cord's pale yellow (255, 244, 209) keeps blue within about 35 of green)."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (red > 190) & (green > 170) & (green - blue > 60)


def _lesion_rows(page) -> list[str]:
    return [row.inner_text() for row in page.locator(".lesion-row").all()]


def test_a_corrected_case_reopens_at_its_latest_version(page, dataset) -> None:
    page.fill("#rater", "alice")
    _open(page, SUB01, "the model's prediction")
    before = _counts(page)
    _paint_lesion_across_the_centre(page)
    exported = _wait_counts_change(page, before)
    page.click("#export")
    page.wait_for_function("document.querySelector('#message').textContent.includes('saved version v001 of sub-01')")
    _open(page, CASES["sub-02"], f"opened {CASES['sub-02']}")
    _open(page, SUB01, "v001 by alice on 20")  # not the prediction: the correction is what opens
    assert _counts(page) == exported
    assert page.input_value("#base-choice").startswith("v001 by alice")  # the version list, at the latest


def test_each_stroke_reaches_a_draft_and_the_lesion_table(page, dataset) -> None:
    page.wait_for_selector(".lesion-row", timeout=30_000)  # measured after the case opened
    rows = _lesion_rows(page)
    before = _counts(page)
    draft = _draft(dataset["root"])
    assert not draft.exists()
    page.click("#effect-paint")
    page.wait_for_function("document.querySelector('#active-effect').textContent.includes('paint')")
    _stroke(page, 12)  # below the first stroke
    released = time.monotonic()  # the mouse is up: the stroke is done
    while True:  # the draft holding this stroke (its lesion voxels = what the page shows once settled)
        lesion = int((sitk.GetArrayFromImage(sitk.ReadImage(str(draft))) == 2).sum()) if draft.exists() else -1
        if lesion > before[1]:
            break
        assert time.monotonic() - released < 30, "no draft of the stroke within 30 s"
        time.sleep(0.02)
    latency = time.monotonic() - released
    after = _wait_counts_change(page, before)
    assert lesion == after[1]
    print(f"\nstroke -> draft on disk: {latency:.2f} s")
    page.wait_for_function("(old) => [...document.querySelectorAll('.lesion-row')].map((r) => r.innerText).join('|') !== old",
                           arg="|".join(rows), timeout=30_000)  # the table followed the stroke, no button pressed
    page.wait_for_selector("#unsaved")
    page.locator(".lesion-row").first.click()  # centre the views on lesion 1: its number is drawn there
    page.wait_for_function("document.querySelector('#message').textContent.includes('centred on lesion 1')")
    numbers = _wait_pixels(page, lambda rgb: _number_pixels(rgb).sum() > 10)
    page.screenshot(path=str(dataset["root"].parent / "lesion-number.png"))
    rows, columns = np.nonzero(_number_pixels(numbers))
    height, width = numbers.shape[:2]
    assert _number_pixels(numbers).sum() > 10, "no lesion number in the axial view"
    assert abs(rows.mean() - height / 2) < height / 4 and abs(columns.mean() - width / 2) < width / 4  # at the lesion


def test_another_case_with_unsaved_strokes_asks_then_closing_the_tab_warns(page) -> None:
    counts = _counts(page)
    page.click(f".case-item[data-case='{CASES['sub-02']}']")
    page.wait_for_selector("#pending")
    assert "not exported (kept as your draft)" in page.inner_text("#pending")
    page.click("#pending-stay")
    page.wait_for_selector("#pending", state="detached")
    assert page.inner_text("#case-title") == SUB01 and _counts(page) == counts
    with page.expect_event("dialog") as leaving:
        page.close(run_before_unload=True)
    assert leaving.value.type == "beforeunload"  # the browser's "leave this page?"
    with page.expect_event("close"):
        leaving.value.accept()  # the rater leaves anyway


def test_after_kill_9_a_new_tab_finds_the_case_and_its_draft(page, front, dataset) -> None:
    import psutil

    from SCIsegLib.lifetime import is_guardian

    (worker,) = [child for child in psutil.Process(front[0].pid).children() if not is_guardian(child)]  # the closed
    # tab's session, its strokes never exported (the front's other child is its guardian, see SCIsegLib/lifetime.py)
    ((_, port),) = _worker_ports(front[0])
    request = urllib.request.Request(f"http://127.0.0.1:{port}{STATUS_PATH}", headers={"Authorization": f"Bearer {TOKEN}"})
    status = json.loads(urllib.request.urlopen(request, timeout=30).read())
    assert status["case_id"] == SUB01 and status["unsaved"] is False  # drafted: the front may give its slot away
    worker.kill()  # SIGKILL
    worker.wait(timeout=10)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(_draft(dataset["root"]))))
    counts = (int((labels == 1).sum()), int((labels == 2).sum()))
    tab = page.context.new_page()  # the same browser: its localStorage has the rater's name
    tab.goto(front[1], timeout=90_000)  # the review address (the token is in the context's cookie)
    tab.wait_for_selector(".resume-case", timeout=90_000)
    assert tab.input_value("#rater") == "alice" and tab.inner_text(".resume-case") == SUB01
    assert "draft by alice" in tab.locator(f".case-item[data-case='{SUB01}']").inner_text()
    tab.click(".resume-case")
    tab.wait_for_function("document.querySelector('#opened').textContent.includes('your draft by alice')", timeout=60_000)
    assert _counts(tab) == counts  # the last stroke survived the kill
    assert tab.input_value("#base-choice").startswith("your draft by alice")
    tab.screenshot(path=str(dataset["root"].parent / "restored.png"))
    print(f"\nscreenshot: {dataset['root'].parent / 'restored.png'}")
    tab.click("#export")
    tab.wait_for_function("document.querySelector('#message').textContent.includes('saved version v002 of sub-01')")
    assert not _draft(dataset["root"]).exists()  # exported: the draft is gone

    another = page.context.new_page()  # no draft left: the browser still leads back to the case it had open
    another.goto(front[1], timeout=90_000)
    another.wait_for_selector(".resume-case", timeout=90_000)
    assert another.inner_text(".resume-case") == SUB01
    assert "draft" not in another.locator(f".case-item[data-case='{SUB01}']").inner_text()
