"""Are a run's probabilities calibrated? Per label on the analysed split, from the stored scores.

The probability is the run's own: under `multilabel` the sigmoid of its score (a log-odds for lp/ft
heads and pos/neg prompts; for a scaled cosine it is the probability the multilabel protocol implies),
under `study` the study's row min-max scaling (the notebook thresholds it at 0.5). `params.probability`
says which.

Figures (metric names start `calibration.`), per label over its known samples, and their macro mean
(label NULL) over the labels with a known sample:
- `ece_equal_width`, `ece_equal_mass`: expected calibration error, Σ_b (n_b / N) |observed_b − mean
  probability_b| over 15 bins of equal width on [0, 1], or of equal mass (the split's quantiles);
- `mce`: the largest |observed − mean probability| over the non-empty equal-width bins;
- `brier`: mean (p − y)²;
- `reliability`: value = the equal-width ECE, params.bins = each equal-width bin's mean probability,
  observed frequency and count (what `embedstore chart calibration` draws);
- recalibrated on val and applied to the split (not when the split is val itself): per label
  temperature scaling (p = σ(logit(p) / T), T fitted by likelihood on val; `temperature` is T) and
  isotonic regression (scikit-learn), each with `…_temperature` and `…_isotonic` ECE and Brier (a
  label needs both classes among its known val samples); the temperatures carry no interval (they
  are fitted once, on val).

Intervals: the bins are fixed by the point estimate (edges of the split), so each resample's figure
is weights × per-sample contributions (bin counts, probability and outcome sums, squared errors).
ECE, MCE and the reliability figure are biased upward under resampling (noise widens every bin's
gap), so their interval is the estimate ± 1.96 bootstrap standard deviations (params.interval says
so), as for the separability figures; Brier keeps the percentile interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from embedstore.analyses.common import AnalysisOptions, MetricRow, fixed_macro, with_intervals
from embedstore.analyses.rundata import RunData
from embedstore.choices import Protocol
from embedstore.heads import row_minmax

#: Bins of the ECE figures and the reliability diagram.
N_BINS = 15

#: The split recalibration is fitted on.
FIT_SPLIT = "val"

#: Binned gaps are biased upward (noise widens every bin's gap), so a resample's ECE sits above the
#: estimate and a percentile interval may not cover it: these get the estimate ± 1.96 bootstrap SD.
BIASED = frozenset({f"calibration.{name}{suffix}" for name in ("ece_equal_width", "ece_equal_mass", "mce",
                                                                "reliability")
                    for suffix in ("", "_temperature", "_isotonic")})

#: Probabilities are clipped this far from 0 and 1 before a logit is taken.
EPSILON = 1e-6


def probabilities(run: RunData, protocol: Protocol) -> tuple[np.ndarray, str]:
    """The run's probabilities (samples × labels) under `protocol`, and what they are."""
    if protocol == Protocol.STUDY:
        return row_minmax(run.scores), "row min-max (s - min) / (max - min + 1e-8), as the study thresholds it"
    return 1.0 / (1.0 + np.exp(-run.scores)), "sigmoid(score)"


def _logit(p: np.ndarray) -> np.ndarray:
    clipped = np.clip(p, EPSILON, 1 - EPSILON)
    return np.log(clipped / (1 - clipped))


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of σ(logit(p) / T) on (p, y)."""
    from scipy.optimize import minimize_scalar

    z = _logit(p)

    def loss(log_t: float) -> float:
        q = np.clip(1.0 / (1.0 + np.exp(-z / math.exp(log_t))), EPSILON, 1 - EPSILON)
        return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())

    return float(math.exp(minimize_scalar(loss, bounds=(-5.0, 5.0), method="bounded").x))


def with_temperature(p: np.ndarray, t: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-_logit(p) / t))


def isotonic(fit_p: np.ndarray, fit_y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Isotonic regression of y on p fitted on (fit_p, fit_y), applied to p (clipped to the fitted range)."""
    from sklearn.isotonic import IsotonicRegression

    return np.asarray(IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(fit_p, fit_y).predict(p))


def equal_width_bins(p: np.ndarray) -> np.ndarray:
    """Bin index (0 … N_BINS − 1) of each probability on N_BINS equal-width bins of [0, 1]."""
    return np.minimum((p * N_BINS).astype(int), N_BINS - 1)


def equal_mass_bins(p: np.ndarray) -> np.ndarray:
    """Bin index of each probability on N_BINS bins holding (as nearly as ties allow) equal counts."""
    edges = np.quantile(p, np.linspace(0, 1, N_BINS + 1)[1:-1])
    return np.searchsorted(edges, p, side="right")


class BinnedCalibration:
    """One label's binned calibration as a function of resample weights (per-sample contributions)."""

    def __init__(self, p: np.ndarray, y: np.ndarray, bins: np.ndarray) -> None:
        self.one_hot = np.zeros((len(p), N_BINS))
        self.one_hot[np.arange(len(p)), bins] = 1.0
        self.p, self.y = self.one_hot * p[:, None], self.one_hot * y[:, None]

    def gaps(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(|observed − mean probability| per bin, bin weight) per resample; 0 for empty bins."""
        count = weights @ self.one_hot
        with np.errstate(invalid="ignore", divide="ignore"):
            gap = np.where(count > 0, np.abs(weights @ self.y - weights @ self.p) / count, 0.0)
        return gap, count

    def ece(self, weights: np.ndarray) -> np.ndarray:
        gap, count = self.gaps(weights)
        total = count.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (gap * count).sum(axis=1) / total, np.nan)

    def mce(self, weights: np.ndarray) -> np.ndarray:
        gap, count = self.gaps(weights)
        return np.where(count.sum(axis=1) > 0, np.where(count > 0, gap, -np.inf).max(axis=1), np.nan)


def _brier(p: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    squared = (p - y) ** 2

    def brier(weights: np.ndarray) -> np.ndarray:
        total = weights.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, weights @ squared / total, np.nan)

    return brier


def compute(run: RunData, options: AnalysisOptions) -> list[MetricRow]:
    """Calibration of `options.split` under `options.protocol`, before and after recalibration on val."""
    mask = run.split(options.split)
    probability, what = probabilities(run, options.protocol)
    known = run.known_pairs
    recalibrate = options.split != FIT_SPLIT and (run.splits == FIT_SPLIT).any()
    fit = run.splits == FIT_SPLIT
    figures: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    point_params: dict[str, dict[str, object]] = {}
    temperatures: list[MetricRow] = []
    n = int(mask.sum())
    for j, label in enumerate(run.labels):
        rows = known[mask, j]
        if not rows.any():
            continue
        p_all, y_all = probability[mask, j], run.targets[mask, j].astype(np.float64)

        def restricted(f: Callable[[np.ndarray], np.ndarray], rows: np.ndarray = rows) -> Callable[
                [np.ndarray], np.ndarray]:
            return f if rows.all() else lambda weights: f(weights[:, rows])

        p, y = p_all[rows], y_all[rows]
        variants = {"": p}
        if recalibrate:
            fit_rows = fit & known[:, j]
            fit_p, fit_y = probability[fit_rows, j], run.targets[fit_rows, j].astype(np.float64)
            if fit_y.min(initial=1) < fit_y.max(initial=0):  # both classes on val: a fit is possible
                t = fit_temperature(fit_p, fit_y)
                variants["_temperature"] = with_temperature(p, t)
                variants["_isotonic"] = isotonic(fit_p, fit_y, p)
                temperatures.append(MetricRow("calibration.temperature", t, label,
                                              params={"fitted_on": FIT_SPLIT, "samples": int(fit_rows.sum())}))
        for suffix, q in variants.items():
            width = BinnedCalibration(q, y, equal_width_bins(q))
            figures[f"calibration.ece_equal_width{suffix}|{label}"] = restricted(width.ece)
            figures[f"calibration.ece_equal_mass{suffix}|{label}"] = restricted(
                BinnedCalibration(q, y, equal_mass_bins(q)).ece)
            figures[f"calibration.brier{suffix}|{label}"] = restricted(_brier(q, y))
            if not suffix:
                figures[f"calibration.mce|{label}"] = restricted(width.mce)
                point_params[f"calibration.reliability|{label}"] = {"bins": _bins(q, y)}
                figures[f"calibration.reliability|{label}"] = restricted(width.ece)
    macros = [f"{name}{suffix}" for suffix in ("", "_temperature", "_isotonic")
              for name in ("ece_equal_width", "ece_equal_mass", "brier")]
    labelled = [label for label in run.labels if f"calibration.brier|{label}" in figures]

    def resampled(weights: np.ndarray) -> dict[str, np.ndarray]:
        values = {name: f(weights) for name, f in figures.items()}
        for metric in macros:
            columns = [values[f"calibration.{metric}|{label}"] for label in labelled
                       if f"calibration.{metric}|{label}" in values]
            if columns and len(columns) == len(labelled):
                values[f"calibration.{metric}"] = fixed_macro(np.stack(columns, axis=1), np.arange(len(columns)))
        return values

    point = {name: float(values[0]) for name, values in resampled(np.ones((1, n))).items() if np.isfinite(values[0])}
    params = {"probability": what, "bins": N_BINS} | ({"recalibrated_on": FIT_SPLIT} if recalibrate else {})
    params_of = {name: point_params.get(name, {}) | ({"interval": "estimate ± 1.96 bootstrap SD"}
                                                    if name.partition("|")[0] in BIASED else {}) for name in point}
    return with_intervals(point, resampled, n, options, params=params, params_of=params_of,
                          normal=BIASED) + temperatures


def _bins(p: np.ndarray, y: np.ndarray) -> list[dict[str, float]]:
    """The reliability diagram's points: per non-empty equal-width bin, mean probability, observed
    frequency, count, and the bin's edges."""
    bins = equal_width_bins(p)
    return [{"low": b / N_BINS, "high": (b + 1) / N_BINS, "probability": float(p[bins == b].mean()),
             "observed": float(y[bins == b].mean()), "count": int((bins == b).sum())}
            for b in range(N_BINS) if (bins == b).any()]
