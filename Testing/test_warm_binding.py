"""The warm engine behind the Slicer panel's Segment and the review worker's segmentation.

The panel's controller on slicer-core's real MRML (a recording view, as Testing/test_panel_controller.py) and the
review session's ``start_segmentation``, with real engines (``python -m SCIsegLib engine serve``) and cold children
on SCT's t2 scan and the bundled demo model: warm when the engine is ready, cold when there is none, cold for the
click whose request the engine refused or died during (the engine restarts), the engine ended by the panel's
cleanup and with a killed review worker. Waits are on state; timeouts are safety nets.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is a test dependency (pip install .[test])")

from conftest import DEMO_MODEL, REPOSITORY, shared_file  # noqa: E402
from process_tree import wait_until_gone  # noqa: E402
from slicer_scene import PanelParameters, RecordingView, load_with_slicer  # noqa: E402
from SCIsegLib import mrml, panel_controller  # noqa: E402
from SCIsegLib.panel import Action  # noqa: E402
from SCIsegLib.review.launcher import READY_PREFIX  # noqa: E402
from SCIsegLib.panel_warm import PanelEngines, why_not_warm  # noqa: E402
from SCIsegLib.runner import RunOptions, SegmentationRun  # noqa: E402
from SCIsegLib.warm_client import WarmEngines  # noqa: E402
from SCIsegLib.warm_run import EngineRun  # noqa: E402
from test_panel_controller import wait_for_jobs  # noqa: E402

T2 = "sct_testing_data/t2/t2.nii.gz"
FULL_FOV = "sct_2014_errsm/errsm_21/t2.nii.gz"
SAFETY_S = 300.0


@pytest.fixture(scope="module")
def engines():
    warm = WarmEngines(idle_minutes=10.0)
    yield warm
    warm.close()


def warm_controller(scene, logic, engines, model: str = "sciseg-demo", **checks):
    view = RecordingView(scene)
    controller = panel_controller.PanelController(scene, logic, view, sys.executable, lambda action: True,
                                                  engines=PanelEngines(sys.executable, engines=engines, **checks))
    controller.parameters = PanelParameters(model=model)
    return controller, view


def scene_labels(controller) -> np.ndarray:
    """The segments now in the MRML scene, as SCIseg labels (z, y, x)."""
    image = mrml.export_sciseg_label_map(controller.logic, controller.scene, controller.parameters.segmentation,
                                         controller.parameters.inputVolume)
    return sitk.GetArrayFromImage(image)


def segment_and_wait(controller) -> EngineRun | SegmentationRun:
    controller.segment()
    run = controller.state.jobs[Action.SEGMENT].run
    wait_for_jobs(controller, SAFETY_S)
    return run


def test_panel_segments_warm_when_ready_cold_when_the_engine_dies_and_restarts_it(scene, engines, tmp_path):
    scene, logic = scene
    controller, view = warm_controller(scene, logic, engines)
    controller.parameters.inputVolume = load_with_slicer(scene, shared_file(T2))
    controller.poll(probe=lambda: None)  # the module's timer: the engine starts in the background
    [engine] = engines.engines.values()
    assert engine.holds("sciseg-demo", {"device": "auto", "step_size": 0.5, "tta": False}) and engine.starts == 1
    assert engine.wait_ready(SAFETY_S), engine.failure

    warm = segment_and_wait(controller)
    assert isinstance(warm, EngineRun) and warm.path == "warm" and warm.fallback is None
    assert warm.result["pid"] == engine.pid and warm.result["engine_loads"] == 1
    warm_labels = scene_labels(controller)
    assert warm_labels.shape == (52, 55, 60) and np.count_nonzero(warm_labels) > 1000
    assert view.per_mille == 1000 and view.said[-1].startswith("Done")

    # The engine dies during the next request (frozen, so that the request is in its pipe, then killed): that click
    # is segmented by a cold child, with the same masks; the timer restarts the engine in the background.
    first_pid = engine.pid
    os.kill(first_pid, signal.SIGSTOP)
    controller.segment()
    crashed = controller.state.jobs[Action.SEGMENT].run
    assert crashed.path == "warm"
    os.kill(first_pid, signal.SIGKILL)
    wait_for_jobs(controller, SAFETY_S)
    assert crashed.path == "cold" and "ended during this request" in crashed.fallback, crashed.fallback
    assert crashed.cold.returncode == 0 and view.said[-1].startswith("Done")
    assert any("Segmenting in a new process instead" in line for line in view.logged)
    np.testing.assert_array_equal(scene_labels(controller), warm_labels)
    controller.poll(probe=lambda: None)
    assert engine.crashes == 1 and engine.starts == 2 and engine.pid != first_pid
    assert engine.wait_ready(SAFETY_S), engine.failure
    again = segment_and_wait(controller)
    assert again.path == "warm" and again.result["pid"] == engine.pid
    np.testing.assert_array_equal(scene_labels(controller), warm_labels)

    # Cancel: the panel shows it at once, nothing is imported, the engine stays loaded. (The click is frozen in the
    # engine's pipe, so that the cancel always arrives while the request is queued or at its first tiles.)
    shown = controller.parameters.segmentation
    controller.parameters.inputVolume = load_with_slicer(scene, shared_file(FULL_FOV))
    os.kill(engine.pid, signal.SIGSTOP)
    controller.segment()
    cancelled = controller.state.jobs[Action.SEGMENT].run
    controller.cancel()
    os.kill(engine.pid, signal.SIGCONT)
    wait_for_jobs(controller, SAFETY_S)
    assert cancelled.path == "warm" and cancelled.request.outcome == "cancelled", cancelled.request.final
    assert view.said[-1] == "Cancelled: nothing was changed."
    assert controller.parameters.segmentation is shown and not cancelled.work_dir.exists()
    assert engine.state == "ready" and engine.pid == again.result["pid"], (engine.state, engine.exit_event)

    # The engine: a request cancelled while it waits behind another is answered at once and never runs.
    running = engine.segment([shared_file(FULL_FOV)], tmp_path / "running")
    waiting = engine.segment([shared_file(T2)], tmp_path / "waiting")
    waiting.cancel()
    waiting.wait(SAFETY_S)
    assert waiting.outcome == "cancelled" and "before it started" in waiting.final["message"]
    assert not running.finished.is_set()  # answered while the other one still runs
    running.wait(SAFETY_S)
    assert running.outcome == "done" and running.final["engine_loads"] == 1
    assert not (tmp_path / "waiting").exists()

    # The module's cleanup (Reload, Slicer exit) ends the engine.
    process = psutil.Process(engine.pid)
    controller.shutdown()
    assert wait_until_gone(lambda: [process] if process.is_running() and process.status() != psutil.STATUS_ZOMBIE
                           else [], SAFETY_S) == []


def test_panel_click_goes_cold_when_the_engine_refuses_weights_that_changed_on_disk(scene, tmp_path):
    import torch

    scene, logic = scene
    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model)
    own = WarmEngines(idle_minutes=10.0)
    controller, view = warm_controller(scene, logic, own, model=str(model))
    try:
        controller.parameters.inputVolume = load_with_slicer(scene, shared_file(T2))
        controller.poll(probe=lambda: None)
        [engine] = own.engines.values()
        assert engine.wait_ready(SAFETY_S), engine.failure
        loaded = engine.ready_event["weights_sha256"]
        checkpoint = next(model.rglob("checkpoint_final.pth"))  # new weights installed under the same folder
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        saved["network_weights"] = {k: v * 1.0001 if v.is_floating_point() else v for k, v in saved["network_weights"].items()}
        torch.save(saved, checkpoint)

        refused = segment_and_wait(controller)
        assert refused.path == "cold" and "changed on disk" in refused.fallback, refused.fallback
        assert refused.cold.returncode == 0 and np.count_nonzero(scene_labels(controller)) > 1000
        controller.poll(probe=lambda: None)  # the engine that held the old weights was ended: it starts again
        assert engine.starts == 2 and engine.crashes == 0
        assert engine.wait_ready(SAFETY_S), engine.failure
        assert engine.ready_event["weights_sha256"] != loaded  # it holds the new weights
        fresh = segment_and_wait(controller)
        assert fresh.path == "warm" and fresh.fallback is None
    finally:
        controller.shutdown()
    assert engine.process.poll() is not None


def test_panel_goes_cold_without_an_engine_and_a_click_while_it_loads_waits_for_it(scene, tmp_path):
    scene, logic = scene
    options = RunOptions(model="sciseg-demo")
    assert why_not_warm(options) is None
    assert why_not_warm(options, missing=lambda modules: ["torch"]) == "no warm engine: torch not installed."
    assert "no-such-model" in why_not_warm(RunOptions(model="no-such-model"))
    assert "arguments" in why_not_warm(RunOptions(model="sciseg-demo", extra_arguments=["--folds", "0"]))

    # torch missing here: no engine is started; Segment starts the cold child as before.
    nothing = WarmEngines()
    controller, view = warm_controller(scene, logic, nothing, missing=lambda modules: ["torch"])
    controller.parameters.inputVolume = load_with_slicer(scene, shared_file(T2))
    controller.poll(probe=lambda: None)
    assert nothing.engines == {} and controller.engines.checks
    controller.segment()
    assert type(controller.state.jobs[Action.SEGMENT].run) is SegmentationRun
    controller.cancel()
    wait_for_jobs(controller, SAFETY_S)
    # torch arrives (the install in ready()): checked again, the engine starts. A click while it loads waits for it
    # (it began loading before a cold child could) and says so.
    controller.engines.missing = lambda modules: []
    controller._forget_engine_checks()
    controller.poll(probe=lambda: None)
    [engine] = nothing.engines.values()
    assert engine.state == "starting"
    controller.segment()
    run = controller.state.jobs[Action.SEGMENT].run
    assert isinstance(run, EngineRun) and run.path == "warm"
    first = run.poll()
    assert first[0]["stage"] == "load" and first[0]["message"].startswith("Loading the model"), first
    wait_for_jobs(controller, SAFETY_S)
    assert run.path == "warm" and run.result["engine_loads"] == 1 and np.count_nonzero(scene_labels(controller)) > 1000
    controller.shutdown()
    assert engine.process.poll() is not None and controller.state.jobs == {}


def test_review_segmentation_uses_the_workers_warm_engine_when_it_holds_the_model(engines, tmp_path):
    from SCIsegLib.review.paths import case_image_path, prediction_paths
    from SCIsegLib.review.session import publish_prediction, start_segmentation

    root = tmp_path / "bids"
    image = root / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    image.parent.mkdir(parents=True)
    shutil.copyfile(shared_file(T2), image)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    case_id = "sub-01/anat/sub-01_T2w"
    assert case_image_path(root, case_id) == image

    warm = start_segmentation(root, case_id, "sciseg-demo", engines=engines)
    assert isinstance(warm, EngineRun) and warm.path == "warm"
    warm.wait(SAFETY_S)
    engine = engines.get("sciseg-demo", {"device": "auto", "step_size": 0.5, "tta": False}, start=False)
    assert warm.result["pid"] == engine.pid and warm.fallback is None
    targets = publish_prediction(root, case_id, warm)
    assert targets == prediction_paths(root, case_id) and not warm.work_dir.exists()
    warm_cord = sitk.GetArrayFromImage(sitk.ReadImage(str(targets["sc"])))
    assert warm_cord.shape == (52, 55, 60) and np.count_nonzero(warm_cord) > 1000

    cold = start_segmentation(root, case_id, "sciseg-demo")  # no engine (a worker without one): the child
    assert type(cold) is SegmentationRun
    cold.cancel(grace_s=1.0)
    cold.wait(SAFETY_S)


def test_the_review_worker_loads_an_engine_only_for_a_dataset_with_a_case_to_segment(tmp_path):
    from SCIsegLib.review.cases import list_cases
    from SCIsegLib.review.worker import engine_wanted

    root = tmp_path / "bids"
    image = root / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    image.parent.mkdir(parents=True)
    shutil.copyfile(shared_file(T2), image)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    assert engine_wanted([case.as_dict() for case in list_cases(root)])
    for name in ("sc", "lesion"):  # predicted: no engine held for nothing (the first segmentation would start it)
        prediction = root / "derivatives" / "sciseg" / "sub-01" / "anat" / f"sub-01_T2w_{name}_seg.nii.gz"
        prediction.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz"), prediction)
    assert not engine_wanted([case.as_dict() for case in list_cases(root)])
    assert not engine_wanted([])


def test_the_review_workers_engine_ends_with_a_killed_worker(tmp_path):
    root = tmp_path / "bids"
    image = root / "sub-01" / "anat" / "sub-01_T2w.nii.gz"  # a case without a prediction: the worker loads an engine
    image.parent.mkdir(parents=True)
    shutil.copyfile(shared_file(T2), image)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    worker = subprocess.Popen([sys.executable, "-m", "SCIsegLib.review.worker", "--bids", str(root), "--model", "sciseg-demo"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY)}, start_new_session=True)
    try:
        line = worker.stdout.readline()
        assert line.startswith(READY_PREFIX), line

        def engine_children() -> list[psutil.Process]:
            found = []
            for process in psutil.Process(worker.pid).children(recursive=True):
                try:
                    if "engine" in process.cmdline() and "serve" in process.cmdline():
                        found.append(process)
                except psutil.Error:
                    continue
            return found

        assert wait_until_gone(lambda: [] if engine_children() else ["not started yet"], SAFETY_S) == []
        [engine] = engine_children()
        worker.kill()  # SIGKILL: the worker can do nothing; its pipe to the engine closes, its guardian ends its group
        worker.wait()
        assert wait_until_gone(lambda: [engine] if engine.is_running() and engine.status() != psutil.STATUS_ZOMBIE
                               else [], SAFETY_S) == []
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_the_slicer_module_gives_its_controller_the_warm_engines():
    """SCIseg.py (which cannot be imported without Slicer's Qt) builds the controller with PanelEngines."""
    import ast

    tree = ast.parse((REPOSITORY / "SCIseg" / "SCIseg.py").read_text())
    calls = [ast.unparse(call) for call in ast.walk(tree) if isinstance(call, ast.Call)
             and ast.unparse(call.func) == "panel_controller.PanelController"]
    assert len(calls) == 1 and "panel_warm.PanelEngines(self.logic.pythonExecutable())" in calls[0], calls
