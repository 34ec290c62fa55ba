"""Which engine runs: the reference on request, else the fastest that works here, with fallbacks.

``auto`` picks, in order of preference:

- a CUDA GPU: torch with bf16 autocast (fp16 where the GPU lacks bf16), everything on the GPU;
- Apple MPS: the reference call on MPS (no faster path measured there);
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
from .openvino_cache import CompiledModelCache

ENGINES = ("auto", "reference", "openvino", "torch-bf16", "cuda")


@dataclass(frozen=True)
class EngineChoice:
    """One candidate: runtime "reference", "openvino", "torch" or "cuda"; precision "fp32", "bf16", "fp16"."""

    runtime: str
    precision: str


def engine_candidates(requested: str, *, device: str, cpu_flags: frozenset[str], cuda: bool, cuda_bf16: bool,
                      mps: bool, openvino: bool) -> list[EngineChoice]:
    """The engines to try for ``requested`` (see :data:`ENGINES`), best first, ending with the reference.

    Args:
        device: the user's device ("auto", "cpu", "cuda"/"gpu", "mps").
        cpu_flags: the CPU's feature flags (:func:`read_cpu_flags`).
        cuda, cuda_bf16, mps, openvino: what is available here.
    """
    if requested not in ENGINES:
        raise InputError(f"unknown engine '{requested}'; use one of {', '.join(ENGINES)}.")
    reference = EngineChoice("reference", "fp32")
    if requested == "reference":
        return [reference]
    gpu = "bf16" if cuda_bf16 else "fp16"
    cpu_engines = [EngineChoice("openvino", "bf16"), EngineChoice("torch", "bf16"), EngineChoice("openvino", "fp32")] \
        if has_native_bf16(cpu_flags) else [EngineChoice("openvino", "fp32")]
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
        return [c for c in cpu_engines if c.runtime == "openvino"][:1] + [reference]
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
    candidates = engine_candidates(
        settings.engine, device=settings.device, cpu_flags=cpu_flags_reader(), cuda="cuda" in devices,
        cuda_bf16=cuda_bf16, mps="mps" in devices, openvino=importlib.util.find_spec("openvino") is not None)
    failures: list[str] = []
    for choice in candidates:
        if choice.runtime == "reference":
            break
        try:
            return FallbackEngine(FastEngine(model, settings, choice.runtime, choice.precision, cache), failures)
        except InputError:
            raise
        except Exception as error:  # noqa: BLE001 - a runtime that cannot start here: try the next one
            message = f"the {choice.runtime} {choice.precision} engine could not start ({error}); trying the next one."
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            failures.append(message)
    device = settings.device if settings.device != "auto" or "cuda" not in devices else "cuda"
    return _ReferenceWithNotes(NnUNetEngine(model, _replace_device(settings, device)), failures)


def _replace_device(settings: InferenceSettings, device: str) -> InferenceSettings:
    from dataclasses import replace

    return replace(settings, device=device)


class _ReferenceWithNotes:
    """The reference engine whose outputs also record why no fast engine ran."""

    def __init__(self, engine, fallbacks: list[str]) -> None:
        self.model, self.engine, self.fallbacks = engine.model, engine, fallbacks
        self.device = engine.device

    def predict(self, *args, **kwargs):
        output = self.engine.predict(*args, **kwargs)
        output.run["fallbacks"] = list(self.fallbacks)
        return output
