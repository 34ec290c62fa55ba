"""The Slicer extension's files, checked without Slicer: CMake lists, packaging, the .ui, and the module's
call forms read from its AST (what PythonQt and Slicer accept; see SCIseg/README.md for the sources read)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from conftest import REPOSITORY

MODULE = REPOSITORY / "SCIseg" / "SCIseg.py"
UI = REPOSITORY / "SCIseg" / "Resources" / "UI" / "SCIseg.ui"
ICON = REPOSITORY / "SCIseg" / "Resources" / "Icons" / "SCIseg.png"


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
    return {item.replace("${MODULE_NAME}", "SCIseg") for item in block.group(1).split()}


def test_every_library_file_and_resource_is_listed_for_the_extension_build() -> None:
    assert cmake_list("SCISEG_LIB_SCRIPTS") == {p for p in tracked("SCIsegLib") if p.endswith(".py")}
    assert cmake_list("SCISEG_RESOURCES") == {p for p in tracked("Resources") if not p.endswith(".py")}
    # The module's own resources, the Extension Wizard's way (SCIseg/Resources, MODULE_PYTHON_RESOURCES).
    assert cmake_list("MODULE_PYTHON_RESOURCES") == {p.removeprefix("SCIseg/") for p in tracked("SCIseg/Resources")}
    assert cmake_list("MODULE_PYTHON_SCRIPTS") == {"SCIseg.py"}


def test_top_level_cmake_is_an_extension_the_index_accepts() -> None:
    text = (REPOSITORY / "CMakeLists.txt").read_text()
    for needed in (
        "cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)",  # the Slicer 5.10 Extension Wizard template
        "EXTENSION_HOMEPAGE", 'EXTENSION_CATEGORY "Segmentation"', "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
        'set(EXTENSION_DEPENDS "PyTorch")', "find_package(Slicer REQUIRED)",
        "add_subdirectory(SCIseg)", "Slicer_EXTENSION_GENERATE_CONFIG", "Slicer_EXTENSION_CPACK",
    ):
        assert needed in text
    # Icon and screenshot URLs name files of this repository (or none): raw.githubusercontent.com/<owner>/<repo>/main/<path>.
    for variable in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        value = re.search(rf'set\({variable} "([^"]*)"\)', text).group(1)
        for url in value.split():
            path = url.split("/main/", 1)[1]
            assert (REPOSITORY / path).is_file(), f"{variable} points to {path}, which does not exist"
    assert "/main/SCIseg/Resources/Icons/SCIseg.png" in text
    module_cmake = (REPOSITORY / "SCIseg" / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in module_cmake and "WITH_GENERIC_TESTS" in module_cmake
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module_cmake


def test_license_and_extensions_index_entry() -> None:
    license_text = (REPOSITORY / "LICENSE.txt").read_text()
    assert license_text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in license_text
    assert 'license = "MIT"' in (REPOSITORY / "pyproject.toml").read_text()
    # Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json: required keys, no others, their types.
    entry = json.loads((REPOSITORY / "SCIseg.json").read_text())
    properties = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                  "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= set(properties)
    assert all(isinstance(entry[key], properties[key]) for key in entry)
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert 1 <= entry.get("tier", 1) <= 5 and entry.get("scm_type", "git") in ("git", "local")
    assert entry["category"] == "Segmentation" and entry["build_dependencies"] == ["PyTorch"]


def test_icon_is_where_slicer_looks_for_it() -> None:
    """ScriptedLoadableModule: os.path.join(os.path.dirname(module path), "Resources/Icons", name + ".png")."""
    data = ICON.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == (128, 128)


# The .ui and the widget


def ui_widget_names() -> dict[str, str]:
    root = ElementTree.parse(UI).getroot()  # raises if the XML is not well formed
    assert root.tag == "ui" and root.find("class").text == "SCIseg"
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


def test_ui_has_every_widget_the_module_and_the_panel_state_use() -> None:
    from SCIsegLib.panel import PanelInputs, PanelState

    widgets = ui_widget_names()
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text())) | set(PanelState().enabled(PanelInputs()))
    assert used <= set(widgets), f"missing in the .ui: {sorted(used - set(widgets))}"
    assert widgets["inputVolumeSelector"] == "qMRMLNodeComboBox"
    assert widgets["logCollapsibleButton"] == "ctkCollapsibleButton" and widgets["logTextEdit"] == "QPlainTextEdit"


def test_ui_parameter_names_match_the_parameter_node() -> None:
    root = ElementTree.parse(UI).getroot()
    names = {p.find("string").text for p in root.iter("property") if p.get("name") == "SlicerParameterName"}
    tree = ast.parse(MODULE.read_text())
    [wrapper] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SCIsegParameterNode"]
    fields = {s.target.id for s in wrapper.body if isinstance(s, ast.AnnAssign)}
    assert names <= fields, f"unknown parameters in the .ui: {sorted(names - fields)}"
    assert {"inputVolume", "segmentation", "stepSize"} <= names


def _method(tree: ast.Module, class_name: str, name: str) -> ast.FunctionDef:
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    [method] = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name]
    return method


def test_every_input_the_buttons_depend_on_refreshes_them() -> None:
    """Each widget read by panelInputs() has its change signal connected to updateGUIFromState (Next case did not)."""
    tree = ast.parse(MODULE.read_text())
    read = set(re.findall(r"self\.ui\.(\w+)", ast.unparse(_method(tree, "SCIsegWidget", "inputs"))))
    connected = {
        call.func.value.attr
        for call in ast.walk(_method(tree, "SCIsegWidget", "setup"))
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "connect"
        and isinstance(call.func.value, ast.Attribute) and len(call.args) == 2
        and ast.unparse(call.args[1]) == "self.updateGUIFromState"
    }
    # The model combo changes through refreshModels/onModelChanged, which write the parameter node (observed).
    assert read - {"modelComboBox"} <= connected, f"not refreshing the buttons: {sorted(read - {'modelComboBox'} - connected)}"


# Call forms PythonQt and Slicer accept


#: The only calls that take a Python callable: PythonQt's connect/disconnect/QTimer.singleShot, and the
#: pure-Python VTKObservationMixin.addObserver/removeObserver.
CALLABLE_TAKERS = {"connect", "disconnect", "singleShot", "addObserver", "removeObserver"}


def callable_misuses(source: str) -> list[str]:
    """Calls passing a Python callable (a lambda, or a function/method defined in ``source``) to anything else
    than PythonQt's callable takers and SCIsegLib's own (pure Python) functions."""
    tree = ast.parse(source)
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    library = {alias.asname or alias.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "SCIsegLib"
               for alias in n.names}
    problems = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        callee = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
        if callee in CALLABLE_TAKERS:
            continue
        if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) and call.func.value.id in library:
            continue  # a Python function of SCIsegLib, not PythonQt
        if ast.unparse(call.func) == "functools.partial":
            continue  # pure Python (functools), not PythonQt
        for argument in [*call.args, *(k.value for k in call.keywords)]:
            is_callable = isinstance(argument, ast.Lambda) or (
                isinstance(argument, ast.Attribute) and isinstance(argument.value, ast.Name)
                and argument.value.id == "self" and argument.attr in defined
            ) or (isinstance(argument, ast.Name) and argument.id in defined)
            if is_callable:
                problems.append(f"line {call.lineno}: {ast.unparse(call)[:90]}")
    return problems


def pip_string_misuses(source: str) -> list[str]:
    """``pip_install`` calls given one string (Slicer 5.10 shlex-splits it: Windows paths lose backslashes)."""
    problems = []
    for call in ast.walk(ast.parse(source)):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "pip_install" and call.args:
            first = call.args[0]
            if isinstance(first, ast.JoinedStr) or (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                problems.append(f"line {call.lineno}: {ast.unparse(call)}")
    return problems


def test_the_checks_catch_the_defects_they_guard() -> None:
    """Snippets of the module as it was (commit 62f3693) are refused."""
    old = '''
class W:
    def onInstallFromFile(self): pass
    def setup(self):
        menu.addAction(_("Install from file..."), self.onInstallFromFile)
        menu.addAction(_("Download SCIseg v2"), lambda: self.onDownloadModel("sciseg-v2"))
        self.ui.segmentButton.connect("clicked(bool)", self.onInstallFromFile)
        qt.QTimer.singleShot(0, self.onInstallFromFile)
    def install(self, constraints):
        slicer.util.pip_install(f"nnunetv2 -c {constraints}")
        slicer.util.pip_install(["nnunetv2", "-c", constraints])
'''
    assert len(callable_misuses(old)) == 2
    assert pip_string_misuses(old) == ['line 10: slicer.util.pip_install(f\'nnunetv2 -c {constraints}\')']


def test_module_passes_callables_only_to_connect_and_pip_only_lists() -> None:
    source = MODULE.read_text()
    assert callable_misuses(source) == []
    assert pip_string_misuses(source) == []


def test_module_follows_the_slicer_template() -> None:
    text = MODULE.read_text()
    tree = ast.parse(text, feature_version=(3, 12))  # Slicer >= 5.10 runs Python 3.12
    classes = {n.name: [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes["SCIseg"] == ["ScriptedLoadableModule"]
    assert classes["SCIsegWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert classes["SCIsegLogic"] == ["ScriptedLoadableModuleLogic"]
    assert classes["SCIsegTest"] == ["ScriptedLoadableModuleTest"]
    for call in ("slicer.util.loadUI(self.resourcePath(", "connectGui", "StartCloseEvent", "EndCloseEvent", "@parameterNodeWrapper"):
        assert call in text
    # SCIsegTest keeps the event loop alive while it waits, and never blocks in run.wait().
    waiting = ast.unparse(_method(tree, "SCIsegTest", "waitFor"))
    assert "panel_selftest.wait_for(run, timeoutSeconds, slicer.app.processEvents)" in waiting
    assert ".wait(" not in ast.unparse([n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SCIsegTest"][0])
    # Without torch/nnU-Net it asks (interactive) or, under CTest, stops saying why.
    ready = ast.unparse(_method(tree, "SCIsegTest", "dependenciesReady"))
    assert "testingEnabled" in ready and "self.skipTest(" in ready and "ensureDependencies" in ready


def sciseglib_modules_named_in(source: str) -> set[str]:
    """SCIsegLib modules an import of ``source`` names, at its top or inside functions (relative ones too)."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            modules |= {f"SCIsegLib.{node.module}"} if node.module else {f"SCIsegLib.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "SCIsegLib":
            if node.module == "SCIsegLib":
                modules |= {f"SCIsegLib.{alias.name}" for alias in node.names}
            else:
                modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names if alias.name.startswith("SCIsegLib")}
    return modules


def test_module_and_everything_it_imports_load_no_torch_or_nnunet() -> None:
    """No ``import torch``/``nnunetv2`` in SCIseg.py, nor in any SCIsegLib module it names (transitively, at import)."""
    pytest.importorskip("slicer", reason="SCIsegLib.mrml needs the slicer-core wheel")
    source = MODULE.read_text()
    imported = {alias.name.split(".")[0] for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for alias in n.names}
    modules = {n.module.split(".")[0] for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.module}
    assert not ({"torch", "nnunetv2"} & (imported | modules))
    named = sciseglib_modules_named_in(source)
    for controller in ("panel_controller", "panel_session", "panel_shown"):  # what the controller imports when a job needs it
        named |= sciseglib_modules_named_in((REPOSITORY / "SCIsegLib" / f"{controller}.py").read_text())
    named = sorted(name for name in named if (REPOSITORY / f"{name.replace('.', '/')}.py").is_file())
    assert {"SCIsegLib.panel", "SCIsegLib.runner", "SCIsegLib.mrml", "SCIsegLib.panel_jobs", "SCIsegLib.panel_selftest"} <= set(named)
    code = (
        f"import importlib, sys; [importlib.import_module(m) for m in {named!r}];"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'nnunetv2')); print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_module_file_has_no_pyflakes_findings() -> None:
    """SCIseg.py used ``settings`` before assigning it (F821): an empty panel. ruff catches that class of bug."""
    beside_python = Path(sys.executable).parent / "ruff"
    ruff = str(beside_python) if beside_python.is_file() else shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (scripts/test.sh runs it over the whole repository anyway)")
    result = subprocess.run([ruff, "check", "--select", "F,E9,B", "SCIseg", "SCIsegLib/panel.py", "SCIsegLib/mrml.py"],
                            cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# Calls into SCIsegLib: names and arguments that exist (the module cannot be imported here without Qt)

LIBRARY_MODULES = ("dependencies", "models", "mrml", "panel", "panel_case", "panel_controller", "panel_devices", "panel_install", "panel_jobs",
                   "panel_lesions", "panel_results", "panel_selftest", "panel_session", "panel_view", "runner", "volume")


def library_call_problems(source: str, modules: dict[str, object]) -> list[str]:
    """``module.name`` references of ``source`` that ``modules`` lack, and calls whose arguments do not bind."""
    import inspect

    problems = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules):
            continue
        if not hasattr(modules[node.value.id], node.attr):
            problems.append(f"line {node.lineno}: {node.value.id}.{node.attr} does not exist")
    for call in ast.walk(ast.parse(source)):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
                and call.func.value.id in modules and hasattr(modules[call.func.value.id], call.func.attr)):
            continue
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            continue
        target = getattr(modules[call.func.value.id], call.func.attr)
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):
            continue
        try:
            signature.bind(*call.args, **{k.arg: k.value for k in call.keywords})
        except TypeError as error:
            problems.append(f"line {call.lineno}: {ast.unparse(call)[:80]}: {error}")
    return problems


#: Attributes of the runner's objects the module reads (on ``run``, ``command``, ``job.run``, ``self._probe``).
RUN_NAMES = {"run", "command", "_probe"}


def runner_attribute_problems(source: str, runner_module, setters: tuple[str, ...] = ()) -> list[str]:
    """Attributes read on runner objects that no runner class has (nor the module, or ``setters``' sources, set on them)."""
    runner_source = Path(runner_module.__file__).read_text()
    provided = {a for cls in vars(runner_module).values() if isinstance(cls, type) for a in dir(cls)}
    provided |= {t.attr for n in ast.walk(ast.parse(runner_source)) if isinstance(n, ast.Assign) for t in n.targets
                 if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}
    for setter in setters:
        provided |= {t.attr for n in ast.walk(ast.parse(setter)) if isinstance(n, ast.Assign) for t in n.targets
                     for t in (t.elts if isinstance(t, ast.Tuple) else [t])
                     if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in RUN_NAMES}
    read, assigned = {}, set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and (
            (isinstance(node.value, ast.Name) and node.value.id in RUN_NAMES)
            or (isinstance(node.value, ast.Attribute) and node.value.attr in RUN_NAMES)
        ):
            (assigned.add(node.attr) if isinstance(node.ctx, ast.Store) else read.setdefault(node.attr, node.lineno))
    return [f"line {line}: .{name} is not an attribute of any runner class" for name, line in sorted(read.items())
            if name not in provided | assigned]


def test_the_library_checks_catch_what_they_guard(tmp_path: Path) -> None:
    from SCIsegLib import panel_devices

    fake_runner = type(sys)("runner")
    fake_runner.__file__ = str(tmp_path / "runner.py")
    Path(fake_runner.__file__).write_text(
        "class ChildCommand:\n    def __init__(self, arguments, python_executable=None):\n        self.stdout = ''\n"
    )
    exec(Path(fake_runner.__file__).read_text(), fake_runner.__dict__)
    source = (
        "def f(self, run, command):\n"
        "    runner.ChildCommand(['a'], python='x')\n"
        "    runner.ModelInstallRun('sciseg-v2')\n"
        "    panel_devices.device_choices({})\n"
        "    command.folder = 'f'\n"
        "    return command.stdout, command.folder, run.log_text\n"
    )
    problems = library_call_problems(source, {"runner": fake_runner, "panel_devices": panel_devices})
    assert len(problems) == 3, problems
    assert "ModelInstallRun does not exist" in problems[0]
    assert any("python" in p for p in problems) and any("saved" in p for p in problems)
    assert runner_attribute_problems(source, fake_runner) == ["line 6: .log_text is not an attribute of any runner class"]


def test_module_calls_into_the_library_exist_with_those_arguments() -> None:
    """SCIseg.py cannot be imported without Slicer's Qt: its calls into SCIsegLib are bound to the real signatures."""
    pytest.importorskip("slicer", reason="SCIsegLib.mrml needs the slicer-core wheel")
    import importlib

    modules = {name: importlib.import_module(f"SCIsegLib.{name}") for name in LIBRARY_MODULES}
    if not hasattr(modules["runner"], "ModelInstallRun"):
        pytest.skip("runs once issue-10b's runner (ModelInstallRun, ChildCommand.new_log_lines) and dependencies are merged")
    source = MODULE.read_text()
    assert library_call_problems(source, modules) == []
    setters = (Path(modules["panel_jobs"].__file__).read_text(),)
    assert runner_attribute_problems(source, modules["runner"], setters) == []


#: Widget classes Slicer 5.10's parameterNodeWrapper connects to each parameter type
#: (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py, the canRepresent of each connector).
CONNECTABLE = {
    "bool": {"QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"},
    "int": {"QSlider", "QSpinBox", "QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider",
            "ctkDoubleSpinBox", "qMRMLSpinBox"},
    "float": {"QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox", "qMRMLSpinBox"},
    "str": {"QLineEdit", "QLabel", "QTextEdit", "QComboBox", "ctkComboBox"},
    "node": {"qMRMLNodeComboBox"},
}
#: Connectors that raise RuntimeError for an unbounded value (no WithinRange, or Minimum and Maximum).
NEED_BOUNDS = {"QSlider", "ctkSliderWidget", "qMRMLSliderWidget"}


def connect_gui_problems(module_source: str, ui_widgets: dict[str, tuple[str, str]]) -> list[str]:
    """Parameters bound in the .ui (``ui_widgets``: parameter -> (widget name, class)) to a widget class that
    ``connectGui`` cannot connect to the parameter's type, or to a slider without bounds."""
    tree = ast.parse(module_source)
    [wrapper] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SCIsegParameterNode"]
    problems = []
    for statement in wrapper.body:
        if not isinstance(statement, ast.AnnAssign) or statement.target.id not in ui_widgets:
            continue
        annotation = ast.unparse(statement.annotation)
        base = annotation.removeprefix("Annotated[").split(",")[0].rstrip("]")
        kind = "node" if base.startswith("vtkMRML") else base
        name, widget_class = ui_widgets[statement.target.id]
        if widget_class not in CONNECTABLE.get(kind, set()):
            problems.append(f"{statement.target.id} ({annotation}) is bound to {name}, a {widget_class}: connectGui cannot connect it")
        elif widget_class in NEED_BOUNDS and "WithinRange(" not in annotation and not ("Minimum(" in annotation and "Maximum(" in annotation):
            problems.append(f"{statement.target.id} ({annotation}) on a {widget_class} needs WithinRange (connectGui raises)")
    return problems


def test_connect_gui_check_catches_what_it_guards() -> None:
    source = (
        "@parameterNodeWrapper\nclass SCIsegParameterNode:\n    step: float = 0.5\n    flag: bool = False\n"
        "    node: vtkMRMLScalarVolumeNode\n    count: Annotated[int, WithinRange(0, 9)] = 1\n"
    )
    widgets = {"step": ("s", "ctkSliderWidget"), "flag": ("f", "QComboBox"), "node": ("n", "qMRMLNodeComboBox"),
               "count": ("c", "QSpinBox")}
    problems = connect_gui_problems(source, widgets)
    assert len(problems) == 2 and "needs WithinRange" in problems[0] and "connectGui cannot connect" in problems[1]


def test_every_parameter_widget_is_one_connect_gui_connects() -> None:
    root = ElementTree.parse(UI).getroot()
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = (widget.get("name"), widget.get("class"))
    assert connect_gui_problems(MODULE.read_text(), bound) == []


#: Qt signals by class, as declared in Qt 5.15 and in the headers read (Slicer Libs/MRML/Widgets/qMRMLNodeComboBox.h
#: and qMRMLTableView.h, Base/QTGUI/qSlicerApplication.h; CTK Libs/Widgets/ctkPathLineEdit.h), in the normalized form
#: PythonQt's connect matches ("const QString&" -> "QString").
SIGNALS = {
    "QPushButton": {"clicked()", "clicked(bool)", "toggled(bool)", "pressed()", "released()"},
    "QToolButton": {"clicked()", "clicked(bool)", "triggered(QAction*)"},
    "QComboBox": {"currentIndexChanged(int)", "currentIndexChanged(QString)", "currentTextChanged(QString)", "activated(int)"},
    "QLineEdit": {"textChanged(QString)", "textEdited(QString)", "editingFinished()", "returnPressed()"},
    "QCheckBox": {"toggled(bool)", "stateChanged(int)", "clicked(bool)"},
    "QSpinBox": {"valueChanged(int)", "editingFinished()"},
    "ctkPathLineEdit": {"currentPathChanged(QString)", "validInputChanged(bool)"},
    "qMRMLNodeComboBox": {"currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)", "currentNodeIDChanged(QString)",
                          "nodeActivated(vtkMRMLNode*)", "nodeAdded(vtkMRMLNode*)"},
    "QTimer": {"timeout()"},
    "QAction": {"triggered()", "triggered(bool)", "toggled(bool)"},
    "QDialogButtonBox": {"accepted()", "rejected()", "clicked(QAbstractButton*)"},
    "qMRMLTableView": {"selectionChanged()", "mrmlSceneChanged(vtkMRMLScene*)"},
    "qSlicerApplication": {"startupCompleted()"},
}
#: What the module's non-.ui receivers are.
RECEIVERS = {"self._timer": "QTimer", "action": "QAction", "buttonBox": "QDialogButtonBox", "tableView": "qMRMLTableView",
             "self._tableView": "qMRMLTableView", "slicer.app": "qSlicerApplication"}


def signal_problems(source: str, ui_classes: dict[str, str]) -> list[str]:
    """``connect``/``disconnect`` calls whose signal string is not one the receiver's class declares."""
    problems = []
    for call in ast.walk(ast.parse(source)):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in ("connect", "disconnect")):
            continue
        if not (call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)):
            problems.append(f"line {call.lineno}: {ast.unparse(call)[:70]}: not the string form (PythonQt also has obj.signal.connect(f); the string form is used so this check can read it)")
            continue
        receiver = ast.unparse(call.func.value)
        widget_class = ui_classes.get(receiver.removeprefix("self.ui.")) if receiver.startswith("self.ui.") else RECEIVERS.get(receiver)
        if widget_class is None:
            problems.append(f"line {call.lineno}: unknown receiver {receiver}: add its class to RECEIVERS")
        elif call.args[0].value not in SIGNALS.get(widget_class, set()):
            problems.append(f"line {call.lineno}: {widget_class} has no signal {call.args[0].value!r}")
    return problems


def test_signal_check_catches_what_it_guards() -> None:
    source = (
        "self.ui.segmentButton.connect('clicked()', f)\n"
        "self.ui.segmentButton.connect('click()', f)\n"
        "self.ui.inputVolumeSelector.connect('currentNodeChanged(vtkMRMLNode)', f)\n"
        "self._timer.timeout.connect(f)\n"
    )
    problems = signal_problems(source, {"segmentButton": "QPushButton", "inputVolumeSelector": "qMRMLNodeComboBox"})
    assert len(problems) == 3 and "click()" in problems[0] and "vtkMRMLNode)" in problems[1] and "not the string form" in problems[2]


def test_every_connected_signal_exists_on_its_widget() -> None:
    ui_classes = {name: widget_class for name, widget_class in ui_widget_names().items()}
    assert signal_problems(MODULE.read_text(), ui_classes) == []


def test_module_load_imports_no_simpleitk_or_numpy() -> None:
    """Slicer imports every module file at start-up: SimpleITK there cost ~0.5 s. Only the top-level imports count."""
    tree = ast.parse(MODULE.read_text())
    top = sorted({f"SCIsegLib.{alias.name}" if n.module == "SCIsegLib" else n.module
                  for n in tree.body if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("SCIsegLib")
                  for alias in n.names})
    assert "SCIsegLib.panel" in top
    code = (f"import importlib, sys; [importlib.import_module(m) for m in {top!r}];"
            "print(sorted(m for m in ('SimpleITK', 'numpy', 'slicer', 'vtk') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_every_dialog_the_module_makes_is_deleted() -> None:
    """askChoice (now choose) parented a QDialog to the main window per question and never deleted it."""
    tree = ast.parse(MODULE.read_text())
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef):
            continue
        made = [n for n in ast.walk(function) if isinstance(n, ast.Call) and ast.unparse(n.func) == "qt.QDialog"]
        if made:
            deleted_in_finally = [n for t in ast.walk(function) if isinstance(t, ast.Try) for f in t.finalbody
                                  for n in ast.walk(f) if isinstance(n, ast.Call) and ast.unparse(n.func).endswith(".deleteLater")]
            assert deleted_in_finally, f"{function.name} makes a QDialog and does not deleteLater() it in a finally"


def test_reload_reloads_the_library_first() -> None:
    """Slicer's Reload re-executes SCIseg.py only; the widget forgets SCIsegLib first (as SlicerNNUnet's onReload)."""
    tree = ast.parse(MODULE.read_text())
    body = [ast.unparse(statement) for statement in _method(tree, "SCIsegWidget", "onReload").body]
    forget = body.index("panel.forget_library_modules()")
    assert forget < body.index("ScriptedLoadableModuleWidget.onReload(self)")


# The module is binding only: what it may still hold, and what it must implement

#: The most lines SCIseg.py may have (Module, parameter node, widget, logic, test), and the most `if`s (statements and
#: expressions) the widget may hold: its remaining ones only map a missing node, an empty path or a dialog's answer
#: onto a call. Every other decision lives in SCIsegLib.panel_controller / panel_session (tested without Qt).
MODULE_LINES_CAP = 490
WIDGET_IF_CAP = 16


def widget_branches(source: str) -> list[str]:
    [widget] = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "SCIsegWidget"]
    return [f"line {n.lineno}: {ast.unparse(n.test)[:60]}" for n in ast.walk(widget) if isinstance(n, (ast.If, ast.IfExp))]


def test_the_module_is_binding_only() -> None:
    source = MODULE.read_text()
    assert len(source.splitlines()) <= MODULE_LINES_CAP, "SCIseg.py grew: move the decision into SCIsegLib"
    branches = widget_branches(source)
    assert len(branches) <= WIDGET_IF_CAP, "\n".join(branches)
    # The check counts: the widget as it was (commit 0c81a1a, 716 lines) had 96.
    old = "class SCIsegWidget:\n" + "".join(f"    def f{i}(self):\n        if x:\n            pass\n" for i in range(WIDGET_IF_CAP + 1))
    assert len(widget_branches(old)) == WIDGET_IF_CAP + 1


def test_the_widget_implements_the_panel_view_and_calls_what_the_controller_has() -> None:
    """The widget is the controller's PanelView (same method names and parameters), and every ``self.controller.X``
    (``.session.X``, ``.state.X``) it uses exists: SCIseg.py cannot be imported without Slicer's Qt."""
    pytest.importorskip("slicer", reason="SCIsegLib.mrml needs the slicer-core wheel")
    import inspect

    from SCIsegLib import panel_controller, panel_view
    from SCIsegLib.panel import PanelState
    from SCIsegLib.panel_session import CaseSession

    tree = ast.parse(MODULE.read_text())
    [widget] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SCIsegWidget"]
    methods = {n.name: [a.arg for a in n.args.args[1:]] for n in widget.body if isinstance(n, ast.FunctionDef)}
    methods |= {t.id: methods.get(ast.unparse(n.value), []) for n in widget.body if isinstance(n, ast.Assign)
                for t in n.targets if isinstance(t, ast.Name)}  # refresh = updateGUIFromState
    wanted = {name: [p for p in inspect.signature(member).parameters if p != "self"]
              for name, member in vars(panel_view.PanelView).items() if inspect.isfunction(member) and not name.startswith("_")}
    missing = {name: parameters for name, parameters in wanted.items()
               if name not in methods or (methods[name][:len(parameters)] != parameters and name != "refresh")}
    assert not missing, f"PanelView methods the widget lacks or names differently: {missing}"
    owners = {"self.controller": panel_controller.PanelController, "self.controller.session": CaseSession,
              "self.controller.state": PanelState}
    controller = panel_controller.PanelController(None, None, None, "python", lambda action: True)
    unknown = [f"line {n.lineno}: {ast.unparse(n)}" for n in ast.walk(widget) if isinstance(n, ast.Attribute)
               and ast.unparse(n.value) in owners and not hasattr(eval(ast.unparse(n.value), {"self": type("W", (), {"controller": controller})}), n.attr)]
    assert unknown == []


def test_the_tests_parameter_node_has_the_modules_fields() -> None:
    """Testing/slicer_scene.PanelParameters stands for SCIsegParameterNode in the controller's tests: same fields, same defaults."""
    pytest.importorskip("slicer", reason="slicer_scene needs the slicer-core wheel")
    import dataclasses

    from slicer_scene import PanelParameters

    tree = ast.parse(MODULE.read_text())
    [wrapper] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SCIsegParameterNode"]
    fields = {s.target.id: s.value for s in wrapper.body if isinstance(s, ast.AnnAssign)}
    assert ast.unparse(fields["model"]) == "models.BUNDLED_DEMO"
    fields = {name: "sciseg-demo" if name == "model" else None if value is None else ast.literal_eval(value)
              for name, value in fields.items()}
    assert {f.name: f.default for f in dataclasses.fields(PanelParameters)} == fields


def test_every_slicer_module_the_panel_calls_is_a_declared_dependency() -> None:
    """``slicer.modules.<name>`` exists only when that module is loaded (a user may disable one in the application
    settings): declared in ``parent.dependencies``, Slicer does not load SCIseg without it (qSlicerAbstractCoreModule
    dependencies) instead of failing at a click. Markups, Tables and Plots were used and not declared."""
    source = MODULE.read_text()
    used = set(re.findall(r"slicer\.modules\.(\w+)\.", source)) - {"SCIsegWidget"}
    [declared] = re.findall(r"self\.parent\.dependencies = (\[.*?\])", source)
    assert used == {"terminologies", "segmentations", "segmenteditor", "tables", "plots", "markups"}
    assert used <= {name.lower() for name in ast.literal_eval(declared)}


def test_the_views_error_block_sets_no_wait_cursor_over_its_questions() -> None:
    """``PanelView.trying`` blocks may ask (``CaseSession.open_selected`` asks whether to restore a draft inside one);
    ``slicer.util.tryWithErrorDisplay(waitCursor=True)`` sets the application's override cursor for the whole block
    (Slicer 5.10 ``Base/Python/slicer/util.py`` l. 3367-3394), so the question showed a busy cursor."""
    widget = [n for n in ast.parse(MODULE.read_text()).body if isinstance(n, ast.ClassDef) and n.name == "SCIsegWidget"]
    [trying] = [n for n in widget[0].body if isinstance(n, ast.FunctionDef) and n.name == "trying"]
    assert "tryWithErrorDisplay" in ast.unparse(trying) and "waitCursor=True" not in ast.unparse(trying)
    import inspect

    from SCIsegLib.panel_session import CaseSession

    opening = inspect.getsource(CaseSession.open_selected)
    assert opening.index("self.view.trying(") < opening.index("self.view.ask(")  # the question this is about
