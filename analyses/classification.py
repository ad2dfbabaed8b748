"""Multi-label classification metrics from a run's stored scores, per protocol.

`study` (DESIGN section 2, "compute_metrics_v2"): each row's scores min-max scaled to [0, 1] and
thresholded at 0.5 (plus the 0.20…0.90 sweep); macro-F1 as classification_report (zero_division=0),
exact match, LRAP, coverage error and ranking loss on the scaled scores, AUROC/AUPRC per label.
`multilabel` (section 3): raw scores, one threshold per label tuned for F1 on val and applied to
the split analysed; threshold-free metrics as well.

The per-sample ranking figures (LRAP, coverage, ranking loss) and the thresholded outcomes are SQL
(`sql/sample_ranking.sql`, `sql/label_outcomes.sql`, window functions in DuckDB); bootstrap intervals
re-weight those per-sample outcomes, so no metric is implemented twice.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb
import numpy as np
import pyarrow as pa
from embedstore.analyses.common import AnalysisOptions, MetricRow, with_intervals
from embedstore.analyses.rundata import RunData

from embedstore import queries
from embedstore.heads import row_minmax


def _scored(con: duckdb.DuckDBPyConnection, scores: np.ndarray, targets: np.ndarray,
            thresholds: np.ndarray | None = None) -> None:
    n, n_labels = scores.shape
    con.register("_scored", pa.table({
        "sample_id": pa.array(np.repeat(np.arange(n), n_labels)),
        "label": pa.array(np.tile(np.arange(n_labels), n)),
        "score": pa.array(scores.reshape(-1).astype(np.float64)),
        "truth": pa.array(targets.reshape(-1).astype(np.int32)),
    }))
    if thresholds is not None:
        con.register("_thresholds", pa.table({"label": pa.array(np.arange(n_labels)),
                                              "threshold": pa.array(thresholds.astype(np.float64))}))


def ranking_per_sample(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample LRAP, coverage error and ranking loss (scikit-learn's definitions, ties included)."""
    with duckdb.connect() as con:
        _scored(con, scores, targets)
        result = con.execute(queries.load("sample_ranking").text).fetchnumpy()
    return (np.asarray(result["lrap"], dtype=np.float64), np.asarray(result["coverage"], dtype=np.float64),
            np.asarray(result["ranking_loss"], dtype=np.float64))


def outcomes(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """(predicted, tp, fp, fn) as samples × labels 0/1 arrays, predicted where score >= threshold."""
    n, n_labels = scores.shape
    with duckdb.connect() as con:
        _scored(con, scores, targets, thresholds)
        result = con.execute(queries.load("label_outcomes").text).fetchnumpy()
    return tuple(np.asarray(result[k], dtype=np.float64).reshape(n, n_labels) for k in ("predicted", "tp", "fp", "fn"))


def label_confusion(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Per-label tp, fp, fn, tn, precision, recall, F1 (columns in label order)."""
    with duckdb.connect() as con:
        _scored(con, scores, targets, thresholds)
        result = con.execute(queries.load("label_confusion").text).fetchnumpy()
    return {key: np.asarray(value, dtype=np.float64) for key, value in result.items() if key != "label"}


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator, dtype=np.float64), where=denominator > 0)


def thresholded(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Macro/micro F1, exact match, Hamming loss and per-label F1 for each weighting of the samples
    (weights: resamples × samples; a row of ones is the plain figure)."""
    total = weights.sum(axis=1)
    label_tp, label_fp, label_fn = weights @ tp, weights @ fp, weights @ fn
    per_label = _f1(label_tp, label_fp, label_fn)
    wrong = fp + fn
    n_labels = tp.shape[1]
    return {
        "macro_f1": per_label.mean(axis=1),
        "micro_f1": _f1(label_tp.sum(1), label_fp.sum(1), label_fn.sum(1)),
        "exact_match": weights @ (wrong.sum(axis=1) == 0) / total,
        "hamming_loss": weights @ wrong.sum(axis=1) / (total * n_labels),
        "per_label_f1": per_label,
    }


def _groups(score: np.ndarray, descending: bool) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-score if descending else score, kind="stable")
    sorted_scores = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    return order, starts


def weighted_auroc(score: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann–Whitney, ties count one half) per weighting; NaN where a class is absent."""
    order, starts = _groups(score, descending=False)
    w = weights[:, order]
    t = truth[order].astype(np.float64)
    pos = np.add.reduceat(w * t, starts, axis=1)
    neg = np.add.reduceat(w * (1 - t), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def weighted_average_precision(score: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision (scikit-learn's step-wise AUPRC) per weighting; NaN without positives."""
    order, starts = _groups(score, descending=True)
    w = weights[:, order]
    t = truth[order].astype(np.float64)
    tp = np.cumsum(np.add.reduceat(w * t, starts, axis=1), axis=1)
    fp = np.cumsum(np.add.reduceat(w * (1 - t), starts, axis=1), axis=1)
    n_pos = tp[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = tp / n_pos
    gained = np.diff(np.concatenate([np.zeros_like(recall[:, :1]), recall], axis=1), axis=1)
    ap = (gained * precision).sum(axis=1)
    return np.where(n_pos[:, 0] > 0, ap, np.nan)


def tune_thresholds(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per label, the val score that maximises F1 when predicting score >= threshold (highest such
    score on ties); +inf (predict nothing) for a label without val positives."""
    thresholds = np.full(scores.shape[1], np.inf)
    for j in range(scores.shape[1]):
        truth = targets[:, j]
        if truth.sum() == 0:
            continue
        order, starts = _groups(scores[:, j], descending=True)
        t = truth[order].astype(np.float64)
        ends = np.r_[starts[1:], len(t)] - 1
        tp = np.cumsum(t)[ends]
        fp = np.cumsum(1 - t)[ends]
        f1 = 2 * tp / (2 * tp + fp + (truth.sum() - tp))
        thresholds[j] = scores[order[starts[int(np.argmax(f1))]], j]
    return thresholds


def _per_label_curve(metric: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], scores: np.ndarray,
                     targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.stack([metric(scores[:, j], targets[:, j], weights) for j in range(scores.shape[1])], axis=1)


def _macro(values: np.ndarray) -> np.ndarray:
    """Mean over labels defined in each row (NaN only if none is)."""
    valid = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        return np.where(valid.any(axis=1), np.nansum(values, axis=1) / valid.sum(axis=1), np.nan)


def figures(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, labels: list[str],
            domains: dict[str, list[int]], options: AnalysisOptions, params: dict[str, object]) -> list[MetricRow]:
    """Every classification figure of one split, each with its bootstrap interval."""
    lrap, coverage, ranking_loss = ranking_per_sample(scores, targets)
    predicted, tp, fp, fn = outcomes(scores, targets, thresholds)
    abnormal_columns = [j for j, label in enumerate(labels) if label != "No Finding"]
    abnormal_truth = targets[:, abnormal_columns].max(axis=1) if abnormal_columns else np.zeros(len(targets))
    abnormal_score = scores[:, abnormal_columns].max(axis=1) if abnormal_columns else np.zeros(len(targets))
    abnormal_predicted = predicted[:, abnormal_columns].max(axis=1) if abnormal_columns else np.zeros(len(targets))
    binary_tp = abnormal_predicted * abnormal_truth
    binary_fp = abnormal_predicted * (1 - abnormal_truth)
    binary_fn = (1 - abnormal_predicted) * abnormal_truth

    def compute(weights: np.ndarray) -> dict[str, np.ndarray]:
        total = weights.sum(axis=1)
        result = thresholded(tp, fp, fn, weights)
        per_label_f1 = result.pop("per_label_f1")
        auroc = _per_label_curve(weighted_auroc, scores, targets, weights)
        auprc = _per_label_curve(weighted_average_precision, scores, targets, weights)
        result |= {
            "lrap": weights @ lrap / total,
            "coverage_error": weights @ coverage / total,
            "ranking_loss": weights @ ranking_loss / total,
            "macro_auroc": _macro(auroc),
            "macro_auprc": _macro(auprc),
            "abnormal_auroc": weighted_auroc(abnormal_score, abnormal_truth, weights),
            "abnormal_f1": _f1(weights @ binary_tp, weights @ binary_fp, weights @ binary_fn),
        }
        for j, label in enumerate(labels):
            result[f"f1|{label}"] = per_label_f1[:, j]
            result[f"auroc|{label}"] = auroc[:, j]
            result[f"auprc|{label}"] = auprc[:, j]
        for domain, columns in domains.items():
            result[f"domain_macro_f1|{domain}"] = per_label_f1[:, columns].mean(axis=1)
            result[f"domain_macro_auroc|{domain}"] = _macro(auroc[:, columns])
        return result

    point = {name: float(values[0]) for name, values in compute(np.ones((1, len(scores)))).items()}
    confusion = label_confusion(scores, targets, thresholds)
    for j, label in enumerate(labels):
        point[f"precision|{label}"] = float(confusion["precision"][j])
        point[f"recall|{label}"] = float(confusion["recall"][j])
        point[f"threshold|{label}"] = float(thresholds[j])
        point[f"positives|{label}"] = float(targets[:, j].sum())
    return with_intervals({k: v for k, v in point.items() if np.isfinite(v)}, compute, len(scores), options,
                          params=params)


def sweep(scores: np.ndarray, targets: np.ndarray, options: AnalysisOptions) -> list[MetricRow]:
    """The study's threshold sweep (0.20…0.90 by 0.05) on row-min-max scores: point figures."""
    rows = []
    for threshold in options.sweep:
        _, tp, fp, fn = outcomes(scores, targets, np.full(scores.shape[1], threshold))
        result = thresholded(tp, fp, fn, np.ones((1, len(scores))))
        for name in ("macro_f1", "micro_f1", "exact_match", "hamming_loss"):
            rows.append(MetricRow(f"sweep_{name}", float(result[name][0]), params={"threshold": threshold}))
    return rows


def compute(run: RunData, options: AnalysisOptions) -> list[MetricRow]:
    """Classification figures of `options.split` under `options.protocol`."""
    mask = run.split(options.split)
    if options.protocol == "study":
        scores = row_minmax(run.scores)
        thresholds = np.full(len(run.labels), options.threshold)
        params: dict[str, object] = {"scores": "row min-max", "threshold": options.threshold}
        extra = sweep(scores[mask], run.targets[mask], options)
    else:
        scores = run.scores
        val = run.split("val")
        thresholds = tune_thresholds(scores[val], run.targets[val])
        params = {"scores": "raw", "threshold": "per label, tuned for F1 on val"}
        extra = []
    return figures(scores[mask], run.targets[mask], thresholds, run.labels, run.domains, options, params) + extra
