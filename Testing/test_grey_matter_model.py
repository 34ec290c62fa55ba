"""Grey-matter models: the store knows SCT's 2D `graymatter` release, `sciseg segment` writes SCT's GM/WM names,
the UIs' segment decisions, and GM Dice in `sciseg evaluate`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_file
from local_http import LocalServer
from SCIsegLib import models
from SCIsegLib.checkpoints import UnsafePlansError
from SCIsegLib.compartments_segments import (
    GREY_MATTER,
    WHITE_MATTER,
    engine_for_model,
    gm_output_names,
    has_grey_matter,
    segments_offered,
)
from SCIsegLib.errors import ModelError

REPOSITORY = Path(__file__).resolve().parents[1]
GM_DEMO = REPOSITORY / "Resources" / "Models" / "sciseg-gm-demo"
SCISEG_DEMO = REPOSITORY / "Resources" / "Models" / "sciseg-demo"
T2S = "sct_testing_data/t2s/"
SCT_LAYOUT = "Dataset820_gm-seg/nnUNetTrainer__nnUNetPlans__2d"  # folder of SCT's release zip (fold_* inside)


def sct_like_release(tmp_path: Path) -> bytes:
    """A zip with the graymatter release's layout, holding the demo GM model's 2D files and no ``image_orientation``
    (SCT then reorients to LPI); returns its bytes."""
    folder = tmp_path / "release"
    shutil.copytree(GM_DEMO / "nnUNetTrainer__nnUNetPlans__2d", folder / SCT_LAYOUT)
    dataset = json.loads((folder / SCT_LAYOUT / "dataset.json").read_text())
    dataset.pop("image_orientation")
    (folder / SCT_LAYOUT / "dataset.json").write_text(json.dumps(dataset))
    archive = tmp_path / "Dataset820_gm-seg.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in sorted((folder).rglob("*")):
            bundle.write(file, file.relative_to(folder))
    return archive.read_bytes()


def test_graymatter_is_known_with_sct_release_url() -> None:
    known = models.KNOWN_MODELS["graymatter"]
    assert known.url.endswith("/r20250420/Dataset820_gm-seg.zip") and "model-gm-contrast-region-agnostic" in known.url
    assert known.configuration == "2d" and known.segments == ("grey matter",)


def test_install_graymatter_by_name_from_a_local_server(tmp_path: Path, model_store: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    payload = sct_like_release(tmp_path)
    path = "/ivadomed/model-gm-contrast-region-agnostic/releases/download/r20250420/Dataset820_gm-seg.zip"
    with LocalServer() as server:
        server.served.files[path] = payload
        known = models.KNOWN_MODELS["graymatter"]
        monkeypatch.setitem(models.KNOWN_MODELS, "graymatter", models.KnownModel(
            url=server.url(path), description=known.description, segments=known.segments, configuration=known.configuration))
        info = models.install("graymatter")
    assert info.name == "graymatter" and info.is_2d and info.configuration == "2d"
    assert info.segments == ("grey matter",) and has_grey_matter(info)
    assert info.orientation == "LPI"  # no image_orientation: SCT's segment_nnunet default
    assert info.results_folder == model_store / "graymatter" / SCT_LAYOUT
    assert info.metadata["sha256_trust"] == "first use" and info.metadata["source"] == server.url(path)
    assert models.resolve_model("graymatter").summary()["segments"] == ["grey matter"]


def test_2d_plans_are_checked_against_the_allow_list(tmp_path: Path) -> None:
    folder = tmp_path / "gm"
    shutil.copytree(GM_DEMO, folder)
    plans_file = folder / "nnUNetTrainer__nnUNetPlans__2d" / "plans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["conv_op"] = "os.system"
    plans_file.write_text(json.dumps(plans))
    with pytest.raises(UnsafePlansError, match="os.system"):
        models.read_model(folder)
    with pytest.raises(ModelError):
        models.install(str(folder), name="planted", store=tmp_path / "store")
    assert not (tmp_path / "store" / "planted").exists()


def test_ui_decisions_for_cord_and_grey_matter_models() -> None:
    sciseg = models.read_model(SCISEG_DEMO)
    gm = models.read_model(GM_DEMO)
    assert [s.segment_id for s in segments_offered(sciseg)] == ["spinal_cord", "lesion"]
    assert segments_offered(gm) == [GREY_MATTER]
    assert segments_offered(gm, cord_available=True) == [GREY_MATTER, WHITE_MATTER]
    assert GREY_MATTER.export_suffix == "_label-GM_seg" and WHITE_MATTER.export_suffix == "_label-WM_seg"
    assert engine_for_model(gm, "auto") == "reference" and engine_for_model(gm, "openvino") == "openvino"
    assert engine_for_model(sciseg, "auto") == "auto"
    assert gm_output_names("t2s") == {"gm": "t2s_gmseg.nii.gz", "wm": "t2s_wmseg.nii.gz", "areas": "t2s_gmseg_areas.csv"}
    # every terminology entry names a type of SCIseg's terminology file, with the same SNOMED CT code
    terms = json.loads((REPOSITORY / "Resources" / "Terminology" / "SCIseg.term.json").read_text())
    codes = {t["CodeValue"]: t["CodeMeaning"] for c in terms["SegmentationCodes"]["Category"] for t in c["Type"]}
    for offer in (GREY_MATTER, WHITE_MATTER):
        type_field = offer.terminology.split("~")[2]
        assert type_field == f"SCT^{offer.snomed_code}^{codes[offer.snomed_code]}"
    assert codes["12958003"] == "Spinal cord gray matter" and codes["27088001"] == "Spinal cord white matter"


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SCIsegLib", *arguments], capture_output=True, text=True, cwd=REPOSITORY,
                          env={"PYTHONPATH": str(REPOSITORY), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}, timeout=600)


def test_segment_with_the_demo_gm_model_writes_sct_names_on_the_input_grid(tmp_path: Path) -> None:
    image_path = shared_file(T2S + "t2s.nii.gz")
    cord_path = shared_file(T2S + "t2s_seg-deepseg.nii.gz")
    done = run_cli("segment", str(image_path), "--model", str(GM_DEMO), "--cord", str(cord_path), "-o", str(tmp_path),
                   "--threads", "1")
    assert done.returncode == 0, done.stderr
    gm_file, wm_file = tmp_path / "t2s_gmseg.nii.gz", tmp_path / "t2s_wmseg.nii.gz"
    image, gm, wm = (sitk.ReadImage(str(p)) for p in (image_path, gm_file, wm_file))
    for mask in (gm, wm):
        assert mask.GetSize() == image.GetSize()
        np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(mask.GetSpacing(), image.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6)
    g, w = sitk.GetArrayFromImage(gm).astype(bool), sitk.GetArrayFromImage(wm).astype(bool)
    c = sitk.GetArrayFromImage(sitk.ReadImage(str(cord_path))) > 0
    assert np.array_equal(w, c & ~g)
    manual = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_file(T2S + "t2s_gmseg_manual.nii.gz")))) > 0
    assert 2 * (g & manual).sum() / (g.sum() + manual.sum()) > 0.6  # a scan of its training set: it learnt GM here
    sidecar = json.loads((tmp_path / "t2s_gmseg.json").read_text())
    assert sidecar["Structure"] == "gm" and sidecar["GeneratedBy"][0]["Engine"]["engine"] == "reference"
    assert json.loads((tmp_path / "t2s_wmseg.json").read_text())["VoxelCount"] == int(w.sum())

    evaluation = run_cli("evaluate", "--pred", str(gm_file), "--ref", str(shared_file(T2S + "t2s_gmseg_manual.nii.gz")),
                         "-o", str(tmp_path / "evaluation"))
    assert evaluation.returncode == 0, evaluation.stderr
    table = (tmp_path / "evaluation" / "evaluation.csv").read_text().splitlines()
    assert table[1].split(",")[1] == "gm"


def test_slicer_terminology_logic_reads_the_gm_and_wm_entries() -> None:
    """On slicer-core: SCIseg's terminology file loads, and the GM/WM entry strings the UIs set deserialize to the
    SNOMED CT types it lists (after the spinal cord, with their colours)."""
    slicer = pytest.importorskip("slicer")
    terminology = slicer.vtkSlicerTerminologiesModuleLogic()
    assert terminology.LoadContextFromFile(str(REPOSITORY / "Resources" / "Terminology" / "SCIseg.term.json"))
    for offer in (GREY_MATTER, WHITE_MATTER):
        entry = slicer.vtkSlicerTerminologyEntry()
        assert terminology.DeserializeTerminologyEntry(offer.terminology, entry)
        assert entry.GetTerminologyContextName() == "SCIseg"
        assert entry.GetCategoryObject().GetCodeValue() == "123037004"
        assert entry.GetTypeObject().GetCodeValue() == offer.snomed_code
    category = slicer.vtkSlicerTerminologyCategory()
    assert terminology.GetNthCategoryInTerminology("SCIseg", 0, category)
    codes, colours = [], []
    for index in range(terminology.GetNumberOfTypesInTerminologyCategory("SCIseg", category)):
        kind = slicer.vtkSlicerTerminologyType()
        assert terminology.GetNthTypeInTerminologyCategory("SCIseg", category, index, kind)
        codes.append(kind.GetCodeValue())
        colours.append(tuple(kind.GetRecommendedDisplayRGBValue()))
    assert codes == ["2748008", "12958003", "27088001"]
    assert colours[1] == pytest.approx(tuple(round(c * 255) for c in GREY_MATTER.color))
    assert colours[2] == pytest.approx(tuple(round(c * 255) for c in WHITE_MATTER.color))


def test_the_fast_engine_runs_a_2d_model_without_falling_back(tmp_path: Path) -> None:
    """OpenVINO with the default crop on the 2D demo GM model: the crop steps aside ("2D configuration"), no fallback."""
    image_path = shared_file(T2S + "t2s.nii.gz")
    reference = run_cli("segment", str(image_path), "--model", str(GM_DEMO), "-o", str(tmp_path / "reference"), "--threads", "1")
    fast = run_cli("segment", str(image_path), "--model", str(GM_DEMO), "-o", str(tmp_path / "fast"), "--threads", "1",
                   "--engine", "openvino", "--crop", "fast")
    assert reference.returncode == 0 and fast.returncode == 0, reference.stderr + fast.stderr
    engine = json.loads((tmp_path / "fast" / "t2s_gmseg.json").read_text())["GeneratedBy"][0]["Engine"]
    assert engine["engine"] == "openvino" and engine["fallbacks"] == [] and engine["crop_note"] == "2D configuration"
    a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / k / "t2s_gmseg.nii.gz"))) > 0 for k in ("reference", "fast"))
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.97
