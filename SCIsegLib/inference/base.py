"""What every engine shares: settings, progress events, cancellation, the output and the device choice.

An engine takes an image array already in the model orientation, indexed **(z, y, x)**
(SimpleITK's array order, which is nnU-Net's), with the spacing in mm in the same (z, y, x) order,
and returns the label map and, on request, per-structure probabilities on the same array grid.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from ..errors import CancelledError, InputError
from ..models import ModelInfo


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report.

    Attributes:
        fraction: overall fraction done, 0 to 1.
        stage: "load", "preprocess", "predict", "postprocess", "write" or "done".
        message: one human-readable line.
        input: the file being processed, when there is one.
    """

    fraction: float
    stage: str
    message: str = ""
    input: str | None = None

    def as_dict(self) -> dict:
        return {"event": "progress", "fraction": round(self.fraction, 4), "stage": self.stage, "message": self.message, "input": self.input}


ProgressCallback = Callable[[ProgressEvent], None]


class CancelToken:
    """A thread-safe flag: call :meth:`cancel` from anywhere (a signal handler, a UI button)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("segmentation cancelled; no output was written.")


#: The crop modes of the fast engines (see :class:`InferenceSettings`).
CROP_MODES = ("fast", "exact", "off")


@dataclass(frozen=True)
class InferenceSettings:
    """How to run the network. Defaults equal SCT's ``sct_deepseg`` for SCIseg.

    Attributes:
        device: "auto" (cuda, then mps, then cpu), "cuda"/"gpu", "mps" or "cpu".
        folds: folds to ensemble; None = every fold present in the model.
        step_size: sliding-window step as a fraction of the patch (0.5 = half-patch overlap).
        tta: test-time augmentation by mirroring (nnU-Net's ``use_mirroring``); off in SCT.
        threads: CPU threads for torch (None = torch's default).
        use_gaussian: gaussian weighting of overlapping tiles.
        engine: "reference" (SCT's exact call: torch fp32, nnU-Net's predictor as is), "auto" (the fastest
            that works here: CUDA autocast, OpenVINO bf16/fp32 on a CPU, cropped to the cord), "openvino",
            "openvino-int8" (the int8 version made by ``sciseg models quantize``), "torch-bf16" or "cuda" (each
            cropped to the cord unless ``crop`` is "off").
        crop: fast engines only (the reference never crops): "fast" runs the full-resolution pass only on
            tiles around the cord found by a cheap first pass, one tile along an axis where a reference tile holds it;
            "exact" only on the reference's own tiles around the cord (the logits within 10 mm of the cord
            are the reference's, up to the runtime's precision); "off" the whole image (see :mod:`.cropped`).
    """

    device: str = "auto"
    folds: tuple[int | str, ...] | None = None
    step_size: float = 0.5
    tta: bool = False
    threads: int | None = None
    use_gaussian: bool = True
    engine: str = "reference"
    crop: str = "fast"

    def __post_init__(self) -> None:
        if self.crop not in CROP_MODES:
            raise InputError(f"unknown crop mode '{self.crop}'; use one of {', '.join(CROP_MODES)}.")

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "folds": list(self.folds) if self.folds is not None else None,
            "step_size": self.step_size,
            "tta": self.tta,
            "threads": self.threads,
            "use_gaussian": self.use_gaussian,
            "engine": self.engine,
            "crop": self.crop,
        }


@dataclass
class NetworkOutput:
    """What the network returns on the model-orientation grid, arrays indexed (z, y, x)."""

    label_map: np.ndarray  # uint8 labels after regions_class_order (0/1/2 for SCIseg)
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)  # structure -> float32 in [0, 1]
    device: str = "cpu"
    run: dict = field(default_factory=dict)  # what actually ran: engine, precision, crop box, fallbacks


class Engine(Protocol):
    """The interface the segmentation pipeline needs from a network runtime."""

    model: ModelInfo

    def predict(
        self,
        image_zyx: np.ndarray,
        spacing_zyx_mm: tuple[float, float, float],
        *,
        want_probabilities: bool = False,
        on_progress: Callable[[float, str], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> NetworkOutput: ...


def available_devices() -> dict[str, str]:
    """Devices torch can use here, with a description (``{"cuda": "NVIDIA ...", "cpu": "..."}``)."""
    import torch

    devices: dict[str, str] = {}
    if torch.cuda.is_available():
        devices["cuda"] = torch.cuda.get_device_name(0)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices["mps"] = "Apple Metal (MPS)"
    devices["cpu"] = f"CPU ({os.cpu_count()} cores)"
    return devices


def choose_device(name: str):
    """Map a device name to a ``torch.device``; "auto" prefers cuda, then mps, then cpu."""
    import torch

    wanted = name.lower()
    present = available_devices()
    if wanted == "auto":
        wanted = next(d for d in ("cuda", "mps", "cpu") if d in present)
    if wanted == "gpu":
        wanted = "cuda"
    if wanted not in ("cuda", "mps", "cpu"):
        raise InputError(f"unknown device '{name}'; use auto, cuda (gpu), mps or cpu.")
    if wanted not in present:
        raise InputError(f"device '{name}' is not available here (available: {', '.join(present)}); use --device cpu.")
    return torch.device(wanted)


def prepare_nnunet_environment() -> None:
    """nnunetv2 warns at import when its folders are unset; inference needs none of them."""
    placeholder = os.path.join(tempfile.gettempdir(), "sciseg-nnunet-unused")
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(variable, placeholder)
