"""From the QC report to ``sciseg review``: a scan marked Fail (key ``f``) on ``qc/index.html`` opened from disk gets
an "Open in sciseg review" link to the review address set on the page; clicked in headless Chromium, it opens a new
tab in which the running ``sciseg review`` opens that case (title and overlay pixels checked). A ``case`` value that is
not a case id is refused by the front with one sentence, before any worker starts."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import SHARED_DATA, shared_file
from review_data import CASES, make_review_bids
from SCIsegLib.review.front import Front, FrontSettings
from SCIsegLib.qc.report import qc_entry, write_report
from test_review_browser import VIEWPORT, _cord_pixels, _lesion_pixels, _missing_requirement, TOKEN, _start_server, _stop, _wait_pixels

ECHO_WORKER = Path(__file__).with_name("echo_review_worker.py")


def test_the_front_checks_the_case_before_anything_else_and_hands_it_to_the_tab(tmp_path: Path) -> None:
    """In process, with the echo worker of test_review_front.py: refusals start no worker; a case id rides along."""
    from aiohttp.test_utils import TestClient, TestServer

    async def scenario() -> None:
        front = Front(FrontSettings(root=tmp_path), [sys.executable, str(ECHO_WORKER)], log=lambda _text: None)
        async with TestClient(TestServer(front.application())) as client:
            for query in ("case=..%2F..%2Fetc%2Fpasswd", "case=sub-01/anat/x&case=sub-02/anat/y", "case=%2Fetc%2Fpasswd",
                          "case=sub-01/anat/%3Cscript%3E"):
                answer = await client.get(f"/?{query}", allow_redirects=False)
                text = await answer.text()
                assert answer.status == 400 and "This case cannot be opened: " in text and "<script>" not in text, text
            assert len(front.table) == 0  # refused before a worker was claimed
            answer = await client.get("/?case=sub-01/ses-02/anat/sub-01_ses-02_T2w", allow_redirects=False)
            assert answer.status == 302 and len(front.table) == 1
            location = urlsplit(answer.headers["Location"])
            assert location.path.startswith("s/") and parse_qs(location.query)["case"] == ["sub-01/ses-02/anat/sub-01_ses-02_T2w"]
            assert parse_qs(location.query)["secret"] == [front.worker_secret]

    asyncio.run(scenario())


@pytest.mark.skipif(_missing_requirement() is not None, reason=str(_missing_requirement()))
def test_a_fail_opens_its_case_in_the_running_review(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    shared_file("sct_testing_data/t2/t2.nii.gz")
    root = make_review_bids(tmp_path / "bids", SHARED_DATA)["root"]
    rows = [{"file": str(root / f"{CASES[subject]}.nii.gz"), "subject": subject, "session": "",
             "scan": f"{subject}_T2w", "status": "done"} for subject in ("sub-01", "sub-02")]
    report = write_report(tmp_path / "deriv", [qc_entry(row) for row in rows])
    log = tmp_path / "review.log"
    process, url = _start_server(root, None, TOKEN, log)
    address = f"{url}?secret={TOKEN}"  # the address the review printed at start: the link keeps its token
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            context = browser.new_context(viewport=VIEWPORT)
            page = context.new_page()
            page.goto(report.as_uri())
            assert page.input_value("#review-address") == "http://127.0.0.1:8080"
            page.fill("#review-address", address)
            page.press("#review-address", "Enter")  # saved in the browser; keys in the field never reach the report
            assert page.evaluate("localStorage.getItem('sciseg-qc-review-address')") == address
            assert not page.is_visible("#open-review")  # sub-01 selected, not marked yet
            page.keyboard.press("f")  # Pass
            assert not page.is_visible("#open-review")
            page.keyboard.press("f")  # Fail
            link = page.locator("#open-review")
            assert link.get_attribute("href") == f"{address}&case=sub-01%2Fanat%2Fsub-01_T2w"
            assert link.inner_text() == f"Open in sciseg review: {CASES['sub-01']}"
            page.fill("#review-address", "javascript:alert(1)")
            page.press("#review-address", "Enter")
            assert link.get_attribute("href") is None and link.inner_text() == "the review address is not an http(s) address"
            page.fill("#review-address", address)
            page.press("#review-address", "Enter")
            assert link.get_attribute("href") == f"{address}&case=sub-01%2Fanat%2Fsub-01_T2w"
            page.screenshot(path=str(tmp_path / "qc_fail.png"))

            with context.expect_page() as opened:
                link.click()
            review = opened.value
            review.wait_for_function(
                f"(document.querySelector('#case-title') || {{}}).textContent === '{CASES['sub-01']}'", timeout=120_000)
            assert "case=" not in review.url  # dropped once asked: a reload keeps the session, not the request
            rgb = _wait_pixels(review, lambda rgb: _lesion_pixels(rgb).sum() > 20, timeout_s=60)
            assert _lesion_pixels(rgb).sum() > 20 and _cord_pixels(rgb).sum() > 5 * _lesion_pixels(rgb).sum()
            review.screenshot(path=str(tmp_path / "review_opened.png"))

            refused = context.new_page()
            answer = refused.goto(f"{address}&case=..%2F..%2Fetc%2Fpasswd")
            assert answer is not None and answer.status == 400
            sentence = refused.inner_text("#sentence")
            assert sentence.startswith("This case cannot be opened: '../../etc/passwd' is not a case id")
            assert sentence.count(". ") == 0 and sentence.endswith(".")
            browser.close()
    finally:
        _stop(process)
    assert log.read_text().count(" starting (") == 1  # the refused address started no worker
    print(f"screenshots: {tmp_path / 'qc_fail.png'} {tmp_path / 'review_opened.png'}")
