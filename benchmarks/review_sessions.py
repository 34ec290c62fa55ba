"""``sciseg review`` with several raters: one browser tab each, one worker process each, behind one address.

Data: the full field-of-view scans of ``benchmarks/review_app.py`` (384 x ~216 x 52 voxels). The server is the
real command; each rater is a separate Chromium context (Playwright) opening the one review address. For each
rater in turn: seconds from opening the address to the case list (the front starts the tab's worker), then
from the case click to the first image with its overlay; the resident memory of the front and of each worker
(idle, then with its case open); finally the seconds the front takes to end every worker on SIGTERM.

The cost of the front's proxy: a second tab opened straight on the first rater's worker (127.0.0.1:<its port>,
the same session) and short paint strokes made alternately through the front and straight, each timed from
mouse release to the painted pixels in the tab that painted (same worker, same scene, same load).

Usage (about 1 minute on 2 shared CPU cores)::

    PYTHONPATH=$PWD .venv/bin/python benchmarks/review_sessions.py --work /tmp/review_sessions --raters 3 \\
        > benchmarks/review_sessions.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from review_app import REPOSITORY, VIEWPORT, lesion_pixels, make_dataset, view_rgb, wait_until_serving, wait_view  # noqa: E402


def worker_rss_mb(front: psutil.Process) -> dict[int, float]:
    return {child.pid: round(child.memory_info().rss / 2**20, 1) for child in front.children()}


def stroke_to_view_s(page, x: float, y: float) -> float:
    before = lesion_pixels(view_rgb(page))
    page.mouse.move(x - 6, y)
    page.mouse.down()
    page.mouse.move(x + 6, y, steps=4)
    page.mouse.up()
    released = time.perf_counter()
    done, _ = wait_view(page, lambda rgb: lesion_pixels(rgb) > before + 5, timeout_s=30)
    return round(done - released, 2)


def proxy_cost(browser, through_front, worker: psutil.Process, strokes: int) -> dict[str, list[float]]:
    """Strokes alternately in a tab through the front and in a tab straight on the same worker."""
    (port,) = {c.laddr.port for c in worker.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    straight = browser.new_context(viewport=VIEWPORT).new_page()
    straight.goto(f"http://127.0.0.1:{port}/")
    straight.wait_for_selector(".case-item", timeout=60_000)
    through_front.click("#segment-lesion")
    through_front.click("#effect-paint")
    for tab in (through_front, straight):
        tab.wait_for_function("document.querySelector('#active-effect').textContent.includes('paint')")
    box = through_front.locator(".remote-controlled-area").nth(0).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    times: dict[str, list[float]] = {"through_front": [], "straight_to_worker": []}
    for index in range(strokes):
        for name, tab in (("through_front", through_front), ("straight_to_worker", straight)):
            offset = (index * 2 + (name == "straight_to_worker") + 1) * 5  # a new row of the view each time
            times[name].append(stroke_to_view_s(tab, x, y + (offset if index % 2 else -offset)))
    straight.context.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--raters", type=int, default=3)
    parser.add_argument("--strokes", type=int, default=5, help="strokes through the front and as many straight to the worker")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    shutil.rmtree(args.work, ignore_errors=True)
    cases = make_dataset(args.work / "bids")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "SCIsegLib", "review", "--bids", str(args.work / "bids"), "--port", str(port),
               "--max-sessions", str(args.raters)]
    started = time.perf_counter()
    server = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=str(REPOSITORY)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    front = psutil.Process(server.pid)
    results: dict = {"command": f"PYTHONPATH=$PWD .venv/bin/python benchmarks/review_sessions.py --work /tmp/review_sessions --raters {args.raters}",
                     "cpu_count": os.cpu_count(), "viewport": VIEWPORT, "raters": []}
    try:
        wait_until_serving(port)
        results["front_start_s"] = round(time.perf_counter() - started, 2)
        results["front_rss_mb"] = round(front.memory_info().rss / 2**20, 1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            pages = []
            for rater in range(args.raters):
                page = browser.new_context(viewport=VIEWPORT).new_page()
                opened = time.perf_counter()
                page.goto(f"http://127.0.0.1:{port}/", timeout=120_000)
                page.wait_for_selector(".case-item", timeout=120_000)
                to_list = time.perf_counter() - opened
                before = worker_rss_mb(front)
                case = cases[rater % len(cases)]
                blank = view_rgb(page)
                clicked = time.perf_counter()
                page.click(f".case-item[data-case='{case}']")
                done, _ = wait_view(page, lambda rgb, b=blank: lesion_pixels(rgb) > 0 and (np.abs(rgb - b).max(axis=2) > 10).mean() > 0.01)
                page.wait_for_selector(".lesion-row", timeout=60_000)
                time.sleep(1.0)
                after = worker_rss_mb(front)
                (new_pid,) = set(after) - {p for r in results["raters"] for p in [r["worker_pid"]]}
                results["raters"].append({
                    "case": case, "worker_pid": new_pid, "open_address_to_case_list_s": round(to_list, 2),
                    "case_click_to_first_image_s": round(done - clicked, 2),
                    "worker_rss_mb_idle": before.get(new_pid), "worker_rss_mb_case_open": after[new_pid],
                    "workers_running": len(after),
                })
                pages.append(page)
            results["all_workers_rss_mb_at_end"] = worker_rss_mb(front)
            results["stroke_release_to_view_s"] = proxy_cost(browser, pages[0], psutil.Process(results["raters"][0]["worker_pid"]), args.strokes)
            results["front_rss_mb_at_end"] = round(front.memory_info().rss / 2**20, 1)
            browser.close()
        workers = front.children()
        stopping = time.perf_counter()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        gone, alive = psutil.wait_procs(workers, timeout=30)
        results["sigterm_to_all_workers_gone_s"] = round(time.perf_counter() - stopping, 2)
        results["workers_left_after_stop"] = [p.pid for p in alive]
        results["stroke_to_view_median_s"] = {k: statistics.median(v) for k, v in results["stroke_release_to_view_s"].items()}
        results["load_average_1_5_15_min_at_end"] = [round(v, 1) for v in os.getloadavg()]
    finally:
        if server.poll() is None:
            server.kill()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
