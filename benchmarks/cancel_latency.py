"""How long the caller waits in ``cancel()`` and ``poll()``, and how long the child takes to stop.

Runs real ``segment`` children (bundled demo model, a 48 x 80 x 200 mm phantom, 1 thread) and
cancels each at its first sliding-window tile; then a ``models install`` child cancelled
mid-download from a throttled server on 127.0.0.1. Prints one JSON object.

    PYTHONPATH=$PWD python benchmarks/cancel_latency.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPOSITORY), str(REPOSITORY / "Testing")]

from SCIsegLib.phantom import Acquisition, make_phantom  # noqa: E402
from SCIsegLib.runner import ModelInstallRun, RunOptions, SegmentationRun  # noqa: E402
from SCIsegLib.volume import write_image_atomic  # noqa: E402


def drive(child, until) -> tuple[list, float]:
    """Poll every 20 ms until ``until(events)``; returns the events and the longest poll() in seconds."""
    events: list = []
    longest = 0.0
    while not until(events):
        started = time.perf_counter()
        events += child.poll()
        longest = max(longest, time.perf_counter() - started)
        time.sleep(0.02)
    return events, longest


def measure(child, first_event) -> dict:
    events, longest_poll = drive(child, lambda ev: any(first_event(e) for e in ev) or child.finished)
    started = time.perf_counter()
    child.cancel()
    cancel_call = time.perf_counter() - started
    events, longest_after = drive(child, lambda ev: child.finished)
    return {
        "cancel_call_ms": round(1000 * cancel_call, 2),
        "cancel_to_finished_s": round(time.perf_counter() - started, 2),
        "longest_poll_ms": round(1000 * max(longest_poll, longest_after), 2),
        "outcome": child.cancel_outcome,
        "returncode": child.returncode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sciseg-cancel-bench-"))
    os.environ["SCISEG_MODELS_DIR"] = str(work / "store")
    model = REPOSITORY / "Resources" / "Models" / "sciseg-demo"
    image = make_phantom(seed=22, acquisition=Acquisition(spacing_mm=(1.0, 0.8, 0.8), fov_mm=(48, 80, 200)), lesions=1).image
    segment = []
    for _ in range(args.runs):
        run = SegmentationRun(RunOptions(model=str(model), device="cpu", extra_arguments=["--threads", "1"]),
                              log_dir=work / "logs", work_root=work)
        write_image_atomic(image, run.input_path)
        run.start()
        segment.append(measure(run, lambda e: e.get("stage") == "predict" and e.get("message", "").startswith("tile")))

    from test_models import make_model_folder, zip_folder
    from test_runner import SlowServer

    folder = make_model_folder(work / "release")
    (folder / "notes.bin").write_bytes(os.urandom(20_000_000))
    with SlowServer(zip_folder(folder, work / "model.zip").read_bytes()) as url:
        install = ModelInstallRun(url, log_dir=work / "logs")
        install.start()
        installing = measure(install, lambda e: e.get("event") == "progress" and e.get("done", 0) > 0)
    files_left = [str(p) for p in (work / "store").rglob("*") if p.is_file()]
    print(json.dumps({"segment": segment, "models_install": installing, "store_files_after_cancel": files_left}, indent=2))


if __name__ == "__main__":
    main()
