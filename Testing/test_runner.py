"""The child-process runner for real: streamed events, a cancel that returns at once and stops the child
cooperatively (or by terminate/kill when it does not listen), no orphans or leftovers, crashes, model installs."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from local_http import LocalServer
from SCIsegLib import models, runner
from SCIsegLib.phantom import SAGITTAL, Acquisition, make_phantom
from SCIsegLib.runner import ChildCommand, DeviceProbe, ModelInstallRun, RunnerError, RunOptions, SegmentationRun
from SCIsegLib.volume import write_image_atomic
from test_models import make_model_folder, zip_folder

REPOSITORY = Path(__file__).resolve().parents[1]


def new_run(tmp_path: Path, model: str, **options) -> SegmentationRun:
    return SegmentationRun(
        RunOptions(model=model, device="cpu", **options), log_dir=tmp_path / "logs", work_root=tmp_path
    )


def script(tmp_path: Path, name: str, body: str) -> str:
    """An executable shell script standing in for the Python interpreter (it gets '-m SCIsegLib ...')."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def timed_cancel(child, **options) -> float:
    """Seconds of the caller's time that ``cancel()`` took."""
    started = time.perf_counter()
    child.cancel(**options)
    return time.perf_counter() - started


def poll_until_finished(child, timeout_s: float) -> tuple[list, float]:
    """Poll like the Slicer timer does; returns the events and the seconds it took. Every poll must be quick."""
    started = time.monotonic()
    events: list = []
    while not child.finished:
        before = time.perf_counter()
        result = child.poll()
        assert time.perf_counter() - before < 0.1, "poll() blocked"
        events += result if isinstance(result, list) else []
        assert time.monotonic() - started < timeout_s, f"the child did not end within {timeout_s} s"
        time.sleep(0.02)
    return events + (child.poll() if isinstance(child, runner._EventChild) else []), time.monotonic() - started


def assert_group_gone(pid: int, within_s: float = 2.0) -> None:
    """No process of the child's group is left (orphans killed by the runner may need a moment to be reaped by init)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"processes of the child's group {pid} are still alive")


def test_events_stream_and_outputs_arrive(tmp_path: Path, demo_model_path: Path) -> None:
    run = new_run(tmp_path, str(demo_model_path))
    case = make_phantom(seed=21, acquisition=SAGITTAL, lesions=1)
    write_image_atomic(case.image, run.input_path)
    run.start()
    events = run.wait(timeout_s=300)
    progress = [e["fraction"] for e in events if e["event"] == "progress"]
    assert len(progress) >= 4 and progress == sorted(progress) and progress[-1] == 1.0
    assert run.returncode == 0 and run.cancel_outcome is None
    outputs = run.outputs()
    cord = sitk.ReadImage(str(outputs["sc"]))
    assert cord.GetSize() == case.image.GetSize()
    assert np.count_nonzero(sitk.GetArrayViewFromImage(cord)) > 1000
    assert run.log_path.is_file() and run.log_path.read_text().startswith("$ ")
    run.cleanup()
    assert not run.work_dir.exists()


class RecordingRun(SegmentationRun):
    """Records what the output folder held when the cancel's clean-up ran (then cleans up as usual)."""

    left_behind: list[Path] | None = None

    def cleanup(self) -> None:
        if self.left_behind is None:
            self.left_behind = sorted(p for p in self.output_dir.rglob("*") if p.is_file()) if self.output_dir.exists() else []
        super().cleanup()


def test_cancel_mid_run_returns_at_once_and_the_child_stops_cooperatively(tmp_path: Path, demo_model_path: Path) -> None:
    run = RecordingRun(RunOptions(model=str(demo_model_path), device="cpu", extra_arguments=["--threads", "1"]),
                       log_dir=tmp_path / "logs", work_root=tmp_path)
    big = make_phantom(seed=22, acquisition=Acquisition(spacing_mm=(1.0, 0.8, 0.8), fov_mm=(48, 80, 200)), lesions=1)
    write_image_atomic(big.image, run.input_path)
    run.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(e.get("stage") == "predict" and e["message"].startswith("tile") for e in run.poll()):
            break
        time.sleep(0.02)
    else:
        pytest.fail("no tile event arrived")
    pid = run.process.pid
    assert timed_cancel(run, grace_s=10) < 0.1  # the caller's time: the child is still running
    events, seconds = poll_until_finished(run, timeout_s=15)
    assert run.cancel_outcome == "cooperative" and run.returncode == 130  # the cancel file, before any signal
    assert seconds < 10  # the next tile (1-2.5 s here, benchmarks/cancel_latency.py), before the terminate step
    assert any(e["event"] == "cancelled" for e in events) and not any(e["event"] == "result" for e in events)
    assert run.left_behind == []  # no output was written
    assert_group_gone(pid)
    assert not run.work_dir.exists() and not run.cancel_file.parent.exists()
    with pytest.raises(RunnerError, match="cancelled"):
        run.outputs()


def test_a_cancel_right_after_start_still_stops_the_child_cooperatively(tmp_path: Path) -> None:
    """The child looks for the cancel file as soon as it starts: no signal is ever needed."""
    run = new_run(tmp_path, "sciseg-demo")
    write_image_atomic(make_phantom(seed=3).image, run.input_path)
    run.start()
    assert timed_cancel(run) < 0.1
    poll_until_finished(run, timeout_s=10)
    assert run.cancel_outcome == "cooperative" and run.returncode == 130
    assert_group_gone(run.process.pid)
    assert not run.work_dir.exists()


@pytest.mark.skipif(os.name != "posix", reason="the escalation scripts are POSIX shell scripts")
def test_a_child_that_ignores_the_cancel_file_is_terminated(tmp_path: Path) -> None:
    deaf = script(tmp_path, "deaf-python", 'echo \'{"event": "progress", "fraction": 0.1, "stage": "load"}\'\n'
                                           "while true; do sleep 0.05; done\n")
    run = SegmentationRun(RunOptions(), python_executable=deaf, log_dir=tmp_path / "logs", work_root=tmp_path)
    write_image_atomic(make_phantom(seed=1).image, run.input_path)
    run.start()
    pid = run.process.pid
    assert timed_cancel(run, grace_s=0.3) < 0.1
    _, seconds = poll_until_finished(run, timeout_s=5)
    assert run.cancel_outcome == "terminated" and run.returncode == -signal.SIGTERM
    assert 0.3 <= seconds < 2.0
    assert_group_gone(pid)  # the shell's `sleep` children went with it
    assert not run.work_dir.exists()


@pytest.mark.skipif(os.name != "posix", reason="the escalation scripts are POSIX shell scripts")
def test_a_child_that_ignores_terminate_too_is_killed_without_polling(tmp_path: Path) -> None:
    stubborn = script(tmp_path, "stubborn-python", "trap '' TERM INT\nwhile true; do sleep 0.05; done\n")
    run = SegmentationRun(RunOptions(), python_executable=stubborn, log_dir=tmp_path / "logs", work_root=tmp_path)
    write_image_atomic(make_phantom(seed=1).image, run.input_path)
    run.start()
    pid = run.process.pid
    assert timed_cancel(run, grace_s=0.3) < 0.1
    time.sleep(1.5)  # nobody polls: the background thread escalates alone
    assert run.process.poll() == -signal.SIGKILL
    assert run.finished and run.cancel_outcome == "killed"
    assert_group_gone(pid)
    assert not run.work_dir.exists()


@pytest.mark.skipif(os.name != "posix", reason="the stand-in child is a POSIX shell script")
def test_a_killed_model_install_child_leaves_no_staging_folder_or_partial_download(tmp_path: Path, model_store: Path) -> None:
    """A child killed mid-install cannot clean up after itself: the runner removes what it left in the store."""
    stuck = script(tmp_path, "stuck-python", 'mkdir -p "$SCISEG_MODELS_DIR/.install-stuck-x1/model" "$SCISEG_MODELS_DIR/.downloads"\n'
                                             'echo weights > "$SCISEG_MODELS_DIR/.install-stuck-x1/model/w.pth"\n'
                                             'echo part > "$SCISEG_MODELS_DIR/.downloads/m.zip.part"\n'
                                             'echo \'{"event": "progress", "stage": "download", "done": 5, "total": 9}\'\n'
                                             "trap '' TERM\nwhile true; do sleep 0.05; done\n")
    install = ModelInstallRun("http://127.0.0.1:9/m.zip", name="stuck", python_executable=stuck, log_dir=tmp_path / "logs")
    install.start()
    deadline = time.monotonic() + 10
    while not any(e["event"] == "progress" for e in install.poll()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert (model_store / ".downloads" / "m.zip.part").is_file()
    assert timed_cancel(install, grace_s=0.2) < 0.1
    poll_until_finished(install, timeout_s=5)
    assert install.cancel_outcome == "killed" and install.returncode == -signal.SIGKILL
    assert [p for p in model_store.rglob("*") if p.is_file()] == []


def test_a_missing_python_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="cannot start .*no-such-python"):
        ChildCommand(["devices"], python_executable=str(tmp_path / "no-such-python"))


def test_windows_branch_uses_no_console_and_no_console_events() -> None:
    """What the runner would do on Windows (checked here without Windows): CREATE_NO_WINDOW, TerminateProcess."""
    assert runner.platform_popen_options("nt") == {"creationflags": 0x08000000}
    assert runner.platform_popen_options("posix") == {"start_new_session": True}

    class FakeProcess:
        pid = 4242

        def __init__(self) -> None:
            self.calls: list[str] = []

        def terminate(self) -> None:
            self.calls.append("terminate")

        def kill(self) -> None:
            self.calls.append("kill")

        def send_signal(self, signum: int) -> None:  # CTRL_BREAK_EVENT would come through here
            self.calls.append(f"signal {signum}")

    # PythonSlicer is a launcher whose python-real outlives TerminateProcess of the launcher: the whole tree ends.
    spawned: list[tuple[list[str], dict]] = []
    process = FakeProcess()
    runner.stop_child(process, "terminate", os_name="nt", spawn=lambda argv, **kw: spawned.append((argv, kw)))
    assert spawned[0][0] == ["taskkill", "/T", "/F", "/PID", "4242"] and process.calls == []
    assert spawned[0][1]["creationflags"] == 0x08000000  # no console window flashes
    runner.stop_child(process, "kill", os_name="nt", spawn=lambda argv, **kw: spawned.append((argv, kw)))
    assert spawned[1][0] == ["taskkill", "/T", "/F", "/PID", "4242"] and process.calls == ["kill"]

    def no_taskkill(argv, **kw):
        raise FileNotFoundError(argv[0])

    process = FakeProcess()
    runner.stop_child(process, "terminate", os_name="nt", spawn=no_taskkill)
    assert process.calls == ["terminate"]  # at least the launcher itself ends
    source = (REPOSITORY / "SCIsegLib" / "runner.py").read_text()
    assert "CTRL_BREAK_EVENT)" not in source and "CREATE_NEW_PROCESS_GROUP)" not in source
    with pytest.raises(ValueError):
        runner.stop_child(process, "interrupt", os_name="nt")


def test_the_child_environment_names_the_cancel_file(tmp_path: Path) -> None:
    environment = runner.child_environment({"PATH": "/bin"}, tmp_path / "cancel")
    assert environment["SCISEG_CANCEL_FILE"] == str(tmp_path / "cancel")
    assert environment["PYTHONPATH"].split(os.pathsep)[0] == str(REPOSITORY)
    assert environment["PYTHONIOENCODING"] == "utf-8" and environment["PATH"] == "/bin"


def test_a_failing_child_reports_its_error_and_keeps_the_log(tmp_path: Path) -> None:
    run = new_run(tmp_path, "no-such-model")
    write_image_atomic(make_phantom(seed=1).image, run.input_path)
    run.start()
    run.wait(timeout_s=120)
    assert run.returncode == 2
    with pytest.raises(RunnerError, match="no model named 'no-such-model'") as caught:
        run.outputs()
    assert str(run.log_path) in str(caught.value)
    assert "no model named" in run.log_tail()
    lines = run.new_log_lines()
    assert any("no model named 'no-such-model'" in line for line in lines)
    assert run.new_log_lines() == []  # each line is handed out once


def test_a_crashing_child_is_reported_with_its_exit_code(tmp_path: Path) -> None:
    crashing = script(tmp_path, "crashing-python", 'echo \'{"event": "progress", "fraction": 0.1, "stage": "load"}\'\n'
                                                   'echo "Segmentation fault" >&2\nkill -SEGV $$\n')
    run = SegmentationRun(RunOptions(), python_executable=crashing, log_dir=tmp_path / "logs", work_root=tmp_path)
    write_image_atomic(make_phantom(seed=1).image, run.input_path)
    run.start()
    events = run.wait(timeout_s=30)
    assert events[0]["fraction"] == 0.1
    with pytest.raises(RunnerError, match=r"stopped unexpectedly \(exit code -11\)"):
        run.outputs()
    assert "Segmentation fault" in run.log_tail()
    assert run.new_log_lines() == ["Segmentation fault"]


def test_start_needs_the_input_image(tmp_path: Path) -> None:
    run = new_run(tmp_path, "sciseg-demo")
    with pytest.raises(RunnerError, match="no input image"):
        run.start()


def test_child_command_reads_large_output_without_blocking_and_stops_at_its_time_limit(tmp_path: Path) -> None:
    chatty = script(tmp_path, "chatty-python", "head -c 3000000 /dev/zero | tr '\\0' x\necho done >&2\n")
    command = ChildCommand(["analyze"], python_executable=chatty)
    assert command.wait(timeout_s=20).returncode == 0  # more than a pipe buffer: read while it runs
    assert len(command.stdout) == 3000000 and command.stderr == "done\n" and command.finished
    sleeper = script(tmp_path, "sleeping-python", "while true; do sleep 0.05; done\n")
    started = time.monotonic()
    slow = ChildCommand(["analyze"], python_executable=sleeper, timeout_s=0.3)
    assert slow.poll() is False
    slow.wait(timeout_s=10)
    assert slow.timed_out and slow.cancel_outcome == "terminated" and time.monotonic() - started < 5
    assert_group_gone(slow.process.pid)


@pytest.mark.skipif(os.name != "posix", reason="the stand-in child is a POSIX shell script")
def test_a_process_the_child_leaves_behind_is_killed_and_does_not_hold_the_pipes(tmp_path: Path) -> None:
    leaving = script(tmp_path, "leaving-python", "sleep 60 &\necho '{\"done\": true}'\nexit 0\n")
    command = ChildCommand(["devices"], python_executable=leaving)
    started = time.monotonic()
    command.wait(timeout_s=10)
    assert time.monotonic() - started < 5 and command.returncode == 0 and command.stdout == '{"done": true}\n'
    assert_group_gone(command.process.pid)  # the background `sleep 60` went with the group


@pytest.mark.skipif(os.name != "posix" or shutil.which("setsid") is None, reason="needs a POSIX shell and setsid")
def test_pipes_held_by_a_process_outside_the_group_do_not_keep_the_child_unfinished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "PIPE_GRACE_S", 0.5)
    escaping = script(tmp_path, "escaping-python", f"setsid sleep 30 &\necho $! > {tmp_path / 'escaped.pid'}\nexit 0\n")
    command = ChildCommand(["devices"], python_executable=escaping)
    try:
        command.wait(timeout_s=10)
        assert command.returncode == 0
    finally:
        os.kill(int((tmp_path / "escaped.pid").read_text()), signal.SIGKILL)


def test_device_probe_lists_the_cpu_and_can_be_cancelled(tmp_path: Path) -> None:
    probe = DeviceProbe()
    assert probe.devices() is None  # still running: never blocks
    deadline = time.monotonic() + 120
    while probe.devices() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "cpu" in probe.devices() and probe.returncode == 0
    cancelled = DeviceProbe()
    assert timed_cancel(cancelled) < 0.1
    poll_until_finished(cancelled, timeout_s=10)
    assert cancelled.returncode == 130 and cancelled.cancel_outcome == "cooperative"
    assert cancelled.devices() == {}


def wait_for_sigterm_handler(pid: int, timeout_s: float = 30.0) -> bool:
    """Wait until process ``pid`` catches SIGTERM (bit 15 of ``SigCgt`` in /proc/PID/status); False if it ended first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
        if caught & (1 << (signal.SIGTERM - 1)):
            return True
        time.sleep(0.001)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the caught-signal mask from /proc (Linux)")
@pytest.mark.parametrize("entry", ["python -m SCIsegLib", "sciseg script"])
@pytest.mark.parametrize("delay_s", [0.0, 0.02])
def test_an_early_sigterm_exits_with_130(tmp_path: Path, delay_s: float, entry: str) -> None:
    """SIGTERM while the child is still importing (numpy, long before torch) is a cancel, not a crash.

    The signal is sent as soon as the child's first lines of our code have installed the handler (the
    interpreter's own start-up, before any code of ours runs, cannot be covered: README), plus ``delay_s``:
    the child is then still importing numpy and the CLI. The ``sciseg`` script runs
    ``SCIsegLib.__main__:main`` (pyproject.toml), run here as the script would.
    """
    environment = runner.child_environment(None, tmp_path / "never-created")
    launcher = ["-m", "SCIsegLib"] if entry.startswith("python") else [
        "-c", "import sys; from SCIsegLib.__main__ import main; sys.argv[0] = 'sciseg'; main()"]
    process = subprocess.Popen(
        [sys.executable, *launcher, "segment", str(tmp_path / "absent.nii.gz"), "--device", "cpu"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert wait_for_sigterm_handler(process.pid), "the child ended before it caught SIGTERM"
    time.sleep(delay_s)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "cancelled" in stderr and "Traceback" not in stderr


def test_the_sciseg_script_installs_the_cancel_handling_first() -> None:
    text = (REPOSITORY / "pyproject.toml").read_text()
    assert 'sciseg = "SCIsegLib.__main__:main"' in text


# Model installs in a child


def model_zip(tmp_path: Path, padding_bytes: int = 0) -> bytes:
    folder = make_model_folder(tmp_path / "release")
    if padding_bytes:
        (folder / "notes.bin").write_bytes(os.urandom(padding_bytes))  # incompressible: the zip stays large
    return zip_folder(folder, tmp_path / "model.zip").read_bytes()


def test_model_install_child_reports_progress_and_installs(tmp_path: Path, model_store: Path) -> None:
    body = model_zip(tmp_path, padding_bytes=3_000_000)
    with LocalServer() as server:
        server.served.files["/sciseg-test.zip"] = body
        install = ModelInstallRun(server.url("/sciseg-test.zip"), name="from-http", log_dir=tmp_path / "logs")
        install.start()
        events, _ = poll_until_finished(install, timeout_s=60)
    assert install.returncode == 0, install.log_tail()
    progress = [e for e in events if e["event"] == "progress"]
    stages = [e["stage"] for e in progress]
    assert stages.index("download") < stages.index("verify") < stages.index("unzip") < stages.index("check")
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    download = [e for e in progress if e["stage"] == "download"]
    assert download[-1]["done"] == download[-1]["total"] == len(body)
    installed = install.installed()
    assert installed["name"] == "from-http" and Path(installed["path"]) == model_store / "from-http"
    assert [m.name for m in models.list_models(model_store) if m.path.parent == model_store] == ["from-http"]
    assert not (model_store / ".downloads" / "sciseg-test.zip.part").exists()


class SlowServer:
    """Serves one body slowly (64 KiB every 20 ms) on 127.0.0.1, so a cancel lands mid-download."""

    def __init__(self, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for start in range(0, len(body), 1 << 16):
                        self.wfile.write(body[start:start + (1 << 16)])
                        time.sleep(0.02)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (cancelled)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/slow-model.zip"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_cancelling_a_model_install_mid_download_leaves_nothing_in_the_store(tmp_path: Path, model_store: Path) -> None:
    with SlowServer(model_zip(tmp_path, padding_bytes=20_000_000)) as url:  # about 6 s to serve
        install = ModelInstallRun(url, log_dir=tmp_path / "logs")
        install.start()
        deadline = time.monotonic() + 30
        while not any(e["event"] == "progress" and e["done"] > 0 for e in install.poll()):
            assert time.monotonic() < deadline and not install.finished, install.log_tail()
            time.sleep(0.02)
        pid = install.process.pid
        assert timed_cancel(install) < 0.1
        events, seconds = poll_until_finished(install, timeout_s=10)
    assert install.cancel_outcome == "cooperative" and install.returncode == 130 and seconds < 3
    assert any(e["event"] == "cancelled" for e in events)
    assert [p for p in model_store.rglob("*") if p.is_file()] == []  # no model, no staging, no .part
    assert models.list_models(model_store) == models.list_models(tmp_path / "empty")  # the bundled ones only
    assert_group_gone(pid)
    with pytest.raises(RunnerError, match="cancelled"):
        install.installed()


def test_a_model_install_with_the_wrong_checksum_reports_it(tmp_path: Path, model_store: Path) -> None:
    archive = tmp_path / "local-model.zip"
    archive.write_bytes(model_zip(tmp_path))
    install = ModelInstallRun(str(archive), sha256="0" * 64, log_dir=tmp_path / "logs")
    install.start()
    poll_until_finished(install, timeout_s=60)
    assert install.returncode == 2
    with pytest.raises(RunnerError, match="expected 0000"):
        install.installed()
    assert not (model_store / "local-model").exists()
    assert zipfile.is_zipfile(archive)  # a local source is never deleted


def test_what_a_cancel_does_in_each_phase_of_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """SCIsegLib.cancel's handler, called directly (no signal is sent to the test process)."""
    from SCIsegLib import cancel
    from SCIsegLib.errors import CancelledError

    monkeypatch.setattr(cancel, "_flag", threading.Event())
    monkeypatch.setattr(cancel, "_modes", [])
    monkeypatch.setattr(cancel, "_callbacks", [])
    cancel._handler(signal.SIGTERM, None)  # start-up: only recorded (raising inside an import breaks it)
    assert cancel.cancelled()
    with pytest.raises(CancelledError):  # the command never starts
        with cancel.checked():
            pass
    monkeypatch.setattr(cancel, "_flag", threading.Event())
    tokens: list[str] = []
    with cancel.checked():
        with cancel.cooperative(lambda: tokens.append("cancel")):
            cancel._handler(signal.SIGTERM, None)  # cooperative: the token is set, the code stops at its next check
            assert tokens == ["cancel"]
            with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C: the user insists
                cancel._handler(signal.SIGINT, None)
        with pytest.raises(CancelledError):  # any other command: stops at once
            cancel._handler(signal.SIGTERM, None)
    assert cancel._callbacks == [] and cancel._modes == []
