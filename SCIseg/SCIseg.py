"""SCIseg: spinal cord and lesion segmentation of SCI MRI in 3D Slicer.

Binding only (the Extension Wizard's layout, SlicerNNUnet's split): the widget connects signals to
``SCIsegLib.panel_controller.PanelController``, which decides and is tested without Qt, and shows what it is told
through ``SCIsegLib.panel_view.PanelView``. Children run the work; torch never enters Slicer's process. Every Slicer,
CTK and PythonQt call here is listed with the source it was checked in, in ``SCIseg/README.md``; PythonQt takes
Python callables only in ``connect``/``disconnect``/``QTimer.singleShot`` (``Testing/test_slicer_module.py``).
"""

import functools
import os
import shutil
import sys
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# SCIsegLib lies beside this file in an installed extension (qt-scripted-modules/SCIsegLib), one folder
# up in a source checkout added to "Additional module paths".
_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
for _candidate in (_MODULE_DIR, os.path.dirname(_MODULE_DIR)):
    if os.path.isdir(os.path.join(_candidate, "SCIsegLib")):
        if _candidate not in sys.path:
            sys.path.insert(0, _candidate)
        break
else:
    raise ImportError("SCIseg: the SCIsegLib package was not found next to the module")

# Only light modules at Slicer's start-up: mrml and panel_jobs (SimpleITK, numpy) are imported when a job needs them.
from SCIsegLib import dependencies, models, panel, panel_controller, panel_devices, panel_grey_matter, panel_view, panel_warm  # noqa: E402,E501
from SCIsegLib.panel import Action, PanelInputs  # noqa: E402

CITATION = (
    "Naga Karthik E, Valosek J, et al. SCIseg: Automatic Segmentation of Intramedullary Lesions in Spinal Cord "
    "Injury on T2-weighted MRI Scans. Radiology: Artificial Intelligence 2024. https://doi.org/10.1148/ryai.240005"
)
WINDOW_TITLE = "SCIseg"


#
# SCIseg
#


class SCIseg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SCIseg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "SegmentEditor", "Terminologies", "Markups", "Tables", "Plots"]
        self.parent.contributors = ["SCIseg developers"]
        self.parent.helpText = _(
            "Segments the spinal cord and intramedullary T2w lesions in spinal cord injury MRI with the SCIseg "
            "nnU-Net model, lets you correct them in Segment Editor and export them for training. "
            "Click <b>Segment</b>, then <b>Edit in Segment Editor</b>."
        )
        self.parent.acknowledgementText = _(
            "SCIseg model: {citation}. Built on nnU-Net (Isensee et al., Nature Methods 2021) and compatible with "
            "the Spinal Cord Toolbox (De Leener et al., NeuroImage 2017)."
        ).format(citation=CITATION)
        slicer.app.connect("startupCompleted()", loadSCIsegTerminology)


def loadSCIsegTerminology():
    """Make the SCIseg terminology (spinal cord, lesion) known to Slicer's terminology picker."""
    logic = slicer.modules.terminologies.logic()
    if not logic.LoadContextFromFile(str(panel.TERMINOLOGY_FILE)):
        slicer.util.warningDisplay(
            _("SCIseg could not load its terminology file {path}").format(path=panel.TERMINOLOGY_FILE), windowTitle=WINDOW_TITLE
        )


#
# Parameter node
#


@parameterNodeWrapper
class SCIsegParameterNode:
    """State of the panel, saved with the scene.

    inputVolume: the T2w scan; segmentation: the SCIseg result being corrected; model and device as
    chosen in the combo boxes; the options mirror ``sciseg segment``; nliSlice: axial slice (I->S) of the
    neurological level of injury, -1 for none.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    model: str = models.BUNDLED_DEMO
    device: str = "auto"
    stepSize: Annotated[float, WithinRange(0.1, 1.0)] = 0.5
    testTimeAugmentation: bool = False
    keepLargestCord: bool = False
    fillHoles: bool = False
    lesionInsideCord: bool = False
    nliSlice: Annotated[int, WithinRange(-1, 9999)] = -1


#
# SCIsegWidget
#


class SCIsegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the widgets to ``SCIsegLib.panel_controller.PanelController`` (which decides) and implements its
    ``PanelView`` (``SCIsegLib.panel_view``) with Qt and Slicer calls."""

    def __init__(self, parent=None) -> None:
        # Everything setup() uses is made first: without a parent, ScriptedLoadableModuleWidget.__init__ calls
        # setup() itself (Slicer Base/Python/slicer/ScriptedLoadableModule.py, 5.10 l. 99-107).
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.controller = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._menuActions = []
        self._tableView = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        ScriptedLoadableModuleWidget.__init__(self, parent)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SCIseg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SCIsegLogic()
        self.controller = panel_controller.PanelController(
            slicer.mrmlScene, slicer.modules.segmentations.logic(), self, self.logic.pythonExecutable(),
            self.logic.ensureDependencies, self.logic.installed, panel_warm.PanelEngines(self.logic.pythonExecutable()))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # PythonQt's QMenu.addAction takes no Python callable: a QAction whose triggered() is connected.
        menu = qt.QMenu(self.ui.modelMenuButton)
        for text, slot in (
            (_("Install from file..."), self.onInstallFromFile),
            (_("Download SCIseg v2"), functools.partial(self.onDownloadModel, "sciseg-v2")),
            (_("Download SCIseg v1"), functools.partial(self.onDownloadModel, "sciseg-v1")),
            (_("Refresh list"), self.refreshModels),
        ):
            action = qt.QAction(text, menu)
            action.connect("triggered()", slot)
            menu.addAction(action)
            self._menuActions.append(action)
        self.ui.modelMenuButton.setMenu(menu)

        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.segmentButton.connect("clicked(bool)", self.controller.segment)
        self.ui.greyMatterButton.connect("clicked(bool)", self.controller.grey_matter)
        self.ui.cancelButton.connect("clicked(bool)", self.controller.cancel)
        self.ui.editButton.connect("clicked(bool)", self.controller.edit)
        self.ui.measureButton.connect("clicked(bool)", self.controller.measure)
        self.ui.exportButton.connect("clicked(bool)", self.controller.export)
        self.ui.compareButton.connect("clicked(bool)", self.controller.compare)
        self.ui.nextCaseButton.connect("clicked(bool)", self.controller.next_case)
        self._timer.connect("timeout()", self.controller.poll)

        settings = qt.QSettings()
        self.ui.queuePathLineEdit.currentPath = settings.value("SCIseg/Queue", "")
        self.ui.raterLineEdit.text = settings.value("SCIseg/Rater", "")
        self.ui.exportFolderPathLineEdit.currentPath = settings.value("SCIseg/ExportFolder", "")
        self.ui.raterLineEdit.connect("textChanged(QString)", self.updateGUIFromState)
        self.ui.exportFolderPathLineEdit.connect("currentPathChanged(QString)", self.updateGUIFromState)
        self.ui.queuePathLineEdit.connect("currentPathChanged(QString)", self.updateGUIFromState)
        self.ui.compareSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateGUIFromState)

        self.refreshModels()
        self.devices_changed()
        self.controller.report_versions(list(dependencies.installed_version_problems()))
        self._timer.start()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Reload or Slicer exit: unsaved edits go to a draft, every child stops, temporary files go."""
        self._timer.stop()
        self.controller.shutdown()
        self.removeObservers()
        self.connectTableView(None)  # a reloaded module must not leave this widget's slot on Slicer's table view

    def onReload(self) -> None:
        """Reload SCIsegLib too (Slicer re-executes only this file), as SlicerNNUnet's ``onReload`` does."""
        panel.forget_library_modules()
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        """Leaving the panel (for Segment Editor): the widgets stop following the parameter node; the controller keeps
        it, so drafts and the live lesion list go on."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromState)

    def onSceneStartClose(self, caller, event) -> None:
        self.controller.scene_closing()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.controller.select_first_scan()

    def setParameterNode(self, inputParameterNode: Optional[SCIsegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromState)
        self._parameterNode = self.controller.parameters = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromState)
            self.models_changed(self._parameterNode.model)
            self.devices_changed()
            self.updateGUIFromState()

    def inputs(self) -> PanelInputs:
        return PanelInputs.of(self._parameterNode, self.ui.compareSegmentationSelector.currentNode(),
                              self.ui.modelComboBox.count > 0, self.ui.raterLineEdit.text,
                              self.ui.exportFolderPathLineEdit.currentPath, self.ui.queuePathLineEdit.currentPath)

    def updateGUIFromState(self, *unused) -> None:
        """Enable the widgets as ``PanelState.enabled`` says; the device combo follows the parameter node."""
        for name, enabled in self.controller.state.enabled(self.inputs()).items():
            getattr(self.ui, name).enabled = enabled
        self.ui.segmentButton.toolTip = panel_view.segment_tooltip(self.ui.segmentButton.enabled)
        index = self.ui.deviceComboBox.findData(self._parameterNode.device) if self._parameterNode else -1
        if index >= 0:  # the saved device (always listed once probed); the same index emits nothing
            self.ui.deviceComboBox.setCurrentIndex(index)
        self.controller.session.selection_changed()

    # Models and devices

    def refreshModels(self) -> None:
        self.models_changed((self._parameterNode.model if self._parameterNode else "") or self.ui.modelComboBox.currentText)

    def onModelChanged(self, index: int) -> None:
        self.controller.model_chosen(self.ui.modelComboBox.currentText, self.ui.modelComboBox.count)

    def onDeviceChanged(self, index: int) -> None:
        self.controller.device_chosen(index, self.ui.deviceComboBox.itemData(index))

    def onInstallFromFile(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Install an nnU-Net model"), "", _("Model zip (*.zip)"))
        if path:
            self.controller.install_model(path)

    def onDownloadModel(self, name: str) -> None:
        if slicer.util.confirmOkCancelDisplay(panel_view.download_question(name), windowTitle=WINDOW_TITLE):
            self.controller.install_model(name)

    # Lesion table rows

    def connectTableView(self, tableView) -> None:
        """One connection to Slicer's table view, whatever the number of tables shown."""
        if self._tableView is not None:
            self._tableView.disconnect("selectionChanged()", self.onLesionRowSelected)
        self._tableView = tableView
        if tableView is not None:
            tableView.connect("selectionChanged()", self.onLesionRowSelected)

    def onLesionRowSelected(self) -> None:
        rows = [index.row() for index in self._tableView.selectionModel().selectedIndexes()]
        self.controller.row_clicked(self._tableView.mrmlTableNode(), rows, self._tableView.currentIndex().row())

    # PanelView (SCIsegLib.panel_view): what the controller shows and asks

    def say(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def log(self, lines) -> None:
        for line in lines:
            self.ui.logTextEdit.appendPlainText(line)

    def clear_log(self) -> None:
        self.ui.logTextEdit.clear()

    def show_log(self) -> None:
        self.ui.logCollapsibleButton.collapsed = False

    def progress(self, per_mille: int) -> None:
        self.ui.progressBar.value = per_mille

    def error(self, message: str, detail: str = "") -> None:
        slicer.util.errorDisplay(message, windowTitle=WINDOW_TITLE, detailedText=detail)

    def ask(self, question: str) -> bool:
        return slicer.util.confirmYesNoDisplay(question, windowTitle=WINDOW_TITLE)

    def choose(self, question: str, labels) -> Optional[int]:
        """A modal dialog with a combo box; the chosen index, or None when cancelled."""
        dialog = qt.QDialog(slicer.util.mainWindow())
        dialog.setWindowTitle(WINDOW_TITLE)
        layout = qt.QVBoxLayout(dialog)
        label = qt.QLabel(question)
        label.wordWrap = True
        layout.addWidget(label)
        comboBox = qt.QComboBox()
        for item in labels:
            comboBox.addItem(item)
        layout.addWidget(comboBox)
        buttonBox = qt.QDialogButtonBox()  # as ExtensionWizardLib/CreateComponentDialog.py l. 39-41 does
        buttonBox.setStandardButtons(qt.QDialogButtonBox.Ok | qt.QDialogButtonBox.Cancel)
        buttonBox.connect("accepted()", dialog, "accept()")
        buttonBox.connect("rejected()", dialog, "reject()")
        layout.addWidget(buttonBox)
        try:
            return comboBox.currentIndex if dialog.exec_() == qt.QDialog.Accepted else None
        finally:
            dialog.deleteLater()  # parented to the main window: without this, one dialog per question stays alive

    def trying(self, failure: str):
        return slicer.util.tryWithErrorDisplay(failure)  # no wait cursor: such a block may ask (a draft to restore)

    def later(self, slot) -> None:
        qt.QTimer.singleShot(0, slot)

    refresh = updateGUIFromState

    def remember(self, key: str, value: str) -> None:
        qt.QSettings().setValue(key, value)

    @staticmethod
    def fillComboBox(comboBox, items, selected=None) -> None:
        """(label, value) items, the one whose value is ``selected`` current, without emitting currentIndexChanged."""
        wasBlocked = comboBox.blockSignals(True)
        comboBox.clear()
        for label, value in items:
            comboBox.addItem(label, value)
        comboBox.setCurrentIndex(max(0, comboBox.findData(selected)))
        comboBox.blockSignals(wasBlocked)

    def models_changed(self, select: Optional[str]) -> None:
        self.fillComboBox(self.ui.modelComboBox, [(n, n) for n in panel_grey_matter.segment_model_names(models.list_models())])
        self.ui.modelComboBox.setCurrentIndex(max(0, self.ui.modelComboBox.findText(select or "")))  # emits: a choice
        self.controller.model_shown(self.ui.modelComboBox.currentText, self.ui.modelComboBox.count)

    def devices_changed(self) -> None:
        """Fill the device combo box from the last probe, keeping the saved device (``panel_devices.device_choices``)."""
        saved = self._parameterNode.device if self._parameterNode else "auto"
        self.fillComboBox(self.ui.deviceComboBox, panel_devices.device_choices(self.controller.state.devices, saved), saved)
        self.ui.deviceInfoLabel.text = panel_devices.device_summary(self.controller.state.devices)

    def show_table(self, table, chart=None) -> None:
        """Show a lesion table in a layout with a table view (SegmentStatistics' showTable), with its chart when given
        (the four-up plot and table layout), and follow row clicks."""
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView if chart is not None
                                else slicer.modules.tables.logic().GetLayoutWithTable(layoutManager.layout))
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
        self.connectTableView(layoutManager.tableWidget(0).tableView())
        if chart is not None:
            slicer.modules.plots.logic().ShowChartInLayout(chart)

    def jump_to(self, ras_mm) -> None:
        slicer.modules.markups.logic().JumpSlicesToLocation(ras_mm[0], ras_mm[1], ras_mm[2], True)

    def load_volume(self, path: str):
        return slicer.util.loadVolume(path)  # raises RuntimeError when Slicer cannot read it

    def open_editor(self, segmentation, volume, segment_id: Optional[str]) -> None:
        """Segment Editor on this segmentation and volume; painting one segment takes voxels from the other."""
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentation)
        editor.setSourceVolumeNode(volume)
        editorNode = editor.mrmlSegmentEditorNode()
        editorNode.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
        editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
        if segment_id:  # else the editor keeps its selection
            editorNode.SetSelectedSegmentID(segment_id)


#
# SCIsegLogic
#


class SCIsegLogic(ScriptedLoadableModuleLogic):
    """Starts the child processes, installs what they need, and brings their results into the scene."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.installed = []  # what ensureDependencies installed, for the panel's log ("torch 2.5.1+cu124 (CUDA 12.4)")

    def getParameterNode(self):
        return SCIsegParameterNode(super().getParameterNode())

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python launcher (runs the child with Slicer's environment)."""
        return shutil.which("PythonSlicer") or sys.executable

    # Dependencies (SCIsegLib.panel_install decides; Slicer's pip, PyTorch extension and dialog do)

    def installer(self):
        from SCIsegLib import panel_install

        try:
            import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS); absent: torch comes from PyPI

            torchUtils = PyTorchUtils.PyTorchUtilsLogic()
        except ImportError:
            torchUtils = None
        return panel_install.Installer(
            pip_install=slicer.util.pip_install,
            run_module=getattr(slicer.util, "executePythonModule", None) or slicer.util._executePythonModule,
            confirm=functools.partial(slicer.util.confirmOkCancelDisplay, windowTitle=WINDOW_TITLE),
            torch_utils=torchUtils, slicer_version=(slicer.app.majorVersion, slicer.app.minorVersion),
            installed=self.installed,
        )

    def ensureDependencies(self, action: Action, confirm: bool = True) -> bool:
        """Offer to install what ``action``'s child imports; True when it can run. Never imports torch here."""
        from SCIsegLib import panel_install

        with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed."), waitCursor=True):
            return panel_install.ensure(action, self.installer(), confirm)


#
# SCIsegTest
#


class SCIsegTest(ScriptedLoadableModuleTest):
    """The click path inside a real Slicer with the bundled demo model: segment, check, edit, measure, export.

    Run it from the module panel (Reload and Test) or as the CTest the extension registers. It needs torch
    and nnU-Net in Slicer's Python: interactively it offers to install them; under CTest (nobody to ask)
    it stops with the reason. While it waits for a child it keeps Slicer's event loop running.
    """

    TIMEOUT_S = 900

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentEditExport()

    def waitFor(self, run, timeoutSeconds: float):
        """Poll a child until it ends, processing Slicer's events between polls (the UI stays alive)."""
        from SCIsegLib import panel_selftest

        return panel_selftest.wait_for(run, timeoutSeconds, slicer.app.processEvents)

    def dependenciesReady(self, logic) -> bool:
        from SCIsegLib import panel_selftest

        missing = panel_selftest.missing_dependencies()
        if missing and slicer.app.commandOptions().testingEnabled:
            self.skipTest(panel_selftest.NOBODY_TO_ASK.format(missing=", ".join(missing)))
        return not missing or all(logic.ensureDependencies(action) for action in panel_selftest.ACTIONS)

    def test_SegmentEditExport(self):
        from SCIsegLib import panel_selftest

        moduleLogic = SCIsegLogic()
        if not self.dependenciesReady(moduleLogic):
            self.skipTest("SCIsegTest stops: torch and nnU-Net were not installed (the install was declined or failed).")
        panel_selftest.click_path(slicer.mrmlScene, slicer.modules.segmentations.logic(), moduleLogic.pythonExecutable(),
                                  self.waitFor, self.delayDisplay)
        self.delayDisplay("Test passed")
