"""The child-process runner for real: streamed events, cancel without orphans or leftovers, crashes."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SCIsegLib.runner import RunnerError, RunOptions, SegmentationRun
from SCIsegLib.phantom import SAGITTAL, Acquisition, make_phantom
from SCIsegLib.volume import write_image_atomic


def new_run(tmp_path: Path, model: str, **options) -> SegmentationRun:
    return SegmentationRun(
        RunOptions(model=model, device="cpu", **options), log_dir=tmp_path / "logs", work_root=tmp_path
    )


def test_events_stream_and_outputs_arrive(tmp_path: Path, demo_model_path: Path) -> None:
    run = new_run(tmp_path, str(demo_model_path))
    case = make_phantom(seed=21, acquisition=SAGITTAL, lesions=1)
    write_image_atomic(case.image, run.input_path)
    run.start()
    events = run.wait(timeout_s=300)
    progress = [e["fraction"] for e in events if e["event"] == "progress"]
    assert len(progress) >= 4 and progress == sorted(progress) and progress[-1] == 1.0
    outputs = run.outputs()
    cord = sitk.ReadImage(str(outputs["sc"]))
    assert cord.GetSize() == case.image.GetSize()
    assert np.count_nonzero(sitk.GetArrayViewFromImage(cord)) > 1000
    assert run.log_path.is_file()
    run.cleanup()
    assert not run.work_dir.exists()


def test_cancel_mid_run_leaves_no_process_and_no_files(tmp_path: Path, demo_model_path: Path) -> None:
    run = new_run(tmp_path, str(demo_model_path), extra_arguments=["--threads", "1"])
    big = make_phantom(seed=22, acquisition=Acquisition(spacing_mm=(1.0, 0.8, 0.8), fov_mm=(48, 80, 200)), lesions=1)
    write_image_atomic(big.image, run.input_path)
    run.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(e.get("stage") == "predict" and e["message"].startswith("tile") for e in run.poll()):
            break
        time.sleep(0.05)
    else:
        pytest.fail("no tile event arrived")
    pid = run.process.pid
    started = time.monotonic()
    run.cancel()
    assert time.monotonic() - started < 10
    assert run.process.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # no process of the child's group is left
    assert not run.work_dir.exists()
    with pytest.raises(RunnerError, match="cancelled"):
        run.outputs()


def test_a_failing_child_reports_its_error_and_keeps_the_log(tmp_path: Path) -> None:
    run = new_run(tmp_path, "no-such-model")
    write_image_atomic(make_phantom(seed=1).image, run.input_path)
    run.start()
    run.wait(timeout_s=120)
    with pytest.raises(RunnerError, match="no model named 'no-such-model'") as caught:
        run.outputs()
    assert str(run.log_path) in str(caught.value)
    assert "no model named" in run.log_tail()


def test_a_crashing_child_is_reported_with_its_exit_code(tmp_path: Path) -> None:
    crashing = tmp_path / "crashing-python"
    crashing.write_text('#!/bin/sh\necho \'{"event": "progress", "fraction": 0.1, "stage": "load"}\'\necho "Segmentation fault" >&2\nkill -SEGV $$\n')
    crashing.chmod(crashing.stat().st_mode | stat.S_IEXEC)
    run = SegmentationRun(RunOptions(), python_executable=str(crashing), log_dir=tmp_path / "logs", work_root=tmp_path)
    write_image_atomic(make_phantom(seed=1).image, run.input_path)
    run.start()
    events = run.wait(timeout_s=30)
    assert events[0]["fraction"] == 0.1
    with pytest.raises(RunnerError, match=r"stopped unexpectedly \(exit code -11\)"):
        run.outputs()
    assert "Segmentation fault" in run.log_tail()


def test_start_needs_the_input_image(tmp_path: Path) -> None:
    run = new_run(tmp_path, "sciseg-demo")
    with pytest.raises(RunnerError, match="no input image"):
        run.start()
