"""The warm engine: one model load for many requests, cancel, refusal, restart, idle exit, a killed parent.

Real child processes (``python -m SCIsegLib engine serve``) with the bundled demo model on SCT's t2 scan and
a full field-of-view scan of ../shared/data; every wait is on state (events, process exit), the timeouts are
only safety nets.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

from conftest import DEMO_MODEL, REPOSITORY, shared_file
from process_tree import wait_until_gone
from SCIsegLib.inference.warm import DEFAULT_SETTINGS, HeldModel, normalized_settings, refusal
from SCIsegLib.models import read_model, resolve_model
from SCIsegLib.warm_client import WarmEngine, choose_segment_path, engine_command

T2 = "sct_testing_data/t2/t2.nii.gz"
FULL_FOV = "sct_2014_errsm/errsm_21/t2.nii.gz"
SAFETY_S = 300.0


def masks(folder: Path, stem: str = "t2") -> dict[str, sitk.Image]:
    return {name: sitk.ReadImage(str(folder / f"{stem}_{name}_seg.nii.gz")) for name in ("sc", "lesion")}


def same_image(a: sitk.Image, b: sitk.Image) -> bool:
    return (np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))
            and a.GetOrigin() == b.GetOrigin() and a.GetSpacing() == b.GetSpacing() and a.GetDirection() == b.GetDirection())


@pytest.fixture(scope="module")
def engine():
    warm = WarmEngine("sciseg-demo", idle_minutes=10.0)
    warm.start()
    yield warm
    warm.close()


@pytest.fixture(scope="module")
def two_requests(engine, tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    scan = shared_file(T2)
    folders = [tmp_path_factory.mktemp("warm-a"), tmp_path_factory.mktemp("warm-b")]
    finals = []
    for folder in folders:
        request = engine.segment([scan], folder)
        events = request.wait(SAFETY_S)
        assert request.outcome == "done", request.final
        assert any(e["event"] == "progress" and e["stage"] == "predict" for e in events)
        finals.append(request.final)
    return folders[0], folders[1], finals


def test_two_requests_answered_with_one_model_load(engine, two_requests):
    first, second, finals = two_requests
    assert engine.starts == 1 and engine.ready_event["loads"] == 1
    assert [f["engine_loads"] for f in finals] == [1, 1]
    assert finals[0]["pid"] == finals[1]["pid"] == engine.pid
    for name, image in masks(first).items():
        assert same_image(image, masks(second)[name]), name
    assert masks(first)["sc"].GetSize() == (60, 55, 52)


def test_warm_outputs_equal_the_cold_command(two_requests, tmp_path):
    warm_folder = two_requests[0]
    cold = subprocess.run([sys.executable, "-m", "SCIsegLib", "segment", str(shared_file(T2)), "--model", "sciseg-demo",
                           "-o", str(tmp_path), "--progress", "none"], cwd=REPOSITORY, capture_output=True, text=True,
                          timeout=SAFETY_S, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    assert cold.returncode == 0, cold.stderr
    warm, cold_masks = masks(warm_folder), masks(tmp_path)
    assert np.count_nonzero(sitk.GetArrayViewFromImage(warm["sc"])) > 1000
    for name in warm:
        assert same_image(warm[name], cold_masks[name]), name


def test_cancel_within_a_request_writes_nothing_and_the_engine_goes_on(engine, two_requests, tmp_path):
    request = engine.segment([shared_file(FULL_FOV)], tmp_path / "cancelled")
    seen: list[dict] = []
    while not request.finished.is_set():
        seen += request.poll()
        if any(e["event"] == "progress" and e["message"].startswith("tile ") for e in seen):
            request.cancel()
            break
        request.finished.wait(0.02)
    request.wait(SAFETY_S)
    assert request.outcome == "cancelled", request.final
    folder = tmp_path / "cancelled"
    assert not folder.exists() or not [p.name for p in folder.iterdir() if not p.name.startswith(".")]
    after = engine.segment([shared_file(T2)], tmp_path / "after")
    after.wait(SAFETY_S)
    assert after.outcome == "done" and after.final["engine_loads"] == 1 and after.final["pid"] == engine.pid
    assert same_image(masks(tmp_path / "after")["sc"], masks(two_requests[0])["sc"])


def test_refuses_a_request_for_another_model_weights_or_settings(engine, two_requests, tmp_path):
    copy = tmp_path / "copy-of-demo"
    shutil.copytree(DEMO_MODEL, copy)
    base = {"op": "segment", "inputs": [str(shared_file(T2))], "output": str(tmp_path / "out")}
    cases = {
        "other": {"model": "no-such-model"},
        "other folder": {"model": str(copy)},
        "other weights": {"model": "sciseg-demo", "weights_sha256": "0" * 64},
        "other settings": {"model": "sciseg-demo", "settings": {"tta": True}},
    }
    for case, fields in cases.items():
        request = engine.send_request({**base, **fields})
        request.wait(SAFETY_S)
        assert request.outcome == "refused", (case, request.final)
        message = request.final["message"]
        assert message.count(". ") == 0 and message.endswith("."), message  # one sentence
    assert not (tmp_path / "out").exists()
    assert engine.state == "ready" and engine.starts == 1


def test_refusal_when_the_weights_changed_on_disk(tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, copy)
    model = read_model(copy, name="copy")
    held = HeldModel.of(model)
    settings = normalized_settings({})
    request = {"model": str(copy)}
    assert refusal(held, settings, request, lambda name: read_model(name, name="copy")) is None
    checkpoint = model.checkpoint_files()[0]
    with open(checkpoint, "ab") as handle:
        handle.write(b"\0")
    sentence = refusal(held, settings, request, lambda name: read_model(name, name="copy"))
    assert sentence is not None and "changed on disk" in sentence


def test_restarts_after_the_engine_is_killed(engine, two_requests, tmp_path):
    request = engine.segment([shared_file(FULL_FOV)], tmp_path / "killed")
    while not any(e["event"] == "progress" and e["stage"] == "predict" for e in request.poll()):
        assert not request.finished.wait(0.02), request.final
    old_pid = engine.pid
    os.kill(old_pid, signal.SIGKILL)
    engine.process.wait(SAFETY_S)
    assert engine.state == "ended"
    assert choose_segment_path(engine.state, True) == "warm"  # it restarts on the next request
    again = engine.segment([shared_file(T2)], tmp_path / "again")  # at once: the old process's events may still come
    request.wait(SAFETY_S)
    again.wait(SAFETY_S)
    assert request.outcome == "crashed" and engine.crashes == 1
    assert again.outcome == "done", again.final
    assert engine.pid != old_pid and engine.starts == 2 and again.final["engine_loads"] == 1
    assert same_image(masks(tmp_path / "again")["sc"], masks(two_requests[0])["sc"])


def test_exits_when_idle_and_frees_its_memory(tmp_path):
    warm = WarmEngine("sciseg-demo", idle_minutes=0.005)  # 0.3 s
    warm.start()
    try:
        assert warm.wait_ended(SAFETY_S) and warm.process.returncode == 0
        assert warm.exit_event is not None and warm.exit_event["reason"] == "idle", warm.failure
        assert warm.state == "ended" and warm.crashes == 0
        assert warm.ready_event["rss_mb"] > 100  # what it held, given back by the exit
    finally:
        warm.close()


PARENT = textwrap.dedent("""
    import sys
    from SCIsegLib.warm_client import WarmEngine
    engine = WarmEngine("sciseg-demo")
    engine.start()
    print(engine.pid, flush=True)
    print("ready" if engine.wait_ready(300) else "not ready", flush=True)
    request = engine.segment([sys.argv[1]], sys.argv[2])
    while not any(e.get("stage") == "predict" for e in request.poll()) and not request.finished.wait(0.02):
        pass
    print("busy" if not request.finished.is_set() else request.outcome, flush=True)
    sys.stdin.read()  # until killed
""")


def test_the_engine_ends_with_a_killed_parent(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(shared_file(FULL_FOV)), str(tmp_path / "out")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    try:
        engine_pid = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "ready"
        assert parent.stdout.readline().strip() == "busy"  # killed in the middle of a request
        engine = psutil.Process(engine_pid)
        assert engine.is_running() and engine.status() != psutil.STATUS_ZOMBIE
        group = os.getpgid(engine_pid) if hasattr(os, "getpgid") else None
        parent.kill()  # SIGKILL: the parent cannot do anything
        parent.wait()

        def left() -> list:
            alive = []
            for process in psutil.process_iter(["pid", "status"]):
                try:
                    if process.info["status"] == psutil.STATUS_ZOMBIE:
                        continue
                    if process.pid == engine_pid or (group is not None and os.getpgid(process.pid) == group):
                        alive.append(process)
                except (psutil.Error, ProcessLookupError):
                    continue
            return alive

        assert wait_until_gone(left, timeout_s=SAFETY_S) == []
        assert not list((tmp_path / "out").glob("*_seg.nii.gz"))  # the request was cancelled, nothing published
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_choose_segment_path():
    assert choose_segment_path("ready", True) == "warm"
    assert choose_segment_path("busy", True) == "warm"
    assert choose_segment_path("starting", True) == "warm"
    assert choose_segment_path("ended", True) == "warm"
    assert choose_segment_path("ready", False) == "cold"
    assert choose_segment_path("absent", True) == "cold"
    assert choose_segment_path("failed", True) == "cold"
    with pytest.raises(ValueError):
        choose_segment_path("warmish", True)


def test_engine_command_and_settings():
    command = engine_command("sciseg-v2", {"device": "cpu", "tta": True, "folds": [0, 1], "step_size": 0.5}, 5, "py")
    assert command[:5] == ["py", "-m", "SCIsegLib", "engine", "serve"]
    assert command[command.index("--device") + 1] == "cpu" and "--tta" in command
    assert command[command.index("--folds") + 1] == "0 1" and command[command.index("--idle-minutes") + 1] == "5.0"
    with pytest.raises(ValueError):
        engine_command("m", {"colour": "red"}, 5)
    assert normalized_settings({"folds": [0, "all"]})["folds"] == ["0", "all"]
    assert set(normalized_settings(None)) == set(DEFAULT_SETTINGS)
    with pytest.raises(ValueError):
        normalized_settings({"colour": 1})
    assert resolve_model("sciseg-demo").path.resolve() == DEMO_MODEL.resolve()


def test_a_cancelled_run_leaves_no_blocked_tile_feeder(demo_model_path):
    """nnU-Net's tile-feeding thread of a cancelled run is released (it holds the preprocessed image)."""
    import threading

    from SCIsegLib.errors import CancelledError
    from SCIsegLib.inference import CancelToken, InferenceSettings, NnUNetEngine
    from SCIsegLib.inference.warm import _release_tile_feeders
    from SCIsegLib.phantom import Acquisition, make_phantom
    from SCIsegLib.segment import segment_image

    def feeders() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if getattr(getattr(t, "_target", None), "__name__", "") == "producer"
                and t.is_alive()]

    engine = NnUNetEngine(read_model(demo_model_path), InferenceSettings(device="cpu", engine="reference"))
    large = make_phantom(seed=8, acquisition=Acquisition(spacing_mm=(1.0, 1.0, 1.0), fov_mm=(40, 72, 200)), lesions=1)
    token = CancelToken()

    def cancel_at_first_tile(event) -> None:
        if event.message.startswith("tile "):
            token.cancel()

    with pytest.raises(CancelledError):
        segment_image(large.image, engine, progress=cancel_at_first_tile, cancel=token)
    assert feeders(), "the cancelled run left no feeder: this test no longer tests anything"
    _release_tile_feeders()
    assert feeders() == []


def test_an_engine_for_an_unknown_model_fails_with_one_sentence_and_the_cold_path_is_chosen():
    warm = WarmEngine("no-such-model")
    warm.start()
    try:
        assert warm.wait_ended(SAFETY_S) and warm.process.returncode == 2
        assert warm.state == "failed" and "no-such-model" in warm.failure, warm.failure
        assert choose_segment_path(warm.state, True) == "cold"
        with pytest.raises(RuntimeError):
            warm.segment(["x.nii.gz"], "out")
    finally:
        warm.close()
