"""What a Dask worker does for one scan: resume check -> segment -> lesion morphometrics -> cord CSA -> QC
images -> publish the output set whole. Returns a small dict (never voxels) for the run summary.

Each worker process builds the segmentation engine once (:func:`worker_engine`) and keeps it for every
scan it receives. Errors of one scan become its row (one sentence); they do not stop the run.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from .. import __version__
from ..errors import SCIsegError
from ..exit_collection import skip_collections_at_exit
from ..hashing import file_sha256
from ..provenance import source_path
from ..inference import InferenceSettings
from ..models import ModelInfo, read_model
from ..postprocess import PostprocessSettings
from .corrections import MeasuredLabels, load_corrected_masks, measured_labels, write_measured_masks
from .discovery import Scan
from .measures import scan_measures
from .plausibility import plausibility_flags
from .outputs import completed_marker, new_staging_folder, publish_output_set


@dataclass(frozen=True)
class ScanJob:
    """Everything a worker needs for one scan (paths and small settings only; pickled to the worker).

    Attributes:
        scan: the input.
        deriv: the derivatives root (absolute).
        model_path, model_name, model_sha256: the model folder, its name and the sha256 of its weights.
        inference: network settings; postprocess: mask clean-ups.
        force: redo the scan even when its outputs are complete and current.
        corrections_root: the BIDS dataset whose ``derivatives/labels`` holds rater corrections: a scan with one is
            measured on its latest version instead of the model's masks (None: always the model's masks).
    """

    scan: Scan
    deriv: Path
    model_path: Path
    model_name: str
    model_sha256: str
    inference: InferenceSettings = InferenceSettings()
    postprocess: PostprocessSettings = field(default_factory=PostprocessSettings)
    force: bool = False
    corrections_root: Path | None = None
    command: str = ""  # the command line that started the run (recorded in the marker and the QC report)

    def settings(self) -> dict:
        """What, besides source and model, decides the outputs (the marker records it; threads do not count)."""
        inference = {k: v for k, v in self.inference.as_dict().items() if k != "threads"}
        return {"inference": inference, "postprocess": self.postprocess.as_dict()}


def _make_engine(model: ModelInfo, settings: InferenceSettings):
    """The segmentation engine of ``sciseg run``: ``settings.engine`` as ``sciseg segment`` picks it (fast by default)."""
    from ..inference import make_engine

    return make_engine(model, settings)


_ENGINES: dict[tuple, object] = {}
_ENGINES_LOCK = threading.Lock()


def worker_engine(job: ScanJob):
    """The engine of this worker process for the job's model and settings, built on first use and kept."""
    key = (str(job.model_path), job.inference)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            skip_collections_at_exit()  # this worker process ends within its nanny's 4 s, torch loaded or not
            _pin_gpu(job.inference.device)
            _ENGINES.clear()  # one model per worker at a time
            _ENGINES[key] = _make_engine(read_model(job.model_path, job.model_name), job.inference)
        return _ENGINES[key]


def _pin_gpu(device: str) -> None:
    """With several GPUs, worker N of an embedded cluster uses GPU N (mod the count); others keep the default."""
    if device not in ("auto", "cuda", "gpu"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    name = _worker_name()
    if count > 1 and name.isdigit():
        torch.cuda.set_device(int(name) % count)


def engines_built() -> int:
    """How many engines this process built and still holds (tests check one per worker)."""
    return len(_ENGINES)


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def process_scan(job: ScanJob) -> dict:
    """Run the whole pipeline on one scan; returns its row for ``run_summary.csv`` (status done/skipped/failed)."""
    scan = job.scan
    row: dict = {"file": str(scan.path), "subject": scan.subject, "session": scan.session, "scan": scan.stem,
                 "status": "failed", "reason": "", "worker": _worker_name(), "pid": os.getpid()}
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    staging: list[Path] = []  # the staging folder once made (removed here when the scan fails)

    def timed(stage: str, function, *args, **kwargs):
        begin = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            seconds[stage] = round(time.perf_counter() - begin, 3)

    try:
        source_sha256 = timed("hash", file_sha256, scan.path)
        labels = timed("labels", measured_labels, job.corrections_root, scan)
        row["measured_on"] = labels.describe()
        if not job.force:
            marker = completed_marker(job.deriv, scan, source_sha256, job.model_sha256, job.settings(), labels.key())
            if marker is not None:
                row.update(status="skipped", marker=marker,
                           reason="outputs complete for this source, model, settings and labels")
                return row
        row["marker"] = _run_pipeline(job, source_sha256, labels, timed, staging, seconds)
        row["status"] = "done"
    except SCIsegError as error:
        row["reason"] = str(error)
    except MemoryError:
        row["reason"] = "the worker ran out of memory on this scan; give each worker more memory (--memory-per-worker)."
    except Exception as error:  # noqa: BLE001 - one scan's bug must not stop the cohort; its row says what happened
        row["reason"] = f"internal error ({type(error).__name__}: {error})."
    finally:
        row.update({f"seconds_{stage}": value for stage, value in seconds.items()})
        row["seconds_total"] = round(time.perf_counter() - started, 3)
        for folder in staging:
            shutil.rmtree(folder, ignore_errors=True)
    return row


def _run_pipeline(job: ScanJob, source_sha256: str, labels: MeasuredLabels, timed, staging_holder: list[Path],
                  seconds: dict[str, float]) -> dict:
    from ..analysis_files import write_cord_table, write_lesion_analysis
    from ..cord import cord_morphometry
    from ..errors import InputError
    from ..lesions import analyze_lesions, per_slice_profile
    from ..qc.images import write_qc_images
    from ..segment import segment_image, write_result
    from ..volume import load_image

    scan = job.scan
    image = timed("load", load_image, scan.path)
    if labels.corrected:  # the rater's version replaces the model's masks: no segmentation
        masks = timed("segment", load_corrected_masks, labels, scan, image)
        device = "none (measured on a rater correction)"
    else:
        engine = timed("model", worker_engine, job)
        result = timed("segment", segment_image, image, engine, postprocess=job.postprocess, source=str(scan.path))
        masks, device = result.masks, result.device
    staging = new_staging_folder(job.deriv)
    staging_holder.append(staging)
    anat = staging / scan.relative_folder
    if labels.corrected:
        labels_root = Path(job.corrections_root) / "derivatives" / "labels"
        timed("write", write_measured_masks, masks, labels, scan, anat, labels_root)
    else:
        timed("write", write_result, result, model=engine.model, source=scan.path, output_dir=anat,
              settings=job.inference, postprocess=job.postprocess)
    cord, lesion = masks["sc"], masks["lesion"]
    lesion_name = anat / f"{scan.stem}_lesion_seg.nii.gz"
    analysis = timed("analyze", analyze_lesions, lesion, cord)
    profile = per_slice_profile(lesion, cord) if _any(cord) else None
    write_lesion_analysis(analysis, lesion_name, anat, profile)
    csa = None
    warnings = list(analysis.warnings)
    if _any(cord):
        csa = timed("cord", cord_morphometry, cord)
        write_cord_table(csa, anat / f"{scan.stem}_sc_seg_csa.csv", f"{scan.stem}_sc_seg.nii.gz")
    elif labels.corrected:
        raise InputError(f"{scan.path.name}: its correction ({labels.describe()}) holds no spinal cord; export it again.")
    else:
        raise InputError(f"{scan.path.name}: the model found no spinal cord; check that this is a T2w spinal cord scan.")
    measures = scan_measures(analysis.table, analysis.summary, csa, lesion)
    flags = plausibility_flags(cord, analysis.labels, analysis.table, csa)
    qc_folder = staging / "qc" / scan.relative_folder
    names = timed("qc", write_qc_images, image, cord, lesion, qc_folder, scan.stem)
    marker = {
        "Source": source_path(scan.path),
        "SourceSha256": source_sha256,
        "Model": job.model_name,
        "ModelSha256": job.model_sha256,
        "Settings": job.settings(),
        "Device": device,
        "Labels": labels.key(),
        "MeasuredOn": labels.describe(),
        "Date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "Subject": scan.subject,
        "Session": scan.session,
        "Measures": measures,
        "Flags": flags,
        "LesionTable": f"{scan.relative_folder}/{scan.stem}_lesion_seg_analysis.csv",
        "Warnings": warnings,
        "QC": {role: f"{scan.relative_folder}/{name}" for role, name in names.items() if role != "slices"},
        "QCSlices": [int(z) for z in names["slices"].split(",") if z],
        "Command": job.command,
        "SCIsegVersion": __version__,
        "Seconds": dict(seconds),  # per stage, up to the QC images (kept for the summaries of later runs)
    }
    return timed("publish", publish_output_set, staging, job.deriv, scan, marker)


def _any(mask: sitk.Image) -> bool:
    return bool(sitk.GetArrayViewFromImage(mask).any())
