"""DeLong's AUROC variance and paired test (analyses/delong.py) against a brute-force DeLong on tiny
data, scikit-learn's AUROC, and a simulation: under the null hypothesis the p-values are uniform."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kstest
from sklearn.metrics import roc_auc_score

from embedstore.analyses import delong


def _brute_force(score: np.ndarray, truth: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC and structural components from their definition, pair by pair."""
    x, y = score[truth > 0], score[truth == 0]
    kernel = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    return float(kernel.mean()), kernel.mean(axis=1), kernel.mean(axis=0)


def _tiny(seed: int, n: int = 23, levels: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < 0.4).astype(int)
    truth[:2] = [0, 1]
    a = rng.integers(0, levels, n) + truth * rng.integers(0, 2, n)  # coarse: many ties
    b = rng.normal(size=n) + truth
    return a.astype(float), b, truth


@pytest.mark.parametrize("seed", range(8))
def test_variance_and_paired_test_equal_a_brute_force_delong(seed: int) -> None:
    a, b, truth = _tiny(seed)
    auc_a, v10_a, v01_a = _brute_force(a, truth)
    auc_b, v10_b, v01_b = _brute_force(b, truth)
    m, n = len(v10_a), len(v01_a)
    got_auc, got_variance = delong.auroc_variance(a, truth)
    assert got_auc == pytest.approx(auc_a, abs=1e-12) == pytest.approx(roc_auc_score(truth, a), abs=1e-12)
    assert got_variance == pytest.approx(np.var(v10_a, ddof=1) / m + np.var(v01_a, ddof=1) / n, abs=1e-12)
    variance = np.var(v10_b - v10_a, ddof=1) / m + np.var(v01_b - v01_a, ddof=1) / n
    test = delong.paired_test(a, b, truth)
    assert test.difference == pytest.approx(auc_b - auc_a, abs=1e-12)
    assert test.standard_error == pytest.approx(np.sqrt(variance), abs=1e-12)
    from scipy.stats import norm

    assert test.p_value == pytest.approx(2 * norm.sf(abs(auc_b - auc_a) / np.sqrt(variance)), abs=1e-12)
    single = delong.macro_paired_test(a[:, None], b[:, None], truth[:, None])
    assert single.standard_error == pytest.approx(test.standard_error, abs=1e-12)


def test_macro_test_averages_the_labels_with_both_classes_and_skips_left_out_samples() -> None:
    rng = np.random.default_rng(3)
    n = 60
    targets = (rng.random((n, 3)) < 0.3).astype(int)
    targets[:, 2] = 0  # no positive: not averaged
    known = rng.random((n, 3)) < 0.9
    a, b = rng.normal(size=(n, 3)) + targets, rng.normal(size=(n, 3)) + 2 * targets
    got = delong.macro_paired_test(a, b, targets, known)
    expected = [roc_auc_score(targets[known[:, j], j], s[known[:, j], j]) for s in (a, b) for j in range(2)]
    assert got.auroc_a == pytest.approx(np.mean(expected[:2]), abs=1e-12)
    assert got.auroc_b == pytest.approx(np.mean(expected[2:]), abs=1e-12)
    assert got.difference > 0 and 0 < got.p_value < 1


def test_identical_scorers_have_no_difference_and_no_p_value() -> None:
    a, _, truth = _tiny(0)
    test = delong.paired_test(a, a.copy(), truth)
    assert test.difference == 0 and test.standard_error == 0 and np.isnan(test.p_value)


def test_under_the_null_hypothesis_p_values_are_uniform() -> None:
    rng = np.random.default_rng(2026)
    single, macro = [], []
    for _ in range(500):
        targets = (rng.random((150, 3)) < [0.3, 0.2, 0.5]).astype(int)
        a = targets + rng.normal(size=targets.shape)  # two scorers of equal expected AUROC,
        b = targets + rng.normal(size=targets.shape)  # independent noise on the same samples
        single.append(delong.paired_test(a[:, 0], b[:, 0], targets[:, 0]).p_value)
        macro.append(delong.macro_paired_test(a, b, targets).p_value)
    assert kstest(single, "uniform").pvalue > 0.01
    assert kstest(macro, "uniform").pvalue > 0.01
    # ... and the test has power: a better scorer is found
    targets = (rng.random(300) < 0.3).astype(int)
    assert delong.paired_test(targets + rng.normal(size=300), 2 * targets + rng.normal(size=300), targets).p_value < 1e-3


def test_holm_adjustment() -> None:
    got = delong.holm(np.array([0.01, 0.04, np.nan, 0.03, 0.5]))
    # sorted 0.01, 0.03, 0.04, 0.5 with m = 4: 0.04, 0.09, max(0.09, 0.08), max(0.09, 0.5)
    assert np.allclose(got[[0, 3, 1, 4]], [0.04, 0.09, 0.09, 0.5]) and np.isnan(got[2])


def test_delong_interval_covers_the_estimate() -> None:
    a, _, truth = _tiny(4, n=80)
    auroc, low, high = delong.auroc_interval(a, truth)
    assert 0 <= low < auroc < high <= 1


def test_per_label_auroc_rows_carry_the_delong_interval_beside_the_bootstrap_one() -> None:
    from embedstore.analyses import classification
    from embedstore.analyses.common import AnalysisOptions

    rng = np.random.default_rng(8)
    targets = (rng.random((120, 3)) < [0.3, 0.5, 0.0]).astype(int)
    scores = targets + rng.normal(size=(120, 3))
    rows = classification.figures(scores, targets, np.zeros(3), ["A", "B", "C"], {"x": [0, 1, 2]},
                                  AnalysisOptions(protocol="multilabel", bootstrap=20), {})
    by_label = {r.label: r for r in rows if r.metric == "auroc"}
    for j, label in enumerate(["A", "B"]):
        _, low, high = delong.auroc_interval(scores[:, j], targets[:, j])
        assert by_label[label].params["delong_interval"] == [round(low, 6), round(high, 6)]
        assert by_label[label].ci_low is not None  # the bootstrap interval stays
    assert "C" not in by_label  # no positive: no AUROC, no DeLong interval
