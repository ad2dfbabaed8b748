"""Analyses from cached vectors: metrics equal scikit-learn's, the study's formulas reproduced,
separability on clusters of known geometry, leave-one-out neighbours, seeded NaN-free bootstrap."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    classification_report,
    coverage_error,
    f1_score,
    hamming_loss,
    label_ranking_average_precision_score,
    label_ranking_loss,
    roc_auc_score,
)

from embedstore.analyses import classification, curves, knn_search, separability
from embedstore.analyses.common import AnalysisOptions
from embedstore.analyses.rundata import RunData, load_run
from embedstore.analyses.study import AnalyzeConfig, analyze
from embedstore.choices import SearchDevice
from embedstore.errors import InputError
from embedstore.extract import ExtractConfig, extract
from embedstore.labels import CHEXPERT_LABELS
from embedstore.rendering.tables import study_table
from embedstore.store import Store

TOL = 1e-9


@st.composite
def multilabel_scores(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Scores on a coarse grid (many ties), rows without positives, labels without positives."""
    n = draw(st.integers(min_value=2, max_value=30))
    n_labels = draw(st.integers(min_value=2, max_value=7))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    rng = np.random.default_rng(seed)
    levels = draw(st.integers(min_value=2, max_value=6))
    scores = rng.integers(0, levels, size=(n, n_labels)) / (levels - 1)
    targets = (rng.random((n, n_labels)) < draw(st.floats(0.05, 0.6))).astype(int)
    targets[0] = 0
    targets[:, -1] = 0
    return scores, targets


@settings(max_examples=80, deadline=None)
@given(multilabel_scores(), st.sampled_from([0.2, 0.5, 0.65]))
def test_classification_metrics_equal_sklearn(data: tuple[np.ndarray, np.ndarray], threshold: float) -> None:
    scores, targets = data
    n, n_labels = scores.shape
    lrap, coverage, ranking = classification.ranking_per_sample(scores, targets)
    assert abs(lrap.mean() - label_ranking_average_precision_score(targets, scores)) < TOL
    assert abs(coverage.mean() - coverage_error(targets, scores)) < TOL
    assert abs(ranking.mean() - label_ranking_loss(targets, scores)) < TOL
    predicted, tp, fp, fn = classification.outcomes(scores, targets, np.full(n_labels, threshold))
    expected_prediction = (scores >= threshold).astype(int)
    np.testing.assert_array_equal(predicted, expected_prediction)
    result = classification.thresholded(tp, fp, fn, np.ones((1, n)))
    report = classification_report(targets, expected_prediction, output_dict=True, zero_division=0)
    assert abs(result["macro_f1"][0] - report["macro avg"]["f1-score"]) < TOL
    assert abs(result["micro_f1"][0] - f1_score(targets, expected_prediction, average="micro", zero_division=0)) < TOL
    assert abs(result["exact_match"][0] - accuracy_score(targets, expected_prediction)) < TOL
    assert abs(result["hamming_loss"][0] - hamming_loss(targets, expected_prediction)) < TOL
    confusion = classification.label_confusion(scores, targets, np.full(n_labels, threshold))
    for j in range(n_labels):
        assert abs(confusion["f1"][j] - report[str(j)]["f1-score"]) < TOL
        assert abs(confusion["precision"][j] - report[str(j)]["precision"]) < TOL
        assert abs(confusion["recall"][j] - report[str(j)]["recall"]) < TOL
        column, truth = scores[:, j], targets[:, j]
        auroc = curves.RankedLabel.of(column, truth).curves(np.ones((1, n)))[0][0]
        ap = curves.RankedLabel.of(column, truth).curves(np.ones((1, n)))[1][0]
        if 0 < truth.sum() < n:
            assert abs(auroc - roc_auc_score(truth, column)) < TOL
        else:
            assert np.isnan(auroc)
        if truth.sum() > 0:
            assert abs(ap - average_precision_score(truth, column)) < TOL
        else:
            assert np.isnan(ap)


@settings(max_examples=30, deadline=None)
@given(multilabel_scores(), st.integers(min_value=0, max_value=1000))
def test_weighted_metrics_equal_sklearn_on_the_resampled_rows(data: tuple[np.ndarray, np.ndarray], seed: int) -> None:
    scores, targets = data
    n = len(scores)
    draws = np.random.default_rng(seed).integers(0, n, n)
    weights = np.bincount(draws, minlength=n)[None, :].astype(float)
    resampled_scores, resampled_targets = scores[draws], targets[draws]
    for j in range(scores.shape[1]):
        got = curves.RankedLabel.of(scores[:, j], targets[:, j]).curves(weights)[0][0]
        truth = resampled_targets[:, j]
        if 0 < truth.sum() < n:
            assert abs(got - roc_auc_score(truth, resampled_scores[:, j])) < TOL
        else:
            assert np.isnan(got)
    _, tp, fp, fn = classification.outcomes(scores, targets, np.full(scores.shape[1], 0.5))
    result = classification.thresholded(tp, fp, fn, weights)
    expected = f1_score(resampled_targets, (resampled_scores >= 0.5).astype(int), average="macro", zero_division=0)
    assert abs(result["macro_f1"][0] - expected) < TOL


def test_row_minmax_and_threshold_tuning() -> None:
    scaled = classification.row_minmax(np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]]))
    np.testing.assert_allclose(scaled, [[0, 1, 0.5], [0, 0, 0]])
    scores = np.array([[0.9], [0.8], [0.3], [0.2]])
    targets = np.array([[1], [1], [0], [1]])
    assert classification.tune_thresholds(scores, targets)[0] == 0.2  # F1 0.857 beats 0.8 at 0.8
    assert np.isinf(classification.tune_thresholds(scores, np.zeros_like(targets))[0])


def _run_data(embeddings: np.ndarray, scores: np.ndarray, targets: np.ndarray, splits: np.ndarray,
              labels: list[str]) -> RunData:
    ids = np.arange(1, len(embeddings) + 1, dtype=np.int64)
    return RunData("r", "zs", "study", "names", "m", "d", None, None, {}, ids, splits, labels, embeddings, scores,
                   targets)


def _study_reference(x: np.ndarray, targets: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The notebook's compute_separability and compute_metrics_v2, written out plainly."""
    single = np.argmax(targets, axis=1)
    centroids = {c: x[single == c].mean(axis=0) for c in np.unique(single)}
    intra = np.mean([np.mean([np.linalg.norm(v - centroids[c]) for v in x[single == c]]) for c in centroids])
    inter = np.mean([np.linalg.norm(centroids[a] - centroids[b]) for a, b in itertools.combinations(centroids, 2)])
    scaled = np.array([(row - row.min()) / (row.max() - row.min() + 1e-8) for row in scores])
    predicted = (scaled >= 0.5).astype(int)
    report = classification_report(targets, predicted, output_dict=True, zero_division=0)
    return {"inter_class_distance": inter, "intra_class_distance": intra, "separation_ratio": inter / intra,
            "macro_f1": report["macro avg"]["f1-score"], "exact_match": accuracy_score(targets, predicted),
            "lrap": label_ranking_average_precision_score(targets, scaled),
            "coverage_error": coverage_error(targets, scaled)}


def test_study_protocol_figures_equal_an_independent_reimplementation() -> None:
    rng = np.random.default_rng(3)
    n, labels = 90, list(CHEXPERT_LABELS)
    targets = (rng.random((n, len(labels))) < 0.15).astype(np.int8)
    targets[targets[:, :-1].sum(1) == 0, -1] = 1
    x = rng.normal(size=(n, 14)) + targets * 2.0
    scores = rng.normal(size=(n, len(labels)))
    run = _run_data(x, scores, targets, np.array(["test"] * n), labels)
    options = AnalysisOptions(protocol="study", bootstrap=0)
    rows = {r.metric: r.value for r in separability.compute(run, options) + classification.compute(run, options)
            if r.label is None}
    for metric, expected in _study_reference(x, targets, scores).items():
        assert abs(rows[metric] - expected) < 1e-9, metric


def test_separability_on_gaussian_clusters_of_known_geometry() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0, 0], [6, 0, 0], [0, 8, 0]])
    sigma, per = 0.01, 200
    x = np.concatenate([c + rng.normal(0, sigma, size=(per, 3)) for c in centres])
    targets = np.repeat(np.eye(3, dtype=np.int8), per, axis=0)
    geometry = separability.class_geometry(x, targets.astype(float), np.ones((1, len(x))))
    expected_inter = np.mean([6, 8, 10])
    assert abs(geometry["inter_class_distance"][0] - expected_inter) < 0.01
    expected_intra = sigma * 2 * np.sqrt(2 / np.pi)  # mean of a chi distribution with 3 degrees of freedom
    assert abs(geometry["intra_class_distance"][0] - expected_intra) < 0.05 * expected_intra
    assert geometry["separation_ratio"][0] > 100
    assert separability.fisher_ratio(x, targets.argmax(1)) > 1e4
    overlapping = separability.class_geometry(rng.normal(size=(600, 3)), targets.astype(float), np.ones((1, 600)))
    assert overlapping["separation_ratio"][0] < 0.3


def test_separability_intervals_contain_their_estimate_even_with_tiny_classes() -> None:
    rng = np.random.default_rng(2)
    n = 300
    targets = np.zeros((n, 5), dtype=np.int8)
    classes = rng.choice(5, size=n, p=[0.6, 0.3, 0.07, 0.02, 0.01])
    targets[np.arange(n), classes] = 1
    x = rng.normal(size=(n, 8)) + classes[:, None] * 0.5
    run = _run_data(x, rng.normal(size=(n, 5)), targets, np.array(["test"] * n), ["A", "B", "C", "D", "E"])
    for protocol in ("study", "multilabel"):
        rows = separability.compute(run, AnalysisOptions(protocol=protocol, bootstrap=200))
        for row in rows:
            if row.ci_low is not None:
                assert row.ci_low <= row.value <= row.ci_high, (protocol, row)


def test_leave_one_out_never_counts_a_sample_as_its_own_neighbour() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8)).astype(np.float32)
    x[20:] = x[:20]  # every vector has an exact duplicate under another id
    ids = np.arange(100, 140, dtype=np.int64)
    for device in (SearchDevice.CPU, SearchDevice.TORCH_CPU):
        found, _ = knn_search.neighbours(x, ids, lambda: iter([(ids, x)]), len(ids), 3, device=device)
        assert not (found == ids[:, None]).any()
        twin = np.where(ids < 120, ids + 20, ids - 20)
        assert (found[:, 0] == twin).all()
        restricted, _ = knn_search.neighbours(x, ids, lambda: iter([(ids[:10], x[:10])]), 10, 3, device=device)
        assert np.isin(restricted, ids[:10]).all()


def test_bootstrap_is_seeded_and_never_nan() -> None:
    rng = np.random.default_rng(5)
    n, labels = 60, ["A", "B", "No Finding"]
    targets = np.zeros((n, 3), dtype=np.int8)
    targets[0, 0] = 1  # one positive: most resamples lack it, and are skipped for that label, not NaN
    targets[rng.random(n) < 0.3, 1] = 1
    targets[targets[:, :2].sum(1) == 0, 2] = 1
    run = _run_data(rng.normal(size=(n, 4)), rng.normal(size=(n, 3)), targets, np.array(["test"] * n), labels)
    options = AnalysisOptions(protocol="study", bootstrap=300, seed=9)
    first = classification.compute(run, options) + separability.compute(run, options)
    second = classification.compute(run, options) + separability.compute(run, options)
    assert first == second
    for row in first:
        for value in (row.value, row.ci_low, row.ci_high):
            assert value is None or np.isfinite(value), row
    auroc_a = next(r for r in first if r.metric == "auroc" and r.label == "A")
    assert auroc_a.n_resamples_skipped > 50 and auroc_a.ci_low is not None
    other = classification.compute(run, AnalysisOptions(protocol="study", bootstrap=300, seed=10))
    assert [r.ci_low for r in other if r.metric == "lrap"] != [r.ci_low for r in first if r.metric == "lrap"]


@pytest.fixture
def analysed_store(synthetic_store: Store, native_model: str) -> Store:
    for mode, protocol in (("zs", "study"), ("zs", "multilabel"), ("lp", "study"), ("lp", "multilabel"),
                           ("ft", "study")):
        extract(synthetic_store, ExtractConfig(mode=mode, model=native_model, data="syn", protocol=protocol,
                                               epochs=1, encode_batch_size=64))
    return synthetic_store


def test_analyze_stores_every_figure_and_prints_both_tables(analysed_store: Store, run_cli) -> None:
    analyses = analyze(analysed_store, AnalyzeConfig(protocol="both", bootstrap=50))
    study = study_table(analyses, "study")
    assert list(study["setting"]) == ["zs", "ft", "lp"]
    assert study_table(analyses, "multilabel")["setting"].to_list() == ["zs", "lp"]
    with analysed_store.reader() as con:
        stored = con.execute("SELECT run_id, protocol, metric, label, value, ci_low, ci_high FROM metrics").fetchall()
    returned = {(a.run.run_id, a.protocol, r.metric, r.label): (r.value, r.ci_low, r.ci_high)
                for a in analyses for r in a.rows}
    assert {(r[0], r[1], r[2], r[3]): (r[4], r[5], r[6]) for r in stored} == returned
    assert all(value is None or np.isfinite(value) for row in stored for value in row[4:])
    analyze(analysed_store, AnalyzeConfig(protocol="both", bootstrap=50))
    with analysed_store.reader() as con:
        assert con.execute("SELECT count(*) FROM metrics").fetchall()[0][0] == len(stored)
    shell = run_cli("analyze", "--bootstrap", "20", "--format", "markdown", "--store", str(analysed_store.path))
    assert shell.returncode == 0, shell.stderr
    assert "### study table (study protocol, test split)" in shell.stdout
    assert "### study table (multilabel protocol, test split)" in shell.stdout
    assert "| setting | inter-class dist ↑ |" in shell.stdout
    listing = run_cli("sql", "--name", "study_table", "--format", "json", "--store", str(analysed_store.path))
    assert {row["mode"] for row in json.loads(listing.stdout)} == {"zs", "lp", "ft"}


def test_study_protocol_on_stored_runs_matches_the_reference(analysed_store: Store) -> None:
    analyses = analyze(analysed_store, AnalyzeConfig(protocol="study", bootstrap=0))
    for analysis in analyses:
        run = load_run(analysed_store, analysis.run.run_id)
        test = run.splits == "test"
        reference = _study_reference(run.vectors("test").astype(np.float64), run.targets[test], run.scores[test])
        for metric, expected in reference.items():
            assert abs(analysis.figure(metric).value - expected) < 1e-9, (run.mode, metric)


def test_neighbors_by_sample_and_by_stored_prompt(analysed_store: Store, run_cli) -> None:
    from embedstore.analyses.neighbors import nearest

    with analysed_store.reader() as con:
        zs = con.execute("SELECT run_id FROM runs WHERE mode = 'zs' AND protocol = 'study'").fetchall()[0][0]
        lp = con.execute("SELECT run_id FROM runs WHERE mode = 'lp' AND protocol = 'study'").fetchall()[0][0]
        sample = con.execute("SELECT min(sample_id) FROM samples").fetchall()[0][0]
    result = nearest(analysed_store, zs, sample=sample, k=5)
    assert len(result) == 5 and sample not in [r["sample_id"] for r in result]
    assert [r["similarity"] for r in result] == sorted([r["similarity"] for r in result], reverse=True)
    by_text = nearest(analysed_store, zs, text="pleural effusion", k=3)
    assert by_text[0]["query"] == "prompt 'Pleural Effusion'" and len(by_text) == 3
    with pytest.raises(InputError, match="only zs runs store prompts"):
        nearest(analysed_store, lp, text="pleural effusion")
    shell = run_cli("neighbors", "--run", zs, "--sample", str(sample), "-k", "3", "--store", str(analysed_store.path))
    assert shell.returncode == 0 and "similarity" in shell.stdout
    missing = run_cli("neighbors", "--run", zs, "--text", "nodule-like", "--store", str(analysed_store.path))
    assert missing.returncode == 2 and "no stored text embedding" in missing.stderr
