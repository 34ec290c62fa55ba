"""The SCIseg panel's decisions, without Qt: tested here, applied by the thin widget in ``SCIseg/SCIseg.py``.

The widget maps Qt signals to calls on a :class:`PanelState` and writes what it returns back to widgets.
Everything that decides something lives here: which buttons are enabled in which state, what a finished,
cancelled or failed background job does, which volume receives a segmentation (the one that was
segmented, not whatever the selector shows when the run ends), what must be installed before an action,
which devices the combo box lists, which lesion a clicked table row is.

Background jobs are the child processes of :mod:`SCIsegLib.runner` (segmentation, model install,
``sciseg analyze``/``export``/``queue next``). The state only needs their common non-blocking interface:
``poll()`` (never blocks; also advances a pending cancel), ``cancel()`` (returns at once), ``finished``,
``returncode``; ``cancelled``/``error``/``stderr`` are read when present. Nothing here imports
qt, ctk, slicer, torch or nnunetv2: node ids and scenes are passed in.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from . import dependencies

#: Slicer terminology of the SCIseg segments (loaded at Slicer's start-up, without importing SimpleITK or mrml).
TERMINOLOGY_FILE = Path(__file__).resolve().parents[1] / "Resources" / "Terminology" / "SCIseg.term.json"


class Action(str, Enum):
    """What a button of the panel starts; the background ones hold a child process while they run."""

    SEGMENT = "segment"
    INSTALL_MODEL = "install_model"
    MEASURE = "measure"
    EXPORT = "export"
    NEXT_CASE = "next_case"
    COMPARE = "compare"
    EDIT = "edit"
    GREY_MATTER = "grey_matter"  # a grey-matter model's segment added to the selected segmentation


#: Actions that run a child process: each is guarded by the one dependency check (``modules_needed``).
CHILD_ACTIONS = (Action.SEGMENT, Action.INSTALL_MODEL, Action.MEASURE, Action.EXPORT, Action.NEXT_CASE, Action.COMPARE,
                 Action.GREY_MATTER)
#: Jobs the Cancel button stops.
CANCELLABLE = (Action.SEGMENT, Action.INSTALL_MODEL, Action.GREY_MATTER)
#: Jobs whose result belongs to the scene they started in: closing the scene stops them, nothing is shown.
#: An export (it publishes a version whole or not at all, and is reported) and a model install (not part of any
#: scene) go on.
SHOWN_ONLY_IN_ITS_SCENE = (Action.SEGMENT, Action.MEASURE, Action.COMPARE, Action.NEXT_CASE, Action.GREY_MATTER)
#: Buttons that start something: all disabled while torch/nnU-Net install (``slicer.util.pip_install`` processes
#: Qt events between pip's output lines, so a click there would start a second install or an untracked job).
ACTION_WIDGETS = ("segmentButton", "editButton", "measureButton", "exportButton", "compareButton", "nextCaseButton",
                  "modelMenuButton", "modelComboBox", "greyMatterButton")
#: Seconds an export running at Reload or Slicer exit gets to publish its version before it is stopped.
EXPORT_SHUTDOWN_S = 30.0
#: Seconds between the cancel steps at Reload or exit (cancel file -> terminate -> kill): nobody waits for a result.
SHUTDOWN_GRACE_S = 1.0


def modules_needed(action: Action) -> tuple[str, ...]:
    """The Python modules ``action``'s child imports (``dependencies.ACTION_MODULES``; none for in-process actions)."""
    return dependencies.ACTION_MODULES.get(action.value, ())


# Jobs


class Outcome(str, Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass
class Job:
    """A background child process of the panel and the nodes it belongs to (MRML node ids).

    volume_id: the volume the job was started on -- a segmentation's result goes onto this node,
    whatever the selector shows when it ends.
    """

    action: Action
    run: Any
    volume_id: str | None = None
    segmentation_id: str | None = None
    cancel_requested: bool = False
    abandoned: bool = False  # the scene closed: let it end, show nothing


@dataclass
class Finished:
    """A job that ended, what became of it, and what the panel does next."""

    job: Job
    outcome: Outcome
    message: str
    import_result: bool = False
    refresh_models: bool = False
    probe_devices: bool = False


def failure_message(run: Any) -> str:
    """The child's own last words: its ``error`` event, else the last stderr line without the ``sciseg:`` prefix."""
    error = getattr(run, "error", None)
    if error:
        return str(error)
    stderr = getattr(run, "stderr", "") or ""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if lines:
        return lines[-1].removeprefix("sciseg: ")
    returncode = getattr(run, "returncode", None)
    log = getattr(run, "log_path", None)
    where = f"; its log: {log}" if log else ""
    if returncode == 0:
        return f"the process ended without giving a result{where}"
    return f"the process stopped with exit code {returncode}{where}"


def decide(job: Job) -> Finished:
    """What a finished job means: cancelled (Cancel, or exit code 130), failed (a time limit reached counts as
    failed, not cancelled), or succeeded, and what follows."""
    run = job.run
    returncode = getattr(run, "returncode", None)
    if job.abandoned and job.action in SHOWN_ONLY_IN_ITS_SCENE:
        return Finished(job, Outcome.CANCELLED, f"The scene was closed before {job.action.value} ended: its result is not shown.")
    if getattr(run, "timed_out", False):  # a ChildCommand stopped at its time limit (it reads as cancelled too)
        return Finished(job, Outcome.FAILED, f"{job.action.value} took longer than its time limit and was stopped.")
    if job.cancel_requested or getattr(run, "cancelled", False) or returncode == 130:
        return Finished(job, Outcome.CANCELLED, "Cancelled: nothing was changed.")
    failed = (returncode not in (0, None)) or bool(getattr(run, "error", None))
    if job.action in (Action.SEGMENT, Action.INSTALL_MODEL, Action.GREY_MATTER) and getattr(run, "result", True) is None:
        failed = True  # exited 0 without a result event: nothing to import
    if failed:
        return Finished(job, Outcome.FAILED, failure_message(run))
    return Finished(
        job,
        Outcome.SUCCEEDED,
        "Done, after the scene was closed." if job.abandoned else "Done.",
        import_result=job.action == Action.SEGMENT,
        refresh_models=job.action == Action.INSTALL_MODEL,
    )


@dataclass(frozen=True)
class PanelInputs:
    """What the widgets show now (MRML node ids, texts); the state decides from it."""

    input_volume_id: str | None = None
    segmentation_id: str | None = None
    compare_id: str | None = None
    has_model: bool = False
    rater: str = ""
    export_folder: str = ""
    queue_path: str = ""

    @classmethod
    def of(cls, parameters: Any, compare: Any, has_model: bool, rater: str, export_folder: str, queue_path: str) -> PanelInputs:
        """From the parameter node (``inputVolume``, ``segmentation``; None: none), the comparison's node and texts."""
        def node_id(node: Any) -> str | None:
            return node.GetID() if node is not None else None

        return cls(node_id(parameters.inputVolume) if parameters else None, node_id(parameters.segmentation) if parameters else None,
                   node_id(compare), has_model, rater, export_folder, queue_path)


@dataclass
class PanelState:
    """The running jobs of one panel and what they allow.

    At most one job per action. ``poll`` is called from a timer (every ~200 ms); it never blocks.
    """

    jobs: dict[Action, Job] = field(default_factory=dict)
    devices: dict[str, str] | None = None
    probe_wanted: bool = True
    probe: Any = None  # the running ``sciseg devices`` child (runner.DeviceProbe), None when none runs
    installing_dependencies: bool = False
    case_volume_id: str | None = None  # the volume whose case the panel opened (None: none yet)

    def busy(self, action: Action) -> bool:
        return action in self.jobs

    def volume_changed(self, selected_id: str | None) -> bool:
        """The rater (or Next case) selected another volume than the one whose case is open."""
        return selected_id != self.case_volume_id

    def may_start(self, action: Action) -> bool:
        """A click may start ``action``: none of it runs and no dependency install is under way."""
        return not self.installing_dependencies and action not in self.jobs

    def start(self, action: Action, run: Any, volume_id: str | None = None, segmentation_id: str | None = None) -> Job:
        """Record a started child; refuses a second one of the same action."""
        if action in self.jobs:
            raise RuntimeError(f"a {action.value} job is already running")
        job = Job(action, run, volume_id, segmentation_id)
        self.jobs[action] = job
        return job

    def cancel(self, action: Action | None = None) -> list[Job]:
        """Ask the running cancellable jobs (or ``action``'s) to stop; returns at once, ``poll`` finishes them."""
        targets = [action] if action is not None else list(CANCELLABLE)
        cancelled = []
        for name in targets:
            job = self.jobs.get(name)
            if job is not None and not job.cancel_requested:
                job.cancel_requested = True
                job.run.cancel()
                cancelled.append(job)
        return cancelled

    def scene_closing(self) -> None:
        """The scene closes: the jobs whose result belongs to it (:data:`SHOWN_ONLY_IN_ITS_SCENE`) stop and show
        nothing; an export goes on and is reported (it writes a version), a model download goes on."""
        for action, job in list(self.jobs.items()):
            job.abandoned = True
            if action in SHOWN_ONLY_IN_ITS_SCENE and not job.cancel_requested:
                job.cancel_requested = True
                job.run.cancel()

    def shutdown(self, timeout_s: float = 20.0, export_s: float = EXPORT_SHUTDOWN_S,
                 sleep=time.sleep, clock=time.monotonic) -> list[Job]:
        """Reload or Slicer exit: every child ends and its temporary files go; returns the jobs still running.

        A running export gets ``export_s`` seconds to publish its version (whole or not at all) before it is
        cancelled like every other job and the device probe; then up to ``timeout_s`` seconds for the children
        to end (the runner terminates, then kills, a child that ignores the cancel). Blocks: called once, at the end.
        """
        export = self.jobs.get(Action.EXPORT)
        deadline = clock() + export_s
        while export is not None and not export.run.finished and clock() < deadline:
            export.run.poll()
            sleep(0.05)
        children = [job.run for job in self.jobs.values()] + ([self.probe] if self.probe is not None else [])
        for job in self.jobs.values():
            job.abandoned = job.cancel_requested = True
        for child in children:
            if not child.finished:
                child.cancel(grace_s=SHUTDOWN_GRACE_S)
        deadline = clock() + timeout_s
        while any(not child.finished for child in children) and clock() < deadline:
            for child in children:
                child.poll()
            sleep(0.05)
        left = [job for job in self.jobs.values() if not job.run.finished]
        for job in self.jobs.values():
            remove_job_files(job)
        self.jobs = {job.action: job for job in left}
        self.probe = None
        return left

    def poll(self) -> tuple[list[dict], list[Finished]]:
        """Progress events of the segmentation or model install since the last call, and the jobs that ended."""
        events: list[dict] = []
        ended: list[Finished] = []
        for action, job in list(self.jobs.items()):
            polled = job.run.poll()
            if action in CANCELLABLE and isinstance(polled, list):
                events += polled
            if job.run.finished:
                del self.jobs[action]
                ended.append(decide(job))
        return events, ended

    def poll_probe(self, start: Any) -> tuple[bool, list[str]]:
        """The GPU probe (``sciseg devices`` in a child): started once wanted (``start()`` returns a
        ``runner.DeviceProbe``), polled without blocking. Returns (the device list changed, lines for the log): a
        probe that cannot start or finds nothing says why (torch missing, a broken CUDA build, its time limit)."""
        if self.probe_wanted and self.probe is None:
            self.probe_wanted = False
            try:
                self.probe = start()
            except Exception as error:  # noqa: BLE001 - PythonSlicer could not start (runner.RunnerError): say so once
                self.devices = {}
                return True, [str(error)]
        if self.probe is None:
            return False, []
        self.probe.poll()
        if not self.probe.finished:
            return False, []
        probe, self.probe = self.probe, None
        self.devices = probe.devices() or {}
        lines = [] if self.devices else new_log_lines(probe) + (
            ["GPU detection did not finish within its time limit."] if getattr(probe, "timed_out", False) else [])
        return True, lines

    def dependencies_installed(self) -> None:
        """torch may have arrived: probe the devices again."""
        self.devices = None
        self.probe_wanted = True

    def enabled(self, inputs: PanelInputs) -> dict[str, bool]:
        """Enabled state of each widget (by its name in the .ui) for these inputs and the running jobs.

        While torch/nnU-Net install, every button that starts something is disabled (:data:`ACTION_WIDGETS`).
        """
        widgets = self._enabled(inputs)
        if self.installing_dependencies:
            widgets.update({name: False for name in ACTION_WIDGETS})
        return widgets

    def _enabled(self, inputs: PanelInputs) -> dict[str, bool]:
        segmenting = self.busy(Action.SEGMENT)
        installing = self.busy(Action.INSTALL_MODEL)
        has_input = bool(inputs.input_volume_id)
        has_segmentation = bool(inputs.segmentation_id)
        cancellable = any(a in self.jobs and not self.jobs[a].cancel_requested for a in CANCELLABLE)
        return {
            "inputVolumeSelector": not segmenting,  # the run remembers its volume; the selector is locked anyway
            "modelComboBox": not segmenting and not installing,
            "modelMenuButton": not segmenting and not installing,
            "deviceComboBox": not segmenting,
            "segmentButton": has_input and inputs.has_model and not segmenting and not installing
            and not self.busy(Action.NEXT_CASE),
            "cancelButton": cancellable,
            "editButton": has_segmentation,
            "measureButton": has_segmentation and has_input and not self.busy(Action.MEASURE),
            "exportButton": has_segmentation and has_input and bool(inputs.rater.strip()) and bool(inputs.export_folder)
            and not self.busy(Action.EXPORT),
            "compareButton": has_segmentation and has_input and bool(inputs.compare_id)
            and inputs.compare_id != inputs.segmentation_id and not self.busy(Action.COMPARE),
            "nextCaseButton": bool(inputs.queue_path) and not self.busy(Action.NEXT_CASE) and not segmenting,
            # the grey matter goes into the selected segmentation: not while Segment may replace it
            "greyMatterButton": has_segmentation and has_input and not segmenting and not self.busy(Action.GREY_MATTER),
        }


def remove_job_files(job: Job) -> None:
    """Delete a finished (or abandoned) job's temporary files: its ``folder`` (measure, export, compare) and a
    segmentation's work folder (``cleanup()``)."""
    folder = getattr(job.run, "folder", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
    if job.action in (Action.SEGMENT, Action.GREY_MATTER) and hasattr(job.run, "cleanup"):
        job.run.cleanup()


def library_modules(loaded: Iterable[str], package: str = "SCIsegLib") -> list[str]:
    """Names of ``package`` and its submodules among ``loaded`` (``sys.modules``): what Reload must forget so
    that Slicer imports the edited library again (Slicer's ``reloadScriptedModule`` re-executes only the module
    file; SlicerNNUnet's ``onReload`` reloads its Lib package the same way)."""
    return sorted(name for name in loaded if name == package or name.startswith(package + "."))


def forget_library_modules(modules: dict[str, Any] | None = None, package: str = "SCIsegLib") -> list[str]:
    """Remove ``package``'s modules from ``modules`` (default ``sys.modules``); the next import reads the files."""
    modules = sys.modules if modules is None else modules
    names = library_modules(list(modules), package)
    for name in names:
        del modules[name]
    return names


def result_volume(scene, job: Job):
    """The volume node a segmentation's masks go onto: the one that was segmented.

    Raises ValueError with one sentence when that volume left the scene during the run (closed scene,
    deleted node): the result is not put on another scan.
    """
    node = scene.GetNodeByID(job.volume_id) if job.volume_id else None
    if node is None:
        raise ValueError("The segmented volume was removed from the scene during the run: its result was not imported.")
    return node


def new_log_lines(run: Any) -> list[str]:
    """The child's log lines since the last call, for the panel's log box (children without a streamed log: none)."""
    reader = getattr(run, "new_log_lines", None)
    return list(reader()) if reader is not None else []
