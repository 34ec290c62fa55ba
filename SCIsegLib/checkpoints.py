"""Nothing in a model file runs code: checkpoints load without unpickling code, plans name only known parts.

A ``.pth`` checkpoint is a pickle: loaded with ``torch.load(weights_only=False)`` (as nnU-Net
does) it can call any Python function. :func:`load_checkpoint` guards it twice:

1. :func:`checkpoint_globals` reads the pickle's opcodes (``pickletools``, nothing is built) and lists
   every Python global it names; one outside :data:`ALLOWED_GLOBALS` (``builtins.eval``,
   ``os.system``, ``subprocess.Popen``...) refuses the file before torch sees it.
2. ``torch.load(weights_only=True)`` with only the numpy globals of nnU-Net's logs added to torch's
   own allow-list builds the objects.

What nnU-Net v2's ``nnUNetTrainer.save_checkpoint`` writes passes both: network weights, optimiser
and grad-scaler states, the ``logging`` dict of numpy scalars, ``_best_ema``, ``init_args`` (plans,
dataset.json, a ``torch.device``), the trainer name and mirroring axes.

nnU-Net also builds code from names in ``plans.json`` (no pickle involved): :func:`check_plans_safe` holds every
such name to an allow-list of what nnU-Net's own architectures and pipelines use. :func:`SCIsegLib.models.read_model`
calls it, so every way of loading a model (install, segment, queue, run, ``--model PATH``, finetune) is covered.
"""

from __future__ import annotations

import contextlib
import os
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ModelError


class UnsafeCheckpointError(ModelError):
    """A checkpoint holds objects outside the allow-list (it could run code when loaded)."""


#: ``module.name`` of every global an nnU-Net checkpoint may name (numpy 1 and numpy 2 spellings).
ALLOWED_GLOBALS = frozenset({
    "collections.OrderedDict",
    "torch.device",
    "torch.Size",
    "_codecs.encode",  # how protocol 2 pickles bytes (the payload of numpy scalars)
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.dtypes.Float64DType", "numpy.dtypes.Float32DType", "numpy.dtypes.Float16DType",
    "numpy.dtypes.Int64DType", "numpy.dtypes.Int32DType", "numpy.dtypes.Int16DType", "numpy.dtypes.Int8DType",
    "numpy.dtypes.UInt8DType", "numpy.dtypes.BoolDType",
})
#: torch's own tensor machinery: storages (``torch.FloatStorage``...), dtypes and ``torch._utils._rebuild_*``.
_TORCH_GLOBAL = re.compile(r"^torch\.(\w+Storage|float\d*|bfloat16|half|double|u?int\d+|bool|long)$|^torch\._utils\._rebuild_\w+$")


def is_allowed_global(name: str) -> bool:
    """Whether a checkpoint may name this global (:data:`ALLOWED_GLOBALS` or torch's tensor machinery)."""
    return name in ALLOWED_GLOBALS or bool(_TORCH_GLOBAL.match(name))


_UNKNOWN = "\0unknown"  # a global whose name the scan cannot know (a name built at load time): never allowed
_MARK = object()  # the pickle machine's mark on the simulated stack


def _pickle_globals(data: bytes) -> set[str]:
    """``module.name`` of every global a pickle names, read without unpickling by following the pickle machine.

    The stack and the memo are simulated opcode by opcode (``pickletools.genops``, the arity of each opcode
    from ``pickletools``' own table), so ``STACK_GLOBAL`` takes the two values really on top of the stack, not
    the last strings seen: decoy strings popped, memoised or stored in a list cannot hide a name. A name that is
    not a plain string at that point (built by a call, an extension code) is reported as unknown, never allowed.

    Raises:
        ValueError: the opcode stream is malformed (the stack runs empty, a mark is missing).
    """
    found: set[str] = set()
    stack: list[object] = []
    memo: dict[int, object] = {}

    def pop() -> object:
        if not stack or stack[-1] is _MARK:
            raise ValueError("the pickle pops more than it pushed")
        return stack.pop()

    def pop_to_mark() -> None:
        while stack and stack[-1] is not _MARK:
            stack.pop()
        if not stack:
            raise ValueError("the pickle has no mark where it needs one")
        stack.pop()

    for opcode, argument, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            module, _, attribute = str(argument).partition(" ")
            found.add(f"{module}.{attribute}")
            if name == "INST":
                pop_to_mark()
            stack.append(_UNKNOWN)
        elif name == "STACK_GLOBAL":
            attribute, module = pop(), pop()
            found.add(f"{module}.{attribute}" if isinstance(module, str) and isinstance(attribute, str) and
                      module != _UNKNOWN and attribute != _UNKNOWN else _UNKNOWN)
            stack.append(_UNKNOWN)
        elif name in ("EXT1", "EXT2", "EXT4"):  # a global through copyreg's extension registry
            found.add(_UNKNOWN)
            stack.append(_UNKNOWN)
        elif name in ("UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "STRING", "BINSTRING", "SHORT_BINSTRING"):
            stack.append(str(argument))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(argument)] = stack[-1] if stack else _UNKNOWN
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else _UNKNOWN
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(int(argument), _UNKNOWN))
        elif name == "DUP":
            stack.append(stack[-1] if stack else _UNKNOWN)
        else:  # every other opcode by its arity: pop what it takes (down to a mark), push what it makes
            before = opcode.stack_before
            if pickletools.markobject in before:
                pop_to_mark()
                for _ in before[:before.index(pickletools.markobject)]:
                    pop()
            else:
                for _ in before:
                    pop()
            for item in opcode.stack_after:
                stack.append(_MARK if item is pickletools.markobject else _UNKNOWN)
    return found


def checkpoint_globals(path: Path) -> set[str]:
    """Every Python global named by the pickles of a torch (zip format) checkpoint; nothing is unpickled.

    Raises:
        ModelError: the file is not a torch zip checkpoint or its pickle is malformed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith(".pkl")]
            if not pickles:
                raise ModelError(f"the checkpoint {path} holds no pickle; it is not a torch checkpoint. Reinstall the model.")
            found: set[str] = set()
            for member in pickles:
                found |= _pickle_globals(archive.read(member))
            return found
    except zipfile.BadZipFile:
        raise ModelError(
            f"the checkpoint {path} is not a torch checkpoint in zip format (truncated, or saved by torch < 1.6); "
            "reinstall the model.") from None
    except (ValueError, EOFError, IndexError) as error:  # pickletools on a malformed stream
        raise ModelError(f"the checkpoint {path} is damaged ({error}); reinstall the model.") from None
    except OSError as error:
        raise ModelError(f"the checkpoint {path} cannot be read ({error.strerror or error}); reinstall the model.") from None


#: Globals nnU-Net's preprocessed case properties (``<case>.pkl``: spacing, crop box, class locations as numpy
#: arrays, written by ``pickle`` at protocols 2-5) may name.
PROPERTIES_GLOBALS = frozenset(name for name in ALLOWED_GLOBALS if not name.startswith("torch.")) | {
    "numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer",  # protocol 5 arrays
    "builtins.bytes", "__builtin__.bytes", "builtins.set", "builtins.frozenset",
}


def check_pickle_file(path: Path, allowed: frozenset[str] = PROPERTIES_GLOBALS) -> None:
    """Refuse a plain pickle file that names a global outside ``allowed`` (read with :func:`_pickle_globals`).

    Raises:
        UnsafeCheckpointError: it names something else (it could run code when unpickled); nothing was unpickled.
        ModelError: it cannot be read or is not a pickle.
    """
    try:
        found = _pickle_globals(Path(path).read_bytes())
    except (ValueError, EOFError, IndexError) as error:
        raise ModelError(f"{path} is not a readable pickle ({error}); delete it and run again.") from None
    except OSError as error:
        raise ModelError(f"{path} cannot be read ({error.strerror or error}).") from None
    unsafe = sorted(name for name in found if name not in allowed)
    if unsafe:
        raise UnsafeCheckpointError(
            f"{path} refers to {', '.join(repr(n) for n in unsafe[:3])}, which could run code when unpickled, so it was "
            "not used; delete the folder it is in (or give an empty work folder) and run again.")


def _numpy_safe_globals() -> list[Any]:
    """numpy objects of nnU-Net's logs, each under the name the pickle uses (numpy 1 and 2 spellings)."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct, scalar
    allowed: list[Any] = [np.dtype, np.ndarray]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(scalar, f"{module}.scalar"), (_reconstruct, f"{module}._reconstruct")]
    allowed += [type(np.dtype(n)) for n in ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")]
    return allowed


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path`` as a dict, loaded with ``weights_only=True`` on the CPU.

    Raises:
        UnsafeCheckpointError: the file names Python objects outside the allow-list (nothing was built).
        ModelError: the file is not a readable nnU-Net checkpoint.
    """
    import pickle

    import torch

    path = Path(path)
    unsafe = sorted(name for name in checkpoint_globals(path) if not is_allowed_global(name))
    if unsafe:
        raise UnsafeCheckpointError(
            f"the checkpoint {path} refers to {', '.join(unsafe[:3])}, which could run code when loaded, so it was not "
            "loaded; use a checkpoint saved by nnU-Net v2 from a source you trust.")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"the checkpoint {path} holds Python objects that could run code when loaded, so it was not loaded "
            f"({str(error).splitlines()[0][:200]}); use a checkpoint saved by nnU-Net v2 from a source you trust.") from None
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError, ValueError, EOFError... on damaged files
        raise ModelError(f"the checkpoint {path} cannot be read ({type(error).__name__}: {str(error)[:200]}); "
                         "reinstall the model.") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ModelError(f"the checkpoint {path} is not an nnU-Net checkpoint (no 'network_weights'); reinstall the model.")
    if "trainer_name" in checkpoint:
        check_trainer_name(checkpoint["trainer_name"], path)
    init_args = checkpoint.get("init_args")
    if isinstance(init_args, dict) and init_args.get("plans") is not None:  # nnU-Net's resume rebuilds the trainer from these
        check_plans_safe(init_args["plans"], f"the checkpoint {path}", init_args.get("dataset_json"))
    return checkpoint


@contextlib.contextmanager
def weights_only_everywhere() -> Iterator[None]:
    """Within this block every ``torch.load``, nnU-Net's own ``weights_only=False`` calls included, loads with
    ``weights_only=True`` and the numpy globals of nnU-Net's logs (torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``).

    For nnU-Net methods that only take a file name (``nnUNetTrainer.load_checkpoint``: its dict path is broken
    in nnunetv2 2.8.1); call :func:`load_checkpoint` on the file first so that an unsafe one is refused
    with our message before nnU-Net opens it.
    """
    import torch

    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


class UnsafePlansError(ModelError):
    """A model's ``plans.json`` (or ``dataset.json``) names Python code nnU-Net would import and run."""


def _torch_nn_names(classes_by_module: dict[str, tuple[str, ...]]) -> frozenset[str]:
    """``torch.nn.X`` and ``torch.nn.modules.<module>.X`` for every class: the two spellings nnU-Net's plans use."""
    names = set()
    for module, classes in classes_by_module.items():
        for cls in classes:
            names |= {f"torch.nn.{cls}", f"torch.nn.modules.{module}.{cls}"}
    return frozenset(names)


#: Network classes ``network_class_name`` may name (``pydoc.locate`` imports and calls it): dynamic_network_architectures'
#: U-Nets (nnU-Net's plain and residual-encoder planners) and Primus (nnU-Net's transformer trainers).
ALLOWED_NETWORKS = frozenset({
    "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
    "dynamic_network_architectures.architectures.unet.ResidualUNet",
    "dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet",  # nnU-Net's old spelling
    "dynamic_network_architectures.architectures.primus.Primus",
})
#: What an entry of ``_kw_requires_import`` may name (``conv_op``, ``norm_op``, ``dropout_op``, ``nonlin``):
#: torch.nn's convolution, normalisation, dropout and non-linearity layers.
ALLOWED_LAYERS = _torch_nn_names({
    "conv": ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"),
    "instancenorm": ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"),
    "batchnorm": ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
    "normalization": ("GroupNorm", "LayerNorm"),
    "dropout": ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout"),
    "activation": ("LeakyReLU", "ReLU", "PReLU", "ELU", "GELU", "SiLU", "Mish", "Sigmoid", "Tanh", "Softplus",
                   "Hardswish"),
})
#: Names nnU-Net looks up inside its own packages (``recursive_find_python_class``: any attribute of any module
#: there, functions brought in by star imports included), per plans/dataset key.
ALLOWED_NNUNET_NAMES: dict[str, frozenset[str]] = {
    "preprocessor_name": frozenset({"DefaultPreprocessor"}),
    "normalization_schemes": frozenset({"ZScoreNormalization", "CTNormalization", "NoNormalization",
                                        "RescaleTo01Normalization", "RGBTo01Normalization"}),
    "resampling_fn": frozenset({"resample_data_or_seg_to_shape", "resample_data_or_seg_to_spacing",
                                "resample_torch_fornnunet", "resample_torch_simple", "no_resampling_hack"}),
    "image_reader_writer": frozenset({"SimpleITKIO", "SimpleITKIOWithReorient", "NibabelIO", "NibabelIOWithReorient",
                                      "NaturalImage2DIO", "Tiff3DIO"}),
    "label_manager": frozenset({"LabelManager"}),
}
#: The trainer a checkpoint names (``trainer_name``), looked up by nnU-Net among its trainer modules.
TRAINER_NAME = re.compile(r"^nnUNetTrainer\w*$")
_PLANNER_NAME = re.compile(r"^\w+$")  # ``experiment_planner_used``: looked up only when planning, by plain name


def _allowed(value: object, allowed: frozenset[str]) -> bool:
    return isinstance(value, str) and value in allowed


def _refuse(where: Path | str, key: str, value: object) -> None:
    raise UnsafePlansError(
        f"{where} names {value!r} as {key}, which is not one of the network parts nnU-Net's architectures use, so "
        "the model was not loaded (nnU-Net would import and run it); use a model trained with nnU-Net v2's own "
        "planners from a source you trust.")


def _check_configuration(configuration: object, where: Path | str, name: str) -> None:
    if not isinstance(configuration, dict):
        raise UnsafePlansError(f"{where}: configuration '{name}' is not a JSON object; the plans are damaged.")
    architecture = configuration.get("architecture")
    if architecture is not None:
        if not isinstance(architecture, dict):
            raise UnsafePlansError(f"{where}: the architecture of '{name}' is not a JSON object; the plans are damaged.")
        network = architecture.get("network_class_name")
        if not _allowed(network, ALLOWED_NETWORKS):
            _refuse(where, f"the network class of '{name}'", network)
        arguments = architecture.get("arch_kwargs", {})
        imported = architecture.get("_kw_requires_import", [])
        if not isinstance(arguments, dict) or not isinstance(imported, list):
            raise UnsafePlansError(f"{where}: the architecture of '{name}' is damaged (arch_kwargs, _kw_requires_import).")
        for key in imported:
            value = arguments.get(key) if isinstance(key, str) else key
            if value is not None and not _allowed(value, ALLOWED_LAYERS):
                _refuse(where, f"'{key}' of '{name}'", value)
    elif "UNet_class_name" in configuration and not _allowed(configuration["UNet_class_name"],
                                                            frozenset({"PlainConvUNet", "ResidualEncoderUNet"})):
        _refuse(where, f"the network class of '{name}'", configuration["UNet_class_name"])
    checks = {"preprocessor_name": "preprocessor_name", "resampling_fn_data": "resampling_fn",
              "resampling_fn_seg": "resampling_fn", "resampling_fn_probabilities": "resampling_fn"}
    for key, allowed in checks.items():
        if key in configuration and not _allowed(configuration[key], ALLOWED_NNUNET_NAMES[allowed]):
            _refuse(where, f"{key} of '{name}'", configuration[key])
    schemes = configuration.get("normalization_schemes", [])
    for scheme in schemes if isinstance(schemes, list) else [schemes]:
        if not _allowed(scheme, ALLOWED_NNUNET_NAMES["normalization_schemes"]):
            _refuse(where, f"a normalization scheme of '{name}'", scheme)


def check_plans_safe(plans: object, where: Path | str, dataset_json: object = None) -> None:
    """Refuse plans (and a dataset.json) that name code outside the allow-lists above.

    nnU-Net resolves names from these files and runs what they name: ``network_class_name`` and every
    ``_kw_requires_import`` entry with ``pydoc.locate`` (any importable callable: ``os.system``...), the
    preprocessor, normalisation, resampling, reader/writer and label-manager names with
    ``recursive_find_python_class`` (any attribute of an nnU-Net module). Every configuration is checked, the
    ones it inherits from included. ``where`` names the file in the message.

    Raises:
        UnsafePlansError: one name is outside its allow-list (the message names the key and the value).
    """
    if not isinstance(plans, dict) or not isinstance(plans.get("configurations", {}), dict):
        raise UnsafePlansError(f"{where} is not nnU-Net plans (no 'configurations' object); the model is damaged.")
    for name, configuration in plans.get("configurations", {}).items():
        _check_configuration(configuration, where, str(name))
    for key in ("image_reader_writer", "label_manager"):
        if key in plans and not _allowed(plans[key], ALLOWED_NNUNET_NAMES[key]):
            _refuse(where, key, plans[key])
    planner = plans.get("experiment_planner_used", "ExperimentPlanner")
    if not isinstance(planner, str) or not _PLANNER_NAME.match(planner):
        _refuse(where, "experiment_planner_used", planner)
    check_dataset_json_safe(dataset_json, f"{where} (its dataset.json)")


def check_dataset_json_safe(dataset_json: object, where: Path | str) -> None:
    """Refuse a ``dataset.json`` whose ``overwrite_image_reader_writer`` is not one of nnU-Net's readers/writers."""
    if isinstance(dataset_json, dict) and "overwrite_image_reader_writer" in dataset_json:
        if not _allowed(dataset_json["overwrite_image_reader_writer"], ALLOWED_NNUNET_NAMES["image_reader_writer"]):
            _refuse(where, "overwrite_image_reader_writer", dataset_json["overwrite_image_reader_writer"])


def check_trainer_name(name: object, where: Path | str) -> None:
    """Refuse a checkpoint whose ``trainer_name`` is not an nnU-Net trainer class name (``nnUNetTrainer...``)."""
    if not isinstance(name, str) or not TRAINER_NAME.match(name):
        raise UnsafePlansError(f"{where} names the trainer {name!r}, which is not an nnU-Net trainer class, so it was "
                               "not loaded; use a checkpoint saved by nnU-Net v2 from a source you trust.")
