"""The page of ``sciseg review``: its layout and widgets, bound to the app's state and actions (no decision here).

The toolbar (case, unsaved mark, voxel counts, pointer value, crosshair, theme, lesion totals, shortcut card), the case
list in the drawer, the views (:mod:`layout`) and the tools column: segment and effect buttons, brush, undo and
island actions, masking (lesion only inside the cord, intensity range), Apply threshold, overlays, window/level and
the lesion table, with Rater and Export in a footer that a long table never pushes below the fold. The page's scripts:
every key goes to the server (:func:`keys.action_for` decides), the rater's name and last case are kept in the browser,
leaving with unsaved strokes asks first, and ``?case=<case id>`` opens that case once.
"""

from __future__ import annotations

from trame.ui.vuetify3 import SinglePageWithDrawerLayout
from trame.widgets import client, html
from trame.widgets import vuetify3 as v3

from . import keys
from .case_notes import case_list_item_ui, case_notes_ui
from .threshold import REGIONS
from .view_controls import label_element, overlay_controls_ui, theme_toggle_ui

KEYBOARD_JS = (  # every key goes to the server (keys.action_for decides); slice and undo keys are not the browser's
    "if (!window.scisegKeys) { window.scisegKeys = true;"
    " window.addEventListener('keydown', (e) => {"
    " const tag = (e.target && e.target.tagName) || '';"
    " const role = (e.target && e.target.getAttribute && e.target.getAttribute('role')) || '';"
    " if (tag === 'INPUT' || tag === 'TEXTAREA' || role === 'slider' || e.repeat && e.key.length === 1) return;"
    " const control = e.ctrlKey || e.metaKey;"
    f" if ({list(keys.KEYS_THE_BROWSER_MUST_NOT_HANDLE)}.includes(e.key) || control && 'zyZ'.includes(e.key))"
    " e.preventDefault();"
    " window.trame.trigger('review_key', [e.key, control, e.altKey]); }); }"
)
RATER_STORAGE, CASE_STORAGE = "sciseg_review_rater", "sciseg_review_case"
LEAVE_JS = (  # the rater's name and last case come back from this browser; leaving with unsaved strokes asks first
    "if (!window.scisegLeave) { window.scisegLeave = true;"
    f" const saved = window.localStorage.getItem('{RATER_STORAGE}');"
    " if (saved && !window.trame.state.get('rater')) { window.trame.state.set('rater', saved); }"
    f" const last = window.localStorage.getItem('{CASE_STORAGE}');"
    " if (last && !window.trame.state.get('case_id')) { window.trame.state.set('last_case', last); }"
    " window.addEventListener('beforeunload', (e) => {"
    " if (window.trame.state.get('unsaved')) { e.preventDefault(); e.returnValue = ''; } }); }"
)
OPEN_JS = (  # ?case=<case id> (the front's answer to a QC report's link): opened once, then dropped from the address
    "if (!window.scisegOpenAsked) { window.scisegOpenAsked = true;"
    " const address = new URL(window.location.href); const wanted = address.searchParams.get('case');"
    " if (wanted) { address.searchParams.delete('case'); window.history.replaceState(null, '', address.toString());"
    " window.trame.trigger('open_case', [wanted]); } }"
)

class ReviewPage:
    """The page of :class:`~.app.ReviewApp` (``self.server``, ``self.views`` and the app's actions)."""

    def _build_ui(self) -> None:
        with SinglePageWithDrawerLayout(self.server, full_height=True, theme=("dark ? 'dark' : 'light'",)) as layout:
            layout.title.set_text("SCIseg review")
            label_element(layout.icon, "Show or hide the case list")
            client.Script(KEYBOARD_JS)
            client.Script(LEAVE_JS)
            client.Script(OPEN_JS)  # open_case validates the id, as for any string a browser sends
            client.ClientStateChange(value="case_id", change=f"case_id && window.localStorage.setItem('{CASE_STORAGE}', case_id)")
            with layout.toolbar:
                v3.VSpacer()
                html.Span("{{ case_id }}", id="case-title", classes="mx-2 text-subtitle-2")
                html.Span("unsaved strokes (kept as a draft)", v_if=("unsaved",), id="unsaved", classes="mx-2 text-caption text-warning")
                html.Span(
                    "cord only {{ counts.cord_only }} · lesion {{ counts.lesion }} voxels",
                    id="voxel-counts", classes="mx-2 text-caption",
                )
                html.Span("{{ pointer_text }}", id="pointer-value", classes="mx-2 text-caption")
                self.views.crosshair_toggle_ui()
                theme_toggle_ui()
                html.Span("{{ lesion_totals }}", id="lesion-totals", classes="mx-2 text-caption")
                v3.VBtn("?", click="shortcuts = !shortcuts", size="small", variant="text", id="show-shortcuts",
                        title="Keyboard shortcuts (?)", aria_label="Keyboard shortcuts")
            with layout.drawer as drawer:
                drawer.width = 330
                self._case_list_ui()
            with layout.content:
                with html.Div(classes="d-flex", style="height: calc(100vh - 88px); overflow: hidden;"):
                    with html.Div(style="flex: 1; position: relative; height: 100%;", id="views"):
                        self.views.layout_manager.initialize_layout_grid(layout)
                    with html.Div(style="width: 300px; height: 100%; display: flex; flex-direction: column;", id="tools"):
                        with html.Div(style="flex: 1; overflow-y: auto; min-height: 0;", classes="pa-2", id="tools-scroll"):
                            self._tools_ui()
                        with html.Div(classes="pa-2", id="tools-footer", style="border-top: 1px solid rgba(128,128,128,.3)"):
                            self._export_ui()  # never pushed below the fold by a long lesion table
            self._shortcuts_ui()

    def _case_list_ui(self) -> None:
        v3.VSelect(v_model=("status_filter",), items=(["all", "not predicted", "predicted", "corrected"],),
                   label="Show", density="compact", hide_details=True, classes="ma-2", id="status-filter")
        v3.VBtn("Next uncorrected (n)", click=self.next_case, block=True, id="next-case", classes="mb-1")
        v3.VBtn("Refresh list", click=self.refresh_cases, block=True, variant="text", size="small", id="refresh-cases")
        with v3.VList(density="compact", id="case-list"):
            with v3.VListItem(
                v_for="item in cases", key="item.case_id", click="trigger('open_case', [item.case_id])",
                active=("item.case_id === case_id",), classes="case-item",
                __properties=[("data_case", "data-case")], data_case=("item.case_id",),
            ):
                v3.VListItemTitle("{{ item.case_id }}")
                v3.VListItemSubtitle(
                    "{{ item.status }}{{ item.versions ? ' · ' + item.versions + ' version(s), last by ' + item.rater + ' ' + item.date : '' }}"
                    "{{ item.score !== null ? ' · score ' + item.score.toFixed(3) : '' }}"
                    "{{ item.drafts.length ? ' · draft by ' + item.drafts.map((r) => r || 'unnamed').join(', ') : '' }}"
                )
                html.Div("{{ item.reason }}", v_if=("item.reason",), classes="text-caption text-error case-reason")
                case_list_item_ui()

    def _tools_ui(self) -> None:
        v3.VAlert(
            v_if=("tabs > 1",), type="warning", density="compact", id="tabs-warning", classes="mb-2 text-caption",
            text=("`${tabs} browser tabs show this session: they edit the same case. "
                  "For a session of your own, open the review address itself (without /s/...) in a new tab.`",),
        )
        with v3.VAlert(v_if=("pending",), type="warning", density="compact", id="pending", classes="mb-2 text-caption"):
            html.Div("{{ pending.text }}")
            v3.VBtn("Keep draft, open", click=(self.resolve_pending, "['keep']"), size="small", classes="ma-1", id="pending-keep")
            v3.VBtn("Discard strokes", click=(self.resolve_pending, "['discard']"), size="small", classes="ma-1", id="pending-discard")
            v3.VBtn("Stay", click=(self.resolve_pending, "['stay']"), size="small", classes="ma-1", id="pending-stay")
        with v3.VAlert(v_if=("!case_id && resume.length",), type="info", density="compact", id="resume", classes="mb-2 text-caption"):
            html.Div("Continue where you left off (cases with your draft first):")
            v3.VBtn("{{ id }}", v_for="id in resume", key="id", click="trigger('open_case', [id])", size="small",
                    classes="ma-1 resume-case", variant="text", style="text-transform: none")
        html.Div("{{ opened_text }}", id="opened", classes="text-caption mb-1")
        case_notes_ui()
        v3.VSelect(items=("bases",), model_value=("base_choice",), update_modelValue=(self.choose_base, "[$event]"),
                   label="Open from", density="compact", hide_details=True, classes="mb-1", id="base-choice",
                   v_if=("case_id",))
        v3.VBtn("Discard draft", v_if=("base_choice === 'draft'",), click=self.discard_draft, size="small", classes="mb-2",
                id="discard-draft")
        with html.Div(v_if=("running",), id="progress"):
            v3.VProgressLinear(model_value=("progress",), height=8, color="primary")
            html.Div("{{ progress_text }} {{ progress }}%", classes="text-caption")
            v3.VBtn("Cancel", click=self.cancel_segmentation, size="small", id="cancel-segmentation")
        with v3.VBtnToggle(v_model=("segment",), mandatory=True, density="compact", classes="mb-2"):
            v3.VBtn("Cord (1)", value="spinal_cord", id="segment-cord")
            v3.VBtn("Lesion (2)", value="lesion", id="segment-lesion")
            v3.VBtn("Grey matter", value="grey_matter", id="segment-gm", v_if=("gm_available",))
        with html.Div(classes="d-flex flex-wrap"):
            for name, label in (("paint", "Paint (p)"), ("erase", "Erase (e)"), ("scissors", "Scissors (c)"),
                                ("draw", "Draw (d)"), ("smoothing", "Smooth"), ("none", "No tool (Esc)")):
                v3.VBtn(label, click=f"effect = '{name}'", size="small", classes="ma-1", id=f"effect-{name}",
                        color=(f"effect === '{name}' ? 'primary' : undefined",))
        html.Div("Active tool: {{ active_effect }}", id="active-effect", classes="text-caption")
        v3.VSlider(v_model=("brush_mm",), min=keys.BRUSH_MIN_MM, max=keys.BRUSH_MAX_MM, step=0.1, label="Brush mm",
                   hide_details=True, thumb_label=True, density="compact", id="brush-size")
        v3.VCheckbox(v_model=("sphere",), label="Sphere brush", hide_details=True, density="compact")
        with html.Div(classes="d-flex flex-wrap"):
            v3.VBtn("Undo (z)", click=self.undo, size="small", classes="ma-1", id="undo")
            v3.VBtn("Redo (y)", click=self.redo, size="small", classes="ma-1", id="redo")
            v3.VBtn("Keep largest island", click=self.keep_largest_island, size="small", classes="ma-1")
            v3.VBtn("Remove small islands", click=self.remove_small_islands, size="small", classes="ma-1")
            v3.VBtn("Smooth segment", click=self.apply_smoothing, size="small", classes="ma-1")
        v3.VCheckbox(v_model=("lesion_in_cord",), label="Lesion only inside the cord", hide_details=True, density="compact",
                     id="lesion-in-cord")
        v3.VRangeSlider(v_model=("threshold",), min=("level_min",), max=("level_max",), label="Intensity",
                        hide_details=True, density="compact", thumb_label=True, id="threshold-range")
        v3.VCheckbox(v_model=("intensity_mask",), label="Paint only within this range (i)", hide_details=True,
                     density="compact", id="intensity-mask")
        v3.VSelect(v_model=("threshold_region",), items=([{"value": k, "title": v} for k, v in REGIONS.items()],),
                   label="Threshold adds lesion", density="compact", hide_details=True, classes="mb-1", id="threshold-region")
        v3.VBtn("Apply threshold", click=(self.apply_threshold, "[false, threshold]"), size="small", classes="ma-1", id="apply-threshold")
        with v3.VAlert(v_if=("threshold_pending",), type="warning", density="compact", id="threshold-pending",
                       classes="mb-2 text-caption"):
            html.Div("{{ threshold_pending.text }}")
            v3.VBtn("Apply anyway", click=(self.apply_threshold, "[true, threshold]"), size="small", classes="ma-1", id="threshold-confirm")
            v3.VBtn("Cancel", click="threshold_pending = null", size="small", classes="ma-1", id="threshold-cancel")
        overlay_controls_ui()  # eye (l for the lesion), fill opacity, outline per segment
        v3.VSlider(v_model=("wl_window",), min=1, max=("window_max",), label="Window", hide_details=True, density="compact", id="window")
        v3.VSlider(v_model=("wl_level",), min=("level_min",), max=("level_max",), label="Level", hide_details=True, density="compact", id="level")
        v3.VBtn("Update measures", click=self.update_measures, size="small", classes="ma-1", id="update-measures")
        with v3.VTable(density="compact", id="lesion-table"):
            with html.Thead(), html.Tr():
                for title in ("#", "mm3", "length", "width"):
                    html.Th(title)
            with html.Tbody():
                with html.Tr(v_for="row in lesions", key="row.label", click=(self.centre_on_lesion, "[row.label]"),
                             style=("row.label === current_lesion ? 'cursor: pointer; background: rgba(255, 200, 0, .35)'"
                                    " : 'cursor: pointer'",),
                             classes=("row.label === current_lesion ? 'lesion-row current-lesion' : 'lesion-row'",)):
                    html.Td("{{ row.label }}")
                    html.Td("{{ row.volume_mm3 }}")
                    html.Td("{{ row.length_mm }}")
                    html.Td("{{ row.width_mm }}")

    def _export_ui(self) -> None:
        v3.VTextField(v_model=("rater",), label="Rater", density="compact", hide_details=True, classes="mt-2", id="rater",
                      update_modelValue=f"window.localStorage.setItem('{RATER_STORAGE}', $event)")
        v3.VBtn("Export and next", click=self._export_and_next, color="primary", block=True, classes="mt-2", id="export-next")
        v3.VBtn("Export", click=self.export, block=True, classes="mt-1", id="export")
        html.Div("{{ message }}", id="message", classes="text-caption mt-2")
        html.Div("{{ error }}", id="error", classes="text-caption text-error")

    def _shortcuts_ui(self) -> None:
        """The shortcut card ("?"): :data:`keys.SHORTCUTS`."""
        with v3.VDialog(v_model=("shortcuts",), max_width=560), v3.VCard(id="shortcuts-card"):
            v3.VCardTitle("Keyboard and mouse (as in 3D Slicer)")
            with v3.VCardText(), v3.VTable(density="compact"), html.Tbody():
                for shortcut in keys.SHORTCUTS:
                    with html.Tr():
                        html.Td(shortcut.keys, style="white-space: nowrap")
                        html.Td(shortcut.action)
            with v3.VCardActions():
                v3.VBtn("Close", click="shortcuts = false", id="close-shortcuts")
