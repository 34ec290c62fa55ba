"""The review queue: rank unlabelled scans by model uncertainty so raters correct the most informative first.

Score of a scan (higher = review sooner), from the model's sigmoid outputs p (one per region):

* ``lesion_entropy``: mean binary entropy H(p) = -p ln p - (1-p) ln(1-p) (nats, 0 to ln 2) of the lesion
  output over its candidate voxels (p > 0.05); 0 when the model sees no lesion candidate at all;
* ``cord_entropy``: the same for the cord output over its candidate voxels;
* ``uncertain_lesion_mm3``: volume of voxels where the lesion output is between 0.2 and 0.8;
* ``score`` = lesion_entropy + 0.5 * cord_entropy.

Scores are stored in a JSON file (one record per scan) so a queue survives sessions; ``next`` returns
the best-scored scan that has no exported correction yet. Scans a rater marked Fail in the QC report of
``sciseg run`` (its "Save fails" YAML or "Save all" JSON, read by :func:`add_qc_failures`) come before all others.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..volume import load_image, publish_file
from .export import latest_version

CANDIDATE = 0.05


def binary_entropy(probability: np.ndarray) -> np.ndarray:
    """H(p) in nats, 0 at p = 0 or 1, ln 2 at p = 0.5."""
    p = np.clip(probability.astype(np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def uncertainty(probabilities: dict[str, np.ndarray], voxel_mm3: float) -> dict[str, float]:
    """The components and the score of one scan from its per-structure probability arrays."""

    def mean_candidate_entropy(p: np.ndarray) -> float:
        candidates = p > CANDIDATE
        return float(binary_entropy(p[candidates]).mean()) if candidates.any() else 0.0

    lesion = probabilities.get("lesion", np.zeros(1))
    cord = probabilities.get("sc", np.zeros(1))
    components = {
        "lesion_entropy": mean_candidate_entropy(lesion),
        "cord_entropy": mean_candidate_entropy(cord),
        "uncertain_lesion_mm3": float(np.count_nonzero((lesion > 0.2) & (lesion < 0.8)) * voxel_mm3),
    }
    components["score"] = components["lesion_entropy"] + 0.5 * components["cord_entropy"]
    return components


def load_queue(path: Path) -> dict:
    """The queue file's content (an empty queue when the file does not exist yet)."""
    if not Path(path).is_file():
        return {"scans": {}}
    try:
        queue = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        queue = None
    if not isinstance(queue, dict) or not isinstance(queue.get("scans"), dict):
        raise InputError(f"{path} is not a SCIseg queue file (JSON with 'scans'); give the file `sciseg queue score` wrote.")
    return queue


def save_queue(queue: dict, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        json.dump(queue, stream, indent=2)
    publish_file(temporary, path)


def score_scans(images: list[Path], engine, queue_path: Path) -> list[dict]:
    """Predict every image with probabilities, score it and store the scores (the queue file is updated)."""
    from ..segment import segment_image

    queue = load_queue(queue_path)
    records = []
    for path in images:
        image = load_image(path)
        result = segment_image(image, engine, want_probabilities=True)
        arrays = {name: sitk.GetArrayFromImage(p) for name, p in result.probabilities.items()}
        record = {
            "path": str(Path(path).resolve()),
            "model": engine.model.name,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **uncertainty(arrays, float(np.prod(image.GetSpacing()))),
        }
        queue["scans"][record["path"]] = record
        records.append(record)
    save_queue(queue, queue_path)
    return records


def ranked(queue: dict) -> list[dict]:
    """Scans marked Fail in a QC report first, then from the most to the least uncertain."""
    return sorted(queue["scans"].values(), key=lambda r: (r.get("qc") == "Fail", r["score"]), reverse=True)


def qc_failed_files(decisions: Path) -> list[str]:
    """The files marked Fail in a QC decisions file: ``qc_fails.yml`` ("Save fails") or ``qc_decisions.json`` ("Save all")."""
    import yaml

    decisions = Path(decisions)
    try:
        text = decisions.read_text()
        content = json.loads(text) if decisions.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise InputError(f"{decisions} is not a QC decisions file SCIseg can read ({type(error).__name__}).") from None
    if not isinstance(content, dict) or not ({"fails", "decisions"} & set(content)):
        raise InputError(f"{decisions} has neither 'fails' (Save fails) nor 'decisions' (Save all); save it again from qc/index.html.")
    key = "fails" if "fails" in content else "decisions"
    entries = content[key] or []
    if not isinstance(entries, list) or (key == "decisions" and not all(isinstance(d, dict) for d in entries)):
        raise InputError(f"{decisions}: '{key}' is not a list of entries; save it again from qc/index.html.")
    items = entries if key == "fails" else [d for d in entries if d.get("decision") == "Fail"]
    files = [item.get("file") if isinstance(item, dict) else None for item in items]
    if any(not isinstance(f, str) or not f for f in files):
        raise InputError(f"{decisions} lists an entry without a 'file'; save it again from qc/index.html.")
    return files


def add_qc_failures(queue_path: Path, decisions: Path) -> list[dict]:
    """Put the scans a rater marked Fail in the queue, ahead of every uncertainty score; returns their records."""
    queue = load_queue(queue_path)
    records = []
    for file in qc_failed_files(decisions):
        path = Path(file).resolve()
        if not path.is_file():
            raise InputError(f"{decisions} lists {path}, which does not exist; check that the data has not moved.")
        record = queue["scans"].get(str(path)) or {"path": str(path), "score": 0.0}
        record.update(qc="Fail", qc_decisions=str(Path(decisions).resolve()),
                      qc_date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        queue["scans"][str(path)] = record
        records.append(record)
    save_queue(queue, queue_path)
    return records


def next_scan(queue_path: Path, bids_root: Path | None = None) -> dict | None:
    """The most uncertain scan without an exported correction (None when all are done)."""
    for record in ranked(load_queue(queue_path)):
        path = Path(record["path"])
        done = False
        if bids_root is not None:
            try:
                done = latest_version(bids_root, path) is not None
            except InputError:  # a scan outside BIDS naming cannot have been exported under it
                done = False
        if not done:
            return record
    return None
