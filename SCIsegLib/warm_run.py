"""A Segment click on the warm engine, with the cold child behind it: the interface of ``runner.SegmentationRun``.

The Slicer panel (:mod:`SCIsegLib.panel_warm`) and the review worker (:func:`SCIsegLib.review.session.start_segmentation`)
start an :class:`EngineRun` where they started a :class:`~SCIsegLib.runner.SegmentationRun`; their timers poll it the
same way (``poll()``, ``finished``, ``cancel()``, ``outputs()``, ``cleanup()``, ``returncode``/``error``/``result``).

* **Which path** (at ``start``): the warm engine when :func:`~SCIsegLib.warm_client.choose_segment_path` says so for
  this model and these settings (ready, busy, starting, or ended after its idle time); else ``sciseg segment`` in a
  child, as before.
* **Cold after a refusal or a crash**: a warm request the engine refused (the model identity it checks on every
  request: the weights changed on disk since it loaded them, another folder under the name) or that ended because
  the engine died is run again at once by the cold child on the same input; nothing of the warm request was
  published, and the click still gets its segments. A refusing engine is ended (it holds weights that are no longer
  on disk): the panel restarts it in the background, the review worker at its next request.
* **Cancel**: the engine stops the request at its next sliding-window tile; when it has not stopped after twice
  ``grace_s`` (still preprocessing a very large scan) the engine is ended, as the cold child would be terminated.

Files: the work folder is the cold run's (``input.nii[.gz]``, ``output/``), whichever path ran; removed by
:meth:`cleanup` and after a cancel. Standard library only (no torch in the caller's process).
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from .runner import DEFAULT_GRACE_S, RunnerError, RunOptions, SegmentationRun, wait_for_events
from .warm_client import WarmEngine, choose_segment_path

#: Outcomes of a warm request that the cold child runs again.
FALLBACK_OUTCOMES = ("refused", "crashed")


def engine_settings(options: RunOptions) -> dict:
    """The warm engine's settings for ``sciseg segment``'s options (device, step, test-time augmentation)."""
    return {"device": options.device, "step_size": float(options.step), "tta": bool(options.tta)}


def postprocess_of(options: RunOptions) -> dict:
    """The request's post-processing (``PostprocessSettings`` fields) for ``sciseg segment``'s options."""
    return {"keep_largest_cord": bool(options.keep_largest_cord), "fill_holes": bool(options.fill_holes),
            "lesion_inside_cord": bool(options.lesion_in_cord), "min_object_mm3": options.min_object_mm3}


def warm_path_for(engine: WarmEngine | None, options: RunOptions) -> bool:
    """True when a Segment click with ``options`` goes to ``engine`` (None: there is none; extra arguments: cold)."""
    if engine is None or options.extra_arguments:
        return False
    return choose_segment_path(engine.state, engine.holds(options.model, engine_settings(options))) == "warm"


class EngineRun:
    """One segmentation: on ``engine`` when it can take it, else (or after a refusal or a crash) in a cold child.

    Args:
        engine: the warm engine for ``options``' model and settings, or None (cold).
        options: ``sciseg segment``'s options (model, device, step, tta, post-processing).
        python_executable, log_dir, work_root, environment: the cold child's (:class:`~SCIsegLib.runner.SegmentationRun`).
    """

    def __init__(self, engine: WarmEngine | None, options: RunOptions, *, python_executable: str | None = None,
                 log_dir: Path | None = None, work_root: Path | None = None,
                 environment: dict[str, str] | None = None) -> None:
        self.engine, self.options = engine, options
        self.cold = SegmentationRun(options, python_executable=python_executable, log_dir=log_dir, work_root=work_root,
                                    environment=environment)
        self.request = None  # the warm request (WarmRequest) while the warm path runs
        #: "warm" or "cold" once started (a warm request run again cold ends as "cold").
        self.path: str | None = None
        #: Why a warm request went cold: the engine's sentence (refused) or the crash's; None when it did not.
        self.fallback: str | None = None
        self.cancelled = False
        self._pending: list[dict] = []
        self._lock = threading.Lock()

    # The cold run's files and log, whichever path runs
    @property
    def work_dir(self) -> Path:
        return self.cold.work_dir

    @property
    def output_dir(self) -> Path:
        return self.cold.output_dir

    @property
    def input_path(self) -> Path:
        return self.cold.input_path

    @input_path.setter
    def input_path(self, path: Path) -> None:
        self.cold.input_path = Path(path)

    @property
    def log_path(self) -> Path | None:
        return self.cold.log_path

    def new_log_lines(self) -> list[str]:
        return self.cold.new_log_lines() if self.path == "cold" else []

    def log_tail(self, lines: int = 20) -> str:
        if self.path == "cold":
            return self.cold.log_tail(lines)
        log = self.engine.log_path if self.engine is not None else None
        return f"the warm engine's log: {log}" if log else ""

    # Life
    def start(self) -> None:
        """Send the request to the engine, or start the cold child; the caller wrote the image to :attr:`input_path`."""
        if not self.input_path.is_file():
            raise RunnerError(f"no input image at {self.input_path}; write the volume there before starting.")
        if warm_path_for(self.engine, self.options):
            assert self.engine is not None
            loading = self.engine.state in ("starting", "ended")
            try:
                self.request = self.engine.segment([self.input_path], self.output_dir,
                                                   postprocess=postprocess_of(self.options))
            except (RuntimeError, OSError) as error:  # it failed between the choice and the request
                self._go_cold(f"the warm engine is not available ({error})")
                return
            self.path = "warm"
            if loading:
                self._pending.append({"event": "progress", "stage": "load", "fraction": 0.0,
                                      "message": "Loading the model (once; the next segmentations start at once)..."})
            return
        self.path = "cold"
        self.cold.start()

    def _go_cold(self, reason: str) -> None:
        """Run the request again in the cold child (nothing of the warm one was published)."""
        self.fallback = reason
        self.request = None
        shutil.rmtree(self.output_dir, ignore_errors=True)
        self._pending.append({"event": "warning", "message": f"{reason} Segmenting in a new process instead."})
        self.path = "cold"
        self.cold.start()

    def _advance(self) -> None:
        """Move the warm request's events to the pending list; run it cold after a refusal or a crash."""
        with self._lock:
            request = self.request
            if self.path != "warm" or request is None:
                return
            for event in request.poll():
                if event is request.final and request.outcome in FALLBACK_OUTCOMES and not self.cancelled:
                    if request.outcome == "refused" and self.engine is not None:
                        self.engine.close(timeout_s=0)  # it holds weights no longer on disk: ended, restarted later
                    self._go_cold(f"The warm engine {'refused' if request.outcome == 'refused' else 'ended during'} "
                                  f"this request: {event.get('message', '')}")
                    return
                self._pending.append(event)
            if request.finished.is_set() and self.cancelled:
                self.cold.cleanup()

    def poll(self) -> list[dict]:
        """Events since the last call (the same as ``sciseg segment --progress jsonl``'s); never blocks."""
        self._advance()
        with self._lock:
            events, self._pending = self._pending, []
        if self.path == "cold":
            events += self.cold.poll()
        return events

    @property
    def finished(self) -> bool:
        """True once the request (or its cold child) ended and every event was read by :meth:`poll`."""
        answered = self.path == "warm" and self.request is not None and self.request.finished.is_set()
        self._advance()  # after that check: every event of an answered request is drained now
        if self._pending:
            return False
        if self.path == "warm":
            return answered
        return self.path == "cold" and self.cold.finished

    def wait(self, timeout_s: float | None = None) -> list[dict]:
        """Block until the run ended (tests, scripts, the review worker's exit); returns every event."""
        return wait_for_events(self, timeout_s)

    def cancel(self, grace_s: float = DEFAULT_GRACE_S) -> None:
        """Stop the run (returns at once): the engine at its next tile, ended after ``2 * grace_s``; the cold child
        as :meth:`SegmentationRun.cancel` does. Nothing of a cancelled run is published."""
        if self.cancelled:
            return
        self.cancelled = True
        request, engine = self.request, self.engine
        if self.path == "warm" and request is not None and engine is not None:
            request.cancel()

            def end_engine_if_stuck() -> None:
                if not request.finished.wait(2 * grace_s):
                    engine.close(timeout_s=grace_s)

            threading.Thread(target=end_engine_if_stuck, daemon=True, name="sciseg-engine-cancel").start()
        else:
            self.cold.cancel(grace_s)

    # Outcome (as runner.SegmentationRun's, read by SCIsegLib.panel.decide and the review app)
    @property
    def returncode(self) -> int | None:
        if self.path == "cold" or self.path is None:
            return self.cold.returncode
        outcome = self.request.outcome if self.request is not None else None
        return None if outcome is None else {"done": 0, "cancelled": 130}.get(outcome, 1)

    @property
    def result(self) -> dict | None:
        if self.path == "warm":
            return self.request.final if self.request is not None and self.request.outcome == "done" else None
        return self.cold.result

    @property
    def error(self) -> str | None:
        if self.path == "warm":
            request = self.request
            if request is None or request.outcome in (None, "done"):
                return None
            return (request.final or {}).get("message") or f"the warm engine's request ended: {request.outcome}"
        return self.cold.error

    def outputs(self) -> dict[str, Path]:
        """Paths of the cord and lesion masks once the run succeeded; raises :class:`RunnerError` otherwise."""
        if self.path != "warm":
            return self.cold.outputs()
        if self.cancelled:
            raise RunnerError("the segmentation was cancelled.")
        found = self.request.outputs() if self.request is not None else {}
        if "sc" not in found or "lesion" not in found:
            raise RunnerError(f"{self.error or 'the warm engine gave no cord and lesion masks'}.")
        return found

    def cleanup(self) -> None:
        """Delete the work folder (input copy and outputs)."""
        self.cold.cleanup()
