"""The review app's controls of how things look: each segment's overlay (:mod:`overlay`) and the dark theme.

Every icon button carries an ``aria-label`` and a ``title``, every slider an ``aria-label``; the dark theme is the
default (reading rooms are dim) and one toolbar button switches it.
"""

from __future__ import annotations

from trame.widgets import html
from trame.widgets import vuetify3 as v3

from .layout import _attributes
from slicer import vtkSegmentation

from .overlay import SEGMENTS, SegmentOverlay, apply_overlay, default_state

TITLES = {"spinal_cord": "Cord", "lesion": "Lesion"}
SEGMENT_ADDED = vtkSegmentation.SegmentAdded


class OverlayControls:
    """Binds the ``overlay`` state ({segment: {visible, fill, outline}}) to the open segmentation's display node."""

    def __init__(self, state) -> None:
        self.state = state
        self.display_node = None
        self._observed: tuple[object, int] | None = None  # (vtkSegmentation, observer tag)
        state.update({"overlay": default_state(), "dark": True})
        state.change("overlay")(lambda overlay, **_: self.apply(overlay))

    def show_case(self, segmentation_node) -> None:
        """A case opened: its overlay starts from the defaults (cord outline only, lesion half filled)."""
        if self._observed is not None:
            self._observed[0].RemoveObserver(self._observed[1])
            self._observed = None
        self.display_node = segmentation_node.GetDisplayNode() if segmentation_node is not None else None
        if segmentation_node is not None:  # undo and redo put back copies of the segments, with default display
            segmentation = segmentation_node.GetSegmentation()
            tag = segmentation.AddObserver(SEGMENT_ADDED, lambda *_: self.apply(self.state.overlay))
            self._observed = (segmentation, tag)
        self.state.overlay = default_state()
        self.apply(self.state.overlay)

    def apply(self, overlay: dict) -> None:
        """Draw each segment present as ``overlay`` says (during an undo, the segments come back one by one)."""
        if self.display_node is None:
            return
        segmentation = self.display_node.GetDisplayableNode().GetSegmentation()
        for segment in SEGMENTS:
            if segmentation.GetSegment(segment) is not None:
                apply_overlay(self.display_node, segment, SegmentOverlay.from_state(dict(overlay or {}).get(segment, {})))
        self.state.lesion_visible = SegmentOverlay.from_state(dict(overlay or {}).get("lesion", {})).visible  # for `l`

    def set_visible(self, segment: str, visible: bool) -> None:
        """Show or hide one segment (the ``l`` key for the lesion; the eye buttons change ``overlay`` in the page)."""
        if SegmentOverlay.from_state(self.state.overlay[segment]).visible == bool(visible):
            return
        overlay = dict(self.state.overlay)
        overlay[segment] = {**overlay[segment], "visible": bool(visible)}
        self.state.overlay = overlay


def overlay_controls_ui() -> None:
    """One row per segment: eye button (show/hide), fill opacity slider (0: outline only), outline checkbox."""
    html.Div("Overlay", classes="text-caption mt-2")
    for segment in SEGMENTS:
        title, state = TITLES[segment], f"overlay.{segment}"
        toggle = f"overlay = {{...overlay, {segment}: {{...overlay.{segment}, visible: !overlay.{segment}.visible}}}}"
        label = (f"{state}.visible ? 'Hide the {title.lower()} overlay' : 'Show the {title.lower()} overlay'",)
        with html.Div(classes="d-flex align-center", id=f"overlay-{segment}"):
            with v3.VBtn(icon=True, size="small", variant="text", density="compact", click=toggle,
                         id="lesion-visible" if segment == "lesion" else f"overlay-visible-{segment}",
                         **_attributes(aria_label=label, title=label)):
                v3.VIcon(icon=(f"{state}.visible ? 'mdi-eye' : 'mdi-eye-off'",), size="small")
            html.Span(title, classes="text-caption", style="width: 44px;")
            v3.VSlider(model_value=(f"{state}.fill",), min=0, max=1, step=0.05, hide_details=True, density="compact",
                       update_modelValue=f"overlay = {{...overlay, {segment}: {{...overlay.{segment}, fill: $event}}}}",
                       id=f"overlay-fill-{segment}", classes="mx-1",
                       **_attributes(aria_label=f"{title} fill opacity", title=f"{title} fill opacity"))
            v3.VCheckbox(model_value=(f"{state}.outline",), label="outline", hide_details=True, density="compact",
                         update_modelValue=f"overlay = {{...overlay, {segment}: {{...overlay.{segment}, outline: $event}}}}",
                         id=f"overlay-outline-{segment}", style="flex: 0 0 auto;")


def label_element(element, text: str) -> None:
    """Give a widget built elsewhere (trame's drawer button) an ``aria-label`` and a ``title``."""
    element._attr_names += [("aria_label", "aria-label"), "title"]
    element.aria_label = element.title = text


def theme_toggle_ui() -> None:
    """The toolbar's dark/light switch."""
    label = ("dark ? 'Light theme' : 'Dark theme'",)
    with v3.VBtn(icon=True, click="dark = !dark", id="theme-toggle", variant="text",
                 **_attributes(aria_label=label, title=label)):
        v3.VIcon("mdi-theme-light-dark")
