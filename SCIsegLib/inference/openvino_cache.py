"""A disk cache of OpenVINO compiled models, keyed by the weights, the CPU and the OpenVINO version.

Converting nnU-Net's torch network to OpenVINO and compiling it takes seconds to a minute; the
compiled model (``CompiledModel.export_model``) loads in a fraction of that. Each entry is a blob and
a JSON manifest holding the key's fields and the blob's sha256. An entry is used only when every field
matches (same checkpoint sha256, tile shape, precision, CPU, OpenVINO version); a blob whose sha256 or
import fails is rebuilt; when the weights of a fold change, the fold's older entries are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..hashing import file_sha256

log = logging.getLogger(__name__)

#: How the torch network is converted now (:func:`~.runtimes.convert_network`); a cache entry made another way
#: (``torch.jit.trace``; ``torch.export`` with the instance norms decomposed, before session 10) is rebuilt, not reused.
CONVERTER = "torch.export, instance norm kept whole"


@dataclass(frozen=True)
class CacheKey:
    """What a compiled model depends on.

    Attributes:
        model_folder: the model's results folder (entries of different models never replace each other).
        weights_sha256: sha256 of the fold's checkpoint file.
        fold: the fold name ("0", "all").
        input_shape: the network input (batch, channels, z, y, x) in voxels of the network grid.
        precision: "bf16" or "fp32" (OpenVINO's inference precision hint).
        cpu: the CPU's name and its bf16/AMX flags.
        openvino: the OpenVINO version.
        converter: how the torch network was converted (:data:`CONVERTER`; an int8 entry names its quantization).
    """

    model_folder: str
    weights_sha256: str
    fold: str
    input_shape: tuple[int, ...]
    precision: str
    cpu: str
    openvino: str
    converter: str = CONVERTER

    def fields(self) -> dict[str, Any]:
        return {"model_folder": self.model_folder, "weights_sha256": self.weights_sha256, "fold": self.fold, "input_shape": list(self.input_shape),
                "precision": self.precision, "cpu": self.cpu, "openvino": self.openvino, "converter": self.converter}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.fields(), sort_keys=True).encode()).hexdigest()[:32]


def default_cache_root() -> Path:
    """``$SCISEG_COMPILED_CACHE``, else ``compiled-models`` in the per-user SCIseg data folder."""
    configured = os.environ.get("SCISEG_COMPILED_CACHE")
    if configured:
        return Path(configured)
    from ..models import user_data_dir

    return user_data_dir() / "compiled-models"


def _write_atomically(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class CompiledModelCache:
    """Compiled models on disk under ``root/<model folder digest>/fold_<fold>-<precision>/<key digest>.blob`` (+ ``.json``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _folder(self, key: CacheKey) -> Path:
        model = hashlib.sha256(key.model_folder.encode()).hexdigest()[:16]
        return self.root / model / f"fold_{key.fold}-{key.precision}"

    def paths(self, key: CacheKey) -> tuple[Path, Path]:
        folder = self._folder(key)
        return folder / f"{key.digest()}.blob", folder / f"{key.digest()}.json"

    def load_or_build(self, key: CacheKey, core, config: dict, build: Callable[[], Any]) -> tuple[Any, str]:
        """The compiled model for ``key`` and how it was obtained: "cached", "built" or "rebuilt" (corrupt entry).

        ``build`` returns an ``openvino.Model``; it is compiled with ``config`` on the CPU and exported.
        A cache folder that cannot be written only costs the saving (the model is still returned).
        """
        blob_path, manifest_path = self.paths(key)
        status = "built"
        if blob_path.exists() or manifest_path.exists():
            compiled = self._load(key, core, config)
            if compiled is not None:
                return compiled, "cached"
            status = "rebuilt"
        compiled = core.compile_model(build(), "CPU", config)
        try:
            exported = compiled.export_model()  # bytes, or a BytesIO in recent OpenVINO versions
            self._store(key, exported.getvalue() if hasattr(exported, "getvalue") else bytes(exported))
        except OSError as error:
            log.warning("could not save the compiled model in %s (%s); it will be compiled again next time.", self.root, error)
        return compiled, status

    def load_or_build_model(self, key: CacheKey, core, build: Callable[[], Any]) -> tuple[Any, str]:
        """The converted ``openvino.Model`` for ``key`` (kept as OpenVINO IR, ``.xml`` + ``.bin``): "cached", "built" or "rebuilt".

        For a model whose tile size is left free (compiled per tile size in memory): converting takes seconds to
        a minute, reading the IR a fraction of that. Same checks and same all-or-nothing publishing as the blobs.
        """
        xml, weights, manifest = self.ir_paths(key)
        folder = xml.parent
        status = "built"
        if manifest.exists():
            try:
                fields = json.loads(manifest.read_text())
                if fields.get("key") != key.fields() or fields.get("xml_sha256") != file_sha256(xml) \
                        or fields.get("bin_sha256") != file_sha256(weights):
                    raise ValueError("the IR does not match its manifest")
                return core.read_model(str(xml)), "cached"
            except (OSError, ValueError, RuntimeError) as error:
                log.warning("the cached converted model %s is unusable (%s); converting again.", xml, error)
                status = "rebuilt"
        model = build()
        try:
            import openvino as ov

            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.iterdir():  # older weights or versions of this fold: never used again
                if stale.suffix in (".xml", ".bin", ".json") and stale.stem != key.digest():
                    stale.unlink(missing_ok=True)
            with tempfile.TemporaryDirectory(dir=folder, prefix=".ir-") as temporary:
                ov.save_model(model, str(Path(temporary) / "model.xml"), compress_to_fp16=False)
                manifest_text = json.dumps({"key": key.fields(), "xml_sha256": file_sha256(Path(temporary) / "model.xml"),
                                            "bin_sha256": file_sha256(Path(temporary) / "model.bin")}, indent=2)
                manifest.unlink(missing_ok=True)  # the manifest goes last: a half-written pair is never read
                os.replace(Path(temporary) / "model.bin", weights)
                os.replace(Path(temporary) / "model.xml", xml)
            _write_atomically(manifest, manifest_text.encode())
        except OSError as error:
            log.warning("could not save the converted model in %s (%s); it will be converted again next time.", self.root, error)
        return model, status

    def ir_paths(self, key: CacheKey) -> tuple[Path, Path, Path]:
        """The ``.xml``, ``.bin`` and manifest ``.json`` of a converted model kept as IR (:meth:`load_or_build_model`)."""
        folder = self._folder(key).with_name(self._folder(key).name + "-ir")
        return tuple(folder / f"{key.digest()}{suffix}" for suffix in (".xml", ".bin", ".json"))  # type: ignore[return-value]

    def ir_identity(self, key: CacheKey) -> dict | None:
        """The stored IR's manifest (its key's fields, the sha256 of its ``.xml`` and ``.bin``), or None when not stored."""
        try:
            manifest = json.loads(self.ir_paths(key)[2].read_text())
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def _load(self, key: CacheKey, core, config: dict):
        blob_path, manifest_path = self.paths(key)
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("key") != key.fields() or manifest.get("blob_sha256") != file_sha256(blob_path):
                raise ValueError("the blob does not match its manifest")
            return core.import_model(blob_path.read_bytes(), "CPU", config)
        except (OSError, ValueError, RuntimeError) as error:
            log.warning("the cached compiled model %s is unusable (%s); rebuilding it.", blob_path, error)
            return None

    def _store(self, key: CacheKey, blob: bytes) -> None:
        folder = self._folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        blob_path, manifest_path = self.paths(key)
        for stale in folder.iterdir():  # older weights, shapes or versions of this fold: never used again
            if stale.suffix in (".blob", ".json") and stale.stem != key.digest():
                stale.unlink(missing_ok=True)
        _write_atomically(blob_path, blob)
        manifest = {"key": key.fields(), "blob_sha256": hashlib.sha256(blob).hexdigest()}
        _write_atomically(manifest_path, json.dumps(manifest, indent=2).encode())
