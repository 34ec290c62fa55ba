"""What the segmentation child process needs, and how to install it inside Slicer without downgrading anything.

Checked without importing torch (``importlib.util.find_spec``), so Slicer's own process stays torch-free.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

#: Python modules the child process imports to segment.
REQUIRED_MODULES = ("torch", "nnunetv2")
#: Distributions Slicer bundles (or that the PyTorch extension chose): pinned while installing nnunetv2.
KEEP_AS_INSTALLED = ("numpy", "SimpleITK", "scipy", "torch", "torchvision", "vtk", "requests", "pillow")


def missing_modules(modules: tuple[str, ...] = REQUIRED_MODULES) -> list[str]:
    """The modules of ``modules`` that cannot be imported here."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def pinned_constraints(distributions: tuple[str, ...] = KEEP_AS_INSTALLED) -> list[str]:
    """``name==version`` lines for the installed distributions among ``distributions``.

    Passed to pip as a constraints file, they stop pip from replacing what Slicer bundles
    (numpy, SimpleITK, VTK...) or the torch build picked by the PyTorch extension.
    """
    lines = []
    for name in distributions:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return lines


def install_plan(missing: list[str], pytorch_extension_available: bool) -> list[str]:
    """Human-readable steps the module will take; shown to the user before installing."""
    steps = []
    if "torch" in missing:
        steps.append(
            "Install PyTorch with the PyTorch extension (it picks the CUDA build that matches your GPU)"
            if pytorch_extension_available
            else "Install PyTorch with pip (CPU or the default CUDA build; install the PyTorch extension for GPU control)"
        )
    if "nnunetv2" in missing:
        steps.append("Install nnU-Net v2 with pip, keeping the versions of numpy, SimpleITK, VTK and torch already installed")
    return steps
