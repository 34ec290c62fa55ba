"""The dependency install's decisions (SCIsegLib/panel_install.py) with recording collaborators in place of Slicer's
pip, the PyTorch extension and the dialog: what is asked, what runs, in which order, with which arguments."""

from __future__ import annotations

from pathlib import Path

from SCIsegLib import dependencies, panel_install
from SCIsegLib.panel import Action


class Recorder:
    """Slicer's side: records pip and light-the-torch calls; ``present`` grows as installs succeed."""

    def __init__(self, present: set[str], answer: bool = True, versions: dict[str, str] | None = None) -> None:
        self.present, self.answer, self.versions = set(present), answer, dict(versions or {})
        self.calls: list[tuple] = []
        self.questions: list[str] = []

    def installer(self, torch_utils=None, slicer_version=(5, 10)) -> panel_install.Installer:
        return panel_install.Installer(
            pip_install=self.pip_install, run_module=self.run_module, confirm=self.confirm, torch_utils=torch_utils,
            slicer_version=slicer_version, version_of=self.versions.get,
            missing=lambda modules: [m for m in modules if m not in self.present])

    def confirm(self, text: str) -> bool:
        self.questions.append(text)
        return self.answer

    def pip_install(self, requirements, **options) -> None:
        constraints = options.get("constraints") or (requirements[requirements.index("-c") + 1] if "-c" in requirements else None)
        pinned = Path(constraints).read_text().split() if constraints else None
        self.calls.append(("pip", list(requirements), sorted(options), pinned))
        if "torch" in requirements:
            self.present.add("torch")
            self.versions["torch"] = "2.5.1+cpu"
        else:
            self.present |= set(dependencies.REQUIRED_MODULES) - {"torch"}
            self.versions["nnunetv2"] = "2.8.1"

    def run_module(self, name: str, arguments: list[str]) -> None:
        self.calls.append(("module", name, list(arguments)))
        self.present.add("torch")
        self.versions["torch"] = "2.5.1+cu124"


class TorchUtils:
    """The PyTorch extension's logic as SCIseg uses it (SlicerPyTorch PyTorchUtils.py l. 194-247)."""

    def _getPipInstallArguments(self) -> list[str]:
        return ["install", "torch", "torchvision"]

    def _installLightTheTorch(self) -> None:
        raise AssertionError("light_the_torch is importable here: not installed again")


def test_a_fresh_slicer_installs_torch_with_the_pytorch_extension_then_nnunet_with_constraints(monkeypatch) -> None:
    monkeypatch.setattr(panel_install.importlib.util, "find_spec", lambda name: object())  # light_the_torch present
    bundled = {"numpy", "SimpleITK", "scipy"}
    recorder = Recorder(bundled)
    installer = recorder.installer(TorchUtils())
    assert panel_install.ensure(Action.SEGMENT, installer)
    [asked] = recorder.questions
    assert asked.startswith("SCIseg needs torch, nnunetv2 for this. Install now?") and "PyTorch extension" in asked
    assert recorder.calls[0] == ("module", "light_the_torch", ["install", "torch", "torchvision"])
    kind, requirements, options, pinned = recorder.calls[1]
    assert kind == "pip" and requirements[:2] == list(panel_install.NNUNET_STEP) and requirements[2] == "-c" and options == []
    assert pinned == dependencies.pinned_constraints()  # what Slicer bundles is held where it is
    assert installer.installed == ["Installed torch 2.5.1+cu124 (CUDA 12.4)", f"Installed {', '.join(panel_install.NNUNET_STEP)}"]
    assert not Path(requirements[3]).exists()  # the constraints file went with its folder


def test_declined_installs_nothing_and_slicer_5_12_gets_the_keyword_form() -> None:
    recorder = Recorder({"numpy", "SimpleITK", "scipy"}, answer=False)
    assert not panel_install.ensure(Action.MEASURE, recorder.installer())
    assert recorder.calls == [] and recorder.questions[0].startswith("SCIseg needs nnunetv2 for this.")
    recorder = Recorder({"numpy", "SimpleITK", "scipy"})
    assert panel_install.ensure(Action.MEASURE, recorder.installer(slicer_version=(5, 12)))
    [(kind, requirements, options, pinned)] = recorder.calls
    assert requirements == list(panel_install.NNUNET_STEP) and options == ["constraints", "requester"]
    assert pinned == dependencies.pinned_constraints()


def test_an_nnunet_of_another_version_is_offered_again_and_nothing_is_asked_when_ready() -> None:
    everything = set(dependencies.REQUIRED_MODULES)
    recorder = Recorder(everything, versions={"nnunetv2": "2.6.2"})
    packages, text = panel_install.question(Action.SEGMENT, recorder.installer())
    assert packages == ["nnunetv2"] and text.startswith("nnunetv2 2.6.2 is installed but SCIseg was tested with 2.8.1")
    recorder = Recorder(everything, versions={"nnunetv2": "2.8.1"})
    assert panel_install.ensure(Action.SEGMENT, recorder.installer()) and recorder.questions == [] and recorder.calls == []
    # Without the PyTorch extension, torch comes from PyPI through Slicer's pip.
    recorder = Recorder(everything - {"torch"})
    installer = recorder.installer()
    assert panel_install.ensure(Action.SEGMENT, installer)
    assert recorder.calls[0][:2] == ("pip", ["torch"]) and installer.installed == ["Installed torch 2.5.1+cpu (CPU)"]
