"""The trame UI of ``sciseg review``: widgets bound to :mod:`cases`, :mod:`session` and trame-slicer's editor.

Built from trame-slicer's parts (``SlicerApp``, ``LayoutManager``, remote-rendered slice views,
``SegmentationEditor``) rather than its packaged ``SegmentationApp``, whose effect pipelines have no
view in 2.0.0. One app holds one scene, and trame shares its state with every tab connected to it, so
``sciseg review`` runs a front (:mod:`front`) that gives each browser tab its own session: a worker
process (:mod:`worker`) serving this app on 127.0.0.1, reached through the front's ``/s/<session>/``
(decisions in :mod:`launcher`). Two tabs only share an app when they open the same session address
(a duplicated tab): both are then warned. Exports of the same case by two sessions are ordered by the
exporter's lock, and the second rater is told.

Keyboard: Slicer's keys where Slicer has one (:mod:`keys`; ``?`` shows the card). Apply threshold adds lesion
inside the cord only and asks before a large change (:mod:`threshold`); the lesion table is measured on the cord's
box (:mod:`lesion_table`); Draw closes as in Slicer (:mod:`draw`).

The rater's work (each decision in the case model, :mod:`SCIsegLib.cases`, or in :mod:`session`):

* The title, the counts, the lesion table and every export name the case open in the scene
  (``session.case``), never the one a running segmentation is for (``segmenting_id``); a segmentation made for
  another scan is refused by the case.
* A case opens at its latest version (whose and when shown), or the rater's own draft when there is one; the
  version list offers the draft, every version, the prediction and empty masks.
* After each stroke (Paint applies at the release) the counts, the lesion table and a draft (atomic, written in
  the background in order, when the masks differ from what was opened or exported) follow (:mod:`measures`). Opening another case (list, ``n``, Shift+N,
  the version list) with unsaved strokes asks: keep them as a draft, discard them, or stay. Closing or reloading the
  tab with unsaved strokes gets the browser's leave-page warning (the draft is on disk already).
* A tab opened at the front's ``/?case=<case id>`` (a QC report's "Open in sciseg review") opens that case once
  connected, like a click in the case list; the parameter is then dropped from the tab's address, so a reload keeps
  the session without opening the case again.
* The rater's name is kept in the browser (``localStorage``); a new tab (after a closed tab, a stopped worker) lists
  the cases holding this rater's drafts and opens them with the draft.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from trame.app import TrameApp
from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3
from trame_server.utils.asynchronous import create_task
from trame_slicer import module as trame_slicer_module
from trame_slicer.core import SlicerApp, VolumeWindowLevel
from trame_slicer.segmentation import (
    BrushDiameterMode,
    SegmentationEffectErase,
    SegmentationEffectIslands,
    SegmentationEffectPaint,
    SegmentationEffectScissors,
    SegmentationEffectSmoothing,
    SegmentationEditableAreaMode,
    SegmentationEffectThreshold,
    SegmentationIslandsMode,
)
from undo_stack import UndoStack
import SimpleITK as sitk

from ..errors import SCIsegError
from . import keys
from .case_notes import bind_case_notes, case_list_item_ui, case_notes_ui
from .cases import list_cases, next_uncorrected
from .draw import SlicerDrawEffect
from .grey_matter import bind_grey_matter
from .layout import ReviewViews
from .measures import MeasuresMixin
from .session import ReviewSession, publish_prediction, start_segmentation
from .threshold import REGIONS, plan_threshold, region_mask, slice_index_of
from .view_controls import OverlayControls, label_element, overlay_controls_ui, theme_toggle_ui
from .window_level import WindowLevelNoTool

EFFECTS = {
    "none": WindowLevelNoTool,  # a left-drag sets window/level, as in Slicer
    "paint": SegmentationEffectPaint,
    "erase": SegmentationEffectErase,
    "scissors": SegmentationEffectScissors,
    "draw": SlicerDrawEffect,  # Slicer's clicks: points, then double-click, right-click or Enter fills
    "islands": SegmentationEffectIslands,
    "threshold": SegmentationEffectThreshold,
    "smoothing": SegmentationEffectSmoothing,
}
KEYBOARD_JS = (  # every key goes to the server (keys.action_for decides); slice and undo keys are not the browser's
    "if (!window.scisegKeys) { window.scisegKeys = true;"
    " window.addEventListener('keydown', (e) => {"
    " const tag = (e.target && e.target.tagName) || '';"
    " const role = (e.target && e.target.getAttribute && e.target.getAttribute('role')) || '';"
    " if (tag === 'INPUT' || tag === 'TEXTAREA' || role === 'slider' || e.repeat && e.key.length === 1) return;"
    " const control = e.ctrlKey || e.metaKey;"
    f" if ({list(keys.KEYS_THE_BROWSER_MUST_NOT_HANDLE)}.includes(e.key) || control && 'zyZ'.includes(e.key))"
    " e.preventDefault();"
    " window.trame.trigger('review_key', [e.key, control, e.altKey]); }); }"
)
RATER_STORAGE, CASE_STORAGE = "sciseg_review_rater", "sciseg_review_case"
LEAVE_JS = (  # the rater's name and last case come back from this browser; leaving with unsaved strokes asks first
    "if (!window.scisegLeave) { window.scisegLeave = true;"
    f" const saved = window.localStorage.getItem('{RATER_STORAGE}');"
    " if (saved && !window.trame.state.get('rater')) { window.trame.state.set('rater', saved); }"
    f" const last = window.localStorage.getItem('{CASE_STORAGE}');"
    " if (last && !window.trame.state.get('case_id')) { window.trame.state.set('last_case', last); }"
    " window.addEventListener('beforeunload', (e) => {"
    " if (window.trame.state.get('unsaved')) { e.preventDefault(); e.returnValue = ''; } }); }"
)
OPEN_JS = (  # ?case=<case id> (the front's answer to a QC report's link): opened once, then dropped from the address
    "if (!window.scisegOpenAsked) { window.scisegOpenAsked = true;"
    " const address = new URL(window.location.href); const wanted = address.searchParams.get('case');"
    " if (wanted) { address.searchParams.delete('case'); window.history.replaceState(null, '', address.toString());"
    " window.trame.trigger('open_case', [wanted]); } }"
)
DRAFT = "draft"  # the version list's entry for the rater's own draft


class ReviewApp(MeasuresMixin, TrameApp):
    """The rater web app on one BIDS root. ``token`` (None on loopback) is checked by wslink on every connection."""

    def __init__(self, root: Path, queue: Path | None = None, model: str = "sciseg-v2", server=None) -> None:
        super().__init__(server)
        self.server.enable_module(trame_slicer_module)
        self.root = Path(root)
        self.queue = queue
        self.model = model
        self.slicer_app = SlicerApp()
        self.session = ReviewSession(self.slicer_app, self.root, model)
        self.undo_stack = UndoStack(undo_limit=20)
        self.slicer_app.segmentation_editor.set_undo_stack(self.undo_stack)
        self.run = None
        self._init_measures()  # counts, draft and lesion table after each edit (measures.py)
        self._brush_effects: set[int] = set()  # effects whose brush size changes are shown on the slider
        self._pointer_view = None  # the slice view the pointer was last over: the slice keys step it
        self.views = ReviewViews(self.server, self.slicer_app)  # layout, view overlays, crosshair (layout.py)
        self.overlays = OverlayControls(self.state)  # per-segment overlay and theme (view_controls.py)
        for view in self.slicer_app.view_manager.get_slice_views():
            view.interactor().AddObserver("MouseMoveEvent", lambda *_, view=view: self._pointer_over(view), 100.0)
        self.count_before_each_frame(self.slicer_app.view_manager.get_slice_views())
        self.slicer_app.segmentation_editor.get_effect(WindowLevelNoTool).on_change = self._window_level_dragged
        self._initial_state()
        bind_case_notes(self)  # flags, note, who else has the case open
        bind_grey_matter(self)  # the grey-matter segment when a grey-matter model is installed
        self._build_ui()
        self.refresh_cases()

    # ------------------------------------------------------------------ state
    def _initial_state(self) -> None:
        self.state.update({
            "trame__title": "SCIseg review",
            "cases": [], "status_filter": "all", "case_id": "", "message": "", "error": "",
            "counts": {"cord_only": 0, "lesion": 0, "cord": 0}, "rater": "",
            "effect": "none", "brush_mm": 3.0, "sphere": False, "segment": "lesion", "lesion_visible": True,
            "shortcuts": False, "lesion_totals": "", "current_lesion": 0, "pointer_view": "",
            "threshold_region": "cord", "threshold_pending": None, "intensity_mask": False, "lesion_in_cord": False,
            "wl_window": 1.0, "wl_level": 0.5, "window_max": 2.0, "level_min": 0.0, "level_max": 1.0,
            "lesions": [], "tabs": 0, "active_effect": "none", "running": False, "progress": 0, "progress_text": "", "threshold": [0.0, 1.0],
            "segmenting_id": "", "unsaved": False, "pending": None, "bases": [], "base_choice": "", "resume": [],
            "opened_text": "", "last_case": "",
        })
        self.state.change("error")(lambda error, **_: error and self.state.update({"message": ""}))  # no stale "saved"
        self.state.change("status_filter")(lambda **_: self.refresh_cases())
        self.state.change("effect")(lambda effect, **_: self.set_effect(effect))
        self.state.change("brush_mm", "sphere")(lambda **_: self._apply_brush())
        self.state.change("segment")(lambda segment, **_: self._set_segment(segment))
        self.state.change("intensity_mask", "lesion_in_cord", "threshold")(lambda **_: self._apply_masking())
        self.state.change("lesion_visible")(lambda lesion_visible, **_: self._set_lesion_visible(lesion_visible))
        self.state.change("wl_window", "wl_level")(lambda wl_window, wl_level, **_: self._apply_window_level(wl_window, wl_level))
        self.server.trigger("review_key")(self.on_key)
        self.server.controller.on_client_connected.add(lambda: self._count_tabs(+1))
        self.server.controller.on_client_exited.add(lambda: self._count_tabs(-1))
        self.server.trigger("open_case")(self.open_case)  # a browser may send any string: open_case validates it
        self.state.change("rater", "last_case")(lambda **_: self._update_resume())

    # ------------------------------------------------------------------ actions (each calls the library)
    def refresh_cases(self) -> None:
        status = None if self.state.status_filter == "all" else self.state.status_filter
        self.state.cases = [case.as_dict() for case in list_cases(self.root, self.queue, status, self.session.holder)]
        self._update_resume()

    def _update_resume(self) -> None:
        """What a new tab offers while no case is open: the cases holding a draft of the rater named in this tab,
        then the case this browser had open last (both remembered by the browser, any list entry only)."""
        rater = str(self.state.rater or "").strip()
        drafts = [case["case_id"] for case in self.state.cases if rater in case["drafts"]]
        last = [case["case_id"] for case in self.state.cases if case["case_id"] == self.state.last_case]
        self.state.resume = drafts + [case_id for case_id in last if case_id not in drafts]

    def open_case(self, case_id: str, choice: str | None = None) -> None:
        """Open a case (``choice``: a base name or :data:`DRAFT`; None: the rater's draft, else the latest version).

        With unsaved strokes on the open case, their draft is written and the rater is asked first
        (:meth:`resolve_pending`). A case with neither prediction nor version is segmented in a child first.
        """
        self.state.error = ""
        if self.state.running:
            self.state.error = f"{self.state.segmenting_id} is being segmented; wait for it or cancel it first."
            return
        if self.session.case is not None and self.save_draft():
            current = self.session.case.case_id
            self.state.pending = {
                "case_id": case_id, "choice": choice or "",
                "text": f"{current} has strokes that are not exported (kept as your draft). Keep the draft and open "
                        f"{case_id}{f' from {choice}' if choice else ''}, discard the strokes, or stay?",
            }
            return
        self._open(case_id, choice)

    def resolve_pending(self, answer: str) -> None:
        """The rater's answer to "unsaved strokes": ``keep`` (the draft stays), ``discard`` (the draft goes), ``stay``."""
        pending, self.state.pending = self.state.pending, None
        if not pending or answer not in ("keep", "discard"):
            self._show_bases()  # the version list back to the open case's base
            return
        if answer == "discard":
            self.session.discard_draft()
        self._open(pending["case_id"], pending["choice"] or None)
        self.refresh_cases()  # the list shows the draft kept (or gone)

    def _open(self, case_id: str, choice: str | None) -> None:
        rater = str(self.state.rater or "")
        try:
            if choice is None and self.session.needs_segmentation(case_id):
                self._start_segmentation(case_id)
                return
            draft_of = rater if choice in (None, DRAFT) else None
            opened = self.session.open_case(case_id, choice=None if choice == DRAFT else choice, draft_of=draft_of,
                                            rater=rater)
        except SCIsegError as error:
            self.state.error = str(error)
            return
        self.state.case_id = case_id
        self.state.effect = "none"
        self.set_effect("none")  # also when it was "none" already: the no-tool of this app (window/level drag)
        self._show_case()
        self.state.opened_text = opened.case.opening_sentence(case_id)
        self.state.message = self.state.opened_text

    def choose_base(self, name: str) -> None:
        """The version list: open the open case again from ``name`` (asking first when strokes are unsaved)."""
        if self.session.case is not None and name != self.state.base_choice:
            self.open_case(self.session.case.case_id, name)

    def _show_bases(self) -> None:
        """The version list of the open case: the rater's draft, every version (newest first), prediction, empty."""
        case = self.session.case.case
        items = [{"value": base.name, "title": base.describe()} for base in case.bases]
        if case.draft is not None:
            items.insert(0, {"value": DRAFT, "title": f"your {case.draft.describe()}"})
        self.state.bases = items
        self.state.base_choice = DRAFT if case.draft is not None else case.base.name

    def discard_draft(self) -> None:
        """Forget the strokes: remove the rater's draft and open the case's base again."""
        if self.session.case is None:
            return
        self.session.discard_draft()
        self._open(self.session.case.case_id, self.session.case.case.base.name)
        self.refresh_cases()

    def _show_case(self) -> None:
        volume = self.session.case.volume_node
        display = self.slicer_app.display_manager
        display.show_volume_in_slice_background(volume)
        display.show_volume_in_slice_foreground(None)
        low, high = VolumeWindowLevel.get_volume_auto_min_max_range(volume)
        window, level = VolumeWindowLevel.min_max_to_window_level(low, high)
        scalar_low, scalar_high = VolumeWindowLevel.get_volume_scalar_range(volume)
        self.state.update({
            "window_max": float(scalar_high - scalar_low) or 1.0, "level_min": float(scalar_low), "level_max": float(scalar_high),
            "wl_window": float(window), "wl_level": float(level), "threshold": [float(level), float(scalar_high)],
            "segment": "lesion", "lesion_visible": True,
        })
        self._apply_window_level(window, level)
        self._set_segment("lesion")
        display.reset_views()
        self.views.show_case(volume)
        self.overlays.show_case(self.session.case.segmentation_node)
        self.state.pending = None
        self._show_bases()
        centre = self.session.largest_lesion_centre_ras()
        if centre is not None:  # start on the largest lesion: what the rater has to check first
            self._centre_views(centre)
        self._show_measures_of_opened_case()

    def next_case(self, step: int = 1) -> None:
        cases = list_cases(self.root, self.queue)
        if step < 0:
            ids = [case.case_id for case in cases]
            if self.state.case_id in ids and ids.index(self.state.case_id) > 0:
                self.open_case(ids[ids.index(self.state.case_id) - 1])
            return
        following = next_uncorrected(cases, self.state.case_id or None)
        if following is None:
            self.state.message = "end of the queue: every case is corrected"
            return
        self.open_case(following.case_id)

    def export(self) -> None:
        """Export the open case (the one in the scene, whatever is being segmented) as a new version with its parent."""
        if self.session.case is None:
            return
        case_id = self.session.case.case_id
        try:
            outcome = self.session.export(str(self.state.rater or ""))
        except SCIsegError as error:
            self.state.error = str(error)
            return
        text = f"saved version v{outcome.result.version:03d} of {case_id}"
        self.state.message = text + (f" - {outcome.warning}" if outcome.warning else "")
        self.state.error = ""
        self.state.unsaved = False
        self._show_bases()
        self.refresh_cases()

    def set_effect(self, name: str) -> None:
        if self.session.case is None or name not in EFFECTS:
            return
        self.slicer_app.segmentation_editor.set_active_effect_type(EFFECTS[name])
        self._apply_brush()
        self.state.active_effect = name  # shown once the server has switched: strokes before it use the old tool

    def _apply_brush(self) -> None:
        effect = self.slicer_app.segmentation_editor.active_effect
        if hasattr(effect, "set_brush_diameter"):
            if id(effect) not in self._brush_effects:  # Shift+wheel in a view changes the effect's size: the slider follows
                self._brush_effects.add(id(effect))
                effect.parameters_changed.connect(lambda effect=effect: self._brush_changed_in_view(effect))
            effect.set_brush_diameter(float(self.state.brush_mm), BrushDiameterMode.Absolute)
            effect.set_use_sphere_brush(bool(self.state.sphere))

    def _brush_changed_in_view(self, effect) -> None:
        shown = keys.clamp_brush(effect.get_brush_diameter())
        if effect is self.slicer_app.segmentation_editor.active_effect and shown != float(self.state.brush_mm):
            with self.state:
                self.state.brush_mm = shown

    def _apply_masking(self) -> None:
        """Segment Editor's masking on its editor node: "lesion only inside the cord" (editable area inside the
        segments, cord only + lesion, while the lesion is edited) and the intensity range (the Threshold slider)."""
        editor = self.slicer_app.segmentation_editor
        if self.session.case is None or editor.editor_node is None:
            return
        inside = bool(self.state.lesion_in_cord) and self.state.segment == "lesion"
        editor.set_editable_area(SegmentationEditableAreaMode.INSIDE_ALL_SEGMENTS if inside else SegmentationEditableAreaMode.EVERYWHERE)
        low, high = (float(v) for v in self.state.threshold)
        editor.editor_node.SetSourceVolumeIntensityMaskRange(low, high)
        editor.editor_node.SetSourceVolumeIntensityMask(bool(self.state.intensity_mask))

    def keep_largest_island(self) -> None:
        self._with_effect(SegmentationEffectIslands, lambda effect: effect.apply(SegmentationIslandsMode.KEEP_LARGEST_ISLAND))

    def remove_small_islands(self) -> None:
        self._with_effect(SegmentationEffectIslands, lambda effect: effect.remove_small_islands(10))

    def apply_threshold(self, confirmed: bool = False, intensities=None) -> None:
        """Add the Threshold slider's range to the lesion inside the cord (and the slice in view with region "slice"),
        asking first when that adds more than a few lesions' worth (:mod:`threshold`). Undoable, never removes.

        ``intensities``: the range the page shows, sent with the click (a slider's last move may still be on its way)."""
        self.state.threshold_pending = None
        if self.session.case is None:
            return
        if intensities is not None:
            self.state.threshold = [float(v) for v in intensities]
        labels = self.session.labels()
        image = sitk.GetArrayFromImage(self.session.reference_image())
        axis = index = None
        if self.state.threshold_region == "slice":
            view = self._pointer_view or self.slicer_app.view_manager.get_slice_views()[0]
            axis, index = self._slice_of(view)
        low, high = (float(v) for v in self.state.threshold)
        spacing = self.session.case.volume_node.GetSpacing()
        plan = plan_threshold(image, labels, low, high, region_mask(labels, self.state.threshold_region, axis, index),
                              float(spacing[0] * spacing[1] * spacing[2]))
        if plan.voxels == 0:
            self.state.message = f"no voxel in {low:g}-{high:g} {REGIONS[self.state.threshold_region]} to add"
            return
        if plan.needs_confirmation and not confirmed:
            self.state.threshold_pending = {"text": plan.question()}
            return
        self._add_lesion_voxels(plan.added)
        self.state.message = f"threshold added {plan.voxels} lesion voxels ({plan.volume_mm3:.0f} mm3)"

    def _slice_of(self, view) -> tuple[int, int]:
        """(array axis, index) of the image slice a slice view shows."""
        import numpy as np
        from vtkmodules.vtkCommonMath import vtkMatrix4x4

        matrix = vtkMatrix4x4()
        self.session.case.volume_node.GetRASToIJKMatrix(matrix)
        ras_to_ijk = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        slice_to_ras = view.get_view_node().GetSliceToRAS()
        centre = [slice_to_ras.GetElement(r, 3) for r in range(3)]
        normal = [slice_to_ras.GetElement(r, 2) for r in range(3)]
        return slice_index_of(ras_to_ijk, np.array(centre), np.array(normal))

    def _add_lesion_voxels(self, added) -> None:
        """Add a (z, y, x) bool array to the lesion through the editor (one undoable step, its masking bypassed)."""
        from trame_slicer.segmentation.segment_modifier import ModificationMode
        from vtkmodules.util.numpy_support import vtk_to_numpy

        editor = self.slicer_app.segmentation_editor
        editor.set_active_segment_id("lesion")
        modifier = editor.active_segment_modifier
        stroke = modifier.create_modifier_labelmap()
        dims = stroke.GetDimensions()
        voxels = vtk_to_numpy(stroke.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
        voxels[:] = added
        stroke.Modified()
        modifier.apply_labelmap(stroke, modification_mode=ModificationMode.Add, do_bypass_masking=True)
        editor.set_active_segment_id(self.state.segment)

    def apply_smoothing(self) -> None:
        self._with_effect(SegmentationEffectSmoothing, lambda effect: effect.apply_smoothing())

    def _with_effect(self, effect_type, action) -> None:
        if self.session.case is None:
            return
        editor = self.slicer_app.segmentation_editor
        effect = editor.set_active_effect_type(effect_type)
        action(effect)
        self.state.effect = "none"
        editor.set_active_effect_type(WindowLevelNoTool)
        self.update_measures()

    def undo(self) -> None:
        """Undo the last edit; the views follow at once, the counts, draft and lesion table as after a stroke."""
        self.undo_stack.undo()
        self._on_segmentation_modified()  # scheduled, not run here: the view is sent before the labels are read

    def redo(self) -> None:
        self.undo_stack.redo()
        self._on_segmentation_modified()

    def centre_on_lesion(self, label: int) -> None:
        if self.session.case is None:
            return
        centre = self.session.case.lesion_centres_ras.get(int(label))
        if centre is not None:
            self._centre_views(centre)
            self.state.message = f"centred on lesion {label}"
            self.state.current_lesion = int(label)

    def _centre_views(self, centre_ras: tuple[float, float, float]) -> None:
        self.views.centre(centre_ras)

    def _set_segment(self, segment: str) -> None:
        if self.session.case is not None:
            self.slicer_app.segmentation_editor.set_active_segment_id(segment)
            self._apply_brush()
            self._apply_masking()

    def _set_lesion_visible(self, visible: bool) -> None:
        self.overlays.set_visible("lesion", bool(visible))

    def _window_level_dragged(self, window: float, level: float) -> None:
        with self.state:  # the sliders follow a drag in a view
            self.state.update({"wl_window": round(float(window), 1), "wl_level": round(float(level), 1)})

    def _apply_window_level(self, window: float, level: float) -> None:
        if self.session.case is not None:
            VolumeWindowLevel.set_volume_node_window_level(self.session.case.volume_node, float(window), float(level))

    def on_key(self, key: str, control: bool = False, alt: bool = False) -> None:
        """A key pressed in the page (not in a text field): the action :func:`keys.action_for` gives it."""
        action = keys.action_for(str(key), bool(control), bool(alt))
        if action is None:
            return
        if action.startswith("tool_"):
            self.state.effect = action.removeprefix("tool_")
        elif action in ("segment_cord", "segment_lesion"):
            self.state.segment = "spinal_cord" if action == "segment_cord" else "lesion"
        elif action in ("next_slice", "previous_slice"):
            self.step_slice(+1 if action == "next_slice" else -1)
        elif action in ("brush_larger", "brush_smaller"):
            self.state.brush_mm = keys.scaled_brush(float(self.state.brush_mm), action == "brush_larger")
        elif action == "toggle_lesion":
            self.state.lesion_visible = not self.state.lesion_visible
        elif action == "toggle_intensity_mask":
            self.state.intensity_mask = not self.state.intensity_mask
        elif action == "shortcuts":
            self.state.shortcuts = not self.state.shortcuts
        elif action in ("undo", "redo"):
            (self.undo if action == "undo" else self.redo)()
        elif action in ("next_case", "previous_case"):
            self.next_case(1 if action == "next_case" else -1)

    def _pointer_over(self, view) -> None:
        """The pointer moved in a slice view: the slice keys step that one (its name in ``pointer_view``)."""
        if view is not self._pointer_view:
            self._pointer_view = view
            with self.state:
                self.state.pointer_view = view.get_singleton_tag()

    def step_slice(self, steps: int) -> None:
        """Move the slice view under the pointer (else the first) by ``steps`` slices of its volume."""
        views = self.slicer_app.view_manager.get_slice_views()
        view = self._pointer_view if self._pointer_view in views else (views[0] if views else None)
        if view is None or self.session.case is None:
            return
        low, high = view.get_slice_range()
        view.set_slice_value(keys.stepped_slice(view.get_slice_value(), view.get_slice_step(), steps, low, high))

    def _count_tabs(self, change: int) -> None:
        """Browser tabs connected now (a tab closed without notice is counted until the server restarts)."""
        with self.state:  # called from wslink's life-cycle RPC, which does not flush the state itself
            self.state.tabs = max(0, int(self.state.tabs) + change)

    # ------------------------------------------------------------------ prediction in a child process
    def _start_segmentation(self, case_id: str) -> None:
        self.run = start_segmentation(self.root, case_id, self.model, engines=self.session.engines)
        self.state.update({"running": True, "progress": 0, "progress_text": f"segmenting {case_id}...", "segmenting_id": case_id})
        create_task(self._watch_segmentation(case_id, self.run))

    async def _watch_segmentation(self, case_id: str, run) -> None:
        while not run.finished:
            events = run.poll()
            with self.state:
                for event in events:
                    if event.get("event") == "progress" and event.get("fraction") is not None:
                        self.state.progress = round(100 * float(event["fraction"]))
                        self.state.progress_text = str(event.get("message") or event.get("stage") or "")
            await asyncio.sleep(0.3)
        run.poll()
        with self.state:
            self.state.running = False
            self.state.segmenting_id = ""
            if run.cancelled:
                self.state.message = f"segmentation of {case_id} cancelled"
                return
            try:
                publish_prediction(self.root, case_id, run)
            except SCIsegError as error:
                self.state.error = str(error)
                return
            kept = self.session.case.case_id if self.session.case is not None and self.save_draft() else None
            self.refresh_cases()
            self._open(case_id, None)  # asked when it was clicked; strokes made since are in the draft
            if kept:
                self.state.message += f"; your strokes on {kept} are kept as your draft"

    def cancel_segmentation(self) -> None:
        if self.run is not None:
            self.run.cancel()
        self.state.running = False
        self.state.segmenting_id = ""

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        with SinglePageWithDrawerLayout(self.server, full_height=True, theme=("dark ? 'dark' : 'light'",)) as layout:
            layout.title.set_text("SCIseg review")
            label_element(layout.icon, "Show or hide the case list")
            client.Script(KEYBOARD_JS)
            client.Script(LEAVE_JS)
            client.Script(OPEN_JS)  # open_case validates the id, as for any string a browser sends
            client.ClientStateChange(value="case_id", change=f"case_id && window.localStorage.setItem('{CASE_STORAGE}', case_id)")
            with layout.toolbar:
                v3.VSpacer()
                html.Span("{{ case_id }}", id="case-title", classes="mx-2 text-subtitle-2")
                html.Span("unsaved strokes (kept as a draft)", v_if=("unsaved",), id="unsaved", classes="mx-2 text-caption text-warning")
                html.Span(
                    "cord only {{ counts.cord_only }} · lesion {{ counts.lesion }} voxels",
                    id="voxel-counts", classes="mx-2 text-caption",
                )
                html.Span("{{ pointer_text }}", id="pointer-value", classes="mx-2 text-caption")
                self.views.crosshair_toggle_ui()
                theme_toggle_ui()
                html.Span("{{ lesion_totals }}", id="lesion-totals", classes="mx-2 text-caption")
                v3.VBtn("?", click="shortcuts = !shortcuts", size="small", variant="text", id="show-shortcuts",
                        title="Keyboard shortcuts (?)", aria_label="Keyboard shortcuts")
            with layout.drawer as drawer:
                drawer.width = 330
                self._case_list_ui()
            with layout.content:
                with html.Div(classes="d-flex", style="height: calc(100vh - 88px); overflow: hidden;"):
                    with html.Div(style="flex: 1; position: relative; height: 100%;", id="views"):
                        self.views.layout_manager.initialize_layout_grid(layout)
                    with html.Div(style="width: 300px; height: 100%; display: flex; flex-direction: column;", id="tools"):
                        with html.Div(style="flex: 1; overflow-y: auto; min-height: 0;", classes="pa-2", id="tools-scroll"):
                            self._tools_ui()
                        with html.Div(classes="pa-2", id="tools-footer", style="border-top: 1px solid rgba(128,128,128,.3)"):
                            self._export_ui()  # never pushed below the fold by a long lesion table
            self._shortcuts_ui()

    def _case_list_ui(self) -> None:
        v3.VSelect(v_model=("status_filter",), items=(["all", "not predicted", "predicted", "corrected"],),
                   label="Show", density="compact", hide_details=True, classes="ma-2", id="status-filter")
        v3.VBtn("Next uncorrected (n)", click=self.next_case, block=True, id="next-case", classes="mb-1")
        v3.VBtn("Refresh list", click=self.refresh_cases, block=True, variant="text", size="small", id="refresh-cases")
        with v3.VList(density="compact", id="case-list"):
            with v3.VListItem(
                v_for="item in cases", key="item.case_id", click="trigger('open_case', [item.case_id])",
                active=("item.case_id === case_id",), classes="case-item",
                __properties=[("data_case", "data-case")], data_case=("item.case_id",),
            ):
                v3.VListItemTitle("{{ item.case_id }}")
                v3.VListItemSubtitle(
                    "{{ item.status }}{{ item.versions ? ' · ' + item.versions + ' version(s), last by ' + item.rater + ' ' + item.date : '' }}"
                    "{{ item.score !== null ? ' · score ' + item.score.toFixed(3) : '' }}"
                    "{{ item.drafts.length ? ' · draft by ' + item.drafts.map((r) => r || 'unnamed').join(', ') : '' }}"
                )
                html.Div("{{ item.reason }}", v_if=("item.reason",), classes="text-caption text-error case-reason")
                case_list_item_ui()

    def _tools_ui(self) -> None:
        v3.VAlert(
            v_if=("tabs > 1",), type="warning", density="compact", id="tabs-warning", classes="mb-2 text-caption",
            text=("`${tabs} browser tabs show this session: they edit the same case. "
                  "For a session of your own, open the review address itself (without /s/...) in a new tab.`",),
        )
        with v3.VAlert(v_if=("pending",), type="warning", density="compact", id="pending", classes="mb-2 text-caption"):
            html.Div("{{ pending.text }}")
            v3.VBtn("Keep draft, open", click=(self.resolve_pending, "['keep']"), size="small", classes="ma-1", id="pending-keep")
            v3.VBtn("Discard strokes", click=(self.resolve_pending, "['discard']"), size="small", classes="ma-1", id="pending-discard")
            v3.VBtn("Stay", click=(self.resolve_pending, "['stay']"), size="small", classes="ma-1", id="pending-stay")
        with v3.VAlert(v_if=("!case_id && resume.length",), type="info", density="compact", id="resume", classes="mb-2 text-caption"):
            html.Div("Continue where you left off (cases with your draft first):")
            v3.VBtn("{{ id }}", v_for="id in resume", key="id", click="trigger('open_case', [id])", size="small",
                    classes="ma-1 resume-case", variant="text", style="text-transform: none")
        html.Div("{{ opened_text }}", id="opened", classes="text-caption mb-1")
        case_notes_ui()
        v3.VSelect(items=("bases",), model_value=("base_choice",), update_modelValue=(self.choose_base, "[$event]"),
                   label="Open from", density="compact", hide_details=True, classes="mb-1", id="base-choice",
                   v_if=("case_id",))
        v3.VBtn("Discard draft", v_if=("base_choice === 'draft'",), click=self.discard_draft, size="small", classes="mb-2",
                id="discard-draft")
        with html.Div(v_if=("running",), id="progress"):
            v3.VProgressLinear(model_value=("progress",), height=8, color="primary")
            html.Div("{{ progress_text }} {{ progress }}%", classes="text-caption")
            v3.VBtn("Cancel", click=self.cancel_segmentation, size="small", id="cancel-segmentation")
        with v3.VBtnToggle(v_model=("segment",), mandatory=True, density="compact", classes="mb-2"):
            v3.VBtn("Cord (1)", value="spinal_cord", id="segment-cord")
            v3.VBtn("Lesion (2)", value="lesion", id="segment-lesion")
            v3.VBtn("Grey matter", value="grey_matter", id="segment-gm", v_if=("gm_available",))
        with html.Div(classes="d-flex flex-wrap"):
            for name, label in (("paint", "Paint (p)"), ("erase", "Erase (e)"), ("scissors", "Scissors (c)"),
                                ("draw", "Draw (d)"), ("smoothing", "Smooth"), ("none", "No tool (Esc)")):
                v3.VBtn(label, click=f"effect = '{name}'", size="small", classes="ma-1", id=f"effect-{name}",
                        color=(f"effect === '{name}' ? 'primary' : undefined",))
        html.Div("Active tool: {{ active_effect }}", id="active-effect", classes="text-caption")
        v3.VSlider(v_model=("brush_mm",), min=keys.BRUSH_MIN_MM, max=keys.BRUSH_MAX_MM, step=0.1, label="Brush mm",
                   hide_details=True, thumb_label=True, density="compact", id="brush-size")
        v3.VCheckbox(v_model=("sphere",), label="Sphere brush", hide_details=True, density="compact")
        with html.Div(classes="d-flex flex-wrap"):
            v3.VBtn("Undo (z)", click=self.undo, size="small", classes="ma-1", id="undo")
            v3.VBtn("Redo (y)", click=self.redo, size="small", classes="ma-1", id="redo")
            v3.VBtn("Keep largest island", click=self.keep_largest_island, size="small", classes="ma-1")
            v3.VBtn("Remove small islands", click=self.remove_small_islands, size="small", classes="ma-1")
            v3.VBtn("Smooth segment", click=self.apply_smoothing, size="small", classes="ma-1")
        v3.VCheckbox(v_model=("lesion_in_cord",), label="Lesion only inside the cord", hide_details=True, density="compact",
                     id="lesion-in-cord")
        v3.VRangeSlider(v_model=("threshold",), min=("level_min",), max=("level_max",), label="Intensity",
                        hide_details=True, density="compact", thumb_label=True, id="threshold-range")
        v3.VCheckbox(v_model=("intensity_mask",), label="Paint only within this range (i)", hide_details=True,
                     density="compact", id="intensity-mask")
        v3.VSelect(v_model=("threshold_region",), items=([{"value": k, "title": v} for k, v in REGIONS.items()],),
                   label="Threshold adds lesion", density="compact", hide_details=True, classes="mb-1", id="threshold-region")
        v3.VBtn("Apply threshold", click=(self.apply_threshold, "[false, threshold]"), size="small", classes="ma-1", id="apply-threshold")
        with v3.VAlert(v_if=("threshold_pending",), type="warning", density="compact", id="threshold-pending",
                       classes="mb-2 text-caption"):
            html.Div("{{ threshold_pending.text }}")
            v3.VBtn("Apply anyway", click=(self.apply_threshold, "[true, threshold]"), size="small", classes="ma-1", id="threshold-confirm")
            v3.VBtn("Cancel", click="threshold_pending = null", size="small", classes="ma-1", id="threshold-cancel")
        overlay_controls_ui()  # eye (l for the lesion), fill opacity, outline per segment
        v3.VSlider(v_model=("wl_window",), min=1, max=("window_max",), label="Window", hide_details=True, density="compact", id="window")
        v3.VSlider(v_model=("wl_level",), min=("level_min",), max=("level_max",), label="Level", hide_details=True, density="compact", id="level")
        v3.VBtn("Update measures", click=self.update_measures, size="small", classes="ma-1", id="update-measures")
        with v3.VTable(density="compact", id="lesion-table"):
            with html.Thead(), html.Tr():
                for title in ("#", "mm3", "length", "width"):
                    html.Th(title)
            with html.Tbody():
                with html.Tr(v_for="row in lesions", key="row.label", click=(self.centre_on_lesion, "[row.label]"),
                             style=("row.label === current_lesion ? 'cursor: pointer; background: rgba(255, 200, 0, .35)'"
                                    " : 'cursor: pointer'",),
                             classes=("row.label === current_lesion ? 'lesion-row current-lesion' : 'lesion-row'",)):
                    html.Td("{{ row.label }}")
                    html.Td("{{ row.volume_mm3 }}")
                    html.Td("{{ row.length_mm }}")
                    html.Td("{{ row.width_mm }}")

    def _export_ui(self) -> None:
        v3.VTextField(v_model=("rater",), label="Rater", density="compact", hide_details=True, classes="mt-2", id="rater",
                      update_modelValue=f"window.localStorage.setItem('{RATER_STORAGE}', $event)")
        v3.VBtn("Export and next", click=self._export_and_next, color="primary", block=True, classes="mt-2", id="export-next")
        v3.VBtn("Export", click=self.export, block=True, classes="mt-1", id="export")
        html.Div("{{ message }}", id="message", classes="text-caption mt-2")
        html.Div("{{ error }}", id="error", classes="text-caption text-error")

    def _shortcuts_ui(self) -> None:
        """The shortcut card ("?"): :data:`keys.SHORTCUTS`."""
        with v3.VDialog(v_model=("shortcuts",), max_width=560), v3.VCard(id="shortcuts-card"):
            v3.VCardTitle("Keyboard and mouse (as in 3D Slicer)")
            with v3.VCardText(), v3.VTable(density="compact"), html.Tbody():
                for shortcut in keys.SHORTCUTS:
                    with html.Tr():
                        html.Td(shortcut.keys, style="white-space: nowrap")
                        html.Td(shortcut.action)
            with v3.VCardActions():
                v3.VBtn("Close", click="shortcuts = false", id="close-shortcuts")

    def _export_and_next(self) -> None:
        self.export()
        if not self.state.error:
            message = self.state.message
            following = next_uncorrected(list_cases(self.root, self.queue), self.state.case_id or None)
            if following is None:
                self.state.message = f"{message}; end of the queue: every case is corrected"
                return
            self.next_case()
            self.state.message = message


def headless_rendering() -> None:
    """Render offscreen with Mesa's EGL (no X server) unless a display is there; call before building the app."""
    if not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def serve(app: ReviewApp, *, host: str, port: int, token: str | None) -> None:
    """Serve one session's app until stopped (no idle timeout: trame's default quits after 300 s alone).

    Run by the session's worker (:mod:`worker`, ``port=0``: the system picks it). With a token, wslink
    refuses every websocket connection whose hello does not carry it; the page passes the ``secret``
    query parameter of its URL (``.../s/<session>/?secret=TOKEN``).
    """
    saved = sys.argv
    sys.argv = [saved[0]] + (["--authKey", token] if token else [])  # trame reads its options from sys.argv
    try:
        app.server.start(host=host, port=port, timeout=0, open_browser=False, show_connection_info=False)
    finally:
        sys.argv = saved
