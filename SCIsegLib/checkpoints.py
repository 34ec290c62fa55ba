"""Loading nnU-Net checkpoints without running code from them.

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


def _is_allowed(name: str) -> bool:
    return name in ALLOWED_GLOBALS or bool(_TORCH_GLOBAL.match(name))


def _pickle_globals(data: bytes) -> set[str]:
    """``module.name`` of every global a pickle names (GLOBAL, INST and STACK_GLOBAL), read without unpickling."""
    found: set[str] = set()
    strings: list[str] = []  # the string operands pushed last (STACK_GLOBAL takes two)
    memo: dict[int, str] = {}
    for opcode, argument, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            module, _, attribute = str(argument).partition(" ")
            found.add(f"{module}.{attribute}")
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"):
            strings.append(str(argument))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
            memo[int(argument)] = strings[-1]
        elif name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            strings.append(memo.get(int(argument), "\0unknown"))
        elif name == "STACK_GLOBAL":
            module, attribute = (strings[-2], strings[-1]) if len(strings) >= 2 else ("\0unknown", "\0unknown")
            found.add(f"{module}.{attribute}")
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
    unsafe = sorted(name for name in checkpoint_globals(path) if not _is_allowed(name))
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
