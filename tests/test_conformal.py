"""Conformal prediction sets (analyses/conformal.py, crepes) against split conformal written from its
definition, and their coverage on exchangeable data: within 1 point of the target."""

from __future__ import annotations

import numpy as np
import pytest

from embedstore.analyses import conformal
from embedstore.analyses.common import AnalysisOptions, bootstrap_weights
from embedstore.analyses.rundata import RunData

LABELS = ["Atelectasis", "Cardiomegaly", "No Finding"]


def _run(n: int, seed: int = 0, val_share: float = 0.2) -> RunData:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < [0.1, 0.3, 0.6]).astype(np.int8)
    scores = 3 * (targets - 0.5) + 1.5 * rng.normal(size=(n, 3))
    splits = rng.choice(["train", "val", "test"], size=n, p=[0.1, val_share, 0.9 - val_share])
    return RunData("r", "lp", "multilabel", None, "m", "d", None, None, {}, np.arange(n), splits, LABELS,
                   np.zeros((n, 2), dtype=np.float32), scores, targets)


def _by_definition(cal_p: np.ndarray, cal_y: np.ndarray, p: np.ndarray, alpha: float) -> np.ndarray:
    """Split conformal: a class is in the set when its p-value, (the calibration non-conformities at
    least its own + 1) / (n + 1), is at least alpha (non-smoothed; crepes' convention at equality)."""
    scores = np.where(cal_y > 0, 1 - cal_p, cal_p)

    def p_value(a: np.ndarray) -> np.ndarray:
        return ((scores[None, :] >= a[:, None]).sum(axis=1) + 1) / (len(scores) + 1)

    return np.column_stack([p_value(p) >= alpha, p_value(1 - p) >= alpha])


def test_sets_equal_split_conformal_by_definition() -> None:
    rng = np.random.default_rng(1)
    cal_p, p = rng.random(157), rng.random(400)
    cal_y = (rng.random(157) < cal_p).astype(int)
    for alpha in (0.05, 0.1, 0.3):
        assert np.array_equal(conformal.prediction_sets(cal_p, cal_y, p, alpha), _by_definition(cal_p, cal_y, p, alpha))


def test_coverage_is_within_one_point_of_the_target_on_exchangeable_data() -> None:
    run = _run(60_000)
    rows = {(r.metric, r.label): r for r in conformal.compute(run, AnalysisOptions(protocol="multilabel", bootstrap=0,
                                                                                    alpha=0.1))}
    assert rows["conformal.coverage", None].value == pytest.approx(0.9, abs=0.01)
    for label in LABELS:
        assert rows["conformal.coverage", label].value == pytest.approx(0.9, abs=0.01)
        assert 0 < rows["conformal.set_size", label].value <= 2
    assert rows["conformal.coverage", None].params["target_coverage"] == 0.9
    test = run.splits == "test"
    probability = 1 / (1 + np.exp(-run.scores))
    val = run.splits == "val"
    present = sum(_by_definition(probability[val, j], run.targets[val, j], probability[test, j], 0.1)[:, 1]
                  for j in range(3))
    assert rows["conformal.labels_per_image", None].value == pytest.approx(np.mean(present), abs=1e-12)


def test_coverage_intervals_equal_the_figure_on_resampled_rows() -> None:
    run = _run(2000, seed=3)
    rows = {(r.metric, r.label): r for r in conformal.compute(run, AnalysisOptions(protocol="multilabel",
                                                                                    bootstrap=30, seed=2))}
    test, val = run.splits == "test", run.splits == "val"
    probability = 1 / (1 + np.exp(-run.scores))
    covered = np.column_stack([
        np.where(run.targets[test, j] > 0, s[:, 1], s[:, 0])
        for j, s in enumerate(_by_definition(probability[val, j], run.targets[val, j], probability[test, j], 0.1)
                              for j in range(3))])
    values = [covered[np.repeat(np.arange(len(w)), w.astype(int))].mean()
              for w in np.concatenate(list(bootstrap_weights(int(test.sum()), 30, 2)))]
    assert rows["conformal.coverage", None].ci_low == pytest.approx(np.percentile(values, 2.5), abs=1e-9)
    assert rows["conformal.coverage", None].ci_high == pytest.approx(np.percentile(values, 97.5), abs=1e-9)


def test_nothing_is_calibrated_on_the_split_it_is_measured_on() -> None:
    assert conformal.compute(_run(300), AnalysisOptions(protocol="multilabel", split="val", bootstrap=0)) == []
