"""The slice views of ``sciseg review``: layout, what each view shows around the image, crosshair, pointer value.

Layout: a large sagittal view (sagittal scans are read sagittally) on the right, axial above coronal on the
left; any view can be maximised alone and restored. Each view shows its name, the patient directions at its
edges (:func:`view_geometry.orientation_letters`), the slice it shows (``slice 27 / 52``), a slice slider and
labelled buttons (reset, maximise). No "Show in 3D" control: trame-slicer's default gutter offers one, but the
app has no 3D view, so it would do nothing visible. Slicer's crosshair (basic mode) marks the same point in every
view (a toolbar button hides it); a click on a lesion row puts it on the lesion, and the toolbar shows the image
value under the pointer.

DOM order of the views: axial, coronal, sagittal (``.remote-controlled-area`` nth 0 is the axial view); each view's
name carries ``data-view`` (``axial``, ``sagittal``, ``coronal``) for tests and assistive technology.

Built before a case is opened, :meth:`ReviewViews.prime_image_layers` puts each slice view's image actor into its
renderer first: otherwise the first case's segmentation pipelines would be created before it and drawn under the
image, and an undo (which recreates them) would change the overlay's colours.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from slicer import vtkMRMLCrosshairNode
from trame.widgets import html
from trame.widgets import vuetify3 as v3
from trame_slicer.app.logic.slice_view_logic import connect_slice_view_slider_to_state
from trame_slicer.app.ui.slider import Slider
from trame_slicer.core import LayoutManager
from trame_slicer.rca_view import register_rca_factories
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition
from vtkmodules.vtkCommonCore import vtkObject
from vtkmodules.vtkCommonMath import vtkMatrix4x4

from .. import mrml
from .view_geometry import orientation_letters, slice_position, voxel_at

#: view name -> trame-slicer's view (Slicer's singleton tags: Red, Yellow, Green)
VIEWS = {"axial": ViewLayoutDefinition.axial_view(), "sagittal": ViewLayoutDefinition.sagittal_view(),
         "coronal": ViewLayoutDefinition.coronal_view()}
NAME_OF_TAG = {definition.singleton_tag: name for name, definition in VIEWS.items()}
LAYOUT = "review"
STILL_QUALITY = 90  # trame-rca's still JPEG quality (its default): every frame is sent at it, rendered once


def review_layout() -> Layout:
    """Axial above coronal on the left (one third), a large sagittal view on the right (two thirds)."""
    return Layout(
        LayoutDirection.Horizontal,
        [Layout(LayoutDirection.Vertical, [VIEWS["axial"], VIEWS["coronal"]]), VIEWS["sagittal"]],
        flex_sizes=["1", "2"],
    )


def layout_id(maximised: str) -> str:
    """The registered layout for a maximised view name ('' or an unknown name: the three views)."""
    return f"{LAYOUT}-{maximised}" if maximised in VIEWS else LAYOUT


def _matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _attributes(**values) -> dict:
    """HTML attributes with dashes (aria-label, data-view) for trame widgets."""
    return {"__properties": [(key, key.replace("_", "-")) for key in values], **values}


class ReviewViews:
    """The views of one app: built with the app, told when a case opens (:meth:`show_case`), when to centre."""

    def __init__(self, server, slicer_app) -> None:
        self.server, self.app = server, slicer_app
        self.volume_node = None
        self._pointer_voxel: tuple[int, int, int] | None = None  # the voxel the toolbar's pointer value is for
        self.state.update({"maximised": "", "pointer_text": "", "crosshair": True,
                           "views_info": {name: {"slice": "", "letters": {}} for name in VIEWS}})
        # Frames are JPEG at one quality: trame-rca renders a view a second time for a "still" frame when the
        # interactive quality differs, and a render of the sagittal view costs far more than its encoding.
        register_rca_factories(slicer_app.view_manager, server, slice_view_ui_f=self._view_ui,
                               interactive_quality=STILL_QUALITY)
        self.layout_manager = LayoutManager(slicer_app.scene, slicer_app.view_manager, server)
        warnings_shown = vtkObject.GetGlobalWarningDisplay()
        vtkObject.GlobalWarningDisplayOff()  # VTK 9.6 warns once per view that WindowResizeEvent is deprecated
        try:
            self.layout_manager.register_layout(LAYOUT, review_layout())
            for name, definition in VIEWS.items():
                self.layout_manager.register_layout(layout_id(name), Layout(LayoutDirection.Horizontal, [definition]))
            self.layout_manager.set_layout(LAYOUT)
        finally:
            vtkObject.SetGlobalWarningDisplay(warnings_shown)
        self.prime_image_layers()
        self.crosshair = slicer_app.scene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        self.crosshair.SetCrosshairMode(vtkMRMLCrosshairNode.ShowBasic)
        self.crosshair.AddObserver(vtkMRMLCrosshairNode.CursorPositionModifiedEvent, lambda *_: self._update_pointer())
        self.state.change("maximised")(lambda maximised, **_: self.layout_manager.set_layout(layout_id(maximised)))
        self.state.change("crosshair")(lambda crosshair, **_: self.crosshair.SetCrosshairMode(
            vtkMRMLCrosshairNode.ShowBasic if crosshair else vtkMRMLCrosshairNode.NoCrosshair))

    @property
    def state(self):
        return self.server.state

    def prime_image_layers(self) -> None:
        """Show a 2x2x2 placeholder in every slice view once, so each view's image actor is in its renderer before
        any segmentation pipeline (those added later are drawn above the image)."""
        scene, display = self.app.scene, self.app.display_manager
        placeholder = mrml.add_volume_node(scene, sitk.Image(2, 2, 2, sitk.sitkUInt8), "placeholder")
        placeholder.CreateDefaultDisplayNodes()
        try:
            display.show_volume_in_slice_background(placeholder)
            display.show_volume_in_slice_background(None)
        finally:
            scene.RemoveNode(placeholder.GetDisplayNode())
            scene.RemoveNode(placeholder)

    # ------------------------------------------------------------------ server side
    def show_case(self, volume_node) -> None:
        """A case's image is in the views: slice numbers and pointer values refer to it."""
        self.volume_node = volume_node
        self._pointer_voxel = None
        self.state.pointer_text = ""
        self._update_all()

    def centre(self, centre_ras: tuple[float, float, float]) -> None:
        """Centre every slice view on a RAS point (mm) and put the crosshair there."""
        for view in self.app.view_manager.get_slice_views():
            view.get_view_node().JumpSliceByCentering(*centre_ras)
        self.crosshair.SetCrosshairRAS(*centre_ras)

    def _volume_geometry(self) -> tuple[np.ndarray, tuple[int, int, int]] | None:
        if self.volume_node is None or self.volume_node.GetImageData() is None:
            return None
        matrix = vtkMatrix4x4()
        self.volume_node.GetIJKToRASMatrix(matrix)
        return _matrix(matrix), tuple(self.volume_node.GetImageData().GetDimensions())

    def view_info(self, view) -> dict:
        """A view's letters and slice text (``slice 27 / 52``; empty without a case)."""
        slice_to_ras = _matrix(view.get_view_node().GetSliceToRAS())
        info = {"letters": orientation_letters(slice_to_ras), "slice": ""}
        geometry = self._volume_geometry()
        if geometry is not None:
            index, count, _axis = slice_position(slice_to_ras, *geometry)
            info["slice"] = f"slice {index} / {count}"
        return info

    def _update_view(self, view) -> None:
        name = NAME_OF_TAG.get(view.get_singleton_tag())
        if name is None:
            return
        info = self.view_info(view)
        if self.state.views_info.get(name) != info:
            with self.state:
                self.state.views_info = {**self.state.views_info, name: info}

    def _update_all(self) -> None:
        for view in self.app.view_manager.get_slice_views():
            self._update_view(view)

    def _update_pointer(self) -> None:
        """The toolbar's "R a A b S c · voxel (i, j, k) · value" for the point under the pointer (RAS mm), updated when
        the pointer enters another voxel."""
        geometry = self._volume_geometry()
        position = [0.0, 0.0, 0.0]
        if geometry is None or not self.crosshair.GetCursorPositionRAS(position):
            return
        voxel = voxel_at(tuple(position), *geometry)
        if voxel == self._pointer_voxel:  # one message per voxel crossed, not per mouse move (strokes send many)
            return
        self._pointer_voxel = voxel
        if voxel is None:
            text = ""
        else:
            value = self.volume_node.GetImageData().GetScalarComponentAsDouble(*voxel, 0)
            text = "R {:.1f} A {:.1f} S {:.1f} · voxel ({}, {}, {}) · {:g}".format(*position, *voxel, round(value, 2))
        if text != self.state.pointer_text:
            with self.state:
                self.state.pointer_text = text

    # ------------------------------------------------------------------ UI
    @staticmethod
    def crosshair_toggle_ui() -> None:
        """The toolbar's crosshair switch (shown by default)."""
        label = ("crosshair ? 'Hide the crosshair' : 'Show the crosshair'",)
        with v3.VBtn(icon=True, click="crosshair = !crosshair", id="crosshair-toggle", variant="text",
                     **_attributes(aria_label=label, title=label)):
            v3.VIcon(icon=("crosshair ? 'mdi-crosshairs-gps' : 'mdi-crosshairs-off'",))

    def _view_ui(self, server, view_id: str, view) -> None:
        """What each slice view shows around the image (trame-slicer's ``slice_view_ui_f``, called per view)."""
        name = NAME_OF_TAG.get(view.get_singleton_tag(), view.get_singleton_tag())
        title = name.capitalize()
        view.modified.connect(lambda changed: self._update_view(changed))
        info = f"views_info.{name}"
        with html.Div(classes="d-flex align-center pa-1", style="position: absolute; top: 0; left: 0; gap: 2px;"):
            html.Span(title, classes="sciseg-view-name text-caption font-weight-bold px-1",
                      style="color: #fff; background: rgba(0,0,0,0.55); border-radius: 3px;",
                      **_attributes(data_view=name))
            with v3.VBtn(size="small", variant="text", density="compact", icon=True, click=view.reset_view,
                         classes="sciseg-reset-view", **_attributes(aria_label=f"Reset the {name} view",
                                                                     title=f"Reset the {name} view")):
                v3.VIcon("mdi-camera-flip-outline", color="white", size="small")
            with v3.VBtn(size="small", variant="text", density="compact", icon=True,
                         click=f"maximised = maximised === '{name}' ? '' : '{name}'",
                         classes="sciseg-maximise", **_attributes(
                             data_view=name,
                             aria_label=(f"maximised === '{name}' ? 'Restore the three views' : 'Maximise the {name} view'",),
                             title=(f"maximised === '{name}' ? 'Restore the three views' : 'Maximise the {name} view'",))):
                v3.VIcon(icon=(f"maximised === '{name}' ? 'mdi-arrow-collapse' : 'mdi-arrow-expand'",), color="white", size="small")
        letter_style = ("position: absolute; color: #ffd54f; font: bold 14px sans-serif; text-shadow: 0 0 3px #000;"
                        " pointer-events: none;")
        for edge, where in (("left", "left: 4px; top: 50%;"), ("right", "right: 4px; top: 50%;"),
                            ("top", "top: 4px; left: 50%;"), ("bottom", "bottom: 30px; left: 50%;")):
            html.Div(f"{{{{ {info}.letters.{edge} }}}}", classes=f"sciseg-letter sciseg-letter-{edge}",
                     style=letter_style + where, **_attributes(data_view=name))
        html.Div(f"{{{{ {info}.slice }}}}", classes="sciseg-slice text-caption px-1",
                 style="position: absolute; bottom: 30px; right: 4px; color: #fff; background: rgba(0,0,0,0.55);"
                       " border-radius: 3px; pointer-events: none;", **_attributes(data_view=name))
        with html.Div(style="position: absolute; bottom: 0; left: 0; width: 100%;"):
            slider_state = connect_slice_view_slider_to_state(server, view)
            Slider(typed_state=slider_state, theme="dark", density="compact", classes="sciseg-slice-slider px-2",
                   **_attributes(aria_label=f"{title} slice", title=f"{title} slice"))
