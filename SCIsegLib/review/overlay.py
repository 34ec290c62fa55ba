"""How each segment is drawn over the image in ``sciseg review``'s slice views: shown or hidden, fill opacity, outline.

The cord's default is its outline only, so the cord's own signal (where intramedullary lesions are seen) stays
readable; the lesion is filled at half opacity with its outline. A segment's fill opacity is 0 to 1 (0: outline
only); the outline is drawn at full opacity or not at all. These settings are the display node's per-segment
properties (Slicer's "Segments" display: 2D fill and outline opacity, visibility) and only change how the masks
are drawn, never the masks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

SEGMENTS = ("spinal_cord", "lesion")


@dataclass(frozen=True)
class SegmentOverlay:
    """One segment's drawing: ``visible``, ``fill`` opacity (0 to 1), ``outline`` drawn or not."""

    visible: bool = True
    fill: float = 0.5
    outline: bool = True

    @classmethod
    def from_state(cls, value: dict) -> SegmentOverlay:
        """From the browser's state (any values): fill clipped to 0..1, flags as booleans."""
        try:
            fill = min(1.0, max(0.0, float(value.get("fill", 0.5))))
        except (TypeError, ValueError):
            fill = 0.5
        return cls(bool(value.get("visible", True)), fill, bool(value.get("outline", True)))

    def as_state(self) -> dict:
        return asdict(self)


DEFAULTS = {"spinal_cord": SegmentOverlay(fill=0.0), "lesion": SegmentOverlay(fill=0.5)}


def default_state() -> dict[str, dict]:
    """The browser state of every segment's overlay at a case's opening."""
    return {segment: DEFAULTS[segment].as_state() for segment in SEGMENTS}


def apply_overlay(display_node, segment_id: str, overlay: SegmentOverlay) -> None:
    """Draw ``segment_id`` of a segmentation display node as ``overlay`` says (the node's own 2D opacities set to 1)."""
    display_node.SetOpacity2DFill(1.0)
    display_node.SetOpacity2DOutline(1.0)
    display_node.SetSegmentVisibility(segment_id, overlay.visible)
    display_node.SetSegmentOpacity2DFill(segment_id, overlay.fill)
    display_node.SetSegmentOpacity2DOutline(segment_id, 1.0 if overlay.outline else 0.0)
