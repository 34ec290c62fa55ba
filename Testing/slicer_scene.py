"""Loading a file into a slicer-core MRML scene as Slicer does (the ``scene`` fixture is in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is a test dependency (pip install .[test])")


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
