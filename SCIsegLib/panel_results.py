"""What the SCIseg panel reads from its finished children, without Qt: the next scan of the queue, the version an
export wrote, the comparison's numbers and sentence, the lesion a clicked table row is, the items of a segment question."""

from __future__ import annotations

import json



def next_case_path(returncode: int | None, stdout: str, is_file) -> str | None:
    """The scan printed by ``sciseg queue next`` ("<score>  <path>"); None when the queue is done or it failed."""
    if returncode != 0:
        return None
    for line in stdout.splitlines():
        _score, _separator, path = line.strip().partition("  ")
        if path and is_file(path):
            return path
    return None


def export_result(stdout: str) -> dict | None:
    """The JSON line ``python -m SCIsegLib.panel_export`` printed (version, folder, parent, warning); None without."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def export_summary(stdout: str) -> str:
    """The sentence for a finished export."""
    result = export_result(stdout)
    if result is None:
        return stdout.strip().splitlines()[0] if stdout.strip() else "Exported."
    text = f"Exported version v{result['version']:03d} (from {result['parent']}) to {result['folder']}."
    return f"{text} {result['warning'][0].upper()}{result['warning'][1:]}" if result.get("warning") else text


def comparison_sentence(other: str, result: dict[str, float]) -> str:
    """The status line after Compare: what changed from segmentation ``other`` to the selected one."""
    return (f"Versus '{other}': cord Dice {result['cord_dice']:.3f} (+{result['cord_voxels_added']} / "
            f"-{result['cord_voxels_removed']} voxels), lesion Dice {result['lesion_dice']:.3f}, lesion-wise F1 "
            f"{result['lesion_f1']:.2f} ({result['lesions_a']} -> {result['lesions_b']} lesions).")


def next_case_arguments(queue_path: str, bids_root: str) -> list[str]:
    """``sciseg queue next`` for the panel's queue; with an export folder, scans exported there count as done."""
    return ["queue", "next", "--queue", queue_path] + (["--bids", bids_root] if bids_root else [])


def compare_result(stdout: str) -> dict[str, float]:
    """The JSON line ``sciseg compare`` printed (cord/lesion Dice, voxels added/removed, lesion-wise F1)."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise ValueError("sciseg compare printed no result")
    return json.loads(lines[-1])


def table_row(table_node, view_row: int) -> int:
    """The table node's row shown on row ``view_row`` of Slicer's table view (-1: the column-title row).

    Slicer's ``qMRMLTableModel::mrmlTableRowIndex``: without ``UseColumnTitleAsColumnHeader`` the view's first
    row holds the column titles and table row k is view row k + 1.
    """
    return view_row if table_node.GetUseColumnTitleAsColumnHeader() else view_row - 1


def lesion_centre_for_row(table_node, lesion_table_id: str | None, view_row: int, centres: dict[int, tuple[float, float, float]]):
    """The RAS centre (mm) of the lesion on a clicked row of the lesion table view; None for any other table or row.

    Only the lesion table SCIseg made (``lesion_table_id``) counts, and the lesion label is read from its
    ``label`` column by name (never column 0 of whatever table the view shows).
    """
    if table_node is None or lesion_table_id is None or table_node.GetID() != lesion_table_id:
        return None
    row = table_row(table_node, view_row)
    column = table_node.GetColumnIndex("label")
    if column < 0 or row < 0 or row >= table_node.GetNumberOfRows():
        return None
    try:
        label = int(float(table_node.GetCellText(row, column)))
    except ValueError:
        return None
    return centres.get(label)


def segment_choice_items(choices: list[str], segments: list[tuple[str, str]], what: str) -> list[tuple[str, str | None]]:
    """(label, segment id or None) items to ask which segment is the cord/lesion (``what``).

    The matching candidates first (all segments when none matched), then "none" (an explicit, empty choice).
    """
    names = dict(segments)
    candidates = choices or [segment_id for segment_id, _name in segments]
    return [(f"{names.get(sid, sid)} ({sid})", sid) for sid in candidates] + [(f"None: no {what} in this segmentation", None)]
