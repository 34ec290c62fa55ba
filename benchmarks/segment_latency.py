"""Segment click to segments: the cold `sciseg segment` child against the warm engine, with memory figures.

What a rater waits for after a Segment click, measured the way the Slicer panel and the review app see it:

* **cold**: ``python -m SCIsegLib segment SCAN --model M --progress jsonl`` started, until it exited
  (the panel imports the masks when the child ended), then the masks read back (SimpleITK);
* **warm**: a request sent to a ready :class:`SCIsegLib.warm_client.WarmEngine` until its ``result`` event,
  then the masks read back; plus the engine's start-to-ready time, its resident memory when ready and its
  peak, and what is left after its idle exit (nothing: the process is gone).

The machine is shared: the load average before and after each run is recorded; say "quiet" only when it
was below 0.5. Usage::

    python benchmarks/segment_latency.py --label loaded --repeats 3 -o benchmarks/segment_latency_loaded.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))
from SCIsegLib.warm_client import WarmEngine  # noqa: E402

SCANS = {"t2": "sct_testing_data/t2/t2.nii.gz", "errsm_21": "sct_2014_errsm/errsm_21/t2.nii.gz"}


def read_masks(folder: Path) -> None:
    for mask in sorted(folder.glob("*_seg.nii.gz")):
        sitk.ReadImage(str(mask))


def cold_once(scan: Path, model: str, folder: Path, repository: Path = REPOSITORY) -> dict:
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "SCIsegLib", "segment", str(scan), "--model", model, "-o", str(folder),
                              "--progress", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             cwd=repository, env={**os.environ, "PYTHONPATH": str(repository)})
    result_at = None
    for line in child.stdout:
        if '"result"' in line:
            result_at = time.perf_counter()
    code = child.wait()
    exited = time.perf_counter()
    read_masks(folder)
    return {"exit_code": code, "to_result_s": round((result_at or exited) - started, 3),
            "to_exit_s": round(exited - started, 3), "click_to_segments_s": round(time.perf_counter() - started, 3)}


def warm_once(engine: WarmEngine, scan: Path, folder: Path) -> dict:
    started = time.perf_counter()
    request = engine.segment([scan], folder)
    request.wait(600)
    answered = time.perf_counter()
    read_masks(folder)
    final = request.final or {}
    return {"outcome": request.outcome, "to_result_s": round(answered - started, 3),
            "click_to_segments_s": round(time.perf_counter() - started, 3),
            "network_s": final.get("records", [{}])[0].get("seconds"), "rss_mb": final.get("rss_mb"),
            "peak_rss_mb": final.get("peak_rss_mb")}


def _commit(checkout: Path) -> str:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


def summary(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values), "runs": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPOSITORY.parent / "shared" / "data")
    parser.add_argument("--model", default="sciseg-demo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", required=True, help="quiet or loaded (the load average is recorded too)")
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout (e.g. the main branch): its cold segment is timed too, interleaved")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    scans = {name: args.data / relative for name, relative in SCANS.items()}
    report: dict = {"label": args.label, "model": args.model, "cpu_count": os.cpu_count(), "machine": platform.machine(),
                    "load_average_start": os.getloadavg(), "repeats": args.repeats, "cold": {}, "warm": {}}
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        if not args.skip_cold:
            for name, scan in scans.items():
                runs, baseline = [], []
                for i in range(args.repeats):  # interleaved: both see the same load
                    runs.append(cold_once(scan, args.model, work / f"cold-{name}-{i}"))
                    if args.baseline is not None:
                        baseline.append(cold_once(scan, args.model, work / f"baseline-{name}-{i}", args.baseline))
                report["cold"][name] = {"click_to_segments_s": summary(runs, "click_to_segments_s"),
                                        "to_result_s": summary(runs, "to_result_s")}
                if baseline:
                    report["cold"][name]["baseline"] = {
                        "checkout": str(args.baseline), "commit": _commit(args.baseline),
                        "click_to_segments_s": summary(baseline, "click_to_segments_s"),
                        "to_result_s": summary(baseline, "to_result_s")}
        started = time.perf_counter()
        engine = WarmEngine(args.model, idle_minutes=0.05)
        engine.start()
        engine.wait_ready(600)
        report["warm"]["start_to_ready_s"] = round(time.perf_counter() - started, 3)
        report["warm"]["ready"] = {k: engine.ready_event.get(k) for k in ("load_seconds", "warm_up_seconds", "rss_mb", "peak_rss_mb")}
        for name, scan in scans.items():
            runs = [warm_once(engine, scan, work / f"warm-{name}-{i}") for i in range(args.repeats)]
            report["warm"][name] = {"click_to_segments_s": summary(runs, "click_to_segments_s"),
                                    "network_s": summary(runs, "network_s"), "rss_mb_after": runs[-1]["rss_mb"],
                                    "peak_rss_mb": runs[-1]["peak_rss_mb"]}
        engine.wait_ended(600)  # the idle exit (3 s): every byte it held goes back to the system
        report["warm"]["idle_exit"] = {"reason": (engine.exit_event or {}).get("reason"),
                                       "process_gone": engine.process.poll() is not None, "rss_mb_after_idle": 0.0}
    report["load_average_end"] = os.getloadavg()
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
