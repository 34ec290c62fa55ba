"""Writing the QC report: ``qc/index.html`` (static, written once per run) and ``qc/entries.js`` (rewritten
atomically after every scan, so the report grows as the run goes). Entries hold paths relative to ``qc/``."""

from __future__ import annotations

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


def qc_entry(row: dict, site: str = "") -> dict:
    """One scan's entry from its run-summary row (with its marker when it was done or skipped)."""
    marker = row.get("marker") or {}
    measures = marker.get("Measures", {})
    return {
        "file": row["file"],
        "subject": row["subject"],
        "session": row["session"],
        "scan": row["scan"],
        "site": site,
        "status": row["status"],
        "reason": row.get("reason", "") if row["status"] == "failed" else "",
        "images": marker.get("QC", {}),
        "lesion_count": measures.get("lesion_count"),
        "volume_mm3": _number(measures.get("volume [mm3]")),
        "length_mm": _number(measures.get("length [mm]")),
        "damage_ratio": _number(measures.get("max_axial_damage_ratio []")),
        "csa_above_mm2": _number(measures.get("csa_above_lesion [mm2]")),
    }


def write_report(deriv: Path, entries: list[dict]) -> Path:
    """Write ``DERIV/qc/entries.js`` and (when missing or outdated) ``DERIV/qc/index.html``; return index.html."""
    folder = Path(deriv) / "qc"
    payload = {"report": str(Path(deriv).resolve()), "entries": entries}
    _write_text(folder / "entries.js", "window.SCISEG_QC = " + json.dumps(payload, indent=1) + ";\n")
    index = folder / "index.html"
    if not index.is_file() or index.read_text() != INDEX_HTML:
        _write_text(index, INDEX_HTML)
    return index
