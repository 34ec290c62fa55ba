"""The fast engine: nnU-Net's preprocessing and tiling with a faster tile runtime, cropped to the cord.

Same weights, same preprocessing (resampling, z-score), same sliding window and gaussian weighting
as the reference; what changes is the tile runtime (OpenVINO bf16/fp32, torch bf16, CUDA autocast),
and the optional two-pass crop (:mod:`.cropped`). The way back to the input grid is nnU-Net's own
(logits resampled, then thresholded): taking the label map on the network grid first and resampling
labels was measured to change the cord mask (Dice 0.96 on a 0.8 mm scan), so it is not used.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import numpy as np

from ..errors import CancelledError, InputError
from ..models import ModelInfo
from .base import CancelToken, InferenceSettings, NetworkOutput, choose_device
from .cropped import Locator, locate_cord, network_strides, superior_inferior_axis, two_pass_logits
from .openvino_cache import CompiledModelCache, default_cache_root
from .predictor import NnUNetEngine, TileProgress, build_predictor, preprocess, structure_probabilities


class FastEngine:
    """One fast runtime behind the :class:`~.base.Engine` interface.

    Args:
        model: the model.
        settings: step, folds, threads, crop (``settings.engine`` is not read here).
        runtime: "openvino", "torch" (CPU: bf16 autocast, or fp32 as the reference) or "cuda" (autocast on the GPU).
        precision: "bf16", "fp32" (OpenVINO, torch), "int8" (OpenVINO: the model's int8 entry) or "fp16" (CUDA only).
        cache: compiled-model cache for OpenVINO (default :func:`default_cache_root`).
        int8: with "int8", the entry to run (:class:`~.int8.Int8Entry`; default: the model's published entry, which
            must have been quantized from the weights the model has now).
    """

    def __init__(self, model: ModelInfo, settings: InferenceSettings, runtime: str, precision: str,
                 cache: CompiledModelCache | None = None, int8=None) -> None:
        import torch

        from .runtimes import AutocastNetwork, OpenVINONetwork

        self.model, self.settings, self.runtime, self.precision = model, settings, runtime, precision
        self.device = torch.device("cuda") if runtime == "cuda" else torch.device("cpu")
        self._predictor, folds = build_predictor(model, settings, self.device, on_device=runtime == "cuda")
        predictor = self._predictor
        self.cache_status: list[str] = []
        cache = cache or CompiledModelCache(default_cache_root())
        if precision == "int8":
            if runtime != "openvino":
                raise ValueError("int8 runs only in OpenVINO")
            int8 = int8 or stored_int8(model, folds, cache.root)
        self.floating_precision: str | None = None
        if runtime == "openvino":
            channels = len(predictor.dataset_json["channel_names"])
            network = OpenVINONetwork(
                predictor.network, predictor.list_of_parameters, [str(f) for f in folds],
                [model.results_folder / f"fold_{f}" / model.checkpoint_name for f in folds],
                (1, channels, *predictor.configuration_manager.patch_size), precision,
                cache, settings.threads, str(model.results_folder.resolve()),
                strides=network_strides(predictor) if settings.crop == "fast" else None, int8=int8)
            self.cache_status = network.cache_status
            self.floating_precision = network.floating_precision
        elif runtime == "torch" and precision == "fp32":
            network = predictor.network  # SCT's runtime: only the crop or the label resampling differ
        elif runtime == "torch":
            network = AutocastNetwork(predictor.network, "cpu", torch.bfloat16)
        elif runtime == "cuda":
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
            network = AutocastNetwork(predictor.network.to(self.device), "cuda", dtype)
        else:
            raise ValueError(f"unknown runtime {runtime}")
        predictor.network = network
        self._progress = TileProgress()
        predictor.tile_hook = self._progress.tile
        predictor.slicers_hook = lambda n: self._progress.add_planned(n)
        #: The preprocessed grid's S-I axis (None if the model orientation has no S/I letter): pass 1's central window.
        self.along_axis = superior_inferior_axis(model.orientation, predictor.plans_manager.transpose_forward)
        #: The network's total strides when the runtime runs tiles of any size (the fast crop's fitted tiles), else None.
        self.strides = network_strides(predictor) if getattr(network, "any_shape", True) else None
        #: Pass 1 of the crop (:func:`~.cropped.locate_cord`); a benchmark may swap it to time random weights on a real box.
        self.locate: Locator = functools.partial(locate_cord, along_axis=self.along_axis,
                                                 strides=self.strides if settings.crop == "fast" else None)
        #: False only to time random weights (see :func:`~.cropped.two_pass_logits`).
        self.check_crop_edges = True

    @property
    def run_info(self) -> dict:
        info = {"engine": self.runtime, "runtime": self.runtime, "precision": self.precision, "device": self.device.type,
                "crop": self.settings.crop}
        if self.precision == "int8":
            info["int8_floating_layers"] = self.floating_precision
        return info

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
        predictor = self._predictor
        self._progress.start(on_progress, cancel)
        try:
            data, properties = preprocess(predictor, image_zyx, spacing_zyx_mm)
            run = dict(self.run_info)
            if self.settings.crop != "off":
                cropped = two_pass_logits(predictor, data, locate=self.locate, check_edges=self.check_crop_edges,
                                          single_tile_axes=self.settings.crop == "fast", along_axis=self.along_axis)
                logits = cropped.logits
                box = self._box_on_input(cropped.box, properties, tuple(int(s) for s in data.shape[1:]))
                run.update(crop_note=cropped.note, crop_box=box)
            else:
                logits = predictor.predict_logits_from_preprocessed_data(data)
                run.update(crop_note="crop off", crop_box=None)
            del data
        finally:
            self._progress.start(None, None)
        if cancel is not None:
            cancel.raise_if_cancelled()
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        output = NetworkOutput(label_map=np.zeros(1, np.uint8), device=self.device.type, run=run)
        result = convert_predicted_logits_to_segmentation_with_correct_shape(  # nnU-Net's own way back to the input grid
            logits.cpu(), predictor.plans_manager, predictor.configuration_manager, predictor.label_manager,
            properties, return_probabilities=want_probabilities)
        labels, stack = result if want_probabilities else (result, None)
        if stack is not None:
            output.probabilities = structure_probabilities(self.model, np.asarray(stack, dtype=np.float32))
        output.label_map = np.asarray(labels, dtype=np.uint8)
        return output

    def _box_on_input(self, box, properties: dict, network_shape: tuple[int, ...]) -> dict | None:
        """The pass-2 box mapped to the input array (model orientation, (z, y, x) voxels, stop exclusive)."""
        if box is None:
            return None
        plans = self._predictor.plans_manager
        target = properties["shape_after_cropping_and_before_resampling"]
        offset = [start for start, _ in properties["bbox_used_for_cropping"]]
        starts, stops = [], []
        for axis, (start, stop) in enumerate(box):
            scale = target[axis] / network_shape[axis]
            starts.append(int(np.floor(start * scale)) + offset[axis])
            stops.append(int(np.ceil(stop * scale)) + offset[axis])
        order = plans.transpose_backward
        return {"start_zyx": [starts[i] for i in order], "stop_zyx": [stops[i] for i in order],
                "grid": "model-orientation input array, voxels (z, y, x), stop exclusive"}


def stored_int8(model: ModelInfo, folds, root):
    """The model's published int8 entry for ``folds``; refused (one sentence) when absent or of other weights."""
    from .int8 import int8_gate, read_entry, weights_by_fold, weights_mismatch

    entry = read_entry(root, model)
    if entry is None:
        raise InputError(f"model '{model.name}' has no int8 version; make one with `sciseg models quantize {model.name} "
                         "--scans SCAN ...` (it measures its agreement with the reference).")
    weights = weights_by_fold(model, folds)
    mismatch = weights_mismatch(entry.report, weights)
    if mismatch:  # other weights or folds: these int8 files are not this model's
        raise InputError(f"the int8 version of model '{model.name}' cannot run: {mismatch}")
    usable, why = int8_gate(entry.report, weights)
    if not usable:  # failed or unmeasured agreement: run by name, said loudly
        warnings.warn(f"int8 engine of model '{model.name}': {why}", RuntimeWarning, stacklevel=3)
    return entry


class FallbackEngine:
    """A fast engine that falls back to the reference (with a warning) when it fails on an image."""

    def __init__(self, fast: FastEngine, fallbacks: list[str], notes: dict | None = None) -> None:
        self.model = fast.model
        self.fast: FastEngine | None = fast
        self.fallbacks = list(fallbacks)
        #: Recorded with every output's ``run`` (e.g. ``int8_note``: why ``auto`` did or did not run int8).
        self.notes = dict(notes or {})
        self._reference: NnUNetEngine | None = None

    @property
    def device(self):
        return self.fast.device if self.fast is not None else choose_device("cpu")

    def predict(self, image_zyx, spacing_zyx_mm, *, want_probabilities=False, on_progress=None, cancel=None) -> NetworkOutput:
        if self.fast is not None:
            try:
                output = self.fast.predict(image_zyx, spacing_zyx_mm, want_probabilities=want_probabilities,
                                           on_progress=on_progress, cancel=cancel)
                output.run["fallbacks"] = list(self.fallbacks)
                output.run.update(self.notes)
                return output
            except (CancelledError, InputError, MemoryError):
                raise
            except Exception as error:  # noqa: BLE001 - any failure of the fast path: run SCT's call instead
                message = f"the {self.fast.runtime} {self.fast.precision} engine failed ({error}); using the reference engine."
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                self.fallbacks.append(message)
                settings = self.fast.settings
                self.fast = None
                self._reference = NnUNetEngine(self.model, InferenceSettings(
                    device="cpu", folds=settings.folds, step_size=settings.step_size, tta=settings.tta,
                    threads=settings.threads, use_gaussian=settings.use_gaussian, engine="reference"))
        assert self._reference is not None
        output = self._reference.predict(image_zyx, spacing_zyx_mm, want_probabilities=want_probabilities,
                                         on_progress=on_progress, cancel=cancel)
        output.run["fallbacks"] = list(self.fallbacks)
        output.run.update(self.notes)
        return output
