"""Time of one network tile in OpenVINO: the fp32 IR compiled for bf16 against its int8 version, interleaved.

The per-tile ratio is what the int8 engine changes (the OpenVINO tiles are 96-97 % of a fast-engine run on a full
field-of-view scan; ``benchmarks/inference_speed.md``, section "Session 6"). The two IRs are those the fast engine
keeps in the compiled-model cache: ``<cache>/<model>/fold_<f>-fp32-ir/<digest>.xml`` (tile size free) and
``<cache>/<model>/int8/fold_<f>.xml`` (``sciseg models quantize`` or ``inference_speed.py --quantize-scans``).

    python benchmarks/int8_tile_speed.py --fp32-ir A.xml --int8-ir B.xml --tile 192 256 48 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fp32-ir", required=True)
    parser.add_argument("--int8-ir", required=True)
    parser.add_argument("--tile", type=int, nargs=3, default=[192, 256, 48], help="tile (z, y, x) in voxels")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import openvino as ov

    core = ov.Core()
    shape = [1, 1, *args.tile]
    compiled = {}
    for name, path, hint in (("bf16", args.fp32_ir, "bf16"), ("int8", args.int8_ir, "bf16"), ("fp32", args.fp32_ir, "f32")):
        model = core.read_model(path)
        model.reshape(shape)
        compiled[name] = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})
    tile = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for run in compiled.values():  # warm-up
        run(tile)
    seconds: dict[str, list[float]] = {name: [] for name in compiled}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for name, run in compiled.items():
            started = time.perf_counter()
            run(tile)
            seconds[name].append(round(time.perf_counter() - started, 3))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(json.dumps({"tile_zyx": args.tile, "seconds": seconds, "median_seconds": medians,
                      "int8_vs_bf16": round(medians["bf16"] / medians["int8"], 2),
                      "int8_vs_fp32": round(medians["fp32"] / medians["int8"], 2),
                      "load_before": [round(x, 2) for x in load_before],
                      "load_after": [round(x, 2) for x in os.getloadavg()], "openvino": ov.__version__}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
