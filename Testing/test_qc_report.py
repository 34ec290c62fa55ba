"""The QC report in a real browser: Playwright drives Debian's headless Chromium on ``qc/index.html`` opened from
disk, checks the contour overlay by screenshot pixels, marks two scans Fail with the keyboard, saves, and
``sciseg queue`` then puts exactly those two first."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from SCIsegLib.cohort.discovery import find_bids_scans, read_participants
from SCIsegLib.cohort.task import ScanJob, process_scan
from SCIsegLib.inference import InferenceSettings
from SCIsegLib.models import resolve_model
from SCIsegLib.phantom import Acquisition, LesionSpec, make_phantom
from SCIsegLib.qc.report import qc_entry, write_report
from SCIsegLib.volume import write_image_atomic

REPOSITORY = Path(__file__).resolve().parents[1]
TINY = Acquisition(spacing_mm=(2.0, 0.8, 0.8), fov_mm=(24.0, 40.0, 64.0), orientation="PSR")
SUBJECTS = ["sub-01", "sub-02", "sub-03"]


def browser_or_skip():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no /usr/bin/chromium: install Debian's chromium (scripts/system_packages.sh) to run the browser test")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright; the test uses the system chromium)")
    return chromium, sync_playwright


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny phantoms through the worker's per-scan task (in this process), then the report of their rows."""
    root = tmp_path_factory.mktemp("qc")
    bids, deriv = root / "bids", root / "derivatives"
    for index, subject in enumerate(SUBJECTS):
        case = make_phantom(index + 10, TINY, [LesionSpec(center_si_mm=0.0, length_mm=14.0, width_fraction=0.85)])
        write_image_atomic(case.image, bids / subject / "anat" / f"{subject}_T2w.nii.gz")
    (bids / "participants.tsv").write_text("participant_id\tsite\nsub-01\tBern\nsub-02\tZurich\nsub-03\tBern\n")
    model = resolve_model("sciseg-demo")
    settings = InferenceSettings(device="cpu", threads=1)
    rows = [process_scan(ScanJob(scan, deriv, model.path, model.name, model.weights_sha256(), settings,
                                 command=f"sciseg run --bids {bids} -o {deriv}"))
            for scan in find_bids_scans(bids)]
    assert [row["status"] for row in rows] == ["done"] * 3, [row["reason"] for row in rows]
    sites = {p["participant_id"]: p["site"] for p in read_participants(bids)}
    return write_report(deriv, [qc_entry(row, sites[row["subject"]]) for row in rows])


def contour_pixels(png: bytes) -> tuple[int, int]:
    """(red lesion contour pixels, yellow cord contour pixels) of a screenshot."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    yellow = (rgb[..., 0] > 200) & (rgb[..., 1] > 180) & (rgb[..., 2] < 60)
    return int(red.sum()), int(yellow.sum())


def test_keyboard_review_in_chromium_and_the_queue_takes_the_fails(report: Path, tmp_path: Path) -> None:
    chromium, sync_playwright = browser_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        context = browser.new_context(viewport={"width": 1300, "height": 700}, accept_downloads=True)
        page = context.new_page()
        page.goto(report.as_uri())
        page.wait_for_function("document.querySelector('#axial img.overlay').complete && "
                               "document.querySelector('#axial img.overlay').naturalWidth > 0")
        assert page.locator("#rows tr").count() == 3

        # Right arrow toggles the contours: the pixels of what the rater sees change.
        red_on, yellow_on = contour_pixels(page.locator("#images").screenshot())
        page.keyboard.press("ArrowRight")
        red_off, yellow_off = contour_pixels(page.locator("#images").screenshot())
        page.keyboard.press("ArrowRight")
        red_again, _ = contour_pixels(page.locator("#images").screenshot())
        assert red_on > 50 and yellow_on > 100, (red_on, yellow_on)
        assert red_off == 0 and yellow_off == 0
        assert red_again == red_on

        # j/k and arrows move; f cycles Pass -> Fail -> Artifact; digits rank.
        page.keyboard.press("j")
        assert page.locator("tr.selected").get_attribute("data-file").endswith("sub-02_T2w.nii.gz")
        page.keyboard.press("f")
        page.keyboard.press("f")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("f")
        page.keyboard.press("f")
        page.keyboard.press("4")
        page.keyboard.press("k")
        page.keyboard.press("k")
        page.keyboard.press("f")  # sub-01: Pass
        page.screenshot(path=str(tmp_path / "qc_page.png"))
        if os.environ.get("SCISEG_QC_SCREENSHOT"):  # where to keep what the rater saw, to look at it
            shutil.copy(tmp_path / "qc_page.png", os.environ["SCISEG_QC_SCREENSHOT"])

        # Filters: site and search with '/'.
        page.select_option("#site", "Zurich")
        assert page.locator("#rows tr").count() == 1
        page.select_option("#site", "")
        page.keyboard.press("/")
        page.keyboard.type("sub-03")
        assert page.locator("#rows tr").count() == 1
        page.keyboard.press("Escape")
        page.fill("#search", "")

        # Decisions survive a reload (local storage).
        page.reload()
        cells = [page.locator("#rows tr").nth(i).locator("td").nth(10).inner_text() for i in range(3)]
        assert cells == ["Pass", "Fail", "Fail"]
        assert page.locator("#rows tr").nth(2).locator("td").nth(11).inner_text() == "4"
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("f")  # sub-03: Fail -> Artifact
        page.keyboard.press("f")  # Artifact -> Pass
        page.keyboard.press("f")  # Pass -> Fail again
        page.keyboard.press("k")
        page.keyboard.press("k")

        # Date, command and version of the selected scan; the mosaic's slice numbers.
        assert "sciseg run --bids" in page.locator("#meta").inner_text()
        assert "SCIseg " in page.locator("#meta").inner_text() and "measured on model" in page.locator("#meta").inner_text()
        assert "axial tiles: slices" in page.locator("#slices").inner_text()

        # Sortable columns: volume ascending, then descending (a second click); the list follows.
        volumes = [json.loads(report.with_name("entries.js").read_text()[len("window.SCISEG_QC = "):-2])["entries"][i]
                   ["volume_mm3"] for i in range(3)]
        page.locator("th[data-key=volume_mm3]").click()
        shown = [float(page.locator("#rows tr").nth(i).locator("td").nth(6).inner_text()) for i in range(3)]
        assert shown == sorted(round(v, 1) for v in volumes)
        page.locator("th[data-key=volume_mm3]").click()
        shown = [float(page.locator("#rows tr").nth(i).locator("td").nth(6).inner_text()) for i in range(3)]
        assert shown == sorted((round(v, 1) for v in volumes), reverse=True)
        page.locator("th[data-key=subject]").click()

        # The Fail list in SCT's format, and an empty Artifact list, both read by a YAML loader with SCT's keys;
        # then ours (Save fails, Save all).
        def saved(button: str, name: str) -> Path:
            with page.expect_download() as download:
                page.click(button)
            download.value.save_as(tmp_path / name)
            return tmp_path / name

        sct_fail, sct_artifact = saved("#save-sct-fail", "qc_fail.yml"), saved("#save-sct-artifact", "qc_artifact.yml")
        fails_file, all_file = saved("#save-fails", "qc_fails.yml"), saved("#save-all", "qc_decisions.json")
        browser.close()

    failed = sorted(Path(item["file"]).name for item in yaml.safe_load(fails_file.read_text())["fails"])
    assert failed == ["sub-02_T2w.nii.gz", "sub-03_T2w.nii.gz"]
    sct_lists = yaml.safe_load(sct_fail.read_text())
    assert set(sct_lists) == {"FILES_SEG", "FILES_LESION"}
    for key in ("FILES_SEG", "FILES_LESION"):  # SCT's manual-correction keeps the file names of these lists
        assert sorted(Path(file).name for file in sct_lists[key]) == failed
        assert all(Path(file).is_file() for file in sct_lists[key])
    assert yaml.safe_load(sct_artifact.read_text()) == {"FILES_SEG": [], "FILES_LESION": []}
    decisions = {Path(d["file"]).name: d["decision"] for d in json.loads(all_file.read_text())["decisions"]}
    assert decisions == {"sub-01_T2w.nii.gz": "Pass", "sub-02_T2w.nii.gz": "Fail", "sub-03_T2w.nii.gz": "Fail"}

    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    queue = tmp_path / "queue.json"
    for decisions_file in (fails_file, all_file):
        taken = subprocess.run([sys.executable, "-m", "SCIsegLib", "queue", "qc", str(decisions_file), "--queue", str(queue)],
                               capture_output=True, text=True, env=environment, timeout=120)
        assert taken.returncode == 0, taken.stderr
        assert sorted(Path(line.split()[-1]).name for line in taken.stdout.splitlines()) == failed
    following = subprocess.run([sys.executable, "-m", "SCIsegLib", "queue", "next", "--queue", str(queue)],
                               capture_output=True, text=True, env=environment, timeout=120)
    assert following.returncode == 0 and Path(following.stdout.split()[-1]).name in failed


def test_entry_explains_every_n_a_and_leaves_flagged_values_out() -> None:
    measures = {"lesion_count": 2, "volume [mm3]": 80.0, "length [mm]": 12.0, "max_axial_damage_ratio []": 0.5,
                "csa_above_lesion [mm2]": float("nan"), "interpolated_total_bridge_width [mm]": 20.0}
    flag = {"code": "lesion_off_cord", "label": 2, "reason": "lesion 2 lies off the main cord piece",
            "columns": ["lesion_count", "volume [mm3]", "length [mm]", "max_axial_damage_ratio []",
                        "interpolated_total_bridge_width [mm]"]}
    row = {"file": "/d/sub-01_T2w.nii.gz", "subject": "sub-01", "session": "", "scan": "sub-01_T2w", "status": "done",
           "marker": {"Measures": measures, "Flags": [flag], "Date": "2026-12-02T18:00:00+00:00", "Command": "sciseg run x",
                      "SCIsegVersion": "0.1.0", "Model": "sciseg-v2", "MeasuredOn": "correction v002 (alice)",
                      "QCSlices": [12, 11]}}
    entry = qc_entry(row)
    assert entry["volume_mm3"] is None and entry["length_mm"] is None  # flagged: not shown as a number
    assert entry["flags"] == [flag["reason"]] and entry["measured_on"] == "correction v002 (alice)"
    assert entry["notes"][0] == "n/a because lesion 2 lies off the main cord piece"
    assert any(note.startswith("CSA above n/a") for note in entry["notes"])
    assert (entry["date"], entry["command"], entry["version"]) == ("2026-12-02T18:00:00+00:00", "sciseg run x",
                                                                   "SCIseg 0.1.0, model sciseg-v2")
    assert entry["slices"] == [12, 11]
    no_lesion = qc_entry({**row, "marker": {"Measures": {"lesion_count": 0, "volume [mm3]": 0.0}}})
    assert no_lesion["notes"] == ["no lesion: volume, length, damage ratio and CSA at or above the lesion do not apply (n/a)"]


def test_review_case_id_is_the_scan_path_relative_to_its_bids_root(tmp_path: Path) -> None:
    from SCIsegLib.qc.report import review_case_id

    root = tmp_path / "study"
    assert review_case_id(root / "sub-01" / "anat" / "sub-01_T2w.nii.gz") == "sub-01/anat/sub-01_T2w"
    assert review_case_id(str(root / "sub-01" / "ses-02" / "anat" / "sub-01_ses-02_T2w.nii.gz")) == \
        "sub-01/ses-02/anat/sub-01_ses-02_T2w"
    # not in a BIDS dataset, or names review refuses: no case id, so no link on the page
    assert review_case_id(tmp_path / "scans" / "t2.nii.gz") == ""
    assert review_case_id(root / "patient" / "anat" / "t2.nii.gz") == ""
    assert review_case_id(root / "sub-01" / "anat" / "sub-01 T2w.nii.gz") == ""
    assert review_case_id(root / "sub-01" / "anat" / "sub-01_T2w.nii") == ""
    row = {"file": str(root / "sub-01" / "anat" / "sub-01_T2w.nii.gz"), "subject": "sub-01", "session": "",
           "scan": "sub-01_T2w", "status": "done"}
    assert qc_entry(row)["case_id"] == "sub-01/anat/sub-01_T2w"
