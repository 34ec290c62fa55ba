"""``sciseg segment``, ``models``, ``engine``, ``devices`` and ``demo``: segmenting and the models it uses."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable

from .. import cancel
from ..errors import CancelledError, InputError
from ..inference.base import CROP_MODES
from .common import EXIT_OK, JsonLines, Parser, output_folder


def _folds(text: str) -> tuple[int | str, ...]:
    return tuple("all" if f == "all" else int(f) for f in text.replace(",", " ").split())


def _add_segment(commands) -> None:
    segment = commands.add_parser("segment", help="segment spinal cord and lesion in T2w images")
    segment.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="NIfTI or NRRD images")
    segment.add_argument("-o", "--output", type=Path, default=None, help="output folder (default: beside each input)")
    segment.add_argument("--model", default="sciseg-v2", help="installed model name or model folder (default: sciseg-v2)")
    segment.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda/gpu, mps or cpu")
    segment.add_argument("--tta", action="store_true", help="test-time augmentation by mirroring (slower; off in SCT)")
    segment.add_argument("--step", type=float, default=0.5, help="sliding-window step, fraction of the patch (default 0.5)")
    segment.add_argument("--folds", type=_folds, default=None, help="folds to use, e.g. '0 1 2' (default: all present)")
    segment.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    segment.add_argument(
        "--engine", choices=("auto", "reference", "openvino", "openvino-int8", "torch-bf16", "cuda"), default="auto",
        help="auto (fastest that works here: CUDA, else OpenVINO int8 if the model's int8 version passed its agreement "
             "check, else OpenVINO bf16/fp32; cropped to the cord where that saves tiles), reference (SCT's exact nnU-Net "
             "call), openvino, openvino-int8 (needs `sciseg models quantize`), torch-bf16 or cuda",
    )
    segment.add_argument("--crop", choices=CROP_MODES, default="fast",
                         help="fast engines: fast (tiles around the cord; one tile where a reference tile holds it), exact "
                              "(only the reference's tiles around the cord) or off (the whole image)")
    segment.add_argument("--no-crop", action="store_true", help="the same as --crop off")
    segment.add_argument("--keep-largest-cord", action="store_true", help="keep only the largest cord component")
    segment.add_argument("--fill-holes", action="store_true", help="fill holes in the cord and lesion masks")
    segment.add_argument("--lesion-in-cord", action="store_true", help="drop lesion voxels outside the cord")
    segment.add_argument("--min-object-mm3", type=float, default=None, help="remove components smaller than this (mm3)")
    segment.add_argument("--label-map", action="store_true", help="also write <stem>_labels.nii.gz (0/1/2)")
    segment.add_argument("--probabilities", action="store_true", help="also write <stem>_<structure>_prob.nii.gz")
    segment.add_argument("--replace-nonfinite", action="store_true", help="set NaN/inf voxels to 0 instead of refusing")
    segment.add_argument("--cord", type=Path, default=None,
                         help="grey-matter models: the scan's cord mask, for <stem>_wmseg.nii.gz (WM = cord - GM); "
                              "default: <stem>_sc_seg.nii.gz beside the outputs when present")
    segment.add_argument(
        "--max-voxels", type=int, default=None, metavar="N",
        help="refuse images with more voxels (default 268435456 = 2**28); images needing more memory than "
        "is available are refused too",
    )
    segment.add_argument(
        "--progress", choices=("auto", "bar", "jsonl", "none"), default="auto",
        help="progress display: a bar on a terminal (auto), one JSON event per line on stdout (jsonl), or none",
    )


def _add_models(commands) -> None:
    models = commands.add_parser("models", help="list, inspect, install and remove models")
    model_commands = models.add_subparsers(dest="models_command", required=True, parser_class=Parser)
    model_commands.add_parser("list", help="list bundled and installed models")
    info = model_commands.add_parser("info", help="describe one model (JSON)")
    info.add_argument("name")
    install = model_commands.add_parser("install", help="install from sciseg-v1, sciseg-v2, graymatter (SCT r20250420), a URL, a zip or a folder")
    install.add_argument("source")
    install.add_argument("--name", default=None, help="name in the store (default: derived from the source)")
    install.add_argument("--force", action="store_true", help="replace an installed model of the same name")
    install.add_argument("--sha256", default=None, help="expected sha256 of the zip")
    install.add_argument(
        "--progress", choices=("auto", "jsonl", "none"), default="auto",
        help="progress display: download progress on a terminal (auto), one JSON event per line on stdout (jsonl), or none",
    )
    remove = model_commands.add_parser("remove", help="delete an installed model")
    remove.add_argument("name")
    quantize = model_commands.add_parser(
        "quantize", help="make an int8 version of a model (OpenVINO NNCF) calibrated on your scans, measure its agreement "
                         "with the reference and store both; `--engine auto` uses it only if both Dice >= 0.99")
    quantize.add_argument("name", help="installed model name or model folder")
    quantize.add_argument("--scans", nargs="+", type=Path, required=True, metavar="SCAN",
                          help="scans to calibrate on (NIfTI/NRRD, the kind the model will segment)")
    quantize.add_argument("--check-scans", nargs="+", type=Path, default=None, metavar="SCAN",
                          help="scans to measure the agreement on (default: the calibration scans; other scans are a "
                               "fairer test). The reference runs on each: about a minute per full field-of-view scan")
    quantize.add_argument("--folds", type=_folds, default=None, help="folds to quantize (default: all present)")
    quantize.add_argument("--threads", type=int, default=None, help="CPU threads")
    quantize.add_argument("--progress", choices=("auto", "jsonl", "none"), default="auto",
                          help="progress: one line per step on stderr (auto), one JSON event per line on stdout (jsonl), or none")


def _add_devices(commands) -> None:
    commands.add_parser("devices", help="list the devices torch can use here (JSON)")


def _add_demo(commands) -> None:
    demo = commands.add_parser("demo", help="segment a synthetic example with the bundled demo model")
    demo.add_argument("-o", "--output", type=Path, default=Path("sciseg_demo_output"), help="output folder")
    demo.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")


def _add_engine_parser(commands) -> None:
    engine = commands.add_parser("engine", help="the warm engine: hold one model, answer segment requests on stdin (JSON lines)")
    engine_commands = engine.add_subparsers(dest="engine_command", required=True, parser_class=Parser)
    serve = engine_commands.add_parser("serve", help="load the model once, then answer requests until stdin closes or it is idle")
    serve.add_argument("--model", default="sciseg-v2", help="installed model name or model folder")
    serve.add_argument("--device", default="auto")
    serve.add_argument("--engine", choices=("auto", "reference", "openvino", "openvino-int8", "torch-bf16", "cuda"), default="auto")
    serve.add_argument("--crop", choices=CROP_MODES, default="fast")
    serve.add_argument("--step", type=float, default=0.5)
    serve.add_argument("--tta", action="store_true")
    serve.add_argument("--folds", type=_folds, default=None)
    serve.add_argument("--threads", type=int, default=None)
    serve.add_argument("--idle-minutes", type=float, default=10.0, help="exit after this long without a request (default 10)")


def _run_engine(args: argparse.Namespace) -> int:
    from ..inference.warm import serve_stdio

    settings = {"device": args.device, "engine": args.engine, "crop": args.crop, "step_size": args.step, "tta": args.tta,
                "folds": list(args.folds) if args.folds is not None else None, "threads": args.threads}
    code = serve_stdio(args.model, settings, idle_s=max(args.idle_minutes, 0.0) * 60.0)
    sys.stderr.flush()
    os._exit(code)  # nothing is pending (events are flushed, files published): skip torch's slow teardown


def _progress_printer(mode: str, events: JsonLines | None) -> tuple[Callable, Callable[[], None]]:
    """Return (callback, close) for the chosen progress display."""
    if mode == "jsonl" and events is not None:
        return (lambda event: events(event.as_dict())), (lambda: None)
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        from tqdm import tqdm

        bar = tqdm(total=1000, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

        def update(event) -> None:
            bar.n = int(event.fraction * 1000)
            bar.set_description(event.stage)
            bar.refresh()

        return update, bar.close
    return (lambda event: None), (lambda: None)


@contextlib.contextmanager
def _cancel_on_signals(token):
    """SIGINT/SIGTERM/the cancel file set the cancel token (the run stops between tiles); a second SIGINT aborts.

    The signal set-up itself lives in :mod:`SCIsegLib.cancel` (one place, installed at start-up).
    """
    with cancel.cooperative(token.cancel):
        yield


def _run_segment(args: argparse.Namespace, events: JsonLines | None) -> int:
    from ..volume import DEFAULT_MAX_VOXELS, check_images

    if not 0 < args.step <= 1:
        raise InputError(f"--step must be in (0, 1], got {args.step}.")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}.")
    if args.min_object_mm3 is not None and not (math.isfinite(args.min_object_mm3) and args.min_object_mm3 >= 0):
        raise InputError(f"--min-object-mm3 must be a volume of 0 mm3 or more, got {args.min_object_mm3:g}.")
    if args.output is not None:
        output_folder(args.output)

    def warn(message: str) -> None:
        sys.stderr.write(f"sciseg: warning: {message}\n")
        if events is not None:
            events({"event": "warning", "message": message})

    max_voxels = args.max_voxels if args.max_voxels is not None else DEFAULT_MAX_VOXELS
    by_folder: dict[Path, list[Path]] = {}
    for path in args.inputs:
        by_folder.setdefault(args.output or path.parent, []).append(path)
    from ..models import resolve_model

    model = resolve_model(args.model)  # its files only (JSON, names checked): no torch yet
    for paths in by_folder.values():  # every input checked before torch and the network are loaded
        check_images(paths, replace_nonfinite=args.replace_nonfinite, max_voxels=max_voxels, warn=warn,
                     target_spacing_mm=model.spacing_mm)
    from ..inference import CancelToken, InferenceSettings, make_engine
    from ..postprocess import PostprocessSettings
    from ..segment import SegmentCancelled, segment_files

    from ..compartments_segments import engine_for_model, has_grey_matter

    if args.cord is not None and not has_grey_matter(model):
        raise InputError(f"--cord goes with a grey-matter model (for the white matter); '{model.name}' segments "
                         f"{', '.join(model.segments)}.")
    settings = InferenceSettings(device=args.device, folds=args.folds, step_size=args.step, tta=args.tta, threads=args.threads,
                                 engine=engine_for_model(model, args.engine), crop="off" if args.no_crop else args.crop)
    postprocess = PostprocessSettings(
        keep_largest_cord=args.keep_largest_cord,
        fill_holes=args.fill_holes,
        lesion_inside_cord=args.lesion_in_cord,
        min_object_mm3=args.min_object_mm3,
    )
    callback, close = _progress_printer(args.progress, events)
    token = CancelToken()
    records: list[dict] = []
    try:
        with _cancel_on_signals(token):
            engine = make_engine(model, settings)
            for folder, paths in by_folder.items():
                try:
                    records += segment_files(
                        paths, folder, engine, settings=settings, postprocess=postprocess,
                        write_label_map=args.label_map, want_probabilities=args.probabilities,
                        replace_nonfinite=args.replace_nonfinite, progress=callback, cancel=token,
                        max_voxels=max_voxels, inputs_checked=True,
                    )
                except SegmentCancelled as cancelled:
                    if not records:
                        raise
                    done = "; ".join(f"{Path(r['input']).name} -> {', '.join(Path(o).name for o in r['outputs'])}" for r in records + cancelled.records)
                    raise CancelledError(f"segmentation cancelled; written before the cancel (complete sets): {done}; the rest was not written.") from None
    finally:
        close()
    if has_grey_matter(model):
        from ..compartments_cli import write_white_matter_after_segment

        write_white_matter_after_segment(records, args.cord, warn)
    if events is not None:
        events({"event": "result", "model": model.name, "records": records})
    else:
        for record in records:
            print(f"{record['input']}: {', '.join(record['outputs'])} ({record['seconds']:.1f} s on {record['device']})")
    return EXIT_OK


def _run_models(args: argparse.Namespace, events: JsonLines | None = None) -> int:
    from .. import models

    if args.models_command == "list":
        entries = models.list_models()
        installed = {m.name for m in entries}
        for entry in entries:
            where = "bundled" if entry.path.parent == models.bundled_models_root() else "installed"
            print(f"{entry.name:<20} {where:<10} {entry.configuration:<11} folds {entry.folds}  {entry.path}")
        for name, known in models.KNOWN_MODELS.items():
            if name not in installed:
                print(f"{name:<20} {'available':<10} `sciseg models install {name}`: {known.description}")
        return EXIT_OK
    if args.models_command == "info":
        print(json.dumps(models.resolve_model(args.name).summary(), indent=2, default=str))
        return EXIT_OK
    if args.models_command == "install":
        return _run_models_install(args, events)
    if args.models_command == "quantize":
        return _run_models_quantize(args, events)
    removed = models.remove(args.name)
    print(f"removed {removed}")
    return EXIT_OK


#: Share of the whole install each stage of ``models install --progress jsonl`` covers (start, end).
INSTALL_STAGES = {"download": (0.0, 0.7), "verify": (0.7, 0.8), "unzip": (0.8, 0.95), "check": (0.95, 1.0)}


def _run_models_install(args: argparse.Namespace, events: JsonLines | None) -> int:
    """``models install``: progress events (at most 10 per second) and a cancel checked between chunks."""
    import time

    from .. import models

    last_event = [0.0]

    def show(stage: str, done: int, total: int | None) -> None:
        cancel.raise_if_cancelled("model install cancelled; nothing was installed.")
        if events is not None:
            now = time.monotonic()
            if now - last_event[0] < 0.1 and done != total:
                return
            last_event[0] = now
            start, end = INSTALL_STAGES[stage]
            share = done / total if total else 0.0
            message = f"{stage} {done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total and stage != "check" else "")
            events({"event": "progress", "stage": stage, "fraction": round(start + (end - start) * share, 4),
                    "done": done, "total": total, "message": message})
        elif stage == "download" and args.progress == "auto" and sys.stderr.isatty():
            percent = f"{100 * done / total:5.1f} %" if total else ""
            sys.stderr.write(f"\rdownloading {done / 1e6:8.1f} MB {percent}")

    with cancel.cooperative():
        info = models.install(args.source, name=args.name, force=args.force, expected_sha256=args.sha256, stage_progress=show)
    if events is None and args.progress == "auto" and sys.stderr.isatty():
        sys.stderr.write("\n")
    digest = info.metadata.get("sha256") or info.metadata.get("weights_sha256")
    if events is not None:
        events({"event": "result", "name": info.name, "path": str(info.path), "sha256": digest})
    print(f"installed '{info.name}' in {info.path} (sha256 {digest})")
    return EXIT_OK


def _run_models_quantize(args: argparse.Namespace, events: JsonLines | None) -> int:
    """``models quantize``: calibrate, measure, store; a cancel (Ctrl-C) between steps stores nothing."""
    import importlib.util

    from .. import models

    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}.")
    for scan in [*args.scans, *(args.check_scans or [])]:
        if not scan.is_file():
            raise InputError(f"scan '{scan}' does not exist or is not a file.")
    if importlib.util.find_spec("nncf") is None:
        raise InputError("int8 quantization needs NNCF, which is not installed; install it with "
                         "`pip install 'sciseg[int8]'` (or `pip install nncf`).")
    model = models.resolve_model(args.name)

    def show(message: str) -> None:
        cancel.raise_if_cancelled("quantization cancelled; nothing was stored.")
        if events is not None:
            events({"event": "progress", "stage": "quantize", "message": message})
        elif args.progress == "auto":
            sys.stderr.write(f"{message}\n")

    from ..inference.openvino_cache import CompiledModelCache, default_cache_root
    from ..inference.quantize import quantize_model

    cache = CompiledModelCache(default_cache_root())
    with cancel.cooperative():
        report = quantize_model(model, list(args.scans), cache, check_scans=args.check_scans, folds=args.folds,
                                threads=args.threads, progress=show)
    agreement = report["agreement"]
    worst = agreement["worst"]
    verdict = ("passed: `--engine auto` will use it" if agreement["passed"] else
               f"FAILED the gate (both must be >= {report['gate']}): `--engine auto` stays on bf16; "
               "`--engine openvino-int8` still runs it, with a warning")
    from ..inference.int8 import entry_folder

    if events is not None:
        events({"event": "result", "model": model.name, "report": report, "path": str(entry_folder(cache.root, model))})
    print(f"int8 version of '{model.name}' stored in {entry_folder(cache.root, model)}; against the reference on "
          f"{len(agreement['scans'])} scan(s): main-cord Dice >= {worst['main_cord_dice']}, lesions-in-cord Dice >= "
          f"{worst['lesion_in_cord_dice']}; {verdict}.")
    return EXIT_OK


def _run_devices(args: argparse.Namespace) -> int:
    from ..inference import available_devices

    print(json.dumps(available_devices()))
    return EXIT_OK


def _run_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    report = run_demo(args.output, device=args.device)
    print(f"demo image:     {report['image']}")
    for name, path in report["outputs"].items():
        print(f"{name + ' mask:':<15} {path}")
    print(f"Dice vs truth:  cord {report['dice']['sc']:.3f}, lesion {report['dice']['lesion']:.3f}")
    print(f"inference took {report['seconds']:.1f} s on {report['device']}")
    return EXIT_OK


#: Subcommand -> parser part (in ``sciseg --help`` order: see :mod:`.parser`).
PARSERS = {"segment": _add_segment, "models": _add_models, "devices": _add_devices, "demo": _add_demo,
           "engine": _add_engine_parser}
#: Subcommand -> runner (``segment`` and ``models`` also take the JSON-lines event writer: :data:`.entry.TAKE_EVENTS`).
HANDLERS = {"segment": _run_segment, "models": _run_models, "devices": _run_devices, "demo": _run_demo,
            "engine": _run_engine}
