"""Installing what the panel's children import (torch, nnU-Net, OpenVINO) into Slicer's Python, without Qt.

The Slicer module passes its collaborators in an :class:`Installer` (``slicer.util.pip_install``, the PyTorch
extension's logic, ``slicer.util.executePythonModule``, a confirmation dialog), as SlicerNNUnet's ``InstallLogic``
receives its own, so the decisions -- what is missing, what to ask, in which order to install, with which pip
arguments -- run in tests with recording collaborators. torch is never imported in Slicer's process: the PyTorch
extension's wheel choice (light-the-torch) is run as ``PyTorchUtilsLogic.installTorch`` runs it, without its final
``import torch``; without the extension, pip installs the PyPI wheel.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

from . import dependencies, panel
from .panel import Action


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution (its metadata; nothing is imported), None when absent."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass
class Installer:
    """Slicer's side of an install. ``pip_install(requirements, **options)`` and ``run_module(name, arguments)``
    block until pip ends; ``confirm(question)`` asks the rater; ``torch_utils`` is the PyTorch extension's logic
    (None without the extension); ``slicer_version`` (major, minor) picks the pip arguments' form."""

    pip_install: Callable[..., Any]
    run_module: Callable[[str, list[str]], Any]
    confirm: Callable[[str], bool]
    torch_utils: Any = None
    slicer_version: tuple[int, int] = (5, 10)
    version_of: Callable[[str], str | None] = installed_version
    missing: Callable[[tuple[str, ...]], list[str]] = dependencies.missing_modules
    installed: list[str] = field(default_factory=list)  # what was installed, in words, for the panel's log


def question(action: Action, installer: Installer) -> tuple[list[str], str | None]:
    """The packages ``action`` needs installed (``torch``, ``nnunetv2``; empty: ready) and the question to ask."""
    missing = installer.missing(panel.modules_needed(action))
    mismatch = None
    if action == Action.SEGMENT and "nnunetv2" not in missing:
        mismatch = panel.version_mismatch(dependencies.NNUNET_REQUIREMENT, installer.version_of("nnunetv2"))
    packages = panel.packages_to_install(missing, mismatch is not None)
    if not packages:
        return [], None
    steps = dependencies.install_plan(packages, installer.torch_utils is not None)
    text = f"SCIseg needs {', '.join(packages)} for this. Install now?\n\n- " + "\n- ".join(steps)
    return packages, (mismatch + "\n\n" + text) if mismatch else text


def ensure(action: Action, installer: Installer, confirm: bool = True) -> bool:
    """Offer to install what ``action``'s child imports; True when it can run (False: declined or still missing).

    A failing pip run raises (the panel shows it); what arrived is listed in ``installer.installed``.
    """
    importlib.invalidate_caches()
    packages, text = question(action, installer)
    if not packages:
        return True
    if confirm and not installer.confirm(text):
        return False
    if "torch" in packages:
        installer.installed.append(f"Installed {install_torch(installer)}")
    if "nnunetv2" in packages:
        install_nnunet(installer)
        installer.installed.append(f"Installed {', '.join(panel.NNUNET_STEP)}")
    importlib.invalidate_caches()
    return not installer.missing(panel.modules_needed(action))


def install_torch(installer: Installer) -> str:
    """Install torch without importing it; returns which build arrived ("torch 2.5.1+cu124 (CUDA 12.4)")."""
    utils = installer.torch_utils
    if utils is not None:
        arguments = utils._getPipInstallArguments()
        if importlib.util.find_spec("light_the_torch") is None:
            utils._installLightTheTorch()
        installer.run_module("light_the_torch", arguments)
    else:
        installer.pip_install(["torch"])
    importlib.invalidate_caches()
    version = installer.version_of("torch")
    return f"torch {version} ({panel.torch_build(version)})"


def install_nnunet(installer: Installer) -> None:
    """pip-install the pinned nnU-Net and OpenVINO with what Slicer bundles (and the chosen torch) held by a
    constraints file (:func:`SCIsegLib.dependencies.pinned_constraints`), passed in the form the Slicer version takes."""
    folder = tempfile.mkdtemp(prefix="sciseg-")
    try:
        constraints = os.path.join(folder, "constraints.txt")
        with open(constraints, "w") as stream:
            stream.write("\n".join(dependencies.pinned_constraints()) + "\n")
        requirements, options = panel.pip_install_call(list(panel.NNUNET_STEP), constraints, installer.slicer_version)
        installer.pip_install(requirements, **options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
