"""What the CPU can do for inference: bf16 instructions (AVX512-BF16, AMX) and a name for cache keys."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (Linux); elsewhere OpenVINO's capabilities.

    On macOS/Windows ``/proc/cpuinfo`` is absent: OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU
    lists "BF16" when the CPU runs bf16 natively, which is mapped to ``avx512_bf16``.
    """
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        from .openvino_quiet import import_openvino

        capabilities = import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        return frozenset({"avx512_bf16"} if "BF16" in capabilities else set())
    except Exception:  # noqa: BLE001 - no OpenVINO or no CPU plugin: no flags known
        return frozenset()


def has_native_bf16(flags: frozenset[str] | set[str]) -> bool:
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16); elsewhere bf16 is emulated and slow."""
    return any(flag in flags for flag in BF16_FLAGS)


@lru_cache(maxsize=1)
def cpu_identity() -> str:
    """The CPU's model name and its bf16/AMX flags, for keys of compiled-model caches."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = sorted(f for f in read_cpu_flags() if f.startswith(("avx512", "amx")))
    return f"{name} [{' '.join(flags)}]"
