"""The trame app of ``sciseg review`` (:class:`ReviewApp`): the page (:mod:`page`) bound to :mod:`cases`, :mod:`session` and trame-slicer's editor.

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

import os
import sys
from pathlib import Path

from trame.app import TrameApp
from trame_slicer import module as trame_slicer_module
from trame_slicer.core import SlicerApp, VolumeWindowLevel
from undo_stack import UndoStack

from ..errors import SCIsegError
from .case_notes import bind_case_notes
from .cases import list_cases, next_uncorrected
from .editing import EFFECTS, EditingMixin  # noqa: F401 - EFFECTS: the effect buttons' names, read here by tests
from .grey_matter import bind_grey_matter
from .layout import ReviewViews
from .measures import MeasuresMixin
from .navigation import NavigationMixin
from .page import ReviewPage
from .segmenting import SegmentingMixin
from .session import ReviewSession
from .view_controls import OverlayControls
from .window_level import WindowLevelNoTool

DRAFT = "draft"  # the version list's entry for the rater's own draft


class ReviewApp(MeasuresMixin, EditingMixin, NavigationMixin, SegmentingMixin, ReviewPage, TrameApp):
    """The rater web app on one BIDS root. ``token`` (None on loopback) is checked by wslink on every connection.

    Its parts, one job each: the cases (here: open, versions, drafts asked before leaving, export), the measures after
    each edit (:mod:`measures`), editing (:mod:`editing`), keys and moving around (:mod:`navigation`), segmenting a case
    without prediction (:mod:`segmenting`) and the page (:mod:`page`)."""

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
        self.render_only_the_stroked_view(self.slicer_app.view_manager.get_slice_views())
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

    def _count_tabs(self, change: int) -> None:
        """Browser tabs connected now (a tab closed without notice is counted until the server restarts)."""
        with self.state:  # called from wslink's life-cycle RPC, which does not flush the state itself
            self.state.tabs = max(0, int(self.state.tabs) + change)

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
