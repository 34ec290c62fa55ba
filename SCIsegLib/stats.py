"""Biomarker agreement between two sets of measures (manual vs automatic, before vs after fine-tuning).

Paired by subject: Wilcoxon signed-rank test, Bland-Altman bias and 95 % limits of agreement,
Spearman correlation (between the methods, and of each with a clinical score), D'Agostino-Pearson
normality of the differences. scipy.stats underneath.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Agreement:
    """Paired comparison of one measure (units of the measure; p-values two-sided)."""

    n: int
    mean_a: float
    mean_b: float
    wilcoxon_statistic: float
    wilcoxon_p: float
    bland_altman_bias: float  # mean of (b - a)
    bland_altman_lower: float  # bias - 1.96 SD of the differences
    bland_altman_upper: float
    spearman_rho: float
    spearman_p: float
    normality_p: float  # D'Agostino-Pearson on the differences (NaN below 8 pairs)

    def as_dict(self) -> dict:
        return asdict(self)


def agreement(a: np.ndarray, b: np.ndarray) -> Agreement:
    """Compare paired measures ``a`` and ``b`` (same subjects, same order; NaN pairs dropped)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if len(a) < 2:
        raise ValueError("at least two paired measures are needed")
    differences = b - a
    if np.allclose(differences, 0):
        wilcoxon_statistic, wilcoxon_p = 0.0, 1.0
    else:
        test = stats.wilcoxon(a, b)
        wilcoxon_statistic, wilcoxon_p = float(test.statistic), float(test.pvalue)
    rho, rho_p = stats.spearmanr(a, b)
    sd = float(np.std(differences, ddof=1))
    bias = float(np.mean(differences))
    normality = float(stats.normaltest(differences).pvalue) if len(differences) >= 8 else float("nan")
    return Agreement(
        n=len(a), mean_a=float(a.mean()), mean_b=float(b.mean()), wilcoxon_statistic=wilcoxon_statistic,
        wilcoxon_p=wilcoxon_p, bland_altman_bias=bias, bland_altman_lower=bias - 1.96 * sd,
        bland_altman_upper=bias + 1.96 * sd, spearman_rho=float(rho), spearman_p=float(rho_p),
        normality_p=normality,
    )


def clinical_correlation(measure: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """Spearman rho and p-value between a biomarker and a clinical score (NaN pairs dropped)."""
    measure, score = np.asarray(measure, float), np.asarray(score, float)
    keep = np.isfinite(measure) & np.isfinite(score)
    rho, p = stats.spearmanr(measure[keep], score[keep])
    return float(rho), float(p)


def scatter_plot(a: np.ndarray, b: np.ndarray, path, *, label_a: str, label_b: str, title: str) -> None:
    """Scatter of b against a with the identity line (as the SCIseg paper's Figures 5A and 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.scatter(a, b, s=18, alpha=0.8)
    low = float(np.nanmin([np.nanmin(a), np.nanmin(b)]))
    high = float(np.nanmax([np.nanmax(a), np.nanmax(b)]))
    axis.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="identity")
    axis.set_xlabel(label_a)
    axis.set_ylabel(label_b)
    axis.set_title(title)
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
