"""Dice of the bundled demo grey-matter model against manual GM on scans it never saw, and GM/WM areas side by side.

For every held-out scan of ``scripts/train_demo_gm_model.py`` (``gm_challenge/sub-10062Ses1``: a site absent from
training), the model segments the image with the reference engine (nnU-Net's predictor, as SCT calls it); Dice and
Hausdorff distance of the GM against the manual GM mask; mean GM and WM (= manual cord - GM) areas per slice with
the cord's centerline (SCT's ``-angle-corr-centerline``) for the predicted and the manual GM. Writes
``benchmarks/gm_demo_dice.json``.

    PYTHONPATH=. python benchmarks/gm_demo_dice.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))
sys.path.insert(0, str(REPOSITORY / "scripts"))

from train_demo_gm_model import GM_HELD_OUT, SHARED, binary_on  # noqa: E402

from SCIsegLib.compartments import compartment_areas  # noqa: E402
from SCIsegLib.inference import InferenceSettings, make_engine  # noqa: E402
from SCIsegLib.metrics import dice, surface_distances  # noqa: E402
from SCIsegLib.models import read_model  # noqa: E402
from SCIsegLib.segment import segment_image  # noqa: E402


def main() -> None:
    import torch

    torch.set_num_threads(1)
    model = read_model(REPOSITORY / "Resources" / "Models" / "sciseg-gm-demo")
    engine = make_engine(model, InferenceSettings(engine="reference", device="cpu", threads=1))
    results = []
    for image_path, cord_path, gm_path in GM_HELD_OUT:
        image = sitk.ReadImage(str(SHARED / image_path))
        cord = binary_on(image, sitk.ReadImage(str(SHARED / cord_path)))
        manual = binary_on(image, sitk.ReadImage(str(SHARED / gm_path)))
        started = time.perf_counter()
        predicted = segment_image(image, engine).masks["gm"]
        seconds = time.perf_counter() - started
        p, m = sitk.GetArrayFromImage(predicted) > 0, sitk.GetArrayFromImage(manual) > 0
        spacing_zyx = tuple(reversed(image.GetSpacing()))
        areas = {name: compartment_areas(mask, cord).dropna(subset=["gm_area_mm2"])
                 for name, mask in (("predicted", predicted), ("manual", manual))}
        results.append({
            "scan": image_path,
            "dice_gm": round(dice(p, m), 4),
            "hausdorff_gm_mm": round(float(surface_distances(p, m, spacing_zyx).hausdorff), 3),
            "voxels_predicted": int(p.sum()), "voxels_manual": int(m.sum()),
            "mean_gm_area_mm2": {k: round(float(t["gm_area_mm2"].mean()), 3) for k, t in areas.items()},
            "mean_wm_area_mm2": {k: round(float(t["wm_area_mm2"].mean()), 3) for k, t in areas.items()},
            "slices_with_gm": {k: int(len(t)) for k, t in areas.items()},
            "seconds": round(seconds, 2),
        })
        print(json.dumps(results[-1]))
    output = {
        "model": "sciseg-gm-demo (Resources/Models/sciseg-gm-demo), reference engine, CPU, 1 thread",
        "held_out": results,
        "mean_dice_gm": round(float(np.mean([r["dice_gm"] for r in results])), 4),
        "command": "PYTHONPATH=. python benchmarks/gm_demo_dice.py",
    }
    (REPOSITORY / "benchmarks" / "gm_demo_dice.json").write_text(json.dumps(output, indent=2) + "\n")


if __name__ == "__main__":
    main()
