"""Dice of a model on scans it did not see: the held-out real scans (manual cord masks, painted lesions) and new phantoms.

Usage::

    python scripts/evaluate_demo_model.py [--model Resources/Models/sciseg-demo] [--output benchmarks/demo_model_dice.json]

Writes a JSON with one record per case (cord Dice vs the manual mask, lesion Dice vs the painted lesion)
and prints a Markdown table for the model card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import SimpleITK as sitk

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))

from SCIsegLib import phantom  # noqa: E402
from SCIsegLib.inference import InferenceSettings, NnUNetEngine  # noqa: E402
from SCIsegLib.metrics import dice  # noqa: E402
from SCIsegLib.models import read_model  # noqa: E402
from SCIsegLib.postprocess import keep_largest_component  # noqa: E402
from SCIsegLib.segment import segment_image  # noqa: E402

sys.path.insert(0, str(REPOSITORY / "scripts"))
from train_demo_model import REAL_HELD_OUT, SHARED  # noqa: E402

HELD_OUT_LESIONS = [phantom.LesionSpec(center_si_mm=0.0, length_mm=12.0, width_fraction=0.85, contrast=0.85)]


def cases():
    for image_path, cord_path in REAL_HELD_OUT:
        if not (SHARED / image_path).exists():
            continue
        image = sitk.Cast(sitk.ReadImage(str(SHARED / image_path)), sitk.sitkFloat32)
        cord = sitk.Cast(sitk.Cast(sitk.ReadImage(str(SHARED / cord_path)), sitk.sitkFloat32) > 0.5, sitk.sitkUInt8)
        cord.CopyInformation(image)
        yield f"real: {image_path} (no lesion)", image, cord, None
        painted = phantom.paint_lesions(image, cord, lesions=HELD_OUT_LESIONS)
        yield f"real: {image_path} + painted lesion", painted.image, painted.cord, painted.lesion
    for index, acquisition in enumerate([phantom.SAGITTAL, phantom.AXIAL, phantom.ISOTROPIC]):
        case = phantom.make_phantom(seed=90_000 + index, acquisition=acquisition, lesions=2)
        yield f"phantom: {acquisition.orientation} {acquisition.spacing_mm} mm, 2 lesions", case.image, case.cord, case.lesion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPOSITORY / "Resources" / "Models" / "sciseg-demo")
    parser.add_argument("--output", type=Path, default=REPOSITORY / "benchmarks" / "demo_model_dice.json")
    arguments = parser.parse_args()
    engine = NnUNetEngine(read_model(arguments.model), InferenceSettings(device="cpu"))
    records = []
    for name, image, cord, lesion in cases():
        started = time.perf_counter()
        result = segment_image(image, engine)
        predicted_cord = sitk.GetArrayFromImage(result.masks["sc"]) > 0
        predicted_lesion = sitk.GetArrayFromImage(result.masks["lesion"]) > 0
        record = {
            "case": name,
            "size": list(image.GetSize()),
            "cord_dice": round(dice(predicted_cord, sitk.GetArrayFromImage(cord) > 0), 4),
            "cord_dice_largest_component": round(dice(keep_largest_component(predicted_cord), sitk.GetArrayFromImage(cord) > 0), 4),
            "lesion_dice": None if lesion is None else round(dice(predicted_lesion, sitk.GetArrayFromImage(lesion) > 0), 4),
            "false_lesion_voxels": int(predicted_lesion.sum()) if lesion is None else None,
            "seconds_cpu": round(time.perf_counter() - started, 1),
        }
        records.append(record)
        print(record, flush=True)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps({"model": str(arguments.model), "records": records}, indent=2))
    print("\n| case | cord Dice | cord Dice, largest component | lesion Dice | CPU s |\n|---|---|---|---|---|")
    for r in records:
        lesion = "-" if r["lesion_dice"] is None else f"{r['lesion_dice']:.3f}"
        if r["false_lesion_voxels"] is not None:
            lesion = f"no lesion; {r['false_lesion_voxels']} false lesion voxels"
        print(f"| {r['case']} | {r['cord_dice']:.3f} | {r['cord_dice_largest_component']:.3f} | {lesion} | {r['seconds_cpu']} |")


if __name__ == "__main__":
    main()
