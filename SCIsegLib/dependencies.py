"""What the child processes need, and how to install it inside Slicer without downgrading anything.

Checked without importing anything heavy (``importlib.util.find_spec`` and ``importlib.metadata``),
so Slicer's own process stays torch-free. The Slicer module calls :func:`missing_modules` before
*every* action that starts a child (Segment, Measure, Export, Next case, model install, device
probe) and :func:`installed_version_problems` once at start-up, as SlicerNNUnet's ``InstallLogic``
does (``isPackageInstalledAndCompatible``: the installed version read from the distribution's
metadata, compared with a requirement).

:data:`REQUIRED_MODULES` is every third-party module a child imports for those actions
(``Testing/test_dependencies.py`` runs each child and checks this list against what it imported):
a fresh Slicer 5.10 bundles numpy, SimpleITK and scipy, but not pandas, scikit-image, filelock or
nibabel (they arrive with nnunetv2; a user who installed torch alone has none of them).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from typing import Callable

#: The nnU-Net v2 release the tests ran with (and the SCIseg results were checked with): installed exactly.
NNUNET_REQUIREMENT = "nnunetv2==2.8.1"

#: Python modules a child process imports, per action of the Slicer module.
#: (numpy: the CLI imports it for every command.)
ACTION_MODULES: dict[str, tuple[str, ...]] = {
    "segment": ("torch", "nnunetv2", "batchgenerators", "openvino", "numpy", "SimpleITK", "scipy", "nibabel"),
    # a 2D grey-matter model runs on nnU-Net's own predictor (no OpenVINO); its sidecars and WM come from the tables' code
    "grey_matter": ("torch", "nnunetv2", "batchgenerators", "numpy", "SimpleITK", "scipy", "nibabel", "pandas", "skimage"),
    "devices": ("torch", "numpy"),
    "measure": ("numpy", "SimpleITK", "scipy", "pandas", "skimage"),
    "export": ("numpy", "SimpleITK", "scipy", "filelock"),
    "next_case": ("numpy", "SimpleITK", "scipy", "filelock"),
    "install_model": ("numpy",),
    "compare": ("numpy", "SimpleITK", "scipy", "nibabel"),
}
#: Every module any child imports: what :func:`missing_modules` checks by default.
REQUIRED_MODULES: tuple[str, ...] = tuple(dict.fromkeys(m for modules in ACTION_MODULES.values() for m in modules))

#: pip requirement for each module (module name -> distribution with its version rule).
PIP_REQUIREMENTS: dict[str, str] = {
    "torch": "torch",
    "nnunetv2": NNUNET_REQUIREMENT,
    "batchgenerators": "batchgenerators",  # comes with nnunetv2
    "openvino": "openvino>=2025.0",  # the fast CPU engine (without it, segment falls back to torch)
    "numpy": "numpy",
    "SimpleITK": "SimpleITK",
    "scipy": "scipy",
    "nibabel": "nibabel>=5",
    "pandas": "pandas>=1.5",
    "skimage": "scikit-image>=0.20",
    "filelock": "filelock>=3",
}
#: Oldest versions the code works with (pyproject.toml's ranges); nnunetv2 is checked against :data:`NNUNET_REQUIREMENT`.
MINIMUM_VERSIONS: dict[str, str] = {
    "torch": "2.1",
    "numpy": "1.24",
    "SimpleITK": "2.3",
    "scipy": "1.10",
    "nibabel": "5",
    "pandas": "1.5",
    "scikit-image": "0.20",
    "filelock": "3",
}
#: Distributions Slicer bundles (or that the PyTorch extension chose): pinned while installing nnunetv2.
KEEP_AS_INSTALLED = ("numpy", "SimpleITK", "scipy", "torch", "torchvision", "vtk", "requests", "pillow")


def missing_modules(modules: tuple[str, ...] = REQUIRED_MODULES) -> list[str]:
    """The modules of ``modules`` that cannot be imported here (default: everything any child needs)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def missing_for(action: str) -> list[str]:
    """The modules the child of ``action`` (a key of :data:`ACTION_MODULES`) needs and cannot import."""
    if action not in ACTION_MODULES:
        raise ValueError(f"unknown action {action!r}; use one of {', '.join(ACTION_MODULES)}.")
    return missing_modules(ACTION_MODULES[action])


def pip_requirements(missing: list[str]) -> list[str]:
    """pip requirements installing ``missing`` modules, torch excepted (the PyTorch extension installs it).

    Pass them as a list (with ``-c constraints.txt`` from :func:`pinned_constraints`) to
    ``slicer.util.pip_install``, never as one string: Slicer splits a string with ``shlex``, which
    breaks Windows paths.
    """
    return [PIP_REQUIREMENTS.get(name, name) for name in missing if name != "torch"]


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
    others = pip_requirements(missing)
    if others:
        steps.append(
            f"Install {', '.join(others)} with pip, keeping the versions of numpy, SimpleITK, VTK and torch already installed"
        )
    return steps


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version ("2.8.1" -> (2, 8, 1); "2.5.1+cu121" -> (2, 5, 1))."""
    try:
        from packaging.version import Version  # Slicer bundles packaging (pip needs it)

        return Version(version).release
    except ImportError:
        return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:4])
    except ValueError:  # not PEP 440: compare its leading numbers
        return tuple(int(part) for part in re.findall(r"\d+", version)[:4])


def installed_version_problems(version_of: Callable[[str], str | None] = _installed_version) -> list[str]:
    """One sentence per installed distribution whose version SCIseg was not tested with (empty: all fine).

    nnunetv2 must be exactly the version of :data:`NNUNET_REQUIREMENT`; the others at least
    :data:`MINIMUM_VERSIONS`. Distributions that are not installed are :func:`missing_modules`' business.
    ``version_of`` maps a distribution name to its installed version or None (tests replace it).
    """
    problems = []
    pinned = NNUNET_REQUIREMENT.split("==")[1]
    installed = version_of("nnunetv2")
    if installed is not None and _release(installed) != _release(pinned):
        problems.append(
            f"nnU-Net v2 {installed} is installed, but SCIseg is tested with {pinned}: "
            f"reinstall it (pip install {NNUNET_REQUIREMENT}) or results may differ."
        )
    for distribution, minimum in MINIMUM_VERSIONS.items():
        installed = version_of(distribution)
        if installed is not None and _release(installed) < _release(minimum):
            problems.append(
                f"{distribution} {installed} is older than the {minimum} SCIseg needs: update it (pip install '{distribution}>={minimum}')."
            )
    return problems
