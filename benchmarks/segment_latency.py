"""Segment click to segments: the cold `sciseg segment` child against the warm engine, with memory figures.

What a rater waits for after a Segment click, measured the way the Slicer panel and the review app see it:

* **cold**: ``python -m SCIsegLib segment SCAN --model M --progress jsonl`` started, until it exited
  (the panel imports the masks when the child ended), then the masks read back (SimpleITK);
* **warm**: a request sent to a ready :class:`SCIsegLib.warm_client.WarmEngine` until its ``result`` event,
  then the masks read back; plus the engine's start-to-ready time, its resident memory when ready and its
  peak, and what is left after its idle exit (nothing: the process is gone).

Then the two user-facing paths, each warm and cold (``--paths``):

* **panel**: the Slicer panel's controller on slicer-core (no Qt): ``PanelController.segment()`` (the Segment
  click) until the segmentation node is in the MRML scene, polling every 200 ms as the widget's timer does (the
  first poll 200 ms after the click: the worst phase). Warm: the controller's ``PanelEngines`` started the engine
  from its first timer tick (the module opening); ``first_click`` is a click at that moment, while the engine
  loads. Cold: the controller without engines (a ``sciseg segment`` child per click, as before).
* **review**: the review worker's app in this process (``ReviewApp``, offscreen): ``open_case`` of a case without
  a prediction until the case is open in the app's scene and state (what the page shows next; the browser's
  render of it is ``case_click_to_first_image_s`` in ``benchmarks/review_app.json``). The app polls its run every
  300 ms. Warm: the worker's ``WarmEngines`` (started with the worker); cold: none.

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
from SCIsegLib.runner import RunOptions  # noqa: E402
from SCIsegLib.warm_client import WarmEngine, WarmEngines  # noqa: E402
from SCIsegLib.warm_run import engine_settings  # noqa: E402

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


POLL_S = 0.2  # the Slicer widget's timer


class QuietView:
    """The panel's view (``SCIsegLib.panel_view.PanelView``) doing nothing: the benchmark times the controller."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def inputs(self):
        from SCIsegLib.panel import PanelInputs

        return PanelInputs()

    def trying(self, failure: str):
        import contextlib

        return contextlib.nullcontext()


def panel_parameters(model: str):
    from types import SimpleNamespace

    return SimpleNamespace(inputVolume=None, segmentation=None, model=model, device="auto", stepSize=0.5,
                           testTimeAugmentation=False, keepLargestCord=False, fillHoles=False, lesionInsideCord=False,
                           nliSlice=-1)


def panel_click(controller, volume) -> dict:
    """One Segment click on ``volume`` until its segmentation node is in the scene, polled as the widget does."""
    import numpy as np

    from SCIsegLib import mrml
    from SCIsegLib.panel import Action

    controller.parameters.inputVolume = volume
    started = time.perf_counter()
    controller.segment()
    run = controller.state.jobs[Action.SEGMENT].run
    while controller.state.jobs:
        time.sleep(POLL_S)
        controller.poll(probe=lambda: None)
    elapsed = time.perf_counter() - started
    node = controller.parameters.segmentation
    labels = mrml.export_sciseg_label_map(controller.logic, controller.scene, node, volume)
    assert node is not None and np.count_nonzero(sitk.GetArrayViewFromImage(labels)) > 0, "no segments in the scene"
    controller.scene.RemoveNode(node)
    result = getattr(run, "result", None) or {}
    return {"click_to_segments_in_scene_s": round(elapsed, 3), "path": getattr(run, "path", "cold"),
            "rss_mb": result.get("rss_mb"), "peak_rss_mb": result.get("peak_rss_mb")}


def panel_series(scans: dict[str, Path], model: str, repeats: int, warm: bool) -> dict:
    """The Slicer panel's Segment click to segments in the MRML scene (slicer-core), warm or cold."""
    import slicer

    from SCIsegLib.panel_controller import PanelController
    from SCIsegLib.panel_warm import PanelEngines

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    from Testing.slicer_scene import load_with_slicer  # File > Add Data's way, as the panel's tests load scans

    volumes = {name: load_with_slicer(scene, scan) for name, scan in scans.items()}
    engines = WarmEngines(idle_minutes=10.0) if warm else None
    controller = PanelController(scene, logic, QuietView(), sys.executable, lambda action: True,
                                 engines=PanelEngines(sys.executable, engines=engines) if warm else None)
    controller.parameters = panel_parameters(model)
    report: dict = {}
    try:
        if warm:
            opened = time.perf_counter()
            controller.poll(probe=lambda: None)  # the module opens: its first timer tick starts the engine
            report["first_click_at_module_open"] = {"t2": panel_click(controller, volumes["t2"])}
            [engine] = engines.engines.values()
            engine.wait_ready(600)
            report["module_open_to_engine_ready_s"] = round(time.perf_counter() - opened, 3)
            report["ready"] = {k: engine.ready_event.get(k) for k in ("load_seconds", "warm_up_seconds", "rss_mb", "peak_rss_mb")}
        for name, volume in volumes.items():
            runs = [panel_click(controller, volume) for _ in range(repeats)]
            report[name] = {"click_to_segments_in_scene_s": summary(runs, "click_to_segments_in_scene_s"),
                            "paths": [r["path"] for r in runs]}
            if warm:
                report[name].update({"rss_mb_after": runs[-1]["rss_mb"], "peak_rss_mb": runs[-1]["peak_rss_mb"]})
    finally:
        closed = time.perf_counter()
        controller.shutdown()
        if warm:
            report["shutdown_s"] = round(time.perf_counter() - closed, 3)
            report["engine_gone_after_shutdown"] = all(e.process is None or e.process.poll() is not None
                                                      for e in engines.engines.values())
    return report


def review_series(scans: dict[str, Path], model: str, repeats: int, work: Path) -> dict:
    """The review app's segmentation of a case without a prediction until the case is open, cold then warm."""
    import asyncio
    import shutil

    from trame.app import get_server

    from SCIsegLib.review.app import ReviewApp, headless_rendering
    from SCIsegLib.review.paths import prediction_paths

    headless_rendering()
    root = work / "bids"
    cases = {}
    for index, (name, scan) in enumerate(scans.items(), start=1):
        image = root / f"sub-{index:02d}" / "anat" / f"sub-{index:02d}_T2w.nii.gz"
        image.parent.mkdir(parents=True)
        shutil.copyfile(scan, image)
        cases[name] = f"sub-{index:02d}/anat/sub-{index:02d}_T2w"
    (root / "dataset_description.json").write_text('{"Name": "latency", "BIDSVersion": "1.9.0"}')
    app = ReviewApp(root, None, model, server=get_server("segment_latency", client_type="vue3"))

    async def click(case_id: str) -> float:
        for path in prediction_paths(root, case_id).values():
            path.unlink(missing_ok=True)
        started = time.perf_counter()
        app.open_case(case_id)
        while app.state.running or app.state.case_id != case_id:
            if app.state.error:
                raise RuntimeError(app.state.error)
            await asyncio.sleep(0.01)
        return round(time.perf_counter() - started, 3)

    async def series(warm: bool) -> dict:
        report: dict = {}
        if warm:
            started = time.perf_counter()
            app.session.engines = WarmEngines(idle_minutes=10.0)  # as the worker does when it starts
            engine = app.session.engines.get(model, engine_settings(RunOptions(model=model)))
            report["first_click_at_worker_start"] = {"t2": await click(cases["t2"])}
            engine.wait_ready(600)
            report["worker_start_to_engine_ready_s"] = round(time.perf_counter() - started, 3)
            report["ready"] = {k: engine.ready_event.get(k) for k in ("load_seconds", "warm_up_seconds", "rss_mb")}
        for name, case_id in cases.items():
            runs = [{"s": await click(case_id)} for _ in range(repeats)]
            report[name] = {"click_to_case_open_s": summary(runs, "s")}
        if warm:
            for engine in app.session.engines.engines.values():
                engine.close()
            app.session.engines = None
        return report

    async def reopen(case_id: str) -> float:
        """The same case opened from the prediction it now has (no segmentation): the app's own share."""
        app.state.case_id = ""
        started = time.perf_counter()
        app.open_case(case_id)
        while app.state.case_id != case_id:
            await asyncio.sleep(0.01)
        return round(time.perf_counter() - started, 3)

    async def both() -> dict:
        report = {"cold": await series(False), "warm": await series(True)}
        report["open_with_prediction"] = {name: {"s": summary([{"s": await reopen(case_id)} for _ in range(repeats)], "s")}
                                          for name, case_id in cases.items()}
        return report

    return asyncio.run(both())


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
    parser.add_argument("--paths", nargs="*", default=["cli", "panel", "review"], choices=["cli", "panel", "review"],
                        help="what to time: the CLI child and the engine (cli), the Slicer panel, the review app")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    scans = {name: args.data / relative for name, relative in SCANS.items()}
    report: dict = {"machine_note": "2 CPU cores shared with six other engineers' test suites and servers: the load "
                                    "average (start, end) says how loaded", "paths": args.paths, "label": args.label, "model": args.model, "cpu_count": os.cpu_count(), "machine": platform.machine(),
                    "load_average_start": os.getloadavg(), "repeats": args.repeats, "cold": {}, "warm": {}}
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(temporary)
        if "cli" in args.paths and not args.skip_cold:
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
        if "panel" in args.paths:
            report["panel"] = {"note": "Segment click to segments in the MRML scene (slicer-core), polled every 200 ms",
                               "cold": panel_series(scans, args.model, args.repeats, warm=False),
                               "warm": panel_series(scans, args.model, args.repeats, warm=True)}
        if "review" in args.paths:
            report["review"] = {"note": "open_case of a case without a prediction until it is open in the app",
                                **review_series(scans, args.model, args.repeats, work / "review")}
        if "cli" not in args.paths:
            report["load_average_end"] = os.getloadavg()
            args.output.write_text(json.dumps(report, indent=2) + "\n")
            print(json.dumps(report, indent=2))
            return
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
