"""Which engine runs: the reference on request, else the fastest that works here, with fallbacks.

``auto`` picks, in order of preference:

- a CUDA GPU: torch with bf16 autocast (fp16 where the GPU lacks bf16), everything on the GPU;
- Apple MPS: the reference call on MPS (no faster path measured there);
- a CPU: OpenVINO int8 first, but only when the model's stored int8 version passed the agreement gate for the
  weights it has now (:func:`~.int8.int8_gate`; why it was not used is recorded with the outputs), then:
- a CPU with native bf16 (AVX512-BF16 or AMX): OpenVINO bf16, then torch bf16, then OpenVINO fp32;
- any other CPU: OpenVINO fp32 (bf16 would be emulated there, slower than fp32);
- last: the reference (SCT's call). Every engine that fails to start is skipped with a warning.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from typing import Callable

from ..errors import InputError
from ..models import ModelInfo
from .base import Engine, InferenceSettings, available_devices, choose_device
from .cpu import has_native_bf16, read_cpu_flags
from .openvino_cache import CompiledModelCache, default_cache_root

ENGINES = ("auto", "reference", "openvino", "openvino-int8", "torch-bf16", "cuda")


@dataclass(frozen=True)
class EngineChoice:
    """One candidate: runtime "reference", "openvino", "torch" or "cuda"; precision "fp32", "bf16", "fp16"."""

    runtime: str
    precision: str  # "int8": the model's quantized network (OpenVINO), its other layers in bf16 or fp32


def engine_candidates(requested: str, *, device: str, cpu_flags: frozenset[str], cuda: bool, cuda_bf16: bool,
                      mps: bool, openvino: bool, int8: bool = False) -> list[EngineChoice]:
    """The engines to try for ``requested`` (see :data:`ENGINES`), best first, ending with the reference.

    Args:
        device: the user's device ("auto", "cpu", "cuda"/"gpu", "mps").
        cpu_flags: the CPU's feature flags (:func:`read_cpu_flags`).
        cuda, cuda_bf16, mps, openvino: what is available here.
        int8: the model's int8 version passed the agreement gate (``auto`` may then try it first on a CPU).
    """
    if requested not in ENGINES:
        raise InputError(f"unknown engine '{requested}'; use one of {', '.join(ENGINES)}.")
    reference = EngineChoice("reference", "fp32")
    if requested == "reference":
        return [reference]
    gpu = "bf16" if cuda_bf16 else "fp16"
    cpu_engines = [EngineChoice("openvino", "bf16"), EngineChoice("torch", "bf16"), EngineChoice("openvino", "fp32")] \
        if has_native_bf16(cpu_flags) else [EngineChoice("openvino", "fp32")]
    if int8:
        cpu_engines = [EngineChoice("openvino", "int8"), *cpu_engines]
    if not openvino:
        cpu_engines = [c for c in cpu_engines if c.runtime != "openvino"]
    wanted_device = {"gpu": "cuda"}.get(device.lower(), device.lower())
    if requested == "cuda" or (requested == "auto" and wanted_device in ("cuda", "auto") and cuda):
        if not cuda:
            raise InputError("--engine cuda needs a CUDA GPU and none is available here; use --engine auto.")
        return [EngineChoice("cuda", gpu), reference]
    if requested == "auto" and (wanted_device == "mps" or (wanted_device == "auto" and mps)):
        return [reference]
    if requested == "openvino":
        return [c for c in cpu_engines if c.runtime == "openvino" and c.precision != "int8"][:1] + [reference]
    if requested == "openvino-int8":
        if not openvino:
            raise InputError("--engine openvino-int8 needs OpenVINO, which is not installed here; use --engine auto.")
        return [EngineChoice("openvino", "int8"), reference]
    if requested == "torch-bf16":
        return [EngineChoice("torch", "bf16"), reference]
    return cpu_engines + [reference]


def make_engine(model: ModelInfo, settings: InferenceSettings, *,
                cpu_flags_reader: Callable[[], frozenset[str]] = read_cpu_flags,
                cache: CompiledModelCache | None = None) -> Engine:
    """The engine ``settings.engine`` asks for; a fast engine that fails to start is skipped with a warning.

    The returned engine's outputs carry ``run`` (engine, precision, crop box, fallbacks): what really ran.
    """
    from .fast import FallbackEngine, FastEngine
    from .predictor import NnUNetEngine

    if settings.engine == "reference":
        return NnUNetEngine(model, settings)
    choose_device(settings.device)  # an unknown or absent device is the user's error, whatever the engine
    devices = available_devices()
    cuda_bf16 = False
    if "cuda" in devices:
        import torch

        cuda_bf16 = bool(torch.cuda.is_bf16_supported())
    cache = cache or CompiledModelCache(default_cache_root())
    notes: dict = {}
    int8 = False
    wanted = {"gpu": "cuda"}.get(settings.device.lower(), settings.device.lower())
    if settings.engine == "auto" and (wanted == "cpu" or (wanted == "auto" and not {"cuda", "mps"} & set(devices))):
        int8, notes = _int8_decision(model, settings, cache)
    candidates = engine_candidates(
        settings.engine, device=settings.device, cpu_flags=cpu_flags_reader(), cuda="cuda" in devices,
        cuda_bf16=cuda_bf16, mps="mps" in devices, openvino=importlib.util.find_spec("openvino") is not None, int8=int8)
    failures: list[str] = []
    for choice in candidates:
        if choice.runtime == "reference":
            break
        try:
            fast = FastEngine(model, settings, choice.runtime, choice.precision, cache)
            if choice.precision != "int8" and notes.get("int8_note", "").startswith("used"):
                notes = {"int8_note": f"not used: the int8 engine could not start ({failures[-1] if failures else ''})"}
            return FallbackEngine(fast, failures, notes)
        except InputError:
            raise
        except Exception as error:  # noqa: BLE001 - a runtime that cannot start here: try the next one
            message = f"the {choice.runtime} {choice.precision} engine could not start ({error}); trying the next one."
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            failures.append(message)
    device = settings.device if settings.device != "auto" or "cuda" not in devices else "cuda"
    return _ReferenceWithNotes(NnUNetEngine(model, _replace_device(settings, device)), failures, notes)


def _int8_decision(model: ModelInfo, settings: InferenceSettings, cache: CompiledModelCache) -> tuple[bool, dict]:
    """Whether ``auto`` may try the model's int8 version, and the note recorded with the outputs saying why."""
    from .int8 import int8_gate, read_entry, weights_by_fold

    entry = read_entry(cache.root, model)
    if entry is None:  # the common case: nothing to check (no checkpoint is hashed)
        return False, {"int8_note": f"not used: {int8_gate(None, {})[1]}"}
    try:
        usable, why = int8_gate(entry.report, weights_by_fold(model, settings.folds))
    except OSError as error:
        usable, why = False, f"the checkpoints cannot be read ({error})."
    if not usable:
        return False, {"int8_note": f"not used: {why}"}
    worst = entry.report["agreement"]["worst"]
    return True, {"int8_note": (f"used: agreement with the reference on {len(entry.report['agreement']['scans'])} scans, "
                                f"main-cord Dice >= {worst['main_cord_dice']}, lesions-in-cord Dice >= {worst['lesion_in_cord_dice']}")}


def _replace_device(settings: InferenceSettings, device: str) -> InferenceSettings:
    from dataclasses import replace

    return replace(settings, device=device)


class _ReferenceWithNotes:
    """The reference engine whose outputs also record why no fast engine ran."""

    def __init__(self, engine, fallbacks: list[str], notes: dict | None = None) -> None:
        self.model, self.engine, self.fallbacks = engine.model, engine, fallbacks
        self.device = engine.device
        self.notes = dict(notes or {})

    def predict(self, *args, **kwargs):
        output = self.engine.predict(*args, **kwargs)
        output.run["fallbacks"] = list(self.fallbacks)
        output.run.update(self.notes)
        return output
