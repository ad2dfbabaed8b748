"""Conformal prediction sets per label: which labels can a run promise, at a stated coverage?

Split conformal classification per label with `crepes` (ConformalClassifier): calibrated on the val
split, evaluated on the analysed split (not on val itself). For a label, each sample's prediction
set is the subset of {absent, present} whose conformal p-value — (the val non-conformities at least
its own + 1) / (n + 1), non-conformity being 1 − the run's probability of that class (calibration.py
says which probability) — is at least alpha (`--alpha`, default 0.1). p-values are not smoothed, so
sets are deterministic and coverage is at least 1 − alpha on exchangeable data.

Figures (metric names start `conformal.`; params name alpha and the calibration samples):
- `coverage`: share of the split's known (sample, label) pairs whose true class is in its set, per
  label and over all pairs (label NULL);
- `set_size`: mean number of classes in a label's sets (1 = decided; 2 = both possible; 0 = none);
- `labels_per_image`: mean number of labels whose set holds "present", per image (label NULL).
Intervals re-weight the per-sample outcomes, as every other figure's.
"""

from __future__ import annotations

import numpy as np

from embedstore.analyses.calibration import probabilities
from embedstore.analyses.common import AnalysisOptions, MetricRow, with_intervals
from embedstore.analyses.rundata import RunData

#: The split the sets are calibrated on.
CALIBRATION_SPLIT = "val"


def prediction_sets(calibration_p: np.ndarray, calibration_y: np.ndarray, p: np.ndarray, alpha: float) -> np.ndarray:
    """samples × 2 (absent, present) membership of each sample's set, split conformal on one label."""
    from crepes import ConformalClassifier

    classifier = ConformalClassifier()
    classifier.fit(np.where(calibration_y > 0, 1 - calibration_p, calibration_p))
    both = np.column_stack([p, 1 - p])  # non-conformity of "absent" and of "present"
    return np.asarray(classifier.predict_set(both, confidence=1 - alpha, smoothing=False), dtype=bool)


def compute(run: RunData, options: AnalysisOptions) -> list[MetricRow]:
    """Conformal coverage and set sizes on `options.split`, calibrated on val (nothing on val itself)."""
    calibrating = run.splits == CALIBRATION_SPLIT
    if options.split == CALIBRATION_SPLIT or not calibrating.any():
        return []
    mask = run.split(options.split)
    probability, what = probabilities(run, options.protocol)
    known = run.known_pairs[mask]
    targets = run.targets[mask] > 0
    covered = np.zeros(known.shape)
    size = np.zeros(known.shape)
    present = np.zeros(known.shape)
    calibrated = np.zeros(len(run.labels), dtype=bool)
    for j in range(len(run.labels)):
        fit = calibrating & run.known_pairs[:, j]
        if not fit.any():
            continue
        sets = prediction_sets(probability[fit, j], run.targets[fit, j], probability[mask, j], options.alpha)
        covered[:, j] = np.where(targets[:, j], sets[:, 1], sets[:, 0]) * known[:, j]
        size[:, j] = sets.sum(axis=1) * known[:, j]
        present[:, j] = sets[:, 1]
        calibrated[j] = True
    pairs = known * calibrated

    def resampled(weights: np.ndarray) -> dict[str, np.ndarray]:
        counted = weights @ pairs
        total = counted.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_label_coverage = (weights @ covered) / counted
            per_label_size = (weights @ size) / counted
            result = {"conformal.coverage": (weights @ covered).sum(axis=1) / total,
                      "conformal.labels_per_image": weights @ present[:, calibrated].sum(axis=1) / weights.sum(axis=1)}
        for j, label in enumerate(run.labels):
            if calibrated[j]:
                result[f"conformal.coverage|{label}"] = per_label_coverage[:, j]
                result[f"conformal.set_size|{label}"] = per_label_size[:, j]
        return result

    point = {name: float(v[0]) for name, v in resampled(np.ones((1, int(mask.sum())))).items() if np.isfinite(v[0])}
    params = {"alpha": options.alpha, "target_coverage": 1 - options.alpha, "calibrated_on": CALIBRATION_SPLIT,
              "probability": what, "method": "split conformal per label, crepes ConformalClassifier, not smoothed"}
    return with_intervals(point, resampled, int(mask.sum()), options, params=params)
