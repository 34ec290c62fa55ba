"""Editing in ``sciseg review``: Slicer's effects and tools on the open case, as Segment Editor has them.

The effect buttons (:data:`EFFECTS`; no tool: a left-drag sets window/level, :mod:`window_level`), the brush (its size
follows Shift+wheel in a view), the segment being edited, Segment Editor's masking (lesion only inside the cord, paint
within an intensity range), Apply threshold (lesion inside the cord only, asked before a large change:
:mod:`threshold`), the island and smoothing actions, undo and redo (their counts follow as after a stroke:
:mod:`measures`), the lesion overlay and the volume's window/level.
"""

from __future__ import annotations

import SimpleITK as sitk
from trame_slicer.core import VolumeWindowLevel
from trame_slicer.segmentation import (
    BrushDiameterMode,
    SegmentationEditableAreaMode,
    SegmentationEffectErase,
    SegmentationEffectIslands,
    SegmentationEffectPaint,
    SegmentationEffectScissors,
    SegmentationEffectSmoothing,
    SegmentationEffectThreshold,
    SegmentationIslandsMode,
)

from trame_server.utils.asynchronous import get_event_loop

from . import keys
from .draw import SlicerDrawEffect
from .threshold import REGIONS, plan_threshold, region_mask, slice_index_of
from .window_level import WindowLevelNoTool

EFFECTS = {
    "none": WindowLevelNoTool,  # a left-drag sets window/level, as in Slicer
    "paint": SegmentationEffectPaint,
    "erase": SegmentationEffectErase,
    "scissors": SegmentationEffectScissors,
    "draw": SlicerDrawEffect,  # Slicer's clicks: points, then double-click, right-click or Enter fills
    "islands": SegmentationEffectIslands,
    "threshold": SegmentationEffectThreshold,
    "smoothing": SegmentationEffectSmoothing,
}
BRUSH_EFFECTS = ("paint", "erase")  # their brush and stroke are drawn as model nodes (every view renders them)


class EditingMixin:
    """The editing actions of :class:`~.app.ReviewApp` (``self.slicer_app``'s editor, ``self.session``, ``self.state``)."""

    #: During a Paint/Erase stroke: (the stroked view, its multisamples), restored by :meth:`render_every_view`.
    _smoothing: tuple | None = None

    def set_effect(self, name: str) -> None:
        if self.session.case is None or name not in EFFECTS:
            return
        self.render_every_view()
        self.slicer_app.segmentation_editor.set_active_effect_type(EFFECTS[name])
        self._apply_brush()
        self.state.active_effect = name  # shown once the server has switched: strokes before it use the old tool

    def _apply_brush(self) -> None:
        effect = self.slicer_app.segmentation_editor.active_effect
        if hasattr(effect, "set_brush_diameter"):
            if id(effect) not in self._brush_effects:  # Shift+wheel in a view changes the effect's size: the slider follows
                self._brush_effects.add(id(effect))
                effect.parameters_changed.connect(lambda effect=effect: self._brush_changed_in_view(effect))
            effect.set_brush_diameter(float(self.state.brush_mm), BrushDiameterMode.Absolute)
            effect.set_use_sphere_brush(bool(self.state.sphere))

    def render_only_the_stroked_view(self, views) -> None:
        """While a Paint or Erase stroke is drawn (press to release in one slice view), the other views do not render.

        trame-slicer draws the brush and the stroke as model nodes, and Slicer's model displayable manager asks every
        slice view to render when they move, even a view they are hidden in: each mouse move of a stroke rendered all
        three views (the two others 0.05-0.2 s of the event loop each on a loaded 2-core machine), and the release,
        with the stroke's counts, waited behind those frames. The other views render once the stroke ends, at its
        release (after its counts, :mod:`measures`)."""
        self._stroke_views = list(views)
        for view in self._stroke_views:
            interactor = view.interactor()
            interactor.AddObserver("LeftButtonPressEvent", lambda *_, view=view: self._stroke_starts_in(view), 100.0)
            interactor.AddObserver("LeftButtonReleaseEvent", lambda *_: self._stroke_ends(), 100.0)

    def _stroke_starts_in(self, stroked) -> None:
        """A Paint or Erase stroke starts in ``stroked``: the other views wait, and its frames until the release are
        drawn without multisample anti-aliasing (trame-slicer asks 8 samples per pixel, Mesa's llvmpipe gives 4: a
        frame of the large sagittal view took 33-37 ms of the event loop instead of 8-10 ms, at every mouse move,
        before the release was seen). The frames after the stroke are smoothed again (:meth:`render_every_view`)."""
        if self.state.active_effect in BRUSH_EFFECTS and self.session.case is not None:
            for view in self._stroke_views:
                view.set_render_blocked(view is not stroked)
            window = stroked.render_window()
            if window.GetMultiSamples() > 0:
                self._smoothing = (stroked, window.GetMultiSamples())
                window.SetMultiSamples(0)

    def _stroke_ends(self) -> None:
        """The release, seen before the effect applies the stroke: the views render after the stroke's counts
        (:mod:`measures`), or in the next turn of the event loop when the release changed nothing."""
        get_event_loop().call_soon(lambda: self._counts_pending or self.render_every_view())

    def hold_every_view(self) -> None:
        """The views' frames wait (an edit's counts go first, :mod:`measures`); :meth:`render_every_view` ends it."""
        self.views_held = True
        for view in getattr(self, "_stroke_views", ()):
            view.set_render_blocked(True)

    def render_every_view(self) -> None:
        """End of a stroke: every view renders again (each renders once, when the event loop is free), the stroked
        one smoothed again."""
        self.views_held = False
        for view in getattr(self, "_stroke_views", ()):
            if view.is_render_blocked:
                view.set_render_blocked(False)
        if self._smoothing is not None:
            stroked, samples = self._smoothing
            self._smoothing = None
            stroked.render_window().SetMultiSamples(samples)
            stroked.schedule_render()

    def _brush_changed_in_view(self, effect) -> None:
        shown = keys.clamp_brush(effect.get_brush_diameter())
        if effect is self.slicer_app.segmentation_editor.active_effect and shown != float(self.state.brush_mm):
            with self.state:
                self.state.brush_mm = shown

    def _apply_masking(self) -> None:
        """Segment Editor's masking on its editor node: "lesion only inside the cord" (editable area inside the
        segments, cord only + lesion, while the lesion is edited) and the intensity range (the Threshold slider)."""
        editor = self.slicer_app.segmentation_editor
        if self.session.case is None or editor.editor_node is None:
            return
        inside = bool(self.state.lesion_in_cord) and self.state.segment == "lesion"
        editor.set_editable_area(SegmentationEditableAreaMode.INSIDE_ALL_SEGMENTS if inside else SegmentationEditableAreaMode.EVERYWHERE)
        low, high = (float(v) for v in self.state.threshold)
        editor.editor_node.SetSourceVolumeIntensityMaskRange(low, high)
        editor.editor_node.SetSourceVolumeIntensityMask(bool(self.state.intensity_mask))

    def keep_largest_island(self) -> None:
        self._with_effect(SegmentationEffectIslands, lambda effect: effect.apply(SegmentationIslandsMode.KEEP_LARGEST_ISLAND))

    def remove_small_islands(self) -> None:
        self._with_effect(SegmentationEffectIslands, lambda effect: effect.remove_small_islands(10))

    def apply_threshold(self, confirmed: bool = False, intensities=None) -> None:
        """Add the Threshold slider's range to the lesion inside the cord (and the slice in view with region "slice"),
        asking first when that adds more than a few lesions' worth (:mod:`threshold`). Undoable, never removes.

        ``intensities``: the range the page shows, sent with the click (a slider's last move may still be on its way)."""
        self.state.threshold_pending = None
        if self.session.case is None:
            return
        if intensities is not None:
            self.state.threshold = [float(v) for v in intensities]
        labels = self.session.labels()
        image = sitk.GetArrayFromImage(self.session.reference_image())
        axis = index = None
        if self.state.threshold_region == "slice":
            view = self._pointer_view or self.slicer_app.view_manager.get_slice_views()[0]
            axis, index = self._slice_of(view)
        low, high = (float(v) for v in self.state.threshold)
        spacing = self.session.case.volume_node.GetSpacing()
        plan = plan_threshold(image, labels, low, high, region_mask(labels, self.state.threshold_region, axis, index),
                              float(spacing[0] * spacing[1] * spacing[2]))
        if plan.voxels == 0:
            self.state.message = f"no voxel in {low:g}-{high:g} {REGIONS[self.state.threshold_region]} to add"
            return
        if plan.needs_confirmation and not confirmed:
            self.state.threshold_pending = {"text": plan.question()}
            return
        self._add_lesion_voxels(plan.added)
        self.state.message = f"threshold added {plan.voxels} lesion voxels ({plan.volume_mm3:.0f} mm3)"

    def _slice_of(self, view) -> tuple[int, int]:
        """(array axis, index) of the image slice a slice view shows."""
        import numpy as np
        from vtkmodules.vtkCommonMath import vtkMatrix4x4

        matrix = vtkMatrix4x4()
        self.session.case.volume_node.GetRASToIJKMatrix(matrix)
        ras_to_ijk = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        slice_to_ras = view.get_view_node().GetSliceToRAS()
        centre = [slice_to_ras.GetElement(r, 3) for r in range(3)]
        normal = [slice_to_ras.GetElement(r, 2) for r in range(3)]
        return slice_index_of(ras_to_ijk, np.array(centre), np.array(normal))

    def _add_lesion_voxels(self, added) -> None:
        """Add a (z, y, x) bool array to the lesion through the editor (one undoable step, its masking bypassed)."""
        from trame_slicer.segmentation.segment_modifier import ModificationMode
        from vtkmodules.util.numpy_support import vtk_to_numpy

        editor = self.slicer_app.segmentation_editor
        editor.set_active_segment_id("lesion")
        modifier = editor.active_segment_modifier
        stroke = modifier.create_modifier_labelmap()
        dims = stroke.GetDimensions()
        voxels = vtk_to_numpy(stroke.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
        voxels[:] = added
        stroke.Modified()
        modifier.apply_labelmap(stroke, modification_mode=ModificationMode.Add, do_bypass_masking=True)
        editor.set_active_segment_id(self.state.segment)

    def apply_smoothing(self) -> None:
        self._with_effect(SegmentationEffectSmoothing, lambda effect: effect.apply_smoothing())

    def _with_effect(self, effect_type, action) -> None:
        if self.session.case is None:
            return
        editor = self.slicer_app.segmentation_editor
        effect = editor.set_active_effect_type(effect_type)
        action(effect)
        self.state.effect = "none"
        editor.set_active_effect_type(WindowLevelNoTool)
        self.update_measures()

    def undo(self) -> None:
        """Undo the last edit; the views follow at once, the counts, draft and lesion table as after a stroke."""
        self.undo_stack.undo()
        self._on_segmentation_modified()  # scheduled, not run here: the view is sent before the labels are read

    def redo(self) -> None:
        self.undo_stack.redo()
        self._on_segmentation_modified()

    def _set_segment(self, segment: str) -> None:
        if self.session.case is not None:
            self.slicer_app.segmentation_editor.set_active_segment_id(segment)
            self._apply_brush()
            self._apply_masking()

    def _set_lesion_visible(self, visible: bool) -> None:
        self.overlays.set_visible("lesion", bool(visible))

    def _window_level_dragged(self, window: float, level: float) -> None:
        with self.state:  # the sliders follow a drag in a view
            self.state.update({"wl_window": round(float(window), 1), "wl_level": round(float(level), 1)})

    def _apply_window_level(self, window: float, level: float) -> None:
        if self.session.case is not None:
            VolumeWindowLevel.set_volume_node_window_level(self.session.case.volume_node, float(window), float(level))
