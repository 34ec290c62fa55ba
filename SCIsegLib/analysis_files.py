"""Writing the morphometrics tables: CSV (always), Excel (when openpyxl is installed), label map, JSON summary."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from .lesions import LesionAnalysis
from .provenance import command_path, describe_derivative, source_path
from .table_cells import escape_formulas
from .volume import image_stem, publish_file, write_image_atomic, write_text_atomic  # noqa: F401 - write_text_atomic re-exported


def write_table(table: pd.DataFrame, path: Path, sheet: str = "measures") -> list[Path]:
    """``path`` as CSV, and the same sheet as ``.xlsx`` beside it when openpyxl is available.

    Text cells that a spreadsheet would run as a formula are escaped (:mod:`SCIsegLib.table_cells`)."""
    table = escape_formulas(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = [write_text_atomic(table.to_csv(index=False), path)]
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        return written
    excel = path.with_suffix(".xlsx")
    handle, temporary = tempfile.mkstemp(prefix=f".{excel.name}.", suffix=".xlsx", dir=excel.parent)
    os.close(handle)
    table.to_excel(temporary, sheet_name=sheet, index=False)
    publish_file(temporary, excel)
    return written + [excel]


def write_cord_table(table: pd.DataFrame, path: Path, cord_path: Path | str, angle_correction: bool = True,
                     smooth: float | None = None) -> list[Path]:
    """The per-slice cord table (:func:`SCIsegLib.cord.cord_morphometry`) as ``path`` (+ ``.xlsx``) and a JSON
    sidecar beside it naming the SCT release and the ``sct_process_segmentation`` call the numbers follow."""
    from .cord import SCT_VERSION, sct_equivalent_command
    from .centerline import SCT_CLI_SMOOTHING

    smooth = SCT_CLI_SMOOTHING if smooth is None else smooth
    written = write_table(table, path, sheet="csa")
    describe_derivative(path.parent, "spinal cord morphometrics (SCT-compatible)")
    sidecar = {
        "Description": "spinal cord shape per axial slice (RPI z, I->S); mm2, mm, degrees",
        "FollowsSCTVersion": SCT_VERSION,
        "EquivalentCommand": sct_equivalent_command(command_path(cord_path, path.parent), angle_correction, smooth),
        "AngleCorrection": angle_correction,
        "CenterlineSmooth": smooth,
        "Source": source_path(cord_path),
        "EmptyCells": "a slice without cord has no value in any column, as in SCT's CSV",
    }
    written.append(write_text_atomic(json.dumps(sidecar, indent=2), path.with_suffix(".json")))
    return written


def write_lesion_analysis(
    result: LesionAnalysis, lesion_path: Path, output_dir: Path, profile: pd.DataFrame | None = None
) -> list[Path]:
    """SCT's outputs: ``<stem>_analysis.csv`` (+ ``.xlsx``), ``<stem>_label.nii.gz``, ``<stem>_analysis.json``,
    and the per-slice profile ``<stem>_perslice.csv`` when given."""
    stem = image_stem(lesion_path)
    written = write_table(result.table, output_dir / f"{stem}_analysis.csv")
    describe_derivative(output_dir, "lesion morphometrics (SCT-compatible)")
    if profile is not None:
        written.append(write_text_atomic(escape_formulas(profile).to_csv(index=False), output_dir / f"{stem}_perslice.csv"))
    written.append(write_image_atomic(result.labels, output_dir / f"{stem}_label.nii.gz"))
    summary = {**result.summary, "warnings": result.warnings, "lesion_mask": source_path(lesion_path)}
    written.append(write_text_atomic(json.dumps(summary, indent=2), output_dir / f"{stem}_analysis.json"))
    return written
