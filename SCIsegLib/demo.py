"""``sciseg demo``: segment a synthetic scan with the bundled model and compare with its known truth."""

from __future__ import annotations

from pathlib import Path

import SimpleITK as sitk

from .inference import InferenceSettings, NnUNetEngine
from .metrics import dice
from .models import BUNDLED_DEMO, resolve_model
from .phantom import SAGITTAL, LesionSpec, make_phantom
from .segment import segment_files
from .volume import write_image_atomic

#: The demo case: a sagittal T2w phantom stored like SCT's test data (PSR), with two lesions.
DEMO_LESIONS = [
    LesionSpec(center_si_mm=-18.0, length_mm=16.0, width_fraction=0.85, contrast=0.85, haemorrhage=True),
    LesionSpec(center_si_mm=20.0, length_mm=9.0, width_fraction=0.7, contrast=0.8),
]


def run_demo(output_dir: Path, *, device: str = "auto", seed: int = 2024) -> dict:
    """Write the demo image and its truth to ``output_dir``, segment it, return paths and Dice."""
    output_dir = Path(output_dir)
    case = make_phantom(seed=seed, acquisition=SAGITTAL, lesions=DEMO_LESIONS)
    image_path = write_image_atomic(case.image, output_dir / "sub-demo_T2w.nii.gz")
    write_image_atomic(case.labels, output_dir / "truth" / "sub-demo_T2w_labels-truth.nii.gz")
    model = resolve_model(BUNDLED_DEMO)
    settings = InferenceSettings(device=device)
    engine = NnUNetEngine(model, settings)
    [record] = segment_files([image_path], output_dir, engine, settings=settings, write_label_map=True)
    outputs = {name: output_dir / f"sub-demo_T2w_{name}_seg.nii.gz" for name in ("sc", "lesion")}
    truth = {"sc": case.cord, "lesion": case.lesion}
    scores = {
        name: dice(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), sitk.GetArrayFromImage(truth[name]))
        for name, path in outputs.items()
    }
    return {
        "image": str(image_path),
        "outputs": {name: str(path) for name, path in outputs.items()},
        "dice": scores,
        "seconds": record["seconds"],
        "device": record["device"],
    }
