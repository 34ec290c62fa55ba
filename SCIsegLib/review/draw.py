"""Draw as 3D Slicer's Segment Editor draws: click or drag to add points, then double-click, right-click, Enter or
``a`` to fill the outline; ``x`` removes the last point, Escape drops the outline.

trame-slicer 2.0.0's Draw fills at the release of one press-drag-release and ignores clicks, double-clicks,
right-clicks and Enter. :class:`SlicerDrawEffect` keeps its filling (trame-slicer's scissors with "fill inside" on
the slice in view) and gives it Slicer's interaction (``SegmentEditorDrawEffect.processInteractionEvents``).
Keys come as the view's key events (in order with its clicks; the page's keyboard channel may overtake them):
on their release, as trame-slicer's scissors do (a key's press reaches the view twice). Positions are display
pixels of the view.
"""

from __future__ import annotations


from trame_slicer.segmentation import SegmentationEffectDraw
from trame_slicer.segmentation.segmentation_effect_scissors_widget import SegmentationScissorsPipeline
from vtkmodules.vtkCommonCore import vtkCommand

DOUBLE_CLICK_PX = 6.0  # a press this close (display pixels) to the previous one closes the outline


def is_double_click(first: tuple[float, float] | None, second: tuple[float, float]) -> bool:
    """True when a press ((x px, y px)) lands on the previous one: a double-click, or a click on the last point.

    Distance only: the server sees a double-click's two presses up to about a second apart on a loaded machine (each
    event is rendered before the next), so their timing cannot tell a double-click from two clicks."""
    if first is None:
        return False
    (x0, y0), (x1, y1) = first, second
    return ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5 <= DOUBLE_CLICK_PX


class SlicerDrawPipeline(SegmentationScissorsPipeline):
    """One slice view's Draw: points on press and drag; double-click or right-click fills; the view keeps its wheel."""

    def __init__(self) -> None:
        super().__init__()
        self._dragging = False
        self._last_press: tuple[float, float] | None = None
        self._supported_events = {
            int(vtkCommand.MouseMoveEvent): self._MouseMoved,
            int(vtkCommand.LeftButtonPressEvent): self._LeftButtonPressed,
            int(vtkCommand.LeftButtonReleaseEvent): self._LeftButtonReleased,
            int(vtkCommand.LeftButtonDoubleClickEvent): lambda _event: self.finish(),
            int(vtkCommand.RightButtonPressEvent): self._RightButtonPressed,
            int(vtkCommand.KeyReleaseEvent): self._KeyReleased,
        }

    def _LeftButtonPressed(self, event_data) -> bool:
        x, y = event_data.GetDisplayPosition()
        press = (float(x), float(y))
        if self.widget.is_painting() and is_double_click(self._last_press, press):
            self._last_press = None
            return self.finish()
        self._last_press = press
        if self.widget.is_painting():
            self.widget.add_point(x, y)
        else:
            self.widget.start_painting(x, y)
        self.widget.preview_point(x, y)
        self._dragging = True
        self.RequestRender()
        return True

    def _LeftButtonReleased(self, _event_data) -> bool:
        self._dragging = False
        return True

    def _MouseMoved(self, event_data) -> bool:
        x, y = event_data.GetDisplayPosition()
        if self._dragging and self.widget.is_painting():
            self.widget.add_point(x, y)
        if self.widget.is_painting():
            self.widget.preview_point(x, y)
            self.RequestRender()
        return self._dragging  # while drawing a line the view does not pan or set window/level

    def _RightButtonPressed(self, _event_data) -> bool:
        return self.finish() if self.widget.is_painting() else False  # no outline: right-drag zooms as usual

    def _KeyReleased(self, event_data) -> bool:
        key = event_data.GetKeySym()  # the browser's name (Enter), or VTK's (Return)
        if not self.widget.is_painting():
            return False
        if key in ("Enter", "Return", "a"):
            return self.finish()
        if key == "x":
            self.remove_last_point()
            return True
        if key == "Escape":
            return self.cancel()
        return False

    def finish(self) -> bool:
        """Fill the outline drawn so far (nothing with fewer than 3 points); True when an outline was open."""
        if not self.widget.is_painting():
            return False
        self._dragging = False
        if self.widget._brush.points.GetNumberOfPoints() < 3:
            self.widget.cancel_painting()
        else:
            self.widget.stop_painting()  # trame-slicer's scissors fill the polygon on the slice in view
        self.RequestRender()
        return True

    def remove_last_point(self) -> None:
        if self.widget.is_painting():
            self.widget.remove_last_point()
            self.RequestRender()

    def cancel(self) -> bool:
        if not self.widget.is_painting():
            return False
        self._dragging = False
        self.widget.cancel_painting()
        self.RequestRender()
        return True


class SlicerDrawEffect(SegmentationEffectDraw):
    """trame-slicer's Draw (fill inside, on the slice in view) with Slicer's clicks and keys (:class:`SlicerDrawPipeline`)."""

    def _create_pipeline(self, view_node, parameter):
        return SlicerDrawPipeline() if super()._create_pipeline(view_node, parameter) is not None else None
