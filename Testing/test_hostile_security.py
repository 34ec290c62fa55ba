"""Hostile models and downloads (issue 14, items 1, 2 and 14): built by code, nothing stored.

* checkpoints: a FULL checkpoint written by nnU-Net's own ``nnUNetTrainer.save_checkpoint`` (optimiser and
  grad-scaler states, ``logging`` of numpy scalars) and the demo checkpoint load with ``weights_only=True``;
  pickles whose ``__reduce__`` calls ``eval``/``os.system``/``subprocess`` are refused and run nothing
  (each would create a marker file: it must not exist);
* installs refuse such models, trust the first sha256 of a known model and warn when it changes;
* downloads without Content-Length that stop early are refused and deleted.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import DEMO_MODEL, REPOSITORY
from local_http import LocalServer
from SCIsegLib import checkpoints, models
from SCIsegLib.checkpoints import UnsafeCheckpointError, load_checkpoint
from SCIsegLib.errors import DownloadError, ModelError

torch = pytest.importorskip("torch")
RESULTS = "nnUNetTrainer__nnUNetPlans__3d_fullres"
DEMO_CHECKPOINT = DEMO_MODEL / RESULTS / "fold_all" / "checkpoint_final.pth"


class _Eval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Popen:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.Popen, (["touch", str(self.marker)],))


def _evil_checkpoints(folder: Path) -> list[tuple[Path, Path]]:
    """(checkpoint, marker) pairs: the marker exists only if loading the checkpoint ran code."""
    made = []
    weights = {"w": torch.zeros(2)}
    variants = {
        "eval_top": lambda m: {"network_weights": weights, "x": _Eval(m)},
        "system_in_optimizer": lambda m: {"network_weights": weights, "optimizer_state": {"state": {0: _System(m)}}},
        "popen_in_logging": lambda m: {"network_weights": weights, "logging": {"mean_fg_dice": [_Popen(m)]}},
    }
    for name, build in variants.items():
        marker = folder / f"ran_{name}"
        path = folder / f"{name}.pth"
        torch.save(build(marker), path)
        made.append((path, marker))
    # protocol 4 (STACK_GLOBAL instead of GLOBAL), in torch's zip layout
    marker = folder / "ran_protocol4"
    path = folder / "protocol4.pth"
    torch.save({"network_weights": weights, "x": _Eval(marker)}, path, pickle_protocol=4)
    made.append((path, marker))
    return made


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint saved by nnU-Net's real ``nnUNetTrainer.save_checkpoint`` after one optimiser step."""
    work = tmp_path_factory.mktemp("trainer")
    script = f"""
import json, os, sys, time
from pathlib import Path
import numpy as np, torch
work = Path({str(work)!r})
for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ[v] = str(work / v)
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
results = Path({str(DEMO_MODEL / RESULTS)!r})
plans = json.loads((results / "plans.json").read_text()); dataset = json.loads((results / "dataset.json").read_text())
plans["continue_training"] = False
preprocessed = work / "nnUNet_preprocessed" / plans["dataset_name"] / "nnUNetPlans_3d_fullres"
preprocessed.mkdir(parents=True); (preprocessed / "case.b2nd").touch()
trainer = nnUNetTrainer(plans, "3d_fullres", "all", dataset, device=torch.device("cpu"))
trainer.initialize()
output = trainer.network(torch.zeros((1, 1, 16, 16, 16)))
(output[0] if isinstance(output, (list, tuple)) else output).mean().backward()
trainer.optimizer.step()
trainer.grad_scaler = torch.amp.GradScaler("cpu")
for key, value in (("mean_fg_dice", np.float64(0.5)), ("train_losses", np.float32(-0.25)), ("val_losses", np.float32(-0.5)),
                   ("lrs", 0.01), ("epoch_start_timestamps", 1.0), ("epoch_end_timestamps", 2.0)):
    trainer.logger.log(key, value, 0)
trainer.logger.log("dice_per_class_or_region", [np.float64(0.25), np.float64(0.75)], 0)
trainer._best_ema = np.float64(0.5)
trainer.save_checkpoint(str(work / "checkpoint_latest.pth"))
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=300)
    return work / "checkpoint_latest.pth"


def test_full_trainer_checkpoint_loads_safely(full_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(full_checkpoint)
    assert set(checkpoint) >= {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema", "init_args"}
    assert checkpoint["optimizer_state"]["state"], "the optimiser step left momentum buffers"
    assert checkpoint["grad_scaler_state"]["scale"] == 65536.0
    assert checkpoint["logging"]["mean_fg_dice"] == [0.5] and isinstance(checkpoint["logging"]["mean_fg_dice"][0], np.float64)
    assert checkpoint["logging"]["dice_per_class_or_region"] == [[0.25, 0.75]]
    assert checkpoint["_best_ema"] == 0.5
    assert isinstance(checkpoint["init_args"]["device"], torch.device)
    # the same bytes as nnU-Net loads them (weights_only=False) give the same weights
    reference = torch.load(full_checkpoint, map_location="cpu", weights_only=False)
    for key, tensor in reference["network_weights"].items():
        assert torch.equal(tensor, checkpoint["network_weights"][key])
    # checkpoints pickled under numpy 1 name numpy.core.multiarray.scalar: they load too
    old_spelling = tmp_path / "numpy1.pth"
    with zipfile.ZipFile(full_checkpoint) as source, zipfile.ZipFile(old_spelling, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            target.writestr(info, data)
    assert "numpy.core.multiarray.scalar" in checkpoints.checkpoint_globals(old_spelling)
    assert load_checkpoint(old_spelling)["_best_ema"] == 0.5


def test_demo_checkpoint_loads_safely() -> None:
    checkpoint = load_checkpoint(DEMO_CHECKPOINT)
    assert checkpoint["network_weights"] and checkpoint["trainer_name"] == "nnUNetTrainer"


def test_malicious_pickles_are_refused_and_run_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path, marker in _evil_checkpoints(tmp_path):
        with pytest.raises(UnsafeCheckpointError, match=r"could run code when loaded, so it was not loaded"):
            load_checkpoint(path)
        assert not marker.exists(), f"{path.name} ran code"
    # second line of defence: without the opcode scan, torch's weights_only unpickler refuses them too
    monkeypatch.setattr(checkpoints, "checkpoint_globals", lambda path: set())
    again = tmp_path / "again"
    again.mkdir()
    for path, marker in _evil_checkpoints(again):
        with pytest.raises(UnsafeCheckpointError, match="could run code"):
            load_checkpoint(path)
        assert not marker.exists()


def test_damaged_checkpoints_are_one_sentence(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(DEMO_CHECKPOINT.read_bytes()[:5000])
    plain_pickle = tmp_path / "plain.pth"
    plain_pickle.write_bytes(pickle.dumps({"network_weights": {}}))
    for path in (truncated, plain_pickle):
        with pytest.raises(ModelError, match="reinstall the model"):
            load_checkpoint(path)


def _model_zip(folder: Path, checkpoint_source: Path | None, evil_marker: Path | None = None) -> Path:
    """A release-like zip whose fold_0 checkpoint is ``checkpoint_source`` or a malicious one."""
    results = folder / "release" / RESULTS
    (results / "fold_0").mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        (results / name).write_bytes((DEMO_MODEL / RESULTS / name).read_bytes())
    target = results / "fold_0" / "checkpoint_final.pth"
    if evil_marker is not None:
        torch.save({"network_weights": {}, "x": _Eval(evil_marker)}, target)
    else:
        target.write_bytes(checkpoint_source.read_bytes())
    archive = folder / "model.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in sorted((folder / "release").rglob("*")):
            bundle.write(file, file.relative_to(folder))
    return archive


def test_install_refuses_a_model_that_would_run_code(tmp_path: Path, model_store: Path) -> None:
    marker = tmp_path / "ran_install"
    archive = _model_zip(tmp_path / "evil", None, marker)
    with LocalServer() as server:
        server.served.files["/evil.zip"] = archive.read_bytes()
        with pytest.raises(UnsafeCheckpointError, match="could run code"):
            models.install(server.url("/evil.zip"), name="evil")
    assert not marker.exists()
    assert sorted(p.name for p in model_store.iterdir()) == [".downloads"]  # no model, no staging folder
    assert not list((model_store / ".downloads").iterdir())  # the unusable download is deleted
    # the CLI says it in one sentence, exit 2, and the child ran nothing either
    run = subprocess.run([sys.executable, "-m", "SCIsegLib", "models", "install", str(archive), "--name", "evil"],
                         capture_output=True, text=True, timeout=120, cwd=REPOSITORY,
                         env={**os.environ, "PYTHONPATH": str(REPOSITORY), "SCISEG_MODELS_DIR": str(model_store)})
    assert run.returncode == 2, run.stderr
    assert "could run code when loaded" in run.stderr and "Traceback" not in run.stderr
    assert not marker.exists() and not (model_store / "evil").exists()


def test_known_model_digest_is_trusted_on_first_use(tmp_path: Path, model_store: Path, monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    first = _model_zip(tmp_path / "a", DEMO_CHECKPOINT).read_bytes()
    (tmp_path / "b").mkdir()
    second_zip = _model_zip(tmp_path / "b", DEMO_CHECKPOINT)
    with zipfile.ZipFile(second_zip, "a") as bundle:
        bundle.writestr("release/NOTE.txt", "re-uploaded")
    second = second_zip.read_bytes()
    with LocalServer() as server:
        known = models.KnownModel(url=server.url("/model_SCIsegV2.zip"), description="test release")
        monkeypatch.setitem(models.KNOWN_MODELS, "sciseg-v2", known)
        server.served.files["/model_SCIsegV2.zip"] = first
        info = models.install("sciseg-v2")
        assert info.metadata["sha256_trust"] == "first use"
        record = json.loads((model_store / models.TRUSTED_DIGESTS_FILE).read_text())
        assert record["sciseg-v2"]["sha256"] == hashlib.sha256(first).hexdigest()
        assert models.install("sciseg-v2", force=True).metadata["sha256_trust"] == "matches first use"
        server.served.files["/model_SCIsegV2.zip"] = second
        with caplog.at_level(logging.WARNING, logger="SCIseg"):
            info = models.install("sciseg-v2", force=True)
        assert info.metadata["sha256_trust"] == "differs from first use"
        assert "differs from the one first installed" in caplog.text
        assert json.loads((model_store / models.TRUSTED_DIGESTS_FILE).read_text())["sciseg-v2"]["sha256"] == record["sciseg-v2"]["sha256"]
        # a pinned digest is enforced
        monkeypatch.setitem(models.KNOWN_MODELS, "sciseg-v2", models.KnownModel(known.url, "pinned", sha256=hashlib.sha256(first).hexdigest()))
        with pytest.raises(ModelError, match="expected"):
            models.install("sciseg-v2", force=True)
    assert not list((model_store / ".downloads").iterdir())


def test_download_without_length_that_stops_early_is_refused_and_deleted(tmp_path: Path, model_store: Path) -> None:
    payload = _model_zip(tmp_path / "m", DEMO_CHECKPOINT).read_bytes()
    with LocalServer() as server:
        server.served.files["/m.zip"] = payload
        server.served.send_length = False
        server.served.cut_after_bytes = len(payload) // 2
        with pytest.raises(DownloadError, match="did not announce its size.*deleted"):
            models.install(server.url("/m.zip"))
        assert not list((model_store / ".downloads").iterdir())
        assert sorted(p.name for p in model_store.iterdir()) == [".downloads"]
        info = models.install(server.url("/m.zip"))  # the whole body without a length: the zip is complete
    assert info.metadata["sha256"] == hashlib.sha256(payload).hexdigest()
    assert not list((model_store / ".downloads").iterdir())


def test_finetune_loads_checkpoints_safely() -> None:
    source = (REPOSITORY / "SCIsegLib" / "training" / "finetune.py").read_text()
    assert "torch.load" not in source and source.count("load_checkpoint(") >= 3


def test_nnunet_own_loads_are_forced_to_weights_only(full_checkpoint: Path, tmp_path: Path) -> None:
    """``weights_only_everywhere`` (used for nnU-Net's file-name-only resume): its ``weights_only=False`` is overridden."""
    with checkpoints.weights_only_everywhere():
        assert torch.load(full_checkpoint, map_location="cpu", weights_only=False)["_best_ema"] == 0.5
        for path, marker in _evil_checkpoints(tmp_path):
            with pytest.raises(pickle.UnpicklingError):
                torch.load(path, map_location="cpu", weights_only=False)
            assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


# --- issue 20 item 1: names in plans.json are code nnU-Net runs ---------------------------------------------------

def _planted_model(folder: Path, marker: Path, edit: str = "nonlin") -> Path:
    """The demo model with one name in its plans (or dataset.json) replaced by code; returns the model folder.

    ``nonlin``: ``os.system`` with ``nonlin_kwargs={"command": "touch MARKER"}`` (nnU-Net's U-Net calls
    ``nonlin(**nonlin_kwargs)`` for every convolution: the command runs while the network is built).
    """
    model = folder / "planted"
    shutil.copytree(DEMO_MODEL, model)
    plans_file = model / RESULTS / "plans.json"
    plans = json.loads(plans_file.read_text())
    configuration = plans["configurations"]["3d_fullres"]
    architecture = configuration["architecture"]
    if edit == "nonlin":
        architecture["arch_kwargs"].update(nonlin="os.system", nonlin_kwargs={"command": f"touch {marker}"})
    elif edit == "network":
        architecture["network_class_name"] = "subprocess.Popen"
    elif edit == "extra_import":
        architecture["arch_kwargs"]["args"] = "builtins.exec"
        architecture["_kw_requires_import"].append("args")
    elif edit == "resampling":
        configuration["resampling_fn_data"] = "load_pickle"  # a star-imported helper inside nnU-Net's resampling modules
    elif edit == "inherited":
        plans["configurations"]["evil"] = {"inherits_from": "3d_fullres", "architecture": {
            **architecture, "network_class_name": "os.system"}}
    elif edit == "reader":
        dataset_file = model / RESULTS / "dataset.json"
        dataset_file.write_text(json.dumps({**json.loads(dataset_file.read_text()), "overwrite_image_reader_writer": "rmtree"}))
    plans_file.write_text(json.dumps(plans))
    return model


def test_planted_plans_run_code_in_nnunet(tmp_path: Path) -> None:
    """The attack is real: nnU-Net's own ``get_network_from_plans`` on the planted plans runs the command."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    marker = tmp_path / "ran_nnunet"
    plans = json.loads((_planted_model(tmp_path, marker) / RESULTS / "plans.json").read_text())
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    with pytest.raises(Exception):  # noqa: B017 - os.system returns 0, which is no torch module
        get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                               architecture["_kw_requires_import"], 1, 2)
    assert marker.exists(), "nnU-Net built the planted plans without running the command: the test proves nothing"


@pytest.mark.parametrize("edit, named", [("nonlin", "os.system"), ("network", "subprocess.Popen"),
                                         ("extra_import", "builtins.exec"), ("resampling", "load_pickle"),
                                         ("inherited", "os.system"), ("reader", "rmtree")])
def test_models_naming_code_are_refused_at_every_load(tmp_path: Path, model_store: Path, edit: str, named: str) -> None:
    marker = tmp_path / "ran"
    model = _planted_model(tmp_path, marker, edit)
    with pytest.raises(checkpoints.UnsafePlansError, match=f"names '{named}' as .*not one of the network parts"):
        models.read_model(model)  # --model PATH, the store's names, cohort tasks, finetune's base all read here
    with pytest.raises(checkpoints.UnsafePlansError, match=named):
        models.install(str(model), name="planted")
    assert not (model_store / "planted").exists() and not marker.exists()
    with pytest.raises(checkpoints.UnsafePlansError):
        models.resolve_model(str(model))


def test_plans_swapped_after_the_model_was_read_are_refused_by_the_predictor(tmp_path: Path) -> None:
    """The predictor reads plans.json again when it builds the network: a file changed since ``read_model`` is caught."""
    from SCIsegLib.inference import InferenceSettings, NnUNetEngine

    marker = tmp_path / "ran_predictor"
    model = tmp_path / "swapped"
    shutil.copytree(DEMO_MODEL, model)
    info = models.read_model(model)  # checked and accepted
    planted = _planted_model(tmp_path, marker)
    shutil.copy2(planted / RESULTS / "plans.json", model / RESULTS / "plans.json")  # swapped afterwards
    with pytest.raises(checkpoints.UnsafePlansError, match="os.system"):
        NnUNetEngine(info, InferenceSettings(device="cpu"))  # builds nnU-Net's predictor from the files
    assert not marker.exists()


def test_cli_refuses_planted_plans_before_building_anything(tmp_path: Path, model_store: Path) -> None:
    import SimpleITK as sitk

    marker = tmp_path / "ran_cli"
    model = _planted_model(tmp_path, marker)
    image = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((24, 24, 24), dtype=np.float32)), str(image))
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "SCISEG_MODELS_DIR": str(model_store)}
    for command in (["segment", str(image), "--model", str(model), "-o", str(tmp_path / "out"), "--device", "cpu"],
                    ["queue", "score", str(image), "--model", str(model), "--queue", str(tmp_path / "q.json")],
                    ["run", str(image), "--model", str(model), "-o", str(tmp_path / "run"), "--progress", "none"],
                    ["finetune", "--base", str(model), "--dataset", str(tmp_path / "Dataset001_X"), "--name", "t",
                     "--work", str(tmp_path / "work")],
                    ["models", "install", str(model), "--name", "planted"]):
        run = subprocess.run([sys.executable, "-m", "SCIsegLib", *command], capture_output=True, text=True, timeout=120,
                             cwd=REPOSITORY, env=environment)
        assert run.returncode == 2, (command, run.stderr)
        assert "names 'os.system' as 'nonlin'" in run.stderr and "Traceback" not in run.stderr
        assert not marker.exists(), command


def test_checkpoints_naming_code_are_refused(tmp_path: Path) -> None:
    plans = json.loads((_planted_model(tmp_path, tmp_path / "ran") / RESULTS / "plans.json").read_text())
    weights = {"w": torch.zeros(2)}
    for name, content in (("plans", {"network_weights": weights, "trainer_name": "nnUNetTrainer",
                                     "init_args": {"plans": plans, "configuration": "3d_fullres"}}),
                          ("trainer", {"network_weights": weights, "trainer_name": "os"})):
        torch.save(content, tmp_path / f"{name}.pth")
        with pytest.raises(checkpoints.UnsafePlansError, match="os"):
            load_checkpoint(tmp_path / f"{name}.pth")


def test_the_demo_and_nnunet_planners_pass_the_plans_check() -> None:
    """The allow-list holds what nnU-Net's own planners write (2d and 3d, plain and residual encoders)."""
    checkpoints.check_plans_safe(json.loads((DEMO_MODEL / RESULTS / "plans.json").read_text()), "demo")
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
    from nnunetv2.utilities.network_initialization import InitWeights_He  # noqa: F401 - nnU-Net importable
    for network in (PlainConvUNet, ResidualEncoderUNet):
        name = f"{network.__module__}.{network.__name__}"
        assert name in checkpoints.ALLOWED_NETWORKS
    for layer in (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d,
                  torch.nn.BatchNorm3d, torch.nn.Dropout3d, torch.nn.LeakyReLU, torch.nn.ReLU):
        assert f"{layer.__module__}.{layer.__name__}" in checkpoints.ALLOWED_LAYERS
        assert f"torch.nn.{layer.__name__}" in checkpoints.ALLOWED_LAYERS


# --- issue 20 item 7: the pickle scan follows the pickle machine's stack ----------------------------------------

def _decoy_pickle(protocol: int, marker: Path) -> bytes:
    """A pickle that calls ``os.system`` through STACK_GLOBAL after pushing decoy strings it pops or memoises.

    The old scan took the last two strings seen (``collections``/``OrderedDict``) as STACK_GLOBAL's operands.
    """
    frame = [pickle.PROTO + bytes([protocol])]
    def string(text: str) -> bytes:
        raw = text.encode()
        return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw
    body = (string("os") + string("system")
            + string("collections") + string("OrderedDict") + pickle.POP + pickle.POP
            + pickle.STACK_GLOBAL
            + string(f"touch {marker}") + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    return b"".join(frame) + body


def _memo_decoy_pickle(protocol: int, marker: Path) -> bytes:
    """Names kept in the memo, decoys pushed last and dropped with POP_MARK, the real names fetched back by BINGET."""
    def string(text: str) -> bytes:
        raw = text.encode()
        return pickle.SHORT_BINUNICODE + bytes([len(raw)]) + raw
    body = (string("os") + pickle.BINPUT + b"\x00" + pickle.POP + string("system") + pickle.BINPUT + b"\x01" + pickle.POP
            + pickle.MARK + string("torch") + string("device") + pickle.POP_MARK
            + pickle.BINGET + b"\x00" + pickle.BINGET + b"\x01" + pickle.STACK_GLOBAL
            + string(f"touch {marker}") + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP)
    return pickle.PROTO + bytes([protocol]) + body


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_scan_follows_the_stack(tmp_path: Path, protocol: int) -> None:
    for build in (_decoy_pickle, _memo_decoy_pickle):
        marker = tmp_path / f"ran_{build.__name__}"
        data = build(protocol, marker)
        assert "os.system" in checkpoints._pickle_globals(data), build.__name__
        archive = tmp_path / f"{build.__name__}.pth"  # torch's zip layout: the install-time scan reads it
        with zipfile.ZipFile(archive, "w") as bundle:
            bundle.writestr("archive/data.pkl", data)
        assert "os.system" in checkpoints.checkpoint_globals(archive)
        with pytest.raises(UnsafeCheckpointError, match="os.system"):
            load_checkpoint(archive)
        assert not marker.exists()
    # what pickle itself writes at each protocol: every global found, nothing unknown
    payload = {"w": np.zeros(3), "s": np.float64(1.5), "d": collections.OrderedDict(a=1), "t": ("a", "b"), "n": [np.int64(2)]}
    found = checkpoints._pickle_globals(pickle.dumps(payload, protocol=protocol))
    assert "collections.OrderedDict" in found and "\0unknown" not in found
    assert any(name.endswith("multiarray.scalar") for name in found)


# --- issue 20 item 6: finetune's work folder -------------------------------------------------------------------

def _planted_work_folder(tmp_path: Path, marker: Path, plant: str) -> tuple[Path, Path]:
    """(raw dataset folder, work folder) where the work folder holds nnU-Net's preprocessed layout with a plant."""
    dataset = tmp_path / "raw" / "Dataset777_Planted"
    dataset.mkdir(parents=True)
    dataset_json = (DEMO_MODEL / RESULTS / "dataset.json").read_text()
    (dataset / "dataset.json").write_text(dataset_json)
    preprocessed = tmp_path / "work" / "preprocessed" / dataset.name
    (preprocessed / "nnUNetPlans_3d_fullres").mkdir(parents=True)
    plans = (_planted_model(tmp_path, marker) if plant == "plans" else DEMO_MODEL) / RESULTS / "plans.json"
    (preprocessed / "nnUNetPlans.json").write_text(json.dumps({**json.loads(plans.read_text()), "dataset_name": dataset.name}))
    (preprocessed / "dataset.json").write_text(dataset_json)
    properties = {"spacing": [1.0, 1.0, 1.0], "class_locations": {1: np.zeros((0, 4), np.int64)}}
    if plant == "pickle":
        properties["x"] = _System(marker)
    (preprocessed / "nnUNetPlans_3d_fullres" / "case_000.pkl").write_bytes(pickle.dumps(properties))
    return dataset, tmp_path / "work"


@pytest.mark.parametrize("plant, words", [("pickle", "'posix.system'.*could run code when unpickled"),
                                          ("plans", "names 'os.system' as 'nonlin'")])
def test_finetune_refuses_a_planted_work_folder(tmp_path: Path, model_store: Path, plant: str, words: str) -> None:
    from SCIsegLib.training.finetune import finetune

    marker = tmp_path / "ran_finetune"
    dataset, work = _planted_work_folder(tmp_path, marker, plant)
    with pytest.raises(ModelError, match=words):
        finetune(models.read_model(DEMO_MODEL), dataset, name="tuned", work_dir=work, epochs=1, device="cpu")
    assert not marker.exists() and not (model_store / "tuned").exists()


def test_preprocessed_properties_of_nnunet_pass_the_scan(tmp_path: Path) -> None:
    """What nnU-Net's preprocessor writes (``write_pickle`` of a case's properties) passes, at protocols 2-5."""
    from batchgenerators.utilities.file_and_folder_operations import write_pickle

    properties = {"spacing": [1.0, 0.5, 0.5], "shape_before_cropping": (40, 32, 32), "bbox_used_for_cropping": [[0, 40], [1, 31], [np.int64(2), np.int64(30)]],
                  "class_locations": {1: np.zeros((5, 4), np.int64), 2: np.zeros((0, 4), np.int64)},
                  "sitk_stuff": {"spacing": (0.5, 0.5, 1.0), "origin": (0.0, 0.0, 0.0), "direction": (1.0,) * 9}}
    write_pickle(properties, str(tmp_path / "default.pkl"))
    checkpoints.check_pickle_file(tmp_path / "default.pkl")
    for protocol in (2, 3, 4, 5):
        (tmp_path / f"p{protocol}.pkl").write_bytes(pickle.dumps(properties, protocol=protocol))
        checkpoints.check_pickle_file(tmp_path / f"p{protocol}.pkl")


# --- issue 20 item 5: the embedded Dask cluster admits only its run --------------------------------------------

def test_embedded_cluster_admits_only_the_run(tmp_path: Path) -> None:
    """Another local process (no certificate, plain TCP, or a certificate of its own) cannot connect and submit."""
    from distributed import Client
    from distributed.security import Security

    from SCIsegLib.cohort.cluster import open_client, plan_cluster

    marker = tmp_path / "ran_foreign_task"
    with open_client(plan_cluster(None, 1, "cpu", "1GiB"), tmp_path / "dask") as client:
        address = client.scheduler.address
        assert client.submit(sum, [1, 2]).result(timeout=60) == 3  # the run's own client works
        port = address.rsplit(":", 1)[1]
        for foreign, security in ((address, None), (f"tcp://127.0.0.1:{port}", None), (address, Security.temporary())):
            with pytest.raises(Exception):  # noqa: B017 - TLS, handshake or timeout errors: each one a refusal
                with Client(foreign, security=security, timeout=5) as intruder:
                    intruder.submit(Path.touch, marker).result(timeout=10)
            assert not marker.exists(), foreign
        assert client.submit(sum, [3, 4]).result(timeout=60) == 7  # the run goes on
        assert address.startswith("tls://127.0.0.1:"), address


# --- issue 20 item 8: model installs take no links, downloads have a cap and need the disk space ----------------

def test_install_from_a_folder_refuses_symbolic_links(tmp_path: Path, model_store: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    for where in ("file", "folder"):
        model = tmp_path / f"linked_{where}"
        shutil.copytree(DEMO_MODEL, model)
        if where == "file":
            (model / RESULTS / "notes.txt").symlink_to(secret)
        else:
            (model / RESULTS / "extra").symlink_to(tmp_path, target_is_directory=True)
        with pytest.raises(ModelError, match=r"contains a symbolic link \(.*\); refusing to install it"):
            models.install(str(model), name=f"linked-{where}")
        assert not (model_store / f"linked-{where}").exists()
    assert not [p for p in model_store.rglob("*") if p.is_file()]


def test_downloads_are_capped_and_checked_against_free_disk(tmp_path: Path, model_store: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from SCIsegLib import download

    payload = _model_zip(tmp_path / "m", DEMO_CHECKPOINT).read_bytes()
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", len(payload) // 4)
    downloads = model_store / ".downloads"
    with LocalServer() as server:
        server.served.files["/m.zip"] = payload
        with pytest.raises(DownloadError, match="announces .* MB, more than the .* MB a model download may take; nothing was written"):
            models.install(server.url("/m.zip"))
        assert not [p for p in downloads.rglob("*") if p.is_file()]
        server.served.send_length = False  # a stream without a size is stopped at the cap, not written whole
        written: list[int] = []
        with pytest.raises(DownloadError, match="sent more than the .* MB.*stopped and deleted"):
            download.download_file(server.url("/m.zip"), downloads / "m.zip", progress=lambda done, total: written.append(done))
        assert max(written) <= len(payload) // 4 and not [p for p in downloads.rglob("*") if p.is_file()]
        server.served.send_length = True
        monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 1 << 40)
        real_usage = shutil.disk_usage
        monkeypatch.setattr(download.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=len(payload)))
        with pytest.raises(DownloadError, match=r"needs \d+ MB but .* has \d+ MB free"):
            models.install(server.url("/m.zip"))
        assert not [p for p in downloads.rglob("*") if p.is_file()] and not (model_store / "m").exists()
        monkeypatch.setattr(download.shutil, "disk_usage", real_usage)
        assert models.install(server.url("/m.zip")).name == "m"  # the same model installs when it fits


# --- issue 20 items 3 and 10: the review front ------------------------------------------------------------------

def _front_peak_mb(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) of a process in MB, from /proc (VmRSS, VmHWM)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _send_huge_websocket_message(port: int, path: str, cookie: str, size: int) -> str:
    """Open a websocket by hand and stream one binary frame of ``size`` bytes (zeros, 1 MB at a time, nothing held):
    what the front answered ("closed" when it dropped the connection, else what it sent back)."""
    import base64
    import socket
    import struct

    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nCookie: {cookie}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as link:
        link.sendall(request.encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += link.recv(4096)
        assert answer.startswith(b"HTTP/1.1 101"), answer[:200]
        block = bytes(1 << 20)
        try:
            link.sendall(b"\x82\xff" + struct.pack(">Q", size) + b"\0\0\0\0")  # masked with a zero key: payload as is
            for start in range(0, size, len(block)):
                link.sendall(block[: min(len(block), size - start)])
            reply = link.recv(64)
        except (BrokenPipeError, ConnectionResetError):
            return "closed"
        return "closed" if not reply or reply[0] & 0x0F == 0x8 else f"answered {reply[:16]!r}"


def _post_huge_body(port: int, path: str, cookie: str, size: int) -> str:
    """POST ``size`` bytes (streamed, 1 MB at a time); the status the front answered, or "closed"."""
    import socket

    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\nContent-Length: {size}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n")
    block = bytes(1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as link:
        link.sendall(head.encode())
        try:
            for start in range(0, size, len(block)):
                link.sendall(block[: min(len(block), size - start)])
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = link.recv(64)
        except ConnectionResetError:
            return "closed"
    return answer.split()[1].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"


def test_review_front_refuses_huge_websocket_messages_with_flat_memory(tmp_path: Path) -> None:
    """Three 300 MB messages from a client holding the token: each connection is dropped from the frame's header, a
    300 MB POST gets 413, and the front's resident memory stays flat (it buffered them before). Its figures are printed."""
    from test_review_front import TOKEN, FrontProcess, Tab

    front = FrontProcess(tmp_path)
    try:
        tab = Tab()
        status, body, url = tab.get(f"{front.url}/?secret={TOKEN}")
        assert status == 200, body
        session_id = url.split("/s/")[1].split("/")[0]
        cookie = "; ".join(f"{c.name}={c.value}" for c in tab.jar)
        before, _ = _front_peak_mb(front.process.pid)
        outcomes = [_send_huge_websocket_message(front.port, f"/s/{session_id}/ws", cookie, 300 * 1024**2) for _ in range(3)]
        outcomes.append(_post_huge_body(front.port, f"/s/{session_id}/upload", cookie, 300 * 1024**2))
        after, peak = _front_peak_mb(front.process.pid)
        print(f"review front resident memory: {before:.0f} MB before, {after:.0f} MB after three 300 MB messages, "
              f"peak {peak:.0f} MB")
        assert outcomes == ["closed"] * 3 + ["413"]
        assert peak - before < 40 and after - before < 40, (before, after, peak)
        status, body, _ = tab.get(url)  # the front and the session still serve the tab
        assert status == 200 and body.startswith("worker ")
    finally:
        front.stop()


def test_review_front_sends_security_headers_and_answers_a_request_without_host_with_400(tmp_path: Path) -> None:
    import socket

    from SCIsegLib.review.front import SECURITY_HEADERS
    from test_review_front import TOKEN, FrontProcess, _raw

    for token in (TOKEN, None):
        folder = tmp_path / ("token" if token else "loopback")
        folder.mkdir()
        front = FrontProcess(folder, token=token)
        try:
            target = f"/?secret={TOKEN}" if token else "/"
            status, headers, _ = _raw(front.port, target, headers="Sec-Fetch-Dest: document\r\n")
            assert status == 302, status
            for name, value in SECURITY_HEADERS.items():
                assert headers.get(name.lower()) == value, name
            session = headers["location"]
            _, headers, _ = _raw(front.port, f"/{session}")
            assert headers.get("referrer-policy") == "no-referrer" and "frame-ancestors 'none'" in headers["content-security-policy"]
            for request in (b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"):
                with socket.create_connection(("127.0.0.1", front.port), timeout=30) as link:
                    link.sendall(request)
                    answer = b""
                    while chunk := link.recv(65536):
                        answer += chunk
                assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer[:100]
        finally:
            front.stop()
        log = front.log.read_text()
        assert "Traceback" not in log and "refused a malformed request" in log, log[-2000:]


def test_a_5000_character_case_id_is_refused_as_a_case_id(tmp_path: Path) -> None:
    """Not an OSError (ENAMETOOLONG) from the file system: the review app's refusal, which it shows the rater."""
    from SCIsegLib.review.paths import PathRefused, case_image_path, prediction_paths

    case_id = "sub-01/anat/" + "a" * 5000
    for lookup in (case_image_path, prediction_paths):
        with pytest.raises(PathRefused, match="a case id of 5012 characters is not a case id of this dataset"):
            lookup(tmp_path, case_id)


def test_finetune_refuses_a_dataset_json_naming_code_before_nnunet_reads_it(tmp_path: Path, model_store: Path) -> None:
    from SCIsegLib.training.finetune import finetune

    dataset, work = _planted_work_folder(tmp_path, tmp_path / "ran", "none")
    dataset_file = dataset / "dataset.json"
    dataset_file.write_text(json.dumps({**json.loads(dataset_file.read_text()), "overwrite_image_reader_writer": "load_pickle"}))
    shutil.rmtree(work)
    with pytest.raises(checkpoints.UnsafePlansError, match=r"dataset.json names 'load_pickle' as overwrite_image_reader_writer"):
        finetune(models.read_model(DEMO_MODEL), dataset, name="tuned", work_dir=work, epochs=1, device="cpu")
    assert not work.exists()
