"""Fast runtimes for one network tile, as drop-in replacements of the predictor's torch network.

nnU-Net's sliding window calls ``predictor.network(tile)`` with a float32 tensor of shape
(1, channels, *patch_size) (z, y, x of the network grid) and loads each fold's weights with
``network.load_state_dict``. The wrappers here keep that contract, so nnU-Net's tiling, gaussian
weighting, mirroring and fold averaging stay exactly as in the reference:

- :class:`AutocastNetwork`: torch with bf16 (CPU, channels-last) or fp16/bf16 (CUDA) autocast.
- :class:`OpenVINONetwork`: one OpenVINO compiled model per fold, bf16 or fp32, from the cache, or int8 from
  the int8 store (:mod:`.int8`); with the network's strides also any other tile size (the fast crop's fitted
  first-pass tile), compiled on first use.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch

from ..hashing import file_sha256
from .cpu import cpu_identity
from .openvino_cache import CONVERTER, CacheKey, CompiledModelCache


class AutocastNetwork(torch.nn.Module):
    """``network`` run under ``torch.autocast(device_type, dtype)``; float32 logits out.

    On the CPU the input is put in channels-last-3d memory order (oneDNN's fast path for bf16).
    """

    def __init__(self, network: torch.nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = network
        self.device_type = device_type
        self.dtype = dtype
        if device_type == "cpu":
            self.inner.to(memory_format=torch.channels_last_3d)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102 - nnU-Net loads folds
        return self.inner.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.device_type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.inner(x).float().contiguous()


def _decompositions(torch_ops_to_keep: list) -> object:
    """torch.export's decomposition table less OpenVINO's own list of ops it converts whole, less ``torch_ops_to_keep``."""
    from openvino.frontend.pytorch.torchdynamo.export_decompositions import ops_to_not_decompose
    from torch.export.decomp_utils import CustomDecompTable

    table = CustomDecompTable()
    for op in [*ops_to_not_decompose(), *torch_ops_to_keep]:
        if op in table:
            table.pop(op)
    return table


def convert_network(ov, network: torch.nn.Module, input_shape: tuple[int, ...], strides: tuple[int, ...] | None = None):
    """An ``openvino.Model`` of ``network`` (eval mode) for the input shape (batch, channels, z, y, x) in voxels.

    Through ``torch.export.export`` (the path torch keeps; ``ov.convert_model(network, example_input=...)``
    traces with ``torch.jit.trace``, which torch deprecates). The exported program is decomposed here, with
    OpenVINO's own table (what ``ov.convert_model`` of an exported program would do) but with
    ``aten.instance_norm`` kept whole: OpenVINO converts it to one MVN operation. Decomposed (torch's
    ``_native_batch_norm_legit``), each of nnU-Net's instance norms became three ReduceMean and a dozen
    element-wise operations that the CPU plugin does not fuse, with layout reorders around them (a
    192x256x48 tile of the SCIseg-sized network: 1.82 s against 1.60 s in bf16), and that NNCF quantized
    (the variance's square in int8: ``benchmarks/inference_speed.md``, session 10). torch's decomposition and OpenVINO's reader of
    the program still call a pytree check that torch marks deprecated (one ``FutureWarning`` per
    conversion, not ours to fix): that one message is silenced here, nothing else.

    ``strides`` (the network's total downsampling per spatial axis): the spatial sizes are left free, any
    multiple of them (``torch.export.Dim``), so that the model can be reshaped to any such tile and compiled.
    """
    from openvino.frontend.pytorch.fx_decoder import TorchFXPythonDecoder

    dynamic = None
    if strides is not None:
        from torch.export import Dim

        dynamic = {"x": {2 + axis: stride * Dim(f"tiles_{axis}", min=1, max=max(2, 4096 // stride))
                         for axis, stride in enumerate(strides)}}
    with torch.no_grad():
        program = torch.export.export(network, (torch.zeros(input_shape),), dynamic_shapes=dynamic)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
        program = program.run_decompositions(_decompositions([torch.ops.aten.instance_norm.default]))
        return ov.convert_model(TorchFXPythonDecoder(program.module(), dynamic_shapes=True))


class OpenVINONetwork(torch.nn.Module):
    """OpenVINO compiled models (one per fold) behind the torch network's interface.

    Args:
        network: the nnU-Net torch network (weights of every fold are loaded into it in turn for conversion).
        fold_parameters: the state dict of each fold, in the predictor's ``list_of_parameters`` order.
        fold_names: the fold names, same order.
        checkpoint_files: the checkpoint file of each fold (its sha256 keys the cache).
        input_shape: (1, channels, z, y, x), the patch in voxels.
        precision: "bf16", "fp32" or "int8" (the quantized network of ``int8``; its layers left in floating
            point run in bf16 where the CPU has native bf16, else fp32).
        cache: where compiled models are kept.
        threads: OpenVINO inference threads (None = all cores).
        model_folder: the model's results folder (names the cache entries).
        strides: the network's total strides per spatial axis (:func:`~.cropped.network_strides`): the model is
            also kept with its tile size free (converted once, cached as IR), and a tile of another size (a
            multiple of them: the fast crop's fitted tiles) is compiled for that size on first use, in memory
            (the last :data:`SHAPES_KEPT` sizes). None, or a network that cannot be converted so: the plan's tile
            only (``any_shape`` False).
        int8: the int8 entry (:class:`~.int8.Int8Entry`) when ``precision`` is "int8".
    """

    #: Compiled models of other tile sizes kept in memory (each holds its own buffers).
    SHAPES_KEPT = 4

    def __init__(
        self,
        network: torch.nn.Module,
        fold_parameters: list[dict],
        fold_names: list[str],
        checkpoint_files: list[Path],
        input_shape: tuple[int, ...],
        precision: str,
        cache: CompiledModelCache,
        threads: int | None = None,
        model_folder: str = "",
        strides: tuple[int, ...] | None = None,
        int8=None,
    ) -> None:
        super().__init__()
        from .openvino_quiet import import_openvino

        ov = import_openvino()  # the converter's telemetry off: nothing leaves the machine

        core = ov.Core()
        if precision == "int8" and int8 is None:
            raise ValueError("the int8 precision needs an int8 entry")
        floating = precision
        if precision == "int8":
            from .cpu import has_native_bf16, read_cpu_flags

            floating = "bf16" if has_native_bf16(read_cpu_flags()) else "fp32"
        config: dict = {"INFERENCE_PRECISION_HINT": "bf16" if floating == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.cache_status: list[str] = []
        self._compiled: list = []
        self._free: list = []  # per fold: the model with its tile size free, or None
        #: Per fold, how the model with a free tile size was obtained: "cached", "built", "rebuilt" or "none".
        self.free_status: list[str] = []
        #: Per fold, the identity of the fp32 IR with a free tile size (:meth:`~.openvino_cache.CompiledModelCache.ir_identity`).
        self.free_identity: list[dict | None] = []
        self._by_shape: dict[tuple, object] = {}
        self._core, self._config, self._input_shape = core, config, tuple(int(s) for s in input_shape)
        self._fold_parameters = fold_parameters
        network = network.float().eval()
        quantized = int8.read_models(core, fold_names) if precision == "int8" else [None] * len(fold_names)
        for parameters, fold, checkpoint, fold_int8 in zip(fold_parameters, fold_names, checkpoint_files, quantized, strict=True):
            weights = file_sha256(checkpoint)
            free, free_status, identity = None, "none", None
            converter = CONVERTER
            if fold_int8 is not None:  # the quantized network, its tile size free: reshaped to each tile
                free, free_status = fold_int8, "int8"
                converter = f"nncf int8 {int8.identity(fold)}"
            elif strides is not None:
                free_key = CacheKey(model_folder, weights, str(fold), (*input_shape[:2], *(-s for s in strides)), "fp32",
                                    cpu_identity(), ov.__version__, f"{CONVERTER}, free tile size")

                def convert(parameters: dict = parameters):
                    network.load_state_dict(parameters)
                    return convert_network(ov, network, tuple(input_shape), tuple(strides))

                try:
                    free, free_status = cache.load_or_build_model(free_key, core, convert)
                    identity = cache.ir_identity(free_key)
                except Exception as error:  # noqa: BLE001 - e.g. a custom network torch.export cannot free: the plan's tile only
                    warnings.warn(f"the network cannot run tiles of other sizes in OpenVINO ({error}); "
                                  "the fast crop runs the plan's tiles.", RuntimeWarning, stacklevel=2)
            self._free.append(free)
            self.free_identity.append(identity)
            self.free_status.append(free_status)
            key = CacheKey(model_folder, weights, str(fold), tuple(input_shape), precision, cpu_identity(), ov.__version__, converter)

            def build(parameters: dict = parameters, free=free) -> Callable:
                if free is not None:  # the same conversion, fixed to the plan's tile
                    fixed = free.clone()
                    fixed.reshape(list(input_shape))
                    return fixed
                network.load_state_dict(parameters)
                return convert_network(ov, network, tuple(input_shape))

            compiled, status = cache.load_or_build(key, core, config, build)
            self._compiled.append(compiled)
            self.cache_status.append(status)
        #: True when tiles of any size (multiples of the strides) can run.
        self.any_shape = strides is not None and all(free is not None for free in self._free)
        #: The OpenVINO precision hint of the layers in floating point ("bf16" or "fp32").
        self.floating_precision = floating
        network.load_state_dict(fold_parameters[0])
        self._current = 0

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102 - picks the fold
        for index, parameters in enumerate(self._fold_parameters):
            if parameters is state_dict:
                self._current = index
                return None
        raise ValueError("these weights were not compiled for OpenVINO")

    def _compiled_for(self, shape: tuple[int, ...]):
        """The compiled model of the current fold for an input of ``shape`` (batch, channels, z, y, x)."""
        if shape == self._input_shape or not self.any_shape:
            return self._compiled[self._current]
        key = (self._current, shape)
        compiled = self._by_shape.pop(key, None)
        if compiled is None:
            model = self._free[self._current].clone()
            model.reshape(list(shape))
            compiled = self._core.compile_model(model, "CPU", self._config)
            while len(self._by_shape) >= self.SHAPES_KEPT:
                self._by_shape.pop(next(iter(self._by_shape)))  # the least recently used
        self._by_shape[key] = compiled
        return compiled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self._compiled_for(tuple(int(s) for s in x.shape))(x.detach().cpu().numpy())[0]
        return torch.from_numpy(result.copy())
