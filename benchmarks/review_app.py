"""``sciseg review`` timings in a real browser: server start, case click to first image, paint stroke to view, export, memory.

Data: the full field-of-view sagittal T2w scans of ``../shared/data/sct_2014_errsm`` (384 x ~216 x 52 voxels,
1 mm, about 4.3 M voxels, the realistic size) with their manual cord masks as the "prediction" and a 5x5x5
lesion painted at the cord's centre. The server is the real command (``python -m SCIsegLib review``); the
browser is Debian's chromium driven by Playwright, with the large sagittal view about 800 x 600 pixels (the axial and
coronal views beside it about 400 x 300 each).

Usage (about 2 minutes on 2 shared CPU cores)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/review_app.py --work /tmp/review_bench > benchmarks/review_app.json

Since ``sciseg review`` gives each tab its own worker process behind a front, ``server_start_s`` is the front's
start, ``page_to_case_list_s`` includes the tab's worker start, and the memory figures add the front and its
workers (``benchmarks/review_sessions.py`` measures several raters). The JSON kept here starts with the latest run,
on a loaded machine, with the sagittal view (``latest_loaded_run_sagittal_view``) and the speed steps before it,
then the quiet run through the front with the axial view (``latest_quiet_run_through_the_front``); the older runs
below it predate the front.

Times are wall-clock seconds seen by the browser; "first image" ends when the axial view's pixels show
the new case with its overlay (screenshots polled every ~0.1 s, so the figures include up to one
screenshot of latency); "stroke to view" ends when the painted lesion pixels appear in the sagittal view after
mouse-up (:data:`STROKES` short strokes, p50 and p95); "undo to view" when they are gone again after a click on Undo.
Both are timed in the page (:data:`WATCH_FRAMES_JS`: each new frame's lesion pixels counted on a canvas), so they
carry no screenshot latency.
The machine's load average is recorded at the start and the end: the figures of a loaded machine are not a quiet one's.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED = REPOSITORY.parent / "shared" / "data" / "sct_2014_errsm"
SUBJECTS = ("errsm_11", "errsm_18", "errsm_21")
VIEWPORT = {"width": 1830, "height": 690}  # drawer 330 + views 1200 (sagittal 800 x 600) + tools 300
ROUNDS = 3  # each case opened three times: 9 openings
STROKES = 12  # short paint strokes in the sagittal view, then as many undos


def make_dataset(root: Path) -> list[str]:
    """A BIDS root with one case per errsm subject; returns the case ids."""
    cases = []
    for index, subject in enumerate(SUBJECTS, start=1):
        case = f"sub-{index:02d}/anat/sub-{index:02d}_T2w"
        image = root / f"{case}.nii.gz"
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED / subject / "t2.nii.gz", image)
        cord = sitk.Cast(sitk.ReadImage(str(SHARED / subject / "t2_manual_segmentation.nii.gz")) > 0.5, sitk.sitkUInt8)
        array = sitk.GetArrayFromImage(cord)
        voxels = np.argwhere(array > 0)
        middle = voxels[voxels[:, 0] == int(np.median(voxels[:, 0]))]  # the cord's voxels on the middle slice
        z, y, x = (int(v) for v in middle[np.argmin(((middle - middle.mean(axis=0)) ** 2).sum(axis=1))])
        lesion = np.zeros_like(array)
        lesion[z - 2 : z + 3, y - 2 : y + 3, x - 2 : x + 3] = 1
        lesion &= array
        lesion_image = sitk.GetImageFromArray(lesion)
        lesion_image.CopyInformation(cord)
        folder = root / "derivatives" / "sciseg" / f"sub-{index:02d}" / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(cord, str(folder / f"sub-{index:02d}_T2w_sc_seg.nii.gz"), useCompression=True)
        sitk.WriteImage(lesion_image, str(folder / f"sub-{index:02d}_T2w_lesion_seg.nii.gz"), useCompression=True)
        cases.append(case)
    return cases


def wait_until_serving(port: int, poll_s: float = 0.1) -> None:
    """Return once ``sciseg review`` on 127.0.0.1:``port`` answers ``/index.html`` (a page that starts no session)."""
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2)
            return
        except OSError:
            time.sleep(poll_s)


def rss_mb(pid: int) -> float:
    """Resident MB of the command and its children: the front and each browser tab's worker process."""
    import psutil

    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(process.memory_info().rss for process in processes) / 2**20


def sagittal_view(page):
    """The sagittal view's remote-rendered image (its name label and it share a parent)."""
    return page.locator("div:has(> div > .sciseg-view-name[data-view='sagittal']) > .remote-controlled-area")


def view_rgb(page) -> np.ndarray:
    from PIL import Image

    png = sagittal_view(page).screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def lesion_pixels(rgb: np.ndarray) -> int:
    """Pixels of the lesion's red over grey (not the crosshair's orange, whose green is above 150)."""
    return int(((rgb[..., 0] - rgb[..., 1] > 50) & (rgb[..., 0] - rgb[..., 2] > 50) & (rgb[..., 1] < 150)).sum())


#: In the page: every new frame of the sagittal view (its <img>) with its time and its lesion-red pixels (as
#: :func:`lesion_pixels`), the frame shown at the last mouse press, the times of the last release and click (page clock).
WATCH_FRAMES_JS = """(area) => {
  window.scisegFrames = [];
  const canvas = document.createElement('canvas');
  const context = canvas.getContext('2d', {willReadFrequently: true});
  const img = area.querySelector('img.image-display-area');
  const measure = () => {
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    context.drawImage(img, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let lesion = 0;
    for (let i = 0; i < data.length; i += 4) {
      const r = data[i], g = data[i + 1], b = data[i + 2];
      if (r - g > 50 && r - b > 50 && g < 150) lesion++;
    }
    window.scisegFrames.push({t: performance.now(), lesion: lesion});
  };
  img.addEventListener('load', measure);
  if (img.complete && img.naturalWidth > 0) measure();  // the frame shown now (no new frame may come before a stroke)
  window.scisegText = {counts: [], table: []};  // each change of the counts' and the lesion totals' text (page clock)
  for (const [name, selector] of [['counts', '#voxel-counts'], ['table', '#lesion-totals']]) {
    const element = document.querySelector(selector);
    new MutationObserver(() => window.scisegText[name].push({t: performance.now(), text: element.textContent}))
      .observe(element, {subtree: true, childList: true, characterData: true});
  }
  window.addEventListener('mousedown', () => { window.scisegBefore = window.scisegFrames.at(-1); }, true);
  window.addEventListener('mouseup', () => { window.scisegReleased = performance.now(); }, true);
  window.addEventListener('click', () => { window.scisegClicked = performance.now(); }, true);
}"""


def frame_latency_s(page, since: str, sign: int, timeout_s: float = 30) -> float:
    """Seconds from the page's last ``since`` event (``released``, ``clicked``) to the first frame after it whose
    lesion pixels differ from the frame shown at the mouse press by more than 5 in the direction of ``sign``: what
    the rater waits for, on the page's clock, without the cost of screenshots."""
    wanted = f"""() => {{ const start = window.sciseg{since.capitalize()}, before = window.scisegBefore.lesion;
        const frame = window.scisegFrames.find((f) => f.t > start && {sign} * (f.lesion - before) > 5);
        return frame ? (frame.t - start) / 1000 : null; }}"""
    return round(float(page.wait_for_function(wanted, timeout=timeout_s * 1000).json_value()), 3)


def text_latency_s(page, name: str, timeout_s: float = 30) -> float:
    """Seconds from the page's last mouse release to the first change of the ``name`` text (``counts``: the voxel
    counts, ``table``: the lesion table's totals) after it, on the page's clock (a MutationObserver)."""
    wanted = f"""() => {{ const start = window.scisegReleased;
        const change = window.scisegText.{name}.find((c) => c.t > start);
        return change ? (change.t - start) / 1000 : null; }}"""
    return round(float(page.wait_for_function(wanted, timeout=timeout_s * 1000).json_value()), 3)


def wait_view(page, predicate, timeout_s: float = 60) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    while True:
        rgb = view_rgb(page)
        if predicate(rgb):
            return time.perf_counter(), rgb
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(f"the view did not show the expected pixels within {timeout_s} s")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--screenshot", type=Path, help="save a PNG of the app with a case open (README)")
    parser.add_argument("--code", type=Path, default=REPOSITORY,
                        help="the checkout whose SCIsegLib the server runs (default: this one), to compare two")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    shutil.rmtree(args.work, ignore_errors=True)
    root = args.work / "bids"
    cases = make_dataset(root)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = dict(os.environ, PYTHONPATH=str(args.code.resolve()))
    load_at_start = [round(v, 1) for v in os.getloadavg()]
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "SCIsegLib", "review", "--bids", str(root), "--port", str(port)],
        env=environment, cwd=args.code.resolve(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # cwd too: ``-m`` puts the working folder first on sys.path, before PYTHONPATH
    results: dict = {"command": "PYTHONPATH=$PWD .venv/bin/python benchmarks/review_app.py --work /tmp/review_bench",
                     "code": str(args.code.resolve()),
                     "cpu_count": os.cpu_count(), "scan_size_voxels": list(sitk.ReadImage(str(root / f"{cases[0]}.nii.gz")).GetSize()), "viewport": VIEWPORT}
    try:
        wait_until_serving(port)
        results["server_start_s"] = round(time.perf_counter() - started, 2)
        results["server_rss_mb_idle"] = round(rss_mb(server.pid), 1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)
            loaded = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector(".case-item", timeout=60_000)
            results["page_to_case_list_s"] = round(time.perf_counter() - loaded, 2)
            first_image, rss = [], []
            for _round in range(ROUNDS):
                for case in cases:
                    before = view_rgb(page)
                    clicked = time.perf_counter()
                    page.click(f".case-item[data-case='{case}']")
                    done, _ = wait_view(page, lambda rgb, b=before: lesion_pixels(rgb) > 0 and (np.abs(rgb - b).max(axis=2) > 10).mean() > 0.01)
                    first_image.append(round(done - clicked, 2))
                    page.wait_for_selector(".lesion-row", timeout=60_000)  # the table, measured in a thread, is there
                    time.sleep(0.5)
                    rss.append(round(rss_mb(server.pid), 1))  # what the open case keeps, not the measurement's transients
            results["case_click_to_first_image_s"] = first_image
            results["server_rss_mb_after_each_open"] = rss
            page.click(".lesion-row")
            time.sleep(1.0)
            page.click("#segment-lesion")
            page.click("#effect-paint")
            stroke_to_view, stroke_to_counts, stroke_to_table = [], [], []
            box = sagittal_view(page).bounding_box()
            sagittal_view(page).evaluate(WATCH_FRAMES_JS)
            time.sleep(1.0)
            for offset in np.linspace(-60, 60, STROKES):  # short strokes along the cord (the whole field of view is fitted)
                before_counts = page.inner_text("#voxel-counts")
                x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2 + offset
                page.mouse.move(x - 6, y)
                page.mouse.down()
                page.mouse.move(x + 6, y, steps=4)
                page.mouse.up()
                stroke_to_view.append(frame_latency_s(page, "released", +1))
                stroke_to_counts.append(text_latency_s(page, "counts"))
                stroke_to_table.append(text_latency_s(page, "table"))
                assert page.inner_text("#voxel-counts") != before_counts
                time.sleep(0.3)  # a rater looks before the next stroke
            results["stroke_release_to_view_s"] = stroke_to_view
            results["stroke_release_to_counts_s"] = stroke_to_counts
            results["stroke_release_to_lesion_table_s"] = stroke_to_table
            time.sleep(3.0)  # the last stroke's lesion table
            undo_to_view = []
            for _stroke in range(STROKES):
                page.click("#undo")
                undo_to_view.append(frame_latency_s(page, "clicked", -1))
                time.sleep(0.5)  # a rater looks before the next undo
            results["undo_click_to_view_s"] = undo_to_view
            page.fill("#rater", "benchmark")
            exports = []
            for number in (1, 2, 3):
                clicked = time.perf_counter()
                page.click("#export")
                page.wait_for_function(f"document.querySelector('#message').textContent.includes('v00{number}')", timeout=60_000)
                exports.append(round(time.perf_counter() - clicked, 2))
            results["export_click_to_saved_s"] = exports
            results["server_rss_mb_after_strokes_and_exports"] = round(rss_mb(server.pid), 1)  # undo history: 4 strokes
            page.click(f".case-item[data-case='{cases[0]}']")  # the next case: the history and the edited case go
            page.wait_for_function(f"document.querySelector('#message').textContent.includes('opened {cases[0]}')", timeout=60_000)
            page.wait_for_selector(".lesion-row", timeout=60_000)
            time.sleep(0.5)
            results["server_rss_mb_after_the_next_open"] = round(rss_mb(server.pid), 1)
            if args.screenshot:
                page.set_viewport_size({"width": 1280, "height": 640})
                time.sleep(2.5)
                page.screenshot(path=str(args.screenshot))
            browser.close()
        results["summary"] = {
            "first_image_median_s": statistics.median(first_image),
            "stroke_to_view_median_s": statistics.median(stroke_to_view),
            "stroke_to_view_p95_s": round(float(np.percentile(stroke_to_view, 95)), 2),
            "stroke_to_counts_median_s": statistics.median(stroke_to_counts),
            "stroke_to_counts_p95_s": round(float(np.percentile(stroke_to_counts, 95)), 2),
            "stroke_to_lesion_table_median_s": statistics.median(stroke_to_table),
            "stroke_to_lesion_table_p95_s": round(float(np.percentile(stroke_to_table, 95)), 2),
            "undo_to_view_median_s": statistics.median(undo_to_view),
            "undo_to_view_p95_s": round(float(np.percentile(undo_to_view, 95)), 2),
            "export_median_s": statistics.median(exports),
            "rss_growth_mb_per_open_after_first_round": round((rss[-1] - rss[len(cases) - 1]) / (len(rss) - len(cases)), 1),
            "rss_growth_mb_first_to_last_open": round(rss[-1] - rss[0], 1),
        }
        results["load_average_1_5_15_min_at_start"] = load_at_start
        results["load_average_1_5_15_min_at_end"] = [round(v, 1) for v in os.getloadavg()]  # other jobs on the machine
    finally:
        server.terminate()
        server.wait(timeout=20)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
