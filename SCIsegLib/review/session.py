"""One open case in a Slicer scene: load image and masks, count voxels, measure lesions, export. No UI.

The scene is trame-slicer's (``SlicerApp``): the same ``SCIsegLib.mrml`` code as the Slicer module
puts the image and the prediction in it (segments ``spinal_cord`` = cord only and ``lesion``, our
terminology, names and colours), trame-slicer's ``SegmentationEditor`` edits them with overwrite of all
segments (painting lesion takes the voxels from "cord only", as nnU-Net's nested regions), and
``training.export.export_correction`` writes the new version. Arrays are (z, y, x).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import mrml
from ..errors import InputError
from ..lesions import analyze_lesions
from ..runner import RunOptions, SegmentationRun
from ..training.export import VERSIONS, ExportResult, export_correction, labels_folder, latest_version, version_numbers
from ..volume import load_image, on_grid_of, write_image_atomic
from .memory import release_freed_memory
from .paths import case_image_path, contained, prediction_paths


@dataclass
class OpenCase:
    """The case in the scene: its nodes, the prediction as loaded, and the version count seen at opening."""

    case_id: str
    image_path: Path
    volume_node: object
    segmentation_node: object
    predicted_labels: np.ndarray  # (z, y, x) uint8, 0 / 1 cord only / 2 lesion
    versions_at_open: int
    lesion_centres_ras: dict[int, tuple[float, float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportOutcome:
    """An export: the exporter's result and, when another version appeared since the case was opened, a sentence."""

    result: ExportResult
    concurrent_message: str | None


def version_count(root: Path, image_path: Path) -> int:
    latest = latest_version(root, image_path)
    return len(version_numbers(latest.parent)) if latest is not None else 0


class ReviewSession:
    """Open, edit, measure and export cases of one BIDS root in a trame-slicer ``SlicerApp``.

    Opening a case closes the previous one first: its nodes leave the scene, the undo history is
    cleared, and the freed memory goes back to the system (:mod:`.memory`), so a rater can go through
    hundreds of cases in one server.
    """

    def __init__(self, slicer_app, root: Path, model: str | None = None) -> None:
        self.app = slicer_app
        self.root = Path(root)
        self.model = model
        self.case: OpenCase | None = None

    @property
    def scene(self):
        return self.app.scene

    @property
    def logic(self):
        return self.app.segmentations_logic

    @property
    def editor(self):
        return self.app.segmentation_editor

    def close_case(self) -> None:
        """Remove the case's nodes (with their display and storage nodes) and its undo history; free the memory."""
        if self.case is None:
            return
        case, self.case = self.case, None
        self._discard(case.segmentation_node, case.volume_node)
        del case  # its arrays too, before the memory is given back
        release_freed_memory()

    def _discard(self, segmentation_node, volume_node) -> None:
        """Let the editor go of a case's nodes, then remove them (and their display and storage nodes) from the scene."""
        self.editor.clear()  # undo history (each command holds two copies of the segmentation) and active effect
        logic = self.editor.editor_logic  # it would hold both nodes until the next case is made active
        logic.SetSegmentationNode(None)
        logic.SetSourceVolumeNode(None)
        for node in (segmentation_node, volume_node):
            if node is None:
                continue
            if self.scene.IsNodePresent(node):
                helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
                helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
                for helper in helpers:
                    if helper is not None and self.scene.IsNodePresent(helper):
                        self.scene.RemoveNode(helper)
                self.scene.RemoveNode(node)
            # trame-slicer's wrapper of the segmentation observes its node with a lambda that refers to the
            # wrapper: a cycle through VTK that only a full gc.collect() would free, with the case's voxels.
            node.RemoveAllObservers()

    def has_prediction(self, case_id: str) -> bool:
        return all(path.is_file() for path in prediction_paths(self.root, case_id).values())

    def open_case(self, case_id: str) -> OpenCase:
        """Load a case's image and prediction (empty masks when none) as segments; the editor edits them.

        The files are read and checked before the scene changes: a case that cannot be opened leaves the
        open one as it was, and a failure while adding the nodes leaves none of them behind.
        """
        image_path = case_image_path(self.root, case_id)
        image = load_image(image_path)
        predictions = prediction_paths(self.root, case_id)
        if self.has_prediction(case_id):
            try:
                cord = on_grid_of(sitk.ReadImage(str(contained(self.root, predictions["sc"]))), image, what="the cord prediction", where=str(image_path))
                lesion = on_grid_of(sitk.ReadImage(str(contained(self.root, predictions["lesion"]))), image, what="the lesion prediction", where=str(image_path))
            except ValueError as error:  # not on the image's grid
                raise InputError(f"cannot open {case_id}: {error}; segment it again or remove its prediction.") from None
            except RuntimeError:  # SimpleITK could not read a file
                raise InputError(f"cannot open {case_id}: its prediction files cannot be read; segment it again or remove them.") from None
        else:
            cord = sitk.Image(image.GetSize(), sitk.sitkUInt8)
            cord.CopyInformation(image)
            lesion = sitk.Image(cord)
        predicted = np.zeros(sitk.GetArrayViewFromImage(cord).shape, np.uint8)
        predicted[sitk.GetArrayViewFromImage(cord) > 0] = 1
        predicted[sitk.GetArrayViewFromImage(lesion) > 0] = 2
        versions = version_count(self.root, image_path)
        self.close_case()
        volume = segmentation = None
        try:
            volume = mrml.add_volume_node(self.scene, image, case_id.rsplit("/", 1)[1])
            volume.CreateDefaultDisplayNodes()
            segmentation = mrml.import_sciseg_masks(self.logic, self.scene, volume, cord, lesion)
            self.editor.set_active_segmentation(segmentation, volume)
            from trame_slicer.segmentation import SegmentationOverwriteMode

            self.editor.set_overwrite_mode(SegmentationOverwriteMode.OVERWRITE_ALL)
        except BaseException:
            self._discard(segmentation, volume)
            raise
        self.case = OpenCase(case_id, image_path, volume, segmentation, predicted, versions)
        return self.case

    def labels(self) -> np.ndarray:
        """The current masks as a (z, y, x) uint8 array on the image grid: 0, 1 cord only, 2 lesion."""
        assert self.case is not None
        image = mrml.export_sciseg_label_map(self.logic, self.scene, self.case.segmentation_node, self.case.volume_node)
        return sitk.GetArrayFromImage(image)

    def voxel_counts(self) -> dict[str, int]:
        """Voxels of each segment now: ``cord_only`` (label 1), ``lesion`` (label 2), ``cord`` (their union)."""
        labels = self.labels()
        cord_only, lesion = int(np.count_nonzero(labels == 1)), int(np.count_nonzero(labels == 2))
        return {"cord_only": cord_only, "lesion": lesion, "cord": cord_only + lesion}

    def reference_image(self) -> sitk.Image:
        """The open case's image grid (geometry only matters) as SimpleITK reads it from the volume node."""
        assert self.case is not None
        return mrml.image_from_volume_node(self.case.volume_node)

    def lesion_table(self) -> list[dict]:
        """``sciseg analyze``'s lesion measures of the current masks, one dict per lesion, with its centre (RAS mm)."""
        assert self.case is not None
        rows, centres = measure_lesions(self.labels(), self.reference_image())
        self.case.lesion_centres_ras = centres
        return rows

    def largest_lesion_centre_ras(self) -> tuple[float, float, float] | None:
        """Centre (RAS mm) of the largest 26-connected lesion of the current masks (quick: no morphometrics)."""
        assert self.case is not None
        lesion = sitk.GetImageFromArray((self.labels() == 2).astype(np.uint8))
        lesion.CopyInformation(self.reference_image())
        components = sitk.RelabelComponent(sitk.ConnectedComponent(lesion, True))  # 1 = largest
        centres = mrml.lesion_centroids_ras(components)
        return centres.get(1)

    def export(self, rater: str, note: str = "") -> ExportOutcome:
        """A new immutable version of the current masks with the rater's name (the exporter's lock orders raters)."""
        assert self.case is not None
        folder, stem = self.case.case_id.rsplit("/", 1)
        labels_root = labels_folder(self.root)
        for path in (labels_root, labels_root / folder, labels_root / VERSIONS / folder / stem):
            contained(self.root, path)  # a symlinked derivatives folder must not carry the export outside the root
        labels = self.labels()
        reference = sitk.ReadImage(str(self.case.image_path))

        def image_of(mask: np.ndarray) -> sitk.Image:
            result = sitk.GetImageFromArray(mask.astype(np.uint8))
            result.CopyInformation(reference)
            return result

        predicted = self.case.predicted_labels
        result = export_correction(
            root=self.root, source=self.case.image_path, cord=image_of(labels > 0), lesion=image_of(labels == 2),
            rater=rater, model=self.model, predicted_cord=image_of(predicted > 0), predicted_lesion=image_of(predicted == 2),
            note=note,
        )
        expected = self.case.versions_at_open + 1
        message = None
        if result.version != expected:
            others = ", ".join(f"v{n:03d}" for n in range(expected, result.version))
            message = (
                f"another version ({others}) appeared while you edited this case; yours is v{result.version:03d}, "
                "both are kept."
            )
        self.case.versions_at_open = result.version
        return ExportOutcome(result, message)


def measure_lesions(labels: np.ndarray, reference: sitk.Image) -> tuple[list[dict], dict[int, tuple[float, float, float]]]:
    """Lesion rows (label, volume mm3, length mm, width mm, centre RAS mm) and centres from a (z, y, x) label array.

    Pure numpy/SimpleITK (no scene), so the app runs it in a worker thread while the views stay live.
    """

    def image_of(mask: np.ndarray) -> sitk.Image:
        result = sitk.GetImageFromArray(mask.astype(np.uint8))
        result.CopyInformation(reference)
        return result

    analysis = analyze_lesions(image_of(labels == 2), image_of(labels > 0))
    centres = mrml.lesion_centroids_ras(analysis.labels)
    rows = []
    for record in analysis.table.to_dict("records"):
        label = int(record["label"])
        rows.append({
            "label": label,
            "volume_mm3": round(float(record["volume [mm3]"]), 1),
            "length_mm": _rounded(record.get("length [mm]")),
            "width_mm": _rounded(record.get("width [mm]")),
            "centre_ras": list(centres.get(label, (0.0, 0.0, 0.0))),
        })
    return rows, centres


def _rounded(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(number) else round(number, 1)


def start_segmentation(root: Path, case_id: str, model: str, log_dir: Path | None = None) -> SegmentationRun:
    """Start ``sciseg segment`` on a case's image in a child process (poll it; :func:`publish_prediction` at the end)."""
    run = SegmentationRun(RunOptions(model=model), log_dir=log_dir)  # device "auto": the server's GPU when it has one
    shutil.copyfile(case_image_path(root, case_id), run.input_path)
    run.start()
    return run


def publish_prediction(root: Path, case_id: str, run: SegmentationRun) -> dict[str, Path]:
    """Move a finished run's masks to the case's prediction paths (each written atomically), then clean the run."""
    outputs = run.outputs()
    targets = prediction_paths(root, case_id)
    try:
        for key, target in targets.items():
            write_image_atomic(sitk.ReadImage(str(outputs[key])), target)
    finally:
        run.cleanup()
    return targets
