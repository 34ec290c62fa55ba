"""What a finished job of the SCIseg panel shows, without Qt: the imported segmentation, the installed model, the
lesion table and chart, the version an export wrote, the comparison, the next case of the queue.

Each function takes the :class:`~SCIsegLib.panel_controller.PanelController` (its scene, logic, session, view) and the
job; :data:`SHOWN` is the controller's dispatch. Tested through the controller (``Testing/test_panel_controller.py``,
``Testing/test_panel.py``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import panel
from .panel import Action
from .panel_view import exported_sentence, measurement_sentence, segmented_sentence, still_next_sentence

if TYPE_CHECKING:
    from .panel_controller import PanelController


def show_segmentation(controller: PanelController, job: panel.Job) -> None:
    """Import the masks onto the volume that was segmented (``panel.result_volume``), whatever is selected now."""
    from . import panel_jobs

    volume = panel.result_volume(controller.scene, job)
    if not controller.predictions or not os.path.isdir(controller.predictions):
        controller.predictions = tempfile.mkdtemp(prefix="sciseg-predictions-")
    segmentation = panel_jobs.import_result(controller.scene, controller.logic, job.run, volume, controller.predictions,
                                            controller.session.case_of(volume))
    controller.session.rebind(volume, segmentation)
    controller.parameters.inputVolume = volume
    controller.parameters.segmentation = segmentation
    controller.view.progress(1000)
    controller.view.say(segmented_sentence(segmentation.GetName()))


def show_grey_matter(controller: PanelController, job: panel.Job) -> None:
    """The grey-matter mask into the segmentation it was started for, on the volume that was segmented; grey matter
    the rater edited during the run is replaced only when the rater says so."""
    from .panel_grey_matter import NOT_IMPORTED, import_run, may_import

    volume = panel.result_volume(controller.scene, job)
    segmentation = controller.scene.GetNodeByID(job.segmentation_id) if job.segmentation_id else None
    if segmentation is None:
        raise ValueError("The segmentation was removed from the scene during the run: the grey matter was not imported.")
    if not may_import(controller.scene, controller.logic, job.run, segmentation, volume, controller.view.ask):
        controller.view.progress(0)
        controller.view.say(NOT_IMPORTED)
        return
    if not controller.predictions or not os.path.isdir(controller.predictions):
        controller.predictions = tempfile.mkdtemp(prefix="sciseg-predictions-")
    import_run(controller.scene, controller.logic, job.run, segmentation, volume, controller.predictions)
    controller.view.progress(1000)
    controller.view.say(f"Done: grey matter added to '{segmentation.GetName()}'. Correct it with Edit; Export writes it.")


def show_installed_model(controller: PanelController, job: panel.Job) -> None:
    controller.view.models_changed((getattr(job.run, "result", None) or {}).get("name"))
    controller.view.progress(1000)
    controller.view.say("Model installed.")


def show_measurement(controller: PanelController, job: panel.Job) -> None:
    from . import panel_jobs

    volume = panel.result_volume(controller.scene, job)
    table, chart, centres = panel_jobs.finish_measurement(controller.scene, job.run, volume)
    controller.session.lesion_tables[table.GetID()] = centres
    controller.view.show_table(table, chart)
    controller.view.say(measurement_sentence(len(centres), controller.parameters.nliSlice if controller.parameters else -1))


def show_export(controller: PanelController, job: panel.Job) -> None:
    """The version written; the segmentation's base becomes it. Edits made while the export ran are in no version:
    they are drafted again at once, against it. An export that ends after its scene closed only says what it wrote."""
    from . import panel_case, panel_grey_matter_case
    from .panel_results import export_summary

    summary = export_summary(job.run.stdout)
    controller.view.say(summary)
    controller.view.log(job.run.stdout.splitlines())
    if job.abandoned:  # the scene closed meanwhile: its node ids now name the new scene's nodes, another case's
        return
    segmentation = controller.scene.GetNodeByID(job.segmentation_id) if job.segmentation_id else None
    volume = controller.scene.GetNodeByID(job.volume_id) if job.volume_id else None
    if panel_case.after_export(segmentation, job.run.stdout):
        panel_grey_matter_case.after_export(segmentation, volume, job.run.stdout)
        controller.session.rebind(volume, segmentation)
        if volume is not None:
            controller.view.say(exported_sentence(summary, controller.session.keep_after_export(volume, segmentation)))


def show_comparison(controller: PanelController, job: panel.Job) -> None:
    from .panel_results import compare_result, comparison_sentence

    controller.view.say(comparison_sentence(job.run.otherName, compare_result(job.run.stdout)))


def open_next_case(controller: PanelController, job: panel.Job) -> None:
    """Load the queue's next scan and select it; its case opens and, with nothing to show, it is segmented."""
    from .panel_results import next_case_path

    path = next_case_path(job.run.returncode, job.run.stdout, os.path.isfile)
    if path is None:
        controller.view.say(job.run.stdout.strip() or "The queue is empty.")
        return
    from . import panel_case

    loaded = panel_case.volume_of_file(controller.scene, path)  # never a second node of a scan in the scene
    if loaded is not None and controller.parameters is not None and loaded is controller.parameters.inputVolume:
        controller.view.say(still_next_sentence(loaded.GetName()))
        return
    volume = loaded or controller.view.load_volume(path)
    if controller.parameters is None:  # the scene was closed and the module not entered since
        return
    controller.session.segment_when_opened = True
    controller.parameters.inputVolume = volume


#: What a job that succeeded shows, and the sentence when that fails.
SHOWN: dict[Action, tuple[str, Callable[["PanelController", panel.Job], None]]] = {
    Action.SEGMENT: ("The segmentation could not be imported.", show_segmentation),
    Action.INSTALL_MODEL: ("The result could not be shown.", show_installed_model),
    Action.MEASURE: ("The measurements could not be shown.", show_measurement),
    Action.EXPORT: ("The result could not be shown.", show_export),
    Action.COMPARE: ("The result could not be shown.", show_comparison),
    Action.NEXT_CASE: ("The next case could not be loaded.", open_next_case),
    Action.GREY_MATTER: ("The grey matter could not be imported.", show_grey_matter),
}
