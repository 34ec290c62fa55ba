"""Writing the QC report: ``qc/index.html`` (static, written once per run) and ``qc/entries.js`` (rewritten
atomically after every scan, so the report grows as the run goes). Entries hold paths relative to ``qc/``."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

from ..volume import publish_file
from .page import INDEX_HTML


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    publish_file(temporary, path)


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


#: Why a number of the report is n/a, by measure, when the scan has lesions and no flag explains it.
NOT_AVAILABLE = {
    "length [mm]": "length n/a: the lesion's S-I length needs the cord's centerline at its slices",
    "max_axial_damage_ratio []": "damage ratio n/a: no axial slice of the lesion holds cord to divide by",
    "csa_above_lesion [mm2]": "CSA above n/a: no slice within 10 mm above the lesion has a measured cord CSA "
                              "(the lesion reaches the top of the cord or of the image)",
}


def not_available_notes(measures: dict, flags: list[dict]) -> list[str]:
    """One sentence per number the report shows as n/a, saying why (``measures`` as measured, before flags)."""
    if measures and (_number(measures.get("lesion_count")) or 0) == 0:
        return ["no lesion: volume, length, damage ratio and CSA at or above the lesion do not apply (n/a)"]
    notes = [f"n/a because {flag['reason']}" for flag in flags
             if any(column in NOT_AVAILABLE or column == "volume [mm3]" for column in flag.get("columns", []))]
    for column, why in NOT_AVAILABLE.items():
        blanked = any(column in flag.get("columns", []) for flag in flags)
        if measures and not blanked and _number(measures.get(column)) is None:
            notes.append(why)
    return notes


def review_case_id(scan_file: str | Path) -> str:
    """The ``sciseg review`` case id of a scan (its path relative to its BIDS root, without ``.nii.gz``), or "" when
    the scan does not lie in a BIDS dataset (``<root>/sub-X/[ses-Y/]anat/<name>.nii.gz``, the id's pattern checked).

    The root is the folder holding the scan's ``sub-X`` folder; ``sciseg review --bids ROOT`` lists the scan under the
    same id. Never built from page text: the QC page only puts this string into the review address.
    """
    from ..review.paths import PathRefused, case_id_of

    path = Path(scan_file)
    if path.parent.name != "anat":
        return ""
    subject = path.parent.parent
    if subject.name.startswith("ses-"):
        subject = subject.parent
    if not subject.name.startswith("sub-"):
        return ""
    try:
        return case_id_of(subject.parent, path)
    except PathRefused:
        return ""


def qc_entry(row: dict, site: str = "") -> dict:
    """One scan's entry from its run-summary row (with its marker when it was done or skipped): the numbers of the
    cohort table (flagged values left out, as there), when and how it was made, and why any number is n/a."""
    from ..cohort.plausibility import blank_flagged

    marker = row.get("marker") or {}
    flags = marker.get("Flags", [])
    measured = marker.get("Measures", {})
    measures = blank_flagged(measured, flags)
    return {
        "file": row["file"],
        "subject": row["subject"],
        "session": row["session"],
        "scan": row["scan"],
        "site": site,
        "status": row["status"],
        "reason": row.get("reason", "") if row["status"] == "failed" else "",
        "images": marker.get("QC", {}),
        "lesion_count": _number(measures.get("lesion_count")),
        "volume_mm3": _number(measures.get("volume [mm3]")),
        "length_mm": _number(measures.get("length [mm]")),
        "damage_ratio": _number(measures.get("max_axial_damage_ratio []")),
        "csa_above_mm2": _number(measures.get("csa_above_lesion [mm2]")),
        "measured_on": marker.get("MeasuredOn", "model" if marker else ""),
        "flags": [flag["reason"] for flag in flags],
        "notes": not_available_notes(measured, flags) if marker else [],
        "date": marker.get("Date", ""),
        "command": marker.get("Command", ""),
        "version": f"SCIseg {marker['SCIsegVersion']}, model {marker.get('Model', '')}" if marker.get("SCIsegVersion") else "",
        "slices": marker.get("QCSlices", []),
        "case_id": review_case_id(row["file"]),
    }


def report_key(deriv: Path) -> str:
    """The report's identity in the browser (its decisions' store) and in the decisions it saves: the folder's name and
    12 hex of its resolved path's sha256 (``cohort-3f0a91c2d4e5``): two reports stay apart, no absolute path is written."""
    resolved = Path(deriv).resolve()
    return f"{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:12]}"


def write_report(deriv: Path, entries: list[dict]) -> Path:
    """Write ``DERIV/qc/entries.js`` and (when missing or outdated) ``DERIV/qc/index.html``; return index.html."""
    folder = Path(deriv) / "qc"
    payload = {"report": report_key(deriv), "entries": entries}
    _write_text(folder / "entries.js", "window.SCISEG_QC = " + json.dumps(payload, indent=1) + ";\n")
    index = folder / "index.html"
    if not index.is_file() or index.read_text() != INDEX_HTML:
        _write_text(index, INDEX_HTML)
    return index
