"""SCIseg: spinal cord and lesion segmentation of SCI MRI in 3D Slicer.

The module is glue (the Extension Wizard's layout, SlicerNNUnet's split): what it decides,
``SCIsegLib.panel`` decides and tests without Qt. Segmentation, model install, measure, export and
the review queue run in child processes (``PythonSlicer -m SCIsegLib ...``, ``SCIsegLib.runner``) polled
by a ``qt.QTimer``, so the UI never waits on them, and torch is never imported into Slicer's own process.
Every Slicer, CTK and PythonQt call made here is listed with the source file it was checked in, in
``SCIseg/README.md``. PythonQt takes Python callables only in ``connect``/``disconnect``/``QTimer.singleShot``
(``Testing/test_slicer_module.py`` checks this file for it).
"""

import functools
import logging
import os
import shutil
import sys
import tempfile
import time
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
from SCIsegLib import dependencies, models, panel, runner  # noqa: E402
from SCIsegLib.panel import Action, Outcome, PanelInputs, PanelState  # noqa: E402

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
        self.parent.dependencies = ["Segmentations", "SegmentEditor", "Terminologies"]
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
    """Maps Qt signals to ``PanelState`` and the logic, and the state back to the widgets."""

    def __init__(self, parent=None) -> None:
        # Everything setup() uses is made first: without a parent, ScriptedLoadableModuleWidget.__init__ calls
        # setup() itself (Slicer Base/Python/slicer/ScriptedLoadableModule.py, 5.10 l. 99-107).
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.state = PanelState()
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._predictions = None  # this session's folder of the model's masks (removed at cleanup)
        self._menuActions = []
        self._case = None  # SCIsegLib.cases.Case of state.case_volume_id (SCIsegLib.panel_case)
        self._segmentWhenOpened = False  # Next case: segment the new scan when its case has nothing yet
        self._volumePending = False
        self._observed = None  # the segmentation whose strokes drive drafts and the live lesion list
        self._edits = None  # panel_lesions.EditDebounce, made with the first observed segmentation
        self._live = (None, None)  # live lesion table and lesion-number point list
        self._lesionTables = {}  # table node id -> {lesion number: centre RAS mm}, for the row click
        self._tableView = None
        self._inTimer = False
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)
        ScriptedLoadableModuleWidget.__init__(self, parent)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SCIseg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SCIsegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # PythonQt's QMenu.addAction takes no Python callable: a QAction whose triggered() is connected.
        menu = qt.QMenu(self.ui.modelMenuButton)
        for text, slot in (
            (_("Install from file..."), self.onInstallFromFile),
            (_("Download SCIseg v2"), self.onDownloadV2),
            (_("Download SCIseg v1"), self.onDownloadV1),
            (_("Refresh list"), self.refreshModels),
        ):
            action = qt.QAction(text, menu)
            action.connect("triggered()", slot)
            menu.addAction(action)
            self._menuActions.append(action)
        self.ui.modelMenuButton.setMenu(menu)

        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.editButton.connect("clicked(bool)", self.onEditButton)
        self.ui.measureButton.connect("clicked(bool)", self.onMeasureButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.compareButton.connect("clicked(bool)", self.onCompareButton)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCaseButton)

        settings = qt.QSettings()
        self.ui.queuePathLineEdit.currentPath = settings.value("SCIseg/Queue", "")
        self.ui.raterLineEdit.text = settings.value("SCIseg/Rater", "")
        self.ui.exportFolderPathLineEdit.currentPath = settings.value("SCIseg/ExportFolder", "")
        self.ui.raterLineEdit.connect("textChanged(QString)", self.updateGUIFromState)
        self.ui.exportFolderPathLineEdit.connect("currentPathChanged(QString)", self.updateGUIFromState)
        self.ui.queuePathLineEdit.connect("currentPathChanged(QString)", self.updateGUIFromState)
        self.ui.compareSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateGUIFromState)

        self.refreshModels()
        self.showDevices()
        self.showVersionProblems()
        self._timer.start()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Reload or Slicer exit: unsaved edits go to a draft, every child stops, temporary files go."""
        self._timer.stop()
        try:
            self.keepWork()
        except Exception:  # exit goes on; the autosaved draft (a pause after each stroke) is there
            logging.exception("SCIseg: the unsaved edits could not be drafted")
        left = self.state.shutdown()
        if left:
            logging.warning("SCIseg: %s did not stop", ", ".join(job.action.value for job in left))
        if self._predictions:
            shutil.rmtree(self._predictions, ignore_errors=True)
        self.removeObservers()
        if self._tableView is not None:  # a reloaded module must not leave this widget's slot on Slicer's table view
            self._tableView.disconnect("selectionChanged()", self.onLesionRowSelected)
            self._tableView = None

    def onReload(self) -> None:
        """Reload SCIsegLib too (Slicer re-executes only this file), as SlicerNNUnet's ``onReload`` does."""
        panel.forget_library_modules()
        ScriptedLoadableModuleWidget.onReload(self)

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromState)

    def onSceneStartClose(self, caller, event) -> None:
        try:
            self.keepWork()  # the nodes are still there
        except Exception:
            logging.exception("SCIseg: the unsaved edits could not be drafted")
        self.state.scene_closing()  # the timer finishes them; an export and a model install go on and are reported
        self.setParameterNode(None)
        self.observeSegmentation(None)
        # The lesion tables leave with the scene, and their node ids may name other tables in the next one.
        self._case, self.state.case_volume_id, self._live, self._lesionTables = None, None, (None, None), {}

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            # GetFirstNodeByClass would return a label map too (a scalar volume subclass the selector hides).
            scans = [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                     if not node.IsA("vtkMRMLLabelMapVolumeNode")]
            if scans:
                self._parameterNode.inputVolume = scans[0]

    def setParameterNode(self, inputParameterNode: Optional[SCIsegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromState)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromState)
            self._selectComboText(self.ui.modelComboBox, self._parameterNode.model)
            self._modelFromCombo()
            self.showDevices()
            self.updateGUIFromState()

    # State -> widgets

    def panelInputs(self) -> PanelInputs:
        parameters = self._parameterNode
        compare = self.ui.compareSegmentationSelector.currentNode()
        return PanelInputs(
            input_volume_id=parameters.inputVolume.GetID() if parameters and parameters.inputVolume else None,
            segmentation_id=parameters.segmentation.GetID() if parameters and parameters.segmentation else None,
            compare_id=compare.GetID() if compare is not None else None,
            has_model=self.ui.modelComboBox.count > 0,
            rater=self.ui.raterLineEdit.text,
            export_folder=self.ui.exportFolderPathLineEdit.currentPath,
            queue_path=self.ui.queuePathLineEdit.currentPath,
        )

    def updateGUIFromState(self, *unused) -> None:
        """Enable the widgets as ``PanelState.enabled`` says; the device combo follows the parameter node."""
        for name, enabled in self.state.enabled(self.panelInputs()).items():
            getattr(self.ui, name).enabled = enabled
        self.ui.segmentButton.toolTip = (
            _("Segment the spinal cord and the lesion (runs in the background).")
            if self.ui.segmentButton.enabled
            else _("Select a T2w volume and a model first (one segmentation at a time).")
        )
        if self._parameterNode:
            index = self.ui.deviceComboBox.findData(self._parameterNode.device)
            if index >= 0 and index != self.ui.deviceComboBox.currentIndex:
                self.ui.deviceComboBox.setCurrentIndex(index)
            self.observeSegmentation(self._parameterNode.segmentation)
            volumeNode = self._parameterNode.inputVolume
            if self.state.volume_changed(volumeNode.GetID() if volumeNode else None) and not self._volumePending:
                self._volumePending = True  # opened after this observer returns (it may ask about a draft)
                qt.QTimer.singleShot(0, self.onVolumeSelected)

    # The case of the selected volume (SCIsegLib.panel_case)

    def caseArguments(self):
        return slicer.mrmlScene, slicer.modules.segmentations.logic()

    def keepWork(self) -> None:
        """The open case's unsaved edits go to the rater's draft (Next case, another volume, scene close, exit)."""
        if self._case is None:
            return
        from SCIsegLib import panel_case

        scene, logic = self.caseArguments()
        volumeNode = scene.GetNodeByID(self.state.case_volume_id) if self.state.case_volume_id else None
        selected = self._parameterNode.segmentation if self._parameterNode else None
        segmentationNode = panel_case.case_segmentation(scene, self._case, selected)
        sentence = panel_case.keep_work(scene, logic, self._case, segmentationNode, volumeNode, self.ui.raterLineEdit.text)
        if sentence:
            self.ui.statusLabel.text = sentence
            self.appendLog([sentence])

    def onVolumeSelected(self) -> None:
        """Another volume: draft the previous case's edits, open this one's (its segmentation, a draft to restore,
        its latest version), never keep the previous volume's segmentation selected."""
        self._volumePending = False
        if self._parameterNode is None:
            return
        volumeNode = self._parameterNode.inputVolume
        if not self.state.volume_changed(volumeNode.GetID() if volumeNode else None):
            return
        self.keepWork()
        from SCIsegLib import panel_case

        scene, logic = self.caseArguments()
        self._case, self.state.case_volume_id = None, volumeNode.GetID() if volumeNode else None
        segmentNow, self._segmentWhenOpened = self._segmentWhenOpened, False
        if volumeNode is None:
            self._parameterNode.segmentation = None
            return
        root, rater = self.ui.exportFolderPathLineEdit.currentPath, self.ui.raterLineEdit.text
        with slicer.util.tryWithErrorDisplay(_("The case could not be opened."), waitCursor=True):
            opened = panel_case.opening(scene, root, volumeNode, rater)
            if opened.offer is not None and slicer.util.confirmYesNoDisplay(
                _("{scan} has a {draft} that was never exported (Slicer was closed or stopped). Restore it? "
                  "(If not, it stays until your next edits of this case replace it.)").format(
                    scan=opened.case.scan.stem, draft=opened.offer.describe()), windowTitle=WINDOW_TITLE):
                opened = panel_case.opening(scene, root, volumeNode, rater, draft=opened.offer)
            segmentation = panel_case.selected_segmentation(scene, logic, opened, volumeNode)
            self._case = opened.case
            self._parameterNode.segmentation = segmentation
            self.ui.statusLabel.text = opened.sentence or self.ui.statusLabel.text
            segmentNow = panel_case.segment_after_opening(segmentNow, opened, segmentation)
        if segmentNow:  # after this slot: Segment may ask to install dependencies (a modal dialog, pip)
            qt.QTimer.singleShot(0, self.onSegmentButton)

    def observeSegmentation(self, segmentationNode) -> None:
        """Follow the strokes on the selected segmentation (drafts and the live lesion list, once the rater pauses)."""
        if segmentationNode is self._observed:
            return
        if self._observed is not None:
            self.removeObserver(self._observed, slicer.vtkSegmentation.SourceRepresentationModified, self.onSegmentationEdited)
        self._observed = segmentationNode
        if segmentationNode is not None:
            from SCIsegLib.panel_lesions import EditDebounce

            self._edits = self._edits or EditDebounce()
            self.addObserver(segmentationNode, slicer.vtkSegmentation.SourceRepresentationModified, self.onSegmentationEdited)
            self._edits.touch(time.monotonic())  # a first list for a newly selected segmentation

    def onSegmentationEdited(self, caller, event) -> None:
        self._edits.touch(time.monotonic())

    def onEditsSettled(self) -> None:
        """The rater paused: draft the case's unsaved edits and update the live lesion list."""
        from SCIsegLib import panel_case

        volumeNode, segmentationNode = self._parameterNode.inputVolume, self._parameterNode.segmentation
        if volumeNode is None or segmentationNode is None:
            return
        settled = panel_case.edits_settled(slicer.mrmlScene, slicer.modules.segmentations.logic(), self.caseOf(volumeNode),
                                           segmentationNode, volumeNode, self.ui.raterLineEdit.text, *self._live)
        if settled.draft is not None:
            self.ui.statusLabel.text = _("Unsaved edits kept as a {draft}.").format(draft=settled.draft.describe())
        if settled.centres is None:
            return
        if settled.centres and settled.table.GetID() not in self._lesionTables:  # shown once, when it has a lesion
            self.showTable(settled.table)
        self._live = (settled.table, settled.points)
        self._lesionTables[settled.table.GetID()] = settled.centres

    def appendLog(self, lines) -> None:
        for line in lines:
            self.ui.logTextEdit.appendPlainText(line)

    # Models and devices

    def refreshModels(self) -> None:
        current = self.ui.modelComboBox.currentText
        wasBlocked = self.ui.modelComboBox.blockSignals(True)
        self.ui.modelComboBox.clear()
        for info in models.list_models():
            self.ui.modelComboBox.addItem(info.name)
        self.ui.modelComboBox.blockSignals(wasBlocked)
        self._selectComboText(self.ui.modelComboBox, (self._parameterNode.model if self._parameterNode else "") or current)
        self._modelFromCombo()

    def _modelFromCombo(self) -> None:
        """Segment runs the model the combo box shows: a saved model that is not installed (a scene from another
        computer) gives way to the one shown (the combo's signals were blocked or its index did not change)."""
        shown = self.ui.modelComboBox.currentText
        if self._parameterNode and self.ui.modelComboBox.count > 0 and shown and shown != self._parameterNode.model:
            self._parameterNode.model = shown

    @staticmethod
    def _selectComboText(comboBox, text: str) -> None:
        index = comboBox.findText(text)
        if index >= 0:
            comboBox.setCurrentIndex(index)

    def onModelChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.model = self.ui.modelComboBox.currentText
        if self.ui.modelComboBox.currentText == models.BUNDLED_DEMO:
            self.ui.statusLabel.text = _("sciseg-demo is a small demonstration model: install SCIseg v2 for real scans.")

    def showDevices(self) -> None:
        """Fill the device combo box from the last probe, keeping the saved device (``panel.device_choices``)."""
        saved = self._parameterNode.device if self._parameterNode else "auto"
        wasBlocked = self.ui.deviceComboBox.blockSignals(True)
        self.ui.deviceComboBox.clear()
        for label, value in panel.device_choices(self.state.devices, saved):
            self.ui.deviceComboBox.addItem(label, value)
        self.ui.deviceComboBox.setCurrentIndex(max(0, self.ui.deviceComboBox.findData(saved)))
        self.ui.deviceComboBox.blockSignals(wasBlocked)
        self.ui.deviceInfoLabel.text = panel.device_summary(self.state.devices)

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    def showVersionProblems(self) -> None:
        """At start-up: an nnU-Net (or other pinned package) whose version differs from the one tested."""
        problems = list(dependencies.installed_version_problems())
        if problems:
            self.ui.statusLabel.text = problems[0]
            self.appendLog(problems)

    def onInstallFromFile(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Install an nnU-Net model"), "", _("Model zip (*.zip)"))
        if path:
            self.startModelInstall(path)

    def onDownloadV2(self) -> None:
        self.onDownloadModel("sciseg-v2")

    def onDownloadV1(self) -> None:
        self.onDownloadModel("sciseg-v1")

    def onDownloadModel(self, name: str) -> None:
        if slicer.util.confirmOkCancelDisplay(
            _("Download {name} (about 250 MB) from GitHub and install it? It runs in the background; Cancel stops it.").format(
                name=name
            ),
            windowTitle=WINDOW_TITLE,
        ):
            self.startModelInstall(name)

    def startModelInstall(self, source: str) -> None:
        """Download, unzip and hash in a child (``sciseg models install --progress jsonl``), with progress and Cancel."""
        if not self.ensureDependencies(Action.INSTALL_MODEL):
            return
        with slicer.util.tryWithErrorDisplay(_("The model could not be installed."), waitCursor=True):
            run = runner.ModelInstallRun(source, python_executable=self.logic.pythonExecutable())
            run.start()
            self.state.start(Action.INSTALL_MODEL, run)
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Installing {source}...").format(source=source)
        self.updateGUIFromState()

    # Background jobs

    def ensureDependencies(self, action: Action) -> bool:
        """The one dependency check before every action that starts a child (``panel.modules_needed``).

        False while a job of that action runs or an install is under way (``PanelState.may_start``). While pip
        runs (Slicer processes events between its lines) every action button is disabled.
        """
        if not self.state.may_start(action):
            return False
        self.state.installing_dependencies = True
        self.updateGUIFromState()
        try:
            ready = self.logic.ensureDependencies(action)
        except Exception:  # a failed pip run: tryWithErrorDisplay showed it and re-raised; say what is missing below
            logging.exception("SCIseg: installing the dependencies failed")
            ready = False
        finally:
            self.state.installing_dependencies = False
            self.updateGUIFromState()
        self.appendLog(self.logic.installed)
        if self.logic.installed:
            self.ui.statusLabel.text = "; ".join(self.logic.installed)  # which torch build arrived, and nnU-Net
            self.logic.installed = []
            self.state.dependencies_installed()  # torch may have arrived: probe the devices again
            self.showDevices()
        if not ready:
            self.ui.statusLabel.text = _("Not started: {modules} must be installed first.").format(
                modules=", ".join(dependencies.missing_modules(panel.modules_needed(action))) or _("a dependency")
            )
        return ready

    def onSegmentButton(self) -> None:
        if not self.ensureDependencies(Action.SEGMENT):
            return
        self.keepWork()  # the new result becomes the case's segmentation: the corrected one's edits are drafted first
        volumeNode = self._parameterNode.inputVolume
        with slicer.util.tryWithErrorDisplay(_("The segmentation could not be started."), waitCursor=True):
            run = self.logic.startSegmentation(self._parameterNode)
            self.state.start(Action.SEGMENT, run, volume_id=volumeNode.GetID())
            self.ui.logTextEdit.clear()
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting...")
        self.updateGUIFromState()

    def onCancelButton(self) -> None:
        if self.state.cancel():  # returns at once; the timer sees the child end
            self.ui.statusLabel.text = _("Cancelling...")
        self.updateGUIFromState()

    def onTimer(self) -> None:
        """Every 200 ms: device probe, job progress, log lines, finished jobs. Never waits on a child.

        Not re-entered: an error dialog of a finished job runs a nested event loop in which the timer fires again.
        """
        if self._inTimer:
            return
        self._inTimer = True
        try:
            self._pollJobs()
        finally:
            self._inTimer = False

    def _pollJobs(self) -> None:
        changed, lines = self.state.poll_probe(functools.partial(runner.DeviceProbe, self.logic.pythonExecutable()))
        self.appendLog(lines)
        if changed:
            self.showDevices()
        if self._edits is not None and self._parameterNode is not None and self._edits.due(time.monotonic()):
            try:
                self.onEditsSettled()
            except Exception:  # the jobs are still polled
                logging.exception("SCIseg: the draft or the live lesion list could not be updated")
        for job in self.state.jobs.values():
            self.appendLog(panel.new_log_lines(job.run))
        events, ended = self.state.poll()
        for event in events:
            if event.get("event") == "progress" and "fraction" in event:
                self.ui.progressBar.value = int(1000 * event["fraction"])
                self.ui.statusLabel.text = event.get("message") or event.get("stage", "")
        for finished in ended:
            self.appendLog(panel.new_log_lines(finished.job.run))
            try:
                self.onJobFinished(finished)
            except Exception:  # shown by tryWithErrorDisplay, which re-raises (Slicer util.py 5.10 l. 3368-3409)
                logging.exception("SCIseg: the end of the %s job could not be handled", finished.job.action.value)
        if ended:
            self.updateGUIFromState()

    def onJobFinished(self, finished: panel.Finished) -> None:
        job = finished.job
        try:
            if finished.outcome == Outcome.CANCELLED:
                self.ui.progressBar.value = 0
                self.ui.statusLabel.text = finished.message
            elif finished.outcome == Outcome.FAILED:
                self.ui.statusLabel.text = _("Failed: {reason}").format(reason=finished.message)
                self.appendLog(getattr(job.run, "stderr", "").splitlines())
                self.ui.logCollapsibleButton.collapsed = False
                slicer.util.errorDisplay(finished.message, windowTitle=WINDOW_TITLE, detailedText=self._logTail(job.run))
            elif job.action == Action.SEGMENT:
                self.showSegmentation(job)
            elif job.action == Action.MEASURE:
                self.showMeasurement(job)
            elif job.action == Action.NEXT_CASE:
                self.openNextCase(job)
            else:
                with slicer.util.tryWithErrorDisplay(_("The result could not be shown."), waitCursor=True):
                    if job.action == Action.INSTALL_MODEL:
                        self.showInstalledModel(job)
                    elif job.action == Action.EXPORT:
                        self.showExport(job)
                    elif job.action == Action.COMPARE:
                        self.showComparison(job)
        finally:
            panel.remove_job_files(job)

    def showInstalledModel(self, job) -> None:
        self.refreshModels()
        name = (getattr(job.run, "result", None) or {}).get("name")
        if name:
            self._selectComboText(self.ui.modelComboBox, name)
        self.ui.progressBar.value = 1000
        self.ui.statusLabel.text = _("Model installed.")

    @staticmethod
    def _logTail(run) -> str:
        if hasattr(run, "log_tail"):
            return run.log_tail(40)
        return getattr(run, "stderr", "")

    def showSegmentation(self, job) -> None:
        """Import the masks onto the volume that was segmented (``panel.result_volume``), whatever is selected now."""
        from SCIsegLib import panel_jobs

        with slicer.util.tryWithErrorDisplay(_("The segmentation could not be imported."), waitCursor=True):
            volumeNode = panel.result_volume(slicer.mrmlScene, job)
            if not self._predictions or not os.path.isdir(self._predictions):
                self._predictions = tempfile.mkdtemp(prefix="sciseg-predictions-")
            case = self.caseOf(volumeNode)
            segmentationNode = panel_jobs.import_result(slicer.mrmlScene, slicer.modules.segmentations.logic(), job.run, volumeNode, self._predictions, case)
            if case is not None:  # the case now starts from this prediction
                from SCIsegLib import panel_case

                self._case = panel_case.case_of(self.ui.exportFolderPathLineEdit.currentPath, volumeNode, segmentationNode)
            self._parameterNode.inputVolume = volumeNode
            self._parameterNode.segmentation = segmentationNode
            self.ui.progressBar.value = 1000
            self.ui.statusLabel.text = _("Done: '{name}'. Correct it with Edit.").format(name=segmentationNode.GetName())

    def caseOf(self, volumeNode):
        """The open case when it is ``volumeNode``'s, else None."""
        return self._case if volumeNode is not None and self.state.case_volume_id == volumeNode.GetID() else None

    def onEditButton(self) -> None:
        self.logic.openSegmentEditor(self._parameterNode.segmentation, self._parameterNode.inputVolume)

    # Which segment is the cord, which the lesion

    def askSegmentChoices(self, segmentationNode) -> Optional[dict]:
        """The cord and lesion segment ids of a segmentation, asking the rater when terminology, name and id do not tell.

        None when the rater cancels.
        """
        from SCIsegLib import mrml

        chosen = {}
        while True:
            try:
                return mrml.resolve_sciseg_segments(segmentationNode, chosen)
            except mrml.SegmentChoiceError as error:
                for sciSegId, candidates in error.choices.items():
                    what = _("lesion") if sciSegId == mrml.LESION.segment_id else _("spinal cord")
                    items = panel.segment_choice_items(candidates, error.segments, what)
                    index = self.askChoice(str(error), [label for label, _value in items])
                    if index is None:
                        return None
                    chosen[sciSegId] = items[index][1]

    def askChoice(self, text: str, labels) -> Optional[int]:
        """A modal dialog with a combo box; the chosen index, or None when cancelled."""
        dialog = qt.QDialog(slicer.util.mainWindow())
        dialog.setWindowTitle(WINDOW_TITLE)
        layout = qt.QVBoxLayout(dialog)
        label = qt.QLabel(text)
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

    # Export

    def pairedOrSaid(self, segmentationNode, volumeNode) -> bool:
        """True when the segmentation was made on the volume; else the reason, in one sentence, in the status line."""
        from SCIsegLib import mrml

        problem = mrml.pairing_problem(segmentationNode, volumeNode)
        if problem:
            self.ui.statusLabel.text = problem
            slicer.util.errorDisplay(problem, windowTitle=WINDOW_TITLE)
        return problem is None

    def onExportButton(self) -> None:
        from SCIsegLib import panel_jobs

        if not self.ensureDependencies(Action.EXPORT):
            return
        segmentationNode, volumeNode = self._parameterNode.segmentation, self._parameterNode.inputVolume
        if not self.pairedOrSaid(segmentationNode, volumeNode):
            return
        chosen = self.askSegmentChoices(segmentationNode)
        if chosen is None:
            return
        rater = self.ui.raterLineEdit.text.strip()
        folder = self.ui.exportFolderPathLineEdit.currentPath
        settings = qt.QSettings()
        settings.setValue("SCIseg/Rater", rater)
        settings.setValue("SCIseg/ExportFolder", folder)
        with slicer.util.tryWithErrorDisplay(_("The corrections could not be exported."), waitCursor=True):
            command = panel_jobs.start_export(slicer.mrmlScene, slicer.modules.segmentations.logic(), segmentationNode, volumeNode, folder, rater,
                                              self.logic.pythonExecutable(), chosen, self.caseOf(volumeNode))
            self.state.start(Action.EXPORT, command, volume_id=volumeNode.GetID(), segmentation_id=segmentationNode.GetID())
            self.ui.statusLabel.text = _("Exporting...")
        self.updateGUIFromState()

    def showExport(self, job) -> None:
        """The version written; the segmentation's base becomes it, so the case has nothing unsaved."""
        from SCIsegLib import panel_case

        self.ui.statusLabel.text = panel.export_summary(job.run.stdout)
        segmentationNode = slicer.mrmlScene.GetNodeByID(job.segmentation_id) if job.segmentation_id else None
        volumeNode = slicer.mrmlScene.GetNodeByID(job.volume_id) if job.volume_id else None
        if panel_case.after_export(segmentationNode, job.run.stdout) and self.caseOf(volumeNode) is not None:
            self._case = panel_case.case_of(self.ui.exportFolderPathLineEdit.currentPath, volumeNode, segmentationNode)
        self.appendLog(job.run.stdout.splitlines())

    # Compare, review queue

    def onCompareButton(self) -> None:
        from SCIsegLib import panel_jobs

        if not self.ensureDependencies(Action.COMPARE):
            return
        other = self.ui.compareSegmentationSelector.currentNode()
        current = self._parameterNode.segmentation
        volumeNode = self._parameterNode.inputVolume
        if not (self.pairedOrSaid(current, volumeNode) and self.pairedOrSaid(other, volumeNode)):
            return
        otherChoices = self.askSegmentChoices(other)
        currentChoices = self.askSegmentChoices(current) if otherChoices is not None else None
        if currentChoices is None:
            return
        with slicer.util.tryWithErrorDisplay(_("The segmentations could not be compared."), waitCursor=True):
            command = panel_jobs.start_compare(slicer.mrmlScene, slicer.modules.segmentations.logic(), other, current, volumeNode, self.logic.pythonExecutable(),
                                               otherChoices, currentChoices, self.caseOf(volumeNode))
            self.state.start(Action.COMPARE, command, volume_id=volumeNode.GetID())
            self.ui.statusLabel.text = _("Comparing...")
        self.updateGUIFromState()

    def showComparison(self, job) -> None:
        self.ui.statusLabel.text = panel.comparison_sentence(job.run.otherName, panel.compare_result(job.run.stdout))

    def onNextCaseButton(self) -> None:
        if not self.ensureDependencies(Action.NEXT_CASE):
            return
        queuePath = self.ui.queuePathLineEdit.currentPath
        qt.QSettings().setValue("SCIseg/Queue", queuePath)
        arguments = panel.next_case_arguments(queuePath, self.ui.exportFolderPathLineEdit.currentPath)
        with slicer.util.tryWithErrorDisplay(_("The review queue could not be read."), waitCursor=True):
            self.state.start(Action.NEXT_CASE, runner.ChildCommand(arguments, self.logic.pythonExecutable()))
            self.ui.statusLabel.text = _("Looking for the next case...")
        self.updateGUIFromState()

    def openNextCase(self, job) -> None:
        path = panel.next_case_path(job.run.returncode, job.run.stdout, os.path.isfile)
        if path is None:
            self.ui.statusLabel.text = job.run.stdout.strip() or _("The queue is empty.")
            return
        with slicer.util.tryWithErrorDisplay(_("The next case could not be loaded."), waitCursor=True):
            volumeNode = slicer.util.loadVolume(path)  # raises RuntimeError when Slicer cannot read it
        if self._parameterNode is None:  # the scene was closed and the module not entered since
            return
        self._segmentWhenOpened = True  # segmented once its case is open, if it has no version, prediction or draft
        self._parameterNode.inputVolume = volumeNode

    # Measure

    def onMeasureButton(self) -> None:
        from SCIsegLib import panel_jobs

        if not self.ensureDependencies(Action.MEASURE):
            return
        segmentationNode, volumeNode = self._parameterNode.segmentation, self._parameterNode.inputVolume
        if not self.pairedOrSaid(segmentationNode, volumeNode):
            return
        chosen = self.askSegmentChoices(segmentationNode)
        if chosen is None:
            return
        with slicer.util.tryWithErrorDisplay(_("The lesions could not be measured."), waitCursor=True):
            command = panel_jobs.start_measurement(slicer.mrmlScene, slicer.modules.segmentations.logic(), segmentationNode, volumeNode, self.logic.pythonExecutable(),
                                                   self._parameterNode.nliSlice, chosen, self.caseOf(volumeNode))
            self.state.start(Action.MEASURE, command, volume_id=volumeNode.GetID(), segmentation_id=segmentationNode.GetID())
            self.ui.statusLabel.text = _("Measuring lesions...")
        self.updateGUIFromState()

    def showMeasurement(self, job) -> None:
        from SCIsegLib import panel_jobs

        with slicer.util.tryWithErrorDisplay(_("The measurements could not be shown."), waitCursor=True):
            volumeNode = panel.result_volume(slicer.mrmlScene, job)
            tableNode, chartNode, centres = panel_jobs.finish_measurement(slicer.mrmlScene, job.run, volumeNode)
            self._lesionTables[tableNode.GetID()] = centres
            self.showTable(tableNode, slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
            slicer.modules.plots.logic().ShowChartInLayout(chartNode)
            if not centres:
                self.ui.statusLabel.text = _("No lesion: the tissue bridges are the cord A-P diameter at the NLI slice {nli}.").format(
                    nli=self._parameterNode.nliSlice
                )
            else:
                self.ui.statusLabel.text = _("{count} lesion(s) measured: click a row to jump to the lesion.").format(
                    count=len(centres)
                )

    def showTable(self, tableNode, layout=None) -> None:
        """Show a lesion table in a layout with a table view (SegmentStatistics' showTable) and follow row clicks."""
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(layout or slicer.modules.tables.logic().GetLayoutWithTable(layoutManager.layout))
        slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(tableNode.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
        tableView = layoutManager.tableWidget(0).tableView()
        if self._tableView is not None:  # one connection to the table view, whatever the number of tables
            self._tableView.disconnect("selectionChanged()", self.onLesionRowSelected)
        tableView.connect("selectionChanged()", self.onLesionRowSelected)
        self._tableView = tableView

    def onLesionRowSelected(self) -> None:
        if self._tableView is None:
            return
        # The selected cell, not currentIndex(): a keyboard move emits selectionChanged() before the current
        # index moves (QItemSelectionModel::setCurrentIndex selects first); a mouse click sets both.
        selected = self._tableView.selectionModel().selectedIndexes()
        row = selected[0].row() if selected else self._tableView.currentIndex().row()
        tableNode = self._tableView.mrmlTableNode()
        centres = self._lesionTables.get(tableNode.GetID()) if tableNode is not None else None
        centre = panel.lesion_centre_for_row(tableNode, tableNode.GetID() if centres is not None else None, row, centres or {})
        if centre is not None:
            slicer.modules.markups.logic().JumpSlicesToLocation(centre[0], centre[1], centre[2], True)


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

    # Jobs (SCIsegLib.panel_jobs, imported when first needed: SimpleITK stays out of Slicer's start-up)

    def startSegmentation(self, parameters: SCIsegParameterNode, pythonExecutable: Optional[str] = None):
        """Write the volume to a temporary NIfTI and start the child process."""
        from SCIsegLib import panel_jobs

        if not parameters.inputVolume:
            raise ValueError(_("Select a T2w volume first."))
        options = runner.RunOptions(
            model=parameters.model, device=parameters.device, tta=parameters.testTimeAugmentation,
            step=parameters.stepSize, keep_largest_cord=parameters.keepLargestCord, fill_holes=parameters.fillHoles,
            lesion_in_cord=parameters.lesionInsideCord,
        )
        return panel_jobs.start_segmentation(parameters.inputVolume, options, pythonExecutable or self.pythonExecutable())

    @staticmethod
    def openSegmentEditor(segmentationNode, volumeNode) -> None:
        """Segment Editor on this segmentation and volume; painting one segment takes voxels from the other."""
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentationNode)
        editor.setSourceVolumeNode(volumeNode)
        editorNode = editor.mrmlSegmentEditorNode()
        editorNode.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
        editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
        from SCIsegLib import mrml

        segmentIds = mrml.match_sciseg_segments(segmentationNode)[mrml.LESION.segment_id]
        if len(segmentIds) == 1:
            editorNode.SetSelectedSegmentID(segmentIds[0])


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
        deadline = time.monotonic() + timeoutSeconds
        events = []
        while True:
            polled = run.poll()
            if isinstance(polled, list):
                events += polled
            if run.finished:
                return events
            if time.monotonic() > deadline:
                run.cancel()
                raise TimeoutError(f"the child process did not finish within {timeoutSeconds} s")
            slicer.app.processEvents()
            time.sleep(0.05)

    def dependenciesReady(self, logic) -> bool:
        needed = sorted({name for action in panel.CHILD_ACTIONS for name in panel.modules_needed(action)})
        missing = dependencies.missing_modules(tuple(needed))
        if not missing:
            return True
        if slicer.app.commandOptions().testingEnabled:
            self.skipTest(
                "SCIsegTest stops: {missing} not installed in this Slicer and nobody can consent to installing them "
                "under CTest. Open SCIseg and click Segment once (it offers the install), then run the test again.".format(
                    missing=", ".join(missing)
                )
            )
        return logic.ensureDependencies(Action.SEGMENT) and all(logic.ensureDependencies(a) for a in panel.CHILD_ACTIONS)

    def test_SegmentEditExport(self):
        from SCIsegLib import panel_selftest

        moduleLogic = SCIsegLogic()
        if not self.dependenciesReady(moduleLogic):
            self.skipTest("SCIsegTest stops: torch and nnU-Net were not installed (the install was declined or failed).")
        panel_selftest.click_path(slicer.mrmlScene, slicer.modules.segmentations.logic(), moduleLogic.pythonExecutable(),
                                  self.waitFor, self.delayDisplay)
        self.delayDisplay("Test passed")
