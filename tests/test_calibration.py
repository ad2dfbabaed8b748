"""Calibration figures (analyses/calibration.py) against loops written from their definitions,
scikit-learn's Brier score and isotonic regression, and the figures recomputed on resampled rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss

from embedstore.analyses import calibration
from embedstore.analyses.common import AnalysisOptions, bootstrap_weights
from embedstore.analyses.rundata import RunData

LABELS = ["Atelectasis", "Cardiomegaly", "No Finding"]


def _run(n: int = 300, seed: int = 0) -> RunData:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, 3)) < [0.2, 0.4, 0.5]).astype(np.int8)
    scores = 4 * (2.5 * (targets - 0.5) + rng.normal(size=(n, 3)))  # logits 1.6 times too confident
    scores[:, 1] = np.round(scores[:, 1])  # ties
    splits = rng.choice(["train", "val", "test"], size=n, p=[0.4, 0.3, 0.3])
    known = rng.random((n, 3)) > 0.05
    return RunData("r", "lp", "multilabel", None, "m", "d", None, None, {}, np.arange(n), splits, LABELS,
                   rng.normal(size=(n, 4)).astype(np.float32), scores, targets, None, known)


def _ece(p: np.ndarray, y: np.ndarray, bins: np.ndarray) -> tuple[float, float]:
    """ECE and MCE by a loop over the bins."""
    total, worst = 0.0, 0.0
    for b in np.unique(bins):
        inside = bins == b
        gap = abs(y[inside].mean() - p[inside].mean())
        total += inside.sum() / len(p) * gap
        worst = max(worst, gap)
    return total, worst


def test_calibration_figures_equal_their_definitions() -> None:
    run = _run()
    rows = {(r.metric, r.label): r for r in calibration.compute(run, AnalysisOptions(protocol="multilabel",
                                                                                      bootstrap=0))}
    test, val = run.splits == "test", run.splits == "val"
    for j, label in enumerate(LABELS):
        keep = test & run.known_pairs[:, j]
        p, y = 1 / (1 + np.exp(-run.scores[keep, j])), run.targets[keep, j].astype(float)
        width = np.minimum(np.floor(p * 15).astype(int), 14)
        ece, mce = _ece(p, y, width)
        assert rows["calibration.ece_equal_width", label].value == pytest.approx(ece, abs=1e-12)
        assert rows["calibration.mce", label].value == pytest.approx(mce, abs=1e-12)
        mass = np.searchsorted(np.quantile(p, np.linspace(0, 1, 16)[1:-1]), p, side="right")
        assert rows["calibration.ece_equal_mass", label].value == pytest.approx(_ece(p, y, mass)[0], abs=1e-12)
        assert rows["calibration.brier", label].value == pytest.approx(brier_score_loss(y, p), abs=1e-12)
        bins = rows["calibration.reliability", label].params["bins"]
        assert sum(b["count"] for b in bins) == len(p)
        fit = val & run.known_pairs[:, j]
        fit_p, fit_y = 1 / (1 + np.exp(-run.scores[fit, j])), run.targets[fit, j].astype(float)
        iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(fit_p, fit_y).predict(p)
        assert rows["calibration.brier_isotonic", label].value == pytest.approx(brier_score_loss(y, iso), abs=1e-12)
        # the temperature minimises the val log-likelihood: no grid point does better
        t = rows["calibration.temperature", label].value
        z = np.log(np.clip(fit_p, 1e-6, 1 - 1e-6) / (1 - np.clip(fit_p, 1e-6, 1 - 1e-6)))

        def nll(temperature: float, z: np.ndarray = z, fit_y: np.ndarray = fit_y) -> float:
            q = np.clip(1 / (1 + np.exp(-z / temperature)), 1e-6, 1 - 1e-6)
            return float(-(fit_y * np.log(q) + (1 - fit_y) * np.log(1 - q)).mean())

        assert nll(t) <= min(nll(g) for g in np.linspace(0.2, 5, 200)) + 1e-6
        assert t > 1  # over-confident logits are cooled
    macro = rows["calibration.brier", None].value
    assert macro == pytest.approx(np.mean([rows["calibration.brier", label].value for label in LABELS]), abs=1e-12)


def test_calibration_intervals_equal_the_figures_on_resampled_rows() -> None:
    run = _run(seed=1)
    options = AnalysisOptions(protocol="multilabel", bootstrap=40, seed=7)
    rows = {(r.metric, r.label): r for r in calibration.compute(run, options)}
    test = run.splits == "test"
    j, label = 1, LABELS[1]
    p, y, keep = 1 / (1 + np.exp(-run.scores[test, j])), run.targets[test, j].astype(float), run.known_pairs[test, j]
    briers, eces = [], []
    width = np.minimum(np.floor(p[keep] * 15).astype(int), 14)
    for w in np.concatenate(list(bootstrap_weights(int(test.sum()), 40, 7))):
        rows_of = np.repeat(np.arange(len(w)), (w * keep).astype(int))
        briers.append(brier_score_loss(y[rows_of], p[rows_of]))
        resampled = np.repeat(np.arange(keep.sum()), w[keep].astype(int))
        eces.append(_ece(p[keep][resampled], y[keep][resampled], width[resampled])[0])
    assert rows["calibration.brier", label].ci_low == pytest.approx(np.percentile(briers, 2.5), abs=1e-9)
    assert rows["calibration.brier", label].ci_high == pytest.approx(np.percentile(briers, 97.5), abs=1e-9)
    ece = rows["calibration.ece_equal_width", label]  # biased upward: estimate ± 1.96 bootstrap SD
    assert ece.ci_low == pytest.approx(ece.value - 1.96 * np.std(eces, ddof=1), abs=1e-9)
    assert ece.ci_high == pytest.approx(ece.value + 1.96 * np.std(eces, ddof=1), abs=1e-9)
    assert ece.params["interval"].startswith("estimate ±")
    assert rows["calibration.temperature", label].ci_low is None  # fitted once on val: no interval


def test_study_protocol_calibrates_the_row_min_max_scores_and_val_is_not_recalibrated_on_itself() -> None:
    run = _run(seed=2)
    rows = calibration.compute(run, AnalysisOptions(protocol="study", split="val", bootstrap=0))
    assert {r.params["probability"].split(" ")[0] for r in rows if "probability" in r.params} == {"row"}
    assert not any(r.metric.endswith(("_temperature", "_isotonic")) or r.metric == "calibration.temperature"
                   for r in rows)



def test_calibration_is_stored_tabled_and_drawn(synthetic_store, native_model: str) -> None:  # type: ignore[no-untyped-def]
    """On a stored run: `analyze` stores the figures; the detail table and the chart read them back."""
    from embedstore.analyses.study import AnalyzeConfig, analyze
    from embedstore.extract import ExtractConfig, extract
    from embedstore.rendering.charts import ChartOptions, chart_spec
    from embedstore.rendering.tables import detail_tables

    run_id = extract(synthetic_store, ExtractConfig(mode="lp", model=native_model, data="syn", protocol="multilabel",
                                                    encode_batch_size=64)).run_id
    analyses = analyze(synthetic_store, AnalyzeConfig(runs=(run_id,), protocol="multilabel", bootstrap=20))
    with synthetic_store.reader() as con:
        stored = con.execute("SELECT count(*) FROM metrics WHERE metric LIKE 'calibration.%'").fetchone()[0]
        test_samples = con.execute("SELECT count(*) FROM samples WHERE split = 'test'").fetchone()[0]
    assert stored == sum(r.metric.startswith("calibration.") for a in analyses for r in a.rows) > 0
    table = detail_tables(analyses, "multilabel")["calibration (recalibrated on val)"]
    assert "macro" in table["label"].to_list() and table.height > 1
    spec = chart_spec(synthetic_store, "calibration", ChartOptions(runs=(run_id,)))
    from tests.stored import chart_values

    points = [p for p in chart_values(spec) if "observed" in p]
    by_label: dict[str, int] = {}
    for point in points:
        by_label[point["label"]] = by_label.get(point["label"], 0) + point["samples"]
    assert by_label and all(count == test_samples for count in by_label.values())
