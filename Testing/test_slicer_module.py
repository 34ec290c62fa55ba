"""The Slicer extension's files, checked without Slicer: CMake lists, the .ui, the module's use of them."""

from __future__ import annotations

import ast
import re
import subprocess
import xml.etree.ElementTree as ElementTree

from conftest import REPOSITORY

MODULE = REPOSITORY / "SCIseg" / "SCIseg.py"
UI = REPOSITORY / "Resources" / "UI" / "SCIseg.ui"


def tracked(pattern: str) -> set[str]:
    listed = subprocess.run(["git", "ls-files", pattern], cwd=REPOSITORY, capture_output=True, text=True, check=True)
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", pattern], cwd=REPOSITORY, capture_output=True, text=True, check=True
    )
    return set(listed.stdout.split()) | set(untracked.stdout.split())


def cmake_list(variable: str) -> set[str]:
    text = (REPOSITORY / "SCIseg" / "CMakeLists.txt").read_text()
    block = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert block, f"{variable} is not set in SCIseg/CMakeLists.txt"
    return set(block.group(1).split())


def test_every_library_file_and_resource_is_listed_for_the_extension_build() -> None:
    assert cmake_list("SCISEG_LIB_SCRIPTS") == {p for p in tracked("SCIsegLib") if p.endswith(".py")}
    resources = {p for p in tracked("Resources") if not p.endswith(".py")}
    assert cmake_list("SCISEG_RESOURCES") == resources
    assert cmake_list("MODULE_PYTHON_SCRIPTS") == {"${MODULE_NAME}.py"}


def test_top_level_cmake_is_an_extension() -> None:
    text = (REPOSITORY / "CMakeLists.txt").read_text()
    for needed in (
        "EXTENSION_HOMEPAGE", 'EXTENSION_CATEGORY "Segmentation"', "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS", "find_package(Slicer REQUIRED)",
        "add_subdirectory(SCIseg)", "Slicer_EXTENSION_GENERATE_CONFIG", "Slicer_EXTENSION_CPACK",
    ):
        assert needed in text
    module_cmake = (REPOSITORY / "SCIseg" / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in module_cmake and "WITH_GENERIC_TESTS" in module_cmake
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module_cmake


def ui_widget_names() -> dict[str, str]:
    root = ElementTree.parse(UI).getroot()  # raises if the XML is not well formed
    assert root.tag == "ui" and root.find("class").text == "SCIseg"
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_ui_has_every_widget_the_module_uses() -> None:
    widgets = ui_widget_names()
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))
    assert used, "the module uses no widget?"
    assert used <= set(widgets), f"missing in the .ui: {sorted(used - set(widgets))}"
    assert widgets["inputVolumeSelector"] == "qMRMLNodeComboBox"


def test_ui_parameter_names_match_the_parameter_node() -> None:
    root = ElementTree.parse(UI).getroot()
    names = {
        p.find("string").text
        for p in root.iter("property")
        if p.get("name") == "SlicerParameterName"
    }
    tree = ast.parse(MODULE.read_text())
    [wrapper] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SCIsegParameterNode"]
    fields = {s.target.id for s in wrapper.body if isinstance(s, ast.AnnAssign)}
    assert names <= fields, f"unknown parameters in the .ui: {sorted(names - fields)}"
    assert {"inputVolume", "segmentation", "stepSize"} <= names


def test_module_follows_the_slicer_template_and_never_imports_torch() -> None:
    text = MODULE.read_text()
    tree = ast.parse(text, feature_version=(3, 12))  # Slicer >= 5.10 runs Python 3.12
    classes = {n.name: [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes["SCIseg"] == ["ScriptedLoadableModule"]
    assert classes["SCIsegWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["SCIsegLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["SCIsegTest"] == ["ScriptedLoadableModuleTest"]
    for call in ("slicer.util.loadUI", "connectGui", "StartCloseEvent", "EndCloseEvent", "@parameterNodeWrapper"):
        assert call in text
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "torch" not in imported and not any(m and m.startswith(("torch", "nnunetv2")) for m in modules)
    assert "SCIsegLib.inference" not in modules and "SCIsegLib.segment" not in modules


def test_library_modules_used_by_slicer_import_no_torch() -> None:
    """mrml, runner, models, dependencies run in Slicer's process: none may import torch or nnunetv2."""
    import sys

    code = (
        "import sys; import SCIsegLib.models, SCIsegLib.runner, SCIsegLib.dependencies, SCIsegLib.volume;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'nnunetv2')]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_icon_is_a_128_pixel_png() -> None:
    data = (REPOSITORY / "Resources" / "Icons" / "SCIseg.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (128, 128)
