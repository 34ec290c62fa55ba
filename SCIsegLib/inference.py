"""The network call: nnU-Net v2's predictor with device choice, progress events and cancellation.

:class:`NnUNetEngine` is the only place that imports torch and nnunetv2. It takes an image
array already in the model orientation, indexed **(z, y, x)** (SimpleITK's array order, which is
nnU-Net's), with the spacing in mm in the same (z, y, x) order, and returns the label map and,
on request, per-structure probabilities on the same array grid. Anything with the same
``predict`` method (see :class:`Engine`) can replace it: a faster runtime, or a two-pass run that
crops around the cord first.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from .errors import CancelledError, InputError
from .models import ModelInfo


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
    """

    device: str = "auto"
    folds: tuple[int | str, ...] | None = None
    step_size: float = 0.5
    tta: bool = False
    threads: int | None = None
    use_gaussian: bool = True

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "folds": list(self.folds) if self.folds is not None else None,
            "step_size": self.step_size,
            "tta": self.tta,
            "threads": self.threads,
            "use_gaussian": self.use_gaussian,
        }


@dataclass
class NetworkOutput:
    """What the network returns on the model-orientation grid, arrays indexed (z, y, x)."""

    label_map: np.ndarray  # uint8 labels after regions_class_order (0/1/2 for SCIseg)
    probabilities: dict[str, np.ndarray] = field(default_factory=dict)  # structure -> float32 in [0, 1]
    device: str = "cpu"


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


def _prepare_nnunet_environment() -> None:
    """nnunetv2 warns at import when its folders are unset; inference needs none of them."""
    placeholder = os.path.join(tempfile.gettempdir(), "sciseg-nnunet-unused")
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(variable, placeholder)


class NnUNetEngine:
    """nnU-Net v2's ``nnUNetPredictor``, in process, with tile-level progress and cancellation."""

    def __init__(self, model: ModelInfo, settings: InferenceSettings = InferenceSettings()) -> None:
        _prepare_nnunet_environment()
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        self.model = model
        self.settings = settings
        self.device = choose_device(settings.device)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        folds = list(settings.folds) if settings.folds is not None else list(model.folds)
        unknown = [f for f in folds if f not in model.folds and str(f) not in map(str, model.folds)]
        if unknown:
            raise InputError(f"model '{model.name}' has no fold {unknown[0]} (it has {model.folds}).")
        engine = self

        class ObservedPredictor(nnUNetPredictor):
            """nnUNetPredictor that reports every sliding-window tile and can stop between tiles."""

            def _internal_get_sliding_window_slicers(self, image_size):
                slicers = super()._internal_get_sliding_window_slicers(image_size)
                engine._tiles_per_fold = len(slicers)
                return slicers

            def _internal_maybe_mirror_and_predict(self, x):
                engine._on_tile()
                return super()._internal_maybe_mirror_and_predict(x)

        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints notes about the device on stdout
            self._predictor = ObservedPredictor(
                tile_step_size=settings.step_size,
                use_gaussian=settings.use_gaussian,
                use_mirroring=settings.tta,
                perform_everything_on_device=self.device.type == "cuda",
                device=self.device,
                verbose=False,
                verbose_preprocessing=False,
                allow_tqdm=False,
            )
            self._predictor.initialize_from_trained_model_folder(
                str(model.results_folder), use_folds=tuple(folds), checkpoint_name=model.checkpoint_name
            )
        self._n_folds = len(folds)
        self._tiles_per_fold = 0
        self._tiles_done = 0
        self._on_progress: Callable[[float, str], None] | None = None
        self._cancel: CancelToken | None = None

    def _on_tile(self) -> None:
        if self._cancel is not None:
            self._cancel.raise_if_cancelled()
        self._tiles_done += 1
        total = max(self._tiles_per_fold * self._n_folds, 1)
        if self._on_progress is not None:
            self._on_progress(min(self._tiles_done / total, 1.0), f"tile {self._tiles_done}/{total}")

    def predict(
        self,
        image_zyx: np.ndarray,
        spacing_zyx_mm: tuple[float, float, float],
        *,
        want_probabilities: bool = False,
        on_progress: Callable[[float, str], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> NetworkOutput:
        """Segment one image (model orientation, (z, y, x), spacing in mm in the same order)."""
        self._tiles_done, self._tiles_per_fold = 0, 0
        self._on_progress, self._cancel = on_progress, cancel
        data = np.ascontiguousarray(image_zyx, dtype=np.float32)[None]
        try:
            result = self._predictor.predict_single_npy_array(
                data, {"spacing": [float(s) for s in spacing_zyx_mm]}, None, None, want_probabilities
            )
        finally:
            self._on_progress, self._cancel = None, None
        if cancel is not None:
            cancel.raise_if_cancelled()
        label_map, probability_stack = (result if want_probabilities else (result, None))
        output = NetworkOutput(label_map=np.asarray(label_map, dtype=np.uint8), device=self.device.type)
        if probability_stack is not None:
            output.probabilities = self._structure_probabilities(np.asarray(probability_stack, dtype=np.float32))
        return output

    def _structure_probabilities(self, stack: np.ndarray) -> dict[str, np.ndarray]:
        """Regions: one sigmoid channel per structure, in label order. Labels: sum of softmax channels."""
        structures = self.model.structures
        if self.model.is_region_based:
            return {name: stack[index] for index, name in enumerate(structures)}
        return {name: stack[values].sum(axis=0) for name, values in structures.items()}
