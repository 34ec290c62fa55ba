"""Shared fixtures: the real scans of ../shared/data, an isolated model store, the bundled model."""

from __future__ import annotations

from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_DATA = REPOSITORY.parent / "shared" / "data"
DEMO_MODEL = REPOSITORY / "Resources" / "Models" / "sciseg-demo"


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test (a fresh clone has no ../shared)."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"../shared/data/{relative} is not available (only the project's machines have ../shared)")
    return path


def real_scans() -> list[str]:
    """Every 3D image of ../shared/data, relative paths (empty when the folder is absent)."""
    if not SHARED_DATA.is_dir():
        return []
    return sorted(str(p.relative_to(SHARED_DATA)) for p in SHARED_DATA.rglob("*.nii.gz"))


@pytest.fixture()
def model_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty model store for this test only ($SCISEG_MODELS_DIR)."""
    store = tmp_path / "store"
    monkeypatch.setenv("SCISEG_MODELS_DIR", str(store))
    return store


@pytest.fixture()
def scene():
    """A new slicer-core MRML scene with the Segmentations logic set on it (needed before adding segments)."""
    slicer = pytest.importorskip("slicer", reason="the slicer-core wheel is a test dependency (pip install .[test])")
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    yield scene, logic
    scene.Clear(True)


@pytest.fixture(scope="session")
def demo_model_path() -> Path:
    if not (DEMO_MODEL / "nnUNetTrainer__nnUNetPlans__3d_fullres").is_dir():
        pytest.fail("the bundled demo model is missing from Resources/Models/sciseg-demo")
    return DEMO_MODEL


@pytest.fixture(scope="session")
def learning_loop(tmp_path_factory: pytest.TempPathFactory, demo_model_path: Path):
    """The active-learning loop run once (Testing/learning_loop.py); its folders are read-only for the tests."""
    from learning_loop import run_learning_loop

    return run_learning_loop(tmp_path_factory.mktemp("learning_loop"), demo_model_path)


# The suite ends with no process it started still alive: every process a test starts inherits the session's
# mark (an environment variable); after the last test, the processes that carry it must end; any left is
# listed, killed, and fails the run.
_SESSION_MARK: str | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    global _SESSION_MARK
    import os

    from process_tree import MARK_VARIABLE, new_mark

    from SCIsegLib.exit_collection import skip_collections_at_exit

    _SESSION_MARK = os.environ[MARK_VARIABLE] = new_mark()
    skip_collections_at_exit()  # pytest's own end, with torch, VTK and Slicer loaded, skips the last collections


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SESSION_MARK is None:
        return
    from process_tree import describe, marked_processes, wait_until_gone

    left = wait_until_gone(lambda: marked_processes(_SESSION_MARK), timeout_s=30.0)
    if left:
        session.config.pluginmanager.get_plugin("terminalreporter").write_line(
            "processes started by the tests are still alive after the last test:\n" + describe(left), red=True)
        for process in left:
            try:
                process.kill()
            except Exception:
                pass
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
