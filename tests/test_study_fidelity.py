"""What an independent recomputation found: each figure equals the notebook's formula (study) or says
exactly what it averaged (both protocols). Every test here failed before the fix it guards."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from embedstore.analyses import classification, neighbors, separability
from embedstore.analyses.common import AnalysisOptions, bootstrap_weights, rarest_label_strata
from embedstore.analyses.knn_search import SameUid, neighbours
from embedstore.analyses.rundata import RunData
from embedstore.analyses.study import RunAnalysis
from embedstore.heads import row_minmax
from embedstore.labels import CHEXPERT_LABELS, DOMAINS
from embedstore.rendering.tables import MACRO_AUROC_HEADER, TIME_COLUMN, detail_tables, study_table


def _run(embeddings: np.ndarray, scores: np.ndarray, targets: np.ndarray, splits: np.ndarray, labels: list[str],
         uids: np.ndarray | None = None, mode: str = "zs", protocol: str = "study") -> RunData:
    ids = np.arange(1, len(embeddings) + 1, dtype=np.int64)
    return RunData("r", mode, protocol, "names", "m", "d", 30.0, None, {}, ids, splits, labels, embeddings, scores,
                   targets, uids)


def _notebook_minmax(scores: np.ndarray) -> np.ndarray:
    return np.array([(row - row.min()) / (row.max() - row.min() + 1e-8) for row in scores])


def _figure(rows: list, metric: str, label: str | None = None):  # type: ignore[no-untyped-def]
    return next(r for r in rows if r.metric == metric and r.label == label)


def test_study_probe_accuracy_uses_balanced_class_weights() -> None:
    rng = np.random.default_rng(0)
    n = 120
    targets = np.zeros((n, 3), dtype=np.int8)
    targets[:100, 0] = 1  # a dominant class and two rare ones that overlap it
    targets[100:112, 1] = 1
    targets[112:, 2] = 1
    x = rng.normal(size=(n, 4)) + targets @ np.array([[0.0, 0, 0, 0], [0.6, 0, 0, 0], [0, 0.6, 0, 0]])
    run = _run(x, rng.normal(size=(n, 3)), targets, np.array(["test"] * n), ["A", "B", "C"])
    rows = separability.compute(run, AnalysisOptions(protocol="study", bootstrap=0))
    classes = targets.argmax(axis=1)
    balanced = LogisticRegression(max_iter=1000, class_weight="balanced").fit(x, classes).score(x, classes)
    plain = LogisticRegression(max_iter=1000).fit(x, classes).score(x, classes)
    assert abs(balanced - plain) > 0.05  # the data tells the two apart
    assert _figure(rows, "probe_accuracy").value == pytest.approx(balanced, abs=1e-12)


def test_study_row_minmax_keeps_the_notebook_epsilon_so_top_scores_do_not_tie() -> None:
    rng = np.random.default_rng(1)
    n = 40
    scores = rng.normal(size=(n, 3))
    scores[:, 0] = scores.max(axis=1) + rng.uniform(0.5, 3.0, size=n)  # label A tops every row, spans differ
    targets = np.zeros((n, 3), dtype=np.int8)
    targets[rng.permutation(n)[:15], 0] = 1
    targets[targets.sum(1) == 0, 2] = 1
    np.testing.assert_array_equal(row_minmax(scores), _notebook_minmax(scores))
    assert (row_minmax(scores)[:, 0] < 1.0).all()
    run = _run(rng.normal(size=(n, 4)), scores, targets, np.array(["test"] * n), ["A", "B", "No Finding"])
    rows = classification.compute(run, AnalysisOptions(protocol="study", bootstrap=0))
    expected = roc_auc_score(targets[:, 0], _notebook_minmax(scores)[:, 0])
    assert expected != 0.5  # without the epsilon every row's A is exactly 1.0: AUROC 0.5
    assert _figure(rows, "auroc", "A").value == pytest.approx(expected, abs=1e-12)
    ap = average_precision_score(targets[:, 0], _notebook_minmax(scores)[:, 0])
    assert _figure(rows, "auprc", "A").value == pytest.approx(ap, abs=1e-12)


def _chexpert_run(seed: int, n: int = 150, protocol: str = "study") -> RunData:
    rng = np.random.default_rng(seed)
    labels = list(CHEXPERT_LABELS)
    targets = (rng.random((n, len(labels))) < 0.12).astype(np.int8)
    targets[:, -1] = 0
    targets[targets.sum(1) == 0, -1] = 1
    scores = rng.normal(size=(n, len(labels))) + targets
    splits = np.array(["train", "val", "test"] * (n // 3))
    return _run(rng.normal(size=(n, 6)), scores, targets, splits, labels, protocol=protocol)


def test_study_domain_figures_merge_the_domain_into_one_any_label_target() -> None:
    run = _chexpert_run(2)
    rows = classification.compute(run, AnalysisOptions(protocol="study", bootstrap=0))
    test = run.splits == "test"
    scaled = _notebook_minmax(run.scores)[test]
    for domain, members in DOMAINS.items():
        columns = [run.labels.index(label) for label in members]
        truth = run.targets[test][:, columns].max(axis=1)
        score = scaled[:, columns].max(axis=1)
        predicted = (scaled[:, columns] >= 0.5).any(axis=1)
        assert _figure(rows, "domain_any_f1", domain).value == pytest.approx(f1_score(truth, predicted), abs=1e-12)
        assert _figure(rows, "domain_positives", domain).value == truth.sum()
        if 0 < truth.sum() < len(truth):
            assert _figure(rows, "domain_any_auroc", domain).value == pytest.approx(roc_auc_score(truth, score),
                                                                                   abs=1e-12)
            assert _figure(rows, "domain_any_auprc", domain).value == pytest.approx(
                average_precision_score(truth, score), abs=1e-12)
    assert not any(r.metric.startswith("domain_macro") for r in rows)
    multilabel = classification.compute(run, AnalysisOptions(protocol="multilabel", bootstrap=0))
    pulmonary = _figure(multilabel, "domain_macro_auroc", "Pulmonary")
    assert pulmonary.params["rule"].startswith("per-label macro")
    assert not any(r.metric.startswith("domain_any") for r in multilabel)
    titles = list(detail_tables([RunAnalysis(run, "study", rows)], "study")["per domain"].columns)
    assert "AUROC (any label)" in titles


def test_macro_auroc_interval_averages_a_fixed_label_set_and_counts_skipped_resamples(
        caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(3)
    n = 50
    labels = ["A", "B", "Rare"]
    targets = np.zeros((n, 3), dtype=np.int8)
    targets[rng.random(n) < 0.4, 0] = 1
    targets[rng.random(n) < 0.5, 1] = 1
    targets[7, 2] = 1  # one positive: about a third of resamples lack it
    scores = rng.normal(size=(n, 3)) + targets
    run = _run(rng.normal(size=(n, 4)), scores, targets, np.array(["test"] * n), labels, protocol="multilabel")
    options = AnalysisOptions(protocol="study", bootstrap=200, seed=4)
    with caplog.at_level(logging.WARNING):
        rows = classification.compute(run, options)
    scaled = _notebook_minmax(scores)
    macros, skipped = [], 0
    for weights in np.concatenate(list(bootstrap_weights(n, 200, 4))):
        rows_drawn = np.repeat(np.arange(n), weights.astype(int))
        truth, score = targets[rows_drawn], scaled[rows_drawn]
        if any(len(np.unique(truth[:, j])) < 2 for j in range(3)):
            skipped += 1
            continue
        macros.append(np.mean([roc_auc_score(truth[:, j], score[:, j]) for j in range(3)]))
    macro = _figure(rows, "macro_auroc")
    assert skipped > 20 and macro.n_resamples_skipped == skipped
    low, high = np.percentile(macros, [2.5, 97.5])
    assert (macro.ci_low, macro.ci_high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))
    assert macro.params["averaged_over"] == labels and macro.params["left_out"] == []
    assert "macro_auroc" in caplog.text and "resamples" in caplog.text
    stratified = classification.compute(run, AnalysisOptions(protocol="study", bootstrap=200, seed=4,
                                                             resampling="stratified"))
    assert _figure(stratified, "macro_auroc").n_resamples_skipped == 0
    assert _figure(stratified, "macro_auroc").params["resampling"] == "stratified"


def test_stratified_resampling_keeps_each_stratum_size() -> None:
    targets = np.array([[1, 0], [1, 1], [1, 0], [0, 0], [1, 0], [0, 1]])
    strata = rarest_label_strata(targets)
    assert strata.tolist() == [0, 1, 0, -1, 0, 1]
    for weights in bootstrap_weights(len(targets), 50, 0, strata=strata):
        for stratum in (-1, 0, 1):
            assert np.allclose(weights[:, strata == stratum].sum(axis=1), (strata == stratum).sum())


def test_multilabel_neighbours_exclude_other_images_of_the_same_uid() -> None:
    rng = np.random.default_rng(5)
    studies = 20
    base = rng.normal(size=(studies, 8))
    x = np.repeat(base, 2, axis=0) + rng.normal(scale=1e-3, size=(2 * studies, 8))  # two near-identical films
    uids = np.repeat([f"u{i}" for i in range(studies)], 2)
    targets = np.zeros((2 * studies, 3), dtype=np.int8)
    targets[np.arange(2 * studies), np.repeat(np.arange(studies) % 3, 2)] = 1
    splits = np.array(["test"] * studies + ["train"] * studies)
    run = _run(x, rng.normal(size=(2 * studies, 3)), targets, splits, ["A", "B", "C"], uids=uids, protocol="multilabel")
    same = SameUid.of(run.sample_ids, uids)
    found, _ = neighbours(x, run.sample_ids, lambda: iter([(run.sample_ids, x)]), len(x), 3, same)
    found_uid = uids[np.searchsorted(run.sample_ids, found)]
    assert (found >= 0).all() and not (found_uid == uids[:, None]).any()
    rows = neighbors.compute(run, AnalysisOptions(protocol="multilabel", bootstrap=0, k=1))
    jaccard = _figure(rows, "knn_jaccard:within")
    assert jaccard.value < 0.9  # the twin (same labels) would give 1.0
    assert "same uid" in jaccard.params["excluded"]
    study = neighbors.compute(run, AnalysisOptions(protocol="study", bootstrap=0, k=1))
    assert _figure(study, "knn_jaccard:within").value == 1.0


def test_thresholded_figures_are_refused_on_the_split_the_thresholds_are_tuned_on(
        caplog: pytest.LogCaptureFixture) -> None:
    run = _chexpert_run(6, protocol="multilabel")
    with caplog.at_level(logging.WARNING):
        rows = classification.compute(run, AnalysisOptions(protocol="multilabel", split="val", bootstrap=0))
    metrics = {r.metric for r in rows}
    assert not metrics & {"macro_f1", "micro_f1", "exact_match", "hamming_loss", "abnormal_f1", "f1", "precision",
                          "recall", "threshold", "domain_macro_f1"}
    assert {"macro_auroc", "lrap", "coverage_error", "auroc"} <= metrics
    assert "tuned on it" in caplog.text
    on_test = {r.metric for r in classification.compute(run, AnalysisOptions(protocol="multilabel", bootstrap=0))}
    assert {"macro_f1", "exact_match", "f1"} <= on_test
    on_val_study = {r.metric for r in classification.compute(run, AnalysisOptions(protocol="study", split="val",
                                                                                  bootstrap=0))}
    assert "macro_f1" in on_val_study  # the study's fixed 0.5 is not tuned on val


def test_macro_names_and_params_say_what_was_averaged() -> None:
    run = _chexpert_run(7)
    test = run.splits == "test"
    run.targets[:, run.labels.index("Pleural Other")] = 0  # a label without positives anywhere
    rows = classification.compute(run, AnalysisOptions(protocol="study", bootstrap=0))
    macro_f1, macro_auroc = _figure(rows, "macro_f1"), _figure(rows, "macro_auroc")
    assert "Pleural Other" in macro_f1.params["averaged_over"] and "F1 0" in macro_f1.params["rule"]
    assert "Pleural Other" in macro_auroc.params["left_out"]
    assert "Pleural Other" not in macro_auroc.params["averaged_over"]
    scaled = _notebook_minmax(run.scores)[test]
    truth = run.targets[test]
    assert macro_f1.value == pytest.approx(f1_score(truth, scaled >= 0.5, average="macro", zero_division=0), abs=1e-12)
    defined = [j for j in range(truth.shape[1]) if 0 < truth[:, j].sum() < len(truth)]
    assert macro_auroc.value == pytest.approx(np.mean([roc_auc_score(truth[:, j], scaled[:, j]) for j in defined]),
                                              abs=1e-12)
    analyses = [RunAnalysis(run, "study", rows)]
    assert MACRO_AUROC_HEADER in detail_tables(analyses, "study")["normal vs abnormal, and threshold-free"].columns
    lp = _chexpert_run(8)
    lp.mode = "lp"
    table = study_table([RunAnalysis(lp, "study", rows)], "study")
    assert "macro-F1, all labels ↑" in table.columns
    assert table[TIME_COLUMN].to_list() == ["0.50 (head on cached vectors)"]
