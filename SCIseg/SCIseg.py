"""SCIseg: spinal cord and lesion segmentation of SCI MRI in 3D Slicer.

The module is glue: what it decides, a tested SCIsegLib function decides. Segmentation runs in a
child process (``PythonSlicer -m SCIsegLib segment ... --progress jsonl``) driven by a timer, so the
UI never blocks and torch is never imported into Slicer's own process.
"""

import os
import shutil
import sys
import tempfile
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

# SCIsegLib lies beside this file in an installed extension, one folder up in the source tree.
_MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
for _candidate in (_MODULE_DIR, os.path.dirname(_MODULE_DIR)):
    if os.path.isdir(os.path.join(_candidate, "SCIsegLib")):
        if _candidate not in sys.path:
            sys.path.insert(0, _candidate)
        _RESOURCES_DIR = os.path.join(_candidate, "Resources")
        break
else:
    raise ImportError("SCIseg: the SCIsegLib package was not found next to the module")

from SCIsegLib import dependencies, models, mrml, volume  # noqa: E402
from SCIsegLib.runner import ChildCommand, DeviceProbe, RunOptions, SegmentationRun  # noqa: E402

CITATION = (
    "Naga Karthik E, Valosek J, et al. SCIseg: Automatic Segmentation of Intramedullary Lesions in Spinal Cord "
    "Injury on T2-weighted MRI Scans. Radiology: Artificial Intelligence 2024. https://doi.org/10.1148/ryai.240005"
)


def resourcePath(*parts: str) -> str:
    return os.path.join(_RESOURCES_DIR, *parts)


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
    loader = getattr(logic, "LoadContextFromFile", None) or logic.LoadTerminologyFromFile
    if not loader(str(mrml.TERMINOLOGY_FILE)):
        slicer.util.warningDisplay(_("SCIseg could not load its terminology file {path}").format(path=mrml.TERMINOLOGY_FILE))


#
# Parameter node
#


@parameterNodeWrapper
class SCIsegParameterNode:
    """State of the panel, saved with the scene.

    inputVolume: the T2w scan; segmentation: the SCIseg result being corrected; model and device as
    chosen in the combo boxes; the options mirror ``sciseg segment``.
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
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._probe = None
        self._measurement = None
        self._export = None
        self._nextCase = None
        self._lesionCentres = {}
        self._tableView = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourcePath("UI", "SCIseg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SCIsegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        menu = qt.QMenu(self.ui.modelMenuButton)
        menu.addAction(_("Install from file..."), self.onInstallFromFile)
        menu.addAction(_("Download SCIseg v2"), lambda: self.onDownloadModel("sciseg-v2"))
        menu.addAction(_("Download SCIseg v1"), lambda: self.onDownloadModel("sciseg-v1"))
        menu.addAction(_("Refresh list"), self.refreshModels)
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
        self.ui.queuePathLineEdit.currentPath = settings.value("SCIseg/Queue", "")
        settings = qt.QSettings()
        self.ui.raterLineEdit.text = settings.value("SCIseg/Rater", "")
        self.ui.exportFolderPathLineEdit.currentPath = settings.value("SCIseg/ExportFolder", "")
        self.ui.raterLineEdit.connect("textChanged(QString)", self._updateButtons)
        self.ui.exportFolderPathLineEdit.connect("currentPathChanged(QString)", self._updateButtons)

        self.refreshModels()
        self.refreshDevices({})
        self._probe = DeviceProbe(self.logic.pythonExecutable())
        self._timer.start()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        if self._run is not None and self._run.is_running:
            self._run.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        if self._run is not None and self._run.is_running:
            self._run.cancel()
            self._run = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[SCIsegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateButtons)
            self._selectComboText(self.ui.modelComboBox, self._parameterNode.model)
            self._updateButtons()

    def _updateButtons(self, caller=None, event=None) -> None:
        running = self._run is not None and self._run.is_running
        hasInput = bool(self._parameterNode and self._parameterNode.inputVolume)
        hasModel = self.ui.modelComboBox.count > 0
        self.ui.segmentButton.enabled = hasInput and hasModel and not running
        self.ui.segmentButton.toolTip = (
            _("Segment the spinal cord and the lesion (runs in the background).")
            if hasInput and hasModel
            else _("Select a T2w volume and a model first.")
        )
        self.ui.cancelButton.enabled = running
        hasSegmentation = bool(self._parameterNode and self._parameterNode.segmentation)
        self.ui.editButton.enabled = hasSegmentation
        self.ui.measureButton.enabled = hasSegmentation and hasInput and self._measurement is None
        canExport = bool(self.ui.raterLineEdit.text.strip() and self.ui.exportFolderPathLineEdit.currentPath)
        self.ui.exportButton.enabled = hasSegmentation and hasInput and canExport and self._export is None
        self.ui.compareButton.enabled = hasSegmentation and hasInput
        self.ui.nextCaseButton.enabled = self._nextCase is None and not running and bool(self.ui.queuePathLineEdit.currentPath)

    # Models and devices

    def refreshModels(self) -> None:
        current = self.ui.modelComboBox.currentText
        self.ui.modelComboBox.clear()
        for info in models.list_models():
            self.ui.modelComboBox.addItem(info.name)
        self._selectComboText(self.ui.modelComboBox, current or (self._parameterNode.model if self._parameterNode else ""))

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

    def refreshDevices(self, devices: dict) -> None:
        self.ui.deviceComboBox.clear()
        self.ui.deviceComboBox.addItem(_("Auto"), "auto")
        if "cuda" in devices:
            self.ui.deviceComboBox.addItem(_("GPU ({name})").format(name=devices["cuda"]), "cuda")
        if "mps" in devices:
            self.ui.deviceComboBox.addItem(_("GPU (Apple MPS)"), "mps")
        self.ui.deviceComboBox.addItem(_("CPU"), "cpu")
        self.ui.deviceInfoLabel.text = self.logic.deviceSummary(devices)

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index) or "auto"

    def onInstallFromFile(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, _("Install an nnU-Net model"), "", _("Model zip (*.zip)"))
        if path:
            self._install(path)

    def onDownloadModel(self, name: str) -> None:
        if slicer.util.confirmOkCancelDisplay(
            _("Download {name} (about 250 MB) from GitHub and install it?").format(name=name), windowTitle="SCIseg"
        ):
            self._install(name)

    def _install(self, source: str) -> None:
        progress = slicer.util.createProgressDialog(labelText=_("Installing {source}...").format(source=source), maximum=1000)

        def onProgress(done, total):
            if total:
                progress.setValue(int(1000 * done / total))
            slicer.app.processEvents()

        try:
            with slicer.util.tryWithErrorDisplay(_("The model could not be installed."), waitCursor=True):
                info = models.install(source, progress=onProgress)
                self.refreshModels()
                self._selectComboText(self.ui.modelComboBox, info.name)
        finally:
            progress.close()

    # Segment, cancel, import

    def onSegmentButton(self) -> None:
        if not self.logic.ensureDependencies():
            return
        with slicer.util.tryWithErrorDisplay(_("The segmentation could not be started."), waitCursor=True):
            self._run = self.logic.startSegmentation(self._parameterNode)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting...")
        self._updateButtons()

    def onCancelButton(self) -> None:
        if self._run is not None:
            self._run.cancel()
            self.ui.statusLabel.text = _("Cancelled.")
            self.ui.progressBar.value = 0
            self._run = None
        self._updateButtons()

    def onTimer(self) -> None:
        if self._probe is not None:
            devices = self._probe.devices()
            if devices is not None:
                self._probe = None
                self.refreshDevices(devices)
        if self._nextCase is not None and self._nextCase.poll():
            command, self._nextCase = self._nextCase, None
            self._openNextCase(command)
            self._updateButtons()
        if self._export is not None and self._export.poll():
            command, self._export = self._export, None
            self._showExport(command)
            self._updateButtons()
        if self._measurement is not None and self._measurement.poll():
            measurement, self._measurement = self._measurement, None
            self._showMeasurement(measurement)
            self._updateButtons()
        if self._run is None:
            return
        for event in self._run.poll():
            if event.get("event") == "progress":
                self.ui.progressBar.value = int(1000 * event["fraction"])
                self.ui.statusLabel.text = event.get("message") or event.get("stage", "")
        if self._run.finished:
            run, self._run = self._run, None
            self._finishRun(run)
            self._updateButtons()

    def _finishRun(self, run: SegmentationRun) -> None:
        try:
            segmentationNode = self.logic.importResult(run, self._parameterNode.inputVolume)
        except Exception as error:  # shown to the user with the child's log
            self.ui.statusLabel.text = _("Segmentation failed.")
            slicer.util.errorDisplay(str(error), detailedText=run.log_tail(40), windowTitle="SCIseg")
            return
        finally:
            run.cleanup()
        self._parameterNode.segmentation = segmentationNode
        self.ui.progressBar.value = 1000
        self.ui.statusLabel.text = _("Done: '{name}'. Correct it with Edit.").format(name=segmentationNode.GetName())

    def onEditButton(self) -> None:
        self.logic.openSegmentEditor(self._parameterNode.segmentation, self._parameterNode.inputVolume)

    # Export

    def onExportButton(self) -> None:
        rater = self.ui.raterLineEdit.text.strip()
        folder = self.ui.exportFolderPathLineEdit.currentPath
        settings = qt.QSettings()
        settings.setValue("SCIseg/Rater", rater)
        settings.setValue("SCIseg/ExportFolder", folder)
        with slicer.util.tryWithErrorDisplay(_("The corrections could not be exported."), waitCursor=True):
            self._export = self.logic.startExport(
                self._parameterNode.segmentation, self._parameterNode.inputVolume, folder, rater
            )
            self.ui.statusLabel.text = _("Exporting...")
        self._updateButtons()

    def _showExport(self, command) -> None:
        shutil.rmtree(command.folder, ignore_errors=True)
        if command.returncode != 0:
            self.ui.statusLabel.text = _("Export failed.")
            message = command.stderr.strip().splitlines()[-1] if command.stderr.strip() else ""
            slicer.util.errorDisplay(message.removeprefix("sciseg: "), detailedText=command.stderr, windowTitle="SCIseg")
            return
        self.ui.statusLabel.text = _("Exported {what}").format(what=command.stdout.strip().splitlines()[0])
        slicer.util.infoDisplay(command.stdout, windowTitle=_("SCIseg: exported"))

    # Compare, review queue

    def onCompareButton(self) -> None:
        other = self.ui.compareSegmentationSelector.currentNode()
        if other is None or other == self._parameterNode.segmentation:
            slicer.util.warningDisplay(_("Choose another segmentation to compare with."), windowTitle="SCIseg")
            return
        with slicer.util.tryWithErrorDisplay(_("The segmentations could not be compared."), waitCursor=True):
            result = self.logic.compare(other, self._parameterNode.segmentation, self._parameterNode.inputVolume)
            self.ui.statusLabel.text = _(
                "Versus '{other}': cord Dice {cord:.3f} (+{added} / -{removed} voxels), lesion Dice {lesion:.3f}, "
                "lesion-wise F1 {f1:.2f} ({before} -> {after} lesions)."
            ).format(other=other.GetName(), cord=result["cord_dice"], added=result["cord_voxels_added"],
                     removed=result["cord_voxels_removed"], lesion=result["lesion_dice"], f1=result["lesion_f1"],
                     before=result["lesions_a"], after=result["lesions_b"])

    def onNextCaseButton(self) -> None:
        queuePath = self.ui.queuePathLineEdit.currentPath
        qt.QSettings().setValue("SCIseg/Queue", queuePath)
        arguments = ["queue", "next", "--queue", queuePath]
        if self.ui.exportFolderPathLineEdit.currentPath:
            arguments += ["--bids", self.ui.exportFolderPathLineEdit.currentPath]
        self._nextCase = ChildCommand(arguments, self.logic.pythonExecutable())
        self.ui.statusLabel.text = _("Looking for the next case...")
        self._updateButtons()

    def _openNextCase(self, command) -> None:
        path = self.logic.nextCasePath(command)
        if path is None:
            self.ui.statusLabel.text = command.stdout.strip() or command.stderr.strip() or _("The queue is empty.")
            return
        volumeNode = slicer.util.loadVolume(path)
        self._parameterNode.inputVolume = volumeNode
        self.onSegmentButton()

    # Measure

    def onMeasureButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The lesions could not be measured."), waitCursor=True):
            self._measurement = self.logic.startMeasurement(
                self._parameterNode.segmentation, self._parameterNode.inputVolume, self._parameterNode.nliSlice
            )
            self.ui.statusLabel.text = _("Measuring lesions...")
        self._updateButtons()

    def _showMeasurement(self, measurement) -> None:
        try:
            tableNode, chartNode, self._lesionCentres = self.logic.finishMeasurement(measurement, self._parameterNode.inputVolume)
        except Exception as error:
            self.ui.statusLabel.text = _("Measurement failed.")
            slicer.util.errorDisplay(str(error), detailedText=measurement.stderr, windowTitle="SCIseg")
            return
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetActiveTableID(tableNode.GetID())
        slicer.app.applicationLogic().PropagateTableSelection()
        slicer.modules.plots.logic().ShowChartInLayout(chartNode)
        self._tableView = layoutManager.tableWidget(0).tableView()
        self._tableView.connect("selectionChanged()", self.onLesionRowSelected)
        lesionCount = len(self._lesionCentres)
        if lesionCount == 0:
            self.ui.statusLabel.text = _("No lesion: the tissue bridges are the cord A-P diameter at the NLI slice {nli}.").format(
                nli=self._parameterNode.nliSlice
            )
        else:
            self.ui.statusLabel.text = _("{count} lesion(s) measured: click a row to jump to the lesion.").format(count=lesionCount)

    def onLesionRowSelected(self) -> None:
        if self._tableView is None or self._tableView.mrmlTableNode() is None:
            return
        row = self._tableView.currentIndex().row()  # the lesion table is not sorted: view row = table row
        tableNode = self._tableView.mrmlTableNode()
        if row < 0 or row >= tableNode.GetNumberOfRows():
            return
        label = int(float(tableNode.GetCellText(row, 0)))
        centre = self._lesionCentres.get(label)
        if centre is not None:
            slicer.modules.markups.logic().JumpSlicesToLocation(*centre, True)


#
# SCIsegLogic
#


class SCIsegLogic(ScriptedLoadableModuleLogic):
    """Starts segmentations in a child process and brings their masks into the scene."""

    def getParameterNode(self):
        return SCIsegParameterNode(super().getParameterNode())

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python launcher (runs the child with Slicer's environment)."""
        return shutil.which("PythonSlicer") or sys.executable

    @staticmethod
    def deviceSummary(devices: dict) -> str:
        if not devices:
            return _("PyTorch is not installed yet: it will be offered at the first segmentation.")
        if "cuda" in devices:
            return _("GPU found: {name}.").format(name=devices["cuda"])
        if "mps" in devices:
            return _("Apple GPU (MPS) found.")
        return _("No GPU found: segmentation runs on the CPU and can take several minutes per scan.")

    def ensureDependencies(self) -> bool:
        """Offer to install torch and nnU-Net when missing; True when the child can segment."""
        missing = dependencies.missing_modules()
        if not missing:
            return True
        try:
            import PyTorchUtils  # the PyTorch extension picks the right CUDA build

            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        except ImportError:
            torchLogic = None
        steps = dependencies.install_plan(missing, torchLogic is not None)
        if not slicer.util.confirmOkCancelDisplay(
            _("SCIseg needs PyTorch and nnU-Net. Install them now?") + "\n\n- " + "\n- ".join(steps), windowTitle="SCIseg"
        ):
            return False
        with slicer.util.tryWithErrorDisplay(_("Installing the dependencies failed."), waitCursor=True):
            if "torch" in missing:
                if torchLogic is not None:
                    if torchLogic.installTorch(askConfirmation=False) is None:
                        return False
                else:
                    slicer.util.pip_install("torch")
            if "nnunetv2" in missing:
                constraints = os.path.join(tempfile.mkdtemp(prefix="sciseg-"), "constraints.txt")
                with open(constraints, "w") as stream:
                    stream.write("\n".join(dependencies.pinned_constraints()) + "\n")
                slicer.util.pip_install(f"nnunetv2 -c {constraints}")
        return not dependencies.missing_modules()

    def startSegmentation(self, parameters: SCIsegParameterNode, pythonExecutable: Optional[str] = None) -> SegmentationRun:
        """Write the volume to a temporary NIfTI and start the child process."""
        if not parameters.inputVolume:
            raise ValueError(_("Select a T2w volume first."))
        options = RunOptions(
            model=parameters.model,
            device=parameters.device,
            tta=parameters.testTimeAugmentation,
            step=parameters.stepSize,
            keep_largest_cord=parameters.keepLargestCord,
            fill_holes=parameters.fillHoles,
            lesion_in_cord=parameters.lesionInsideCord,
        )
        run = SegmentationRun(options, python_executable=pythonExecutable or self.pythonExecutable())
        mrml.save_volume_node_as_nifti(parameters.inputVolume, run.input_path)
        run.start()
        return run

    def importResult(self, run: SegmentationRun, volumeNode):
        """A new segmentation node with the run's masks (raises with the reason when the run failed)."""
        import SimpleITK as sitk

        outputs = run.outputs()
        cord, lesion = sitk.ReadImage(str(outputs["sc"])), sitk.ReadImage(str(outputs["lesion"]))
        segmentationNode = mrml.import_sciseg_masks(
            slicer.modules.segmentations.logic(), slicer.mrmlScene, volumeNode, cord, lesion
        )
        # Keep the model's own label map, so an export can record what the rater changed.
        predictions = os.path.join(str(models.user_data_dir()), "predictions")
        os.makedirs(predictions, exist_ok=True)
        predictionPath = os.path.join(predictions, f"{segmentationNode.GetID()}-{os.path.basename(run.work_dir)}.nii.gz")
        labels = sitk.Maximum(sitk.Cast(cord > 0, sitk.sitkUInt8), sitk.Cast(lesion > 0, sitk.sitkUInt8) * 2)
        sitk.WriteImage(labels, predictionPath)
        segmentationNode.SetAttribute(self.PREDICTION_ATTRIBUTE, predictionPath)
        segmentationNode.SetAttribute("SCIseg.Model", run.options.model)
        segmentationNode.CreateClosedSurfaceRepresentation()
        return segmentationNode

    PREDICTION_ATTRIBUTE = "SCIseg.PredictionFile"

    @staticmethod
    def compare(firstNode, secondNode, volumeNode) -> dict:
        """What changed from ``firstNode`` to ``secondNode`` (both exported on the volume's grid)."""
        import SimpleITK as sitk

        from SCIsegLib.metrics import compare_label_maps

        logic = slicer.modules.segmentations.logic()
        first = mrml.export_sciseg_label_map(logic, slicer.mrmlScene, firstNode, volumeNode)
        second = mrml.export_sciseg_label_map(logic, slicer.mrmlScene, secondNode, volumeNode)
        return compare_label_maps(sitk.GetArrayFromImage(first), sitk.GetArrayFromImage(second),
                                  tuple(reversed(first.GetSpacing())))

    @staticmethod
    def nextCasePath(command: ChildCommand) -> Optional[str]:
        """The scan path printed by ``sciseg queue next`` ("<score>  <path>"), None when the queue is done."""
        if command.returncode != 0:
            return None
        for line in command.stdout.splitlines():
            score, _separator, path = line.strip().partition("  ")
            if path and os.path.isfile(path):
                return path
        return None

    @staticmethod
    def sourceImagePath(volumeNode, root: str) -> str:
        """The file the volume was loaded from; a volume without one is saved into the BIDS dataset first."""
        storage = volumeNode.GetStorageNode()
        if storage is not None and storage.GetFileName() and os.path.isfile(storage.GetFileName()):
            return storage.GetFileName()
        subject = "".join(c for c in volumeNode.GetName() if c.isalnum()) or "unnamed"
        path = os.path.join(root, f"sub-{subject}", "anat", f"sub-{subject}_T2w.nii.gz")
        if not os.path.exists(path):
            mrml.save_volume_node_as_nifti(volumeNode, path)
        return path

    def startExport(self, segmentationNode, volumeNode, root: str, rater: str, model: Optional[str] = None) -> ChildCommand:
        """Write the corrected label map and run ``sciseg export`` (new BIDS version) in a child process."""
        import SimpleITK as sitk

        labels = mrml.export_sciseg_label_map(slicer.modules.segmentations.logic(), slicer.mrmlScene, segmentationNode, volumeNode)
        folder = tempfile.mkdtemp(prefix="sciseg-export-")
        labelsPath = os.path.join(folder, "corrected_labels.nii.gz")
        sitk.WriteImage(labels, labelsPath)
        source = self.sourceImagePath(volumeNode, root)
        arguments = ["export", "--root", root, "--source", source, "--labels", labelsPath, "--rater", rater]
        if not os.path.basename(source).startswith("sub-"):
            arguments += ["--subject", "".join(c for c in volumeNode.GetName() if c.isalnum()) or "unnamed"]
        prediction = segmentationNode.GetAttribute(self.PREDICTION_ATTRIBUTE)
        if prediction and os.path.isfile(prediction):
            arguments += ["--predicted-labels", prediction]
        model = model or segmentationNode.GetAttribute("SCIseg.Model")
        if model:
            arguments += ["--model", model]
        command = ChildCommand(arguments, self.pythonExecutable())
        command.folder = folder
        return command

    def startMeasurement(self, segmentationNode, volumeNode, nliSlice: int = -1) -> ChildCommand:
        """Write the current segments as masks and run ``sciseg analyze`` on them in a child process.

        nliSlice: axial slice (I->S) of the neurological level of injury, used when there is no lesion; -1 for none.
        """
        import SimpleITK as sitk

        labels = mrml.export_sciseg_label_map(slicer.modules.segmentations.logic(), slicer.mrmlScene, segmentationNode, volumeNode)
        folder = tempfile.mkdtemp(prefix="sciseg-measure-")
        stem = volumeNode.GetName().replace(" ", "_") or "volume"
        cordPath = os.path.join(folder, f"{stem}_sc_seg.nii.gz")
        lesionPath = os.path.join(folder, f"{stem}_lesion_seg.nii.gz")
        sitk.WriteImage(sitk.Cast(labels > 0, sitk.sitkUInt8), cordPath)
        sitk.WriteImage(sitk.Cast(labels == 2, sitk.sitkUInt8), lesionPath)
        arguments = ["analyze", "--lesion", lesionPath, "--cord", cordPath, "-o", folder]
        if nliSlice >= 0:
            arguments += ["--nli-slice", str(nliSlice)]
        command = ChildCommand(arguments, self.pythonExecutable())
        command.folder, command.stem = folder, f"{stem}_lesion_seg"
        return command

    def finishMeasurement(self, command: ChildCommand, volumeNode):
        """Table node (one row per lesion), plot of the per-slice damage ratio and cord area, lesion centres (RAS)."""
        import SimpleITK as sitk

        try:
            if command.returncode != 0:
                message = command.stderr.strip().splitlines()[-1] if command.stderr.strip() else _("sciseg analyze failed")
                raise RuntimeError(message.removeprefix("sciseg: "))
            base = os.path.join(command.folder, command.stem)
            tableNode = mrml.table_node_from_csv(slicer.mrmlScene, base + "_analysis.csv", f"{volumeNode.GetName()} lesions")
            profileNode = mrml.table_node_from_csv(slicer.mrmlScene, base + "_perslice.csv", f"{volumeNode.GetName()} per slice")
            chartNode = mrml.plot_chart_from_table(
                slicer.mrmlScene, profileNode, "slice (I->S)", ["axial_damage_ratio []", "cord_area [mm2]"],
                f"{volumeNode.GetName()} damage ratio and cord area",
            )
            centres = mrml.lesion_centroids_ras(sitk.ReadImage(base + "_label.nii.gz"))
        finally:
            shutil.rmtree(command.folder, ignore_errors=True)
        return tableNode, chartNode, centres

    @staticmethod
    def openSegmentEditor(segmentationNode, volumeNode) -> None:
        """Segment Editor on this segmentation and volume; painting one segment takes voxels from the other."""
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(segmentationNode)
        setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode
        setSource(volumeNode)
        editorNode = editor.mrmlSegmentEditorNode()
        editorNode.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
        editorNode.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
        editorNode.SetSelectedSegmentID(mrml.LESION.segment_id)


#
# SCIsegTest
#


class SCIsegTest(ScriptedLoadableModuleTest):
    """The click path inside a real Slicer with the bundled demo model: segment, check, edit, export.

    Run it from the module panel (Reload and Test) or with
    ``Slicer --no-main-window --python-code "slicer.util.selectModule('SCIseg'); ..."``.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentEditExport()

    def test_SegmentEditExport(self):
        import numpy as np
        import SimpleITK as sitk

        from SCIsegLib.phantom import SAGITTAL, LesionSpec, make_phantom

        self.delayDisplay("Synthesising a T2w scan with two lesions")
        case = make_phantom(
            seed=5,
            acquisition=SAGITTAL,
            lesions=[LesionSpec(center_si_mm=-15.0, length_mm=16.0, width_fraction=0.9), LesionSpec(center_si_mm=20.0)],
        )
        logic = segmentationsLogic = slicer.modules.segmentations.logic()
        volumeNode = mrml.add_volume_node(slicer.mrmlScene, case.image, "phantom")
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)

        self.delayDisplay("Segmenting with sciseg-demo in a child process")
        moduleLogic = SCIsegLogic()
        parameters = moduleLogic.getParameterNode()
        parameters.inputVolume = volumeNode
        parameters.model = models.BUNDLED_DEMO
        parameters.device = "cpu"
        run = moduleLogic.startSegmentation(parameters)
        events = run.wait(timeout_s=900)
        self.assertTrue(any(e.get("event") == "progress" for e in events))
        segmentationNode = moduleLogic.importResult(run, volumeNode)
        run.cleanup()
        self.assertFalse(os.path.exists(run.work_dir))

        segmentation = segmentationNode.GetSegmentation()
        self.assertEqual(segmentation.GetNthSegmentID(0), "spinal_cord")
        self.assertEqual(segmentation.GetNthSegmentID(1), "lesion")
        self.assertEqual(segmentation.GetSegment("lesion").GetName(), "Lesion")
        truth = sitk.GetArrayFromImage(case.cord) > 0
        cord = mrml.segment_mask(logic, slicer.mrmlScene, segmentationNode, "spinal_cord", volumeNode)
        lesion = mrml.segment_mask(logic, slicer.mrmlScene, segmentationNode, "lesion", volumeNode)
        dice = 2 * np.sum((cord | lesion) & truth) / (np.sum(cord | lesion) + np.sum(truth))
        self.assertGreater(dice, 0.8)

        self.delayDisplay("Editing: the rater adds lesion voxels")
        added = np.zeros_like(lesion)
        z, y, x = np.argwhere(cord)[len(np.argwhere(cord)) // 2]
        added[z - 1 : z + 2, y, x] = True
        reference = mrml.image_from_volume_node(volumeNode)
        edited = sitk.GetImageFromArray((lesion | added).astype(np.uint8))
        edited.CopyInformation(reference)
        mrml.set_segment_from_mask(segmentationsLogic, slicer.mrmlScene, segmentationNode, mrml.LESION, edited, volumeNode)

        self.delayDisplay("Exporting the corrected label map")
        labels = mrml.export_sciseg_label_map(logic, slicer.mrmlScene, segmentationNode, volumeNode)
        path = os.path.join(tempfile.mkdtemp(prefix="sciseg-test-"), "phantom_labels.nii.gz")
        sitk.WriteImage(labels, path)
        written = sitk.GetArrayFromImage(sitk.ReadImage(path))
        self.assertTrue(np.all(written[added] == 2))
        self.assertEqual(set(np.unique(written).tolist()) - {0, 1, 2}, set())

        self.delayDisplay("Measuring the lesions")
        command = moduleLogic.startMeasurement(segmentationNode, volumeNode).wait(timeout_s=300)
        tableNode, chartNode, centres = moduleLogic.finishMeasurement(command, volumeNode)
        self.assertGreaterEqual(tableNode.GetNumberOfRows(), 1)
        self.assertEqual(tableNode.GetTable().GetColumnName(1), "volume [mm3]")
        self.assertEqual(chartNode.GetNumberOfPlotSeriesNodes(), 2)
        self.assertEqual(len(centres), tableNode.GetNumberOfRows())

        self.delayDisplay("Exporting for training (twice: two versions)")
        root = tempfile.mkdtemp(prefix="sciseg-bids-")
        for expected in (1, 2):
            command = moduleLogic.startExport(segmentationNode, volumeNode, root, "SCIsegTest").wait(timeout_s=300)
            self.assertEqual(command.returncode, 0, command.stderr)
            self.assertTrue(command.stdout.startswith(f"version {expected}:"))
        dseg = os.path.join(root, "derivatives", "labels", "sub-phantom", "anat", "sub-phantom_T2w_dseg.nii.gz")
        exported = sitk.GetArrayFromImage(sitk.ReadImage(dseg))
        self.assertTrue(np.all(exported[added] == 2))

        self.delayDisplay("Comparing with a fresh automatic segmentation")
        run = moduleLogic.startSegmentation(parameters)
        run.wait(timeout_s=900)
        automatic = moduleLogic.importResult(run, volumeNode)
        run.cleanup()
        changes = moduleLogic.compare(automatic, segmentationNode, volumeNode)
        self.assertGreater(changes["lesion_voxels_added"], 0)
        self.assertLess(changes["lesion_dice"], 1.0)

        self.delayDisplay("Measuring a scan without lesion at the NLI slice")
        empty = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
        empty.CopyInformation(reference)
        mrml.set_segment_from_mask(segmentationsLogic, slicer.mrmlScene, segmentationNode, mrml.LESION, empty, volumeNode)
        cordRPI = sitk.GetArrayFromImage(volume.reorient(labels > 0, volume.sct_to_itk_orientation("RPI")))  # (z I->S, y, x)
        nliSlice = int(np.nonzero(cordRPI.any(axis=(1, 2)))[0].mean())
        command = moduleLogic.startMeasurement(segmentationNode, volumeNode, nliSlice).wait(timeout_s=300)
        tableNode, chartNode, centres = moduleLogic.finishMeasurement(command, volumeNode)
        self.assertEqual(tableNode.GetNumberOfRows(), 1)
        self.assertEqual(centres, {})
        totalColumn = tableNode.GetColumnIndex("interpolated_total_bridge_width [mm]")
        self.assertGreater(float(tableNode.GetCellText(0, totalColumn)), 0.0)
        self.delayDisplay("Test passed")
