"""The caller's side of the warm engine: start it in the background, send requests, read events, restart it.

Only the standard library is imported here: the Slicer panel and the review front use it without torch.
The engine itself (:mod:`SCIsegLib.inference.warm`) runs in a child ``python -m SCIsegLib engine serve``
whose stdin is the request pipe: when the caller ends, however (a SIGKILL included), the pipe closes and the
engine ends; a ``sciseg`` command's process-group guardian (:mod:`SCIsegLib.lifetime`) ends it too.

Use (never blocks; call ``poll`` from a timer)::

    engines = WarmEngines()                                  # one per application
    engine = engines.get("sciseg-v2", {"device": "auto"})    # starts it in the background (model loads once)
    if choose_segment_path(engine.state, engine.holds("sciseg-v2", {"device": "auto"})) == "warm":
        request = engine.segment([scan], output_folder)      # -> WarmRequest
    ... request.poll() -> new events (as `sciseg segment --progress jsonl`), request.finished, request.outcome,
        request.outputs(), request.cancel()
    engines.close()                                          # on application exit (the engine would end anyway)
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

from .event_queue import drain

#: States of a :class:`WarmEngine`.
STATES = ("absent", "starting", "ready", "busy", "ended", "failed")
#: Crashes (an engine that ended without being asked to) after which the client stops restarting it.
MAX_CRASHES = 3
PACKAGE_PARENT = Path(__file__).resolve().parents[1]
_ENGINE_SETTING_FLAGS = {"device": "--device", "engine": "--engine", "crop": "--crop", "step_size": "--step",
                         "threads": "--threads"}


def choose_segment_path(state: str, holds_request: bool) -> str:
    """Whether a Segment click goes to the warm engine (``"warm"``) or starts ``sciseg segment`` (``"cold"``).

    Warm when an engine for this model and these settings is ready, busy (the request waits its turn: a
    second process would share the same CPU cores) or starting (the request waits in its pipe: the engine
    began loading before a cold child could), or ended after an idle time (it restarts; the cost is the
    cold one). Cold when there is none for these settings (``holds_request`` False), none was started
    (``absent``) or it kept crashing (``failed``).
    """
    if state not in STATES:
        raise ValueError(f"unknown engine state '{state}'")
    if not holds_request or state in ("absent", "failed"):
        return "cold"
    return "warm"


def engine_command(model: str, settings: dict | None, idle_minutes: float, python_executable: str | None = None) -> list[str]:
    """The command line of an engine for ``model`` with engine ``settings`` (see ``DEFAULT_SETTINGS`` of the server)."""
    command = [python_executable or sys.executable, "-m", "SCIsegLib", "engine", "serve", "--model", model,
               "--idle-minutes", repr(float(idle_minutes))]
    for key, value in (settings or {}).items():
        if key in _ENGINE_SETTING_FLAGS and value is not None:
            command += [_ENGINE_SETTING_FLAGS[key], str(value)]
        elif key == "tta" and value:
            command.append("--tta")
        elif key == "folds" and value is not None:
            command += ["--folds", " ".join(str(f) for f in value)]
        elif key not in _ENGINE_SETTING_FLAGS and key not in ("tta", "folds", "use_gaussian"):
            raise ValueError(f"unknown engine setting '{key}'")
    return command


class WarmRequest:
    """One segment request: its events, outcome and outputs. ``poll`` never blocks."""

    def __init__(self, engine: "WarmEngine", request_id: str, process: subprocess.Popen | None = None) -> None:
        self.engine, self.id, self.process = engine, request_id, process
        self._events: queue.Queue = queue.Queue()
        self.finished = threading.Event()
        #: "done", "cancelled", "error", "refused" or "crashed" (the engine ended during the request); None while running.
        self.outcome: str | None = None
        self.final: dict | None = None  # the last event (result, cancelled, error, refused)

    def _deliver(self, event: dict) -> None:
        kind = event.get("event")
        if kind in ("result", "cancelled", "error", "refused"):
            self.outcome = {"result": "done"}.get(kind, kind)
            if event.get("kind") == "crashed":
                self.outcome = "crashed"
            self.final = event
            self._events.put(event)
            self.finished.set()
        else:
            self._events.put(event)

    def poll(self) -> list[dict]:
        """The events that arrived since the previous call (``progress``, ``warning``, then the final one)."""
        return drain(self._events)

    def wait(self, timeout_s: float | None = None) -> list[dict]:
        """Block until the request finished (tests, scripts); returns the events not yet polled."""
        self.finished.wait(timeout_s)
        return self.poll()

    def cancel(self) -> None:
        """Ask the engine to stop this request at its next tile (returns at once; nothing of it is written)."""
        self.engine._send({"op": "cancel", "id": self.id})

    def outputs(self) -> dict[str, Path]:
        """Structure name ("sc", "lesion", ...) -> written mask, after a ``done`` outcome (first input)."""
        if self.outcome != "done" or self.final is None:
            return {}
        found = {}
        for output in self.final["records"][0]["outputs"]:
            name = Path(output).name
            for structure in ("sc", "lesion"):
                if name.endswith(f"_{structure}_seg.nii.gz"):
                    found[structure] = Path(output)
            if name.endswith("_seg.nii.gz") and "sc" not in found and "_lesion_" not in name:
                found["sc"] = Path(output)
        return found


class WarmEngine:
    """A warm engine child for one model and engine settings, restarted when it ended.

    Args:
        model: model name or folder (as ``sciseg segment --model``).
        settings: engine settings (device, engine, crop, step_size, tta, folds, threads); the rest are defaults.
        idle_minutes: the engine exits after this long without a request (its memory goes back).
        python_executable: the Python that runs ``-m SCIsegLib`` (Slicer: PythonSlicer).
        log_path: where the engine's stderr goes (None: discarded).
        environment: the child's environment (None: this process's, with SCIsegLib importable).
    """

    def __init__(self, model: str, settings: dict | None = None, *, idle_minutes: float = 10.0,
                 python_executable: str | None = None, log_path: Path | None = None,
                 environment: dict[str, str] | None = None) -> None:
        self.model, self.settings = model, dict(settings or {})
        self.idle_minutes, self.python_executable, self.log_path = idle_minutes, python_executable, log_path
        self.environment = environment
        self.process: subprocess.Popen | None = None
        self.ready_event: dict | None = None  # the engine's last ``ready`` event (model, sha256, load time, memory)
        self.exit_event: dict | None = None
        self.starts = 0
        self.crashes = 0
        self._failed_message: str | None = None
        self._requests: dict[str, WarmRequest] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closing = False
        self._reader: threading.Thread | None = None

    # -- state ----------------------------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """One of :data:`STATES`."""
        with self._lock:
            if self._failed_message is not None:
                return "failed"
            if self.process is None:
                return "absent"
            if self.process.poll() is not None or self.exit_event is not None:
                return "ended"
            if self.ready_event is None:
                return "starting"
            return "busy" if any(not r.finished.is_set() for r in self._requests.values()) else "ready"

    @property
    def failure(self) -> str | None:
        """Why the engine is ``failed`` (one sentence), else None."""
        return self._failed_message

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def holds(self, model: str, settings: dict | None = None) -> bool:
        """True when this engine is for ``model`` with ``settings`` (as given to the constructor)."""
        return model == self.model and dict(settings or {}) == self.settings

    # -- life -------------------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine in the background (returns at once); nothing happens when it is running."""
        with self._lock:
            if self.process is not None and self.process.poll() is None and self.exit_event is None:
                return
            self._closing = False
            self.ready_event, self.exit_event = None, None
            environment = dict(os.environ if self.environment is None else self.environment)
            environment["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), environment.get("PYTHONPATH")) if p)
            log = open(self.log_path, "ab") if self.log_path is not None else subprocess.DEVNULL
            try:
                options: dict = {"creationflags": 0x08000000} if os.name == "nt" else {}  # CREATE_NO_WINDOW
                self.process = subprocess.Popen(
                    engine_command(self.model, self.settings, self.idle_minutes, self.python_executable),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=environment, close_fds=True, **options)
            finally:
                if log is not subprocess.DEVNULL:
                    log.close()
            self.starts += 1
            self._reader = threading.Thread(target=self._read_events, args=(self.process,), name="sciseg-engine-events",
                                            daemon=True)
            self._reader.start()

    def _read_events(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        said_exit = False  # this process announced its exit (idle, shutdown, stdin closed): not a crash
        for raw in process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue  # not an event (nothing else should be there)
            if not isinstance(event, dict):
                continue
            kind = event.get("event")
            current = process is self.process  # a restarted engine's state is not the old process's
            said_exit = said_exit or kind == "exit"
            if kind == "ready" and current:
                self.ready_event = event
            elif kind == "exit" and current:
                self.exit_event = event
            elif kind == "error" and "id" not in event and current:  # the model could not load
                self._failed_message = event.get("message") or "the engine could not start."
            request = self._requests.get(str(event.get("id"))) if "id" in event else None
            if request is not None:
                request._deliver(event)
        code = process.wait()
        with self._lock:
            asked = said_exit or (self._closing and process is self.process)
            if not asked:
                self.crashes += 1
                if self.crashes >= MAX_CRASHES and self._failed_message is None:
                    self._failed_message = f"the warm engine ended unexpectedly {self.crashes} times (last exit code {code})."
            pending = [r for r in self._requests.values() if not r.finished.is_set() and r.process is process]
        for request in pending:
            request._deliver({"event": "error", "kind": "crashed", "id": request.id,
                              "message": f"the engine ended during this request (exit code {code}); nothing of it was "
                                         "published; segment again."})

    def segment(self, inputs: list[str | Path], output: str | Path, *, postprocess: dict | None = None,
                label_map: bool = False, probabilities: bool = False, replace_nonfinite: bool = False,
                max_voxels: int | None = None, weights_sha256: str | None = None) -> WarmRequest:
        """Send one request (the engine is (re)started when it ended); returns its :class:`WarmRequest` at once.

        ``inputs`` and ``output`` are made absolute here (the engine's working folder may differ).
        """
        return self.send_request({
            "op": "segment", "model": self.model, "weights_sha256": weights_sha256, "settings": self.settings,
            "inputs": [str(Path(p).resolve()) for p in inputs], "output": str(Path(output).resolve()),
            "postprocess": postprocess or {}, "label_map": label_map, "probabilities": probabilities,
            "replace_nonfinite": replace_nonfinite, "max_voxels": max_voxels})

    def send_request(self, payload: dict) -> WarmRequest:
        """Send any request of the protocol (an ``id`` is added); the engine is (re)started when it ended."""
        if self.state == "failed":
            raise RuntimeError(self._failed_message or "the warm engine failed")
        if self.state in ("absent", "ended"):
            self.start()
        request_id = f"r{next(self._ids)}"
        request = WarmRequest(self, request_id, self.process)
        self._requests[request_id] = request
        self._send({**payload, "id": request_id})
        return request

    def _send(self, payload: dict) -> None:
        process = self.process
        if process is None or process.stdin is None:
            return
        try:
            process.stdin.write((json.dumps(payload) + "\n").encode())
            process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass  # it ended: the reader thread reports the crash to the pending requests

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until the engine is ready, ended or failed (scripts, tests); True when ready."""
        import time

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.state == "starting" and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.05)
        return self.state in ("ready", "busy")

    def wait_ended(self, timeout_s: float | None = None) -> bool:
        """Block until the current engine process ended and its events were read (scripts, tests)."""
        if self._reader is not None:
            self._reader.join(timeout_s)
        return self._reader is None or not self._reader.is_alive()

    def close(self, timeout_s: float = 10.0) -> None:
        """End the engine: close its pipe (it cancels a running request and exits); kill it after ``timeout_s``."""
        process = self.process
        if process is None:
            return
        self._closing = True
        try:
            if process.stdin is not None:
                process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class WarmEngines:
    """The engines of one application, one per (model, settings); ``close`` ends them all."""

    def __init__(self, **options) -> None:
        self.options = options
        self.engines: dict[str, WarmEngine] = {}

    def get(self, model: str, settings: dict | None = None, *, start: bool = True) -> WarmEngine:
        """The engine for ``model`` and ``settings`` (created and started in the background on first use)."""
        key = json.dumps([model, settings or {}], sort_keys=True)
        engine = self.engines.get(key)
        if engine is None:
            engine = self.engines[key] = WarmEngine(model, settings, **self.options)
        if start and engine.state in ("absent", "ended"):
            engine.start()
        return engine

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
