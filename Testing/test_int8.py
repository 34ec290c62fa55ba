"""The int8 engine: NNCF quantization of the demo model on a real scan, its report, the agreement gate of ``auto``,
and an interrupted quantization that leaves the store as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_file
from SCIsegLib.errors import InputError
from SCIsegLib.hashing import file_sha256
from SCIsegLib.inference import InferenceSettings, NnUNetEngine, make_engine
from SCIsegLib.inference import quantize as quantize_module
from SCIsegLib.inference.agreement import agreement
from SCIsegLib.inference.choice import _int8_decision
from SCIsegLib.inference.fast import FallbackEngine, FastEngine
from SCIsegLib.inference.int8 import entry_folder, fold_file_stem, int8_gate, model_folder_in_cache, read_entry
from SCIsegLib.inference.openvino_cache import CompiledModelCache
from SCIsegLib.inference.quantize import load_scan, quantize_model
from SCIsegLib.models import read_model

WITH_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
SCAN = "sct_testing_data/t2/t2_fake_lesion.nii.gz"  # 99x99x29 at 0.8 mm, a painted lesion in the cord


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, demo_model_path: Path):
    """(model (a copy of the demo model), cache, report): the demo model quantized on one real scan."""
    folder = tmp_path_factory.mktemp("int8")
    shutil.copytree(demo_model_path, folder / "model")
    model = read_model(folder / "model")
    cache = CompiledModelCache(folder / "cache")
    report = quantize_model(model, [shared_file(SCAN)], cache, progress=lambda message: None)
    return model, cache, report


def staging_leftovers(cache: CompiledModelCache, model) -> list[str]:
    return [p.name for p in model_folder_in_cache(cache.root, model).iterdir() if p.name.startswith(".")]


def set_worst(cache: CompiledModelCache, model, **figures) -> None:
    path = entry_folder(cache.root, model) / "report.json"
    report = json.loads(path.read_text())
    report["agreement"]["worst"].update(figures)
    path.write_text(json.dumps(report))


@pytest.mark.filterwarnings("ignore:int8 engine of model:RuntimeWarning")  # when this quantization failed the gate
def test_quantization_stores_an_int8_ir_the_engine_runs_and_a_report_of_what_it_measured(quantized):
    model, cache, report = quantized
    folder = entry_folder(cache.root, model)
    assert sorted(p.name for p in folder.iterdir()) == ["fold_all.bin", "fold_all.xml", "report.json"]
    assert staging_leftovers(cache, model) == []
    assert (folder / "fold_all.xml").read_text().count('type="FakeQuantize"') > 10  # the convolutions run in int8
    import openvino

    ops = openvino.Core().read_model(folder / "fold_all.xml").get_ordered_ops()
    fed = {op.get_friendly_name(): op.input_value(0).get_node().get_type_name() for op in ops
           if op.get_type_name() in ("Convolution", "MVN")}
    convolutions = [op.get_friendly_name() for op in ops if op.get_type_name() == "Convolution"]
    norms = [name for name in fed if name not in convolutions]
    assert len(norms) >= 10 and all(fed[name] != "FakeQuantize" for name in norms)  # instance norms whole, in floating point
    quantized_input = [fed[name] in ("FakeQuantize", "Concat") for name in convolutions]  # a Concat of quantized inputs
    assert quantized_input == [False] + [True] * (len(convolutions) - 2) + [False]  # the first and last in floating point
    assert report["calibration"]["nncf"]["floating_point"] == "the first and the last convolution, the instance norms' inputs"
    assert json.loads((folder / "report.json").read_text()) == report
    fold = report["folds"]["all"]
    assert fold["weights_sha256"] == file_sha256(model.checkpoint_files()[0])
    assert fold["xml_sha256"] == file_sha256(folder / "fold_all.xml") and fold["bin_sha256"] == file_sha256(folder / "fold_all.bin")
    fp32_xml = next(cache.root.glob("*/fold_all-fp32-ir/*.xml"))
    assert fold["fp32_ir"]["xml_sha256"] == file_sha256(fp32_xml) and fold["fp32_ir"]["key"]["precision"] == "fp32"
    scan = {"path": str(shared_file(SCAN).resolve()), "sha256": file_sha256(shared_file(SCAN))}
    assert report["calibration"]["scans"] == [scan]
    import nncf
    import openvino

    assert report["versions"]["nncf"] == nncf.__version__ and report["versions"]["openvino"] == openvino.__version__.split("-")[0]
    # the figures are those of the stored int8 network against the reference, measured again here
    array, spacing = load_scan(shared_file(SCAN), model)
    output = FastEngine(model, InferenceSettings(), "openvino", "int8", cache).predict(array, spacing)
    assert output.run["precision"] == "int8" and output.run["int8_floating_layers"] in ("bf16", "fp32")
    figures = agreement(NnUNetEngine(model, InferenceSettings(device="cpu")).predict(array, spacing).label_map, output.label_map)
    measured = report["agreement"]["scans"][0]
    assert measured["path"] == scan["path"] and measured["sha256"] == scan["sha256"]
    for name in ("main_cord_dice", "lesion_in_cord_dice"):
        assert figures[name] == pytest.approx(measured[name], abs=2e-3)
    assert figures["main_cord_dice"] > 0.95  # int8 still finds the cord
    assert report["agreement"]["passed"] == (min(measured["main_cord_dice"], measured["lesion_in_cord_dice"]) >= 0.99)
    assert report["agreement"]["held_out"] is False


def test_auto_runs_int8_only_when_the_stored_report_passed_the_gate(quantized, monkeypatch):
    import SCIsegLib.inference.choice as choice

    model, cache, report = quantized
    monkeypatch.setattr(choice, "available_devices", lambda: {"cpu": "CPU"})
    worst = dict(report["agreement"]["worst"])
    try:
        set_worst(cache, model, main_cord_dice=0.995, lesion_in_cord_dice=0.991)
        engine = make_engine(model, InferenceSettings(engine="auto"), cpu_flags_reader=lambda: WITH_BF16, cache=cache)
        assert isinstance(engine, FallbackEngine) and engine.fast.precision == "int8"
        assert engine.notes["int8_note"].startswith("used")
        set_worst(cache, model, main_cord_dice=0.995, lesion_in_cord_dice=0.98)
        engine = make_engine(model, InferenceSettings(engine="auto"), cpu_flags_reader=lambda: WITH_BF16, cache=cache)
        assert (engine.fast.runtime, engine.fast.precision) == ("openvino", "bf16")
        assert "failed the agreement gate" in engine.notes["int8_note"] and "lesion_in_cord_dice 0.98" in engine.notes["int8_note"]
        array, spacing = load_scan(shared_file(SCAN), model)
        assert "failed the agreement gate" in engine.predict(array, spacing).run["int8_note"]  # recorded with the outputs
        with pytest.warns(RuntimeWarning, match="failed the agreement gate"):  # by name it runs, with a warning
            named = make_engine(model, InferenceSettings(engine="openvino-int8"), cpu_flags_reader=lambda: WITH_BF16, cache=cache)
        assert named.fast.precision == "int8"
    finally:
        set_worst(cache, model, **worst)


def test_int8_of_other_weights_is_refused_by_auto_and_by_name(quantized):
    model, cache, report = quantized
    checkpoint = model.checkpoint_files()[0]
    original = checkpoint.read_bytes()
    set_worst(cache, model, main_cord_dice=0.995, lesion_in_cord_dice=0.995)
    try:
        assert _int8_decision(model, InferenceSettings(engine="auto"), cache)[0] is True
        import torch

        weights = torch.load(checkpoint, weights_only=False)
        for tensor in weights["network_weights"].values():
            tensor.mul_(1.01)
        torch.save(weights, checkpoint)
        usable, notes = _int8_decision(model, InferenceSettings(engine="auto"), cache)
        assert not usable and "other weights" in notes["int8_note"]
        with pytest.raises(InputError, match="other weights"):
            FastEngine(model, InferenceSettings(), "openvino", "int8", cache)
    finally:
        checkpoint.write_bytes(original)
        set_worst(cache, model, **report["agreement"]["worst"])


@pytest.mark.parametrize("stored_before", [True, False])
@pytest.mark.parametrize("step", ["nncf.quantize", "measure_agreement"])
def test_an_interrupted_quantization_leaves_the_store_as_it_was(quantized, monkeypatch, tmp_path: Path, step, stored_before):
    """Interrupted while quantizing, or with the int8 IR already written (staged) and its agreement being measured:
    the entry stored before is untouched (or, when there was none, none appears), and no staging folder is left."""
    import nncf

    model, cache, _ = quantized
    folder = entry_folder(cache.root, model)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    if not stored_before:
        folder.rename(tmp_path / "kept")

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if step == "nncf.quantize":
        monkeypatch.setattr(nncf, "quantize", interrupt)
    else:  # the IR is saved in the staging folder first (the fp32 network stands in for a quantized one here)
        monkeypatch.setattr(nncf, "quantize", lambda model, *args, **kwargs: model)
        monkeypatch.setattr(quantize_module, "measure_agreement", interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            quantize_model(model, [shared_file(SCAN)], cache, progress=lambda message: None)
        if stored_before:
            assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
        else:
            assert not folder.exists() and read_entry(cache.root, model) is None
        assert staging_leftovers(cache, model) == []
    finally:
        if not stored_before:
            (tmp_path / "kept").rename(folder)


def test_the_gate_says_why_in_one_sentence():
    weights = {"all": "a" * 64}
    good = {"folds": {"all": {"weights_sha256": "a" * 64}},
            "agreement": {"scans": [{}], "worst": {"main_cord_dice": 0.999, "lesion_in_cord_dice": 0.99}}}
    assert int8_gate(good, weights) == (True, "")
    assert "no int8 model" in int8_gate(None, weights)[1]
    assert "no fold 0" in int8_gate(good, {"0": "a" * 64})[1]
    assert "other weights" in int8_gate(good, {"all": "b" * 64})[1]
    assert "not measured" in int8_gate({**good, "agreement": {"scans": [], "worst": {}}}, weights)[1]
    low = {**good, "agreement": {"scans": [{}], "worst": {"main_cord_dice": 0.989, "lesion_in_cord_dice": 1.0}}}
    assert int8_gate(low, weights) == (False, "the stored int8 model failed the agreement gate (main_cord_dice 0.989 < 0.99 "
                                              "against the reference).")
    assert fold_file_stem(3) == "fold_3" and fold_file_stem("all") == "fold_all"
    for bad in ("../x", "", "all/../1", "1.5"):
        with pytest.raises(InputError):
            fold_file_stem(bad)


def test_cli_quantize_refuses_a_missing_scan_in_one_sentence(tmp_path: Path, capsys):
    from SCIsegLib.cli import main

    code = main(["models", "quantize", "sciseg-demo", "--scans", str(tmp_path / "absent.nii.gz")])
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "absent.nii.gz" in error[0] and "does not exist" in error[0]


def test_agreement_counts_lesions_only_at_the_reference_main_cord():
    reference = np.zeros((20, 10, 10), np.uint8)
    reference[2:18, 4:7, 4:7] = 1
    reference[8:10, 5, 5] = 2
    labels = reference.copy()
    labels[0, 0, 0] = 2  # a lesion far from the cord: not the cord's
    labels[2, 4, 4] = 0
    figures = agreement(reference, labels)
    assert figures["lesion_in_cord_dice"] == 1.0 and figures["lesion_dice"] == pytest.approx(2 * 2 / 5)
    assert figures["main_cord_dice"] == pytest.approx(2 * 143 / (144 + 143), abs=1e-5)


def test_engine_candidates_put_int8_first_only_when_its_gate_passed():
    from SCIsegLib.inference.choice import EngineChoice, engine_candidates

    common = dict(device="auto", cpu_flags=WITH_BF16, cuda=False, cuda_bf16=False, mps=False, openvino=True)
    assert engine_candidates("auto", **common)[0] == EngineChoice("openvino", "bf16")
    assert engine_candidates("auto", **common, int8=True)[:2] == [EngineChoice("openvino", "int8"), EngineChoice("openvino", "bf16")]
    assert engine_candidates("auto", **dict(common, cuda=True), int8=True)[0].runtime == "cuda"  # a GPU first
    assert engine_candidates("openvino", **common, int8=True)[0] == EngineChoice("openvino", "bf16")
    assert engine_candidates("openvino-int8", **common) == [EngineChoice("openvino", "int8"), EngineChoice("reference", "fp32")]
    with pytest.raises(InputError, match="needs OpenVINO"):
        engine_candidates("openvino-int8", **dict(common, openvino=False))


def test_auto_says_why_when_no_int8_version_is_stored(demo_model_path: Path, tmp_path: Path):
    usable, notes = _int8_decision(read_model(demo_model_path), InferenceSettings(engine="auto"), CompiledModelCache(tmp_path))
    assert not usable and notes["int8_note"].startswith("not used: no int8 model is stored")
