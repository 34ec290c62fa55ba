"""Loading nnU-Net checkpoints without running code from them.

A ``.pth`` checkpoint is a pickle: loaded with ``torch.load(weights_only=False)`` (as nnU-Net
does) it can call any Python function. :func:`load_checkpoint` loads with ``weights_only=True``
and an allow-list of the few non-tensor globals nnU-Net checkpoints really hold; anything else is
refused with :class:`UnsafeCheckpointError` before a single object of it is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ModelError


class UnsafeCheckpointError(ModelError):
    """A checkpoint holds objects outside the allow-list (it could run code when loaded)."""


def _allowed_globals() -> list[Any]:
    """Globals nnU-Net checkpoints contain besides tensors and plain containers (numpy scalars of the logs)."""
    import numpy as np

    allowed: list[Any] = [np.dtype, np.ndarray]
    try:
        from numpy.core.multiarray import _reconstruct, scalar  # numpy < 2 names, still pickled by many checkpoints
    except ImportError:  # pragma: no cover - numpy without the old alias
        from numpy._core.multiarray import _reconstruct, scalar
    allowed += [scalar, _reconstruct]
    allowed += [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool")]
    return allowed


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path`` as a dict, loaded with ``weights_only=True`` on the CPU.

    Raises:
        UnsafeCheckpointError: the file holds objects that are not on the allow-list.
        ModelError: the file is not a readable checkpoint.
    """
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"the checkpoint {path} holds Python objects that could run code when loaded, so it was not loaded "
            f"({str(error).splitlines()[0][:200]}). Use a checkpoint saved by nnU-Net v2 from a source you trust.") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ModelError(f"the checkpoint {path} cannot be read ({error}); reinstall the model.") from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise ModelError(f"the checkpoint {path} is not an nnU-Net checkpoint (no 'network_weights'); reinstall the model.")
    return checkpoint
