"""Hostile models and downloads (issue 14, items 1, 2 and 14): built by code, nothing stored.

* checkpoints: a FULL checkpoint written by nnU-Net's own ``nnUNetTrainer.save_checkpoint`` (optimiser and
  grad-scaler states, ``logging`` of numpy scalars) and the demo checkpoint load with ``weights_only=True``;
  pickles whose ``__reduce__`` calls ``eval``/``os.system``/``subprocess`` are refused and run nothing
  (each would create a marker file: it must not exist);
* installs refuse such models, trust the first sha256 of a known model and warn when it changes;
* downloads without Content-Length that stop early are refused and deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
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
