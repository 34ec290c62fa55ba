"""nnU-Net v2's predictor, set up safely, and the reference engine (SCT's exact call).

:class:`SafePredictor` is ``nnUNetPredictor`` with two changes that do not touch the numbers:
checkpoints are read only through :func:`SCIsegLib.checkpoints.load_checkpoint` (``weights_only=True``;
nnU-Net's own set-up uses ``torch.load(weights_only=False)``), and every sliding-window tile calls a
hook (progress, cancellation). :class:`NnUNetEngine` is the reference: ``predict_single_npy_array``
with torch fp32, tile step 0.5, gaussian weighting, no mirroring, as ``sct_deepseg`` calls it.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import itertools
from pathlib import Path
from typing import Callable

import numpy as np

from ..checkpoints import check_plans_safe, load_checkpoint
from ..errors import InputError
from ..models import ModelInfo
from .base import CancelToken, InferenceSettings, NetworkOutput, choose_device, prepare_nnunet_environment


def _predictor_class():
    """The nnUNetPredictor subclass (built on first use: nnunetv2 and torch import slowly)."""
    prepare_nnunet_environment()
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    class SafePredictor(nnUNetPredictor):
        """nnUNetPredictor that loads checkpoints with ``weights_only=True`` and reports every tile."""

        tile_hook: Callable[[], None] | None = None
        slicers_hook: Callable[[int], None] | None = None
        #: Tile start positions (voxels) per axis to run instead of nnU-Net's sliding window (see :mod:`.cropped`).
        tile_positions: list[list[int]] | None = None

        def initialize_from_trained_model_folder(self, model_training_output_dir, use_folds, checkpoint_name="checkpoint_final.pth"):
            """nnU-Net's set-up with :func:`load_checkpoint` in place of ``torch.load(weights_only=False)``."""
            folder = Path(model_training_output_dir)
            if use_folds is None:
                use_folds = nnUNetPredictor.auto_detect_available_folds(str(folder), checkpoint_name)
            dataset_json = load_json(str(folder / "dataset.json"))
            plans = load_json(str(folder / "plans.json"))
            check_plans_safe(plans, folder / "plans.json", dataset_json)  # read again here: checked again here
            plans_manager = PlansManager(plans)
            parameters = []
            for index, fold in enumerate([use_folds] if isinstance(use_folds, str) else use_folds):
                checkpoint = load_checkpoint(folder / f"fold_{fold}" / checkpoint_name)
                if index == 0:
                    trainer_name = checkpoint["trainer_name"]
                    configuration_name = checkpoint["init_args"]["configuration"]
                    mirror_axes = checkpoint.get("inference_allowed_mirroring_axes")
                parameters.append(checkpoint["network_weights"])
            configuration_manager = plans_manager.get_configuration(configuration_name)
            n_inputs = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
            n_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
            if trainer_name == "nnUNetTrainer":
                network = default_trainer_network(configuration_manager, n_inputs, n_outputs)
                network.load_state_dict(parameters[0])
                self.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                           trainer_name, mirror_axes)
                return
            trainer_class = recursive_find_trainer_class_by_name(trainer_name)
            if trainer_class is None:
                raise InputError(f"the model's trainer '{trainer_name}' is not part of nnU-Net; use a model trained with nnU-Net v2's trainers.")
            if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
                network = trainer_class.build_network_architecture(
                    plans_manager, configuration_manager, n_inputs, n_outputs, enable_deep_supervision=False)
            else:  # nnU-Net's older signature
                network = trainer_class.build_network_architecture(
                    configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
                    configuration_manager.network_arch_init_kwargs_req_import, n_inputs, n_outputs,
                    enable_deep_supervision=False)
            network.load_state_dict(parameters[0])
            self.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                       trainer_name, mirror_axes)

        def _internal_get_sliding_window_slicers(self, image_size):
            if self.tile_positions is not None:
                patch = self.configuration_manager.patch_size
                slicers = [(slice(None), *(slice(start, start + tile) for start, tile in zip(starts, patch, strict=True)))
                           for starts in itertools.product(*self.tile_positions)]
            else:
                slicers = super()._internal_get_sliding_window_slicers(image_size)
            if self.slicers_hook is not None:
                self.slicers_hook(len(slicers))
            return slicers

        def _internal_maybe_mirror_and_predict(self, x):
            if self.tile_hook is not None:
                self.tile_hook()
            return super()._internal_maybe_mirror_and_predict(x)

    return SafePredictor


def default_trainer_network(configuration_manager, n_inputs: int, n_outputs: int):
    """The network ``nnUNetTrainer.build_network_architecture`` builds for inference (no deep supervision).

    The same call as the trainer's own, without importing the trainer's module: it imports plotting and
    scikit-learn (seaborn, matplotlib, sklearn; about 1.2 s of a cold start) that inference never uses.
    """
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(
        configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import, n_inputs, n_outputs, allow_init=True,
        deep_supervision=False)


def preprocess(predictor, image_zyx: np.ndarray, spacing_zyx_mm) -> tuple:
    """nnU-Net's preprocessing of one image (model orientation, (z, y, x); spacing in mm, same order).

    Returns (data, properties): data (channels, z, y, x) on the network's grid, and nnU-Net's properties
    (cropping box, shapes) needed to map results back to the input grid.
    """
    from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy

    adapter = PreprocessAdapterFromNpy(
        [np.ascontiguousarray(image_zyx, dtype=np.float32)[None]], [None],
        [{"spacing": [float(s) for s in spacing_zyx_mm]}], [None], predictor.plans_manager,
        predictor.dataset_json, predictor.configuration_manager, num_threads_in_multithreaded=1)
    prepared = next(adapter)
    return prepared["data"], prepared["data_properties"]


def build_predictor(model: ModelInfo, settings: InferenceSettings, device, *, on_device: bool):
    """A :class:`SafePredictor` for ``model`` with SCT's settings (step, gaussian, mirroring from ``settings``)."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    folds = list(settings.folds) if settings.folds is not None else list(model.folds)
    unknown = [f for f in folds if f not in model.folds and str(f) not in map(str, model.folds)]
    if unknown:
        raise InputError(f"model '{model.name}' has no fold {unknown[0]} (it has {model.folds}).")
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net prints notes about the device on stdout
        predictor = _predictor_class()(
            tile_step_size=settings.step_size,
            use_gaussian=settings.use_gaussian,
            use_mirroring=settings.tta,
            perform_everything_on_device=on_device,
            device=device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
        predictor.initialize_from_trained_model_folder(
            str(model.results_folder), use_folds=tuple(folds), checkpoint_name=model.checkpoint_name)
    return predictor, folds


class TileProgress:
    """Counts sliding-window tiles over one ``predict`` call, reports them and checks for cancellation."""

    def __init__(self) -> None:
        self.planned = 0
        self.done = 0
        self.on_progress: Callable[[float, str], None] | None = None
        self.cancel: CancelToken | None = None

    def start(self, on_progress: Callable[[float, str], None] | None, cancel: CancelToken | None) -> None:
        self.planned, self.done, self.on_progress, self.cancel = 0, 0, on_progress, cancel

    def add_planned(self, tiles: int) -> None:
        self.planned += tiles

    def tile(self) -> None:
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
        self.done += 1
        if self.on_progress is not None:
            total = max(self.planned, self.done, 1)
            self.on_progress(min(self.done / total, 1.0), f"tile {self.done}/{total}")


def structure_probabilities(model: ModelInfo, stack: np.ndarray) -> dict[str, np.ndarray]:
    """Regions: one sigmoid channel per structure, in label order. Labels: sum of softmax channels."""
    structures = model.structures
    if model.is_region_based:
        return {name: stack[index] for index, name in enumerate(structures)}
    return {name: stack[values].sum(axis=0) for name, values in structures.items()}


class NnUNetEngine:
    """The reference engine: nnU-Net v2's ``nnUNetPredictor`` exactly as SCT calls it, in process."""

    def __init__(self, model: ModelInfo, settings: InferenceSettings | None = None) -> None:
        settings = settings or InferenceSettings()
        self.model = model
        self.settings = settings
        self.device = choose_device(settings.device)
        self._predictor, folds = build_predictor(model, settings, self.device, on_device=self.device.type == "cuda")
        self._n_folds = len(folds)
        self._progress = TileProgress()
        self._predictor.tile_hook = self._progress.tile
        self._predictor.slicers_hook = lambda n: self._progress.add_planned(n)

    @property
    def run_info(self) -> dict:
        """What this engine runs (the sidecar's ``Engine``): SCT's call; nnU-Net autocasts to fp16 on CUDA."""
        return {"engine": "reference", "runtime": "torch", "precision": "fp16-autocast" if self.device.type == "cuda" else "fp32",
                "device": self.device.type, "crop_box": None}

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
        self._progress.start(on_progress, cancel)
        data = np.ascontiguousarray(image_zyx, dtype=np.float32)[None]
        try:
            result = self._predictor.predict_single_npy_array(
                data, {"spacing": [float(s) for s in spacing_zyx_mm]}, None, None, want_probabilities
            )
        finally:
            self._progress.start(None, None)
        if cancel is not None:
            cancel.raise_if_cancelled()
        label_map, probability_stack = (result if want_probabilities else (result, None))
        output = NetworkOutput(label_map=np.asarray(label_map, dtype=np.uint8), device=self.device.type, run=self.run_info)
        if probability_stack is not None:
            output.probabilities = structure_probabilities(self.model, np.asarray(probability_stack, dtype=np.float32))
        return output
