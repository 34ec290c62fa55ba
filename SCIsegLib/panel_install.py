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
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

from . import dependencies, panel
from .panel import Action


#: What the "nnunetv2" step installs in one pip call: the pinned nnU-Net and the fast CPU engine's runtime.
NNUNET_STEP: tuple[str, ...] = (dependencies.NNUNET_REQUIREMENT, dependencies.PIP_REQUIREMENTS["openvino"])


def packages_to_install(missing_modules: list[str], nnunet_version_problem: bool = False) -> list[str]:
    """What to pip-install, in order, so that the missing modules import: torch first, then nnU-Net.

    nnU-Net v2 brings pandas, scikit-image and the rest (filelock comes with torch), so any missing module
    other than torch is fixed by installing the pinned nnunetv2 together with OpenVINO (:data:`NNUNET_STEP`;
    with torch already there, pip never replaces it). ``nnunet_version_problem``: the installed nnunetv2 is not the pinned version.
    """
    packages = []
    if "torch" in missing_modules:
        packages.append("torch")
    if any(name != "torch" for name in missing_modules) or nnunet_version_problem:
        packages.append("nnunetv2")
    return packages


def pinned_version(requirement: str) -> str | None:
    """``"2.8.1"`` for ``"nnunetv2==2.8.1"``; None for a requirement without an exact pin."""
    match = re.fullmatch(r"\s*[A-Za-z0-9_.-]+\s*==\s*([^\s,;]+)\s*", requirement)
    return match.group(1) if match else None


def version_mismatch(requirement: str, installed: str | None) -> str | None:
    """One sentence when the installed version differs from the exact pin of ``requirement``; None when fine."""
    wanted = pinned_version(requirement)
    name = re.split(r"[=<>!~ ]", requirement.strip(), maxsplit=1)[0]
    if installed is None or wanted is None or installed == wanted:
        return None
    return f"{name} {installed} is installed but SCIseg was tested with {wanted}: install {requirement} from the SCIseg panel."


def pip_install_call(
    requirement: str | list[str], constraints_path: str, slicer_version: tuple[int, int]
) -> tuple[list[str], dict[str, Any]]:
    """Arguments for ``slicer.util.pip_install``: always a list (never one string Slicer would ``shlex.split``).

    Slicer 5.12 and newer take ``constraints=`` and ``requester=`` (``slicer.packaging.pip_install``); 5.10 takes only the
    requirement list, so the constraints file goes in as two list items ``-c PATH`` (a path with spaces or
    backslashes stays one argument).
    """
    requirements = [requirement] if isinstance(requirement, str) else list(requirement)
    if tuple(slicer_version) >= (5, 12):
        return requirements, {"constraints": constraints_path, "requester": "SCIseg"}
    return [*requirements, "-c", constraints_path], {}


def torch_build(version: str | None) -> str:
    """Which torch build a version string names: ``2.5.1+cu124`` -> "CUDA 12.4", ``+cpu`` -> "CPU"."""
    if not version:
        return "not installed"
    local = version.partition("+")[2]
    if local.startswith("cu") and local[2:].isdigit():
        digits = local[2:]
        return f"CUDA {digits[:-1]}.{digits[-1]}"
    if local.startswith("rocm"):
        return f"ROCm {local[4:]}"
    if local == "cpu":
        return "CPU"
    return "the default PyPI build (CUDA on Linux x86-64, CPU on Windows and macOS)"


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
    if action in (Action.SEGMENT, Action.GREY_MATTER) and "nnunetv2" not in missing:
        mismatch = version_mismatch(dependencies.NNUNET_REQUIREMENT, installer.version_of("nnunetv2"))
    packages = packages_to_install(missing, mismatch is not None)
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
        installer.installed.append(f"Installed {', '.join(NNUNET_STEP)}")
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
    return f"torch {version} ({torch_build(version)})"


def install_nnunet(installer: Installer) -> None:
    """pip-install the pinned nnU-Net and OpenVINO with what Slicer bundles (and the chosen torch) held by a
    constraints file (:func:`SCIsegLib.dependencies.pinned_constraints`), passed in the form the Slicer version takes."""
    folder = tempfile.mkdtemp(prefix="sciseg-")
    try:
        constraints = os.path.join(folder, "constraints.txt")
        with open(constraints, "w") as stream:
            stream.write("\n".join(dependencies.pinned_constraints()) + "\n")
        requirements, options = pip_install_call(list(NNUNET_STEP), constraints, installer.slicer_version)
        installer.pip_install(requirements, **options)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
