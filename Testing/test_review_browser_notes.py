"""A rater's flags and note in the browser: kept on disk, shown in the case list, written into the export's sidecars;
and the sign that another rater has a case open (a lease of another session, written here through the library).

One ``sciseg review`` and one Chromium tab on the real scans of ``review_data``; the screenshot is kept beside the
dataset (``notes.png``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from review_data import CASES, browser_requirement_missing
from SCIsegLib.cases import lease_folder, new_holder, rater_key, scan_of
from SCIsegLib.cases.leases import write_lease
from SCIsegLib.cases.notes import notes_folder
from test_review_browser_drafts import dataset, front, page  # noqa: F401 - one server and tab for this module

pytestmark = pytest.mark.skipif(browser_requirement_missing() is not None, reason=str(browser_requirement_missing()))
SUB01, SUB02 = CASES["sub-01"], CASES["sub-02"]


def _wait_file(path: Path, predicate, timeout_s: float = 30) -> dict:
    """The JSON at ``path`` once ``predicate`` holds for it (polled: the server writes it; 30 s only as a safety net)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            content = json.loads(path.read_text())
            if predicate(content):
                return content
        except (OSError, ValueError):
            pass
        assert time.monotonic() < deadline, f"{path} never held what was expected"
        time.sleep(0.05)


def test_flags_and_note_reach_the_disk_the_case_list_and_the_export_sidecar(page, dataset) -> None:  # noqa: F811
    root = dataset["root"]
    scan = scan_of(root / f"{SUB01}.nii.gz")
    write_lease(lease_folder(root, scan), new_holder(), "bob")  # another session (this process: alive) has sub-01 open
    write_lease(lease_folder(root, scan_of(root / f"{SUB02}.nii.gz")), new_holder(), "carol")
    page.fill("#rater", "alice")
    page.click(f".case-item[data-case='{SUB01}']")
    page.wait_for_function("document.querySelector('#opened').textContent.includes('opened sub-01')", timeout=60_000)
    page.wait_for_selector("#open-elsewhere", timeout=30_000)
    assert "also open in another session by bob" in page.inner_text("#open-elsewhere")

    page.check("#flag-artifact")
    page.check("#flag-unsure")
    page.fill("#case-note", "motion at C3; lesion edge unclear")
    kept = notes_folder(root, scan) / f"{rater_key('alice')}.json"
    _wait_file(kept, lambda c: c["Flags"] == ["artifact", "unsure"] and c["Note"] == "motion at C3; lesion edge unclear")
    item = page.locator(f".case-item[data-case='{SUB01}']")
    page.wait_for_function("(id) => (document.querySelector(`.case-item[data-case='${id}'] .case-notes`) || {})"
                           ".innerText?.includes('edge unclear')", arg=SUB01, timeout=30_000)  # after the last keystroke
    assert item.locator(".case-flags").inner_text() == "artifact · unsure"
    assert 'alice: artifact, unsure - "motion at C3; lesion edge unclear"' in item.locator(".case-notes").inner_text()

    page.click("#refresh-cases")  # the list reads the leases again: sub-02 is open by carol; sub-01 by bob, not by us
    page.wait_for_function("(id) => document.querySelector(`.case-item[data-case='${id}'] .case-open-by`)", arg=SUB02,
                           timeout=30_000)
    assert "open by carol" in page.locator(f".case-item[data-case='{SUB02}'] .case-open-by").inner_text()
    open_by = item.locator(".case-open-by").inner_text()
    assert "bob" in open_by and "alice" not in open_by

    page.locator("#case-notes").scroll_into_view_if_needed()
    page.screenshot(path=str(root.parent / "notes-panel.png"))
    page.click("#export")
    page.wait_for_function("document.querySelector('#message').textContent.includes('saved version v001 of sub-01')",
                           timeout=60_000)
    version = root / "derivatives/labels/.sciseg_versions/sub-01/anat/sub-01_T2w/v001"
    for sidecar in sorted(version.glob("*.json")):
        content = json.loads(sidecar.read_text())
        assert content["Flags"] == ["artifact", "unsure"], sidecar.name
        assert content["Note"] == "motion at C3; lesion edge unclear" and content["Rater"] == "alice"
    assert len(list(version.glob("*.json"))) == 3
    page.wait_for_function("(id) => document.querySelector(`.case-item[data-case='${id}']`).innerText.includes('corrected')",
                           arg=SUB01, timeout=30_000)
    assert item.locator(".case-flags").inner_text() == "artifact · unsure"  # kept with the case after the export
    shot = root.parent / "notes.png"
    page.screenshot(path=str(shot))
    print(f"\nscreenshot: {shot}")
    assert os.path.getsize(shot) > 10_000


def test_grey_matter_painted_in_the_browser_is_exported_on_the_input_grid(page, dataset) -> None:  # noqa: F811
    """A grey-matter model is bundled (``sciseg-gm-demo``): the app offers the segment; a stroke of it reaches the
    version as ``<stem>_label-GM_seg.nii.gz`` on the image's grid, cord and lesion unchanged by it."""
    root = dataset["root"]
    page.click(f".case-item[data-case='{SUB02}']")
    page.wait_for_function("document.querySelector('#opened').textContent.includes('opened sub-02')", timeout=60_000)
    cord_only, lesion = (int(word) for word in page.inner_text("#voxel-counts").replace("·", " ").split() if word.isdigit())
    page.click("#segment-gm")
    page.click("#effect-paint")
    page.wait_for_function("document.querySelector('#active-effect').textContent.includes('paint')")
    box = page.locator(".remote-controlled-area").nth(0).bounding_box()
    x0, y0 = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x0 - 6, y0)
    page.mouse.down()
    page.mouse.move(x0 + 6, y0, steps=6)
    page.mouse.up()
    page.wait_for_function("(window.trame.state.get('counts').grey_matter || 0) > 0", timeout=30_000)
    painted = page.evaluate("window.trame.state.get('counts')")
    assert painted["lesion"] == lesion and painted["cord_only"] >= cord_only  # a grey-matter stroke takes no cord voxel
    page.click("#export")
    page.wait_for_function("document.querySelector('#message').textContent.includes('saved version v001 of sub-02')",
                           timeout=60_000)
    image = sitk.ReadImage(str(root / f"{SUB02}.nii.gz"))
    for folder in (root / "derivatives/labels/.sciseg_versions/sub-02/anat/sub-02_T2w/v001", root / "derivatives/labels/sub-02/anat"):
        gm = sitk.ReadImage(str(folder / "sub-02_T2w_label-GM_seg.nii.gz"))
        assert gm.GetSize() == image.GetSize() and np.allclose(gm.GetOrigin(), image.GetOrigin())
        assert np.allclose(gm.GetSpacing(), image.GetSpacing()) and np.allclose(gm.GetDirection(), image.GetDirection())
        assert int(sitk.GetArrayFromImage(gm).sum()) == painted["grey_matter"]
        sidecar = json.loads((folder / "sub-02_T2w_label-GM_seg.json").read_text())
        assert sidecar["SNOMEDCode"] == "12958003" and sidecar["Rater"] == "alice" and sidecar["Version"] == 1
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "derivatives/labels/sub-02/anat/sub-02_T2w_dseg.nii.gz")))
    assert int((labels == 2).sum()) == lesion and int((labels == 1).sum()) >= cord_only  # cord and lesion kept
    page.screenshot(path=str(root.parent / "grey-matter.png"))
