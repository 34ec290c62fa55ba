"""The review app's keyboard: 3D Slicer's keys where Slicer has one, so a rater's hands need not learn twice.

Slicer's sources of these keys: slice views (``vtkMRMLSliceIntersectionWidget``: Right/Up/``f`` next slice,
Left/Down/``b`` previous slice), the Segment Editor (``qMRMLSegmentEditorWidget``: ``z``/Ctrl+Z undo,
``y``/Ctrl+Y redo, Escape no tool, ``i`` intensity masking on/off) and its Paint effect
(``qSlicerSegmentEditorPaintEffect``: ``+``/``=`` brush x1.2, ``-``/``_`` brush x0.8, Shift+wheel too).
PageUp/PageDown step slices as in ITK-SNAP and OHIF. Keys of this app only: ``p`` ``e`` ``c`` ``d`` tools,
``1``/``2`` segments, ``l`` lesion overlay, ``n`` next uncorrected case, Shift+N previous case, ``?`` this card.

:func:`action_for` turns a browser key event (``KeyboardEvent.key`` and its modifiers) into an action name;
the app binds each name to a method. Brush sizes are diameters in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

BRUSH_MIN_MM, BRUSH_MAX_MM = 0.5, 30.0  # the "Brush mm" slider's range
BRUSH_STEP = 0.2  # Slicer's +/- keys scale the brush diameter by 1 +/- 0.2

TOOLS = {"p": "paint", "e": "erase", "c": "scissors", "d": "draw", "Escape": "none"}
PLAIN_KEYS = {
    "ArrowRight": "next_slice", "ArrowUp": "next_slice", "f": "next_slice", "PageUp": "next_slice",
    "ArrowLeft": "previous_slice", "ArrowDown": "previous_slice", "b": "previous_slice", "PageDown": "previous_slice",
    "z": "undo", "y": "redo",
    "+": "brush_larger", "=": "brush_larger", "-": "brush_smaller", "_": "brush_smaller",
    "1": "segment_cord", "2": "segment_lesion", "l": "toggle_lesion", "i": "toggle_intensity_mask",
    "n": "next_case", "N": "previous_case", "?": "shortcuts",
    **{key: f"tool_{tool}" for key, tool in TOOLS.items()},
}
CONTROL_KEYS = {"z": "undo", "y": "redo", "Z": "redo"}  # Ctrl (or Cmd) + key; Ctrl+Shift+Z redoes too
KEYS_THE_BROWSER_MUST_NOT_HANDLE = ("ArrowRight", "ArrowUp", "ArrowLeft", "ArrowDown", "PageUp", "PageDown")


@dataclass(frozen=True)
class Shortcut:
    keys: str
    action: str


SHORTCUTS = (  # the card shown by "?", in the order a rater needs them
    Shortcut("p / e / c / d", "Paint / Erase / Scissors / Draw"),
    Shortcut("Esc", "no tool (left-drag sets window/level)"),
    Shortcut("1 / 2", "cord / lesion segment"),
    Shortcut("+ / -  or Shift+wheel", "brush larger / smaller"),
    Shortcut("→ ↑ f PageUp", "next slice (view under the pointer)"),
    Shortcut("← ↓ b PageDown", "previous slice"),
    Shortcut("z or Ctrl+Z", "undo"),
    Shortcut("y or Ctrl+Y", "redo"),
    Shortcut("i", "paint only within the intensity range on/off"),
    Shortcut("l", "lesion overlay on/off"),
    Shortcut("Draw: click, drag", "add points; double-click, right-click, Enter or a: fill; x: remove last point"),
    Shortcut("n / Shift+N", "next uncorrected / previous case"),
    Shortcut("?", "this card"),
)


def action_for(key: str, control: bool = False, alt: bool = False) -> str | None:
    """The action of a browser key event (``KeyboardEvent.key``; ``control``: Ctrl or Cmd held), None for no action."""
    if alt:
        return None
    if control:
        return CONTROL_KEYS.get(key)
    return PLAIN_KEYS.get(key)


def scaled_brush(diameter_mm: float, larger: bool) -> float:
    """The brush diameter (mm) after one +/- key, as Slicer scales it, kept within the slider's range."""
    factor = 1.0 + BRUSH_STEP if larger else 1.0 - BRUSH_STEP
    return clamp_brush(diameter_mm * factor)


def clamp_brush(diameter_mm: float) -> float:
    """A brush diameter (mm) within the slider's range, rounded to 0.1 mm (the slider's step)."""
    return round(min(BRUSH_MAX_MM, max(BRUSH_MIN_MM, float(diameter_mm))), 1)


def stepped_slice(value_mm: float, step_mm: float, steps: int, low_mm: float, high_mm: float) -> float:
    """A slice offset (mm) moved by ``steps`` slices of ``step_mm``, kept within the volume's [low_mm, high_mm]."""
    return min(high_mm, max(low_mm, value_mm + steps * step_mm))
