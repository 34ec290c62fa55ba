"""The model store: layout validation, installs from folders, zips and a local HTTP server."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from local_http import LocalServer
from SCIsegLib import models
from SCIsegLib.errors import DownloadError, ModelError

RESULTS = "nnUNetTrainer__nnUNetPlans__3d_fullres"
SCISEG_DATASET_JSON = {
    "channel_names": {"0": "T2w"},
    "labels": {"background": 0, "sc": [1, 2], "lesion": 2},
    "regions_class_order": [1, 2],
    "file_ending": ".nii.gz",
    "image_orientation": "RPI",
}


def make_model_folder(root: Path, *, folds=("0", "1"), checkpoint="checkpoint_final.pth", dataset_json=None) -> Path:
    """A folder with SCIseg's release layout; checkpoints are tiny real torch checkpoints (the store loads them safely)."""
    import torch

    results = root / "model_release" / RESULTS
    results.mkdir(parents=True)
    (results / "plans.json").write_text(json.dumps({"dataset_name": "Dataset501_SCI", "configurations": {"3d_fullres": {}}}))
    (results / "dataset.json").write_text(json.dumps(dataset_json or SCISEG_DATASET_JSON))
    for fold in folds:
        (results / f"fold_{fold}").mkdir()
        value = float(fold) if fold.isdigit() else -1.0
        torch.save({"network_weights": {"w": torch.full((2,), value)}}, results / f"fold_{fold}" / checkpoint)
    return root / "model_release"


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w") as bundle:
        for file in sorted(folder.rglob("*")):
            bundle.write(file, file.relative_to(folder.parent))
    return archive


def test_read_model_understands_region_labels(tmp_path: Path) -> None:
    info = models.read_model(make_model_folder(tmp_path))
    assert info.folds == [0, 1]
    assert info.checkpoint_name == "checkpoint_final.pth"
    assert info.is_region_based and info.structures == {"sc": [1, 2], "lesion": [2]}
    assert info.orientation == "RPI" and info.configuration == "3d_fullres"


def test_read_model_plain_labels_and_sct_orientation_fallbacks(tmp_path: Path) -> None:
    plain = {"channel_names": {"0": "T2w"}, "labels": {"background": 0, "sc": 1, "lesion": 2}, "file_ending": ".nii.gz"}
    info = models.read_model(make_model_folder(tmp_path, dataset_json=plain))
    assert not info.is_region_based and info.structures == {"sc": [1], "lesion": [2]}
    assert info.orientation == "LPI"  # SCT's default when dataset.json has no image_orientation
    assert models.model_orientation({}, "Dataset525_tSCIRegionBasedLesionSeg") == "AIL"


def test_checkpoint_best_is_the_fallback(tmp_path: Path) -> None:
    info = models.read_model(make_model_folder(tmp_path, folds=("all",), checkpoint="checkpoint_best.pth"))
    assert info.checkpoint_name == "checkpoint_best.pth" and info.folds == ["all"]


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda r: (r / "plans.json").unlink(), "missing plans.json"),
        (lambda r: (r / "dataset.json").unlink(), "missing dataset.json"),
        (lambda r: [p.unlink() for p in r.glob("fold_*/*.pth")] and [p.rmdir() for p in r.glob("fold_*")], "no fold_\\* folder"),
        (lambda r: (r / "fold_1" / "checkpoint_final.pth").unlink(), "fold_1"),
        (lambda r: (r / "dataset.json").write_text("{not json"), "not valid JSON"),
        (lambda r: r.rename(r.parent / "weights"), "no nnU-Net results folder"),
    ],
)
def test_invalid_layouts_say_what_is_missing(tmp_path: Path, damage, words: str) -> None:
    folder = make_model_folder(tmp_path)
    damage(folder / RESULTS)
    with pytest.raises(ModelError, match=words):
        models.read_model(folder)


def test_install_from_folder_and_zip_then_list_and_remove(tmp_path: Path, model_store: Path) -> None:
    folder = make_model_folder(tmp_path / "src")
    from_folder = models.install(str(folder), name="mine")
    assert (model_store / "mine" / RESULTS / "fold_0" / "checkpoint_final.pth").is_file()
    assert from_folder.metadata["source"] == str(folder.resolve())
    archive = zip_folder(folder, tmp_path / "release.zip")
    from_zip = models.install(str(archive))
    assert from_zip.name == "release"
    assert from_zip.metadata["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert from_zip.weights_sha256() == from_folder.weights_sha256()
    assert {"mine", "release"} <= {m.name for m in models.list_models()}
    with pytest.raises(ModelError, match="already installed"):
        models.install(str(archive))
    models.remove("mine")
    assert not (model_store / "mine").exists()
    assert [p.name for p in model_store.iterdir()] == ["release"]  # no temp folders left


def test_install_over_the_network_with_checksum(tmp_path: Path, model_store: Path) -> None:
    archive = zip_folder(make_model_folder(tmp_path / "src"), tmp_path / "model_SCIsegV2.zip")
    payload = archive.read_bytes()
    seen: list[tuple[int, int | None]] = []
    with LocalServer() as server:
        server.served.files["/r/model_SCIsegV2.zip"] = payload
        info = models.install(
            server.url("/r/model_SCIsegV2.zip"),
            name="sciseg-v2",
            expected_sha256=hashlib.sha256(payload).hexdigest(),
            progress=lambda done, total: seen.append((done, total)),
        )
    assert info.metadata["sha256_verified"] is True
    assert seen[-1] == (len(payload), len(payload))
    assert not list((model_store / ".downloads").iterdir())  # the zip is deleted once installed


def test_wrong_checksum_installs_nothing(tmp_path: Path, model_store: Path) -> None:
    archive = zip_folder(make_model_folder(tmp_path / "src"), tmp_path / "m.zip")
    with LocalServer() as server:
        server.served.files["/m.zip"] = archive.read_bytes()
        with pytest.raises(ModelError, match="sha256"):
            models.install(server.url("/m.zip"), expected_sha256="0" * 64)
    assert [p.name for p in model_store.iterdir()] == [".downloads"]
    assert not list((model_store / ".downloads").iterdir())


def test_interrupted_download_resumes_with_range(tmp_path: Path, model_store: Path) -> None:
    archive = zip_folder(make_model_folder(tmp_path / "src"), tmp_path / "m.zip")
    payload = archive.read_bytes()
    with LocalServer() as server:
        server.served.files["/m.zip"] = payload
        server.served.cut_after_bytes = len(payload) // 3
        with pytest.raises(DownloadError, match="run the same command again to resume"):
            models.install(server.url("/m.zip"))
        assert [p.name for p in model_store.iterdir()] == [".downloads"]  # nothing installed
        partial = model_store / ".downloads" / "m.zip.part"
        assert partial.stat().st_size == len(payload) // 3
        info = models.install(server.url("/m.zip"))
        assert server.served.requests[-1]["range"] == f"bytes={len(payload) // 3}-"
    assert info.metadata["sha256"] == hashlib.sha256(payload).hexdigest()


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path, model_store: Path) -> None:
    archive = zip_folder(make_model_folder(tmp_path / "src"), tmp_path / "m.zip")
    payload = archive.read_bytes()
    downloads = model_store / ".downloads"
    downloads.mkdir(parents=True)
    (downloads / "m.zip.part").write_bytes(b"garbage from another file")
    with LocalServer() as server:
        server.served.files["/m.zip"] = payload
        server.served.honour_range = False
        info = models.install(server.url("/m.zip"))
    assert info.metadata["sha256"] == hashlib.sha256(payload).hexdigest()


def test_http_errors_are_one_sentence(model_store: Path) -> None:
    with LocalServer() as server:
        with pytest.raises(DownloadError, match="HTTP 404"):
            models.install(server.url("/missing.zip"))


def test_corrupt_zip_is_refused(tmp_path: Path, model_store: Path) -> None:
    archive = zip_folder(make_model_folder(tmp_path / "src"), tmp_path / "m.zip")
    data = bytearray(archive.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 40] = b"\x00" * 40
    archive.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt|not a valid zip"):
        models.install(str(archive))
    truncated = tmp_path / "t.zip"
    truncated.write_bytes(archive.read_bytes()[:100])
    with pytest.raises(ModelError, match="not a valid zip"):
        models.install(str(truncated))
    assert [p for p in model_store.iterdir()] == []


@pytest.mark.parametrize("evil", ["../escaped.txt", "/etc/evil.txt", "a/../../escaped.txt", "C:/evil.txt"])
def test_zip_with_unsafe_paths_is_refused(tmp_path: Path, model_store: Path, evil: str) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("model/ok.txt", "fine")
        bundle.writestr(zipfile.ZipInfo(evil), "bad")
    with pytest.raises(ModelError, match="unsafe path"):
        models.install(str(archive))
    assert not (tmp_path / "escaped.txt").exists() and not (model_store.parent / "escaped.txt").exists()
    assert list(model_store.iterdir()) == []


def test_zip_bomb_limit(tmp_path: Path) -> None:
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("model/zeros.bin", b"\x00" * 2_000_000)
    with pytest.raises(ModelError, match="expands beyond"):
        models.safe_extract(archive, tmp_path / "out", max_bytes=1_000_000)
    assert not (tmp_path / "out").exists()


def test_unknown_and_uninstalled_names(model_store: Path) -> None:
    with pytest.raises(ModelError, match="sciseg models install sciseg-v2"):
        models.resolve_model("sciseg-v2")
    with pytest.raises(ModelError, match="no model named"):
        models.resolve_model("nope")
    assert models.KNOWN_MODELS["sciseg-v1"].url.endswith("r20240130/model-sci-multisite_r20240130.zip")
    assert models.KNOWN_MODELS["sciseg-v2"].url.endswith("r20240729/model_SCIsegV2_r20240729.zip")


def test_bundled_demo_cannot_be_removed_or_shadowed(model_store: Path) -> None:
    with pytest.raises(ModelError, match="bundled"):
        models.remove("sciseg-demo")
    with pytest.raises(ModelError, match="bundled demo"):
        models.install("whatever", name="sciseg-demo")


def test_cli_models_commands(tmp_path: Path, model_store: Path) -> None:
    archive = zip_folder(make_model_folder(tmp_path / "src"), tmp_path / "m.zip")

    def sciseg(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "SCIsegLib", *arguments], capture_output=True, text=True)

    with LocalServer() as server:
        server.served.files["/m.zip"] = archive.read_bytes()
        installed = sciseg("models", "install", server.url("/m.zip"), "--name", "net")
    assert installed.returncode == 0, installed.stderr
    assert "installed 'net'" in installed.stdout
    listing = sciseg("models", "list")
    assert "net" in listing.stdout and "sciseg-v2" in listing.stdout
    info = json.loads(sciseg("models", "info", "net").stdout)
    assert info["structures"] == {"sc": [1, 2], "lesion": [2]}
    missing = sciseg("models", "install", str(tmp_path / "nothing.zip"))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert sciseg("models", "remove", "net").returncode == 0
    assert sciseg("models", "remove", "net").returncode == 2
