"""The warm engine: a child process that loads one model once and answers segment requests over its stdin.

Started as ``python -m SCIsegLib engine serve --model NAME [--device --engine --crop --step --tta --folds
--threads] --idle-minutes M`` by :class:`SCIsegLib.warm_client.WarmEngine`; never imported into the caller's
process (the Slicer application, the review front). The protocol is JSON lines:

* **stdin** (requests): ``{"op": "segment", "id": "r1", "model": "sciseg-demo", "weights_sha256": "..."
  (optional), "settings": {...}, "inputs": ["/abs/t2.nii.gz"], "output": "/abs/folder", "postprocess": {...},
  "label_map": false, "probabilities": false, "replace_nonfinite": false, "max_voxels": null}``;
  ``{"op": "cancel", "id": "r1"}``; ``{"op": "shutdown"}``. End of stdin (the caller closed the pipe or
  died, however) ends the engine: a running request is cancelled at its next tile.
* **stdout** (events): ``loading``, then ``ready`` (model, weights sha256, settings, load seconds, memory),
  then per request the events of ``sciseg segment --progress jsonl`` (``progress``, ``warning``, ``result``,
  ``cancelled``, ``error``) each with the request's ``id``, or ``refused`` (one sentence) when the request
  names another model, other weights or other engine settings than the engine holds; ``exit`` (reason
  ``idle``, ``shutdown``, ``stdin closed``) last.

The identity check runs on every request: the model name resolves to the folder the engine loaded, the
checkpoint files are those it loaded (same size and modification time; their sha256 is computed again
when they differ), and a ``weights_sha256`` given by the caller equals the held one.

After ``idle_s`` seconds without a request the engine exits: all its memory goes back to the system
(the client starts a new one on the next request).
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

#: Engine settings every request must match (the rest of a request is per request).
DEFAULT_SETTINGS: dict = {"device": "auto", "folds": None, "step_size": 0.5, "tta": False, "threads": None,
                          "use_gaussian": True, "engine": "auto", "crop": "fast"}
#: Seconds an engine waits for the next request before it exits (the client's default).
DEFAULT_IDLE_S = 600.0
#: Seconds a cancelled request may take to stop after stdin closed before the engine exits anyway.
STDIN_CLOSED_GRACE_S = 10.0
_END = object()


def normalized_settings(settings: dict | None) -> dict:
    """The engine settings of a request or an engine: :data:`DEFAULT_SETTINGS` updated with ``settings``.

    Raises ValueError naming an unknown key. Folds become a list of str (``[0, "all"]`` -> ``["0", "all"]``).
    """
    merged = dict(DEFAULT_SETTINGS)
    for key, value in (settings or {}).items():
        if key not in DEFAULT_SETTINGS:
            raise ValueError(f"unknown engine setting '{key}' (known: {', '.join(DEFAULT_SETTINGS)}).")
        merged[key] = value
    if merged["folds"] is not None:
        merged["folds"] = [str(f) for f in merged["folds"]]
    merged["step_size"] = float(merged["step_size"])
    return merged


def inference_settings(settings: dict):
    """The :class:`~.base.InferenceSettings` of normalized engine settings (folds "0" -> 0, "all" stays)."""
    from .base import InferenceSettings

    values = dict(settings)
    folds = values.pop("folds")
    return InferenceSettings(folds=tuple(int(f) if f.isdigit() else f for f in folds) if folds else None, **values)


def _stat_signature(files: list[Path]) -> list[tuple[str, int, int]]:
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


@dataclass
class HeldModel:
    """What the engine holds: the model's name and folder, its weights' sha256 and their files' signature."""

    name: str
    folder: str
    weights_sha256: str
    signature: list[tuple[str, int, int]]

    @classmethod
    def of(cls, model) -> "HeldModel":
        return cls(model.name, str(Path(model.path).resolve()), model.weights_sha256(),
                   _stat_signature(model.checkpoint_files()))


def refusal(held: HeldModel, held_settings: dict, request: dict,
            resolve: Callable[[str], object]) -> str | None:
    """One sentence saying why the engine cannot answer ``request``, or None when it holds what it asks for.

    ``resolve``: model name -> ModelInfo (:func:`SCIsegLib.models.resolve_model`).
    """
    name = request.get("model")
    if not isinstance(name, str) or not name:
        return "the request names no model; give the model the engine was started for."
    try:
        model = resolve(name)
        folder = str(Path(model.path).resolve())
    except Exception as error:  # noqa: BLE001 - an unknown model: one sentence
        return f"this engine holds model '{held.name}', and '{name}' is not a model here ({error})."
    if folder != held.folder:
        return f"this engine holds model '{held.name}' ({held.folder}), not '{name}' ({folder}); start an engine for '{name}'."
    try:
        signature = _stat_signature(model.checkpoint_files())
        current = held.weights_sha256 if signature == held.signature else model.weights_sha256()
    except OSError as error:
        return f"the weights of model '{held.name}' cannot be read any more ({error}); restart the engine."
    if current != held.weights_sha256:
        return (f"the weights of model '{held.name}' changed on disk since this engine loaded them "
                f"(sha256 {held.weights_sha256[:12]} then, {current[:12]} now); restart the engine.")
    wanted_sha = request.get("weights_sha256")
    if wanted_sha and wanted_sha != held.weights_sha256:
        return (f"this engine holds model '{held.name}' with weights sha256 {held.weights_sha256[:12]}, "
                f"not {str(wanted_sha)[:12]}; start an engine for those weights.")
    try:
        wanted = normalized_settings(request.get("settings"))
    except (ValueError, TypeError) as error:
        return f"the request's settings are not valid: {error}"
    differing = [f"{key} {wanted[key]!r} (engine: {held_settings[key]!r})" for key in DEFAULT_SETTINGS
                 if wanted[key] != held_settings[key]]
    if differing:
        return f"this engine runs other settings than the request asks for: {', '.join(differing)}; start an engine for them."
    return None


def memory_figures() -> dict:
    """This process's resident memory now and its peak, in MB (peak: POSIX only, else None)."""
    import psutil

    figures: dict = {"rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1), "peak_rss_mb": None}
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        figures["peak_rss_mb"] = round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)
    except ImportError:
        pass
    return figures


class WarmServer:
    """The engine's loop: requests from ``lines`` (a blocking iterator of JSON lines), events to ``emit``.

    Args:
        model_name: the model to hold (name or folder).
        settings: engine settings (see :data:`DEFAULT_SETTINGS`).
        emit: writes one event (a dict) to the caller.
        idle_s: exit after this many seconds without a request.
    """

    def __init__(self, model_name: str, settings: dict, emit: Callable[[dict], None], idle_s: float = DEFAULT_IDLE_S) -> None:
        self.model_name = model_name
        self.settings = normalized_settings(settings)
        self.emit = emit
        self.idle_s = idle_s
        self.loads = 0
        self._requests: queue.Queue = queue.Queue()
        self._current: tuple[str, object] | None = None  # (request id, CancelToken)
        self._waiting: set = set()  # ids of the requests queued, not started
        self._skipped: set = set()  # ids cancelled while queued: answered at once, skipped when their turn comes
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.engine = None
        self.held: HeldModel | None = None

    # -- the reader side (a thread): requests and cancels ------------------------------------------------------------
    def feed(self, lines) -> None:
        """Read requests until the input ends; a cancel acts at once, anything else is queued."""
        for raw in lines:
            try:
                request = json.loads(raw)
                if not isinstance(request, dict):
                    raise ValueError("not an object")
            except ValueError:
                self.emit({"event": "error", "kind": "input", "message": "a request line is not a JSON object; it was ignored."})
                continue
            if request.get("op") == "cancel":
                self.cancel(request.get("id"))
            else:
                with self._lock:
                    self._waiting.add(request.get("id"))
                self._requests.put(request)
        self.stop("stdin closed")

    def cancel(self, request_id: object = None) -> None:
        """Cancel the running request (``request_id`` None: whichever runs); it stops at its next tile. A request
        still queued (sent while the engine loads or answers another) is answered ``cancelled`` now and never runs."""
        with self._lock:
            if self._current is not None and request_id in (None, self._current[0]):
                self._current[1].cancel()  # type: ignore[attr-defined]
                return
            queued = request_id is not None and request_id in self._waiting
            if queued:
                self._waiting.discard(request_id)
                self._skipped.add(request_id)
        if queued:
            self.emit({"event": "cancelled", "id": request_id, "message": "Cancelled before it started: nothing was written."})

    def stop(self, reason: str) -> None:
        """End the engine after the running request (cancelled now)."""
        self.stopping.set()
        self.cancel()
        self._requests.put((_END, reason))

    # -- the main side: load, then answer ------------------------------------------------------------------------------
    def load(self) -> None:
        from ..models import resolve_model
        from . import make_engine

        self.emit({"event": "loading", "model": self.model_name, "pid": os.getpid()})
        started = time.perf_counter()
        model = resolve_model(self.model_name)
        self.engine = make_engine(model, inference_settings(self.settings))
        self.held = HeldModel.of(model)
        self.loads += 1
        loaded = time.perf_counter()
        self.warm_up()
        self.emit({"event": "ready", "model": model.name, "folder": self.held.folder,
                   "weights_sha256": self.held.weights_sha256, "settings": self.settings, "pid": os.getpid(),
                   "load_seconds": round(loaded - started, 3), "warm_up_seconds": round(time.perf_counter() - loaded, 3),
                   "loads": self.loads, **memory_figures()})

    def warm_up(self) -> None:
        """Segment a small synthetic scan once (nothing written): the first request then runs at full speed.

        A runtime's first inference (OpenVINO's, torch's) and the first use of the post-processing code cost
        about a second more than the later ones (measured: 2.0 s then 0.95 s for SCT's t2 scan).
        """
        from ..phantom import Acquisition, make_phantom
        from ..segment import segment_image

        phantom = make_phantom(seed=0, acquisition=Acquisition(spacing_mm=(1.0, 1.0, 1.0), fov_mm=(32.0, 48.0, 64.0)),
                               lesions=1)
        segment_image(phantom.image, self.engine)  # type: ignore[arg-type]

    def serve(self) -> str:
        """Answer requests until idle, shutdown or the end of input; returns the reason."""
        self.load()
        while True:
            try:
                request = self._requests.get(timeout=self.idle_s)
            except queue.Empty:
                return "idle"
            if isinstance(request, tuple) and request[0] is _END:
                return request[1]
            if request.get("op") == "shutdown":
                return "shutdown"
            with self._lock:
                if request.get("id") in self._skipped:  # cancelled while it waited, and answered then
                    self._skipped.discard(request.get("id"))
                    self._waiting.discard(request.get("id"))
                    continue
            if self.stopping.is_set():
                continue
            self.answer(request)

    def answer(self, request: dict) -> None:
        """One request: refuse it, or segment its inputs and emit its events (each with its ``id``)."""
        from ..errors import CancelledError, DownloadError, InputError
        from ..models import resolve_model
        from . import CancelToken

        request_id = request.get("id")

        def emit(payload: dict) -> None:
            self.emit({**payload, "id": request_id})

        if request.get("op") != "segment":
            emit({"event": "error", "kind": "input", "message": f"unknown op {request.get('op')!r}; use segment, cancel or shutdown."})
            return
        assert self.held is not None
        sentence = refusal(self.held, self.settings, request, resolve_model)
        if sentence is not None:
            with self._lock:
                self._waiting.discard(request_id)
            emit({"event": "refused", "message": sentence})
            return
        token = CancelToken()
        with self._lock:
            self._waiting.discard(request_id)
            if request_id in self._skipped:  # cancelled since it left the queue: answered already
                self._skipped.discard(request_id)
                return
            self._current = (request_id, token)
        started = time.perf_counter()
        try:
            records = self._segment(request, token, emit)
        except CancelledError as error:
            emit({"event": "cancelled", "message": str(error)})
            _release_tile_feeders()
        except (InputError, DownloadError, ValueError, TypeError, KeyError) as error:
            emit({"event": "error", "kind": "input", "message": str(error)})
        except OSError as error:
            emit({"event": "error", "kind": "input", "message": f"{error.filename or 'a file'}: {error.strerror or error}."})
        except Exception as error:  # noqa: BLE001 - our bug: one sentence, the engine goes on
            emit({"event": "error", "kind": "internal", "message": f"internal error ({type(error).__name__}: {error})."})
        else:
            emit({"event": "result", "model": self.held.name, "records": records, "pid": os.getpid(),
                  "engine_loads": self.loads, "seconds": round(time.perf_counter() - started, 3), **memory_figures()})
        finally:
            with self._lock:
                self._current = None

    def _segment(self, request: dict, token, emit: Callable[[dict], None]) -> list[dict]:
        from ..postprocess import PostprocessSettings
        from ..segment import segment_files
        from ..volume import DEFAULT_MAX_VOXELS

        inputs = [Path(p) for p in request["inputs"]]
        if not inputs or not all(str(p) for p in inputs):
            raise ValueError("the request has no inputs; give at least one image path.")
        output = Path(request["output"])
        if output.exists() and not output.is_dir():
            raise ValueError(f"the output {output} is a file; give a folder for the outputs.")
        inference = inference_settings(self.settings)
        postprocess = PostprocessSettings(**(request.get("postprocess") or {}))
        max_voxels = request.get("max_voxels") or DEFAULT_MAX_VOXELS
        return segment_files(
            inputs, output, self.engine, settings=inference, postprocess=postprocess,  # type: ignore[arg-type]
            write_label_map=bool(request.get("label_map")), want_probabilities=bool(request.get("probabilities")),
            replace_nonfinite=bool(request.get("replace_nonfinite")), progress=lambda event: emit(event.as_dict()),
            cancel=token, max_voxels=max_voxels,
            warn=lambda message: emit({"event": "warning", "message": message}))


def _release_tile_feeders() -> None:
    """Let nnU-Net's tile-feeding threads of a cancelled run finish (each holds the preprocessed image).

    nnU-Net's sliding window feeds tiles from a daemon thread through a ``Queue(maxsize=2)``; a run
    stopped between tiles leaves that thread blocked on ``put`` forever. Emptying its queue until it
    ends frees the image it holds.
    """
    for thread in threading.enumerate():
        target = getattr(thread, "_target", None)
        arguments = getattr(thread, "_args", ())
        if getattr(target, "__name__", "") != "producer" or len(arguments) != 3 or not hasattr(arguments[2], "get_nowait"):
            continue
        tiles = arguments[2]
        while thread.is_alive():
            try:
                tiles.get(timeout=0.1)
                tiles.task_done()
            except queue.Empty:
                continue
            except ValueError:  # task_done called too often: nothing more to release
                break


def serve_stdio(model_name: str, settings: dict, idle_s: float) -> int:
    """Run an engine on this process's stdin/stdout (the ``engine serve`` command); returns the exit code.

    File descriptor 1 is kept for events only: anything else written there (a library's print, a native
    runtime's message) goes to stderr.
    """
    from .. import cancel
    from ..errors import InputError

    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def emit(payload: dict) -> None:
        with lock:
            try:
                events.write(json.dumps(payload) + "\n")
                events.flush()
            except (BrokenPipeError, ValueError, OSError):  # the caller is gone: stop
                server.stopping.set()

    server = WarmServer(model_name, settings, emit, idle_s)
    reader = threading.Thread(target=server.feed, args=(iter(sys.stdin.buffer.readline, b""),),
                              name="sciseg-engine-requests", daemon=True)

    def exit_when_stuck() -> None:
        """After stdin closed, a request that does not stop in time does not keep the engine alive."""
        server.stopping.wait()
        time.sleep(STDIN_CLOSED_GRACE_S)
        os._exit(0)

    with cancel.cooperative(lambda: server.stop("signal")):  # SIGTERM/SIGINT: cancel the request, then end
        reader.start()
        threading.Thread(target=exit_when_stuck, name="sciseg-engine-exit", daemon=True).start()
        try:
            reason = server.serve()
        except InputError as error:
            emit({"event": "error", "kind": "input", "message": str(error)})
            return 2
        except Exception as error:  # noqa: BLE001 - the model could not load: one sentence to the caller
            emit({"event": "error", "kind": "internal", "message": f"the engine could not load the model ({type(error).__name__}: {error})."})
            return 1
    emit({"event": "exit", "reason": reason, "requests_left": server._requests.qsize()})
    return 0
