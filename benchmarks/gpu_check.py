"""One short run on a machine with one NVIDIA GPU: SCT's call (reference) against the CUDA engine.

For each engine (``reference``: nnU-Net's predictor as SCT calls it, on the GPU; ``cuda``: the fast engine,
bf16/fp16 autocast, cropped to the cord) and each scan (three ../shared/data scans by default):

* **cold**: a fresh ``python -m SCIsegLib segment SCAN --engine E`` child, start to exit (first scan only);
* **in process**: the engine's load time, its first call on the scan and the median of the next calls (warm);
* **peak GPU memory** (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``, MiB) per engine;
* **agreement** of every engine's label map with the reference's on the same scan: cord Dice (labels 1 and 2),
  lesion Dice (label 2) and the voxels that differ.

Runs inside ``--budget-s`` (what is left is skipped and listed) and writes one JSON (temp file + rename).
Without CUDA it stops at once with exit code 2 and one sentence. ``benchmarks/gpu_check.sh`` calls it.

    python benchmarks/gpu_check.py -o benchmarks/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCANS = ["sct_testing_data/t2/t2.nii.gz", "sct_2014_errsm/errsm_21/t2.nii.gz",
                 "gm_challenge/sub-10062Ses1/anat/sub-10062Ses1_run-1_T2starw.nii.gz"]
DEFAULT_ENGINES = ["reference", "cuda"]


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SCT's call against the CUDA engine on one NVIDIA GPU (one short run).")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the JSON report to write")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--scans", nargs="+", default=DEFAULT_SCANS, help="paths relative to --data (default: three)")
    parser.add_argument("--engines", nargs="+", choices=DEFAULT_ENGINES, default=DEFAULT_ENGINES)
    parser.add_argument("--model", default="sciseg-demo", help="model name or folder (default: the bundled demo)")
    parser.add_argument("--repeats", type=int, default=3, help="warm calls per scan and engine")
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop starting new measurements after this long")
    parser.add_argument("--no-cold", action="store_true", help="skip the fresh-process (cold) runs")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    missing = [s for s in args.scans if not (args.data / s).is_file()]
    if missing:
        parser.error(f"scan not found under {args.data}: {missing[0]}")
    if args.output.exists() and args.output.is_dir():
        parser.error(f"{args.output} is a folder; give a file name for the JSON report")
    return args


def cuda_problem() -> str | None:
    """One sentence when this machine cannot run the check (no CUDA torch, no GPU), else None."""
    try:
        import torch
    except ImportError:
        return "torch is not installed here; install SCIseg's dependencies first."
    if not torch.cuda.is_available():
        return (f"no CUDA GPU is usable here (torch {torch.__version__}, torch.cuda.is_available() is False); "
                "run benchmarks/gpu_check.sh on a machine with an NVIDIA GPU and a CUDA build of torch.")
    return None


def agreement(reference: np.ndarray, labels: np.ndarray) -> dict:
    """Cord Dice (labels {1, 2}), lesion Dice (label 2) and differing voxels of two label maps on one grid."""
    if reference.shape != labels.shape:
        raise ValueError(f"label maps on different grids: {reference.shape} and {labels.shape}")

    def dice(a: np.ndarray, b: np.ndarray) -> float:
        total = int(a.sum()) + int(b.sum())
        return 1.0 if total == 0 else round(2.0 * int((a & b).sum()) / total, 5)

    return {"cord_dice": dice(reference > 0, labels > 0), "lesion_dice": dice(reference == 2, labels == 2),
            "differing_voxels": int((reference != labels).sum())}


def write_report(report: dict, path: Path) -> None:
    """Write the JSON whole or not at all (temp file beside it, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(json.dumps(report, indent=2) + "\n")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def cold_child(scan: Path, engine: str, model: str, folder: Path) -> dict:
    started = time.perf_counter()
    child = subprocess.run([sys.executable, "-m", "SCIsegLib", "segment", str(scan), "--model", model, "--device", "cuda",
                            "--engine", engine, "-o", str(folder), "--progress", "none"], capture_output=True, text=True,
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return {"seconds": round(time.perf_counter() - started, 3), "exit_code": child.returncode,
            "stderr_tail": child.stderr[-400:] if child.returncode else ""}


def measure(args: argparse.Namespace) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from SCIsegLib.inference import InferenceSettings, make_engine
    from SCIsegLib.models import resolve_model
    from SCIsegLib.volume import array_zyx, load_image, reorient, sct_to_itk_orientation

    started = time.perf_counter()
    model = resolve_model(args.model)
    report: dict = {
        "model": model.name, "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
        "bf16": bool(torch.cuda.is_bf16_supported()), "machine": platform.node(), "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "budget_s": args.budget_s, "engines": {},
        "skipped": [], "command": " ".join(sys.argv)}
    inputs = {}
    for relative in args.scans:
        image = reorient(load_image(args.data / relative), sct_to_itk_orientation(model.orientation))
        inputs[relative] = (array_zyx(image), tuple(float(s) for s in reversed(image.GetSpacing())))
    labels: dict[str, dict[str, np.ndarray]] = {}

    def over_budget(what: str) -> bool:
        if time.perf_counter() - started > args.budget_s:
            report["skipped"].append(what)
            return True
        return False

    with tempfile.TemporaryDirectory() as work:
        for name in args.engines:
            if over_budget(f"{name}: everything"):
                continue
            entry: dict = {"scans": {}}
            if not args.no_cold:
                entry["cold_process"] = {args.scans[0]: cold_child(args.data / args.scans[0], name, args.model,
                                                                   Path(work) / f"cold-{name}")}
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            loading = time.perf_counter()
            engine = make_engine(model, InferenceSettings(device="cuda", engine=name))
            torch.cuda.synchronize()
            entry["load_s"] = round(time.perf_counter() - loading, 3)
            for relative, (array, spacing) in inputs.items():
                if over_budget(f"{name}: {relative}"):
                    continue
                times = []
                for _ in range(1 + args.repeats):
                    begun = time.perf_counter()
                    output = engine.predict(array, spacing)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - begun)
                labels.setdefault(relative, {})[name] = output.label_map
                entry["scans"][relative] = {"shape_zyx": list(array.shape), "first_s": round(times[0], 3),
                                            "warm_s": round(statistics.median(times[1:]), 3), "run": output.run}
            entry["peak_gpu_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            entry["peak_gpu_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
            report["engines"][name] = entry
            del engine
    for relative, by_engine in labels.items():
        if "reference" in by_engine:
            for name, label_map in by_engine.items():
                if name != "reference":
                    report["engines"][name]["scans"][relative]["agreement_with_reference"] = agreement(by_engine["reference"], label_map)
    report["total_s"] = round(time.perf_counter() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    problem = cuda_problem()
    if problem is not None:
        sys.stderr.write(f"gpu_check: {problem}\n")
        return 2
    report = measure(args)
    write_report(report, args.output)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
