"""Multi-label classification metrics from a run's stored scores, per protocol.

`study` (the notebook's "compute_metrics_v2"; docs/protocols.md): each row's scores scaled
as `(s − min) / (max − min + 1e-8)` and thresholded at 0.5 (plus the 0.20…0.90 sweep); macro-F1 as
classification_report (zero_division=0), exact match, LRAP, coverage error and ranking loss on the
scaled scores, AUROC/AUPRC per label; per domain, the notebook's "compute_domain_metrics": one
"any label of the domain" target. `multilabel`: raw scores, one threshold per label tuned for F1 on
val and applied to the split analysed (on val itself only threshold-free figures); per domain, the
per-label macro.

Each macro says in `params` which labels it averages: macro AUROC those with both classes in the
split, macro AUPRC those with a positive, macro-F1 every label (no positive: F1 0). A bootstrap
resample in which one of the averaged labels is undefined is skipped for the macro and counted.

The per-sample ranking figures (LRAP, coverage, ranking loss) and the thresholded outcomes are SQL
(`sql/sample_ranking.sql`, `sql/label_outcomes.sql`, window functions in DuckDB); bootstrap intervals
re-weight those per-sample outcomes, so no metric is implemented twice.

Pairs left out (`known` False: an uncertain label under `--uncertain ignore`) count nowhere:
- per-label AUROC, AUPRC, F1, precision, recall, threshold tuning, confusion counts and `positives`
  are computed on the label's known samples only (a resample's weights times the label's known mask);
  a label whose positives are all left out has no positive (no AUROC/AUPRC, F1 0, threshold +inf);
- micro-F1 sums tp/fp/fn over known pairs; Hamming loss is the wrong known pairs over all known pairs;
  exact match asks every known label of a sample to be right, over samples with a known label;
- LRAP, coverage error and ranking loss rank each sample's known labels only (its left-out labels
  are dropped from its row before the SQL runs); a sample with no known label is left out of them;
- a merged "any label" target (per domain under `study`, and normal vs abnormal: every label but the
  normal one, domain `Normal`) is positive where any known member is positive, negative only where
  every member is known and negative, and left out otherwise;
- macros average the labels defined on their known pairs (AUROC: both classes among them).
Where every pair is known every figure is computed exactly as before, to the bit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from embedstore import queries
from embedstore.analyses import delong
from embedstore.analyses.common import (
    AnalysisOptions,
    MetricRow,
    fixed_macro,
    resampling_strata,
    warn_few_resamples,
    with_intervals,
)
from embedstore.analyses.curves import RankedLabel
from embedstore.analyses.rundata import RunData
from embedstore.choices import Protocol
from embedstore.heads import row_minmax

log = logging.getLogger(__name__)


def all_known(targets: np.ndarray, known: np.ndarray | None) -> np.ndarray:
    """`known` as a boolean array of the targets' shape (every pair known where it is None)."""
    return np.ones(np.shape(targets), dtype=bool) if known is None else np.asarray(known, dtype=bool)


def known_weights(weights: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Resample weights (resamples × samples) with the samples not `known` (a boolean per sample) weighing 0;
    the weights themselves where every sample is known."""
    return weights if known.all() else weights * known


def _scored(con: duckdb.DuckDBPyConnection, scores: np.ndarray, targets: np.ndarray,
            thresholds: np.ndarray | None = None, known: np.ndarray | None = None) -> None:
    """Register `_scored(sample_id, label, score, truth)` (sample and label as 0-based positions): with
    `known`, only the known pairs."""
    n, n_labels = scores.shape
    keep = None if known is None or np.all(known) else np.asarray(known, dtype=bool).reshape(-1)
    columns: dict[str, np.ndarray] = {
        "sample_id": np.repeat(np.arange(n), n_labels),
        "label": np.tile(np.arange(n_labels), n),
        "score": scores.reshape(-1).astype(np.float64),
        "truth": targets.reshape(-1).astype(np.int32),
    }
    con.register("_scored", pa.table({name: pa.array(values if keep is None else values[keep])
                                      for name, values in columns.items()}))
    if thresholds is not None:
        con.register("_thresholds", pa.table({"label": pa.array(np.arange(n_labels)),
                                              "threshold": pa.array(thresholds.astype(np.float64))}))


def ranking_per_sample(scores: np.ndarray, targets: np.ndarray,
                       known: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample LRAP, coverage error and ranking loss (scikit-learn's definitions, ties included), each
    sample ranked over its known labels; NaN for a sample with no known label."""
    with duckdb.connect() as con:
        _scored(con, scores, targets, known=known)
        result = queries.fetch_numpy(con, "sample_ranking")
    lrap, coverage, ranking_loss = (np.asarray(result[k], dtype=np.float64) for k in ("lrap", "coverage", "ranking_loss"))
    if len(result["sample_id"]) == len(scores):
        return lrap, coverage, ranking_loss
    rows = np.asarray(result["sample_id"], dtype=np.int64)

    def spread(values: np.ndarray) -> np.ndarray:
        full = np.full(len(scores), np.nan)
        full[rows] = values
        return full

    return spread(lrap), spread(coverage), spread(ranking_loss)


def outcomes(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray,
             known: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """(predicted, tp, fp, fn) as samples × labels 0/1 arrays, predicted where score >= threshold; a
    pair left out (`known` False) is predicted as the score says but is no tp, fp or fn."""
    n, n_labels = scores.shape
    with duckdb.connect() as con:
        _scored(con, scores, targets, thresholds)
        result = queries.fetch_numpy(con, "label_outcomes")
    predicted, tp, fp, fn = (np.asarray(result[k], dtype=np.float64).reshape(n, n_labels)
                             for k in ("predicted", "tp", "fp", "fn"))
    if known is not None and not np.all(known):
        tp, fp, fn = (counts * known for counts in (tp, fp, fn))
    return predicted, tp, fp, fn


def label_confusion(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray,
                    known: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-label tp, fp, fn, tn, precision, recall, F1 (columns in label order) over the known pairs;
    a label with no known pair has zero counts (precision, recall, F1 0, as zero_division=0)."""
    with duckdb.connect() as con:
        _scored(con, scores, targets, thresholds, known)
        result = queries.fetch_numpy(con, "label_confusion")
    columns = np.asarray(result["label"], dtype=np.int64)
    confusion = {}
    for key, value in result.items():
        if key != "label":
            confusion[key] = np.zeros(scores.shape[1])
            confusion[key][columns] = np.asarray(value, dtype=np.float64)
    return confusion


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator, dtype=np.float64), where=denominator > 0)


def thresholded(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, weights: np.ndarray,
                known: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Macro/micro F1, exact match, Hamming loss and per-label F1 for each weighting of the samples
    (weights: resamples × samples; a row of ones is the plain figure). tp, fp, fn are 0 at pairs left
    out (`outcomes`); Hamming loss divides by the known pairs, exact match counts samples with a known label."""
    known = all_known(tp, known)
    label_tp, label_fp, label_fn = weights @ tp, weights @ fp, weights @ fn
    per_label = _f1(label_tp, label_fp, label_fn)
    wrong = fp + fn
    with_label = known.any(axis=1)
    samples, pairs = weights @ with_label, weights @ known.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "macro_f1": per_label.mean(axis=1),
            "micro_f1": _f1(label_tp.sum(1), label_fp.sum(1), label_fn.sum(1)),
            "exact_match": np.where(samples > 0, weights @ ((wrong.sum(axis=1) == 0) & with_label) / samples, np.nan),
            "hamming_loss": np.where(pairs > 0, weights @ wrong.sum(axis=1) / pairs, np.nan),
            "per_label_f1": per_label,
        }


def tune_thresholds(scores: np.ndarray, targets: np.ndarray, known: np.ndarray | None = None) -> np.ndarray:
    """Per label, the val score that maximises F1 when predicting score >= threshold (highest such
    score on ties), over the label's known samples; +inf (predict nothing) for a label without a
    known val positive."""
    known = all_known(targets, known)
    thresholds = np.full(scores.shape[1], np.inf)
    for j in range(scores.shape[1]):
        rows = known[:, j]
        column, truth = scores[rows, j], targets[rows, j]
        if truth.sum() == 0:
            continue
        order = np.argsort(-column, kind="stable")
        ordered = column[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        t = truth[order].astype(np.float64)
        ends = np.r_[starts[1:], len(t)] - 1
        tp = np.cumsum(t)[ends]
        fp = np.cumsum(1 - t)[ends]
        f1 = 2 * tp / (2 * tp + fp + (truth.sum() - tp))
        thresholds[j] = column[order[starts[int(np.argmax(f1))]]]
    return thresholds


def ranked_labels(scores: np.ndarray, targets: np.ndarray, known: np.ndarray | None = None) -> list[RankedLabel]:
    """Each label column sorted once over its known samples: AUROC and AP of every resample come from it."""
    known = all_known(targets, known)
    return [RankedLabel.of(scores[:, j], targets[:, j], known[:, j]) for j in range(scores.shape[1])]


def label_curves(ranked: list[RankedLabel], weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUROC, AP) as resamples × labels for each weighting of the samples."""
    pairs = [label.curves(weights) for label in ranked]
    return np.stack([p[0] for p in pairs], axis=1), np.stack([p[1] for p in pairs], axis=1)


#: Figures that depend on the decision thresholds: refused on the split the thresholds were tuned on.
THRESHOLDED = frozenset({"macro_f1", "micro_f1", "exact_match", "hamming_loss", "abnormal_f1", "f1", "precision",
                         "recall", "threshold", "domain_macro_f1", "domain_any_f1"})

#: Macro means over a fixed label set, whose intervals skip (and count) resamples missing one of them.
FIXED_SET_MACROS = {"macro_auroc", "macro_auprc", "domain_macro_auroc"}


@dataclass(frozen=True)
class Merged:
    """One "any of these labels" target: truth, score (the highest) and prediction (any predicted);
    `known` is False where the merged truth is unknown (no known positive member, and a member left out)."""

    truth: np.ndarray
    score: np.ndarray
    predicted: np.ndarray
    known: np.ndarray

    @property
    def ranked(self) -> RankedLabel:
        """The merged target sorted once (cached: every resample reuses it)."""
        cached = self.__dict__.get("_ranked")
        if cached is None:
            cached = RankedLabel.of(self.score, self.truth, self.known)
            object.__setattr__(self, "_ranked", cached)
        return cached

    @classmethod
    def of(cls, columns: list[int], scores: np.ndarray, targets: np.ndarray, predicted: np.ndarray,
           known: np.ndarray | None = None) -> Merged:
        if not columns:
            zeros = np.zeros(len(scores))
            return cls(zeros, zeros, zeros, np.ones(len(scores), dtype=bool))
        members = all_known(targets, known)[:, columns]
        truth = (targets[:, columns] * members).max(axis=1).astype(np.float64)
        return cls(truth, scores[:, columns].max(axis=1), predicted[:, columns].max(axis=1),
                   (truth > 0) | members.all(axis=1))

    def figures(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """AUROC, AUPRC and F1 of the merged target under each weighting, over the samples where it is known."""
        t, p = self.truth, self.predicted
        auroc, auprc = self.ranked.curves(weights)
        weights = known_weights(weights, self.known)
        return {"auroc": auroc, "auprc": auprc,
                "f1": _f1(weights @ (p * t), weights @ (p * (1 - t)), weights @ ((1 - p) * t))}


def label_sets(targets: np.ndarray, labels: list[str], known: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Which label columns each macro averages on this split: AUROC needs both classes among the label's
    known samples, AUPRC a known positive; macro-F1 averages every label (one without positives counts as F1 0)."""
    known = all_known(targets, known)
    positives = (targets * known).sum(axis=0)
    return {"auroc": np.flatnonzero((positives > 0) & (positives < known.sum(axis=0))),
            "auprc": np.flatnonzero(positives > 0),
            "f1": np.arange(len(labels))}


def _averaged_params(labels: list[str], columns: np.ndarray, rule: str) -> dict[str, object]:
    return {"averaged_over": [labels[j] for j in columns],
            "left_out": [label for j, label in enumerate(labels) if j not in set(columns.tolist())], "rule": rule}


def resampled_figures(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, labels: list[str],
                      domains: dict[str, list[int]], merged_domains: bool = False, known: np.ndarray | None = None,
                      findings: list[int] | None = None) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Every resampled classification figure of one split as one function of the resample weights
    (resamples × samples) to `{"metric|label": values}`: the per-sample contributions and each label's
    sort are computed once, here. `figures` and paired comparisons of two runs both use it."""
    known = all_known(targets, known)
    lrap, coverage, ranking_loss = ranking_per_sample(scores, targets, known)
    ranked = ~np.isnan(lrap)
    lrap, coverage, ranking_loss = (np.where(ranked, values, 0.0) for values in (lrap, coverage, ranking_loss))
    predicted, tp, fp, fn = outcomes(scores, targets, thresholds, known)
    abnormal = Merged.of(list(range(len(labels))) if findings is None else findings, scores, targets, predicted, known)
    merged = {domain: Merged.of(columns, scores, targets, predicted, known) for domain, columns in domains.items()}
    defined = label_sets(targets, labels, known)
    sorted_labels = ranked_labels(scores, targets, known)
    domain_auroc = {domain: np.intersect1d(columns, defined["auroc"]) for domain, columns in domains.items()}

    def compute(weights: np.ndarray) -> dict[str, np.ndarray]:
        total = weights @ ranked
        result = thresholded(tp, fp, fn, weights, known)
        per_label_f1 = result.pop("per_label_f1")
        auroc, auprc = label_curves(sorted_labels, weights)
        binary = abnormal.figures(weights)
        with np.errstate(invalid="ignore", divide="ignore"):
            ranking = {name: np.where(total > 0, weights @ values / total, np.nan)
                       for name, values in (("lrap", lrap), ("coverage_error", coverage), ("ranking_loss", ranking_loss))}
        result |= ranking | {
            "macro_auroc": fixed_macro(auroc, defined["auroc"]),
            "macro_auprc": fixed_macro(auprc, defined["auprc"]),
            "abnormal_auroc": binary["auroc"],
            "abnormal_f1": binary["f1"],
        }
        for j, label in enumerate(labels):
            result[f"f1|{label}"] = per_label_f1[:, j]
            result[f"auroc|{label}"] = auroc[:, j]
            result[f"auprc|{label}"] = auprc[:, j]
        for domain, columns in domains.items():
            if merged_domains:
                for name, values in merged[domain].figures(weights).items():
                    result[f"domain_any_{name}|{domain}"] = values
            else:
                result[f"domain_macro_f1|{domain}"] = per_label_f1[:, columns].mean(axis=1)
                result[f"domain_macro_auroc|{domain}"] = fixed_macro(auroc, domain_auroc[domain])
        return result

    return compute


def figures(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray, labels: list[str],
            domains: dict[str, list[int]], options: AnalysisOptions, params: dict[str, object],
            merged_domains: bool = False, known: np.ndarray | None = None,
            findings: list[int] | None = None) -> list[MetricRow]:
    """Every classification figure of one split, each with its bootstrap interval.

    Macro AUROC/AUPRC average the labels defined on the whole split; a resample in which one of them
    is undefined is skipped for the macro and counted. Per domain: with `merged_domains` (the study)
    one "any label of the domain" target (`domain_any_*`); otherwise the per-label macro
    (`domain_macro_*`). `findings`: the columns "abnormal" merges (every label but the normal one;
    None: every column). `known`: False at pairs left out (module docstring).
    """
    known = all_known(targets, known)
    compute = resampled_figures(scores, targets, thresholds, labels, domains, merged_domains, known, findings)
    defined = label_sets(targets, labels, known)
    domain_auroc = {domain: np.intersect1d(columns, defined["auroc"]) for domain, columns in domains.items()}
    merged = {domain: Merged.of(columns, scores, targets, np.zeros(scores.shape), known)
              for domain, columns in domains.items()} if merged_domains else {}
    point = {name: float(values[0]) for name, values in compute(np.ones((1, len(scores)))).items()}
    confusion = label_confusion(scores, targets, thresholds, known)
    for j, label in enumerate(labels):
        point[f"precision|{label}"] = float(confusion["precision"][j])
        point[f"recall|{label}"] = float(confusion["recall"][j])
        point[f"threshold|{label}"] = float(thresholds[j])
        point[f"positives|{label}"] = float((targets[:, j] * known[:, j]).sum())
    if merged_domains:
        point |= {f"domain_positives|{domain}": float(m.truth.sum()) for domain, m in merged.items()}
    params_of = {
        "macro_auroc": _averaged_params(labels, defined["auroc"], "labels with both classes in the split"),
        "macro_auprc": _averaged_params(labels, defined["auprc"], "labels with a positive in the split"),
        "macro_f1": _averaged_params(labels, defined["f1"], "every label; one without positives counts as F1 0"),
    }
    for domain, columns in domains.items():
        members = [labels[j] for j in columns]
        params_of[f"domain_macro_f1|{domain}"] = {"averaged_over": members, "rule": "per-label macro"}
        params_of[f"domain_macro_auroc|{domain}"] = _averaged_params(labels, domain_auroc[domain],
                                                                     "per-label macro, labels with both classes")
        for name in ("domain_any_auroc", "domain_any_auprc", "domain_any_f1", "domain_positives"):
            params_of[f"{name}|{domain}"] = {"target": f"any of {', '.join(members)}",
                                                        "score": "highest score of the domain's labels"}
    if not known.all():
        params = params | {"left_out_pairs": int((~known).sum())}
        for j, label in enumerate(labels):
            if not known[:, j].all():
                for name in ("f1", "auroc", "auprc", "precision", "recall", "threshold", "positives"):
                    params_of[f"{name}|{label}"] = {"left_out_samples": int((~known[:, j]).sum())}
        params_of["hamming_loss"] = {"known_pairs": int(known.sum())}
    for j in defined["auroc"]:  # DeLong's interval beside the bootstrap one (analyses/delong.py)
        _, low, high = delong.auroc_interval(scores[known[:, j], j], targets[known[:, j], j])
        params_of.setdefault(f"auroc|{labels[j]}", {})["delong_interval"] = [round(low, 6), round(high, 6)]
    rows = with_intervals({k: v for k, v in point.items() if np.isfinite(v)}, compute, len(scores), options,
                          params=params, params_of=params_of, strata=resampling_strata(targets, options))
    return rows


def sweep(scores: np.ndarray, targets: np.ndarray, options: AnalysisOptions,
          known: np.ndarray | None = None) -> list[MetricRow]:
    """The study's threshold sweep (0.20…0.90 by 0.05) on row-min-max scores: point figures, over known pairs."""
    rows = []
    for threshold in options.sweep:
        _, tp, fp, fn = outcomes(scores, targets, np.full(scores.shape[1], threshold), known)
        result = thresholded(tp, fp, fn, np.ones((1, len(scores))), known)
        for name in ("macro_f1", "micro_f1", "exact_match", "hamming_loss"):
            rows.append(MetricRow(f"sweep_{name}", float(result[name][0]), params={"threshold": threshold}))
    return rows


#: The split thresholds are tuned on under the multilabel protocol.
TUNING_SPLIT = "val"


def protocol_scores(run: RunData, options: AnalysisOptions) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """The scores and per-label thresholds `options.protocol` reads for a run, and their params: the
    study's row min-max at its fixed threshold, or raw scores at thresholds tuned for F1 on val."""
    if options.protocol == Protocol.STUDY:
        return row_minmax(run.scores), np.full(len(run.labels), options.threshold), {
            "scores": "row min-max (s - min) / (max - min + 1e-8), float64", "threshold": options.threshold}
    val = run.split(TUNING_SPLIT)
    return run.scores, tune_thresholds(run.scores[val], run.targets[val], run.known_pairs[val]), {
        "scores": "raw", "threshold": f"per label, tuned for F1 on {TUNING_SPLIT}"}


def refuses_thresholded(options: AnalysisOptions) -> bool:
    """Whether thresholded figures are left out: under multilabel, on the split the thresholds are tuned on."""
    return options.protocol != Protocol.STUDY and options.split == TUNING_SPLIT


def compute(run: RunData, options: AnalysisOptions) -> list[MetricRow]:
    """Classification figures of `options.split` under `options.protocol`.

    Under multilabel the thresholds are tuned on val, so on val itself only threshold-free figures
    are reported (in-sample thresholded figures would flatter the run); a warning says so.
    """
    mask = run.split(options.split)
    study = options.protocol == Protocol.STUDY
    known = run.known_pairs
    scores, thresholds, params = protocol_scores(run, options)
    extra = sweep(scores[mask], run.targets[mask], options, known[mask]) if study else []
    rows = figures(scores[mask], run.targets[mask], thresholds, run.labels, run.domains, options, params,
                   merged_domains=study, known=known[mask], findings=run.finding_columns)
    if refuses_thresholded(options):
        log.warning("warning: %s: thresholded figures (F1, exact match, precision, recall, …) are not reported on "
                    "%s: the thresholds are tuned on it; threshold-free figures (AUROC, AUPRC, LRAP, …) are",
                    run.run_id, TUNING_SPLIT)
        rows = [row for row in rows if row.metric not in THRESHOLDED]
    warn_few_resamples(rows, options, run.run_id, FIXED_SET_MACROS)
    return rows + extra
