"""The case the Slicer panel has open, without Qt: which case a selected volume opens, the segmentation whose strokes
are followed (drafts, live lesion list), the unsaved edits kept before the rater leaves a case.

:class:`CaseSession` receives its collaborators -- the MRML scene, Slicer's segmentations logic, the panel's
:class:`~SCIsegLib.panel.PanelState` and a :class:`~SCIsegLib.panel_view.PanelView` -- so it runs on slicer-core in
tests with a recording view. The case model itself is :mod:`SCIsegLib.cases`; :mod:`SCIsegLib.panel_case` binds it
to MRML nodes.

One segmentation per case and volume node is the case's, and the session's case is always opened on that one's base:
when another one becomes the case's (Segment again, opening a scene that has several, the rater's Yes to "make it
the case's again"), every other one is superseded first (:func:`SCIsegLib.panel_case.supersede`: its unexported
edits kept in a file of their own, renamed, no longer drafted). So the rater's one draft never mixes two
segmentations, never records another one's base, and a switch back is a question, never silent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from . import panel_binding
from .panel import PanelState
from .panel_view import (PanelView, draft_kept_sentence, draft_question, not_drafted_sentence, reclaim_question,
                         reclaimed_sentence, superseded_sentence)


class CaseSession:
    """The panel's open case. ``parameters``: the panel's parameter node (``inputVolume``, ``segmentation``,
    ``exportFolder``-free: the root and rater come from ``view.inputs()``); ``segment``: what Segment does (called
    after a Next case opened a scan that has nothing to show)."""

    def __init__(self, scene: Any, logic: Any, state: PanelState, view: PanelView,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.scene, self.logic, self.state, self.view, self.clock = scene, logic, state, view, clock
        self.parameters: Any = None
        self.segment: Callable[[], None] = lambda: None
        self.case: Any = None  # SCIsegLib.cases.Case of state.case_volume_id
        self.segment_when_opened = False  # Next case: segment the new scan when its case has nothing yet
        self.volume_pending = False  # a volume change is queued (opened once the current slot returned)
        self.reclaim_pending = False  # a superseded segmentation was selected: asked once the current slot returned
        self.observed: Any = None  # the segmentation whose strokes drive drafts and the live lesion list
        self._tags: tuple[int, ...] = ()  # its observers (mrml.observe_edits)
        self.edits: Any = None  # panel_lesions.EditDebounce, made with the first observed segmentation
        self.live: tuple[Any, Any] = (None, None)  # live lesion table and lesion-number point list
        self.lesion_tables: dict[str, dict[int, tuple[float, float, float]]] = {}  # table id -> {lesion: RAS mm}

    def case_of(self, volume_node) -> Any:
        """The open case when it is ``volume_node``'s, else None."""
        return self.case if volume_node is not None and self.state.case_volume_id == volume_node.GetID() else None

    def selection_changed(self) -> None:
        """The parameter node changed: follow the selected segmentation's strokes; a newly selected volume opens
        its case once the current slot returned (opening may ask about a draft)."""
        if self.parameters is None:
            return
        self.observe(self.parameters.segmentation)
        volume = self.parameters.inputVolume
        if self.state.volume_changed(volume.GetID() if volume else None) and not self.volume_pending:
            self.volume_pending = True
            self.view.later(self.open_selected)

    def keep_work(self) -> None:
        """The open case's unsaved edits go to the rater's draft (Next case, another volume, Segment again, scene
        close, exit); when its volume left the scene, on the case's grid (the segmentation's reference geometry)."""
        if self.case is None:
            return
        from . import panel_case

        volume = self.scene.GetNodeByID(self.state.case_volume_id) if self.state.case_volume_id else None
        selected = self.parameters.segmentation if self.parameters is not None else None
        segmentation = panel_case.case_segmentation(self.scene, self.case, selected, volume)
        sentence = panel_case.keep_work(self.scene, self.logic, self.case, segmentation, volume, self.view.inputs().rater)
        if sentence:
            self.view.say(sentence)
            self.view.log([sentence])

    def unsaved_segmentation(self, volume_node) -> Any:
        """The open case's segmentation when ``volume_node`` is the case's scan and the segmentation holds edits no
        version has (Segment again would make another segmentation the case's, and the rater's one draft would
        follow that one); None otherwise."""
        if self.case_of(volume_node) is None:
            return None
        from . import panel_case

        selected = self.parameters.segmentation if self.parameters is not None else None
        segmentation = panel_case.case_segmentation(self.scene, self.case, selected, volume_node)
        unsaved = panel_case.has_unsaved_edits(self.scene, self.logic, self.case, segmentation, volume_node)
        return segmentation if unsaved else None

    def keep_after_export(self, volume_node, segmentation_node) -> str | None:
        """An export of ``segmentation_node`` finished and its version is the base now: strokes made while it ran (in
        no version; their draft, written before, still names the old base) are drafted against it at once. Returns
        what was written, None when nothing was unsaved."""
        from . import panel_case

        inputs = self.view.inputs()
        case = self.case if self.case_of(volume_node) is not None else None
        if case is None or not panel_binding.is_bound(segmentation_node, case):
            case = panel_case.case_of(inputs.export_folder, volume_node, segmentation_node)
        return panel_case.draft_unsaved(self.scene, self.logic, case, segmentation_node, volume_node, inputs.rater)

    def open_selected(self) -> None:
        """Another volume: draft the previous case's edits, open this one's (its segmentation, a draft to restore,
        its latest version), never keep the previous volume's segmentation selected."""
        self.volume_pending = False
        if self.parameters is None:
            return
        volume = self.parameters.inputVolume
        if not self.state.volume_changed(volume.GetID() if volume else None):
            return
        self.keep_work()
        from . import panel_case

        self.case, self.state.case_volume_id = None, volume.GetID() if volume else None
        segment_now, self.segment_when_opened = self.segment_when_opened, False
        if volume is None:
            self.parameters.segmentation = None
            return
        inputs = self.view.inputs()
        with self.view.trying("The case could not be opened."):
            opened = panel_case.opening(self.scene, inputs.export_folder, volume, inputs.rater)
            if opened.offer is not None and self.view.ask(draft_question(opened.case.scan.stem, opened.offer.describe())):
                opened = panel_case.opening(self.scene, inputs.export_folder, volume, inputs.rater, draft=opened.offer)
            segmentation = panel_case.selected_segmentation(self.scene, self.logic, opened, volume)
            self.case = opened.case
            if self.case is not None and panel_binding.is_bound(segmentation, self.case):
                self.supersede_others(volume, segmentation)  # a scene saved with several: one is the case's
            self.parameters.segmentation = segmentation
            if opened.sentence:
                self.view.say(opened.sentence)
            segment_now = panel_case.segment_after_opening(segment_now, opened, segmentation)
        if segment_now:  # after this slot: Segment may ask to install dependencies (a modal dialog, pip)
            self.view.later(self.segment)

    def observe(self, segmentation_node) -> None:
        """Follow the strokes on ``segmentation_node`` (None: none); a first live list for a newly selected one."""
        if segmentation_node is self.observed:
            return
        from . import mrml

        if self.observed is not None:
            mrml.stop_observing_edits(self.observed, self._tags)
        self.observed, self._tags = segmentation_node, ()
        if segmentation_node is not None:
            from .panel_lesions import EditDebounce

            self.edits = self.edits or EditDebounce()
            self._tags = mrml.observe_edits(segmentation_node, self.edited)
            self.edits.touch(self.clock())
            if self.case is not None and panel_binding.made_for_scan(segmentation_node, self.case) and panel_binding.is_superseded(segmentation_node):
                if not self.reclaim_pending:  # asked after this slot (the parameter node's observer fires repeatedly)
                    self.reclaim_pending = True
                    self.view.later(self.reclaim_selected)
            elif self.case is not None and not panel_binding.is_bound(segmentation_node, self.case):
                self.view.say(not_drafted_sentence(segmentation_node.GetName(), self.case.scan.stem))

    def edited(self, *unused: Any) -> None:
        self.edits.touch(self.clock())

    def tick(self) -> None:
        """From the panel's timer: once the rater paused, draft the case's unsaved edits and update the live list."""
        if self.edits is None or self.parameters is None or not self.edits.due(self.clock()):
            return
        try:
            self.edits_settled()
        except Exception:  # noqa: BLE001 - the jobs are still polled; the next pause tries again
            logging.exception("SCIseg: the draft or the live lesion list could not be updated")

    def edits_settled(self) -> None:
        from . import panel_case

        volume, segmentation = self.parameters.inputVolume, self.parameters.segmentation
        if volume is None or segmentation is None:
            return
        settled = panel_case.edits_settled(self.scene, self.logic, self.case_of(volume), segmentation, volume,
                                           self.view.inputs().rater, *self.live)
        if settled.draft is not None:
            self.view.say(draft_kept_sentence(settled.draft.describe()))
        if settled.centres is None:
            return
        if settled.centres and settled.table.GetID() not in self.lesion_tables:  # shown once, when it has a lesion
            self.view.show_table(settled.table)
        self.live = (settled.table, settled.points)
        self.lesion_tables[settled.table.GetID()] = settled.centres

    def scene_closing(self) -> None:
        """The nodes are still there: draft the edits; then forget the case and the lesion tables (their node
        ids may name other tables in the next scene)."""
        try:
            self.keep_work()
        except Exception:  # noqa: BLE001 - the close goes on; the autosaved draft (a pause after each stroke) is there
            logging.exception("SCIseg: the unsaved edits could not be drafted")
        self.observe(None)
        self.case, self.state.case_volume_id, self.live, self.lesion_tables = None, None, (None, None), {}

    def rebind(self, volume_node, segmentation_node) -> None:
        """A new prediction or exported version of the open case's volume: the case now starts from it, and any other
        segmentation that was the case's is superseded. A segmentation superseded meanwhile changes nothing."""
        from . import panel_case

        if self.case_of(volume_node) is None or not panel_binding.is_bound(segmentation_node, self.case):
            return
        self.supersede_others(volume_node, segmentation_node)
        self.case = panel_case.case_of(self.view.inputs().export_folder, volume_node, segmentation_node)

    def supersede_others(self, volume_node, segmentation_node) -> None:
        """``segmentation_node`` is the case's on ``volume_node``: every other one that was is superseded, its
        unexported edits kept in a file of their own first (:func:`SCIsegLib.panel_case.supersede`), said and logged."""
        from . import panel_case

        inputs = self.view.inputs()
        for other in panel_case.live_segmentations(self.scene, self.case, volume_node):
            if other is not segmentation_node:
                sentence = panel_case.supersede(self.scene, self.logic, inputs.export_folder, other, volume_node, inputs.rater)
                self.view.say(sentence)
                self.view.log([sentence])

    def reclaim_selected(self) -> None:
        """The rater selected a superseded segmentation of the open case: ask whether it becomes the case's again. Yes:
        the case's current one is superseded (its edits kept), the case reopens on this one's base and its edits are
        drafted at once; No: it stays superseded (not drafted, Export refuses it)."""
        self.reclaim_pending = False
        from . import mrml, panel_case

        selected = self.parameters.segmentation if self.parameters is not None else None
        volume = self.scene.GetNodeByID(self.state.case_volume_id) if self.state.case_volume_id else None
        if (self.case is None or volume is None or not panel_binding.made_for_scan(selected, self.case)
                or not panel_binding.is_superseded(selected) or mrml.pairing_problem(selected, volume) is not None):
            return
        current = panel_case.bound_segmentation(self.scene, self.case, volume)
        if not self.view.ask(reclaim_question(self.case.scan.stem, selected.GetName(), current.GetName() if current else None)):
            self.view.say(superseded_sentence(selected.GetName(), self.case.scan.stem))
            return
        panel_case.reclaim(selected)
        self.supersede_others(volume, selected)
        inputs = self.view.inputs()
        self.case = panel_case.case_of(inputs.export_folder, volume, selected)
        kept = panel_case.draft_unsaved(self.scene, self.logic, self.case, selected, volume, inputs.rater)
        self.view.say(reclaimed_sentence(selected.GetName(), self.case.base.name, kept))

    def lesion_centre(self, table_node, view_row: int) -> tuple[float, float, float] | None:
        """The RAS centre (mm) of the lesion on a clicked row of a lesion table the panel made; None otherwise."""
        from .panel_results import lesion_centre_for_row

        centres = self.lesion_tables.get(table_node.GetID()) if table_node is not None else None
        table_id = table_node.GetID() if centres is not None else None
        return lesion_centre_for_row(table_node, table_id, view_row, centres or {})
