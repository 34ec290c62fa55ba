"""The run's tables: ``run_summary.csv`` (one row per scan: status, reason, seconds per stage) and the cohort
tables ``cohort_subjects.csv`` (one row per scan: lesion burden, bridges, CSA) and ``cohort_lesions.csv`` (one row
per lesion, SCT's columns), both joined with the ``participants.tsv`` columns and ready for ``sciseg stats``
(their ``subject`` column is the BIDS participant id).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..analysis_files import write_table
from ..lesions import BASE_COLUMNS, MIDSAGITTAL_COLUMNS
from .corrections import MODEL_LABELS, describe_labels
from .plausibility import blank_flagged, flag_text

STAGES = ("hash", "labels", "load", "model", "segment", "write", "analyze", "cord", "qc", "publish", "total")
SUMMARY_COLUMNS = ["file", "subject", "session", "scan", "status", "reason", "measured_on",
                   *[f"seconds_{s}" for s in STAGES], "worker"]
IDENTITY = ["subject", "session", "scan", "file", "measured_on", "flags"]


def write_run_summary(rows: list[dict], deriv: Path) -> Path:
    """``DERIV/run_summary.csv``: every scan of the run, in input order."""
    table = pd.DataFrame([{column: row.get(column, "") for column in SUMMARY_COLUMNS} for row in rows], columns=SUMMARY_COLUMNS)
    return write_table(table, Path(deriv) / "run_summary.csv", sheet="run")[0]


def _with_participants(table: pd.DataFrame, participants: list[dict[str, str]]) -> pd.DataFrame:
    if not participants or table.empty:
        return table
    extra = pd.DataFrame(participants).rename(columns={"participant_id": "subject"}).drop_duplicates("subject")
    return table.merge(extra, on="subject", how="left", suffixes=("", "_participants"))


def cohort_tables(rows: list[dict], deriv: Path, participants: list[dict[str, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(subjects, lesions) tables from the markers of the scans done or skipped as complete.

    A scan's implausible values (:mod:`SCIsegLib.cohort.plausibility`) are left empty and its ``flags`` cell says why,
    so no average over the table takes them in."""
    subjects, lesions = [], []
    for row in rows:
        marker = row.get("marker")
        if row.get("status") not in ("done", "skipped") or not marker:
            continue
        flags = marker.get("Flags", [])
        identity = {"subject": row["subject"], "session": row["session"], "scan": row["scan"], "file": row["file"],
                    "measured_on": describe_labels(marker.get("Labels", MODEL_LABELS)), "flags": flag_text(flags)}
        subjects.append(blank_flagged({**identity, **marker.get("Measures", {})}, flags))
        lesion_table = Path(deriv) / marker["LesionTable"]
        if lesion_table.is_file():
            table = pd.read_csv(lesion_table)
            keep = [c for c in (*BASE_COLUMNS, *MIDSAGITTAL_COLUMNS) if c in table.columns]
            for record in table[keep].to_dict("records"):
                label = int(record.get("label", 0))
                own = [f for f in flags if f.get("label") in (None, label)]
                lesions.append(blank_flagged({**identity, "flags": flag_text(own), **record}, own, label))
    subject_table = pd.DataFrame(subjects)
    lesion_table = pd.DataFrame(lesions, columns=IDENTITY + list(BASE_COLUMNS) + list(MIDSAGITTAL_COLUMNS)) if not lesions \
        else pd.DataFrame(lesions)
    return _with_participants(subject_table, participants), _with_participants(lesion_table, participants)


def write_cohort_tables(rows: list[dict], deriv: Path, participants: list[dict[str, str]]) -> list[Path]:
    """Write ``cohort_subjects.csv`` and ``cohort_lesions.csv`` (+ .xlsx when openpyxl is present)."""
    subjects, lesions = cohort_tables(rows, deriv, participants)
    return [
        write_table(subjects, Path(deriv) / "cohort_subjects.csv", sheet="subjects")[0],
        write_table(lesions, Path(deriv) / "cohort_lesions.csv", sheet="lesions")[0],
    ]
