"""Moving around in ``sciseg review``: keys (Slicer's, :mod:`keys`), slices, lesions and cases.

A key pressed in the page runs the action :func:`keys.action_for` gives it; the slice keys step the view under the
pointer; a click on a lesion row centres the views on it; ``n`` / Shift+N open the next uncorrected or the previous case.
"""

from __future__ import annotations

from . import keys
from .cases import list_cases, next_uncorrected


class NavigationMixin:
    """Keys, slices, lesions and cases of :class:`~.app.ReviewApp` (``self.views``, ``self.session``, ``self.state``)."""

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
