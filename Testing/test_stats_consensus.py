"""Agreement statistics against scipy on known data; consensus and reproducibility on hand-built masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from SCIsegLib import consensus, stats


def test_agreement_against_scipy_and_hand_values() -> None:
    rng = np.random.default_rng(4)
    manual = rng.uniform(50, 300, size=30)
    automatic = manual * 1.05 + rng.normal(0, 10, size=30)
    result = stats.agreement(manual, automatic)
    assert result.n == 30
    assert result.wilcoxon_p == pytest.approx(scipy_stats.wilcoxon(manual, automatic).pvalue)
    differences = automatic - manual
    assert result.bland_altman_bias == pytest.approx(differences.mean())
    assert result.bland_altman_upper - result.bland_altman_bias == pytest.approx(1.96 * differences.std(ddof=1))
    assert result.spearman_rho == pytest.approx(scipy_stats.spearmanr(manual, automatic).statistic)
    assert result.normality_p == pytest.approx(scipy_stats.normaltest(differences).pvalue)
    identical = stats.agreement([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert identical.wilcoxon_p == 1.0 and identical.bland_altman_bias == 0.0 and np.isnan(identical.normality_p)
    rho, p = stats.clinical_correlation([1, 2, 3, 4, np.nan], [10, 8, 6, 1, 3])
    assert rho == pytest.approx(-1.0)


def test_scatter_plot_is_written(tmp_path) -> None:
    stats.scatter_plot(np.arange(5.0), np.arange(5.0) * 1.1, tmp_path / "s.png", label_a="manual", label_b="auto", title="volume")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_majority_vote_and_ties() -> None:
    a, b, c = (np.zeros((4, 4, 4), bool) for _ in range(3))
    a[0, 0, 0] = b[0, 0, 0] = True  # 2 of 3
    c[1, 1, 1] = True  # 1 of 3
    assert consensus.majority_vote([a, b, c]).sum() == 1
    tie = consensus.majority_vote([a, c])  # 1 of 2 everywhere they mark
    assert tie.sum() == 0 and consensus.majority_vote([a, c], tie="foreground").sum() == 2
    labels = consensus.majority_vote_labels([a.astype(np.uint8) * 2, b.astype(np.uint8) * 2, c.astype(np.uint8)])
    assert labels[0, 0, 0] == 2 and labels[1, 1, 1] == 0


def test_staple_agrees_with_unanimous_raters() -> None:
    mask = np.zeros((6, 6, 6), bool)
    mask[1:5, 1:5, 1:5] = True
    noisy = mask.copy()
    noisy[1, 1, 1] = False
    result, probability = consensus.staple([mask, mask, noisy])
    assert np.array_equal(result, mask)
    assert probability.shape == mask.shape and probability.max() <= 1.0


def test_reproducibility_measures() -> None:
    first = np.zeros((10, 10, 10), bool)
    first[2:6, 2:6, 2:6] = True  # 64 voxels
    second = np.zeros_like(first)
    second[2:6, 2:6, 2:7] = True  # 80 voxels
    result = consensus.reproducibility([first, second], (1.0, 1.0, 2.0))
    volumes = np.array([64, 80]) * 2.0
    assert result["volume_cv_percent"] == pytest.approx(100 * volumes.std(ddof=1) / volumes.mean())
    assert result["pairwise_dice_mean"] == pytest.approx(2 * 64 / 144)
    assert result["pairwise_hausdorff_mean_mm"] == pytest.approx(2.0)


def test_cli_evaluate_stats_consensus(tmp_path) -> None:
    import subprocess
    import sys

    import pandas as pd
    import SimpleITK as sitk

    from SCIsegLib.phantom import SAGITTAL, make_phantom
    from SCIsegLib.volume import write_image_atomic

    def run(*arguments):
        result = subprocess.run([sys.executable, "-m", "SCIsegLib", *arguments], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result

    predictions, references = [], []
    for index in range(3):
        case = make_phantom(seed=900 + index, acquisition=SAGITTAL, lesions=2)
        references.append(write_image_atomic(case.labels, tmp_path / "ref" / f"sub-0{index}_T2w_dseg.nii.gz"))
        eroded = sitk.BinaryErode(case.cord, [1, 1, 1])
        predictions.append(write_image_atomic(eroded, tmp_path / "pred" / f"sub-0{index}_T2w_sc_seg.nii.gz"))
        predictions.append(write_image_atomic(case.lesion, tmp_path / "pred" / f"sub-0{index}_T2w_lesion_seg.nii.gz"))
    run("evaluate", "--pred", *map(str, predictions), "--ref", *map(str, references), "-o", str(tmp_path / "eval"), "--method", "eroded")
    table = pd.read_csv(tmp_path / "eval" / "evaluation.csv")
    assert len(table) == 6 and set(table["structure"]) == {"sc", "lesion"}
    lesion = table[table["structure"] == "lesion"]
    assert (lesion["dice"] == 1.0).all() and (lesion["anima_f1"] == 1.0).all()
    cord = table[table["structure"] == "sc"]
    assert (cord["dice"] < 1.0).all() and (cord["relative_volume_error_percent"] < 0).all()
    assert (tmp_path / "eval" / "dice_sc.png").is_file() and (tmp_path / "eval" / "summary.csv").is_file()

    pd.DataFrame({"subject": ["a", "b", "c", "d"], "volume [mm3]": [10, 20, 30, 40.0]}).to_csv(tmp_path / "manual.csv", index=False)
    pd.DataFrame({"subject": ["a", "b", "c", "d"], "volume [mm3]": [11, 19, 33, 41.0]}).to_csv(tmp_path / "auto.csv", index=False)
    run("stats", "--a", str(tmp_path / "manual.csv"), "--b", str(tmp_path / "auto.csv"), "--columns", "volume [mm3]", "-o", str(tmp_path / "stats"))
    agreement = pd.read_csv(tmp_path / "stats" / "agreement.csv")
    assert agreement["bland_altman_bias"][0] == pytest.approx(1.0)

    consensus_run = run("consensus", *map(str, references[:1] * 3), "-o", str(tmp_path / "consensus.nii.gz"))
    assert '"pairwise_dice_mean": 1.0' in consensus_run.stdout
    voted = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "consensus.nii.gz")))
    assert np.array_equal(voted, sitk.GetArrayFromImage(sitk.ReadImage(str(references[0]))))


def test_evaluate_two_trees_by_folder(tmp_path) -> None:
    import SimpleITK as sitk

    from SCIsegLib.evaluation import evaluate
    from SCIsegLib.phantom import SAGITTAL, make_phantom
    from SCIsegLib.training import export
    from SCIsegLib.volume import write_image_atomic

    bids = tmp_path / "bids"
    for index in range(2):
        case = make_phantom(seed=950 + index, acquisition=SAGITTAL, lesions=1)
        source = write_image_atomic(case.image, bids / f"sub-0{index}" / "anat" / f"sub-0{index}_T2w.nii.gz")
        export.export_correction(root=bids, source=source, cord=case.cord, lesion=case.lesion, rater="R")
        export.export_correction(root=bids, source=source, cord=case.cord, lesion=case.lesion, rater="R")  # two versions
        write_image_atomic(case.cord, tmp_path / "pred" / f"sub-0{index}_T2w_sc_seg.nii.gz")
        write_image_atomic(sitk.BinaryDilate(case.lesion, [1, 1, 1]), tmp_path / "pred" / f"sub-0{index}_T2w_lesion_seg.nii.gz")
    table = evaluate([tmp_path / "pred"], [bids / "derivatives" / "labels"])
    assert len(table) == 4  # 2 subjects x (cord, lesion); the version store is not counted twice
    assert (table[table["structure"] == "sc"]["dice"] == 1.0).all()
    assert (table[table["structure"] == "lesion"]["dice"] < 1.0).all()
