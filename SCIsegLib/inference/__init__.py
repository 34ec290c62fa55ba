"""The network call: engines behind one interface (reference = SCT's exact nnU-Net call; fast engines).

Only this package imports torch, nnunetv2 and openvino. Modules:

- :mod:`.base`: settings, progress events, cancellation, the output, device choice.
- :mod:`.predictor`: nnU-Net's predictor with safe checkpoint loading; the reference engine.
- :mod:`.runtimes`: OpenVINO and torch-autocast tile runtimes; :mod:`.openvino_cache`: compiled models on disk.
- :mod:`.cropped`: the cord-cropped two-pass run; :mod:`.fast`: the fast engine; :mod:`.choice`: which engine runs.
- :mod:`.warm`: the warm engine's server (``sciseg engine serve``); its client is :mod:`SCIsegLib.warm_client`.
"""

from .base import (
    CancelToken,
    Engine,
    InferenceSettings,
    NetworkOutput,
    ProgressCallback,
    ProgressEvent,
    available_devices,
    choose_device,
)
from .choice import ENGINES, make_engine
from .predictor import NnUNetEngine

__all__ = [
    "CancelToken", "Engine", "InferenceSettings", "NetworkOutput", "ProgressCallback", "ProgressEvent",
    "available_devices", "choose_device", "ENGINES", "make_engine", "NnUNetEngine",
]
