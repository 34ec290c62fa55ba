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

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from . import dependencies


class Action(str, Enum):
    """What a button of the panel starts; the background ones hold a child process while they run."""

    SEGMENT = "segment"
    INSTALL_MODEL = "install_model"
    MEASURE = "measure"
    EXPORT = "export"
    NEXT_CASE = "next_case"
    COMPARE = "compare"
    EDIT = "edit"


#: Actions that run a child process: each is guarded by the one dependency check (``modules_needed``).
CHILD_ACTIONS = (Action.SEGMENT, Action.INSTALL_MODEL, Action.MEASURE, Action.EXPORT, Action.NEXT_CASE, Action.COMPARE)
#: Jobs the Cancel button stops.
CANCELLABLE = (Action.SEGMENT, Action.INSTALL_MODEL)


def modules_needed(action: Action) -> tuple[str, ...]:
    """The Python modules ``action``'s child imports (``dependencies.ACTION_MODULES``; none for in-process actions)."""
    return dependencies.ACTION_MODULES.get(action.value, ())


#: What the "nnunetv2" step installs in one pip call: the pinned nnU-Net and the fast CPU engine's runtime.
NNUNET_STEP: tuple[str, ...] = (dependencies.NNUNET_REQUIREMENT, dependencies.PIP_REQUIREMENTS["openvino"])


def packages_to_install(missing_modules: list[str], nnunet_version_problem: bool = False) -> list[str]:
    """What to pip-install, in order, so that the missing modules import: torch first, then nnU-Net.

    nnU-Net v2 brings pandas, scikit-image and the rest (filelock comes with torch), so any missing module
    other than torch is fixed by installing the pinned nnunetv2 together with OpenVINO (:data:`NNUNET_STEP`;
    with torch already there, pip never replaces it). ``nnunet_version_problem``: the installed nnunetv2 is not the pinned version.
    """
    packages = []
    if "torch" in missing_modules:
        packages.append("torch")
    if any(name != "torch" for name in missing_modules) or nnunet_version_problem:
        packages.append("nnunetv2")
    return packages


def pinned_version(requirement: str) -> str | None:
    """``"2.8.1"`` for ``"nnunetv2==2.8.1"``; None for a requirement without an exact pin."""
    match = re.fullmatch(r"\s*[A-Za-z0-9_.-]+\s*==\s*([^\s,;]+)\s*", requirement)
    return match.group(1) if match else None


def version_mismatch(requirement: str, installed: str | None) -> str | None:
    """One sentence when the installed version differs from the exact pin of ``requirement``; None when fine."""
    wanted = pinned_version(requirement)
    name = re.split(r"[=<>!~ ]", requirement.strip(), maxsplit=1)[0]
    if installed is None or wanted is None or installed == wanted:
        return None
    return f"{name} {installed} is installed but SCIseg was tested with {wanted}: install {requirement} from the SCIseg panel."


def pip_install_call(
    requirement: str | list[str], constraints_path: str, slicer_version: tuple[int, int]
) -> tuple[list[str], dict[str, Any]]:
    """Arguments for ``slicer.util.pip_install``: always a list (never one string Slicer would ``shlex.split``).

    Slicer 5.12 and newer take ``constraints=`` and ``requester=`` (``slicer.packaging.pip_install``); 5.10 takes only the
    requirement list, so the constraints file goes in as two list items ``-c PATH`` (a path with spaces or
    backslashes stays one argument).
    """
    requirements = [requirement] if isinstance(requirement, str) else list(requirement)
    if tuple(slicer_version) >= (5, 12):
        return requirements, {"constraints": constraints_path, "requester": "SCIseg"}
    return [*requirements, "-c", constraints_path], {}


def torch_build(version: str | None) -> str:
    """Which torch build a version string names: ``2.5.1+cu124`` -> "CUDA 12.4", ``+cpu`` -> "CPU"."""
    if not version:
        return "not installed"
    local = version.partition("+")[2]
    if local.startswith("cu") and local[2:].isdigit():
        digits = local[2:]
        return f"CUDA {digits[:-1]}.{digits[-1]}"
    if local.startswith("rocm"):
        return f"ROCm {local[4:]}"
    if local == "cpu":
        return "CPU"
    return "the default PyPI build (CUDA on Linux x86-64, CPU on Windows and macOS)"


# Devices


def device_choices(devices: dict[str, str] | None, saved: str) -> list[tuple[str, str]]:
    """(label, value) items of the device combo box; the saved device is always one of them.

    ``devices``: what ``sciseg devices`` reported ({"cuda": "NVIDIA ...", "mps": ..., "cpu": ...}), {} when
    torch is missing, None while the probe runs. A saved "cuda" that the probe did not find stays listed
    ("not found") instead of being reset to auto, so a refresh never loses the rater's choice.
    """
    choices = [("Auto", "auto")]
    devices = devices or {}
    if "cuda" in devices:
        choices.append((f"GPU ({devices['cuda']})", "cuda"))
    if "mps" in devices:
        choices.append(("GPU (Apple MPS)", "mps"))
    choices.append(("CPU", "cpu"))
    if saved and saved not in {value for _label, value in choices}:
        choices.append((f"{saved} (not found)", saved))
    return choices


def device_summary(devices: dict[str, str] | None) -> str:
    """The sentence under the device combo box."""
    if devices is None:
        return "Looking for GPUs..."
    if not devices:
        return "PyTorch is not installed yet: it will be offered at the first segmentation."
    if "cuda" in devices:
        return f"GPU found: {devices['cuda']}."
    if "mps" in devices:
        return "Apple GPU (MPS) found."
    return "No GPU found: segmentation runs on the CPU and can take several minutes per scan."


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
    return f"the process stopped with exit code {getattr(run, 'returncode', None)}"


def decide(job: Job) -> Finished:
    """What a finished job means: cancelled (Cancel, or exit code 130), failed (a time limit reached counts as
    failed, not cancelled), or succeeded, and what follows."""
    run = job.run
    returncode = getattr(run, "returncode", None)
    if job.abandoned and job.action not in CANCELLABLE:
        return Finished(job, Outcome.CANCELLED, f"The scene was closed before {job.action.value} ended: its result is not shown.")
    if getattr(run, "timed_out", False):  # a ChildCommand stopped at its time limit (it reads as cancelled too)
        return Finished(job, Outcome.FAILED, f"{job.action.value} took longer than its time limit and was stopped.")
    if job.cancel_requested or getattr(run, "cancelled", False) or returncode == 130:
        return Finished(job, Outcome.CANCELLED, "Cancelled: nothing was changed.")
    failed = (returncode not in (0, None)) or bool(getattr(run, "error", None))
    if job.action == Action.SEGMENT and getattr(run, "result", True) is None:
        failed = True  # exited 0 without a result event: nothing to import
    if failed:
        return Finished(job, Outcome.FAILED, failure_message(run))
    return Finished(
        job,
        Outcome.SUCCEEDED,
        "Done.",
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


@dataclass
class PanelState:
    """The running jobs of one panel and what they allow.

    At most one job per action. ``poll`` is called from a timer (every ~200 ms); it never blocks.
    """

    jobs: dict[Action, Job] = field(default_factory=dict)
    devices: dict[str, str] | None = None
    probe_wanted: bool = True

    def busy(self, action: Action) -> bool:
        return action in self.jobs

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

    def cancel_all(self) -> None:
        """Scene closing or module cleanup: the segmentation and model install stop; measure, export and the
        queue look-up (short, and an export must finish writing its version) end on their own, unshown."""
        for action, job in list(self.jobs.items()):
            job.abandoned = True
            if action in CANCELLABLE and not job.cancel_requested:
                job.cancel_requested = True
                job.run.cancel()

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

    def dependencies_installed(self) -> None:
        """torch may have arrived: probe the devices again."""
        self.devices = None
        self.probe_wanted = True

    def enabled(self, inputs: PanelInputs) -> dict[str, bool]:
        """Enabled state of each widget (by its name in the .ui) for these inputs and the running jobs."""
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
        }


def result_volume(scene, job: Job):
    """The volume node a segmentation's masks go onto: the one that was segmented.

    Raises ValueError with one sentence when that volume left the scene during the run (closed scene,
    deleted node): the result is not put on another scan.
    """
    node = scene.GetNodeByID(job.volume_id) if job.volume_id else None
    if node is None:
        raise ValueError("The segmented volume was removed from the scene during the run: its result was not imported.")
    return node


# Results shown in the scene


def next_case_path(returncode: int | None, stdout: str, is_file) -> str | None:
    """The scan printed by ``sciseg queue next`` ("<score>  <path>"); None when the queue is done or it failed."""
    if returncode != 0:
        return None
    for line in stdout.splitlines():
        _score, _separator, path = line.strip().partition("  ")
        if path and is_file(path):
            return path
    return None


def compare_result(stdout: str) -> dict[str, float]:
    """The JSON line ``sciseg compare`` printed (cord/lesion Dice, voxels added/removed, lesion-wise F1)."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise ValueError("sciseg compare printed no result")
    return json.loads(lines[-1])


def lesion_centre_for_row(table_node, lesion_table_id: str | None, row: int, centres: dict[int, tuple[float, float, float]]):
    """The RAS centre (mm) of the lesion on a clicked row of the lesion table; None for any other table or row.

    Only the lesion table SCIseg made (``lesion_table_id``) counts, and the lesion label is read from its
    ``label`` column by name (never column 0 of whatever table the view shows).
    """
    if table_node is None or lesion_table_id is None or table_node.GetID() != lesion_table_id:
        return None
    column = table_node.GetColumnIndex("label")
    if column < 0 or row < 0 or row >= table_node.GetNumberOfRows():
        return None
    try:
        label = int(float(table_node.GetCellText(row, column)))
    except ValueError:
        return None
    return centres.get(label)


def new_log_lines(run: Any) -> list[str]:
    """The child's log lines since the last call, for the panel's log box (children without a streamed log: none)."""
    reader = getattr(run, "new_log_lines", None)
    return list(reader()) if reader is not None else []


def segment_choice_items(choices: list[str], segments: list[tuple[str, str]], what: str) -> list[tuple[str, str | None]]:
    """(label, segment id or None) items to ask which segment is the cord/lesion (``what``).

    The matching candidates first (all segments when none matched), then "none" (an explicit, empty choice).
    """
    names = dict(segments)
    candidates = choices or [segment_id for segment_id, _name in segments]
    return [(f"{names.get(sid, sid)} ({sid})", sid) for sid in candidates] + [(f"None: no {what} in this segmentation", None)]
