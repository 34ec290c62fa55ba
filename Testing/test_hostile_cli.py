"""A hostile and careless user's inputs to every subcommand (issue 14): built by code, nothing stored.

Each refused case asserts exit code 2, its one sentence (no traceback), and that nothing at all was
written (every file and folder under the test's folder is compared before and after). The accepted
cases (one prediction and one reference, a cord without lesion, consensus JSON) assert their outputs,
and formula-like text reaches no CSV or xlsx cell as a formula. The kill test SIGKILLs ``sciseg export``
at random moments and checks every visible set of "latest" copies.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPOSITORY
from SCIsegLib import cli
from SCIsegLib.errors import InputError
from SCIsegLib.evaluation import expand_inputs
from SCIsegLib.training.export import FILES, VERSIONS, publishing_marker


def _write(array: np.ndarray, path: Path, spacing: tuple[float, float, float] = (0.8, 0.8, 1.5)) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _seg_nrrd(labels_zyx: np.ndarray, spacing: tuple[float, float, float], path: Path) -> Path:
    """A Slicer ``.seg.nrrd`` (slicerio) with segments spinal_cord (label 1) and lesion (2) at ``spacing`` mm (x, y, z)."""
    import slicerio

    labels_ijk = labels_zyx.transpose(2, 1, 0)
    segmentation = slicerio.create_segmentation(labels_ijk.shape, np.diag([*spacing, 1.0]))
    slicerio.add_segment(segmentation, labels_ijk == 1, {"id": "spinal_cord", "name": "Spinal cord"})
    slicerio.add_segment(segmentation, labels_ijk == 2, {"id": "lesion", "name": "Lesion"})
    slicerio.write_segmentation(str(path), segmentation)
    return path


def build_corpus(folder: Path) -> dict[str, Path]:
    """Good masks of one small scan and many bad files, named by what is wrong with them."""
    folder.mkdir(parents=True)
    shape = (12, 16, 14)
    cord = np.zeros(shape, np.uint8)
    cord[:, 6:10, 5:9] = 1
    lesion = np.zeros(shape, np.uint8)
    lesion[5:8, 7:9, 6:8] = 1
    labels = cord.copy()
    labels[lesion > 0] = 2
    files = {
        "t2": _write((np.random.default_rng(0).random(shape) * 100).astype(np.float32), folder / "sub-01_T2w.nii.gz"),
        "cord": _write(cord, folder / "sub-01_T2w_sc_seg.nii.gz"),
        "lesion": _write(lesion, folder / "sub-01_T2w_lesion_seg.nii.gz"),
        "labels": _write(labels, folder / "sub-01_T2w_dseg.nii.gz"),
        "ref": _write(cord, folder / "reference_A.nii.gz"),
        "pred": _write(cord[:, ::-1].copy(), folder / "prediction_B.nii.gz"),
        "nonbinary": _write(cord * 7, folder / "nonbinary.nii.gz"),
        "mask2d": _write(cord[0], folder / "mask2d.nii.gz"),
        "othergrid": _write(np.zeros((5, 6, 7), np.uint8), folder / "othergrid.nii.gz"),
        # the same voxels, origin and direction at twice the voxel size: another grid (issue 20 item 4)
        "cord_2x": _write(cord, folder / "cord_2x.nii.gz", (1.6, 1.6, 3.0)),
        "labels_2x": _write(labels, folder / "labels_2x_dseg.nii.gz", (1.6, 1.6, 3.0)),
    }
    noise = (np.random.default_rng(1).random(shape) * 100).astype(np.float32)
    files["tiny_voxels"] = _write(noise, folder / "tiny_voxels.nii.gz", (0.001, 0.001, 50.0))  # 0.014 x 0.016 mm in plane
    files["voxels_1e-30"] = _write(noise, folder / "voxels_1e-30.nii.gz", (1e-30, 1e-30, 1e-30))
    files["seg_nrrd_2x"] = _seg_nrrd(labels, (1.6, 1.6, 3.0), folder / "labels_2x.seg.nrrd")
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(cord)] * 2), str(folder / "mask4d.nii.gz"))
    files["mask4d"] = folder / "mask4d.nii.gz"
    packed = files["labels"].read_bytes()
    unpacked = gzip.decompress(packed)
    for share in (10, 50, 90):
        (folder / f"cut{share}_dseg.nii.gz").write_bytes(packed[: len(packed) * share // 100])
        files[f"cut{share}"] = folder / f"cut{share}_dseg.nii.gz"
    (folder / "cut_raw_dseg.nii").write_bytes(unpacked[: 352 + (len(unpacked) - 352) // 2])
    files["cut_raw"] = folder / "cut_raw_dseg.nii"
    texts = {
        "text": ("notes.txt", b"just text\n"), "text_nii": ("text.nii.gz", b"hello, not an image"),
        "empty": ("empty.nii.gz", b""), "binary": ("binary.bin", bytes(range(256)) * 4),
        "csv_a": ("a.csv", b"subject,volume [mm3]\ns1,1\ns2,2\ns3,3\n"),
        "csv_b": ("b.csv", b"subject,volume [mm3]\ns1,1.5\ns2,2.5\ns3,2\n"),
        "csv_text": ("b_text.csv", b"subject,volume [mm3]\ns1,abc\ns2,def\ns3,ghi\n"),
        "csv_nosub": ("nosub.csv", b"x,y\n1,2\n"), "csv_bin": ("bin.csv", b"\x00\xff\xfe" * 100),
        "clinical": ("clinical.tsv", b"participant_id\tais\ns1\t1\ns2\t2\ns3\t3\n"),
        "bad_queue": ("queue.json", b"{not json"), "list_queue": ("list.json", b"[1, 2]"),
        "groups_nopid": ("groups.tsv", b"site\nA\n"),
        "qc_decisions_5": ("qc_decisions.json", b'{"decisions": 5}'), "qc_fails_5": ("qc_fails.json", b'{"fails": 5}'),
    }
    for key, (name, data) in texts.items():
        (folder / name).write_bytes(data)
        files[key] = folder / name
    (folder / "folder").mkdir()
    files["folder"] = folder / "folder"
    return files


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    files = build_corpus(root / "in")
    bids = root / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    shutil.copy(files["t2"], bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    files.update(root=root, bids=bids, source=bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz", out=root / "out")
    return files


def _export(w, *more: str) -> list[str]:
    return ["export", "--root", str(w["bids"]), "--source", str(w["source"]), "--rater", "r", *more]


#: (case id, argv from the world, a regular expression the one sentence must match)
CASES = [
    ("evaluate-text-file", lambda w: ["evaluate", "--pred", str(w["text"]), "--ref", str(w["cord"]), "-o", str(w["out"] / "e")], r"not an image SimpleITK can read"),
    ("evaluate-text-as-nii", lambda w: ["evaluate", "--pred", str(w["text_nii"]), "--ref", str(w["cord"]), "-o", str(w["out"] / "e")], r"is not an image SimpleITK can read"),
    ("evaluate-4d-mask", lambda w: ["evaluate", "--pred", str(w["mask4d"]), "--ref", str(w["ref"]), "-o", str(w["out"] / "e")], r"not a 3D single-channel image|is 4D|is a 2D image"),
    ("evaluate-bad-cord-labels", lambda w: ["evaluate", "--pred", str(w["cord"]), "--ref", str(w["labels"]), "-o", str(w["out"] / "e"), "--cord-labels", "a,b"], r"--cord-labels must be"),
    ("evaluate-cord-labels-7", lambda w: ["evaluate", "--pred", str(w["cord"]), "--ref", str(w["labels"]), "-o", str(w["out"] / "e"), "--cord-labels", "7"], r"--cord-labels must be"),
    ("evaluate-other-grid", lambda w: ["evaluate", "--pred", str(w["cord"]), "--ref", str(w["othergrid"]), "-o", str(w["out"] / "e")], r"do not lie on the same grid"),
    ("evaluate-output-is-file", lambda w: ["evaluate", "--pred", str(w["cord"]), "--ref", str(w["cord"]), "-o", str(w["csv_a"])], r"is a file; give a folder"),
    ("evaluate-binary-groups", lambda w: ["evaluate", "--pred", str(w["cord"]), "--ref", str(w["cord"]), "-o", str(w["out"] / "e"), "--groups", str(w["binary"])], r"not a text TSV table"),
    ("evaluate-groups-no-pid", lambda w: ["evaluate", "--pred", str(w["cord"]), "--ref", str(w["cord"]), "-o", str(w["out"] / "e"), "--groups", str(w["groups_nopid"])], r"no participant_id column"),
    ("evaluate-missing-groups", lambda w: ["evaluate", "--pred", str(w["cord"]), "--ref", str(w["cord"]), "-o", str(w["out"] / "e"), "--groups", str(w["root"] / "nope.tsv")], r"no such file or folder"),
    ("evaluate-cut-10", lambda w: ["evaluate", "--pred", str(w["cut10"]), "--ref", str(w["labels"]), "-o", str(w["out"] / "e")], r"ends before its (data|header) does"),
    ("evaluate-cut-50", lambda w: ["evaluate", "--pred", str(w["cut50"]), "--ref", str(w["labels"]), "-o", str(w["out"] / "e")], r"ends before its (data|header) does"),
    ("evaluate-cut-90", lambda w: ["evaluate", "--pred", str(w["cut90"]), "--ref", str(w["labels"]), "-o", str(w["out"] / "e")], r"ends before its (data|header) does"),
    ("evaluate-cut-raw", lambda w: ["evaluate", "--pred", str(w["cut_raw"]), "--ref", str(w["labels"]), "-o", str(w["out"] / "e")], r"ends before its (data|header) does"),
    ("evaluate-nonbinary", lambda w: ["evaluate", "--pred", str(w["nonbinary"]), "--ref", str(w["cord"]), "-o", str(w["out"] / "e")], r"not a mask or label map.*holds 7"),
    ("evaluate-image-as-mask", lambda w: ["evaluate", "--pred", str(w["t2"]), "--ref", str(w["cord"]), "-o", str(w["out"] / "e")], r"give a mask, not an image"),
    ("evaluate-missing", lambda w: ["evaluate", "--pred", str(w["root"] / "missing.nii.gz"), "--ref", str(w["cord"]), "-o", str(w["out"] / "e")], r"no such file"),
    ("evaluate-empty-file", lambda w: ["evaluate", "--pred", str(w["empty"]), "--ref", str(w["cord"]), "-o", str(w["out"] / "e")], r"is empty|ends before its data does|not an image SimpleITK can read"),
    ("evaluate-negative-tolerance", lambda w: ["evaluate", "--pred", str(w["cord"]), "--ref", str(w["cord"]), "-o", str(w["out"] / "e"), "--tolerance-mm", "-1"], r"--tolerance-mm must be a positive"),
    ("stats-non-numeric", lambda w: ["stats", "--a", str(w["csv_a"]), "--b", str(w["csv_text"]), "-o", str(w["out"] / "s"), "--columns", "volume [mm3]"], r"column 'volume \[mm3\]' of .*b_text.csv holds text that is not a number"),
    ("stats-no-subject", lambda w: ["stats", "--a", str(w["csv_a"]), "--b", str(w["csv_nosub"]), "-o", str(w["out"] / "s")], r"needs a 'subject' column"),
    ("stats-binary-csv", lambda w: ["stats", "--a", str(w["csv_a"]), "--b", str(w["csv_bin"]), "-o", str(w["out"] / "s")], r"not a text CSV table"),
    ("stats-missing-csv", lambda w: ["stats", "--a", str(w["csv_a"]), "--b", str(w["root"] / "nope.csv"), "-o", str(w["out"] / "s")], r"no such table file"),
    ("stats-folder-csv", lambda w: ["stats", "--a", str(w["csv_a"]), "--b", str(w["folder"]), "-o", str(w["out"] / "s")], r"no such table file"),
    ("stats-empty-csv", lambda w: ["stats", "--a", str(w["csv_a"]), "--b", str(w["empty"]), "-o", str(w["out"] / "s")], r"not a text CSV table"),
    ("stats-output-is-file", lambda w: ["stats", "--a", str(w["csv_a"]), "--b", str(w["csv_b"]), "-o", str(w["csv_a"])], r"is a file; give a folder"),
    ("stats-missing-score", lambda w: ["stats", "--a", str(w["csv_a"]), "--b", str(w["csv_b"]), "-o", str(w["out"] / "s"), "--columns", "volume [mm3]", "--clinical", str(w["clinical"]), "--score", "nope"], r"has no 'nope' column"),
    ("stats-missing-column", lambda w: ["stats", "--a", str(w["csv_a"]), "--b", str(w["csv_b"]), "-o", str(w["out"] / "s")], r"column 'length \[mm\]' is missing"),
    ("consensus-one-rater", lambda w: ["consensus", str(w["cord"]), "-o", str(w["out"] / "c.nii.gz")], r"at least two raters"),
    ("consensus-nonbinary", lambda w: ["consensus", str(w["cord"]), str(w["nonbinary"]), "-o", str(w["out"] / "c.nii.gz")], r"not a mask or label map"),
    ("consensus-image-as-mask", lambda w: ["consensus", str(w["cord"]), str(w["t2"]), "-o", str(w["out"] / "c.nii.gz")], r"give a mask, not an image"),
    ("consensus-4d", lambda w: ["consensus", str(w["cord"]), str(w["mask4d"]), "-o", str(w["out"] / "c.nii.gz")], r"not a 3D single-channel image|is 4D|is a 2D image"),
    ("consensus-output-folder", lambda w: ["consensus", str(w["cord"]), str(w["cord"]), "-o", str(w["folder"])], r"must be a file name ending in \.nii\.gz"),
    ("consensus-output-txt", lambda w: ["consensus", str(w["cord"]), str(w["cord"]), "-o", str(w["out"] / "c.txt")], r"must be a file name ending in \.nii\.gz"),
    ("consensus-other-grid", lambda w: ["consensus", str(w["cord"]), str(w["othergrid"]), "-o", str(w["out"] / "c.nii.gz")], r"othergrid.nii.gz does not lie on the grid of .*\(size"),
    ("consensus-cut", lambda w: ["consensus", str(w["labels"]), str(w["cut50"]), "-o", str(w["out"] / "c.nii.gz")], r"ends before its (data|header) does"),
    ("analyze-text", lambda w: ["analyze", "--lesion", str(w["text"]), "-o", str(w["out"] / "a")], r"not an image SimpleITK can read"),
    ("analyze-4d-cord", lambda w: ["analyze", "--lesion", str(w["lesion"]), "--cord", str(w["mask4d"]), "-o", str(w["out"] / "a")], r"not a 3D single-channel image|is 4D|is a 2D image"),
    ("analyze-other-grid", lambda w: ["analyze", "--lesion", str(w["lesion"]), "--cord", str(w["othergrid"]), "-o", str(w["out"] / "a")], r"do not lie on the same grid"),
    ("analyze-output-is-file", lambda w: ["analyze", "--lesion", str(w["lesion"]), "-o", str(w["csv_a"])], r"is a file; give a folder"),
    ("analyze-nonbinary", lambda w: ["analyze", "--lesion", str(w["nonbinary"]), "-o", str(w["out"] / "a")], r"not a binary mask"),
    ("cord-text", lambda w: ["cord", "--cord", str(w["text"]), "-o", str(w["out"] / "k")], r"not an image SimpleITK can read"),
    ("cord-image-as-mask", lambda w: ["cord", "--cord", str(w["t2"]), "-o", str(w["out"] / "k")], r"values between 0 and 1"),
    ("cord-output-is-file", lambda w: ["cord", "--cord", str(w["cord"]), "-o", str(w["csv_a"])], r"is a file; give a folder"),
    ("cord-2d", lambda w: ["cord", "--cord", str(w["mask2d"]), "-o", str(w["out"] / "k")], r"not a 3D single-channel image|is 4D|is a 2D image"),
    ("export-cut-10", lambda w: _export(w, "--labels", str(w["cut10"])), r"ends before its (data|header) does"),
    ("export-cut-50", lambda w: _export(w, "--labels", str(w["cut50"])), r"ends before its (data|header) does"),
    ("export-cut-90", lambda w: _export(w, "--labels", str(w["cut90"])), r"ends before its (data|header) does"),
    ("export-cut-raw", lambda w: _export(w, "--labels", str(w["cut_raw"])), r"ends before its (data|header) does"),
    ("export-nonbinary", lambda w: _export(w, "--labels", str(w["nonbinary"])), r"label map must hold 0, 1 and 2 only"),
    ("export-4d", lambda w: _export(w, "--labels", str(w["mask4d"])), r"not a 3D single-channel image|is 4D|is a 2D image"),
    ("export-other-grid", lambda w: _export(w, "--labels", str(w["othergrid"])), r"does not lie on the grid"),
    ("export-subject-traversal", lambda w: _export(w, "--labels", str(w["labels"]), "--subject", "../../x"), r"subject label '\.\./\.\./x' is not a BIDS label"),
    ("export-subject-absolute", lambda w: _export(w, "--labels", str(w["labels"]), "--subject", "/tmp/x"), r"not a BIDS label"),
    ("export-session-traversal", lambda w: _export(w, "--labels", str(w["labels"]), "--session", "../../../x"), r"session label .* is not a BIDS label"),
    ("export-session-dot", lambda w: _export(w, "--labels", str(w["labels"]), "--session", ".."), r"not a BIDS label"),
    ("export-text-source", lambda w: ["export", "--root", str(w["bids"]), "--source", str(w["text"]), "--rater", "r", "--labels", str(w["labels"])], r"not an image SimpleITK can read"),
    ("export-blank-rater", lambda w: ["export", "--root", str(w["bids"]), "--source", str(w["source"]), "--rater", " ", "--labels", str(w["labels"])], r"rater name is required"),
    ("export-root-is-file", lambda w: ["export", "--root", str(w["csv_a"]), "--source", str(w["source"]), "--rater", "r", "--labels", str(w["labels"])], r"is not a folder"),
    ("export-text-seg-nrrd", lambda w: _export(w, "--seg-nrrd", str(w["text"])), r"not a Slicer segmentation"),
    ("export-nifti-as-seg-nrrd", lambda w: _export(w, "--seg-nrrd", str(w["labels"])), r"has no 'Spinal cord' segment"),
    ("export-text-predicted", lambda w: _export(w, "--labels", str(w["labels"]), "--predicted-labels", str(w["text"])), r"not an image SimpleITK can read"),
    ("export-lesion-without-cord", lambda w: _export(w, "--labels", str(w["labels"]), "--lesion", str(w["lesion"])), r"--lesion goes with --cord"),
    ("dataset-id-5000", lambda w: ["dataset", "build", "--bids", str(w["bids"]), "-o", str(w["out"] / "raw"), "--id", "5000", "--name", "X"], r"--id must be an nnU-Net dataset id from 1 to 999"),
    ("dataset-name-traversal", lambda w: ["dataset", "build", "--bids", str(w["bids"]), "-o", str(w["out"] / "raw"), "--id", "5", "--name", "../../evil"], r"dataset name '\.\./\.\./evil' cannot be used"),
    ("dataset-output-is-file", lambda w: ["dataset", "build", "--bids", str(w["bids"]), "-o", str(w["csv_a"]), "--id", "5", "--name", "X"], r"is a file"),
    ("dataset-no-corrections", lambda w: ["dataset", "build", "--bids", str(w["bids"]), "-o", str(w["out"] / "raw"), "--id", "5", "--name", "X"], r"no exported corrections found"),
    ("queue-qc-decisions-5", lambda w: ["queue", "qc", str(w["qc_decisions_5"]), "--queue", str(w["out"] / "q.json")], r"'decisions' is not a list of entries"),
    ("queue-qc-fails-5", lambda w: ["queue", "qc", str(w["qc_fails_5"]), "--queue", str(w["out"] / "q.json")], r"'fails' is not a list of entries"),
    ("segment-min-object-negative", lambda w: ["segment", str(w["t2"]), "--model", "sciseg-demo", "--min-object-mm3", "-1"], r"--min-object-mm3 must be a volume of 0 mm3 or more, got -1"),
    ("segment-min-object-nan", lambda w: ["segment", str(w["t2"]), "--model", "sciseg-demo", "--min-object-mm3", "nan"], r"--min-object-mm3 must be a volume of 0 mm3 or more"),
    ("segment-resamples-to-nothing", lambda w: ["segment", str(w["tiny_voxels"]), "--model", "sciseg-demo"], r"would have no voxel along an axis"),
    ("segment-voxels-1e-30", lambda w: ["segment", str(w["voxels_1e-30"]), "--model", "sciseg-demo"], r"would have no voxel along an axis"),
    ("queue-score-resamples-to-nothing", lambda w: ["queue", "score", str(w["tiny_voxels"]), "--model", "sciseg-demo", "--queue", str(w["out"] / "q.json")], r"would have no voxel along an axis"),
    ("dataset-fraction-7", lambda w: ["dataset", "build", "--bids", str(w["bids"]), "-o", str(w["out"] / "raw"), "--id", "5", "--name", "X", "--test-fraction", "7"], r"--test-fraction must be"),
    ("queue-bad-json", lambda w: ["queue", "list", "--queue", str(w["bad_queue"])], r"not a SCIseg queue file"),
    ("queue-json-list", lambda w: ["queue", "next", "--queue", str(w["list_queue"])], r"not a SCIseg queue file"),
    ("queue-missing", lambda w: ["queue", "list", "--queue", str(w["root"] / "none.json")], r"no such queue file"),
    ("models-install-text", lambda w: ["models", "install", str(w["text"])], r"not a valid zip archive"),
    ("models-install-empty-folder", lambda w: ["models", "install", str(w["folder"]), "--name", "x"], r"holds no nnU-Net results folder"),
    ("models-install-name-traversal", lambda w: ["models", "install", str(w["cord"]), "--name", "../x"], r"not a valid model name"),
    ("models-install-unreachable", lambda w: ["models", "install", "http://127.0.0.1:9/x.zip"], r"cannot reach"),
    ("models-remove-traversal", lambda w: ["models", "remove", "../../etc"], r"no installed model named"),
    ("segment-output-is-file", lambda w: ["segment", str(w["t2"]), "--model", "sciseg-demo", "-o", str(w["csv_a"])], r"is a file; give a folder"),
    # issue 20 item 4: a mask at another voxel size is another grid, everywhere a mask meets an image
    ("evaluate-other-spacing", lambda w: ["evaluate", "--pred", str(w["cord_2x"]), "--ref", str(w["cord"]), "-o", str(w["out"] / "e")], r"do not lie on the same grid \(spacing \(1\.6, 1\.6, 3\) mm vs \(0\.8, 0\.8, 1\.5\) mm\)"),
    ("export-labels-other-spacing", lambda w: _export(w, "--labels", str(w["labels_2x"])), r"does not lie on the grid of .*\(spacing"),
    ("export-seg-nrrd-other-spacing", lambda w: _export(w, "--seg-nrrd", str(w["seg_nrrd_2x"])), r"does not lie on the grid of .*\(spacing"),
    ("consensus-other-spacing", lambda w: ["consensus", str(w["cord"]), str(w["cord_2x"]), "-o", str(w["out"] / "c.nii.gz")], r"cord_2x.nii.gz does not lie on the grid of .*\(spacing"),
    ("compare-other-spacing", lambda w: ["compare", str(w["labels"]), str(w["labels_2x"])], r"does not lie on the grid of .*\(spacing"),
    ("analyze-other-spacing", lambda w: ["analyze", "--lesion", str(w["lesion"]), "--cord", str(w["cord_2x"]), "-o", str(w["out"] / "a")], r"do not lie on the same grid"),
    # issue 20 item 9: compare takes label maps only
    ("compare-intensity-image", lambda w: ["compare", str(w["t2"]), str(w["labels"])], r"sub-01_T2w.nii.gz is not a mask or label map.*give a mask, not an image"),
    ("compare-label-7", lambda w: ["compare", str(w["labels"]), str(w["nonbinary"])], r"nonbinary.nii.gz is not a mask or label map \(0, 1 and 2\): it holds 7"),
    ("segment-threads-0", lambda w: ["segment", str(w["t2"]), "--model", "sciseg-demo", "--threads", "0"], r"--threads must be at least 1"),
]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root`` with its size and time; the model store's (empty) folders aside."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if not (p.is_dir() and p.relative_to(root).parts[0] == "store")}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_sentence_and_writes_nothing(case, world, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    monkeypatch.setenv("SCISEG_MODELS_DIR", str(world["root"] / "store"))
    _, argv_of, pattern = case
    before = _snapshot(world["root"])
    code, _, err = run_cli(argv_of(world))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert lines and re.search(pattern, lines[-1]), err
    assert "Traceback" not in err and len(lines) == 1, err
    assert _snapshot(world["root"]) == before, "a refused command wrote or changed files"


def test_one_prediction_and_one_reference_are_paired_whatever_their_names(world, tmp_path: Path) -> None:
    code, _, err = run_cli(["evaluate", "--pred", str(world["pred"]), "--ref", str(world["ref"]), "-o", str(tmp_path / "e"),
                            "--method", "=cmd|' /C calc'!A0"])
    assert code == 0, err
    import pandas as pd

    table = pd.read_csv(tmp_path / "e" / "evaluation.csv")
    assert set(table["subject"]) == {"reference_A"}
    cord_row = table[table["structure"] == "sc"]
    mirrored = sitk.GetArrayFromImage(sitk.ReadImage(str(world["pred"]))) > 0
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(world["ref"]))) > 0
    expected = 2 * np.count_nonzero(mirrored & truth) / (mirrored.sum() + truth.sum())
    assert len(cord_row) == 1 and cord_row["dice"].iloc[0] == pytest.approx(expected)
    # formula injection: the method name is text in every cell, never a formula
    assert (tmp_path / "e" / "evaluation.csv").read_text().count("'=cmd|") == len(table)
    openpyxl = pytest.importorskip("openpyxl")
    sheet = openpyxl.load_workbook(tmp_path / "e" / "evaluation.xlsx").active
    header = [c.value for c in sheet[1]]
    method_cell = sheet.cell(row=2, column=header.index("method") + 1)
    assert method_cell.data_type == "s" and method_cell.value == "'=cmd|' /C calc'!A0"
    assert all(c.data_type != "f" for row in sheet.iter_rows() for c in row)


def test_every_table_escapes_formula_text_but_keeps_negative_numbers(tmp_path: Path) -> None:
    import pandas as pd

    from SCIsegLib.analysis_files import write_table

    hostile = ["=1+1", "+1+1", "-1+1", "@SUM(A1)", "\tx", "\r=2+3", "-3.5", "plain"]
    table = pd.DataFrame({"rater": hostile, "bias": [-1.5, -2, 0, 1, 2, 3, 4, 5], "=HYPERLINK(x)": range(8)})
    csv_path, xlsx_path = write_table(table, tmp_path / "t.csv")
    import csv

    with open(csv_path, newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["rater", "bias", "'=HYPERLINK(x)"]
    expected = ["'" + v.replace("\r", "\n") for v in hostile[:6]] + ["-3.5", "plain"]  # the text of a number stays
    assert [r[0] for r in rows[1:]] == expected
    assert [float(r[1]) for r in rows[1:]] == [-1.5, -2, 0, 1, 2, 3, 4, 5]  # negative numbers are numbers
    assert rows[1][1] == "-1.5"
    import openpyxl

    sheet = openpyxl.load_workbook(xlsx_path).active
    assert all(c.data_type != "f" for row in sheet.iter_rows() for c in row)
    assert sheet.cell(row=2, column=2).value == -1.5 and sheet.cell(row=2, column=2).data_type == "n"


def test_consensus_json_is_valid_and_export_takes_a_cord_without_lesion(world, tmp_path: Path) -> None:
    empty = _write(np.zeros((12, 16, 14), np.uint8), tmp_path / "empty_mask.nii.gz")
    code, out, err = run_cli(["consensus", str(empty), str(empty), "-o", str(tmp_path / "c.nii.gz")])
    assert code == 0, err
    measures = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert measures["volume_cv_percent"] is None  # NaN (no volume) becomes null
    bids = tmp_path / "bids"
    shutil.copytree(world["bids"], bids)
    source = bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    code, _, err = run_cli(["export", "--root", str(bids), "--source", str(source), "--rater", "r", "--cord", str(world["cord"])])
    assert code == 0, err
    anat = bids / "derivatives" / "labels" / "sub-01" / "anat"
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(anat / "sub-01_T2w_label-lesion_seg.nii.gz")))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(anat / "sub-01_T2w_dseg.nii.gz")))
    assert not lesion.any() and set(np.unique(labels).tolist()) == {0, 1}


def test_truncated_labels_are_never_committed(world, tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    shutil.copytree(world["bids"], bids)
    source = bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
    for cut in ("cut10", "cut50", "cut90", "cut_raw"):
        code, _, err = run_cli(["export", "--root", str(bids), "--source", str(source), "--rater", "r", "--labels", str(world[cut])])
        assert code == 2 and ("ends before its data does" in err or "ends before its header does" in err)
    assert not (bids / "derivatives").exists()


# ---------------------------------------------------------------- kill test of `sciseg export`

def _latest_state(anat: Path, store: Path, stem: str) -> str:
    """'none', 'marked' (publication interrupted, flagged), or 'vNNN' when the six copies equal that version's files.

    Fails when the visible copies are incomplete or mix versions."""
    names = [f"{stem}{suffix}" for suffix in FILES.values()]
    names += [n.replace(".nii.gz", ".json") for n in names]
    if publishing_marker(anat, stem).exists():
        return "marked"
    present = [n for n in names if (anat / n).exists()]
    if not present:
        return "none"
    assert len(present) == len(names), f"incomplete latest set: {sorted(present)}"
    matches = [v for v in sorted(store.glob("v[0-9]*")) if all((anat / n).read_bytes() == (v / n).read_bytes() for n in names)]
    assert matches, "the latest copies mix versions"
    return matches[-1].name


def test_sigkill_during_export_never_shows_a_mixed_latest_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    shape = (60, 160, 160)  # large enough that writing takes a moment worth hitting
    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    source = _write((rng.random(shape) * 100).astype(np.float32), bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz")
    label_files = []
    for index in range(2):
        labels = np.zeros(shape, np.uint8)
        labels[:, 60 + 10 * index:100, 60:100] = 1
        labels[20:30 + 5 * index, 70:80, 70:80] = 2
        label_files.append(_write(labels, tmp_path / f"labels{index}_dseg.nii.gz"))
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY)}

    def command(index: int) -> list[str]:
        return [sys.executable, "-m", "SCIsegLib", "export", "--root", str(bids), "--source", str(source),
                "--rater", f"r{index}", "--labels", str(label_files[index % 2])]

    started = time.monotonic()
    subprocess.run(command(0), env=env, check=True, capture_output=True, timeout=120)
    duration = time.monotonic() - started
    anat = bids / "derivatives" / "labels" / "sub-01" / "anat"
    store = bids / "derivatives" / "labels" / VERSIONS / "sub-01" / "anat" / "sub-01_T2w"
    states, kills, leftovers_seen = [], 0, 0
    deadline = started + 40
    marker = publishing_marker(anat, "sub-01_T2w")
    index = 1
    while time.monotonic() < deadline and kills < 12:
        process = subprocess.Popen(command(index), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if index % 2:  # a random moment of the second half of a run (the writes, the commit)
            time.sleep(float(rng.uniform(0.5, 1.1)) * duration)
        else:  # a random moment of the publication of the latest copies (the short window of the marker)
            while process.poll() is None and not marker.exists() and time.monotonic() < deadline + 30:
                time.sleep(0.001)
            time.sleep(float(rng.uniform(0.0, 0.03)))
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
        index += 1
        state = _latest_state(anat, store, "sub-01_T2w")
        states.append(state)
        for version in store.glob("v[0-9]*"):  # every committed version is whole
            assert len(list(version.iterdir())) == 6
        leftovers_seen += len(list(store.glob(".staging-*"))) + sum(1 for p in anat.iterdir() if p.name.startswith(".sub-01"))
        if state == "marked":  # readers refuse a flagged set
            with pytest.raises(InputError, match="export was interrupted"):
                expand_inputs([anat])
    assert kills >= 3, f"only {kills} runs were still going when killed"
    # the next export repairs everything: no marker, no temporary, latest = newest version
    subprocess.run(command(index), env=env, check=True, capture_output=True, timeout=120)
    newest = sorted(store.glob("v[0-9]*"))[-1].name
    assert _latest_state(anat, store, "sub-01_T2w") == newest
    assert not list(store.glob(".staging-*"))
    assert [p.name for p in anat.iterdir() if p.name.startswith(".")] == []
    print(f"\nexport kill test: {kills} kills in {len(states)} runs, states after each: {states}, "
          f"temporaries seen before repair: {leftovers_seen}, after repair: 0")


def test_export_refuses_a_labels_folder_linked_outside_the_derivatives(world, tmp_path: Path) -> None:
    """``derivatives/labels`` as a link leading out of ``derivatives``: nothing is written there. ``derivatives`` itself
    as a link (the dataset's derivatives on another disk) is the dataset's own choice: the version is written there."""
    for linked in ("labels", "derivatives"):
        root = tmp_path / f"bids_{linked}"
        (root / "sub-01" / "anat").mkdir(parents=True)
        source = root / "sub-01" / "anat" / "sub-01_T2w.nii.gz"
        shutil.copy(world["t2"], source)
        outside = tmp_path / f"outside_{linked}"
        outside.mkdir()
        if linked == "labels":
            (root / "derivatives").mkdir()
            (root / "derivatives" / "labels").symlink_to(outside, target_is_directory=True)
        else:
            (root / "derivatives").symlink_to(outside, target_is_directory=True)
        code, _, err = run_cli(["export", "--root", str(root), "--source", str(source), "--rater", "r", "--labels", str(world["labels"])])
        if linked == "labels":
            assert code == 2, err
            assert "outside" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
            assert not list(outside.rglob("*")), "the export wrote through the labels link"
        else:
            assert code == 0, err
            assert list((outside / "labels").rglob("sub-01_T2w_label-SC_seg.nii.gz")), "no version on the other disk"


def test_a_refused_run_leaves_no_lock_file_and_no_qc(world, tmp_path: Path) -> None:
    """A scheduler that does not answer: exit 2, and the output folder is as before (absent, or without qc/)."""
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    existing = tmp_path / "existing"
    existing.mkdir()
    for output in (tmp_path / "new", existing):
        code, _, err = run_cli(["run", "--bids", str(world["bids"]), "-o", str(output), "--model", "sciseg-demo",
                                "--scheduler", f"tcp://127.0.0.1:{port}", "--progress", "none"])
        assert code == 2 and "did not answer" in err, err
    assert not (tmp_path / "new").exists()
    assert [p.name for p in existing.iterdir() if p.name != ".sciseg-run.lock"] == []
