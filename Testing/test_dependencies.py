"""The dependency check: it names every module the children really import, pins nnU-Net, and finds wrong versions."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from SCIsegLib import dependencies, runner
from SCIsegLib.phantom import make_phantom
from SCIsegLib.volume import write_image_atomic
from test_models import make_model_folder, zip_folder

#: Run in the child before the CLI: records every top-level module that SCIsegLib's own code imports.
RECORDER = """
import atexit, builtins, json, os, sys
output, seen, original = sys.argv[1], set(), builtins.__import__
def recording(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and (globals or {}).get("__name__", "").startswith("SCIsegLib"):
        seen.add(name.split(".")[0])
    return original(name, globals, locals, fromlist, level)
builtins.__import__ = recording
def record():
    with open(output, "w") as handle:
        handle.write(json.dumps(sorted(seen)))
atexit.register(record)
real_exit = os._exit
def recording_exit(code):  # `segment` ends with os._exit (no slow teardown): record first
    record()
    real_exit(code)
os._exit = recording_exit
sys.argv = ["sciseg", *sys.argv[2:]]
from SCIsegLib.cli import console_main
console_main()
"""
#: Imported only when present, with a fallback: not required.
OPTIONAL = {"platformdirs", "openpyxl"}
#: Imported by one child when installed, not needed: install_model checks checkpoints with torch when it is there.
OPTIONAL_FOR = {"install_model": {"torch"}}


def third_party(modules: list[str]) -> set[str]:
    return {m for m in modules if m not in sys.stdlib_module_names and m != "SCIsegLib"}


def child_commands(tmp_path: Path, demo_model_path: Path) -> dict[str, list[str]]:
    """The command line of each action the Slicer module starts, on small real inputs."""
    case = make_phantom(seed=5, lesions=1)
    image = tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    image.parent.mkdir(parents=True)
    write_image_atomic(case.image, image)
    labels = tmp_path / "labels.nii.gz"
    write_image_atomic(case.labels, labels)
    cord, lesion = tmp_path / "case_sc_seg.nii.gz", tmp_path / "case_lesion_seg.nii.gz"
    write_image_atomic(sitk.Cast(case.labels > 0, sitk.sitkUInt8), cord)
    write_image_atomic(sitk.Cast(case.labels == 2, sitk.sitkUInt8), lesion)
    queue = tmp_path / "queue.json"
    queue.write_text(json.dumps({"scans": {str(image): {"path": str(image), "score": 0.5}}}))
    archive = zip_folder(make_model_folder(tmp_path / "release"), tmp_path / "model.zip")
    return {
        "segment": ["segment", str(image), "-o", str(tmp_path / "seg"), "--model", str(demo_model_path),
                    "--device", "cpu", "--progress", "jsonl"],
        "grey_matter": ["segment", str(image), "-o", str(tmp_path / "gm"), "--model", "sciseg-gm-demo", "--device", "cpu",
                        "--progress", "jsonl"],  # the panel's Grey matter button: the bundled GM model by name
        "devices": ["devices"],
        "measure": ["analyze", "--lesion", str(lesion), "--cord", str(cord), "-o", str(tmp_path / "measures")],
        "export": ["export", "--root", str(tmp_path / "bids"), "--source", str(image), "--labels", str(labels),
                   "--rater", "tester"],
        "next_case": ["queue", "next", "--queue", str(queue), "--bids", str(tmp_path / "bids")],
        "install_model": ["models", "install", str(archive), "--name", "recorded", "--progress", "jsonl"],
        "compare": ["compare", str(labels), str(labels)],
    }


def test_the_list_covers_every_module_each_child_imports(tmp_path: Path, demo_model_path: Path, model_store: Path) -> None:
    """Each child runs for real (in parallel) and records what SCIsegLib's code imported."""
    commands = child_commands(tmp_path, demo_model_path)
    assert set(commands) == set(dependencies.ACTION_MODULES)
    environment = runner.child_environment(None, tmp_path / "no-cancel")
    processes = {
        action: subprocess.Popen(
            [sys.executable, "-c", RECORDER, str(tmp_path / f"{action}.json"), *arguments],
            env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for action, arguments in commands.items()
    }
    mismatches = {}
    for action, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{action}: {stderr}"
        imported = third_party(json.loads((tmp_path / f"{action}.json").read_text()))
        declared = set(dependencies.ACTION_MODULES[action])
        imported -= OPTIONAL | OPTIONAL_FOR.get(action, set())
        if imported != declared:
            mismatches[action] = {"undeclared": sorted(imported - declared), "unused": sorted(declared - imported)}
        assert declared <= set(dependencies.REQUIRED_MODULES)
    assert mismatches == {}
    for module in ("pandas", "skimage", "filelock", "nibabel"):  # what a fresh Slicer lacks (issue 10, defect 5)
        assert module in dependencies.REQUIRED_MODULES


def test_nnunet_is_pinned_to_the_version_the_tests_run_with() -> None:
    assert dependencies.NNUNET_REQUIREMENT == "nnunetv2==2.8.1"
    assert importlib.metadata.version("nnunetv2") == "2.8.1"
    assert dependencies.installed_version_problems() == []  # this environment is the tested one


def test_wrong_versions_are_reported_in_one_sentence_each() -> None:
    versions = {"nnunetv2": "2.5.1", "torch": "2.0.1+cu118", "pandas": "2.2.3", "scikit-image": "0.19.3", "numpy": None}
    problems = dependencies.installed_version_problems(lambda name: versions.get(name))
    assert len(problems) == 3
    assert problems[0].startswith("nnU-Net v2 2.5.1 is installed, but SCIseg is tested with 2.8.1")
    assert "pip install nnunetv2==2.8.1" in problems[0]
    assert problems[1].startswith("torch 2.0.1+cu118 is older than the 2.1")
    assert problems[2].startswith("scikit-image 0.19.3 is older than the 0.20")
    assert all(p.endswith(".") and p.count(". ") == 0 for p in problems)
    assert dependencies.installed_version_problems(lambda name: {"nnunetv2": "2.8.1"}.get(name)) == []
    assert dependencies.installed_version_problems(lambda name: None) == []  # absent: missing_modules' business


def test_missing_modules_and_what_to_install_for_them(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dependencies.missing_modules() == []
    assert dependencies.missing_modules(("sciseg_no_such_module", "numpy")) == ["sciseg_no_such_module"]
    present = importlib.util.find_spec

    def without(*absent: str):
        return lambda name, *args: None if name in absent else present(name, *args)

    monkeypatch.setattr(dependencies.importlib.util, "find_spec", without("pandas", "skimage", "filelock"))
    assert dependencies.missing_for("measure") == ["pandas", "skimage"]
    assert dependencies.missing_for("segment") == [] and dependencies.missing_for("install_model") == []
    missing = dependencies.missing_modules()
    assert missing == ["pandas", "skimage", "filelock"]
    assert dependencies.pip_requirements(missing) == ["pandas>=1.5", "scikit-image>=0.20", "filelock>=3"]
    monkeypatch.setattr(dependencies.importlib.util, "find_spec", without("torch", "nnunetv2"))
    assert dependencies.pip_requirements(dependencies.missing_modules()) == ["nnunetv2==2.8.1"]
    plan = dependencies.install_plan(["torch", "nnunetv2"], pytorch_extension_available=True)
    assert plan[0].startswith("Install PyTorch with the PyTorch extension") and "nnunetv2==2.8.1" in plan[1]
    with pytest.raises(ValueError, match="unknown action"):
        dependencies.missing_for("train")


def test_pinned_constraints_keep_what_is_installed() -> None:
    lines = dependencies.pinned_constraints()
    assert f"numpy=={importlib.metadata.version('numpy')}" in lines
    assert all("==" in line for line in lines)
