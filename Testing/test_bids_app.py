"""`sciseg-bids`, the BIDS Apps call (bids_dir output_dir participant|group [--participant-label ...]), on a small
BIDS folder with the demo model; and `sciseg run` says nothing about Dask's port 8787 when another process holds it."""

from __future__ import annotations

import csv
import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from SCIsegLib.bids_app import build_parser, run_arguments
from SCIsegLib.cli import build_parser as sciseg_parser
from SCIsegLib.phantom import Acquisition, LesionSpec, make_phantom
from SCIsegLib.volume import write_image_atomic

REPOSITORY = Path(__file__).resolve().parents[1]
TINY = Acquisition(spacing_mm=(2.0, 0.8, 0.8), fov_mm=(24.0, 40.0, 64.0), orientation="PSR")
WORKER = ["--model", "sciseg-demo", "--device", "cpu", "--workers", "1", "--memory-per-worker", "1300MiB", "--progress", "none"]


def sciseg_bids(*args: str | Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    return subprocess.run([sys.executable, "-m", "SCIsegLib.bids_app", *map(str, args)], capture_output=True, text=True,
                          env=environment, timeout=300, cwd=REPOSITORY)


def make_bids(root: Path) -> Path:
    """Two participants (sub-01 with a session, sub-02 without), one tiny phantom T2w scan each, and participants.tsv."""
    lesion = [LesionSpec(center_si_mm=0.0, length_mm=12.0, width_fraction=0.8)]
    write_image_atomic(make_phantom(1, TINY, lesion).image, root / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T2w.nii.gz")
    write_image_atomic(make_phantom(2, TINY, lesion).image, root / "sub-02" / "anat" / "sub-02_T2w.nii.gz")
    (root / "participants.tsv").write_text("participant_id\tsite\nsub-01\tA\nsub-02\tB\n")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    return root


def hold_port_8787() -> socket.socket | None:
    """A listening socket on 127.0.0.1:8787 (Dask's default dashboard port); None when another process holds it already."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8787))
    except OSError as error:
        holder.close()
        if error.errno == errno.EADDRINUSE:
            return None  # held by someone else: the condition under test holds anyway
        raise
    holder.listen()
    return holder


@pytest.fixture(scope="module")
def participant_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`sciseg-bids BIDS OUT participant --participant-label 01` while 127.0.0.1:8787 is taken."""
    root = tmp_path_factory.mktemp("bids_app")
    bids = make_bids(root / "bids")
    output = bids / "derivatives" / "sciseg"
    holder = hold_port_8787()
    try:
        result = sciseg_bids(bids, output, "participant", "--participant-label", "01", *WORKER)
    finally:
        if holder is not None:
            holder.close()
    return {"bids": bids, "output": output, "result": result}


def test_participant_level_writes_a_bids_derivative_for_the_chosen_participant_only(participant_run: dict) -> None:
    result, output = participant_run["result"], participant_run["output"]
    assert result.returncode == 0, result.stderr[-3000:]
    description = json.loads((output / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"].lower().startswith("sciseg")
    anat = output / "sub-01" / "ses-1" / "anat"
    for name in ("sub-01_ses-1_T2w_sc_seg.nii.gz", "sub-01_ses-1_T2w_lesion_seg.nii.gz", "sub-01_ses-1_T2w_sc_seg.json"):
        assert (anat / name).is_file(), sorted(p.name for p in anat.iterdir())
    assert not (output / "sub-02").exists()
    with open(output / "run_summary.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["subject"], row["status"]) for row in rows] == [("sub-01", "done")]
    marker = next(anat.glob("*_sciseg-run.json"))
    assert "sciseg run --bids" in marker.read_text() and "--participant-label 01" in marker.read_text()


def test_no_dask_port_warning_while_another_process_holds_8787(participant_run: dict) -> None:
    stderr = participant_run["result"].stderr
    # Dask's own words when the port is taken: "UserWarning: Port 8787 is already in use. ... Hosting the HTTP server on port N"
    for words in ("8787", "already in use", "UserWarning", "Hosting the HTTP server"):
        assert words not in stderr, stderr[-3000:]
    assert "Dask dashboard" in stderr  # our one line about it: the link with bokeh, "no Dask dashboard" without


def test_the_worker_process_ends_before_its_nanny_kills_it(participant_run: dict) -> None:
    """After the run the nanny asks the worker to stop and kills it after 4 s: with torch loaded, the interpreter's
    teardown alone took longer than that on a loaded 2-core machine (see SCIsegLib/exit_collection.py)."""
    assert "still alive after" not in participant_run["result"].stderr, participant_run["result"].stderr[-3000:]


def test_group_level_skips_done_participants_and_tabulates_all(participant_run: dict) -> None:
    bids, output = participant_run["bids"], participant_run["output"]
    result = sciseg_bids(bids, output, "group", *WORKER)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output / "run_summary.csv", newline="") as stream:
        statuses = {row["subject"]: row["status"] for row in csv.DictReader(stream)}
    assert statuses == {"sub-01": "skipped", "sub-02": "done"}
    with open(output / "cohort_subjects.csv", newline="") as stream:
        subjects = {row["subject"]: row for row in csv.DictReader(stream)}
    assert set(subjects) == {"sub-01", "sub-02"} and subjects["sub-02"]["site"] == "B"


def test_a_missing_participant_is_refused_with_one_sentence_and_nothing_written(tmp_path: Path) -> None:
    bids = make_bids(tmp_path / "bids")
    output = tmp_path / "out"
    result = sciseg_bids(bids, output, "participant", "--participant_label", "01", "03", *WORKER)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sub-03" in lines[0] and "sub-01" not in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not output.exists()

    result = sciseg_bids(bids, output, "participant", "--participant-label", "../01", *WORKER)
    assert result.returncode == 2 and "not a BIDS label" in result.stderr and not output.exists()
    result = sciseg_bids(bids, output, "everyone")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_the_bids_call_maps_onto_sciseg_run_options_that_exist() -> None:
    args = build_parser().parse_args(["/data/bids", "/data/bids/derivatives/sciseg", "participant",
                                      "--participant-label", "01", "sub-02", "--workers", "2", "--force"])
    argv = run_arguments(args)
    parsed = sciseg_parser().parse_args(argv)
    assert parsed.command == "run" and parsed.bids == Path("/data/bids")
    assert parsed.output == Path("/data/bids/derivatives/sciseg")
    assert parsed.participant_label == ["01", "sub-02"] and parsed.workers == 2 and parsed.force
    assert parsed.model == "sciseg-v2" and parsed.suffix == "T2w"
