"""The screenshots of ``sciseg review`` in the README and docs, taken from the running app in headless Chromium.

A full field-of-view sagittal T2w scan (``../shared/data/sct_2014_errsm/errsm_21``, 384 x 215 x 52 voxels) with its
manual cord mask as the prediction, two lesions painted inside the cord, and an eroded cord mask (outside the lesions)
standing in for a grey-matter prediction (no grey-matter model reads a 1 mm sagittal scan). The sagittal and axial views zoomed in on the first
lesion (Slicer's right-drag), the lesion table and Export in view: ``review.png`` in the dark theme (the default),
``review-views.png`` in the light one, written into ``--out`` as 256-colour PNGs.

    PYTHONPATH=$PWD .venv/bin/python scripts/review_screenshots.py --work /tmp/review_shots --out Resources/Screenshots
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "benchmarks"))

from review_app import sagittal_view, wait_until_serving  # noqa: E402

SCAN = REPOSITORY.parent / "shared" / "data" / "sct_2014_errsm" / "errsm_21"
CASE = "sub-01/anat/sub-01_T2w"
VIEWPORT = {"width": 1280, "height": 720}


def make_case(root: Path) -> None:
    """One case: the scan, its manual cord as the prediction, two lesions inside it, a grey-matter stand-in."""
    image = root / f"{CASE}.nii.gz"
    image.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SCAN / "t2.nii.gz", image)
    cord = sitk.Cast(sitk.ReadImage(str(SCAN / "t2_manual_segmentation.nii.gz")) > 0.5, sitk.sitkUInt8)
    array = sitk.GetArrayFromImage(cord) > 0
    voxels = np.argwhere(array)
    lesion = np.zeros(array.shape, np.uint8)
    grid = np.indices(array.shape)
    for fraction, radius in ((0.45, 6.0), (0.6, 3.5)):  # along the cord (z: left-right, y: up-down, x: front-back)
        centre = voxels[voxels[:, 1] == np.percentile(voxels[:, 1], fraction * 100).astype(int)].mean(axis=0)
        lesion[(((grid.T - centre) / (2.0, radius, 2.5)) ** 2).sum(axis=-1).T <= 1.0] = 1
    lesion &= array.astype(np.uint8)
    folder = root / "derivatives" / "sciseg" / "sub-01" / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(cord, str(folder / "sub-01_T2w_sc_seg.nii.gz"), useCompression=True)
    lesion_image = sitk.GetImageFromArray(lesion)
    lesion_image.CopyInformation(cord)
    sitk.WriteImage(lesion_image, str(folder / "sub-01_T2w_lesion_seg.nii.gz"), useCompression=True)
    grey = sitk.GetArrayFromImage(sitk.BinaryErode(cord, [2, 1, 2])) & (lesion == 0)  # a thin core beside the lesions
    grey_image = sitk.GetImageFromArray(grey.astype(np.uint8))
    grey_image.CopyInformation(cord)
    sitk.WriteImage(grey_image, str(folder / "sub-01_T2w_gmseg.nii.gz"), useCompression=True)


def save_small_png(png: bytes, path: Path, colours: int = 256) -> None:
    """Write a screenshot as an adaptive-palette PNG (a fraction of the RGB file's size)."""
    from PIL import Image

    Image.open(io.BytesIO(png)).convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=REPOSITORY / "Resources" / "Screenshots")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    shutil.rmtree(args.work, ignore_errors=True)
    make_case(args.work / "bids")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "SCIsegLib", "review", "--bids", str(args.work / "bids"), "--port",
                               str(port)], env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_serving(port)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector(".case-item", timeout=90_000)
            page.fill("#rater", "alice")
            page.click(f".case-item[data-case='{CASE}']")
            page.wait_for_selector(".lesion-row", timeout=90_000)
            page.locator(".lesion-row").first.click()
            page.wait_for_function("document.querySelector('#message').textContent.includes('centred on lesion 1')")
            for view, drags in ((sagittal_view(page), 3), (page.locator(".remote-controlled-area").first, 3)):
                box = view.bounding_box()  # Slicer's right-drag zooms in (downwards) on the lesion at the centre
                x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 5
                for _ in range(drags):
                    page.mouse.move(x, y)
                    page.mouse.down(button="right")
                    page.mouse.move(x, y + box["height"] * 0.3, steps=8)
                    page.mouse.up(button="right")
                    time.sleep(0.5)
            page.locator("#lesion-table").scroll_into_view_if_needed()
            page.mouse.move(0, 0)
            time.sleep(3.0)  # the views' still frames after the last change (nothing to wait on in the page)
            save_small_png(page.screenshot(), args.out / "review.png")
            page.click("#theme-toggle")
            page.locator("#overlay-lesion").scroll_into_view_if_needed()
            page.mouse.move(0, 0)
            time.sleep(3.0)
            save_small_png(page.screenshot(), args.out / "review-views.png")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name in ("review.png", "review-views.png"):
        print(f"{args.out / name}: {(args.out / name).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
