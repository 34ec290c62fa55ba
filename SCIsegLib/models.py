"""The model store: install nnU-Net v2 models from a folder, a zip or a URL; validate, list, remove.

A model is an nnU-Net v2 results folder named ``<trainer>__<plans>__<configuration>`` (for example
``nnUNetTrainer__nnUNetPlans__3d_fullres``) holding ``plans.json``, ``dataset.json`` and
``fold_*/checkpoint_final.pth`` (or ``checkpoint_best.pth``). Installed models live in
``<store>/<name>/`` with a ``sciseg_model.json`` beside the files (source, sha256, date, lineage).

The store is ``$SCISEG_MODELS_DIR`` when set, else the per-user data folder given by platformdirs
(``~/.local/share/SCIseg/models`` on Linux). The bundled demo model is read from
``Resources/Models/`` of the repository (or ``$SCISEG_BUNDLED_MODELS``) and cannot be removed.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .download import check_free_space, download_file
from .hashing import file_sha256
from .checkpoints import checkpoint_globals, check_plans_safe, is_allowed_global, load_checkpoint, UnsafeCheckpointError
from .errors import DownloadError, ModelError

METADATA_FILE = "sciseg_model.json"
RESULTS_FOLDER_PATTERN = re.compile(
    r"^(?P<trainer>nnUNetTrainer\w*?)__(?P<plans>\w+?)__(?P<configuration>2d|3d_fullres|3d_lowres|3d_cascade_fullres)$"
)
CHECKPOINT_NAMES = ("checkpoint_final.pth", "checkpoint_best.pth")
BUNDLED_DEMO = "sciseg-demo"
MAX_UNZIPPED_BYTES = 4 * 1024**3  # refuse archives that would expand beyond 4 GiB
TRUSTED_DIGESTS_FILE = ".sciseg_trusted_digests.json"  # sha256 of the first download of each known model
_log = logging.getLogger("SCIseg")


@dataclass(frozen=True)
class KnownModel:
    """A model SCIseg knows how to fetch by name."""

    url: str
    description: str
    sha256: str | None = None  # the pinned digest; None until published: the first download's sha256 is trusted
    segments: tuple[str, ...] = ("spinal cord", "lesion")  # what it segments (see :func:`model_segments`)
    configuration: str = "3d_fullres"  # the nnU-Net configuration of the release


KNOWN_MODELS: dict[str, KnownModel] = {
    "sciseg-v1": KnownModel(
        url="https://github.com/ivadomed/model_seg_sci/releases/download/r20240130/model-sci-multisite_r20240130.zip",
        description="SCIseg (Naga Karthik, Valosek et al. 2024), release r20240130: cord + T2w lesion, 3 sites",
    ),
    "sciseg-v2": KnownModel(
        url="https://github.com/ivadomed/model_seg_sci/releases/download/r20240729/model_SCIsegV2_r20240729.zip",
        description="SCIsegV2 (Karthik et al. 2024), release r20240729: cord + T2w lesion, 7 sites (sct_deepseg lesion_sci_t2)",
    ),
    "graymatter": KnownModel(
        url="https://github.com/ivadomed/model-gm-contrast-region-agnostic/releases/download/r20250420/Dataset820_gm-seg.zip",
        description="contrast- and region-agnostic spinal cord grey matter, 2D nnU-Net, release r20250420 "
                    "(sct_deepseg graymatter; >20 sites, SCI included)",
        segments=("grey matter",),
        configuration="2d",
    ),
}

#: Label names (dataset.json, lower case) that mean the cord's grey matter.
GREY_MATTER_LABELS = frozenset({"gm", "gmseg", "gm_seg", "grey_matter", "gray_matter", "greymatter", "graymatter",
                                "grey matter", "gray matter", "spinal cord grey matter", "spinal cord gray matter"})


@dataclass
class ModelInfo:
    """What SCIseg needs to know about one model, read from its files.

    Attributes:
        name: the store name (folder name) or the folder's name for a model given by path.
        path: the folder holding the model (store entry or the given folder).
        results_folder: the nnU-Net results folder inside it.
        configuration: nnU-Net configuration ("3d_fullres", "2d", ...).
        folds: the folds found (ints, or "all").
        checkpoint_name: "checkpoint_final.pth", or "checkpoint_best.pth" when not every fold has a final one.
        labels: dataset.json "labels" (region-based: values are lists).
        regions_class_order: dataset.json "regions_class_order", None for plain labels.
        orientation: the model orientation in SCT letters (e.g. "RPI").
        dataset_name: the nnU-Net dataset name from plans.json.
        spacing_mm: the voxel size the network works at (the configuration's ``spacing``, nnU-Net's axis order),
            None when the plans do not say.
        metadata: the content of sciseg_model.json (source, sha256, installed_at, lineage, ...).
    """

    name: str
    path: Path
    results_folder: Path
    configuration: str
    folds: list[int | str]
    checkpoint_name: str
    labels: dict[str, object]
    regions_class_order: list[int] | None
    orientation: str
    dataset_name: str
    metadata: dict = field(default_factory=dict)
    spacing_mm: tuple[float, ...] | None = None

    @property
    def is_region_based(self) -> bool:
        return self.regions_class_order is not None

    @property
    def is_2d(self) -> bool:
        """A 2D nnU-Net (``2d`` configuration): slices of the first (z) axis in the model orientation."""
        return self.configuration == "2d"

    @property
    def segments(self) -> tuple[str, ...]:
        """What the model segments, in words (:func:`model_segments`)."""
        return model_segments(self.structures)

    @property
    def structures(self) -> dict[str, list[int]]:
        """Output masks and the label values each one gathers, e.g. {"sc": [1, 2], "lesion": [2]}."""
        result: dict[str, list[int]] = {}
        for key, value in self.labels.items():
            if key == "background":
                continue
            result[key] = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
        return result

    def checkpoint_files(self) -> list[Path]:
        return [self.results_folder / f"fold_{fold}" / self.checkpoint_name for fold in self.folds]

    def weights_sha256(self) -> str:
        """sha256 of the checkpoint files (in fold order): identifies the weights whatever the packaging."""
        recorded = self.metadata.get("weights_sha256")
        if recorded:
            return recorded
        digest = hashlib.sha256()
        for file in self.checkpoint_files():
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()

    def summary(self) -> dict:
        """A JSON-friendly description (``sciseg models info``)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "results_folder": str(self.results_folder),
            "configuration": self.configuration,
            "folds": self.folds,
            "checkpoint": self.checkpoint_name,
            "labels": self.labels,
            "regions_class_order": self.regions_class_order,
            "orientation": self.orientation,
            "dataset_name": self.dataset_name,
            "structures": self.structures,
            "segments": list(self.segments),
            **{k: v for k, v in self.metadata.items() if k not in {"name"}},
        }


def is_grey_matter(structure: str) -> bool:
    """Whether a dataset.json label name means the cord's grey matter ("gm", "gray_matter", ...)."""
    return structure.strip().lower() in GREY_MATTER_LABELS


def model_segments(structures: dict[str, list[int]]) -> tuple[str, ...]:
    """What a model segments, from its labels: "spinal cord", "lesion", "grey matter" (other names as they are)."""
    words = {"sc": "spinal cord", "lesion": "lesion"}
    return tuple("grey matter" if is_grey_matter(name) else words.get(name, name) for name in structures)


def store_root() -> Path:
    """The folder holding installed models (created on demand)."""
    configured = os.environ.get("SCISEG_MODELS_DIR")
    return Path(configured) if configured else user_data_dir() / "models"


def user_data_dir() -> Path:
    """The per-user SCIseg data folder (platformdirs; a plain fallback inside Slicer when it is absent)."""
    try:
        import platformdirs
    except ImportError:  # Slicer's own Python may lack platformdirs; use the same folders it would give
        if os.name == "nt":
            return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "SCIseg"
        if sys.platform == "darwin":
            return Path.home() / "Library" / "Application Support" / "SCIseg"
        return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "SCIseg"
    return Path(platformdirs.user_data_dir("SCIseg", appauthor=False))


def bundled_models_root() -> Path:
    """``Resources/Models`` of the repository (override: ``$SCISEG_BUNDLED_MODELS``)."""
    configured = os.environ.get("SCISEG_BUNDLED_MODELS")
    return Path(configured) if configured else Path(__file__).resolve().parents[1] / "Resources" / "Models"


def find_results_folder(folder: Path, max_depth: int = 3) -> Path:
    """Find the single ``nnUNetTrainer*__*__<configuration>`` folder at most ``max_depth`` levels down."""
    candidates: list[Path] = []
    level = [folder]
    for _ in range(max_depth + 1):
        candidates += [p for p in level if p.is_dir() and RESULTS_FOLDER_PATTERN.match(p.name)]
        if candidates:
            break
        level = [child for parent in level if parent.is_dir() for child in sorted(parent.iterdir()) if child.is_dir()]
    if not candidates:
        raise ModelError(
            f"{folder} holds no nnU-Net results folder (a folder named like "
            "'nnUNetTrainer__nnUNetPlans__3d_fullres' with plans.json, dataset.json and fold_*/)."
        )
    if len(candidates) > 1:
        names = ", ".join(str(c.relative_to(folder)) for c in candidates)
        raise ModelError(f"{folder} holds several nnU-Net results folders ({names}); install one at a time.")
    return candidates[0]


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"{file} is not valid JSON ({error}).") from None


def model_orientation(dataset_json: dict, dataset_name: str) -> str:
    """The model orientation in SCT letters, chosen exactly as SCT's ``segment_nnunet`` does."""
    if "image_orientation" in dataset_json:
        return str(dataset_json["image_orientation"])
    if "RegionBasedLesionSeg" in dataset_name:
        return "AIL"
    return "LPI"


def read_model(folder: str | os.PathLike[str], name: str | None = None) -> ModelInfo:
    """Validate a model folder and describe it; raise :class:`ModelError` saying exactly what is missing."""
    path = Path(folder)
    if not path.is_dir():
        raise ModelError(f"{path} is not a folder with an nnU-Net model.")
    results = find_results_folder(path)
    missing = [n for n in ("plans.json", "dataset.json") if not (results / n).is_file()]
    if missing:
        raise ModelError(f"{results} is missing {' and '.join(missing)}; the model folder is incomplete.")
    fold_dirs = sorted(p for p in results.glob("fold_*") if p.is_dir())
    if not fold_dirs:
        raise ModelError(f"{results} has no fold_* folder with trained weights.")
    checkpoint_name = None
    for candidate in CHECKPOINT_NAMES:
        if all((fold / candidate).is_file() for fold in fold_dirs):
            checkpoint_name = candidate
            break
    if checkpoint_name is None:
        lacking = [f.name for f in fold_dirs if not any((f / c).is_file() for c in CHECKPOINT_NAMES)]
        detail = ", ".join(lacking) if lacking else "some folds have only checkpoint_final.pth, others only checkpoint_best.pth"
        raise ModelError(f"{results}: no checkpoint_final.pth or checkpoint_best.pth in {detail}.")
    folds: list[int | str] = []
    for fold in fold_dirs:
        suffix = fold.name.removeprefix("fold_")
        folds.append("all" if suffix == "all" else int(suffix) if suffix.isdigit() else suffix)
    plans = _read_json(results / "plans.json")
    dataset_json = _read_json(results / "dataset.json")
    check_plans_safe(plans, results / "plans.json", dataset_json)  # every load reads the model here
    labels = dataset_json.get("labels")
    if not isinstance(labels, dict) or "background" not in labels:
        raise ModelError(f"{results / 'dataset.json'} has no 'labels' with a 'background' entry.")
    configuration = RESULTS_FOLDER_PATTERN.match(results.name).group("configuration")  # type: ignore[union-attr]
    if configuration not in plans.get("configurations", {}):
        raise ModelError(f"{results / 'plans.json'} has no configuration '{configuration}'.")
    metadata_file = path / METADATA_FILE
    metadata = _read_json(metadata_file) if metadata_file.is_file() else {}
    dataset_name = str(plans.get("dataset_name", ""))
    return ModelInfo(
        name=name or metadata.get("name") or path.name,
        path=path,
        results_folder=results,
        configuration=configuration,
        folds=folds,
        checkpoint_name=checkpoint_name,
        labels=labels,
        regions_class_order=dataset_json.get("regions_class_order"),
        orientation=model_orientation(dataset_json, dataset_name),
        dataset_name=dataset_name,
        metadata=metadata,
        spacing_mm=_configuration_spacing(plans, configuration),
    )


def _configuration_spacing(plans: dict, configuration: str) -> tuple[float, ...] | None:
    """The configuration's ``spacing`` (mm), looked up through ``inherits_from`` as nnU-Net does."""
    seen: set[str] = set()
    while configuration not in seen:
        seen.add(configuration)
        entry = plans.get("configurations", {}).get(configuration, {})
        spacing = entry.get("spacing") if isinstance(entry, dict) else None
        if isinstance(spacing, list) and spacing and all(isinstance(v, (int, float)) and v > 0 for v in spacing):
            return tuple(float(v) for v in spacing)
        configuration = entry.get("inherits_from") if isinstance(entry, dict) else None
        if not isinstance(configuration, str):
            return None
    return None


def list_models(store: Path | None = None) -> list[ModelInfo]:
    """The bundled models first, then the installed ones; broken entries are skipped."""
    found: list[ModelInfo] = []
    for root in (bundled_models_root(), store or store_root()):
        if not root.is_dir():
            continue
        for entry in sorted(root.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                try:
                    found.append(read_model(entry))
                except ModelError:
                    continue
    return found


def resolve_model(name_or_path: str, store: Path | None = None) -> ModelInfo:
    """A model from a folder path, an installed name or a bundled name."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return read_model(candidate)
    for root in (store or store_root(), bundled_models_root()):
        if (root / name_or_path).is_dir():
            return read_model(root / name_or_path, name=name_or_path)
    if name_or_path in KNOWN_MODELS:
        raise ModelError(f"model '{name_or_path}' is not installed; run `sciseg models install {name_or_path}`.")
    names = ", ".join(m.name for m in list_models(store)) or "none"
    raise ModelError(f"no model named '{name_or_path}' (installed: {names}); give a model name or a model folder.")


def safe_extract(
    archive: Path,
    destination: Path,
    max_bytes: int = MAX_UNZIPPED_BYTES,
    progress: Callable[[int, int | None], None] | None = None,
) -> None:
    """Extract a zip, refusing absolute paths, '..' components, links and archives larger than ``max_bytes``.

    ``progress`` is called with (bytes extracted, total bytes) after every member; an exception it
    raises (a cancel) stops the extraction.
    """
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            total = 0
            for member in members:
                name = member.filename
                parts = Path(name.replace("\\", "/")).parts
                if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
                    raise ModelError(f"{archive} contains an unsafe path ({name!r}); refusing to extract it.")
                if (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise ModelError(f"{archive} contains a symbolic link ({name!r}); refusing to extract it.")
                total += member.file_size
                if total > max_bytes:
                    raise ModelError(f"{archive} expands beyond {max_bytes / 1024**3:.1f} GiB; refusing to extract it.")
            check_free_space(destination if destination.exists() else destination.parent, total, f"unpacking {archive.name}")
            broken = bundle.testzip()
            if broken is not None:
                raise ModelError(f"{archive} is corrupt (bad CRC in {broken!r}); download it again.")
            extracted = 0
            for member in members:
                bundle.extract(member, destination)
                extracted += member.file_size
                if progress:
                    progress(extracted, total)
    except zipfile.BadZipFile:
        raise ModelError(f"{archive} is not a valid zip archive (corrupt or truncated); download it again.") from None




def _refuse_links(folder: Path) -> None:
    """Refuse a model folder holding a symbolic link: its copy would bring in what the link points to."""
    for parent, folders, files in os.walk(folder):  # os.walk does not enter linked folders
        for entry in (*folders, *files):
            if (Path(parent) / entry).is_symlink():
                link = (Path(parent) / entry).relative_to(folder)
                raise ModelError(f"{folder} contains a symbolic link ({link}); refusing to install it. Copy the model's "
                                 "files themselves into the folder.")


def check_checkpoints_safe(info: ModelInfo) -> None:
    """Refuse a model whose checkpoints would not load with ``weights_only=True`` (they could run code).

    Every checkpoint's pickle is scanned for the globals it names (no torch needed: Slicer installs
    torch later); when torch is importable each checkpoint is also loaded as the predictor will load it.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        torch_available = False
    else:
        torch_available = True
    for checkpoint in info.checkpoint_files():
        if torch_available:
            load_checkpoint(checkpoint)
        elif not all(is_allowed_global(name) for name in checkpoint_globals(checkpoint)):
            raise UnsafeCheckpointError(f"the checkpoint {checkpoint} refers to Python objects that could run code when "
                                        "loaded; use a model saved by nnU-Net v2 from a source you trust.")


def _trusted_digest(root: Path, name: str, url: str, digest: str) -> dict:
    """Trust on first use: record the first sha256 of a known model's download, compare later ones with it.

    Returns what goes into the model's metadata; logs a warning when the digest differs from the first one.
    """
    file = root / TRUSTED_DIGESTS_FILE
    try:
        records = json.loads(file.read_text()) if file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        records = {}
    first = records.get(name)
    if first is None:
        records[name] = {"sha256": digest, "url": url,
                         "first_seen": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        handle, temporary = tempfile.mkstemp(prefix=f".{TRUSTED_DIGESTS_FILE}.", dir=root)
        with os.fdopen(handle, "w") as stream:
            json.dump(records, stream, indent=2)
        os.replace(temporary, file)
        return {"sha256_trust": "first use"}
    if first["sha256"] != digest:
        _log.warning(
            "warning: the %s zip downloaded now (sha256 %s) differs from the one first installed on %s (sha256 %s): "
            "the release was replaced or the download was tampered with; check the release page before using it.",
            name, digest, first.get("first_seen"), first["sha256"])
        return {"sha256_trust": "differs from first use", "sha256_first_use": first["sha256"]}
    return {"sha256_trust": "matches first use"}


def _zip_is_complete(file: Path) -> None:
    """Raise ``DownloadError`` when ``file`` is not a whole zip (its central directory, at the end, is missing)."""
    try:
        with zipfile.ZipFile(file) as bundle:
            bundle.infolist()
    except (zipfile.BadZipFile, OSError) as error:
        raise DownloadError(f"not a complete zip archive: {error}") from None


def _default_name(source: str) -> str:
    if source in KNOWN_MODELS:
        return source
    stem = Path(source.rstrip("/").split("?")[0]).name
    return re.sub(r"\.zip$", "", stem, flags=re.IGNORECASE) or "model"


def install(
    source: str,
    *,
    name: str | None = None,
    store: Path | None = None,
    force: bool = False,
    expected_sha256: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    lineage: dict | None = None,
    stage_progress: Callable[[str, int, int | None], None] | None = None,
) -> ModelInfo:
    """Install a model from a known name, an http(s) URL, a zip file or a folder.

    The model is assembled in a temporary folder inside the store, validated, and only then
    renamed into place: an interrupted or invalid install leaves the store as it was.

    Args:
        source: "sciseg-v1", "sciseg-v2", a URL, a .zip path or a model folder.
        name: store name (default: the known name, or the zip/folder name).
        store: the store folder (default :func:`store_root`).
        force: replace an installed model of the same name.
        expected_sha256: checksum the zip must have (known models may carry one).
        progress: called with (bytes done, total bytes or None) while downloading.
        lineage: provenance to record (fine-tuned models: parent, dataset, epochs...).
        stage_progress: called with (stage, done, total or None) during "download", "verify" (sha256 of the
            zip) and "unzip" (bytes), and "check" (0 then 1 around validating and hashing the weights). An
            exception it raises (the child's cancel) stops the install; the store stays as it was.
    """

    def report(stage: str, done: int, total: int | None) -> None:
        if stage_progress:
            stage_progress(stage, done, total)
        if progress and stage == "download":
            progress(done, total)

    root = store or store_root()
    name = name or _default_name(source)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
        raise ModelError(f"'{name}' is not a valid model name; use letters, digits, '.', '_' and '-'.")
    if name == BUNDLED_DEMO:
        raise ModelError(f"'{BUNDLED_DEMO}' is the bundled demo model's name; choose another with --name.")
    final = root / name
    if final.exists() and not force:
        raise ModelError(f"a model named '{name}' is already installed at {final}; remove it first or pass --force.")
    root.mkdir(parents=True, exist_ok=True)
    record: dict = {"name": name, "installed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}

    known = KNOWN_MODELS.get(source)
    url = known.url if known else source if re.match(r"^https?://", source) else None
    expected = expected_sha256 or (known.sha256 if known else None)
    staging = Path(tempfile.mkdtemp(prefix=f".install-{name}-", dir=root))
    try:
        if url is not None:
            downloads = root / ".downloads"
            archive = download_file(
                url, downloads / Path(url.split("?")[0]).name,
                progress=lambda done, total: report("download", done, total), verify=_zip_is_complete,
            )
            record.update(source=url)
        else:
            local = Path(source).expanduser()
            if not local.exists():
                raise ModelError(
                    f"{source} is neither a known model ({', '.join(KNOWN_MODELS)}), a URL, a zip nor a folder."
                )
            archive = local if local.is_file() else None
            record.update(source=str(local.resolve()))
            if archive is None:
                _refuse_links(local)
                shutil.copytree(local, staging / "model", symlinks=True)
        try:
            if archive is not None:
                digest = file_sha256(archive, progress=lambda done, total: report("verify", done, total))
                if expected and digest != expected.lower():
                    raise ModelError(
                        f"{archive.name} has sha256 {digest}, expected {expected}; the file is corrupt or not the "
                        "published model" + (" (the download was deleted; try again)." if url else ".")
                    )
                record.update(sha256=digest, sha256_verified=bool(expected))
                safe_extract(archive, staging / "model", progress=lambda done, total: report("unzip", done, total))
            report("check", 0, 1)
            try:
                info = read_model(staging / "model", name=name)
            except ModelError as error:  # name what the user gave, not our staging folder
                raise type(error)(str(error).replace(str(staging / "model"), str(source))) from None
            check_checkpoints_safe(info)
            if known and not expected and archive is not None:  # recorded only for a model that proved usable
                record.update(_trusted_digest(root, source, url or "", record["sha256"]))
        except ModelError:
            if url is not None and archive is not None:
                archive.unlink(missing_ok=True)  # an unusable download is not kept for a resume
            raise
        record["weights_sha256"] = info.weights_sha256()
        report("check", 1, 1)
        if known:
            record["description"] = known.description
        if lineage:
            record["lineage"] = lineage
        (staging / "model" / METADATA_FILE).write_text(json.dumps(record, indent=2))
        if final.exists():
            trash = root / f".trash-{name}-{os.getpid()}"
            os.replace(final, trash)
            os.replace(staging / "model", final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging / "model", final)
        if url is not None:
            archive.unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return read_model(final, name=name)


def remove(name: str, store: Path | None = None) -> Path:
    """Delete an installed model; the bundled demo cannot be removed."""
    root = store or store_root()
    target = root / name
    if not target.is_dir():
        if (bundled_models_root() / name).is_dir():
            raise ModelError(f"'{name}' is bundled with SCIseg and cannot be removed.")
        raise ModelError(f"no installed model named '{name}' in {root}.")
    trash = root / f".trash-{name}-{os.getpid()}"
    os.replace(target, trash)
    shutil.rmtree(trash)
    return target
