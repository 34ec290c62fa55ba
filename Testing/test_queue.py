"""The review queue: entropy arithmetic, persistence, and ranking evidence on phantoms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from SCIsegLib.inference import InferenceSettings, NnUNetEngine
from SCIsegLib.models import read_model
from SCIsegLib.phantom import SAGITTAL, LesionSpec, make_phantom
from SCIsegLib.training import export, queue
from SCIsegLib.volume import write_image_atomic


def test_entropy_and_score_arithmetic() -> None:
    assert queue.binary_entropy(np.array([0.0, 1.0]))[0] == pytest.approx(0.0, abs=1e-9)
    assert queue.binary_entropy(np.array([0.5]))[0] == pytest.approx(np.log(2))
    confident = {"sc": np.array([0.0, 0.99, 0.99]), "lesion": np.array([0.0, 0.0, 0.98])}
    doubtful = {"sc": np.array([0.0, 0.99, 0.99]), "lesion": np.array([0.0, 0.4, 0.6])}
    assert queue.uncertainty(doubtful, 1.0)["score"] > queue.uncertainty(confident, 1.0)["score"]
    assert queue.uncertainty(doubtful, 2.0)["uncertain_lesion_mm3"] == 4.0
    assert queue.uncertainty({"sc": np.zeros(3), "lesion": np.zeros(3)}, 1.0)["score"] == 0.0


def test_ambiguous_lesions_rank_above_clean_ones_and_next_skips_corrected(tmp_path: Path, demo_model_path: Path) -> None:
    engine = NnUNetEngine(read_model(demo_model_path), InferenceSettings(device="cpu", threads=2))
    paths = {}
    for index in range(3):
        clean = make_phantom(seed=700 + index, acquisition=SAGITTAL, noise=0.02,
                             lesions=[LesionSpec(center_si_mm=0.0, length_mm=16.0, width_fraction=0.9, contrast=0.92, edge_mm=0.5)])
        ambiguous = make_phantom(seed=700 + index, acquisition=SAGITTAL, noise=0.06,
                                 lesions=[LesionSpec(center_si_mm=0.0, length_mm=16.0, width_fraction=0.6, contrast=0.55, edge_mm=2.5)])
        paths[f"clean{index}"] = write_image_atomic(clean.image, tmp_path / "bids" / f"sub-c{index}" / "anat" / f"sub-c{index}_T2w.nii.gz")
        paths[f"ambiguous{index}"] = write_image_atomic(ambiguous.image, tmp_path / "bids" / f"sub-a{index}" / "anat" / f"sub-a{index}_T2w.nii.gz")
    queue_file = tmp_path / "queue.json"
    queue.score_scans(list(paths.values()), engine, queue_file)
    scores = {name: queue.load_queue(queue_file)["scans"][str(path.resolve())]["score"] for name, path in paths.items()}
    for index in range(3):
        assert scores[f"ambiguous{index}"] > scores[f"clean{index}"], scores
    order = [record["path"] for record in queue.ranked(queue.load_queue(queue_file))]
    assert all(str(paths[f"ambiguous{i}"].resolve()) in order[:4] for i in range(3))
    # once the top scan is corrected, `next` moves on
    top = Path(order[0])
    case = make_phantom(seed=1, acquisition=SAGITTAL)
    import SimpleITK as sitk

    image = sitk.ReadImage(str(top))
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    assert queue.next_scan(queue_file, tmp_path / "bids")["path"] == str(top)
    export.export_correction(root=tmp_path / "bids", source=top, cord=empty, lesion=empty, rater="R")
    assert queue.next_scan(queue_file, tmp_path / "bids")["path"] == order[1]
    del case
