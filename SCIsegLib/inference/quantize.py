"""Post-training int8 quantization of a model's network (OpenVINO NNCF), calibrated and checked on real scans.

``quantize_model`` does, for each fold in use:

1. runs the fast engine in OpenVINO fp32 (crop "fast") on the calibration scans and keeps every tile the
   network is given (the first pass's shrunk tile and the tiles around the cord: what the int8 engine will see);
2. quantizes the fp32 OpenVINO model with its tile size free (the one the fast engine keeps as IR) with
   ``nncf.quantize`` on those tiles, its first and last convolution and its instance norms left in floating
   point (:func:`floating_point_convolutions`);
3. runs the reference (SCT's call: torch fp32) and the int8 engine on the check scans (default: the
   calibration scans) and measures main-cord Dice and lesions-in-cord Dice (:mod:`.agreement`);
4. publishes the int8 IR and ``report.json`` as one entry of the int8 store (:mod:`.int8`), whole or not at
   all; an interruption at any step leaves the previous entry (or none) as it was.

The report says whether the int8 version passed the gate (both figures >= 0.99 on every check scan);
``auto`` runs it only then (:func:`~.int8.int8_gate`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from ..hashing import file_sha256
from ..models import ModelInfo
from .agreement import AGREEMENT_GATE, agreement, passes_gate
from .base import InferenceSettings
from .int8 import REPORT_VERSION, Int8Entry, discard, fold_file_stem, publish_entry, staging_folder, write_report
from .openvino_cache import CompiledModelCache

#: At most this many tiles are kept for calibration (evenly spaced over all the scans' tiles).
MAX_CALIBRATION_TILES = 48

Progress = Callable[[str], None]


def load_scan(path: Path, model: ModelInfo) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(image (z, y, x) in the model orientation, float32; spacing (z, y, x) in mm), the input checked first."""
    from ..volume import array_zyx, check_images, load_image, reorient, sct_to_itk_orientation

    check_images([path], target_spacing_mm=model.spacing_mm)
    image = reorient(load_image(path), sct_to_itk_orientation(model.orientation))
    return array_zyx(image).astype(np.float32), tuple(float(s) for s in reversed(image.GetSpacing()))


def floating_point_convolutions(model) -> list[str]:
    """The convolutions of an OpenVINO ``model`` kept in floating point: the first (it reads the scan's intensities)
    and the last (the 1x1x1 convolution that gives the logits), by friendly name.

    The instance norms (one MVN operation each) are not quantized either. Measured on the demo model against
    SCT's call (``benchmarks/inference_speed.md``, session 10): main-cord Dice 0.991-0.994 with every convolution
    in int8, 0.995-0.997 with these two kept, 0.996-0.998 with the norms' inputs too.
    """
    convolutions = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"]
    return sorted({convolutions[0], convolutions[-1]}) if convolutions else []


def calibration_tiles(engine, scans: list[tuple[np.ndarray, tuple]], max_tiles: int = MAX_CALIBRATION_TILES,
                      progress: Progress = print) -> list[list[np.ndarray]]:
    """The tiles an OpenVINO fp32 fast ``engine`` gives its network on ``scans``, per fold ((1, channels, z, y, x) each)."""
    network = engine._predictor.network
    per_fold: list[list[np.ndarray]] = [[] for _ in network._fold_parameters]
    plain_forward = network.forward

    def keep(x):
        per_fold[network._current].append(x.detach().cpu().numpy().copy())
        return plain_forward(x)

    network.forward = keep
    try:
        for index, (array, spacing) in enumerate(scans):
            progress(f"calibration: scan {index + 1} of {len(scans)} in OpenVINO fp32")
            engine.predict(array, spacing)
    finally:
        del network.forward
    kept = []
    for tiles in per_fold:
        chosen = np.unique(np.linspace(0, len(tiles) - 1, min(len(tiles), max_tiles)).round().astype(int)) if tiles else []
        kept.append([tiles[i] for i in chosen])
    return kept


def measure_agreement(model: ModelInfo, settings: InferenceSettings, entry: Int8Entry, cache: CompiledModelCache,
                      scans: list[tuple[np.ndarray, tuple]], progress: Progress = print) -> list[dict]:
    """Per scan: the int8 engine's agreement with the reference (:func:`~.agreement.agreement`) and both run times (s)."""
    from .fast import FastEngine
    from .predictor import NnUNetEngine

    reference = NnUNetEngine(model, InferenceSettings(device="cpu", folds=settings.folds, threads=settings.threads))
    int8 = FastEngine(model, settings, "openvino", "int8", cache, int8=entry)
    figures = []
    for index, (array, spacing) in enumerate(scans):
        progress(f"agreement: scan {index + 1} of {len(scans)}, reference (SCT's call)")
        started = time.perf_counter()
        expected = reference.predict(array, spacing).label_map
        reference_seconds = time.perf_counter() - started
        progress(f"agreement: scan {index + 1} of {len(scans)}, int8")
        started = time.perf_counter()
        labels = int8.predict(array, spacing).label_map
        figures.append({**agreement(expected, labels), "reference_seconds": round(reference_seconds, 2),
                        "int8_seconds": round(time.perf_counter() - started, 2)})
    return figures


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("nncf", "openvino", "torch", "nnunetv2", "sciseg"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def _scan_identities(paths: list[Path]) -> list[dict]:
    return [{"path": str(Path(p).resolve()), "sha256": file_sha256(p)} for p in paths]


def quantize_model(model: ModelInfo, scans: list[Path], cache: CompiledModelCache, *, check_scans: list[Path] | None = None,
                   folds=None, threads: int | None = None, max_tiles: int = MAX_CALIBRATION_TILES,
                   measure: bool = True, progress: Progress = print) -> dict:
    """Quantize ``model`` to int8 on ``scans``, measure it against the reference on ``check_scans``, store both.

    Returns the report (also ``report.json`` of the entry). Raises :class:`InputError` for scans that cannot
    be read; any exception (a cancel, ``KeyboardInterrupt``) leaves the store as it was before the call.
    ``measure`` False (benchmarks that measure the agreement themselves): no agreement in the report, so
    ``auto`` never runs this entry.
    """
    import nncf

    from .fast import FastEngine
    from .int8 import model_key, weights_by_fold
    from .openvino_quiet import import_openvino

    ov = import_openvino()
    if not scans:
        raise InputError("give at least one scan to calibrate on (--scans).")
    check_scans = (list(check_scans) if check_scans else list(scans)) if measure else []
    settings = InferenceSettings(device="cpu", folds=folds, threads=threads, engine="openvino", crop="fast")
    loaded = {Path(p): load_scan(Path(p), model) for p in [*scans, *check_scans]}  # every input checked first
    weights = weights_by_fold(model, folds)
    for fold in weights:
        fold_file_stem(fold)
    progress("converting the network to OpenVINO fp32 (cached after the first time)")
    fp32 = FastEngine(model, settings, "openvino", "fp32", cache)
    network = fp32._predictor.network
    if not network.any_shape:
        raise InputError(f"the network of model '{model.name}' cannot be converted with a free tile size, which int8 needs.")
    tiles = calibration_tiles(fp32, [loaded[Path(p)] for p in scans], max_tiles, progress)
    staged = staging_folder(cache.root, model)
    try:
        report: dict = {"version": REPORT_VERSION, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "model": {"name": model.name, "results_folder": model_key(model)}, "folds": {},
                        "versions": _versions(), "cpu": _cpu(), "gate": AGREEMENT_GATE}
        for index, fold in enumerate(weights):
            if not tiles[index]:
                raise InputError(f"the calibration scans gave fold {fold} no tiles.")
            progress(f"quantizing fold {fold} on {len(tiles[index])} tiles (nncf {report['versions']['nncf']})")
            kept = floating_point_convolutions(network._free[index])
            with _nncf_output_on_stderr():
                quantized = nncf.quantize(network._free[index], nncf.Dataset(tiles[index]), subset_size=len(tiles[index]),
                                          ignored_scope=nncf.IgnoredScope(names=kept, types=["MVN"]))
            xml, weights_file = staged / f"{fold_file_stem(fold)}.xml", staged / f"{fold_file_stem(fold)}.bin"
            ov.save_model(quantized, str(xml), compress_to_fp16=False)
            report["folds"][fold] = {"weights_sha256": weights[fold], "xml_sha256": file_sha256(xml),
                                     "bin_sha256": file_sha256(weights_file), "fp32_ir": network.free_identity[index],
                                     "calibration_tiles": len(tiles[index]),
                                     "tile_shapes": sorted({str(list(t.shape[2:])) for t in tiles[index]})}
        report["calibration"] = {"scans": _scan_identities(scans), "max_tiles": max_tiles,
                                 "tiles_from": "the OpenVINO fp32 fast engine (crop fast) on these scans",
                                 "nncf": {"call": "nncf.quantize", "preset": "default (performance)", "fast_bias_correction": True,
                                          "floating_point": "the first and the last convolution, the instance norms' inputs"}}
        figures = measure_agreement(model, settings, Int8Entry(staged, report), cache,
                                    [loaded[Path(p)] for p in check_scans], progress) if check_scans else []
        worst = {name: min(f[name] for f in figures) for name in ("main_cord_dice", "lesion_in_cord_dice", "cord_dice", "lesion_dice")} \
            if figures else {}
        calibration_set = {Path(p).resolve() for p in scans}
        report["agreement"] = {
            "against": "reference: SCT's call (nnU-Net's predictor, torch fp32, step 0.5, gaussian, no mirroring)",
            "engine": "openvino int8, crop fast",
            "scans": [{**identity, **figure} for identity, figure in zip(_scan_identities(check_scans), figures, strict=True)],
            "held_out": not any(Path(p).resolve() in calibration_set for p in check_scans),
            "worst": worst, "passed": bool(figures) and passes_gate(worst)}
        write_report(staged, report)
        publish_entry(staged, cache.root, model)
    finally:
        discard(staged)
    return report


@contextlib.contextmanager
def _nncf_output_on_stderr():
    """NNCF's progress bars and log lines go to stderr (stdout may carry ``--progress jsonl`` events)."""
    import logging

    handlers = [h for h in logging.getLogger("nncf").handlers if isinstance(h, logging.StreamHandler) and h.stream is sys.stdout]
    for handler in handlers:
        handler.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler in handlers:
            handler.setStream(sys.stdout)


def _cpu() -> str:
    from .cpu import cpu_identity

    return cpu_identity()


def report_text(report: dict) -> str:
    """The report as indented JSON (what ``sciseg models quantize`` prints)."""
    return json.dumps(report, indent=2)
