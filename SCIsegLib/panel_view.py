"""What the SCIseg panel's controller needs from its widgets (:class:`PanelView`), and the panel's sentences.

``SCIseg/SCIseg.py`` implements :class:`PanelView` with Qt and Slicer calls (status label, log box, dialogs,
layout); tests implement it with a recording object. The controller (:mod:`SCIsegLib.panel_controller`) and the
case session (:mod:`SCIsegLib.panel_session`) decide; the view only shows and asks. No qt, ctk or slicer here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from .panel import PanelInputs


class PanelView(Protocol):
    """The widgets, as the controller sees them."""

    def inputs(self) -> PanelInputs:
        """What the widgets show now (node ids, rater, export folder, queue)."""

    def say(self, text: str) -> None:
        """The status line."""

    def log(self, lines: Iterable[str]) -> None:
        """Append lines to the log box."""

    def clear_log(self) -> None: ...

    def show_log(self) -> None:
        """Unfold the log box (after a failure)."""

    def progress(self, per_mille: int) -> None:
        """The progress bar, 0-1000."""

    def error(self, message: str, detail: str = "") -> None:
        """A modal error dialog."""

    def ask(self, question: str) -> bool:
        """A Yes/No question; True for Yes."""

    def choose(self, question: str, labels: list[str]) -> int | None:
        """A modal choice; the chosen index, None when cancelled."""

    def trying(self, failure: str) -> AbstractContextManager[Any]:
        """A block whose exception is shown as ``failure`` with its details, then raised again."""

    def later(self, slot: Callable[[], None]) -> None:
        """Call ``slot`` once the current slot returned (a queued event)."""

    def refresh(self) -> None:
        """Enable the widgets again from the state (``PanelState.enabled``)."""

    def remember(self, key: str, value: str) -> None:
        """Keep a setting for the next Slicer session."""

    def models_changed(self, select: str | None) -> None:
        """Fill the model combo box again, selecting ``select`` when given."""

    def devices_changed(self) -> None:
        """Fill the device combo box again from ``PanelState.devices``."""

    def show_table(self, table: Any, chart: Any = None) -> None:
        """Show a lesion table in a layout with a table view; with ``chart``, the four-up plot and table layout."""

    def jump_to(self, ras_mm: tuple[float, float, float]) -> None:
        """Centre the slice views on a point (RAS, mm)."""

    def load_volume(self, path: str) -> Any:
        """Load a scan into the scene and show it (raises when it cannot be read)."""

    def open_editor(self, segmentation: Any, volume: Any, segment_id: str | None) -> None:
        """Segment Editor on this segmentation and volume, ``segment_id`` selected when given."""


# Sentences

DEMO_WARNING = "sciseg-demo is a small demonstration model: install SCIseg v2 for real scans."
SEGMENT_TIP = "Segment the spinal cord and the lesion (runs in the background)."
SEGMENT_TIP_DISABLED = "Select a T2w volume and a model first (one segmentation at a time)."


def segment_tooltip(enabled: bool) -> str:
    """The Segment button's tooltip: what it does, or what it waits for."""
    return SEGMENT_TIP if enabled else SEGMENT_TIP_DISABLED


def model_warning(name: str, demo_name: str) -> str | None:
    """The status line when the model combo shows ``name``: a warning for the bundled demonstration model."""
    return DEMO_WARNING if name == demo_name else None


def download_question(name: str) -> str:
    return f"Download {name} (about 250 MB) from GitHub and install it? It runs in the background; Cancel stops it."


def draft_question(scan: str, draft: str) -> str:
    """Asked when a case opens with a draft that was never exported."""
    return (f"{scan} has a {draft} that was never exported (Slicer was closed or stopped). Restore it? "
            "(If not, it stays until your next edits of this case replace it.)")


def segment_again_question(scan: str, segmentation: str) -> str:
    """Asked before Segment makes a new segmentation of a case whose segmentation has edits in no version."""
    return (f"Your corrections of {scan} in '{segmentation}' are not exported. Segment again anyway? The new "
            f"segmentation becomes the case's and your draft follows it; '{segmentation}' is then superseded: these "
            f"corrections are kept in a file of their own (not a version), its further edits are not drafted and Export "
            f"refuses it until you make it the case's again. (No: export them first.)")


def exported_sentence(summary: str, kept: str | None) -> str:
    """The status line after an export; ``kept``: the draft of strokes made while it ran (not in the version)."""
    return summary if kept is None else f"{summary} Your edits made while it ran are not in it: they are kept as a {kept}."


def not_ready_sentence(missing: list[str]) -> str:
    """The status line when an action did not start because modules are missing."""
    return f"Not started: {', '.join(missing) or 'a dependency'} must be installed first."


def measurement_sentence(lesion_count: int, nli_slice: int) -> str:
    """The status line after Measure: how many lesions, or what was measured without one."""
    if lesion_count == 0:
        return f"No lesion: the tissue bridges are the cord A-P diameter at the NLI slice {nli_slice}."
    return f"{lesion_count} lesion(s) measured: click a row to jump to the lesion."


def segment_subject(is_lesion: bool) -> str:
    """What a segment question asks for."""
    return "lesion" if is_lesion else "spinal cord"


def not_drafted_sentence(segmentation: str, scan: str) -> str:
    """Said when the selected segmentation was not made for the open case (made in Segment Editor, or imported)."""
    return (f"'{segmentation}' was not made for the case {scan}: its edits are not drafted (Export still checks and "
            "writes it). Select the case's own segmentation to have them drafted.")


def reclaim_question(scan: str, segmentation: str, current: str | None) -> str:
    """Asked when the rater selects a superseded segmentation of the open case (``current``: the case's one now)."""
    other = (f" '{current}' is then superseded the same way: its edits no version has are kept in a file of their own."
             if current else "")
    return (f"'{segmentation}' is a superseded segmentation of {scan}: its edits are not drafted and Export refuses it. "
            f"Make it the case's segmentation again (drafted from now on, exported from its own base)?{other}")


def superseded_now_sentence(name: str, renamed: str, kept: list[str]) -> str:
    """Said when another segmentation became the case's: where this one's unexported edits are kept."""
    where = f"its edits no version has are kept in {' and '.join(kept)}" if kept else "it had no edits a version lacks"
    return (f"'{name}' is no longer the case's segmentation: another one is, and your draft follows that one. It is now "
            f"'{renamed}' ({where}); its further edits are not drafted. Select it to make it the case's again.")


def superseded_sentence(segmentation: str, scan: str) -> str:
    """Said when the rater keeps a superseded segmentation selected without making it the case's."""
    return (f"'{segmentation}' stays superseded: its edits are not drafted and Export refuses it (Compare and Measure "
            f"take it). Select it again to make it the case's segmentation of {scan}.")


def superseded_export_sentence(segmentation: str) -> str:
    return (f"'{segmentation}' was superseded by a newer segmentation of its case, so it is not exported: select it "
            "and answer Yes to make it the case's again, then export.")


def reclaimed_sentence(segmentation: str, base: str, kept: str | None) -> str:
    drafted = f" Its unsaved edits are kept as a {kept}." if kept else ""
    return f"'{segmentation}' is the case's segmentation again (started from {base}).{drafted}"


def draft_kept_sentence(draft: str) -> str:
    return f"Unsaved edits kept as a {draft}."


def still_next_sentence(name: str) -> str:
    """Next case found the open scan again: the queue's next case is the first one without an exported version."""
    return f"{name} is still the queue's next case (no version of it is exported yet): export your corrections first."


def segmented_sentence(name: str) -> str:
    return f"Done: '{name}'. Correct it with Edit."
