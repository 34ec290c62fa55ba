"""Cord compartments on real scans: WM = cord - GM, GM/WM areas as SCT measures them, levels, reproducibility."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import shared_file
from SCIsegLib import cli
from SCIsegLib.centerline import centerline_derivatives
from SCIsegLib.compartments import areas_per_level, compartment_areas, white_matter
from SCIsegLib.consensus import compartment_reproducibility, relative_sd_percent
from SCIsegLib.errors import InputError

REPOSITORY = Path(__file__).resolve().parents[1]
T2S = "sct_testing_data/t2s/"
SUB = "gm_challenge/derivatives/labels/sub-9418/anat/sub-9418_run-1_T2starw_"


def binary(path: Path) -> sitk.Image:
    image = sitk.ReadImage(str(path))
    mask = sitk.Cast(sitk.Cast(image, sitk.sitkFloat32) >= 0.5, sitk.sitkUInt8)
    mask.CopyInformation(image)
    return mask


def t2s_masks() -> tuple[sitk.Image, sitk.Image]:
    return binary(shared_file(T2S + "t2s_gmseg_manual.nii.gz")), binary(shared_file(T2S + "t2s_seg-deepseg.nii.gz"))


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SCIsegLib", *arguments], capture_output=True, text=True, cwd=REPOSITORY,
                          env={"PYTHONPATH": str(REPOSITORY), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_white_matter_is_cord_minus_grey_matter_on_the_input_grid() -> None:
    gm, cord = t2s_masks()
    wm = white_matter(cord, gm)
    assert wm.GetSize() == cord.GetSize() and wm.GetSpacing() == cord.GetSpacing()
    assert wm.GetOrigin() == cord.GetOrigin() and wm.GetDirection() == cord.GetDirection()
    g, c, w = (sitk.GetArrayFromImage(i).astype(bool) for i in (gm, cord, wm))
    assert not (w & g).any()
    assert np.array_equal(w | (g & c), c)
    assert w.sum() == c.sum() - (g & c).sum() == 2443 - (519 - 22)  # 22 manual GM voxels lie outside the automatic cord


def test_areas_match_an_independent_count_of_the_same_masks() -> None:
    """Without angle correction SCT's area is the section's voxel count times the pixel area (the 0.1 mm linear
    resampling keeps the sum); with it, that count times cos(angle_AP) cos(angle_RL) of the cord's centerline."""
    gm = binary(shared_file(SUB + "gmseg-manual.nii.gz"))
    cord = binary(shared_file(SUB + "seg-manual.nii.gz"))
    pixel = gm.GetSpacing()[0] * gm.GetSpacing()[1]
    g = sitk.GetArrayFromImage(gm).astype(bool)  # (z, y, x); the scan is LAS: z is already I->S
    w = sitk.GetArrayFromImage(cord).astype(bool) & ~g
    flat = compartment_areas(gm, cord, angle_correction=False)
    for z in range(g.shape[0]):
        if g[z].any():
            assert flat["gm_area_mm2"][z] == pytest.approx(g[z].sum() * pixel, rel=0.01)
            assert flat["wm_area_mm2"][z] == pytest.approx(w[z].sum() * pixel, rel=0.01)
    tilted = compartment_areas(gm, cord)
    cosines = np.cos(np.radians(tilted["angle_AP"])) * np.cos(np.radians(tilted["angle_RL"]))
    present = tilted["gm_area_mm2"].notna()
    np.testing.assert_allclose(tilted["gm_area_mm2"][present], (flat["gm_area_mm2"] * cosines)[present], rtol=0.03)
    ratio = tilted["gm_area_mm2"] / tilted["cord_area_mm2"]
    np.testing.assert_allclose(tilted["gm_cord_ratio"][present], ratio[present])


def test_grey_matter_angles_come_from_the_cord_centerline() -> None:
    """The GM's own centre of mass wanders (two horns): SCT measures GM with the cord's centerline."""
    gm, cord = t2s_masks()
    table = compartment_areas(gm, cord)
    c = sitk.GetArrayFromImage(cord).transpose(2, 1, 0).astype(float)  # nibabel LAS is SCT RPI: (x, y, z) as it is
    derivatives = centerline_derivatives(c, cord.GetSpacing()[2], 30)
    for z, (dx, dy) in derivatives.items():
        assert table["angle_AP"][z] == pytest.approx(math.degrees(math.atan2(dx * 0.5, cord.GetSpacing()[2])), abs=1e-6)
        assert table["angle_RL"][z] == pytest.approx(math.degrees(math.atan2(dy * 0.5, cord.GetSpacing()[2])), abs=1e-6)
    own = compartment_areas(gm, gm)  # the GM's own centerline: other angles, other areas
    assert not np.allclose(own["angle_RL"], table["angle_RL"], atol=0.5)


def test_areas_per_vertebral_level_average_the_level_slices() -> None:
    gm, cord = t2s_masks()
    c = sitk.GetArrayFromImage(cord)
    levels_array = np.where(c > 0, np.where(np.arange(c.shape[0])[:, None, None] < 5, 3, 4), 0).astype(np.uint8)
    levels = sitk.GetImageFromArray(levels_array)
    levels.CopyInformation(cord)
    table = compartment_areas(gm, cord, levels=levels)
    assert table["VertLevel"].tolist() == [3.0] * 5 + [4.0] * 4
    per_level = areas_per_level(table)
    assert per_level["VertLevel"].tolist() == [3, 4] and per_level["slices"].tolist() == [5, 4]
    assert per_level["gm_area_mm2"][0] == pytest.approx(table["gm_area_mm2"][:5].mean())
    assert per_level["wm_area_mm2"][1] == pytest.approx(table["wm_area_mm2"][5:].mean())


def shifted_copy(mask: sitk.Image, voxels: int = 1) -> sitk.Image:
    """The same anatomy moved by ``voxels`` along x on the same grid: a rescan with the subject shifted."""
    array = np.roll(sitk.GetArrayFromImage(mask), voxels, axis=2)
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(mask)
    return image


def resampled_copy(mask: sitk.Image, spacing_xy: float = 0.4) -> sitk.Image:
    """The same anatomy on a finer in-plane grid (another acquisition): linear then 0.5 threshold."""
    size = [int(round(n * s / spacing_xy)) for n, s in zip(mask.GetSize()[:2], mask.GetSpacing()[:2], strict=True)]
    reference = sitk.Image(size + [mask.GetSize()[2]], sitk.sitkUInt8)
    reference.SetSpacing((spacing_xy, spacing_xy, mask.GetSpacing()[2]))
    reference.SetOrigin(mask.GetOrigin())
    reference.SetDirection(mask.GetDirection())
    soft = sitk.Resample(sitk.Cast(mask, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear, 0.0)
    result = sitk.Cast(soft >= 0.5, sitk.sitkUInt8)
    result.CopyInformation(reference)
    return result


def test_relative_sd_of_areas_over_a_shifted_and_a_resampled_rescan() -> None:
    gm, cord = t2s_masks()
    scans_gm = [gm, shifted_copy(gm), resampled_copy(gm)]
    scans_cord = [cord, shifted_copy(cord), resampled_copy(cord)]
    result = compartment_reproducibility(scans_gm, scans_cord)
    gm_means = [float(compartment_areas(g, c)["gm_area_mm2"].dropna().mean()) for g, c in zip(scans_gm, scans_cord, strict=True)]
    assert [s["gm"] for s in result["scans"]] == pytest.approx(gm_means)
    assert result["gm_area_rsd_percent"] == pytest.approx(100 * np.std(gm_means, ddof=1) / np.mean(gm_means))
    assert 0 < result["gm_area_rsd_percent"] < 5 and 0 < result["wm_area_rsd_percent"] < 3
    assert result["scans"][0]["gm"] == pytest.approx(result["scans"][1]["gm"], rel=0.02)  # a shift moves, not shrinks
    assert [p["pair"] for p in result["pairs"]] == [[0, 1]]  # only the scans on one grid are overlapped
    pair = result["pairs"][0]
    g0, g1 = (sitk.GetArrayFromImage(i).astype(bool) for i in scans_gm[:2])
    assert pair["gm_dice"] == pytest.approx(2 * (g0 & g1).sum() / (g0.sum() + g1.sum()))
    assert pair["gm_hausdorff_mm"] == pytest.approx(0.5, abs=0.01)  # every voxel moved by one 0.5 mm voxel
    assert [p["pair"] for p in result["pairs_not_compared"]] == [[0, 2], [1, 2]]
    assert math.isnan(relative_sd_percent([1.0]))


def test_masks_on_other_grids_are_refused_in_one_sentence() -> None:
    gm, cord = t2s_masks()
    with pytest.raises(InputError, match="not on one voxel grid"):
        compartment_areas(resampled_copy(gm), cord)
    empty_cord = sitk.Image(cord.GetSize(), sitk.sitkUInt8)
    empty_cord.CopyInformation(cord)
    with pytest.raises(InputError, match="empty"):
        compartment_areas(gm, empty_cord)


def test_cli_cord_gm_levels_and_consensus(tmp_path: Path) -> None:
    gm_path, cord_path = shared_file(T2S + "t2s_gmseg_manual.nii.gz"), shared_file(T2S + "t2s_seg-deepseg.nii.gz")
    gm, cord = t2s_masks()
    c = sitk.GetArrayFromImage(cord)
    levels = sitk.GetImageFromArray(np.where(c > 0, 3, 0).astype(np.uint8))
    levels.CopyInformation(cord)
    sitk.WriteImage(levels, str(tmp_path / "t2s_seg_labeled.nii.gz"))
    done = run_cli("cord", "--gm", str(gm_path), "--cord", str(cord_path), "--levels", str(tmp_path / "t2s_seg_labeled.nii.gz"),
                   "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "out" / "t2s_gmseg_areas.csv")
    np.testing.assert_allclose(table["gm_area_mm2"], compartment_areas(gm, cord)["gm_area_mm2"])
    per_level = pd.read_csv(tmp_path / "out" / "t2s_gmseg_areas_perlevel.csv")
    assert per_level["VertLevel"].tolist() == [3] and per_level["gm_area_mm2"][0] == pytest.approx(table["gm_area_mm2"].mean())
    sidecar = json.loads((tmp_path / "out" / "t2s_gmseg_areas.json").read_text())
    assert any("-angle-corr-centerline" in command for command in sidecar["EquivalentCommands"])

    shifted_gm, shifted_cord = tmp_path / "rescan_gmseg.nii.gz", tmp_path / "rescan_sc_seg.nii.gz"
    sitk.WriteImage(shifted_copy(gm), str(shifted_gm))
    sitk.WriteImage(shifted_copy(cord), str(shifted_cord))
    done = run_cli("consensus", str(gm_path), str(shifted_gm), "--cord", str(cord_path), str(shifted_cord))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert 0 <= report["gm_area_rsd_percent"] < 5 and report["pairs"][0]["gm_dice"] < 1

    bad = run_cli("cord", "--gm", str(gm_path), "--cord",
                  str(shared_file("sct_testing_data/t2/t2_seg-manual.nii.gz")), "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "not on one voxel grid" in bad.stderr


@pytest.mark.parametrize("arguments, message", [
    (["cord", "--cord", "{cord}", "--levels", "{cord}", "-o", "{out}"], "--levels goes with --gm"),
    (["consensus", "{gm}", "--cord", "{cord}"], "at least two grey-matter masks"),
    (["consensus", "{gm}", "{gm}", "{gm}", "--cord", "{cord}", "{cord}"], "one cord mask per grey-matter mask"),
    (["consensus", "{gm}", "{gm}", "--cord", "{cord}", "-o", "{out}/c.txt"], "must be a file name ending in .nii.gz"),
    (["segment", "{image}", "--model", str(REPOSITORY / "Resources" / "Models" / "sciseg-demo"), "--cord", "{cord}",
      "-o", "{out}"], "--cord goes with a grey-matter model"),
])
def test_compartment_options_refuse_bad_input_in_one_sentence(tmp_path: Path, arguments: list[str], message: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    values = {"gm": str(shared_file(T2S + "t2s_gmseg_manual.nii.gz")), "cord": str(shared_file(T2S + "t2s_seg-deepseg.nii.gz")),
              "image": str(shared_file(T2S + "t2s.nii.gz")), "out": str(tmp_path)}
    code = cli.main([argument.format(**values) for argument in arguments])
    stderr = capsys.readouterr().err
    assert code == 2 and message in stderr and "Traceback" not in stderr, stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_white_matter_after_segment_finds_our_cord_mask_or_says_why_not(tmp_path: Path) -> None:
    from SCIsegLib.compartments_cli import write_white_matter_after_segment

    gm_path = tmp_path / "t2s_gmseg.nii.gz"
    shutil.copy(shared_file(T2S + "t2s_gmseg_manual.nii.gz"), gm_path)
    warnings: list[str] = []
    records = [{"outputs": [str(gm_path)]}]
    assert write_white_matter_after_segment(records, None, warnings.append) == []
    assert "no cord mask for t2s_gmseg.nii.gz" in warnings[0] and not (tmp_path / "t2s_wmseg.nii.gz").exists()
    shutil.copy(shared_file(T2S + "t2s_seg-deepseg.nii.gz"), tmp_path / "t2s_sc_seg.nii.gz")  # `sciseg segment`'s cord
    written = write_white_matter_after_segment(records, None, warnings.append)
    assert written == [tmp_path / "t2s_wmseg.nii.gz", tmp_path / "t2s_wmseg.json"]
    assert records[0]["outputs"][-1] == str(tmp_path / "t2s_wmseg.nii.gz")
    gm, cord = t2s_masks()
    wm = sitk.GetArrayFromImage(sitk.ReadImage(str(written[0])))
    assert np.array_equal(wm, sitk.GetArrayFromImage(white_matter(cord, gm)))
    sidecar = json.loads(written[1].read_text())
    assert sidecar["VoxelCount"] == int(wm.sum()) and sidecar["GMVoxelsOutsideCord"] == 22
    with pytest.raises(InputError, match="cord mask of one scan"):
        write_white_matter_after_segment(records * 2, tmp_path / "t2s_sc_seg.nii.gz", warnings.append)
