"""What the SCIseg panel's buttons do, without Qt: the one dependency check, starting each child, the timer's
poll, and what a finished job shows.

:class:`PanelController` receives its collaborators (SlicerNNUnet's shape): the MRML scene, Slicer's segmentations
logic, the Python that runs the children, ``ensure`` (the module logic's dependency install, which may ask and run
pip) and a :class:`~SCIsegLib.panel_view.PanelView`. ``SCIseg/SCIseg.py`` connects the widgets' signals to its
methods; tests drive it on slicer-core with a recording view and real children. With ``engines``
(:class:`~SCIsegLib.panel_warm.PanelEngines`) a warm engine is kept loaded for Segment clicks; without, every click
starts ``sciseg segment``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from typing import Any

from . import dependencies, models, panel, panel_binding, runner
from .panel import Action, Finished, Outcome, PanelState
from .panel_session import CaseSession
from .panel_warm import PanelEngines
from .panel_view import PanelView, not_ready_sentence, segment_again_question, segment_subject


def run_options(parameters: Any) -> runner.RunOptions:
    """``sciseg segment``'s options from the panel's parameter node."""
    return runner.RunOptions(
        model=parameters.model, device=parameters.device, tta=parameters.testTimeAugmentation, step=parameters.stepSize,
        keep_largest_cord=parameters.keepLargestCord, fill_holes=parameters.fillHoles,
        lesion_in_cord=parameters.lesionInsideCord)


def model_to_run(saved: str, shown: str, count: int) -> str:
    """Segment runs the model the combo box shows: a saved model that is not installed (a scene from another computer)
    gives way to the one shown; with an empty combo box the saved name stays."""
    return shown if count > 0 and shown else saved


class PanelController:
    """The panel's actions. ``parameters``: the parameter node (set by the widget; None while the scene closes)."""

    def __init__(self, scene: Any, logic: Any, view: PanelView, python_executable: str,
                 ensure: Callable[[Action], bool], installed: list[str] | None = None,
                 engines: PanelEngines | None = None) -> None:
        self.scene, self.logic, self.view, self.python = scene, logic, view, python_executable
        self.ensure = ensure
        self.installed = installed if installed is not None else []  # what ensure installed, in words (the log)
        self.state = PanelState()
        self.session = CaseSession(scene, logic, self.state, view)
        self.session.segment = self.segment
        self.predictions: str | None = None  # this session's folder of the model's masks (removed at shutdown)
        self._polling = False
        self.engines = engines  # the warm engine (None: every Segment click starts a cold child)

    @property
    def parameters(self) -> Any:
        return self.session.parameters

    @parameters.setter
    def parameters(self, value: Any) -> None:
        self.session.parameters = value

    # The one dependency check before every action that starts a child

    def ready(self, action: Action) -> bool:
        """Offer to install what ``action``'s child imports; True when it can run. False while a job of that action
        runs or an install is under way; every action widget is disabled while pip runs (it processes events)."""
        if not self.state.may_start(action):
            return False
        self.state.installing_dependencies = True
        self.view.refresh()
        try:
            ready = self.ensure(action)
        except Exception:  # noqa: BLE001 - a failed pip run was shown; say below what is missing
            logging.exception("SCIseg: installing the dependencies failed")
            ready = False
        finally:
            self.state.installing_dependencies = False
            self.view.refresh()
        self.view.log(self.installed)
        if self.installed:
            self.view.say("; ".join(self.installed))  # which torch build arrived, and nnU-Net
            self.installed.clear()
            self.state.dependencies_installed()  # torch may have arrived: probe the devices again
            self._forget_engine_checks()
            self.view.devices_changed()
        if not ready:
            self.view.say(not_ready_sentence(dependencies.missing_modules(panel.modules_needed(action))))
        return ready

    def _start(self, action: Action, failure: str, starting: str, make: Callable[[], Any], fresh: bool = False,
               **nodes: Any) -> None:
        """Start ``action``'s child (``make()``); ``fresh``: a new log and progress bar (segment, model install)."""
        with self.view.trying(failure):
            self.state.start(action, make(), **nodes)
            if fresh:
                self.view.clear_log()
                self.view.progress(0)
            self.view.say(starting)
        self.view.refresh()

    # Segment, install a model, cancel

    def segment(self, *unused: Any) -> None:
        if not self.ready(Action.SEGMENT):
            return
        volume = self.parameters.inputVolume
        corrected = self.session.unsaved_segmentation(volume)  # the new result would take over the case and its draft
        if corrected is not None and not self.view.ask(segment_again_question(self.session.case.scan.stem, corrected.GetName())):
            self.view.say("Not segmented: export your corrections first.")
            return
        self.session.keep_work()  # drafted before anything else can replace them
        from . import panel_jobs

        def started() -> runner.SegmentationRun:
            if volume is None:
                raise ValueError("Select a T2w volume first.")
            options = run_options(self.parameters)
            engine = self.engines.for_click(options) if self.engines is not None else None
            return panel_jobs.start_segmentation(volume, options, self.python, engine)

        self._start(Action.SEGMENT, "The segmentation could not be started.", "Starting...", started, fresh=True,
                    volume_id=volume.GetID() if volume is not None else None)

    def grey_matter(self, *unused: Any) -> None:
        """Segment the grey matter of the selected volume into the selected segmentation (``panel_grey_matter``)."""
        from . import panel_grey_matter as gm

        volume, segmentation = self.parameters.inputVolume, self.parameters.segmentation
        model = gm.grey_matter_model(models.list_models())
        if model is None or volume is None or segmentation is None:
            self.view.say(gm.NO_MODEL if model is None else "Select a volume and its segmentation first.")
            return
        if not self.paired(segmentation, volume) or not gm.may_replace(segmentation, self.view.ask) or not self.ready(Action.GREY_MATTER):
            return
        from .panel_grey_matter_case import grey_matter_digest

        at_click = grey_matter_digest(self.scene, self.logic, segmentation, volume)  # edits during the run are asked about
        self._start(Action.GREY_MATTER, "The grey matter could not be segmented.", gm.model_sentence(model),
                    lambda: gm.start(volume, model, self.parameters.device, self.python, at_click), fresh=True,
                    volume_id=volume.GetID(), segmentation_id=segmentation.GetID())

    def install_model(self, source: str) -> None:
        """Download (a model name) or unzip (a path) in a child, with progress and Cancel."""
        if not self.ready(Action.INSTALL_MODEL):
            return

        def started() -> runner.ModelInstallRun:
            run = runner.ModelInstallRun(source, python_executable=self.python)
            run.start()
            return run

        self._start(Action.INSTALL_MODEL, "The model could not be installed.", f"Installing {source}...", started, fresh=True)

    def cancel(self, *unused: Any) -> None:
        if self.state.cancel():  # returns at once; the timer sees the child end
            self.view.say("Cancelling...")
        self.view.refresh()

    def edit(self, *unused: Any) -> None:
        from . import mrml

        segmentation = self.parameters.segmentation
        self.view.open_editor(segmentation, self.parameters.inputVolume, mrml.lesion_to_select(segmentation))

    # Measure, export, compare, next case

    def paired(self, segmentation, volume) -> bool:
        """True when the segmentation was made on the volume; else the reason, in the status line and a dialog."""
        from . import mrml

        problem = mrml.pairing_problem(segmentation, volume)
        if problem:
            self.view.say(problem)
            self.view.error(problem)
        return problem is None

    def segment_choices(self, segmentation) -> dict | None:
        """The cord and lesion segment ids, asking the rater when terminology, name and id do not tell; None: cancelled."""
        from . import mrml
        from .panel_results import segment_choice_items

        chosen: dict[str, str | None] = {}
        while True:
            try:
                return mrml.resolve_sciseg_segments(segmentation, chosen)
            except mrml.SegmentChoiceError as error:
                for sciseg_id, candidates in error.choices.items():
                    items = segment_choice_items(candidates, error.segments, segment_subject(sciseg_id == mrml.LESION.segment_id))
                    index = self.view.choose(str(error), [label for label, _value in items])
                    if index is None:
                        return None
                    chosen[sciseg_id] = items[index][1]

    def _checked(self, action: Action, *segmentations, paired_first: tuple = ()) -> tuple[Any, list[dict]] | None:
        """The volume and each segmentation's segment choices (asked in this order), once the dependencies are
        there and every segmentation was made on the volume (checked in ``paired_first``'s order, else this one)."""
        if not self.ready(action):
            return None
        volume = self.parameters.inputVolume
        if not all(self.paired(segmentation, volume) for segmentation in paired_first or segmentations):
            return None
        choices = []
        for segmentation in segmentations:
            chosen = self.segment_choices(segmentation)
            if chosen is None:
                return None
            choices.append(chosen)
        return volume, choices

    def measure(self, *unused: Any) -> None:
        from . import panel_jobs

        segmentation = self.parameters.segmentation
        checked = self._checked(Action.MEASURE, segmentation)
        if checked is None:
            return
        volume, [chosen] = checked
        self._start(Action.MEASURE, "The lesions could not be measured.", "Measuring lesions...",
                    lambda: panel_jobs.start_measurement(self.scene, self.logic, segmentation, volume, self.python,
                                                         self.parameters.nliSlice, chosen, self.session.case_of(volume)),
                    volume_id=volume.GetID(), segmentation_id=segmentation.GetID())

    def export(self, *unused: Any) -> None:
        from . import panel_jobs
        from .panel_view import superseded_export_sentence

        segmentation = self.parameters.segmentation
        if panel_binding.is_superseded(segmentation):  # its edits are kept in a file; the case's draft is another's
            self.view.say(superseded_export_sentence(segmentation.GetName()))
            return
        checked = self._checked(Action.EXPORT, segmentation)
        if checked is None:
            return
        volume, [chosen] = checked
        inputs = self.view.inputs()
        rater, folder = inputs.rater.strip(), inputs.export_folder
        self.view.remember("SCIseg/Rater", rater)
        self.view.remember("SCIseg/ExportFolder", folder)
        self._start(Action.EXPORT, "The corrections could not be exported.", "Exporting...",
                    lambda: panel_jobs.start_export(self.scene, self.logic, segmentation, volume, folder, rater, self.python,
                                                    chosen, self.session.case_of(volume)),
                    volume_id=volume.GetID(), segmentation_id=segmentation.GetID())

    def compare(self, *unused: Any) -> None:
        from . import panel_jobs

        compare_id = self.view.inputs().compare_id
        other = self.scene.GetNodeByID(compare_id) if compare_id else None
        current = self.parameters.segmentation
        checked = self._checked(Action.COMPARE, other, current, paired_first=(current, other))
        if checked is None:
            return
        volume, [other_choices, current_choices] = checked
        self._start(Action.COMPARE, "The segmentations could not be compared.", "Comparing...",
                    lambda: panel_jobs.start_compare(self.scene, self.logic, other, current, volume, self.python,
                                                     other_choices, current_choices, self.session.case_of(volume)),
                    volume_id=volume.GetID())

    def next_case(self, *unused: Any) -> None:
        if not self.ready(Action.NEXT_CASE):
            return
        from .panel_results import next_case_arguments

        inputs = self.view.inputs()
        self.view.remember("SCIseg/Queue", inputs.queue_path)
        arguments = next_case_arguments(inputs.queue_path, inputs.export_folder)
        self._start(Action.NEXT_CASE, "The review queue could not be read.", "Looking for the next case...",
                    lambda: runner.ChildCommand(arguments, self.python))

    # The timer

    def poll(self, probe: Callable[[], Any] | None = None) -> None:
        """Every 200 ms: device probe, pause after strokes, job progress, log lines, finished jobs. Never waits on a
        child, and is not re-entered (an error dialog of a finished job runs a nested event loop)."""
        if self._polling:
            return
        self._polling = True
        try:
            self._poll(probe or (lambda: runner.DeviceProbe(self.python)))
        finally:
            self._polling = False

    def _poll(self, probe: Callable[[], Any]) -> None:
        self._keep_engine_warm()
        changed, lines = self.state.poll_probe(probe)
        self.view.log(lines)
        if changed:
            self.view.devices_changed()
        self.session.tick()
        for job in self.state.jobs.values():
            self.view.log(panel.new_log_lines(job.run))
        events, ended = self.state.poll()
        for event in events:
            if event.get("event") == "progress" and "fraction" in event:
                self.view.progress(int(1000 * event["fraction"]))
                self.view.say(event.get("message") or event.get("stage", ""))
            elif event.get("event") == "warning" and event.get("message"):
                self.view.log([str(event["message"])])
        for finished in ended:
            self.view.log(panel.new_log_lines(finished.job.run))
            try:
                self.finished(finished)
            except Exception:  # noqa: BLE001 - shown by view.trying, which raises again; the other jobs go on
                logging.exception("SCIseg: the end of the %s job could not be handled", finished.job.action.value)
        if ended:
            self.view.refresh()

    def finished(self, finished: Finished) -> None:
        """What a job that ended shows; its temporary files go in any case."""
        job = finished.job
        try:
            if finished.outcome == Outcome.CANCELLED:
                self.view.progress(0)
                self.view.say(finished.message)
            elif finished.outcome == Outcome.FAILED:
                self.view.say(f"Failed: {finished.message}")
                self.view.log((getattr(job.run, "stderr", "") or "").splitlines())
                self.view.show_log()
                self.view.error(finished.message, job.run.log_tail(40) if hasattr(job.run, "log_tail") else getattr(job.run, "stderr", ""))
            else:
                if finished.refresh_models:
                    self._forget_engine_checks()  # a model arrived: its engine may start
                from .panel_shown import SHOWN

                failure, show = SHOWN[job.action]
                with self.view.trying(failure):
                    show(self, job)
        finally:
            panel.remove_job_files(job)

    def _keep_engine_warm(self) -> None:
        """The warm engine for what Segment would run now: started, or restarted, in the background."""
        if self.engines is None or self.parameters is None:
            return
        try:
            self.engines.want(run_options(self.parameters))
        except Exception:  # noqa: BLE001 - Segment goes cold; the jobs are still polled
            logging.exception("SCIseg: the warm engine could not be started")

    def _forget_engine_checks(self) -> None:
        if self.engines is not None:
            self.engines.forget_checks()

    def row_clicked(self, table_node, selected_rows: list[int], current_row: int) -> None:
        """A lesion table view's selection changed: jump to the lesion on the selected row. The selected cell, not the
        current index: a keyboard move emits selectionChanged() before the current index moves
        (QItemSelectionModel::setCurrentIndex selects first); a mouse click sets both."""
        centre = self.session.lesion_centre(table_node, (selected_rows or [current_row])[0])
        if centre is not None:
            self.view.jump_to(centre)

    # Scene and module life

    def select_first_scan(self) -> None:
        """With no volume selected, the scene's first scan (never a label map) is."""
        from . import mrml

        scan = mrml.first_scan(self.scene) if self.parameters is not None and not self.parameters.inputVolume else None
        if scan is not None:
            self.parameters.inputVolume = scan

    def report_versions(self, problems: list[str]) -> None:
        """At start-up: a pinned package (nnU-Net, ...) whose installed version differs from the one tested."""
        self.view.log(problems)
        if problems:
            self.view.say(problems[0])

    def device_chosen(self, index: int, device: str | None) -> None:
        """The device combo box's item ``index`` (value ``device``) was chosen; -1: the box was emptied."""
        if self.parameters is not None and index >= 0:
            self.parameters.device = device or "auto"

    def model_shown(self, name: str, count: int) -> None:
        """The model combo box shows ``name`` (of ``count`` models): Segment runs it."""
        if self.parameters is not None and model_to_run(self.parameters.model, name, count) != self.parameters.model:
            self.parameters.model = model_to_run(self.parameters.model, name, count)

    def model_chosen(self, name: str, count: int) -> None:
        """The rater chose ``name`` in the model combo box: Segment runs it; the demo model gets a warning."""
        from .panel_view import model_warning

        self.model_shown(name, count)
        warning = model_warning(name, models.BUNDLED_DEMO)
        if warning:
            self.view.say(warning)

    def scene_closing(self) -> None:
        self.session.scene_closing()
        self.state.scene_closing()  # the timer finishes them; an export and a model install go on and are reported

    def shutdown(self) -> None:
        """Reload or Slicer exit: unsaved edits go to a draft, every child stops, temporary files go."""
        try:
            self.session.keep_work()
        except Exception:  # noqa: BLE001 - exit goes on; the autosaved draft (a pause after each stroke) is there
            logging.exception("SCIseg: the unsaved edits could not be drafted")
        self.session.observe(None)
        left = self.state.shutdown()
        if left:
            logging.warning("SCIseg: %s did not stop", ", ".join(job.action.value for job in left))
        if self.engines is not None:
            self.engines.close()  # Reload or exit: the warm engine ends with the module
        if self.predictions:
            shutil.rmtree(self.predictions, ignore_errors=True)
