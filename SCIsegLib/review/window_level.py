"""Window/level by a left-drag with no tool, as in 3D Slicer's slice views: left/right sets the window (contrast),
up/down the level (brightness).

:func:`dragged_window_level` decides the values (image intensity units) from the drag (display pixels);
:class:`WindowLevelNoTool` is the editor's "no tool" with a pipeline that applies them to the volume's display
node and tells the app (``on_change``), so the **Window** and **Level** sliders follow.
"""

from __future__ import annotations

from collections.abc import Callable

from trame_slicer.segmentation import SegmentationEffectNoTool
from trame_slicer.segmentation.segmentation_effect_pipeline import SegmentationEffectPipeline
from vtkmodules.vtkCommonCore import vtkCommand


def dragged_window_level(start: tuple[float, float], drag_px: tuple[float, float], view_px: tuple[float, float],
                         scalar_range: tuple[float, float]) -> tuple[float, float]:
    """(window, level) after a drag of ``drag_px`` (dx right, dy up) from ``start`` (window, level): a drag across
    the whole view changes the window, or the level, by the image's whole intensity range; window >= 1/1000 of it."""
    span = max(float(scalar_range[1]) - float(scalar_range[0]), 1e-6)
    window = max(span / 1000.0, start[0] + drag_px[0] / max(view_px[0], 1.0) * span)
    level = start[1] + drag_px[1] / max(view_px[1], 1.0) * span
    return window, level


class WindowLevelPipeline(SegmentationEffectPipeline):
    """A slice view's left-drag sets the window/level of the volume it shows (no tool active)."""

    def __init__(self) -> None:
        super().__init__()
        self._start: tuple[tuple[float, float], tuple[float, float]] | None = None

    def CanProcessInteractionEvent(self, event_data) -> tuple[bool, float]:
        kinds = (int(vtkCommand.LeftButtonPressEvent), int(vtkCommand.MouseMoveEvent), int(vtkCommand.LeftButtonReleaseEvent))
        return bool(self.IsActive()) and event_data.GetType() in kinds, 0.0

    def _display(self):
        volume = self.GetModifier().volume_node if self.GetModifier() else None
        return volume.GetDisplayNode() if volume is not None else None

    def ProcessInteractionEvent(self, event_data) -> bool:
        kind, display = event_data.GetType(), self._display()
        if display is None:
            return False
        position = tuple(float(v) for v in event_data.GetDisplayPosition())
        if kind == int(vtkCommand.LeftButtonPressEvent):
            self._start = (position, (display.GetWindow(), display.GetLevel()))
            return True
        if self._start is None:
            return False
        if kind == int(vtkCommand.LeftButtonReleaseEvent):
            self._start = None
            return True
        (x0, y0), start = self._start
        width, height = self._view.render_window().GetSize()
        volume = self.GetModifier().volume_node
        window, level = dragged_window_level(start, (position[0] - x0, position[1] - y0), (width, height),
                                             volume.GetImageData().GetScalarRange())
        display.SetAutoWindowLevel(False)
        display.SetWindowLevel(window, level)
        if self._effect.on_change is not None:
            self._effect.on_change(window, level)
        return True


class WindowLevelNoTool(SegmentationEffectNoTool):
    """The editor's "no tool", whose slice views set window/level by a left-drag (``on_change``: told each value)."""

    def __init__(self) -> None:
        super().__init__()
        self.on_change: Callable[[float, float], None] | None = None

    def _create_pipeline(self, view_node, _parameter):
        from slicer import vtkMRMLSliceNode

        return WindowLevelPipeline() if isinstance(view_node, vtkMRMLSliceNode) else None
