"""SCIsegTest's click path (SCIsegLib/panel_selftest.py), the scenario Slicer runs under CTest, on slicer-core's MRML
with real children and the bundled demo model: segment, edit, measure, export twice (lineage), compare, NLI."""

from __future__ import annotations

import sys
import time

import pytest

slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is a test dependency (pip install .[test])")

from SCIsegLib import panel_selftest  # noqa: E402


def wait(run, timeout_s: float) -> list[dict]:
    """Poll a child until it ends, as SCIsegTest.waitFor does (without Slicer's event loop)."""
    deadline, events = time.monotonic() + timeout_s, []
    while not run.finished:
        polled = run.poll()
        events += polled if isinstance(polled, list) else []
        assert time.monotonic() < deadline, "the child did not finish in time"
        time.sleep(0.05)
    polled = run.poll()
    return events + (polled if isinstance(polled, list) else [])


def test_the_self_test_click_path_passes_on_slicer_core(scene, demo_model_path) -> None:
    scene, logic = scene
    steps: list[str] = []
    panel_selftest.click_path(scene, logic, sys.executable, wait, steps.append)
    assert steps[0].startswith("Synthesising") and steps[-1].startswith("Measuring a scan without lesion")
