"""Inference speed and agreement: SCT's call (reference) against the fast engines, scan by scan.

Two networks:
- ``sciseg``: nnU-Net v2's own 3d_fullres plan for a SCIseg-like dataset, planned by nnU-Net's planner on the
  fingerprint of the real sagittal T2w scans in ``../shared/data`` (reoriented to RPI as SCIseg does), with random
  weights: for time (the plan it got is written into the report);
  Random weights find no cord, so the first pass of the crop cannot place the box: with ``--box-from demo``
  (the default for this network) the random network still runs its own first pass (its time counts) and the box
  is the one the trained demo model's first pass finds on the same scan (same 1 mm preprocessed grid), and the
  "cord touches the box edge" check (a threshold over the box, milliseconds) is skipped: random noise touches every face;
- ``demo``: the bundled demo model (trained weights): for agreement (cord Dice, lesion Dice, largest change of any
  ``sciseg analyze`` summary measure) of each engine against the reference on the same weights.

Engines are interleaved scan by scan (every engine sees the same machine load), each timed ``--repeats`` times
(``--reference-repeats`` for the slow reference); the report gives medians, the peak extra resident memory during
a run (sampled from /proc/self/statm every 10 ms, above the resident memory before the run) and the load average.

    PYTHONPATH=$PWD python benchmarks/inference_speed.py --network sciseg --repeats 3 --reference-repeats 1
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SCIsegLib.inference import InferenceSettings, NnUNetEngine, make_engine  # noqa: E402
from SCIsegLib.inference.agreement import agreement  # noqa: E402
from SCIsegLib.inference.cpu import cpu_identity, read_cpu_flags  # noqa: E402
from SCIsegLib.inference.cropped import locate_cord  # noqa: E402
from SCIsegLib.inference.fast import FallbackEngine, FastEngine  # noqa: E402
from SCIsegLib.inference.predictor import preprocess  # noqa: E402
from SCIsegLib.models import read_model, resolve_model  # noqa: E402
from SCIsegLib.volume import array_zyx, load_image, reorient, sct_to_itk_orientation  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEFAULT_SCANS = ["sct_2014_errsm/errsm_21/t2.nii.gz", "sct_testing_data/t2/t2.nii.gz",
                 "gm_challenge/sub-10062Ses1/anat/sub-10062Ses1_T2starw.nii.gz", "phantom:sagittal", "phantom:axial"]
DEFAULT_ENGINES = ["reference", "auto", "torch-fp32+crop", "torch-bf16", "openvino-fp32", "openvino-bf16",
                   "openvino-bf16+crop"]
PLANNING_SCANS = [("sct_2014_errsm/errsm_11/t2.nii.gz", "sct_2014_errsm/errsm_11/t2_manual_segmentation.nii.gz"),
                  ("sct_2014_errsm/errsm_18/t2.nii.gz", "sct_2014_errsm/errsm_18/t2_manual_segmentation.nii.gz"),
                  ("sct_2014_errsm/errsm_21/t2.nii.gz", "sct_2014_errsm/errsm_21/t2_manual_segmentation.nii.gz"),
                  ("sct_testing_data/t2/t2.nii.gz", "sct_testing_data/t2/t2_seg-manual.nii.gz")]


def plan_sciseg_network(work: Path) -> Path:
    """A model folder with nnU-Net's 3d_fullres plan for the sagittal T2w scans' fingerprint and random weights."""
    raw, preprocessed = work / "raw", work / "preprocessed"
    os.environ["nnUNet_raw"], os.environ["nnUNet_preprocessed"] = str(raw), str(preprocessed)
    os.environ.setdefault("nnUNet_results", str(work / "results"))
    name = "Dataset901_SCIsegLike"
    images, labels = raw / name / "imagesTr", raw / name / "labelsTr"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for index, (image_path, mask_path) in enumerate(PLANNING_SCANS):
        image = reorient(load_image(DATA / image_path), "LAS")  # ITK "LAS" = SCT "RPI", SCIseg's orientation
        mask = reorient(sitk.ReadImage(str(DATA / mask_path)), "LAS")
        mask = sitk.Cast(mask > 0.5, sitk.sitkUInt8)
        mask.CopyInformation(image)
        sitk.WriteImage(image, str(images / f"case_{index:03d}_0000.nii.gz"))
        sitk.WriteImage(mask, str(labels / f"case_{index:03d}.nii.gz"))
    dataset = {"channel_names": {"0": "T2w"}, "labels": {"background": 0, "sc": [1, 2], "lesion": 2},
               "regions_class_order": [1, 2], "numTraining": len(PLANNING_SCANS), "file_ending": ".nii.gz",
               "image_orientation": "RPI"}
    (raw / name / "dataset.json").write_text(json.dumps(dataset))
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    extract_fingerprints([901], num_processes=1, check_dataset_integrity=False)
    plan_experiments([901])
    plans = json.loads((preprocessed / name / "nnUNetPlans.json").read_text())
    model = work / "sciseg-random" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True, exist_ok=True)
    (model / "plans.json").write_text(json.dumps(plans, indent=1))
    (model / "dataset.json").write_text(json.dumps(dataset))
    manager = PlansManager(plans)
    configuration = manager.get_configuration("3d_fullres")
    torch.manual_seed(0)
    network = nnUNetTrainer.build_network_architecture(manager, configuration, 1, 2, enable_deep_supervision=False)
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": [0, 1, 2]},
               model / "fold_0" / "checkpoint_final.pth")
    return model.parent


#: scan name -> its image in the model orientation (the grid, with direction, the label maps lie on)
GRIDS: dict[str, sitk.Image] = {}


def load_scan(name: str, orientation: str) -> tuple[np.ndarray, tuple[float, float, float], str]:
    """(array (z, y, x) in the model orientation, spacing (z, y, x) mm, description)."""
    if name.startswith("phantom:"):
        from SCIsegLib.phantom import AXIAL, SAGITTAL, make_phantom

        image = make_phantom(seed=3, acquisition=SAGITTAL if name.endswith("sagittal") else AXIAL, lesions=1).image
    elif name.startswith("painted:"):  # a real full-FOV scan with 2 lesions painted inside its manual cord mask
        from SCIsegLib.phantom import paint_lesions

        scan = DATA / name.removeprefix("painted:")
        cord = sitk.ReadImage(str(scan.parent / "t2_manual_segmentation.nii.gz")) > 0.5
        image = paint_lesions(load_image(scan), cord, lesions=2, seed=1).image
    else:
        image = load_image(DATA / name)
    image = reorient(image, sct_to_itk_orientation(orientation))
    array = array_zyx(image).astype(np.float32)
    GRIDS[name] = image
    return array, tuple(float(s) for s in reversed(image.GetSpacing())), f"{name} {array.shape[::-1]} (x, y, z)"


def demo_cord_bounds(demo_engine: FastEngine, array: np.ndarray, spacing: tuple[float, float, float]):
    """(preprocessed shape, the demo model's pass-1 cord box on it, the pass-1 windows it ran) for one scan."""
    predictor = demo_engine._predictor
    data, _ = preprocess(predictor, array, spacing)
    report: dict = {}
    bounds = locate_cord(predictor, data, demo_engine.along_axis, report=report, strides=demo_engine.strides)
    return tuple(int(s) for s in data.shape[1:]), bounds, tuple(report["windows"])


def borrow_box(engine, shape: tuple[int, ...], bounds, windows: tuple[str, ...]) -> None:
    """Make a cropping ``engine`` run its own first pass (for time) but use ``bounds`` (the demo's) as the cord box.

    ``windows``: the pass-1 windows the demo model ran (the central window, the whole shrunk image or both);
    the random network runs the same ones, so that its pass 1 costs what the trained model's does.
    """

    fast = engine.fast if isinstance(engine, FallbackEngine) else engine

    def locate(predictor, data):
        # the random network's pass 1: its time counts, its answer cannot
        locate_cord(predictor, data, fast.along_axis, windows=windows,
                    strides=fast.strides if fast.settings.crop == "fast" else None)
        if tuple(int(s) for s in data.shape[1:]) != shape:
            raise RuntimeError(f"the demo model's grid {shape} is not this network's {tuple(data.shape[1:])}")
        return bounds

    if isinstance(fast, FastEngine):
        fast.locate = locate
        fast.check_crop_edges = False  # random weights' noise touches every face of any box


def quantize_for_benchmark(model, names: list[str], work: Path, threads: int | None) -> dict:
    """Quantize ``model`` to int8 (stored in the default compiled-model cache) on the scans ``names`` (as ``--scans``).

    The agreement is not measured here (the benchmark's own rows measure it against the reference on the timed scans);
    so ``auto`` never picks this entry (its report says "not measured").
    """
    from SCIsegLib.inference.openvino_cache import CompiledModelCache, default_cache_root
    from SCIsegLib.inference.quantize import quantize_model

    paths = []
    for index, name in enumerate(names):
        load_scan(name, model.orientation)
        paths.append(work / f"calibration_{index}.nii.gz")
        sitk.WriteImage(GRIDS[name], str(paths[-1]))  # the scan (painted or not) in the model orientation
    started = time.perf_counter()
    report = quantize_model(model, paths, CompiledModelCache(default_cache_root()), threads=threads, measure=False,
                            progress=lambda message: print(message, flush=True))
    fold = next(iter(report["folds"].values()))
    return {"scans": names, "seconds": round(time.perf_counter() - started, 1), "tiles": fold["calibration_tiles"],
            "tile_shapes": fold["tile_shapes"], "nncf": report["versions"]["nncf"]}


def build_engine(spec: str, model, threads: int | None):
    """``reference``, ``auto`` or ``<runtime>-<precision>[+crop|+exact]`` (runtime torch/openvino/cuda; +crop = fast crop).

    ``openvino-int8[+crop]``: the int8 version made by ``--quantize-scans`` (or ``sciseg models quantize``).
    """
    if spec == "reference":
        return NnUNetEngine(model, InferenceSettings(threads=threads))
    if spec == "auto":
        return make_engine(model, InferenceSettings(engine="auto", threads=threads))
    base, _, crop = spec.partition("+")
    runtime, precision = base.split("-")
    return FastEngine(model, InferenceSettings(threads=threads, crop={"": "off", "crop": "fast"}.get(crop, crop)),
                      runtime, precision)


class PeakMemory:
    """Peak resident memory (MiB) above the resident memory at start, sampled every 10 ms."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as stream:
            return int(stream.read().split()[1]) * self._page

    def __enter__(self):
        self.start, self.peak = self._rss(), self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.mib = (self.peak - self.start) / 2**20


def analyze_change(reference: np.ndarray, labels: np.ndarray, grid: sitk.Image) -> float | None:
    """Largest absolute difference of any ``sciseg analyze`` summary measure (mm, mm3, count) between two label maps."""
    from SCIsegLib.lesions import analyze_lesions

    def summary(label_map: np.ndarray) -> dict:
        images = []
        for mask in (label_map == 2, label_map >= 1):
            image = sitk.GetImageFromArray(mask.astype(np.uint8))
            image.CopyInformation(grid)  # origin, spacing and direction of the scan in the model orientation
            images.append(image)
        return analyze_lesions(images[0], images[1]).summary

    if not (reference == 2).any() and not (labels == 2).any():
        return 0.0
    first, second = summary(reference), summary(labels)
    changes = [abs(float(first[k]) - float(second[k])) for k in first
               if isinstance(first.get(k), (int, float)) and isinstance(second.get(k), (int, float))
               and np.isfinite(first[k]) and np.isfinite(second[k])]
    return max(changes) if changes else None


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="sciseg-bench-"))
    if args.network == "demo":
        model = resolve_model(str(ROOT / "Resources" / "Models" / "sciseg-demo"))
        plan = None
    else:
        model = read_model(plan_sciseg_network(work), name="sciseg-random")
        configuration = json.loads((model.results_folder / "plans.json").read_text())["configurations"]["3d_fullres"]
        plan = {k: configuration[k] for k in ("patch_size", "spacing", "batch_size")}
        plan["architecture"] = configuration["architecture"]["arch_kwargs"]
    engines, setup = {}, {}
    quantization = None
    if any("int8" in spec for spec in args.engines):
        if not args.quantize_scans:
            raise SystemExit("the int8 engine needs --quantize-scans (the scans to calibrate it on).")
        quantization = quantize_for_benchmark(model, args.quantize_scans, work, args.threads)
        print(f"quantized: {quantization}", flush=True)
    for spec in args.engines:
        started = time.perf_counter()
        engines[spec] = build_engine(spec, model, args.threads)
        setup[spec] = round(time.perf_counter() - started, 2)
        print(f"built {spec} in {setup[spec]} s", flush=True)
    if plan is not None:
        import torch

        network = engines["reference"]._predictor.network if "reference" in engines else None
        if isinstance(network, torch.nn.Module):
            plan["parameters_millions"] = round(sum(p.numel() for p in network.parameters()) / 1e6, 2)
    results: dict = {"scans": {}, "engine_setup_seconds": setup, "plan": plan, "int8_quantization": quantization}
    demo_engine = None
    if args.network == "sciseg" and args.box_from == "demo":
        demo = resolve_model(str(ROOT / "Resources" / "Models" / "sciseg-demo"))
        demo_engine = FastEngine(demo, InferenceSettings(threads=args.threads), "openvino", "bf16")
    for name in args.scans:
        array, spacing, description = load_scan(name, model.orientation)
        if demo_engine is not None:
            shape, bounds, windows = demo_cord_bounds(demo_engine, array, spacing)
            for engine in engines.values():
                borrow_box(engine, shape, bounds, windows)
            results.setdefault("borrowed_boxes", {})[description] = bounds
            results.setdefault("first_pass_windows", {})[description] = windows
        rows: dict = {spec: {"seconds": [], "peak_mib": [], "run": None} for spec in args.engines}
        labels: dict = {}
        for repeat in range(max(args.repeats, args.reference_repeats)):
            for spec, engine in engines.items():
                wanted = args.reference_repeats if spec in args.slow_engines else args.repeats
                if repeat >= wanted:
                    continue
                with PeakMemory() as memory:
                    started = time.perf_counter()
                    output = engine.predict(array, spacing)
                    seconds = time.perf_counter() - started
                rows[spec]["seconds"].append(round(seconds, 2))
                rows[spec]["peak_mib"].append(round(memory.mib, 1))
                rows[spec]["run"] = output.run
                labels[spec] = output.label_map
                print(f"{description} {spec} repeat {repeat}: {seconds:.1f} s, +{memory.mib:.0f} MiB, "
                      f"{output.run.get('engine')} {output.run.get('precision')} {output.run.get('crop_note', '')}", flush=True)
        for spec in args.engines:
            row = rows[spec]
            row["median_seconds"] = statistics.median(row["seconds"])
            row["peak_mib_max"] = max(row["peak_mib"])
            if "reference" in labels and spec != "reference":
                reference, mine = labels["reference"], labels[spec]
                row.update(agreement(reference, mine))
                if args.analyze:
                    change = analyze_change(reference, mine, GRIDS[name])
                    row["largest_analyze_change"] = None if change is None else round(change, 4)
        if "reference" in rows:
            for spec in args.engines:
                rows[spec]["speedup"] = round(rows["reference"]["median_seconds"] / rows[spec]["median_seconds"], 2)
        results["scans"][description] = rows
    return results


def machine() -> dict:
    flags = read_cpu_flags()
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:  # pragma: no cover
        gpu = "unknown"
    import torch

    from SCIsegLib.inference.openvino_quiet import import_openvino

    openvino = import_openvino()

    return {"cpu": cpu_identity(), "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "amx_tile": "amx_tile" in flags, "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "openvino": openvino.__version__}


def markdown(results: dict, args: argparse.Namespace, info: dict, load_before, load_after) -> str:
    lines = [f"### Network `{args.network}` — {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='minutes')}", "",
             f"Command: `PYTHONPATH=$PWD python benchmarks/inference_speed.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {info}", "", f"Load average (1, 5, 15 min) before: {load_before}, after: {load_after}", "",
             f"Engine set-up seconds (model load, OpenVINO conversion/compile or cache load): {results['engine_setup_seconds']}", ""]
    if results.get("borrowed_boxes"):
        lines += ["Crop boxes borrowed from the demo model's first pass (random weights find no cord; the random network's "
                  f"own first pass still ran and is timed): `{json.dumps(results['borrowed_boxes'])}`", ""]
    if results.get("first_pass_windows"):
        lines += ["First-pass windows the demo model ran, replayed by the random network (`centre`: the central window "
                  f"only; `centre`, `whole`: the window was not trusted): `{json.dumps(results['first_pass_windows'])}`", ""]
    if results["plan"] is not None:
        lines += [f"nnU-Net's 3d_fullres plan on the sagittal T2w fingerprint: `{json.dumps(results['plan'])}`", ""]
    for scan, rows in results["scans"].items():
        lines += [f"#### {scan}", "", "| engine | what ran | runs (s) | median s | speed-up vs reference | peak extra MiB | cord Dice | cord Dice, largest piece | lesion Dice | lesion Dice, in the cord | largest analyze change |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for spec, row in rows.items():
            run = row["run"] or {}
            crop = f"crop {run['crop']}: " if run.get('crop') else ''
            ran = f"{run.get('engine')} {run.get('precision')} {crop}{run.get('crop_note', '')}".strip()
            lines.append(f"| {spec} | {ran} | {row['seconds']} | {row['median_seconds']} | {row.get('speedup', '')} | "
                         f"{row['peak_mib_max']} | {row.get('cord_dice', '')} | {row.get('main_cord_dice', '')} | {row.get('lesion_dice', '')} | "
                         f"{row.get('lesion_in_cord_dice', '')} | "
                         f"{row.get('largest_analyze_change', '')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", choices=("sciseg", "demo"), default="sciseg")
    parser.add_argument("--scans", nargs="+", default=DEFAULT_SCANS,
                        help="paths under ../shared/data, phantom:sagittal/axial, or painted:<errsm t2 path> (2 painted lesions)")
    parser.add_argument("--engines", nargs="+", default=DEFAULT_ENGINES)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per scan of each fast engine")
    parser.add_argument("--reference-repeats", type=int, default=3, help="timed runs per scan of the slow engines")
    parser.add_argument("--slow-engines", nargs="*", default=["reference"], help="engines timed --reference-repeats times")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--box-from", choices=("demo", "own"), default="demo",
                        help="sciseg network: the crop box from the demo model's first pass (default) or its own (random)")
    parser.add_argument("--quantize-scans", nargs="+", default=None,
                        help="with an openvino-int8 engine: the scans (as --scans) to calibrate the int8 network on")
    parser.add_argument("--analyze", action="store_true", help="also the largest change of any sciseg analyze measure")
    parser.add_argument("--markdown", type=Path, default=ROOT / "benchmarks" / "inference_speed.md", help="appended to")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()
    info = machine()
    results = run(args)
    load_after = tuple(round(x, 2) for x in os.getloadavg())
    text = markdown(results, args, info, tuple(round(x, 2) for x in load_before), load_after)
    with open(args.markdown, "a") as stream:
        stream.write(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, **results}, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
