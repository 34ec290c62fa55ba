"""Importing OpenVINO with its converter's usage telemetry off.

OpenVINO's model converter (``openvino.convert_model``, package ``openvino-telemetry``) sends usage events
to Google Analytics from every machine without an opt-out file in ``~/intel`` (its default is opt-out, not
opt-in), and keeps a usage counter there. SCIseg runs on clinical machines: nothing may leave them, and the
converter's DNS lookup was caught hanging a ``sciseg segment`` process for ten minutes on a machine without
internet (a glibc lock taken while resolving ``www.google-analytics.com``). OpenVINO falls back to its own
no-op stub (``openvino.tools.ovc.telemetry_stub``) when ``openvino_telemetry`` cannot be imported; this module
makes it so for this process, without touching the user's home folder.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

#: The converter's modules that hold a reference to the telemetry package (``tm``), OpenVINO 2024-2026.
_TELEMETRY_USERS = ("openvino.tools.ovc.telemetry_utils", "openvino.tools.ovc.convert_impl", "openvino.tools.ovc.utils")


def import_openvino() -> ModuleType:
    """``import openvino``, with the converter's telemetry replaced by OpenVINO's own no-op stub."""
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # its import fails: OpenVINO uses the stub
    import openvino

    stub = importlib.import_module("openvino.tools.ovc.telemetry_stub")
    for name in _TELEMETRY_USERS:  # imported before this call (another library): switch them to the stub too
        module = sys.modules.get(name)
        if module is not None and getattr(module, "tm", stub) is not stub:
            module.tm = stub
    return openvino
