"""The review app's measures after an edit: voxel counts, the rater's draft and the lesion table of the open case.

Where the time went from a stroke's release to the counts on a full field-of-view scan (errsm_21, 384 x 216 x 52
voxels, 2 shared cores; instrumented worker, ``benchmarks/README.md``): the app waited 50 ms to gather the stroke's
signals, during which the three views rendered (0.1-0.3 s on the event loop); then it exported the masks through
Slicer (three temporary label maps: 0.02-0.09 s each) and the grey matter once more for its count, and after the counts
it wrote the draft (20-40 ms) and exported the masks again for the lesion table before measuring it in a thread.

Now, after each edit (a stroke, undo, redo, an effect):

* its signals ask for one count in the next turn of the event loop (``loop.call_soon``: the signals of one edit
  come within one turn, so the masks are whole by then; a later edit asks again);
* the masks are read from the segments' layers (:mod:`.segment_arrays`: a few ms), counted and sent at once;
  the views hold their frames of the edit until the counts are on the wire (a frame of the large sagittal view
  takes 0.1-0.3 s of the event loop, and the three views' frames, asked for by the edit itself, went first);
* the draft is written in the background, in order, from those arrays (:mod:`.draft_writer`); the "unsaved"
  mark follows when it is written;
* the lesion table is measured on the cord's box (:mod:`.lesion_table`) from the same arrays: at once, before the
  views' frames, while its last measurement took under :data:`INLINE_TABLE_S` of CPU (35-70 ms for 1 to 12 lesions
  along errsm_21's whole cord); else in a thread, one measurement at a time, the latest request winning. Measured
  in a thread after the counts, it waited 0.1-0.2 s for the views' frames (they hold the interpreter), and the table
  came 0.2-0.25 s after the counts in the page (quiet machine, ``benchmarks/review_app.py``).

:meth:`MeasuresMixin.update_measures` ("Update measures", after an effect button) does all three at once.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future

import numpy as np
from trame_server.utils.asynchronous import create_task, get_event_loop

from ..errors import SCIsegError
from .grey_matter import grey_matter_mask
from .lesion_table import lesion_rows, totals_text
from .memory import release_freed_memory

OPENING_TABLE_DELAY_S = 0.2  # after opening a case, the first image goes before the lesion table's measurement
COUNTS_FIRST_S = 0.1  # the longest the views' frames of an edit wait for its counts to be sent
INLINE_TABLE_S = 0.15  # CPU seconds: a lesion table whose last measurement took less is measured before the frames


class MeasuresMixin:
    """Counts, draft and lesion table of :class:`~.app.ReviewApp` (``self.session``, ``self.state``)."""

    def _init_measures(self) -> None:
        self._counts_pending = False
        self._measuring = False
        self._measure_next: tuple[int, np.ndarray | None, int] | None = None  # (opening, labels, request)
        self._table_requests = 0  # the latest table asked for; an older measurement's rows are not shown
        self._last_table_cpu_s = 0.0
        self._draft_shown = 0  # the latest draft whose outcome may still set "unsaved" (a newer action wins)
        self.slicer_app.segmentation_editor.segmentation_modified.connect(self._on_segmentation_modified)

    @property
    def measures_idle(self) -> bool:
        """True when no count, draft or lesion table is waiting or running (tests wait on it)."""
        return not (self._counts_pending or self._measuring or self._measure_next or self.session.drafts.busy
                    or getattr(self, "views_held", False))

    def save_draft(self, labels=None) -> bool:
        """Write the rater's draft now when the masks changed (atomic; after the drafts asked for before); True when
        the open case has unsaved strokes. ``labels``: the current (z, y, x) label array when the caller has it."""
        if self.session.case is None:
            return False
        self._draft_shown += 1  # an earlier background draft's outcome no longer sets "unsaved"
        labels = self.session.labels() if labels is None else labels
        try:
            self.session.save_draft(str(self.state.rater or ""), labels)
        except (SCIsegError, OSError) as error:
            self.state.error = f"the draft could not be written ({error}); export to keep your strokes."
        self.state.unsaved = self.session.unsaved(labels)
        return bool(self.state.unsaved)

    def _show_measures_of_opened_case(self) -> None:
        """Counts and "unsaved" of the case just opened; its lesion table once its first image is out."""
        self._draft_shown += 1
        labels = self.session.labels()
        self.state.counts = self.session.voxel_counts(labels)
        self.state.unsaved = self.session.unsaved(labels)
        del labels
        self.state.lesions = []
        self.state.lesion_totals = ""
        self.state.current_lesion = 0
        create_task(self._measure_after_opening(self.session.case.opening))

    async def _measure_after_opening(self, opening: int) -> None:
        await asyncio.sleep(OPENING_TABLE_DELAY_S)
        self._ask_lesion_table(opening)

    def _on_segmentation_modified(self, *_args) -> None:
        """An edit's signal: one count in the next turn of the event loop (the edit is whole by then)."""
        if self._counts_pending or self.session.case is None:
            return
        self._counts_pending = True
        self.hold_every_view()  # editing.py: their frames of this edit wait for its counts
        get_event_loop().call_soon(self._count_after_edit)

    def _count_after_edit(self) -> None:
        """Counts to the page now, then (a quick one) the lesion table, then the views' frames; the draft from the same
        arrays in the background, and a slow lesion table in a thread."""
        self._counts_pending = False
        try:
            if self.session.case is None:
                return
            opening = self.session.case.opening
            labels, grey_matter = self.session.labels(), grey_matter_mask(self.session)
            with self.state:
                self.state.counts = self.session.voxel_counts(labels, grey_matter)
        finally:
            create_task(self._render_once_sent())
        self._draft_shown += 1
        drafted = self.session.save_draft_later(str(self.state.rater or ""), labels, grey_matter)
        create_task(self._show_draft_outcome(opening, drafted, self._draft_shown))
        if self._last_table_cpu_s < INLINE_TABLE_S:
            self._measure_table_now(labels)
        else:
            self._ask_lesion_table(opening, labels)

    def _measure_table_now(self, labels: np.ndarray) -> bool:
        """The lesion table of ``labels`` measured and sent in this turn of the event loop (a quick one: the views'
        frames wait for it); a measurement still running in a thread will not replace it. False when the case refused
        the labels (the reason is shown)."""
        self._table_requests += 1
        checked = self._checked_for_table(labels)
        if checked is not None:
            self._show_lesion_table(*self._timed_lesion_rows(*checked))
        return checked is not None

    def _checked_for_table(self, labels: np.ndarray | None):
        """(labels on the case's grid, that grid) of the open case (``labels``: read just before; None: read now),
        or None with the reason shown when the case refuses them (another scan's or grid's segmentation)."""
        try:
            return self.session.checked_labels("the segmentation to measure", labels), self.session.case_grid()
        except SCIsegError as error:
            with self.state:
                self.state.error = str(error)
            return None

    def _timed_lesion_rows(self, labels: np.ndarray, grid):
        """:func:`.lesion_table.lesion_rows`, its CPU time kept (it decides where the next table is measured); runs in
        any thread (no scene access)."""
        started = time.thread_time()
        try:
            return lesion_rows(labels, grid)
        finally:
            self._last_table_cpu_s = time.thread_time() - started

    async def _render_once_sent(self) -> None:
        """The views render once the counts have left (the websocket's pending messages sent; at most
        :data:`COUNTS_FIRST_S` later)."""
        try:
            await asyncio.wait_for(self.server.network_completion, COUNTS_FIRST_S)
        except Exception:  # noqa: BLE001 - no connection, or a timeout: the frames go anyway
            pass
        finally:
            self.render_every_view()

    async def _show_draft_outcome(self, opening: int, drafted: Future, number: int) -> None:
        try:
            _draft, unsaved = await asyncio.wrap_future(drafted)
        except (SCIsegError, OSError) as error:
            with self.state:
                self.state.error = f"the draft could not be written ({error}); export to keep your strokes."
            return
        if number == self._draft_shown and self.session.is_open(opening):
            with self.state:
                self.state.unsaved = unsaved

    def _ask_lesion_table(self, opening: int, labels: np.ndarray | None = None) -> None:
        """Measure the lesion table of the case of opening ``opening`` in a thread (``labels``: its masks read just
        before, else read when measured). One measurement at a time: a request made meanwhile replaces the waiting one."""
        self._table_requests += 1
        self._measure_next = (opening, labels, self._table_requests)
        if not self._measuring:
            self._measuring = True
            create_task(self._measure_in_turn())

    async def _measure_in_turn(self) -> None:
        try:
            while self._measure_next is not None:
                (opening, labels, request), self._measure_next = self._measure_next, None
                await self._measure_lesions(opening, labels, request)
                del labels
        finally:
            self._measuring = False

    async def _measure_lesions(self, opening: int, labels: np.ndarray | None, request: int) -> None:
        if not self.session.is_open(opening) or request != self._table_requests:
            return
        checked = self._checked_for_table(labels)
        if checked is None:
            return
        del labels
        rows, centres = await asyncio.to_thread(self._timed_lesion_rows, *checked)
        del checked
        release_freed_memory()  # the measurement's arrays (in its thread's arena) go back too
        if self.session.is_open(opening) and request == self._table_requests:  # else a newer table was asked for
            self._show_lesion_table(rows, centres)

    def _show_lesion_table(self, rows: list[dict], centres: dict) -> None:
        self.session.case.lesion_centres_ras = centres
        self.session.show_lesion_numbers(centres)
        with self.state:
            self.state.lesions = rows
            self.state.lesion_totals = totals_text(rows)

    def update_measures(self) -> None:
        """Counts, lesion table (on the cord's box, :mod:`.lesion_table`) and draft, now ("Update measures")."""
        if self.session.case is None:
            return
        labels = self.session.labels()
        self.state.counts = self.session.voxel_counts(labels)
        if self._measure_table_now(labels):
            self.save_draft(labels)
