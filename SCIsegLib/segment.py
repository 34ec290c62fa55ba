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
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .hashing import file_sha256
from .errors import InputError
from .inference import CancelToken, Engine, InferenceSettings, ProgressCallback, ProgressEvent
from .models import ModelInfo
from .postprocess import PostprocessSettings, clean_masks
from .volume import (
    array_zyx,
    image_from_array_zyx,
    image_stem,
    load_image,
    publish_file,
    reorient,
    reorient_like,
    sct_to_itk_orientation,
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
    """SCT's file suffix of a structure: ``_sc_seg``, ``_lesion_seg``; ``_seg`` for a cord-only model."""
    if list(model.structures) == ["sc"]:
        return "_seg"
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
        "Sources": [str(source.resolve())],
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
    """Write masks (and optional label map/probabilities) with sidecars, all-or-nothing.

    Every file goes to a temporary name first; the final names appear only once all files are
    complete, so a crash or cancel leaves the output folder as it was.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = image_stem(source)
    planned: list[tuple[Path, sitk.Image, dict]] = []
    for name, mask in result.masks.items():
        planned.append((output_dir / f"{stem}{structure_suffix(model, name)}.nii.gz", mask, {"structure": name}))
    if write_label_map:
        planned.append((output_dir / f"{stem}_labels.nii.gz", result.label_map, {"structure": None}))
    for name, probability in result.probabilities.items():
        planned.append((output_dir / f"{stem}_{name}_prob.nii.gz", probability, {"structure": name, "probability": True}))

    staged: list[tuple[Path, Path]] = []
    try:
        for final, image, info in planned:
            handle, temporary = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part.nii.gz", dir=output_dir)
            os.close(handle)
            staged.append((Path(temporary), final))
            sitk.WriteImage(image, temporary, useCompression=True)
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
            handle, json_temporary = tempfile.mkstemp(prefix=f".{json_final.name}.", suffix=".part", dir=output_dir)
            with os.fdopen(handle, "w") as stream:
                json.dump(content, stream, indent=2)
            staged.append((Path(json_temporary), json_final))
        for temporary, final in staged:
            publish_file(temporary, final)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    return [final for _, final in staged]


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
) -> list[dict]:
    """Segment several files one after the other; return one record per input (outputs, seconds).

    Every input is checked before the first is segmented, so a bad file in a long list fails fast.
    """
    for path in inputs:  # check every file first; keep none in memory (cohorts of hundreds of scans)
        load_image(path, replace_nonfinite=replace_nonfinite)
    stems = [image_stem(p) for p in inputs]
    duplicates = {s for s in stems if stems.count(s) > 1}
    if duplicates:
        raise InputError(f"several inputs share the name '{sorted(duplicates)[0]}'; their outputs would overwrite each other.")
    records = []
    count = len(inputs)
    for index, path in enumerate(inputs):

        def scaled(event: ProgressEvent, index: int = index) -> None:
            if progress is not None:
                progress(ProgressEvent((index + event.fraction) / count, event.stage, event.message, event.input))

        result = segment_image(
            load_image(path, replace_nonfinite=replace_nonfinite),
            engine,
            postprocess=postprocess,
            want_probabilities=want_probabilities,
            progress=scaled,
            cancel=cancel,
            source=str(path),
        )
        if cancel is not None:
            cancel.raise_if_cancelled()
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
                "seconds": round(result.seconds, 3),
                "device": result.device,
                "engine": result.engine.get("engine"),
                "precision": result.engine.get("precision"),
                "voxels": {name: int(np.count_nonzero(sitk.GetArrayViewFromImage(m))) for name, m in result.masks.items()},
            }
        )
        scaled(ProgressEvent(1.0, "done", f"segmented {path.name}", str(path)))
    return records
