"""`embedstore drift`: every figure against an independent brute-force computation (double loops for
the MMD, a manual permutation loop with the same seed, scikit-learn's cross-validation on the same
folds, numpy for the centroids, counts for the prevalences), the test's behaviour on identical and
shifted samples, storage, the chart and the CLI's answers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from embedstore import queries
from embedstore.analyses import drift
from embedstore.analyses.common import bootstrap_weights
from embedstore.analyses.rundata import RunData
from embedstore.errors import InputError
from embedstore.extract import ExtractConfig, extract
from embedstore.store import Store


def _brute_mmd2(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    def k(a: np.ndarray, b: np.ndarray) -> float:
        return math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b, strict=True)) / (2 * sigma * sigma))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def _brute_median(z: np.ndarray) -> float:
    distances = [math.dist(z[i], z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]
    return float(np.median(distances))


def _sample(seed: int, n: int, d: int = 4, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_mmd2_equals_a_double_loop_with_ties_and_duplicates() -> None:
    x = _sample(0, 8)
    x[3] = x[1]  # a duplicate within x
    y = _sample(1, 6, shift=0.3)
    y[2] = x[0]  # a point of x in y
    y[4] = y[5]
    sigma, points = drift.median_bandwidth(np.concatenate([x, y]), seed=0)
    assert points == 14
    assert sigma == pytest.approx(_brute_median(np.concatenate([x, y])), rel=1e-12)
    expected = _brute_mmd2(x, y, sigma)
    assert drift.mmd2_unbiased(x, y, sigma) == pytest.approx(expected, abs=1e-12)
    observed, permuted = drift.mmd2_permutations(x, y, sigma, 0, seed=0)
    assert observed == pytest.approx(expected, abs=1e-12) and len(permuted) == 0


def test_median_heuristic_falls_back_on_duplicates() -> None:
    z = _sample(2, 5)
    assert drift.median_bandwidth(z, 0)[0] == pytest.approx(_brute_median(z), rel=1e-12)
    mostly_same = np.concatenate([np.zeros((10, 3)), np.eye(3)])  # 45 of the 78 pairs at distance 0
    distances = [math.dist(a, b) for i, a in enumerate(mostly_same) for b in mostly_same[i + 1:]]
    assert np.median(distances) == 0
    assert drift.median_bandwidth(mostly_same, 0)[0] == pytest.approx(np.median([d for d in distances if d > 0]))
    assert drift.median_bandwidth(np.ones((4, 3)), 0)[0] == 1.0


@pytest.mark.parametrize("small_blocks", [False, True])
def test_permutation_p_equals_a_manual_loop_with_the_same_seed(small_blocks: bool,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if small_blocks:  # several kernel blocks and permutation chunks give the same figures
        monkeypatch.setattr(drift, "KERNEL_BLOCK", 4)
        monkeypatch.setattr(drift, "PERMUTATION_CELLS", 17 * 7)
    x, y = _sample(3, 10), _sample(4, 7, shift=0.4)
    pooled = np.concatenate([x, y])
    sigma = _brute_median(pooled)
    observed, permuted = drift.mmd2_permutations(x, y, sigma, 40, seed=11)
    rng = np.random.default_rng([11, drift.PERMUTATION_STREAM])
    manual = []
    for _ in range(40):
        shuffled = pooled[rng.permutation(len(pooled))]
        manual.append(_brute_mmd2(shuffled[:10], shuffled[10:], sigma))
    assert observed == pytest.approx(_brute_mmd2(x, y, sigma), abs=1e-12)
    np.testing.assert_allclose(permuted, manual, atol=1e-12)
    exceeding = sum(value >= observed - 1e-12 for value in manual)
    assert drift.permutation_p(observed, permuted) == pytest.approx((exceeding + 1) / 41)


def test_identical_distributions_are_not_flagged_and_shifted_ones_are() -> None:
    x = drift.unit_rows(_sample(5, 80, d=6, shift=1.0))
    same = drift.unit_rows(_sample(6, 70, d=6, shift=1.0))
    shifted = drift.unit_rows(_sample(7, 70, d=6, shift=1.0) + np.array([0.8, 0, 0, 0, 0, 0]))
    for other, flagged in ((same, False), (shifted, True)):
        sigma, _ = drift.median_bandwidth(np.concatenate([x, other]), 42)
        observed, permuted = drift.mmd2_permutations(x, other, sigma, 500, 42)
        p = drift.permutation_p(observed, permuted)
        assert (p < 0.05) == flagged, p


def test_c2st_auroc_equals_scikit_learn_on_the_same_folds() -> None:
    x, y = _sample(8, 40, d=5), _sample(9, 30, d=5, shift=0.5)
    scores, truth, fit = drift.c2st_scores(x, y, seed=3)
    pooled = np.concatenate([x, y])
    expected_truth = np.r_[np.zeros(40), np.ones(30)]
    expected = cross_val_predict(make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), pooled,
                                 expected_truth, cv=StratifiedKFold(5, shuffle=True, random_state=3),
                                 method="decision_function")
    np.testing.assert_allclose(scores, expected, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(truth, expected_truth)
    assert roc_auc_score(truth, scores) == pytest.approx(roc_auc_score(expected_truth, expected), abs=1e-12)
    assert fit["folds"] == 5 and drift.c2st_folds(3, 40) == 3 and drift.c2st_folds(1, 40) == 0


def test_centroid_shift_and_its_resamples_equal_numpy() -> None:
    x, y = drift.unit_rows(_sample(10, 12)), drift.unit_rows(_sample(11, 9, shift=0.2))
    cosine, distance = drift.centroid_shift(x, y)
    mx, my = x.mean(axis=0), y.mean(axis=0)
    assert cosine == pytest.approx(1 - mx @ my / (np.linalg.norm(mx) * np.linalg.norm(my)), abs=1e-12)
    assert distance == pytest.approx(np.linalg.norm(mx - my), abs=1e-12)
    cosines, distances = drift.centroid_resamples(x, y, 30, seed=4)
    wx = np.concatenate(list(bootstrap_weights(12, 30, 4)))
    wy = np.concatenate(list(bootstrap_weights(9, 30, 5)))
    for r in range(30):
        rx, ry = np.repeat(x, wx[r].astype(int), axis=0), np.repeat(y, wy[r].astype(int), axis=0)
        assert (cosines[r], distances[r]) == pytest.approx(drift.centroid_shift(rx, ry), abs=1e-12)


def _memory_run(run_id: str, labels: list[str], targets: np.ndarray, known: np.ndarray) -> RunData:
    n = len(targets)
    return RunData(run_id, "zs", "multilabel", None, "m", "d", None, None, {}, np.arange(n), np.array(["test"] * n),
                   labels, np.zeros((n, 2), np.float32), np.zeros(targets.shape), targets.astype(np.int8), None,
                   known)


def test_prevalence_shift_equals_counts_and_skips_labels_of_one_side() -> None:
    rng = np.random.default_rng(12)
    a_targets, b_targets = rng.integers(0, 2, (30, 3)), rng.integers(0, 2, (25, 3))
    a_known, b_known = np.ones((30, 3), bool), np.ones((25, 3), bool)
    a_known[:5, 0] = False
    b_known[:, 2] = False  # "C" has no known value on side b
    a = _memory_run("a", ["A", "B", "C"], a_targets, a_known)
    b = _memory_run("b", ["B", "A", "C", "D"], b_targets[:, [1, 0, 2, 2]], np.c_[b_known[:, [1, 0, 2]], b_known[:, :1]])
    found, skipped = drift.prevalences(a, np.arange(30), b, np.arange(25))
    assert [p.label for p in found] == ["A", "B"] and sorted(skipped) == ["C", "D"]
    first = found[0]
    assert (first.positives_from, first.known_from) == (int(a_targets[5:, 0].sum()), 25)
    assert (first.positives_to, first.known_to) == (int(b_targets[:, 0].sum()), 25)
    assert first.share_to - first.share_from == pytest.approx(b_targets[:, 0].mean() - a_targets[5:, 0].mean())
    resampled = drift.prevalence_resamples(found, 50, seed=9)
    rng = np.random.default_rng([9, 3])
    for k, p in enumerate(found):
        np.testing.assert_array_equal(resampled["from"][:, k], rng.binomial(p.known_from, p.share_from, 50) / p.known_from)
        np.testing.assert_array_equal(resampled["to"][:, k], rng.binomial(p.known_to, p.share_to, 50) / p.known_to)


def test_options_are_checked() -> None:
    for kwargs, parameter in (({"permutations": -1}, "permutations"), ({"max_samples": 1}, "max_samples"),
                              ({"to_side": "train"}, "to_side"), ({"bootstrap": -2}, "bootstrap")):
        with pytest.raises(InputError) as error:
            drift.DriftConfig(**({"run": "r", "from_side": "train", "to_side": "test"} | kwargs))
        assert error.value.parameter == parameter


@pytest.fixture
def zs_run(synthetic_store: Store, native_model: str) -> tuple[Store, str]:
    run = extract(synthetic_store, ExtractConfig(mode="zs", model=native_model, data="syn", protocol="multilabel",
                                                 encode_batch_size=64)).run_id
    return synthetic_store, run


def _drift_rows(store: Store) -> list[tuple]:
    with store.reader() as con:
        return con.execute("SELECT split, metric, label, value FROM metrics WHERE metric LIKE 'drift.%' "
                           "ORDER BY ALL").fetchall()


def test_drift_stores_replaces_and_survives_analyze(zs_run: tuple[Store, str], synthetic_dir: Path,
                                                    native_model: str, run_cli) -> None:
    store, run = zs_run
    config = drift.DriftConfig(run=run, from_side="train", to_side="test", permutations=50, bootstrap=20,
                               max_samples=15, seed=1)
    result = drift.drift(store, config)
    stored = _drift_rows(store)
    assert {row[0] for row in stored} == {"train->test"} and len(stored) == len(result.rows)
    mmd = next(r for r in result.rows if r.metric == "drift.mmd2")
    assert mmd.params["n_from"] == 15 and mmd.params["n_to"] == 15 and mmd.params["subsampled"]
    assert mmd.params["n_from_total"] > 15 and mmd.params["from"] == "train" and mmd.params["to"] == "test"
    # the MMD figure is the brute-force one on the subsample drift drew
    from embedstore.analyses.rundata import load_run

    loaded = load_run(store, run)
    a = drift.resolve_side(store, loaded, "train", "from_side", 0, 15, 1)
    b = drift.resolve_side(store, loaded, "test", "to_side", 1, 15, 1)
    assert mmd.value == pytest.approx(_brute_mmd2(a.vectors, b.vectors, mmd.params["bandwidth"]), abs=1e-9)
    assert drift.drift(store, config).rows and len(_drift_rows(store)) == len(stored)  # replaced, not added
    with store.writer("test") as writer, writer.transaction() as con:
        queries.execute(con, "clear_metrics", run_id=run, protocol="multilabel", split="train->test")
    assert len(_drift_rows(store)) == len(stored)
    # a chart of the newest pair, its title from the stored figures
    from embedstore.rendering.charts import ChartOptions, chart_spec

    spec = chart_spec(store, "drift", ChartOptions(runs=(run,)))
    assert len(spec["data"]["values"]) == 30 and "train → test" in spec["title"][0]
    assert f"MMD² {mmd.value:.3g}" in spec["title"][1]


def test_drift_cli_formats_and_refusals(zs_run: tuple[Store, str], synthetic_dir: Path, native_model: str,
                                        run_cli) -> None:
    store, run = zs_run
    base = ("drift", "--run", run, "--permutations", "30", "--bootstrap", "10", "--store", str(store.path))
    shown = run_cli(*base, "--from", "train", "--to", "test")
    assert shown.returncode == 0, shown.stderr
    assert "domain shift train → test" in shown.stdout and "drift.c2st_auroc" in shown.stdout
    unknown = run_cli(*base, "--from", "train", "--to", "nowhere")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert "--to 'nowhere': neither a split" in unknown.stderr
    from embedstore.ingest import IngestConfig, ingest

    ingest(store, IngestConfig(path=synthetic_dir, name="again"))
    missing = run_cli(*base, "--from", "syn", "--to", "again")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert f"embedstore extract --mode zs --model {native_model} --data again" in missing.stderr
    extract(store, ExtractConfig(mode="zs", model=native_model, data="again", protocol="multilabel",
                                 encode_batch_size=64))
    same = run_cli(*base, "--from", "syn", "--to", "again", "--format", "json")
    assert same.returncode == 0, same.stderr
    answer = json.loads(same.stdout)
    figures = {row["metric"]: row for row in answer["figures"]}
    assert figures["drift.mmd_p"]["value"] > 0.05  # the same images under another name: no shift
    assert figures["drift.centroid_l2"]["value"] == pytest.approx(0, abs=1e-6)
    assert {row["label"] for row in answer["prevalence"]} and all(row["shift"] == 0 for row in answer["prevalence"])
