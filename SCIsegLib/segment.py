"""The segmentation pipeline: image -> model orientation -> network -> masks on the input grid -> files.

Outputs follow ``sct_deepseg``: for SCIseg's labels ``{"sc": [1, 2], "lesion": 2}`` the files are
``<stem>_sc_seg.nii.gz`` (cord = labels 1 and 2) and ``<stem>_lesion_seg.nii.gz`` (label 2), uint8,
on exactly the input grid, each with a JSON sidecar (BIDS ``GeneratedBy``). Optional: the label
map ``<stem>_labels.nii.gz`` (0 background, 1 cord only, 2 lesion) and the probabilities
``<stem>_<structure>_prob.nii.gz`` (float32, 0-1).
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from . import __version__
from .hashing import file_sha256
from .errors import CancelledError
from .inference import CancelToken, Engine, InferenceSettings, ProgressCallback, ProgressEvent
from .models import ModelInfo, is_grey_matter
from .postprocess import PostprocessSettings, clean_masks
from .provenance import describe_derivative, source_path
from .staging import new_temporary, publish_set, recover_folder
from .volume import (
    DEFAULT_MAX_VOXELS,
    array_zyx,
    check_images,
    image_from_array_zyx,
    image_stem,
    load_image,
    reorient,
    reorient_like,
    sct_to_itk_orientation,
    write_image_file,
)

# Fractions of the progress bar given to each stage of one image.
_PREDICT_START, _PREDICT_END = 0.10, 0.90


@dataclass
class SegmentationResult:
    """Masks of one image, all on the input grid.

    Attributes:
        masks: structure name ("sc", "lesion", ...) -> uint8 binary image.
        label_map: uint8 image (SCIseg: 0 background, 1 cord only, 2 lesion).
        probabilities: structure name -> float32 image in [0, 1] (only when requested).
        device: the torch device used.
        seconds: wall time of the network call.
    """

    masks: dict[str, sitk.Image]
    label_map: sitk.Image
    probabilities: dict[str, sitk.Image] = field(default_factory=dict)
    device: str = "cpu"
    seconds: float = 0.0
    engine: dict = field(default_factory=dict)  # what ran: engine, precision, crop box, fallbacks


def structure_suffix(model: ModelInfo, structure: str) -> str:
    """SCT's file suffix of a structure: ``_sc_seg``, ``_lesion_seg``; ``_seg`` for a cord-only model; ``_gmseg`` for
    grey matter (SCT's ``sct_deepseg_gm`` name)."""
    if list(model.structures) == ["sc"]:
        return "_seg"
    if is_grey_matter(structure):
        return "_gmseg"
    return f"_{structure}_seg"


def _emit(progress: ProgressCallback | None, fraction: float, stage: str, message: str, source: str | None) -> None:
    if progress is not None:
        progress(ProgressEvent(fraction=fraction, stage=stage, message=message, input=source))


def segment_image(
    image: sitk.Image,
    engine: Engine,
    *,
    postprocess: PostprocessSettings = PostprocessSettings(),
    want_probabilities: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    source: str | None = None,
) -> SegmentationResult:
    """Segment one image with ``engine``; nothing is written.

    The image is reoriented to the model orientation (SCT letters in ``dataset.json``; RPI for
    SCIseg), given to the network as a (z, y, x) float32 array with spacing (z, y, x) in mm, and
    every output is reoriented back onto the input grid.
    """
    model = engine.model
    cancel = cancel or CancelToken()
    _emit(progress, 0.02, "preprocess", f"reorienting to {model.orientation}", source)
    model_image = reorient(image, sct_to_itk_orientation(model.orientation))
    spacing_zyx = tuple(float(s) for s in reversed(model_image.GetSpacing()))
    cancel.raise_if_cancelled()

    def on_network_progress(fraction: float, message: str) -> None:
        _emit(progress, _PREDICT_START + fraction * (_PREDICT_END - _PREDICT_START), "predict", message, source)

    _emit(progress, _PREDICT_START, "predict", f"running {model.name}", source)
    started = time.perf_counter()
    output = engine.predict(
        array_zyx(model_image),
        spacing_zyx,  # type: ignore[arg-type]
        want_probabilities=want_probabilities,
        on_progress=on_network_progress,
        cancel=cancel,
    )
    seconds = time.perf_counter() - started
    cancel.raise_if_cancelled()
    _emit(progress, 0.92, "postprocess", "mapping the masks back onto the input grid", source)

    def back_to_input(array: np.ndarray) -> sitk.Image:
        return reorient_like(image_from_array_zyx(array, model_image), image)

    label_map = back_to_input(output.label_map)
    label_array = sitk.GetArrayFromImage(label_map)
    masks = {
        name: np.isin(label_array, values) for name, values in model.structures.items()
    }
    if postprocess.any and {"sc", "lesion"} <= set(masks):
        spacing_input_zyx = tuple(float(s) for s in reversed(image.GetSpacing()))
        masks["sc"], masks["lesion"] = clean_masks(masks["sc"], masks["lesion"], spacing_input_zyx, postprocess)  # type: ignore[arg-type]
        label_array = masks["sc"].astype(np.uint8)
        label_array[masks["lesion"]] = 2
        label_map = image_from_array_zyx(label_array, image)
    mask_images = {name: image_from_array_zyx(mask.astype(np.uint8), image) for name, mask in masks.items()}
    probability_images = {name: back_to_input(p.astype(np.float32)) for name, p in output.probabilities.items()}
    return SegmentationResult(
        masks=mask_images, label_map=label_map, probabilities=probability_images, device=output.device, seconds=seconds,
        engine=dict(output.run),
    )




def sidecar(
    *,
    model: ModelInfo,
    structure: str,
    mask: sitk.Image | None,
    source: Path,
    settings: InferenceSettings,
    postprocess: PostprocessSettings,
    result: SegmentationResult,
) -> dict:
    """The JSON sidecar of one output: BIDS ``GeneratedBy`` plus the source and what the mask holds."""
    content: dict = {
        "GeneratedBy": [
            {
                "Name": "SCIseg",
                "Version": __version__,
                "Description": f"nnU-Net v2 segmentation with model '{model.name}'",
                "Model": {
                    "Name": model.name,
                    "sha256": model.metadata.get("sha256"),
                    "WeightsSha256": model.weights_sha256(),
                    "Folds": list(settings.folds) if settings.folds is not None else model.folds,
                    "Checkpoint": model.checkpoint_name,
                    "Orientation": model.orientation,
                },
                "Settings": {**settings.as_dict(), "postprocess": postprocess.as_dict(), "device_used": result.device},
                "Engine": result.engine,
                "Date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
        ],
        "Sources": [source_path(source)],  # relative to its BIDS root, never absolute
        "SourceSha256": file_sha256(source),
        "InferenceSeconds": round(result.seconds, 3),
    }
    if mask is not None:
        voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        content.update(
            Structure=structure,
            LabelValues=model.structures.get(structure),
            VoxelCount=voxels,
            VolumeMm3=round(voxels * float(np.prod(mask.GetSpacing())), 4),
        )
    return content


def write_result(
    result: SegmentationResult,
    *,
    model: ModelInfo,
    source: Path,
    output_dir: Path,
    settings: InferenceSettings,
    postprocess: PostprocessSettings,
    write_label_map: bool = False,
) -> list[Path]:
    """Write masks (and optional label map/probabilities) with sidecars as one all-or-nothing set.

    Every file goes to a registered temporary first; the set is published by
    :func:`SCIsegLib.staging.publish_set`: renames, then the marker ``<stem>_sciseg_outputs.json`` last.
    A NIfTI input's header (qform, sform, codes) is copied into every output, as SCT does.
    Returns the final paths (marker last).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    describe_derivative(output_dir, "spinal cord and lesion segmentation (nnU-Net v2)")
    stem = image_stem(source)
    planned: list[tuple[Path, sitk.Image, dict]] = []
    for name, mask in result.masks.items():
        planned.append((output_dir / f"{stem}{structure_suffix(model, name)}.nii.gz", mask, {"structure": name}))
    if write_label_map:
        planned.append((output_dir / f"{stem}_labels.nii.gz", result.label_map, {"structure": None}))
    for name, probability in result.probabilities.items():
        planned.append((output_dir / f"{stem}_{name}_prob.nii.gz", probability, {"structure": name, "probability": True}))

    register: list[Path] = []  # every temporary, registered before a byte is written to it
    staged: list[tuple[Path, Path]] = []
    try:
        for final, image, info in planned:
            temporary = new_temporary(final, register)
            write_image_file(image, temporary, geometry_from=source)
            staged.append((temporary, final))
            is_mask = info.get("structure") is not None and not info.get("probability")
            content = sidecar(
                model=model,
                structure=info.get("structure") or "labels",
                mask=image if is_mask else None,
                source=source,
                settings=settings,
                postprocess=postprocess,
                result=result,
            )
            if info.get("probability"):
                content["Description"] = f"probability of '{info['structure']}' (0-1)"
            if info.get("structure") is None:
                content["Labels"] = {"0": "background", "1": "spinal cord (no lesion)", "2": "lesion"}
            json_final = final.with_name(final.name.removesuffix(".nii.gz") + ".json")
            json_temporary = new_temporary(json_final, register)
            json_temporary.write_text(json.dumps(content, indent=2))
            staged.append((json_temporary, json_final))
        marker = publish_set(output_dir, stem, staged, register, {"Source": source_path(source), "SCIsegVersion": __version__})
    finally:
        for temporary in register:
            temporary.unlink(missing_ok=True)
    return [final for _, final in staged] + [marker]


def _cancel_sentence(records: list[dict], current: Path, count: int) -> str:
    """What a cancel left: the published sets of the inputs finished before it, and nothing of the current one."""
    if not records:
        return f"segmentation cancelled during {current.name}; no output was written."
    done = "; ".join(f"{Path(r['input']).name} -> {', '.join(Path(o).name for o in r['outputs'])}" for r in records)
    return (
        f"segmentation cancelled during {current.name} ({len(records) + 1} of {count}); "
        f"written before the cancel (complete sets): {done}; nothing of {current.name} was written."
    )


class SegmentCancelled(CancelledError):
    """A cancel after some inputs were done; ``records`` are their published outputs."""

    def __init__(self, message: str, records: list[dict]) -> None:
        super().__init__(message)
        self.records = records


def segment_files(
    inputs: list[Path],
    output_dir: Path,
    engine: Engine,
    *,
    settings: InferenceSettings,
    postprocess: PostprocessSettings = PostprocessSettings(),
    write_label_map: bool = False,
    want_probabilities: bool = False,
    replace_nonfinite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    max_voxels: int | None = DEFAULT_MAX_VOXELS,
    inputs_checked: bool = False,
    warn: Callable[[str], None] | None = None,
) -> list[dict]:
    """Segment several files one after the other; return one record per input (outputs, seconds).

    Every input is checked before the first is segmented (:func:`SCIsegLib.volume.check_images`; skipped when the
    caller did it, ``inputs_checked``), so a bad file in a long list fails fast. Interrupted
    publications and stale temporaries in ``output_dir`` are finished or removed first
    (:func:`SCIsegLib.staging.recover_folder`). A cancel raises :class:`SegmentCancelled` saying
    which inputs' outputs were written.
    """
    if not inputs_checked:
        check_images(inputs, replace_nonfinite=replace_nonfinite, max_voxels=max_voxels, warn=warn)
    output_dir.mkdir(parents=True, exist_ok=True)
    recover_folder(output_dir)
    records: list[dict] = []
    count = len(inputs)
    for index, path in enumerate(inputs):

        def scaled(event: ProgressEvent, index: int = index) -> None:
            if progress is not None:
                progress(ProgressEvent((index + event.fraction) / count, event.stage, event.message, event.input))

        try:
            result = segment_image(
                load_image(path, replace_nonfinite=replace_nonfinite, max_voxels=max_voxels),
                engine,
                postprocess=postprocess,
                want_probabilities=want_probabilities,
                progress=scaled,
                cancel=cancel,
                source=str(path),
            )
            if cancel is not None:
                cancel.raise_if_cancelled()
        except CancelledError:
            raise SegmentCancelled(_cancel_sentence(records, path, count), records) from None
        scaled(ProgressEvent(0.95, "write", f"writing outputs to {output_dir}", str(path)))
        written = write_result(
            result,
            model=engine.model,
            source=path,
            output_dir=output_dir,
            settings=settings,
            postprocess=postprocess,
            write_label_map=write_label_map,
        )
        records.append(
            {
                "input": str(path),
                "outputs": [str(p) for p in written if p.name.endswith(".nii.gz")],
                "marker": str(written[-1]),
                "seconds": round(result.seconds, 3),
                "device": result.device,
                "engine": result.engine.get("engine"),
                "precision": result.engine.get("precision"),
                "voxels": {name: int(np.count_nonzero(sitk.GetArrayViewFromImage(m))) for name, m in result.masks.items()},
            }
        )
        scaled(ProgressEvent(1.0, "done", f"segmented {path.name}", str(path)))
    return records

