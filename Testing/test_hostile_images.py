"""Damaged and hostile images, built here by code (nothing stored): every reader refuses them cleanly.

Each case asserts the exit code (2), the one sentence on stderr (no traceback), and that nothing was
written; the segment cases also that the refusal comes before torch (fast, small memory). The geometry
case checks that masks carry the input's own NIfTI header (qform, sform, codes) with nibabel.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPOSITORY / "Resources" / "Models" / "sciseg-demo"

#: (case name, builder writing the file into a folder and returning its path, words of the refusal)
Case = tuple[str, Callable[[Path], Path], str]


def run_cli(*arguments: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m SCIsegLib`` with this checkout first on the path."""
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    return subprocess.run(
        [sys.executable, "-m", "SCIsegLib", *arguments], capture_output=True, text=True, env=environment, timeout=timeout
    )


def measured_cli(*arguments: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``python -m SCIsegLib``; return (result, CPU seconds (user + system), peak resident memory in MB)
    of this one child. CPU time from wait4 (not wall time: the test machine's cores are shared); the peak from the
    child's own ``VmHWM`` at exit (wait4's ru_maxrss would count the pytest process the child was forked from)."""
    with tempfile.TemporaryDirectory() as folder:
        status = Path(folder) / "status"
        launcher = (  # the status is recorded at exit, including segment's os._exit (which skips atexit)
            "import atexit, os, runpy, sys\n"
            f"record = lambda: open({str(status)!r}, 'w').write(open('/proc/self/status').read())\n"
            "atexit.register(record)\n"
            "real_exit = os._exit\n"
            "def recording_exit(code):\n    record()\n    real_exit(code)\n"
            "os._exit = recording_exit\n"
            "sys.argv = ['sciseg', *sys.argv[1:]]; runpy.run_module('SCIsegLib', run_name='__main__')"
        )
        environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-c", launcher, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment
        )
        stdout, stderr = process.stdout.read(), process.stderr.read()  # type: ignore[union-attr]
        _, exit_status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(exit_status)
        wall = time.perf_counter() - started
        assert wall < 60, f"{arguments}: {wall:.0f} s"
        peak_kb = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout.decode(), stderr.decode())
    return result, usage.ru_utime + usage.ru_stime, peak_kb / 1024


# ----- the corpus -------------------------------------------------------------------------------------


def good_volume(shape: tuple[int, int, int] = (24, 40, 16), dtype: type = np.float32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random(shape) * 1000).astype(dtype)


def save(image: nib.Nifti1Image, path: Path) -> Path:
    nib.save(image, str(path))
    return path


def nifti(data: np.ndarray, spacing: tuple[float, float, float] = (1.0, 0.8, 0.8)) -> nib.Nifti1Image:
    image = nib.Nifti1Image(data, np.diag([*spacing, 1.0]))
    image.header.set_qform(np.diag([*spacing, 1.0]), code=1)
    image.header.set_sform(np.diag([*spacing, 1.0]), code=1)
    return image


def truncated_gz(fraction: float) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        whole = save(nifti(good_volume((40, 64, 32))), folder / "whole.nii.gz").read_bytes()
        path = folder / f"cut{int(fraction * 100)}.nii.gz"
        path.write_bytes(whole[: int(len(whole) * fraction)])
        (folder / "whole.nii.gz").unlink()
        return path

    return build


def truncated_raw(folder: Path) -> Path:
    whole = save(nifti(good_volume()), folder / "whole.nii").read_bytes()
    (folder / "whole.nii").unlink()
    path = folder / "cut50.nii"
    path.write_bytes(whole[: len(whole) // 2])
    return path


def patched(image: nib.Nifti1Image, path: Path, offset: int, values: list[float]) -> Path:
    """Save ``image`` as ``path`` (.nii.gz) with float32 ``values`` written raw at byte ``offset`` of the
    header (nibabel would "fix" them when saving)."""
    raw = bytearray(image.header.binaryblock + b"\0" * 4 + np.asanyarray(image.dataobj).astype(image.get_data_dtype()).tobytes(order="F"))
    raw[offset : offset + 4 * len(values)] = np.array(values, dtype="<f4").tobytes()
    path.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    return path


def with_pixdim(values: tuple[float, float, float], name: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        image = nifti(good_volume())
        image.header["vox_offset"] = 352
        return patched(image, folder / f"{name}.nii.gz", 80, list(values))  # pixdim[1:4]

    return build


def offset_beyond_file(folder: Path) -> Path:
    path = save(nifti(good_volume()), folder / "offset.nii")
    raw = bytearray(path.read_bytes())
    raw[108:112] = np.array([10_000_000.0], dtype="<f4").tobytes()  # vox_offset
    path.write_bytes(bytes(raw))
    return path


def tiny(folder: Path) -> Path:
    return save(nifti(good_volume((2, 2, 2))), folder / "tiny.nii.gz")


def complex_data(folder: Path) -> Path:
    data = good_volume().astype(np.complex64) * (1 + 1j)
    return save(nifti(data), folder / "complex.nii.gz")


def float64_overflow(folder: Path) -> Path:
    data = good_volume(dtype=np.float64)
    data[5, 5, 5] = 1e39
    return save(nifti(data), folder / "huge_values.nii.gz")


def two_d(folder: Path) -> Path:
    return save(nib.Nifti1Image(good_volume()[:, :, 0].copy(), np.eye(4)), folder / "slice2d.nii.gz")


def four_d(folder: Path) -> Path:
    return save(nib.Nifti1Image(np.stack([good_volume()] * 3, axis=-1), np.eye(4)), folder / "fmri.nii.gz")


def not_an_image(folder: Path) -> Path:
    path = folder / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"patient notes, not an image\n" * 20))
    return path


def empty_file(folder: Path) -> Path:
    path = folder / "empty.nii.gz"
    path.write_bytes(b"")
    return path


def corrupt_gzip(folder: Path) -> Path:
    path = save(nifti(good_volume((40, 64, 32))), folder / "corrupt.nii.gz")
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    return path


def nan_sform(folder: Path) -> Path:
    image = nifti(good_volume())
    image.header.set_sform(np.diag([1.0, 0.8, 0.8, 1.0]), code=2)
    image.header["vox_offset"] = 352
    return patched(image, folder / "nan_sform.nii.gz", 280 + 12, [float("nan")])  # srow_x[3]


def huge_honest_header(folder: Path) -> Path:
    """A ~1 MB .nii.gz whose header honestly describes 1024^3 uint8 voxels (1 GiB of zeros, gzip members)."""
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 1024))
    header.set_data_dtype(np.uint8)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    path = folder / "huge.nii.gz"
    member = gzip.compress(bytes(64 * 2**20), compresslevel=9)
    with open(path, "wb") as stream:
        stream.write(gzip.compress(header.binaryblock + b"\0" * 4))
        for _ in range(16):  # 16 gzip members of 64 MiB of zeros each: a valid stream of 1 GiB
            stream.write(member)
    return path


CORPUS: list[Case] = [
    ("gz cut at 10%", truncated_gz(0.10), "the file ends before its"),
    ("gz cut at 50%", truncated_gz(0.50), "the file ends before its data does"),
    ("gz cut at 90%", truncated_gz(0.90), "the file ends before its data does"),
    ("raw .nii cut at 50%", truncated_raw, "the file ends before its data does"),
    ("zero pixdim", with_pixdim((0.0, 0.8, 0.8), "zero_pixdim"), "voxel sizes (pixdim)"),
    ("negative pixdim", with_pixdim((1.0, -0.8, 0.8), "negative_pixdim"), "voxel sizes (pixdim)"),
    ("NaN pixdim", with_pixdim((1.0, float("nan"), 0.8), "nan_pixdim"), "voxel sizes (pixdim)"),
    ("vox_offset beyond the file", offset_beyond_file, "beyond the end of the"),
    ("2x2x2 image", tiny, "too small to hold a spinal cord"),
    ("complex data", complex_data, "complex-valued voxels"),
    ("float64 beyond float32", float64_overflow, "beyond the float32 range"),
    ("2D image", two_d, "is a 2D image"),
    ("4D image", four_d, "is 4D with 3 volumes"),
    ("text named .nii.gz", not_an_image, "not an image"),
    ("empty file", empty_file, "not an image"),
    ("corrupted gzip", corrupt_gzip, "compressed data is damaged"),
    ("NaN in the sform", nan_sform, "sform with values that are not numbers"),
    ("1 MB gz with a 1024^3 header", huge_honest_header, "more than the limit"),
]

#: Totals reported by the last test of this file (inputs tried, clear refusals, files left behind).
TOTALS = {"tried": 0, "refused": 0, "leftovers": 0, "slowest_cpu_s": 0.0, "largest_mb": 0.0}


def assert_one_sentence(result: subprocess.CompletedProcess, path: Path, words: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("sciseg: "), result.stderr
    assert "Traceback" not in result.stderr
    assert words in lines[0] and path.name in lines[0], lines[0]
    assert lines[0].rstrip().endswith("."), lines[0]


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


@pytest.mark.parametrize("name,build,words", CORPUS, ids=[c[0] for c in CORPUS])
def test_segment_refuses_before_torch(tmp_path: Path, name: str, build: Callable[[Path], Path], words: str) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = build(inputs)
    before = files_in(inputs)
    output = tmp_path / "out"
    result, seconds, peak_mb = measured_cli("segment", str(path), "-o", str(output), "--model", str(DEMO_MODEL), "--device", "cpu")
    TOTALS["tried"] += 1
    TOTALS["refused"] += result.returncode == 2
    TOTALS["slowest_cpu_s"] = max(TOTALS["slowest_cpu_s"], seconds)
    TOTALS["largest_mb"] = max(TOTALS["largest_mb"], peak_mb)
    leftovers = (files_in(inputs) - before) | files_in(output)
    TOTALS["leftovers"] += len(leftovers)
    assert_one_sentence(result, path, words)
    assert not leftovers, leftovers
    # Refused before torch and the model: a start-up of Python, numpy, SimpleITK and nibabel, not 8-15 s.
    assert seconds < 2.0, f"{name}: refused after {seconds:.1f} s of CPU"
    assert peak_mb < 600, f"{name}: {peak_mb:.0f} MB"


def test_huge_header_refused_by_memory_when_the_voxel_limit_is_raised(tmp_path: Path) -> None:
    path = huge_honest_header(tmp_path)
    assert path.stat().st_size < 1.5 * 2**20
    from SCIsegLib.volume import SEGMENT_BYTES_PER_VOXEL, available_memory_bytes

    if 1024**3 * SEGMENT_BYTES_PER_VOXEL <= available_memory_bytes():
        pytest.skip("this machine has the memory for a 1024^3 scan")
    result, seconds, peak_mb = measured_cli("segment", str(path), "--max-voxels", str(2**31), "--model", str(DEMO_MODEL))
    TOTALS["tried"] += 1
    TOTALS["refused"] += result.returncode == 2
    assert_one_sentence(result, path, "GiB of memory to segment")
    assert files_in(tmp_path) == {"huge.nii.gz"}
    assert seconds < 2.0 and peak_mb < 600, (seconds, peak_mb)


TRUNCATED_READERS = [case for case in CORPUS if "cut" in case[0]]


@pytest.mark.parametrize("name,build,words", TRUNCATED_READERS, ids=[c[0] for c in TRUNCATED_READERS])
def test_export_and_evaluate_refuse_truncated_files(tmp_path: Path, name: str, build: Callable[[Path], Path], words: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    cut = build(folder)
    cut = cut.rename(folder / ("sub-01_T2w_sc_seg" + "".join(cut.suffixes)))  # named to pair with its reference
    source = save(nifti(good_volume()), folder / "sub-01_T2w.nii.gz")
    root = tmp_path / "bids"
    root.mkdir()
    export = run_cli("export", "--root", str(root), "--source", str(source), "--rater", "ab", "--labels", str(cut))
    assert_one_sentence(export, cut, words)
    assert files_in(root) == set()
    reference = save(nifti((good_volume() > 500).astype(np.uint8)), folder / "sub-01_T2w_label-SC_seg.nii.gz")
    output = tmp_path / "evaluation"
    evaluate = run_cli("evaluate", "--pred", str(cut), "--ref", str(reference), "-o", str(output))
    assert_one_sentence(evaluate, cut, words)
    assert files_in(output) == set()
    TOTALS["tried"] += 2
    TOTALS["refused"] += (export.returncode == 2) + (evaluate.returncode == 2)


def disagreeing_forms(folder: Path) -> tuple[Path, Path]:
    """Two phantoms: qform and sform 6 mm apart; an sform-only file whose scales differ from its pixdim."""
    from SCIsegLib.phantom import Acquisition, make_phantom
    from SCIsegLib.volume import ras_affine

    image = make_phantom(seed=5, acquisition=Acquisition(fov_mm=(24.0, 40.0, 64.0)), lesions=1).image
    import SimpleITK as sitk

    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    affine = ras_affine(image)
    shifted = affine.copy()
    shifted[:3, 3] += (6.0, 0.0, 0.0)
    both = nib.Nifti1Image(data, affine)
    both.set_qform(affine, code=1)
    both.set_sform(shifted, code=2)
    first = save(both, folder / "sub-01_T2w.nii.gz")
    scaled = affine.copy()
    scaled[:3, 2] *= 1.25
    only = nib.Nifti1Image(data, affine)
    only.set_sform(scaled, code=1)
    only.set_qform(None, code=0)
    return first, save(only, folder / "sub-02_T2w.nii.gz")


def test_masks_carry_the_input_header_and_a_warning_names_the_matrix_used(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    inputs = disagreeing_forms(folder)
    output = tmp_path / "out"
    result = run_cli("segment", *map(str, inputs), "-o", str(output), "--model", str(DEMO_MODEL), "--device", "cpu",
                     "--threads", "1", "--progress", "none", timeout=300)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert any("qform and sform disagree" in w and "used the qform" in w and "sub-01_T2w" in w for w in warnings), warnings
    assert any("only an sform" in w and "sub-02_T2w" in w for w in warnings), warnings
    for source in inputs:
        original = nib.load(str(source))
        stem = source.name.removesuffix(".nii.gz")
        for suffix in ("_sc_seg", "_lesion_seg"):
            mask = nib.load(str(output / f"{stem}{suffix}.nii.gz"))
            np.testing.assert_array_equal(mask.affine, original.affine)
            for coded in ("get_qform", "get_sform"):
                got, got_code = getattr(mask.header, coded)(coded=True)
                want, want_code = getattr(original.header, coded)(coded=True)
                assert got_code == want_code
                if want is not None:
                    np.testing.assert_array_equal(got, want)
            for field in ("pixdim", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "srow_x", "srow_y", "srow_z"):
                np.testing.assert_array_equal(mask.header[field], original.header[field])
            assert mask.get_data_dtype() == np.uint8 and mask.shape == original.shape
        marker = json.loads((output / f"{stem}_sciseg_outputs.json").read_text())
        assert sorted(marker["Files"]) == sorted(f"{stem}{s}" for s in ("_sc_seg.nii.gz", "_sc_seg.json", "_lesion_seg.nii.gz", "_lesion_seg.json"))


def test_report_totals() -> None:
    """Prints the corpus totals (run with -s to see them); they also must add up."""
    print(f"\nhostile inputs tried {TOTALS['tried']}, refused with exit 2 {TOTALS['refused']}, "
          f"files left behind {TOTALS['leftovers']}, slowest refusal {TOTALS['slowest_cpu_s']:.2f} s of CPU, "
          f"largest peak memory {TOTALS['largest_mb']:.0f} MB")
    assert TOTALS["refused"] == TOTALS["tried"] and TOTALS["leftovers"] == 0
