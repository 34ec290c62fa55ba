"""Running ``python -m SCIsegLib ...`` as child processes, without Qt, never blocking the caller.

The Slicer module starts a :class:`SegmentationRun` (``segment ... --progress jsonl``), a
:class:`ModelInstallRun` (``models install ... --progress jsonl``) or a :class:`ChildCommand`
(``analyze``, ``export``, ``queue next``; :class:`DeviceProbe` runs ``devices``), then calls from a
timer:

* ``poll()``: never blocks; returns the new events (runs) or whether the command ended (commands),
  and moves a pending cancel forward;
* ``new_log_lines()``: the child's stderr lines since the previous call (for a log box);
* ``finished`` / ``returncode``: the child has ended, every event was read, a cancel is complete.

``cancel()`` returns at once (well under 100 ms) and works the same on Linux, macOS and Windows:

1. **cooperative**: it creates the cancel file whose path the child got in ``$SCISEG_CANCEL_FILE``
   (see :mod:`SCIsegLib.cancel`); the child stops at its next check (between sliding-window tiles,
   between download chunks), deletes what it started and exits with code 130;
2. **terminate** after ``grace_s`` seconds if it is still running (SIGTERM to its process group on
   POSIX; on Windows ``taskkill /T /F`` on the child's process tree, since the ``PythonSlicer`` launcher's
   ``python-real`` outlives a ``TerminateProcess`` of the launcher);
3. **kill** after another ``grace_s`` (SIGKILL to the group on POSIX; the tree kill again and ``TerminateProcess``
   on Windows).

The later steps are taken by ``poll()`` and by a background thread, so a caller that stops polling
still gets its child stopped. No console window opens on Windows (``CREATE_NO_WINDOW``) and no
console control event (``CTRL_BREAK_EVENT``) is used: Slicer's GUI process has no console to send
one from. torch and nnU-Net run only in the child, never in Slicer's own process.

Files: a segmentation works in a private folder (``input.nii.gz``, ``output/``) removed by
:meth:`SegmentationRun.cleanup` or after a cancel; the child's stderr goes to a log file in
``log_dir`` that is kept so a failed run can be diagnosed.
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

from .cancel import CANCEL_FILE_VARIABLE
from .errors import SCIsegError
from .models import user_data_dir
from .event_queue import drain

PACKAGE_PARENT = Path(__file__).resolve().parents[1]
#: Windows' CREATE_NO_WINDOW process creation flag (``subprocess.CREATE_NO_WINDOW`` exists only on Windows).
CREATE_NO_WINDOW = 0x08000000
#: Seconds between the steps of a cancel (cooperative -> terminate -> kill).
DEFAULT_GRACE_S = 5.0
#: Seconds to wait for the child's output after it ended (a descendant outside its group can hold the pipes).
PIPE_GRACE_S = 5.0
#: How often the background thread moves a pending cancel forward, in seconds.
ESCALATION_INTERVAL_S = 0.05


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


def platform_popen_options(os_name: str = os.name) -> dict:
    """``subprocess.Popen`` options per platform.

    POSIX: a new session, so the child and anything it starts form one process group that
    terminate/kill reach. Windows: ``CREATE_NO_WINDOW`` (no console window pops up for a child of a
    GUI process) and no new process group (no console control events are ever sent).
    """
    if os_name == "nt":
        return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", CREATE_NO_WINDOW)}
    return {"start_new_session": True}


def tree_kill_command(pid: int) -> list[str]:
    """Windows: end process ``pid`` and every process it started (``taskkill /T /F``).

    On Windows ``PythonSlicer`` is a launcher (CTK's AppLauncher) that starts ``python-real`` as its own child;
    ``TerminateProcess`` on the launcher leaves ``python-real`` running. ``taskkill /T`` walks the tree by parent
    process id, so it must run while the launcher is still alive.
    """
    return ["taskkill", "/T", "/F", "/PID", str(int(pid))]


def stop_child(process: subprocess.Popen, step: str, os_name: str = os.name, spawn=subprocess.Popen) -> None:
    """Send the ``"terminate"`` or ``"kill"`` step of a cancel to ``process`` and everything it started.

    POSIX: SIGTERM, then SIGKILL, to the child's process group. Windows: the terminate step ends the whole tree
    (:func:`tree_kill_command`, started without waiting and without a console window); the kill step runs it
    again and then ``TerminateProcess`` on the child itself, in case taskkill could not. ``spawn`` starts the
    taskkill process (tests pass a recorder). Never raises for a child that has already ended.
    """
    if step not in ("terminate", "kill"):
        raise ValueError(f"unknown step {step!r}; use 'terminate' or 'kill'.")
    try:
        if os_name == "posix":
            os.killpg(process.pid, signal.SIGTERM if step == "terminate" else signal.SIGKILL)
            return
        try:
            spawn(tree_kill_command(process.pid), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL, **platform_popen_options(os_name))
        except OSError:  # no taskkill: at least the child itself ends
            process.terminate()
        if step == "kill":
            process.kill()  # TerminateProcess on Windows
    except (ProcessLookupError, PermissionError, OSError):
        pass  # already gone


def child_environment(base: dict[str, str] | None, cancel_file: Path) -> dict[str, str]:
    """The child's environment: this SCIsegLib first on PYTHONPATH, unbuffered UTF-8 output, the cancel file."""
    environment = dict(os.environ if base is None else base)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), environment.get("PYTHONPATH")]))
    environment["PYTHONUNBUFFERED"] = "1"
    environment["PYTHONIOENCODING"] = "utf-8"  # Windows' default code page cannot print every path
    environment[CANCEL_FILE_VARIABLE] = str(cancel_file)
    return environment


class _Child:
    """One child process: reader threads for stdout and stderr, and a cancel that never blocks.

    Subclasses give the command line (:meth:`command`) and what to do with each stdout line
    (:meth:`_on_stdout`), at the end (:meth:`_on_exit`) and after a cancel (:meth:`_after_cancel`).
    """

    def _init_child(self, python_executable: str | None, log_path: Path | None, environment: dict[str, str] | None,
                    cwd: Path | None = None) -> None:
        self.python_executable = python_executable or sys.executable
        self.log_path = log_path
        self.environment = environment
        self._cwd = cwd
        self.process: subprocess.Popen | None = None
        self.cancelled = False
        #: How a cancel ended the child: "cooperative" (exit 130 after the cancel file), "terminated" or "killed".
        self.cancel_outcome: str | None = None
        self._grace_s = DEFAULT_GRACE_S
        self._cancel_step: str | None = None  # "cooperative", "terminate", "kill"
        self._cancel_step_at = 0.0
        self._cancel_thread: threading.Thread | None = None
        self._control_dir: Path | None = None
        self._readers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._log_lock = threading.Lock()
        self._new_log: list[str] = []
        self._log_all: list[str] = []
        self._stdout_lines: list[str] = []
        self._done = False  # the exit was handled (and a cancel completed)
        self._group_killed = False
        self._ended_at = 0.0

    def command(self) -> list[str]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    @property
    def cancel_file(self) -> Path | None:
        """The file whose creation asks the child to stop (``$SCISEG_CANCEL_FILE``)."""
        return None if self._control_dir is None else self._control_dir / "cancel"

    def _start_child(self) -> None:
        self._control_dir = Path(tempfile.mkdtemp(prefix="sciseg-child-"))
        environment = child_environment(self.environment, self._control_dir / "cancel")
        log = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed by the stderr reader
            log.write(f"$ {' '.join(self.command())}\n")
            log.flush()
        try:
            self.process = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                text=True, encoding="utf-8", errors="replace", env=environment, cwd=self._cwd, **platform_popen_options(),
            )
        except OSError as error:
            if log is not None:
                log.write(f"cannot start: {error}\n")
                log.close()
            shutil.rmtree(self._control_dir, ignore_errors=True)
            raise RunnerError(
                f"cannot start {self.python_executable} ({error.strerror or error}); check the Python executable."
            ) from None
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True, name="sciseg-child-stdout"),
            threading.Thread(target=self._read_stderr, args=(log,), daemon=True, name="sciseg-child-stderr"),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._stdout_lines.append(line)
            self._on_stdout(line.strip())

    def _read_stderr(self, log) -> None:
        assert self.process is not None and self.process.stderr is not None
        try:
            for line in self.process.stderr:
                if log is not None:
                    log.write(line)
                    log.flush()
                with self._log_lock:
                    self._new_log.append(line.rstrip("\n"))
                    self._log_all.append(line.rstrip("\n"))
        finally:
            if log is not None:
                log.close()

    def _on_stdout(self, line: str) -> None:
        """One line of the child's stdout (stripped)."""

    def _on_exit(self, code: int) -> None:
        """The child ended with ``code`` and its output was read."""

    def _after_cancel(self) -> None:
        """The child was cancelled and has ended: remove what it left."""

    @property
    def returncode(self) -> int | None:
        """The child's exit code once it ended (negative: killed by that signal on POSIX), else None."""
        return None if self.process is None else self.process.poll()

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def new_log_lines(self) -> list[str]:
        """The child's stderr lines received since the previous call (never blocks)."""
        with self._log_lock:
            lines, self._new_log = self._new_log, []
        return lines

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the child's stderr (from the log file when there is one)."""
        if self.log_path is not None:
            try:
                return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
            except OSError:
                pass
        with self._log_lock:
            return "\n".join(self._log_all[-lines:])

    def cancel(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Ask the child to stop and return at once; terminate after ``grace_s`` s, kill after another ``grace_s`` s.

        The next steps are taken by :meth:`poll` and by a background thread; ``finished`` becomes
        True once the child has ended and what it left was removed.
        """
        if self.cancelled:
            return
        self.cancelled = True
        self._grace_s = grace_s
        if self.process is None or self._done:  # never started, or already over: only remove what is left
            self._after_cancel()
            self._done = True
            return
        self._cancel_step, self._cancel_step_at = "cooperative", time.monotonic()
        cancel_file = self.cancel_file
        if cancel_file is not None:
            try:
                cancel_file.touch()
            except OSError:
                pass  # the terminate step follows
        self._cancel_thread = threading.Thread(target=self._escalate, daemon=True, name="sciseg-child-cancel")
        self._cancel_thread.start()

    def _escalate(self) -> None:
        while not self._done:
            self._advance()
            time.sleep(ESCALATION_INTERVAL_S)

    def _advance(self) -> None:
        """Move a pending cancel forward and handle the child's end; never blocks (skips when busy)."""
        if self._done or self.process is None or not self._lock.acquire(blocking=False):
            return
        try:
            if self._done:
                return
            code = self.process.poll()
            if code is None:
                self._check_deadline()
                if self.cancelled and time.monotonic() - self._cancel_step_at >= self._grace_s:
                    step = "terminate" if self._cancel_step == "cooperative" else "kill"
                    stop_child(self.process, step)
                    self._cancel_step, self._cancel_step_at = step, time.monotonic()
                return
            if os.name == "posix" and not self._group_killed:
                self._group_killed = True
                stop_child(self.process, "kill")  # anything the child left in its process group (pipes then close)
            self._ended_at = self._ended_at or time.monotonic()
            if any(reader.is_alive() for reader in self._readers) and time.monotonic() - self._ended_at < PIPE_GRACE_S:
                return  # output still arriving (or, past the grace, held open by a process outside the group)
            if self.cancelled and self.cancel_outcome is None:
                self.cancel_outcome = {"cooperative": "cooperative", "terminate": "terminated"}.get(
                    self._cancel_step or "", "killed")
            self._on_exit(code)
            if self.cancelled:
                self._after_cancel()
            if self._control_dir is not None:
                shutil.rmtree(self._control_dir, ignore_errors=True)
            self._done = True
        finally:
            self._lock.release()

    def _check_deadline(self) -> None:
        """Commands with a time limit cancel themselves here."""

    @property
    def finished(self) -> bool:
        """True once the child has ended, its output was read and a cancel (if any) is complete."""
        self._advance()
        return self._done


class _EventChild(_Child):
    """A child that prints one JSON event per line on stdout (``--progress jsonl``)."""

    def _init_events(self) -> None:
        self._events: queue.Queue = queue.Queue()
        self.last_event: dict | None = None
        self.result: dict | None = None
        self.error: str | None = None

    def _on_stdout(self, line: str) -> None:
        if not line:
            return
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            event = {"event": "output", "message": line}
        if not isinstance(event, dict):
            event = {"event": "output", "message": line}
        kind = event.get("event")
        if kind == "progress":
            self.last_event = event
        elif kind == "result":
            self.result = event
        elif kind in ("error", "cancelled"):
            self.error = event.get("message")
        self._events.put(event)

    def poll(self) -> list[dict]:
        """Events received since the last call (never blocks); also moves a pending cancel forward."""
        self._advance()
        return drain(self._events)

    @property
    def finished(self) -> bool:
        """True once the child has ended, every event was read by :meth:`poll` and a cancel is complete."""
        self._advance()
        return self._done and self._events.empty()

    def wait(self, timeout_s: float | None = None) -> list[dict]:
        """Block until the child ends (tests and scripts only); returns every event."""
        return wait_for_events(self, timeout_s)


def wait_for_events(run, timeout_s: float | None = None) -> list[dict]:
    """Poll ``run`` (``poll()`` -> events, ``finished``) until it ended; every event. Tests, scripts, a worker's exit."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    events: list[dict] = []
    while not run.finished:
        events += run.poll()
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"the run did not finish within {timeout_s} s")
        time.sleep(0.05)
    return events + run.poll()


def _log_path(log_dir: Path | None, kind: str, tag: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return (log_dir or default_log_dir()) / f"{kind}-{stamp}-{os.getpid()}-{tag}.log"


class SegmentationRun(_EventChild):
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
        self.work_dir = Path(tempfile.mkdtemp(prefix="sciseg-run-", dir=work_root))
        self.input_path = self.work_dir / "input.nii.gz"
        self.output_dir = self.work_dir / "output"
        self._init_child(python_executable, _log_path(log_dir, "segment", self.work_dir.name[-8:]), environment, self.work_dir)
        self._init_events()

    def command(self) -> list[str]:
        return [
            self.python_executable, "-m", "SCIsegLib", "segment", str(self.input_path),
            "-o", str(self.output_dir), "--progress", "jsonl", *self.options.arguments(),
        ]

    def start(self) -> None:
        """Start the child; the caller has written the image to :attr:`input_path` first."""
        if not self.input_path.is_file():
            raise RunnerError(f"no input image at {self.input_path}; write the volume there before starting.")
        self._start_child()

    def _on_exit(self, code: int) -> None:
        if code != 0 and not self.cancelled and self.error is None:
            self.error = f"the segmentation process stopped unexpectedly (exit code {code})"

    def _after_cancel(self) -> None:
        self.cleanup()

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

    def cleanup(self) -> None:
        """Delete the work folder (input copy and outputs); the log is kept."""
        shutil.rmtree(self.work_dir, ignore_errors=True)


class ModelInstallRun(_EventChild):
    """``sciseg models install SOURCE --progress jsonl`` in a child: download, verify, unzip with progress events.

    Events: ``{"event": "progress", "stage": "download" | "verify" | "unzip" | "check", "fraction": 0..1
    (whole install), "done": bytes, "total": bytes or None, "message": str}``, then ``{"event": "result",
    "name", "path", "sha256"}`` or ``{"event": "error" | "cancelled", "message"}``. The model store is
    the child's (``$SCISEG_MODELS_DIR`` or the per-user folder), the same as this process's.
    """

    def __init__(
        self,
        source: str,
        name: str | None = None,
        sha256: str | None = None,
        python_executable: str | None = None,
        *,
        log_dir: Path | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.source, self.name, self.sha256 = source, name, sha256
        self._init_child(python_executable, _log_path(log_dir, "install", f"{time.monotonic_ns() % 10**8:08d}"), environment)
        self._init_events()

    def command(self) -> list[str]:
        command = [self.python_executable, "-m", "SCIsegLib", "models", "install", self.source]
        if self.name:
            command += ["--name", self.name]
        if self.sha256:
            command += ["--sha256", self.sha256]
        return command + ["--progress", "jsonl"]

    def start(self) -> None:
        self._start_child()

    def _on_exit(self, code: int) -> None:
        if code != 0 and not self.cancelled and self.error is None:
            self.error = f"the model install stopped unexpectedly (exit code {code})"

    def _after_cancel(self) -> None:
        """A child stopped by terminate/kill could not clean up: remove its staging folder and partial download."""
        if self.cancel_outcome in (None, "cooperative"):
            return
        from . import models

        environment = self.environment if self.environment is not None else os.environ
        configured = environment.get("SCISEG_MODELS_DIR")
        root = Path(configured) if configured else user_data_dir() / "models"
        name = self.name or models._default_name(self.source)
        for staging in root.glob(f".install-{name}-*"):
            shutil.rmtree(staging, ignore_errors=True)
        url = models.KNOWN_MODELS[self.source].url if self.source in models.KNOWN_MODELS else self.source
        if url.startswith(("http://", "https://")):
            (root / ".downloads" / (Path(url.split("?")[0]).name + ".part")).unlink(missing_ok=True)

    def installed(self) -> dict:
        """The installed model (``{"name", "path", "sha256"}``) once the install succeeded; else :class:`RunnerError`."""
        if self.cancelled:
            raise RunnerError("the model install was cancelled.")
        if self.error or self.result is None:
            raise RunnerError(f"{self.error or 'the model install produced no result'}. Log: {self.log_path}")
        return self.result


class ChildCommand(_Child):
    """Any ``python -m SCIsegLib ...`` command in a child process, polled without blocking (analyze, export, ...).

    It starts at once. ``poll()`` returns True once it has ended (or was stopped at its time limit,
    then :attr:`timed_out` is True); :attr:`stdout`, :attr:`stderr` and :attr:`returncode` are then final.
    """

    def __init__(self, arguments: list[str], python_executable: str | None = None, timeout_s: float = 300.0,
                 module: str = "SCIsegLib") -> None:
        self.arguments = list(arguments)
        self.module = module  # run as ``python -m MODULE ARGUMENTS``
        self.stdout = self.stderr = ""
        self.timed_out = False
        self._deadline = time.monotonic() + timeout_s
        self._init_child(python_executable, None, None)
        self._start_child()

    def command(self) -> list[str]:
        return [self.python_executable, "-m", self.module, *self.arguments]

    def _check_deadline(self) -> None:
        if not self.cancelled and time.monotonic() > self._deadline:
            self.timed_out = True
            self.cancel(grace_s=2.0)

    def _on_exit(self, code: int) -> None:
        self.stdout = "".join(self._stdout_lines)
        with self._log_lock:
            self.stderr = "".join(line + "\n" for line in self._log_all)

    def poll(self) -> bool:
        """True once the command has ended and its output was read (never blocks); moves a cancel forward."""
        self._advance()
        return self._done

    def wait(self, timeout_s: float = 300.0) -> "ChildCommand":
        """Block until the command ends (tests and scripts only)."""
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
