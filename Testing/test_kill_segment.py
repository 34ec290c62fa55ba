"""Kills at any moment never leave a partial set of outputs visible; SIGTERM always exits 130.

* every step of publishing a set is killed (fork + SIGKILL): the set is complete with its marker, or the
  next run in that folder finishes or undoes it, and removes every temporary of ours;
* ``python -m SCIsegLib segment`` (two small phantoms, the bundled demo model) is SIGKILLed at random
  moments, half of them inside the write stage: after each kill every marked set is complete, and final
  names without a marker are only those of an interrupted publication (its journal is there); the next run
  cleans up;
* SIGTERM as soon as the process runs Python code exits 130 (not -15); after input 1 of 2 the message
  names what was written.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from SCIsegLib.phantom import Acquisition, make_phantom
from SCIsegLib.staging import MARKER_SUFFIX, new_temporary, publish_set, published_set, recover_folder
from SCIsegLib.volume import write_image_atomic

REPOSITORY = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPOSITORY / "Resources" / "Models" / "sciseg-demo"
SMALL = Acquisition(spacing_mm=(1.0, 1.0, 1.0), fov_mm=(24.0, 40.0, 64.0), orientation="PSR")
SET_NAMES = ("_sc_seg.nii.gz", "_sc_seg.json", "_lesion_seg.nii.gz", "_lesion_seg.json")


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".sciseg-" in p.name and ".part" in p.name)


def journals(folder: Path) -> list[str]:
    return [name for name in temporaries(folder) if name.startswith(".") and MARKER_SUFFIX + ".sciseg-" in name]


def check_sets(folder: Path, stems: list[str]) -> dict[str, str]:
    """State of each stem: "complete" (marker and every file, sha256 checked), "absent", or "interrupted"
    (final names without a marker, allowed only while a journal of an interrupted publication exists)."""
    states = {}
    for stem in stems:
        finals = [name for name in (stem + s for s in SET_NAMES) if (folder / name).exists()]
        if (folder / f"{stem}{MARKER_SUFFIX}").exists():
            files = published_set(folder, stem, verify_sha256=True)
            assert files is not None and sorted(files) == sorted(stem + s for s in SET_NAMES), (stem, files)
            states[stem] = "complete"
        elif not finals:
            states[stem] = "absent"
        else:
            assert any(j.startswith(f".{stem}{MARKER_SUFFIX}.") for j in journals(folder)), (
                f"{stem}: {finals} visible without a marker and without a journal"
            )
            states[stem] = "interrupted"
    return states


def stage_files(folder: Path, stem: str, version: str) -> list[tuple[Path, Path]]:
    register: list[Path] = []
    staged = []
    for suffix in SET_NAMES:
        final = folder / f"{stem}{suffix}"
        temporary = new_temporary(final, register)
        temporary.write_text(f"{final.name} {version}\n")
        staged.append((temporary, final))
    return staged


def publish_and_die(folder: Path, step: int) -> None:
    """In a forked child: publish a new set of stem "s", SIGKILLing this process at ``step``."""
    import SCIsegLib.staging as staging

    calls = {"n": 0}
    real_publish, real_unlink = staging.publish, Path.unlink

    def publish(temporary: Path, final: Path) -> None:
        if calls["n"] + 2 == step:
            os.kill(os.getpid(), signal.SIGKILL)
        calls["n"] += 1
        real_publish(temporary, final)

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if step == 1 and self.name.endswith(MARKER_SUFFIX):
            os.kill(os.getpid(), signal.SIGKILL)
        real_unlink(self, missing_ok=missing_ok)

    staging.publish = publish  # type: ignore[assignment]
    staged = stage_files(folder, "s", "new")
    if step == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    Path.unlink = unlink  # type: ignore[method-assign]
    publish_set(folder, "s", staged, [], {})


@pytest.mark.parametrize("old_set", [False, True], ids=["new folder", "replacing a set"])
def test_publication_killed_at_every_step_is_finished_or_undone(tmp_path: Path, old_set: bool) -> None:
    """Steps: 0 writing the temporaries, 1 the journal written, 2..5 after 0..3 renames, 6 before the marker's."""
    outcomes = []
    for step in range(7):
        folder = tmp_path / f"step{step}"
        folder.mkdir()
        if old_set:
            publish_set(folder, "s", stage_files(folder, "s", "old"), [], {})
        pid = os.fork()
        if pid == 0:  # the child publishes and is SIGKILLed at ``step``
            try:
                publish_and_die(folder, step)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, step
        state = check_sets(folder, ["s"])["s"]
        counts = recover_folder(folder)
        after = check_sets(folder, ["s"])["s"]
        assert temporaries(folder) == [], (step, temporaries(folder))
        assert after in ("complete", "absent"), (step, after)
        if after == "complete":
            versions = {(folder / f"s{s}").read_text().split()[-1] for s in SET_NAMES}
            assert len(versions) == 1, (step, versions)  # never a mix of the old and the new set
        outcomes.append((step, state, after, counts["completed"]))
    # once the journal exists (step >= 1) the interrupted publication is rolled forward
    assert all(after == "complete" and completed == 1 for step, _, after, completed in outcomes if step >= 1), outcomes
    assert outcomes[0][2] == ("complete" if old_set else "absent"), outcomes


def sciseg_process(*arguments: str) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    return subprocess.Popen(
        [sys.executable, "-m", "SCIsegLib", *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("inputs")
    return [
        write_image_atomic(make_phantom(seed=20 + i, acquisition=SMALL, lesions=1).image, folder / f"sub-0{i}_T2w.nii.gz")
        for i in (1, 2)
    ]


def segment_arguments(inputs: list[Path], output: Path) -> list[str]:
    return ["segment", *map(str, inputs), "-o", str(output), "--model", str(DEMO_MODEL), "--device", "cpu",
            "--threads", "1", "--progress", "jsonl"]


def wait_for_event(process: subprocess.Popen, wanted: str, count: int = 1, timeout_s: float = 120) -> bool:
    """Read JSON-lines events until the ``count``-th event whose stage is ``wanted``; False at the end of output."""
    deadline, seen = time.monotonic() + timeout_s, 0
    assert process.stdout is not None
    for line in process.stdout:
        if time.monotonic() > deadline:
            return False
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("stage") == wanted:
            seen += 1
            if seen == count:
                return True
    return False


def test_random_sigkill_of_segment_leaves_whole_sets_and_the_next_run_cleans(tmp_path: Path, two_inputs: list[Path]) -> None:
    rng = random.Random(14)
    output = tmp_path / "out"
    stems = [p.name.removesuffix(".nii.gz") for p in two_inputs]
    seen_states: list[dict[str, str]] = []
    leftovers_after_kills = 0
    for run in range(4):
        process = sciseg_process(*segment_arguments(two_inputs, output))
        if run % 2 == 0:  # inside the write stage of input 1 or 2, at a random delay
            wait_for_event(process, "write", count=rng.choice((1, 2)))
            time.sleep(rng.uniform(0.0, 0.2))
        else:  # any moment of start-up and inference
            time.sleep(rng.uniform(0.2, 6.0))
        process.kill()
        process.communicate()
        if output.exists():
            seen_states.append(check_sets(output, stems))
            leftovers_after_kills += len(temporaries(output))
    final = sciseg_process(*segment_arguments(two_inputs, output))
    _, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr
    assert check_sets(output, stems) == {stem: "complete" for stem in stems}
    assert temporaries(output) == [], "the next run in the folder removes our stale temporaries"
    print(f"\nkill test: {len(seen_states)} folders inspected after SIGKILL, states {seen_states}, "
          f"{leftovers_after_kills} temporaries left by the kills, 0 after the next run")


def handler_installed(pid: int) -> bool:
    """True once the process catches SIGTERM (bit 15 of SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see when the handler is installed")
def test_sigterm_at_start_up_exits_130(tmp_path: Path, two_inputs: list[Path]) -> None:
    waits = []
    for extra_delay in (0.0, 0.05, 0.2):
        process = sciseg_process(*segment_arguments(two_inputs, tmp_path / "out"))
        started = time.perf_counter()
        while not handler_installed(process.pid) and process.poll() is None:
            time.sleep(0.001)
        waits.append(time.perf_counter() - started)
        time.sleep(extra_delay)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, (extra_delay, process.returncode, stderr)
        assert "cancelled" in stderr and "Traceback" not in stderr, stderr
    assert not (tmp_path / "out").exists() or temporaries(tmp_path / "out") == []
    print(f"\nSIGTERM handled {', '.join(f'{w * 1000:.0f}' for w in waits)} ms after the process started")


def test_sigterm_after_input_1_of_2_says_what_was_written(tmp_path: Path, two_inputs: list[Path]) -> None:
    output = tmp_path / "out"
    process = sciseg_process(*segment_arguments(two_inputs, output))
    assert wait_for_event(process, "done", count=1)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    first, second = (p.name.removesuffix(".nii.gz") for p in two_inputs)
    message = [line for line in stderr.splitlines() if line.startswith("sciseg:")][-1]
    assert "no output was written" not in message
    assert f"{first}_sc_seg.nii.gz" in message and f"{first}_lesion_seg.nii.gz" in message, message
    assert f"nothing of {second}.nii.gz was written" in message, message
    assert check_sets(output, [first, second]) == {first: "complete", second: "absent"}
    assert temporaries(output) == []


@pytest.mark.parametrize("failing_write", ["image", "sidecar", "marker"])
def test_full_disk_leaves_no_temporary_and_no_partial_set(tmp_path: Path, failing_write: str, monkeypatch) -> None:
    """ENOSPC while writing a mask, a sidecar or the marker: nothing under a final name, no temporary left."""
    import errno

    import SimpleITK as sitk

    import SCIsegLib.segment as segment
    from SCIsegLib.inference import InferenceSettings
    from SCIsegLib.models import resolve_model
    from SCIsegLib.postprocess import PostprocessSettings

    case = make_phantom(seed=3, acquisition=SMALL, lesions=1)
    source = write_image_atomic(case.image, tmp_path / "in" / "sub-01_T2w.nii.gz")
    result = segment.SegmentationResult(
        masks={"sc": sitk.Cast(case.cord, sitk.sitkUInt8), "lesion": sitk.Cast(case.lesion, sitk.sitkUInt8)},
        label_map=sitk.Cast(case.labels, sitk.sitkUInt8),
    )
    calls = {"json": 0}
    real_write_text, real_write_image = Path.write_text, segment.write_image_file

    def full_disk() -> OSError:
        return OSError(errno.ENOSPC, "No space left on device")

    def write_text(self: Path, text: str, *args, **kwargs) -> int:
        calls["json"] += 1
        if (failing_write == "sidecar" and calls["json"] == 2) or (failing_write == "marker" and MARKER_SUFFIX in self.name):
            real_write_text(self, text[: len(text) // 2])  # half written, then the disk is full
            raise full_disk()
        return real_write_text(self, text, *args, **kwargs)

    def write_image(image, path, **kwargs) -> None:
        if failing_write == "image" and "_lesion_seg" in Path(path).name:
            Path(path).write_bytes(b"\x1f\x8b partial")
            raise full_disk()
        real_write_image(image, path, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(segment, "write_image_file", write_image)
    output = tmp_path / "out"
    with pytest.raises(OSError):
        segment.write_result(
            result, model=resolve_model(str(DEMO_MODEL)), source=source, output_dir=output,
            settings=InferenceSettings(), postprocess=PostprocessSettings(),
        )
    assert sorted(p.name for p in output.iterdir()) == []
