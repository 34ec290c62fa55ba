"""The int8 store: a model's network quantized to int8 (OpenVINO IR), its report, and the gate ``auto`` applies.

One entry per model under the compiled-model cache root: ``<root>/<model folder digest>/int8/`` holding
``fold_<fold>.xml`` + ``fold_<fold>.bin`` (the quantized network with its tile size free) and ``report.json``
(what it was calibrated on, its agreement with the reference, the sha256 of every file it depends on).
An entry is published whole by renaming a finished folder into place (:func:`publish_entry`); a folder
that is half written is never read (it is a hidden ``.int8-*`` staging folder, removed on failure).

``auto`` picks the int8 engine only when :func:`int8_gate` says yes: the report's weights sha256 equal the
model's checkpoints now, every fold in use is there, the IR files are the ones the report names, and the
main-cord Dice and lesions-in-cord Dice measured against the reference are both >= 0.99.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..hashing import file_sha256
from ..models import ModelInfo
from .agreement import AGREEMENT_GATE

#: The report's format version.
REPORT_VERSION = 1
#: Fold names that may become file names (nnU-Net folds are integers or "all").
_FOLD_CHARACTERS = set("0123456789")


def fold_file_stem(fold: int | str) -> str:
    """``fold_<fold>`` for an nnU-Net fold name ("0".."9..." or "all"); any other name is refused."""
    name = str(fold)
    if name != "all" and not (name and set(name) <= _FOLD_CHARACTERS):
        raise InputError(f"'{name}' is not an nnU-Net fold name (an integer or 'all').")
    return f"fold_{name}"


def model_key(model: ModelInfo) -> str:
    """The model's identity in the cache: its results folder, resolved (as the OpenVINO engine keys it)."""
    return str(model.results_folder.resolve())


def model_folder_in_cache(root: Path, model: ModelInfo) -> Path:
    """``<root>/<16 hex of sha256(results folder)>`` (the same folder the compiled models of this model use)."""
    return Path(root) / hashlib.sha256(model_key(model).encode()).hexdigest()[:16]


def entry_folder(root: Path, model: ModelInfo) -> Path:
    """Where the model's published int8 entry lies (it may not exist)."""
    return model_folder_in_cache(root, model) / "int8"


def weights_by_fold(model: ModelInfo, folds) -> dict[str, str]:
    """{fold name: sha256 of its checkpoint file} for ``folds`` (None = every fold of the model)."""
    names = [str(f) for f in (folds if folds is not None else model.folds)]
    return {name: file_sha256(model.results_folder / f"fold_{name}" / model.checkpoint_name) for name in names}


@dataclass(frozen=True)
class Int8Entry:
    """An int8 entry folder (published or staged) and its report."""

    folder: Path
    report: dict

    def paths(self, fold: int | str) -> tuple[Path, Path]:
        stem = fold_file_stem(fold)
        return self.folder / f"{stem}.xml", self.folder / f"{stem}.bin"

    def read_models(self, core, folds) -> list:
        """The quantized ``openvino.Model`` of each fold; a file whose sha256 is not the report's is refused."""
        models = []
        for fold in folds:
            xml, weights = self.paths(fold)
            files = self.report.get("folds", {}).get(str(fold))
            if files is None:
                raise InputError(f"the int8 model in {self.folder} has no fold {fold}; quantize the model again.")
            if file_sha256(xml) != files.get("xml_sha256") or file_sha256(weights) != files.get("bin_sha256"):
                raise InputError(f"the int8 model files in {self.folder} are not the ones its report names; quantize the model again.")
            models.append(core.read_model(str(xml)))
        return models

    def identity(self, fold: int | str) -> str:
        """A short identity of one fold's int8 IR (keys its compiled models in the cache)."""
        return str(self.report["folds"][str(fold)]["xml_sha256"])[:16] + str(self.report["folds"][str(fold)]["bin_sha256"])[:16]


def read_entry(root: Path, model: ModelInfo) -> Int8Entry | None:
    """The model's published int8 entry, or None when there is none or its report cannot be read."""
    folder = entry_folder(root, model)
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        return None
    return Int8Entry(folder, report) if isinstance(report, dict) else None


def weights_mismatch(report: dict, weights: dict[str, str]) -> str | None:
    """One sentence when the entry of ``report`` was not made from ``weights`` ({fold name: checkpoint sha256 now}), else None."""
    folds = report.get("folds", {})
    for fold, sha256 in weights.items():
        if fold not in folds:
            return f"the stored int8 model has no fold {fold}."
        if folds[fold].get("weights_sha256") != sha256:
            return (f"the stored int8 model was quantized from other weights (fold {fold}: sha256 "
                    f"{str(folds[fold].get('weights_sha256'))[:12]}, now {sha256[:12]}); quantize it again.")
    return None


def int8_gate(report: dict | None, weights: dict[str, str], gate: float = AGREEMENT_GATE) -> tuple[bool, str]:
    """(True, "") when ``auto`` may run this int8 model, else (False, one sentence why).

    Args:
        report: the entry's report (None: no entry).
        weights: {fold name: sha256 of its checkpoint now} for the folds the run uses.
    """
    if report is None:
        return False, "no int8 model is stored for this model (`sciseg models quantize` makes one)."
    mismatch = weights_mismatch(report, weights)
    if mismatch:
        return False, mismatch
    figures = report.get("agreement", {}).get("worst")
    if not report.get("agreement", {}).get("scans") or not figures:
        return False, "the stored int8 model's agreement with the reference was not measured."
    low = {name: figures.get(name) for name in ("main_cord_dice", "lesion_in_cord_dice")
           if not isinstance(figures.get(name), (int, float)) or figures[name] < gate}
    if low:
        shown = ", ".join(f"{name} {value}" for name, value in low.items())
        return False, f"the stored int8 model failed the agreement gate ({shown} < {gate} against the reference)."
    return True, ""


def staging_folder(root: Path, model: ModelInfo) -> Path:
    """A new hidden folder beside the entry, to build an entry in (removed by :func:`discard`)."""
    parent = model_folder_in_cache(root, model)
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".int8-", dir=parent))


def discard(folder: Path) -> None:
    """Remove a staging folder and what it holds (nothing else)."""
    if folder.name.startswith(".int8-"):
        shutil.rmtree(folder, ignore_errors=True)


def write_report(folder: Path, report: dict) -> None:
    """``report.json`` in ``folder``, through a temporary file and a rename (whole or not at all)."""
    from ..volume import write_text_atomic

    write_text_atomic(json.dumps(report, indent=2), folder / "report.json")


def publish_entry(staged: Path, root: Path, model: ModelInfo) -> Path:
    """Put a finished staging folder in place of the model's entry; the old entry goes only once the new one is there.

    Two renames: the old entry to a hidden name, the staged folder to ``int8``; a crash between them leaves no
    entry (``auto`` then stays on bf16), never a mixed one.
    """
    target = entry_folder(root, model)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=".int8-old-", dir=target.parent))
        os.replace(target, old / "int8")
    os.replace(staged, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
