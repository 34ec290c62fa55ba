"""Loading a file into a slicer-core MRML scene as Slicer does (the ``scene`` fixture is in conftest.py), and the\npanel's parameter node and view as plain recording objects, for the controller's tests."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is a test dependency (pip install .[test])")

from SCIsegLib.panel import PanelInputs  # noqa: E402


def load_with_slicer(scene, path: Path):
    """Load a file the way Slicer's File > Add Data does (its archetype storage node and ITK reader)."""
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(path.name.split(".")[0])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    scene.AddNode(node)
    scene.AddNode(storage)
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node), f"Slicer could not read {path}"
    return node


@dataclass
class PanelParameters:
    """The fields of SCIseg.py's ``SCIsegParameterNode`` (test_slicer_module checks the names), as plain attributes."""

    inputVolume: Any = None
    segmentation: Any = None
    model: str = "sciseg-demo"
    device: str = "auto"
    stepSize: float = 0.5
    testTimeAugmentation: bool = False
    keepLargestCord: bool = False
    fillHoles: bool = False
    lesionInsideCord: bool = False
    nliSlice: int = -1


@dataclass
class RecordingView:
    """``SCIsegLib.panel_view.PanelView`` for tests: records what the panel shows, answers what it asks (``answers``:
    Yes/No replies in order; ``choices``: indexes), queues ``later`` slots until :meth:`run_later`. Its scene loads
    scans as Slicer does (``load_with_slicer``)."""

    scene: Any
    shown: PanelInputs = field(default_factory=PanelInputs)
    said: list[str] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)
    answers: list[bool] = field(default_factory=list)
    choices: list[int | None] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    queued: list[Callable[[], None]] = field(default_factory=list)
    tables: list[tuple[Any, Any]] = field(default_factory=list)
    jumps: list[tuple[float, float, float]] = field(default_factory=list)
    editors: list[tuple[Any, Any, str | None]] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    per_mille: int = 0
    refreshed: int = 0
    devices: int = 0
    models: list[str | None] = field(default_factory=list)
    log_shown: bool = False

    def inputs(self) -> PanelInputs:
        return self.shown

    def say(self, text: str) -> None:
        self.said.append(text)

    def log(self, lines) -> None:
        self.logged += list(lines)

    def clear_log(self) -> None:
        self.logged = []

    def show_log(self) -> None:
        self.log_shown = True

    def progress(self, per_mille: int) -> None:
        self.per_mille = per_mille

    def error(self, message: str, detail: str = "") -> None:
        self.errors.append((message, detail))

    def ask(self, question: str) -> bool:
        self.questions.append(question)
        return self.answers.pop(0)

    def choose(self, question: str, labels: list[str]) -> int | None:
        self.questions.append(question)
        return self.choices.pop(0)

    @contextlib.contextmanager
    def trying(self, failure: str):
        try:
            yield
        except Exception:
            self.failures.append(failure)  # Slicer shows it in a dialog, then raises it again
            raise

    def later(self, slot: Callable[[], None]) -> None:
        self.queued.append(slot)

    def run_later(self) -> int:
        """Run the queued slots (Qt's event loop would); how many ran."""
        slots, self.queued = self.queued, []
        for slot in slots:
            slot()
        return len(slots)

    def refresh(self) -> None:
        self.refreshed += 1

    def remember(self, key: str, value: str) -> None:
        self.settings[key] = value

    def models_changed(self, select: str | None) -> None:
        self.models.append(select)

    def devices_changed(self) -> None:
        self.devices += 1

    def show_table(self, table, chart=None) -> None:
        self.tables.append((table, chart))

    def jump_to(self, ras_mm) -> None:
        self.jumps.append(tuple(ras_mm))

    def load_volume(self, path: str):
        return load_with_slicer(self.scene, Path(path))

    def open_editor(self, segmentation, volume, segment_id: str | None) -> None:
        self.editors.append((segmentation, volume, segment_id))
