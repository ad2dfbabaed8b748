"""DeLong's variance of AUROC, and the paired test of two AUROCs on the same samples.

DeLong, DeLong and Clarke-Pearson (Biometrics 1988), computed in O(n log n) from midranks as Sun and
Xu (IEEE Signal Processing Letters 2014) show. For a label with m positives and n negatives, the
structural components are, per positive i and per negative j (ties count one half):

    V10_i = (midrank of i among all − midrank of i among the positives) / n
    V01_j = 1 − (midrank of j among all − midrank of j among the negatives) / m

AUROC is their mean, Var(AUROC) = S10 / m + S01 / n with S the sample (co)variances (ddof 1), and two
scorers of the same samples are compared through the covariance of their components.

A macro mean over labels is compared through each sample's influence on it: sample i contributes
(V10_ij − AUROC_j) / m_j for a label it is positive for and (V01_ij − AUROC_j) / n_j for one it is
negative for, scaled by √(m/(m−1)) and √(n/(n−1)) so that a single label gives DeLong's variance
exactly; the variance of the macro difference is the sum over samples of the squared, label-averaged
influences (samples are the unit of independence; labels of one sample are correlated, and this
keeps that correlation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr
from scipy.stats import rankdata


@dataclass(frozen=True)
class Components:
    """One scorer's DeLong structural components for one label."""

    auroc: float
    positives: np.ndarray  # V10, one per positive
    negatives: np.ndarray  # V01, one per negative


def components(score: np.ndarray, truth: np.ndarray) -> Components:
    """AUROC and its structural components (needs a positive and a negative)."""
    score = np.asarray(score, dtype=np.float64)
    positive = np.asarray(truth) > 0
    x, y = score[positive], score[~positive]
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        raise ValueError("DeLong needs both classes")
    combined = rankdata(np.concatenate([x, y]))
    v10 = (combined[:m] - rankdata(x)) / n
    v01 = 1.0 - (combined[m:] - rankdata(y)) / m
    return Components(float(v10.mean()), v10, v01)


def _covariance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.cov(a, b, ddof=1)[0, 1]) if len(a) > 1 else 0.0


def auroc_variance(score: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(AUROC, DeLong's variance of it)."""
    c = components(score, truth)
    return c.auroc, _covariance(c.positives, c.positives) / len(c.positives) + \
        _covariance(c.negatives, c.negatives) / len(c.negatives)


def auroc_interval(score: np.ndarray, truth: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(AUROC, low, high): the DeLong normal interval, clipped to [0, 1]."""
    auroc, variance = auroc_variance(score, truth)
    half = _z(level) * np.sqrt(max(variance, 0.0))
    return auroc, max(0.0, auroc - half), min(1.0, auroc + half)


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


@dataclass(frozen=True)
class PairedTest:
    """B − A in AUROC with DeLong's standard error and two-sided p-value (NaN when the variance is 0
    and the difference is 0: the two scorers rank the samples identically)."""

    auroc_a: float
    auroc_b: float
    difference: float
    standard_error: float
    z: float
    p_value: float


def _test(a: float, b: float, variance: float) -> PairedTest:
    difference = b - a
    error = float(np.sqrt(max(variance, 0.0)))
    if error == 0.0:
        z = 0.0 if difference == 0 else float(np.sign(difference) * np.inf)
        return PairedTest(a, b, difference, 0.0, z, float("nan") if difference == 0 else 0.0)
    z = difference / error
    return PairedTest(a, b, difference, error, z, float(2 * ndtr(-abs(z))))


def paired_test(score_a: np.ndarray, score_b: np.ndarray, truth: np.ndarray) -> PairedTest:
    """DeLong's test of AUROC(B) − AUROC(A) on the same samples."""
    a, b = components(score_a, truth), components(score_b, truth)
    m, n = len(a.positives), len(a.negatives)
    variance = (_covariance(a.positives, a.positives) + _covariance(b.positives, b.positives)
                - 2 * _covariance(a.positives, b.positives)) / m + \
               (_covariance(a.negatives, a.negatives) + _covariance(b.negatives, b.negatives)
                - 2 * _covariance(a.negatives, b.negatives)) / n
    return _test(a.auroc, b.auroc, variance)


def _influence(c: Components, positive: np.ndarray) -> np.ndarray:
    """Each sample's influence on one label's AUROC (DeLong-scaled; module docstring)."""
    m, n = len(c.positives), len(c.negatives)
    influence = np.zeros(len(positive))
    influence[positive] = (c.positives - c.auroc) / m * np.sqrt(m / max(m - 1, 1))
    influence[~positive] = (c.negatives - c.auroc) / n * np.sqrt(n / max(n - 1, 1))
    return influence


def macro_paired_test(scores_a: np.ndarray, scores_b: np.ndarray, targets: np.ndarray,
                      known: np.ndarray | None = None) -> PairedTest:
    """DeLong-style test of macro AUROC(B) − macro AUROC(A) over the labels with both classes among
    their known samples (samples × labels arrays)."""
    known = np.ones(targets.shape, dtype=bool) if known is None else np.asarray(known, dtype=bool)
    total = np.zeros(len(targets))
    aurocs_a, aurocs_b = [], []
    for j in range(targets.shape[1]):
        rows = known[:, j]
        positive = targets[rows, j] > 0
        if positive.all() or not positive.any():
            continue
        a = components(scores_a[rows, j], targets[rows, j])
        b = components(scores_b[rows, j], targets[rows, j])
        aurocs_a.append(a.auroc)
        aurocs_b.append(b.auroc)
        total[rows] += _influence(b, positive) - _influence(a, positive)
    if not aurocs_a:
        raise ValueError("no label has both classes")
    labels = len(aurocs_a)
    return _test(float(np.mean(aurocs_a)), float(np.mean(aurocs_b)), float(((total / labels) ** 2).sum()))


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment (family-wise error); NaN p-values stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(len(p), np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[index]))
        adjusted[index] = running
    return adjusted
