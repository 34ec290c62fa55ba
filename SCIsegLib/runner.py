"""Running ``python -m SCIsegLib segment ... --progress jsonl`` as a child process, without Qt.

The Slicer module starts a :class:`SegmentationRun`, calls :meth:`SegmentationRun.poll` from a
timer to drive its progress bar (it never blocks), and :meth:`SegmentationRun.cancel` from the
Cancel button. torch and nnU-Net run only in the child, never in Slicer's own process.

Files: everything lives in a private work folder (``input.nii.gz``, ``output/``) removed by
:meth:`cleanup` or on cancel; the child's stderr goes to a log file in ``log_dir`` that is kept
so a failed run can be diagnosed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SCIsegError
from .models import user_data_dir

PACKAGE_PARENT = Path(__file__).resolve().parents[1]


class RunnerError(SCIsegError):
    """The child process failed; the message says why and where its log is."""


@dataclass
class RunOptions:
    """Options forwarded to ``sciseg segment`` (see ``sciseg segment --help``)."""

    model: str = "sciseg-v2"
    device: str = "auto"
    tta: bool = False
    step: float = 0.5
    keep_largest_cord: bool = False
    fill_holes: bool = False
    lesion_in_cord: bool = False
    min_object_mm3: float | None = None
    extra_arguments: list[str] = field(default_factory=list)

    def arguments(self) -> list[str]:
        arguments = ["--model", self.model, "--device", self.device, "--step", str(self.step)]
        for flag, enabled in (
            ("--tta", self.tta),
            ("--keep-largest-cord", self.keep_largest_cord),
            ("--fill-holes", self.fill_holes),
            ("--lesion-in-cord", self.lesion_in_cord),
        ):
            if enabled:
                arguments.append(flag)
        if self.min_object_mm3:
            arguments += ["--min-object-mm3", str(self.min_object_mm3)]
        return arguments + list(self.extra_arguments)


def default_log_dir() -> Path:
    """Where the child processes' logs are kept (``<user data>/logs``)."""
    return user_data_dir() / "logs"


class SegmentationRun:
    """One segmentation in a child process: start, poll events, cancel, collect the outputs."""

    def __init__(
        self,
        options: RunOptions,
        *,
        python_executable: str | None = None,
        log_dir: Path | None = None,
        work_root: Path | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.options = options
        self.python_executable = python_executable or sys.executable
        self.work_dir = Path(tempfile.mkdtemp(prefix="sciseg-run-", dir=work_root))
        self.input_path = self.work_dir / "input.nii.gz"
        self.output_dir = self.work_dir / "output"
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.log_path = (log_dir or default_log_dir()) / f"segment-{stamp}-{os.getpid()}-{self.work_dir.name[-8:]}.log"
        self.environment = environment
        self.process: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None
        self.last_event: dict | None = None
        self.result: dict | None = None
        self.error: str | None = None
        self.cancelled = False

    def command(self) -> list[str]:
        return [
            self.python_executable, "-m", "SCIsegLib", "segment", str(self.input_path),
            "-o", str(self.output_dir), "--progress", "jsonl", *self.options.arguments(),
        ]

    def start(self) -> None:
        """Start the child; the caller has written the image to :attr:`input_path` first."""
        if not self.input_path.is_file():
            raise RunnerError(f"no input image at {self.input_path}; write the volume there before starting.")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        environment = dict(os.environ if self.environment is None else self.environment)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), environment.get("PYTHONPATH")]))
        environment["PYTHONUNBUFFERED"] = "1"
        log = open(self.log_path, "w")  # noqa: SIM115 - handed to the child, closed when it ends
        log.write(f"$ {' '.join(self.command())}\n")
        log.flush()
        popen_options: dict = {}
        if os.name == "posix":
            popen_options["start_new_session"] = True  # its own process group: cancel reaches every descendant
        else:
            popen_options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
            env=environment, cwd=self.work_dir, **popen_options,
        )
        log.close()
        self._reader = threading.Thread(target=self._read_events, daemon=True)
        self._reader.start()

    def _read_events(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                self._events.put(json.loads(line))
            except json.JSONDecodeError:
                self._events.put({"event": "output", "message": line})
        self._events.put({"event": "exit"})

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def poll(self) -> list[dict]:
        """Events received since the last call (never blocks). Records the result or the error."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            if event.get("event") == "exit":
                self._finish()
                continue
            if event.get("event") == "progress":
                self.last_event = event
            elif event.get("event") == "result":
                self.result = event
            elif event.get("event") in ("error", "cancelled"):
                self.error = event.get("message")
            events.append(event)
        return events

    def _finish(self) -> None:
        assert self.process is not None
        code = self.process.wait()
        if code != 0 and not self.cancelled and self.error is None:
            self.error = f"the segmentation process stopped unexpectedly (exit code {code})"

    @property
    def finished(self) -> bool:
        """True once the child has exited and every event was read."""
        return self.process is not None and self.process.poll() is not None and (self._reader is None or not self._reader.is_alive()) and self._events.empty()

    def wait(self, timeout_s: float | None = None) -> list[dict]:
        """Block until the child ends (tests and scripts); returns every event."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        events: list[dict] = []
        while not self.finished:
            events += self.poll()
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the segmentation did not finish within {timeout_s} s")
            time.sleep(0.05)
        return events + self.poll()

    def outputs(self) -> dict[str, Path]:
        """Paths of the cord and lesion masks once the run succeeded; raises :class:`RunnerError` otherwise."""
        if self.cancelled:
            raise RunnerError("the segmentation was cancelled.")
        if self.error or self.result is None:
            raise RunnerError(f"{self.error or 'the segmentation produced no result'}. Log: {self.log_path}")
        from .staging import published_set

        if published_set(self.output_dir, "input") is None:  # the marker publishes the whole set
            raise RunnerError(f"the segmentation's outputs are incomplete (no marker). Log: {self.log_path}")
        return {
            "sc": self.output_dir / "input_sc_seg.nii.gz",
            "lesion": self.output_dir / "input_lesion_seg.nii.gz",
        }

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cancel(self, grace_s: float = 5.0) -> None:
        """Stop the child (SIGTERM to its group, SIGKILL after ``grace_s``) and delete the work folder."""
        self.cancelled = True
        if self.process is not None and self.process.poll() is None:
            self._signal_group(signal.SIGTERM if os.name == "posix" else signal.CTRL_BREAK_EVENT)  # type: ignore[attr-defined]
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL if os.name == "posix" else signal.SIGTERM)
                self.process.wait(timeout=grace_s)
        if self.process is not None and os.name == "posix":
            try:  # descendants of the child (none expected) go too
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.cleanup()

    def _signal_group(self, signum: int) -> None:
        assert self.process is not None
        try:
            if os.name == "posix":
                os.killpg(self.process.pid, signum)
            else:
                self.process.send_signal(signum)
        except ProcessLookupError:
            pass

    def cleanup(self) -> None:
        """Delete the work folder (input copy and outputs); the log is kept."""
        shutil.rmtree(self.work_dir, ignore_errors=True)


class ChildCommand:
    """Any ``python -m SCIsegLib ...`` command in a child process, polled without blocking (devices, analyze)."""

    def __init__(self, arguments: list[str], python_executable: str | None = None, timeout_s: float = 300.0) -> None:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), environment.get("PYTHONPATH")]))
        self._deadline = time.monotonic() + timeout_s
        self.process = subprocess.Popen(
            [python_executable or sys.executable, "-m", "SCIsegLib", *arguments],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=environment,
        )
        self.stdout = self.stderr = ""
        self.returncode: int | None = None

    def poll(self) -> bool:
        """True once the command has ended (or was killed at its time limit); then read stdout/stderr/returncode."""
        if self.returncode is not None:
            return True
        if self.process.poll() is None:
            if time.monotonic() <= self._deadline:
                return False
            self.process.kill()
        self.stdout, self.stderr = self.process.communicate()
        self.returncode = self.process.returncode
        return True

    def wait(self, timeout_s: float = 300.0) -> "ChildCommand":
        deadline = time.monotonic() + timeout_s
        while not self.poll():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the command did not end within {timeout_s} s")
            time.sleep(0.05)
        return self


class DeviceProbe(ChildCommand):
    """Ask a child Python which devices torch sees (``sciseg devices``), without importing torch here."""

    def __init__(self, python_executable: str | None = None, timeout_s: float = 120.0) -> None:
        super().__init__(["devices"], python_executable, timeout_s)

    def devices(self) -> dict[str, str] | None:
        """None while running; then the devices ({"cuda": "NVIDIA ...", "cpu": "..."}) or {} when torch is missing."""
        if not self.poll():
            return None
        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        try:
            return json.loads(lines[-1]) if self.returncode == 0 and lines else {}
        except json.JSONDecodeError:
            return {}
