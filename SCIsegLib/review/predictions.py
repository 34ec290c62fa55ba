"""A prediction for a case of ``sciseg review``: segment its image (warm engine or ``sciseg segment`` child) and publish
the masks at the case's prediction paths with ``sciseg segment``'s sidecars, each file whole or not at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import SimpleITK as sitk

from ..analysis_files import write_text_atomic
from ..cases import CaseRefused
from ..hashing import file_sha256
from ..provenance import describe_derivative, source_path
from ..runner import RunOptions, SegmentationRun
from ..volume import write_image_atomic
from ..warm_client import WarmEngines
from ..warm_run import EngineRun, engine_settings
from .paths import case_image_path, prediction_paths


def start_segmentation(root: Path, case_id: str, model: str, log_dir: Path | None = None,
                       engines: WarmEngines | None = None) -> SegmentationRun | EngineRun:
    """Segment a case's image (poll the run; :func:`publish_prediction` at the end): on the worker's warm engine for
    ``model`` when ``engines`` holds one that can take it (:class:`~SCIsegLib.warm_run.EngineRun`: cold after a
    refusal or a crash), else ``sciseg segment`` in a child process."""
    options = RunOptions(model=model)  # device "auto": the server's GPU when it has one
    if engines is None:
        run = SegmentationRun(options, log_dir=log_dir)
    else:
        run = EngineRun(engines.get(model, engine_settings(options)), options, log_dir=log_dir)
    shutil.copyfile(case_image_path(root, case_id), run.input_path)
    run.start()
    return run


def publish_prediction(root: Path, case_id: str, run: SegmentationRun) -> dict[str, Path]:
    """Move a finished run's masks to the case's prediction paths with ``sciseg segment``'s sidecars (each file written
    atomically; the sidecar first, so a mask never sits beside another run's sidecar), then clean the run.

    The run segmented a copy of the case's image: its sidecars name that copy; they are published naming the case's
    image (relative to the BIDS root) once its sha256 is checked to be the copy's. ``derivatives/sciseg`` gets its
    ``dataset_description.json``.
    """
    outputs = run.outputs()
    targets = prediction_paths(root, case_id)
    image = case_image_path(root, case_id)
    try:
        sidecars = {key: prediction_sidecar(outputs[key], image) for key in targets}
        describe_derivative(targets["sc"].parent, "spinal cord and lesion segmentation (nnU-Net v2)")
        for key, target in targets.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(json.dumps(sidecars[key], indent=2), target.with_name(target.name.removesuffix(".nii.gz") + ".json"))
            write_image_atomic(sitk.ReadImage(str(outputs[key])), target, geometry_from=image)
    finally:
        run.cleanup()
    return targets


def prediction_sidecar(mask: Path, image: Path) -> dict:
    """The sidecar ``sciseg segment`` wrote beside ``mask`` (segmenting a copy of ``image``), naming ``image`` instead;
    :class:`CaseRefused` when the copy's sha256 (its ``SourceSha256``) is not the image's (it changed meanwhile)."""
    content = json.loads(Path(str(mask).removesuffix(".nii.gz") + ".json").read_text())
    if content.get("SourceSha256") != file_sha256(image):
        raise CaseRefused(f"{image.name} changed while it was segmented; open the case again to segment it anew.")
    content["Sources"] = [source_path(image)]
    return content
