"""`embedstore compare RUN_A RUN_B`: is B really better than A? For every headline figure, the
difference B − A with a **paired** bootstrap interval (the same resampled samples for both runs),
and for AUROC also DeLong's test (analyses/delong.py), per label (Holm-adjusted across labels) and
for the macro mean. Both runs must score the same samples of one dataset; each is read under one
protocol (its scores and thresholds as `analyze` reads them: embedstore/analyses/classification.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstore.analyses import classification, delong
from embedstore.analyses.common import AnalysisOptions, MetricRow, bootstrap_weights, interval
from embedstore.analyses.rundata import RunData, load_run
from embedstore.choices import Protocol, Split, parse
from embedstore.errors import InputError
from embedstore.store import Store

#: The figures compared (per-label ones for every label), in the order they are printed.
HEADLINE = ("macro_auroc", "macro_f1", "exact_match", "lrap", "coverage_error", "auroc", "f1")

#: The settings `analyze --compare` compares within each protocol (baseline, then the other).
SETTING_PAIRS = (("zs", "lp"), ("lp", "ft"), ("zs", "ft"))

#: Stored comparison rows are `metrics` rows of run B named with this prefix (sql/comparisons.sql).
STORED_PREFIX = "compare."


@dataclass(frozen=True)
class CompareConfig:
    """Options of `embedstore compare`."""

    run_a: str
    run_b: str
    protocol: Protocol = Protocol.MULTILABEL
    split: Split = Split.TEST
    bootstrap: int = 2000
    seed: int = 42
    #: a subset of HEADLINE (empty: all of them)
    metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Plain strings are accepted from Python; a value outside its choices is an InputError."""
        object.__setattr__(self, "protocol", parse(Protocol, self.protocol, "protocol"))
        object.__setattr__(self, "split", parse(Split, self.split, "split"))
        if self.bootstrap < 0:
            raise InputError(f"bootstrap {self.bootstrap}: must be 0 (no intervals) or more", parameter="bootstrap")
        unknown = sorted(set(self.metrics) - set(HEADLINE))
        if unknown:
            raise InputError(f"metric {unknown[0]}: not a compared figure (choose from {', '.join(HEADLINE)})",
                             parameter="metrics")


def _same_samples(a: RunData, b: RunData, split: str) -> np.ndarray:
    """The split's mask, once both runs are shown to score the same samples with the same labels."""
    if a.dataset != b.dataset or a.labels != b.labels:
        raise InputError(f"runs {a.run_id} and {b.run_id}: not the same dataset and labels "
                         f"({a.dataset}, {len(a.labels)} labels vs {b.dataset}, {len(b.labels)}); a paired "
                         "comparison needs the same samples")
    mask_a, mask_b = a.split(split), b.split(split)
    if not np.array_equal(a.sample_ids[mask_a], b.sample_ids[mask_b]):
        raise InputError(f"runs {a.run_id} and {b.run_id}: their {split} splits hold different samples; a paired "
                         "comparison needs the same samples")
    return mask_a


def _figures(run: RunData, mask: np.ndarray, options: AnalysisOptions) -> tuple[Any, np.ndarray]:
    """The run's resampled figures on the split, and the split's scores as the protocol reads them."""
    scores, thresholds, _ = classification.protocol_scores(run, options)
    return classification.resampled_figures(scores[mask], run.targets[mask], thresholds, run.labels, run.domains,
                                            options.protocol == Protocol.STUDY, run.known_pairs[mask],
                                            run.finding_columns), scores[mask]


def compare(store: Store, config: CompareConfig) -> list[dict[str, Any]]:
    """One row per compared figure: A, B, B − A with its paired 95 % bootstrap interval and skipped
    resamples, and for AUROC DeLong's p-value (per label also Holm-adjusted across labels)."""
    a, b = load_run(store, config.run_a), load_run(store, config.run_b)
    mask = _same_samples(a, b, config.split)
    options = AnalysisOptions(protocol=config.protocol, split=config.split, bootstrap=config.bootstrap,
                              seed=config.seed)
    (figures_a, scores_a), (figures_b, scores_b) = _figures(a, mask, options), _figures(b, mask, options)
    n = int(mask.sum())
    ones = np.ones((1, n))
    point_a, point_b = figures_a(ones), figures_b(ones)
    chosen = set(config.metrics or HEADLINE)
    if classification.refuses_thresholded(options):
        chosen -= classification.THRESHOLDED
    names = [name for metric in HEADLINE if metric in chosen
             for name in point_a if name.partition("|")[0] == metric and name in point_b
             and np.isfinite(point_a[name][0]) and np.isfinite(point_b[name][0])]  # undefined on the split: no row
    differences: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for weights in bootstrap_weights(n, config.bootstrap, config.seed):
        resampled_a, resampled_b = figures_a(weights), figures_b(weights)
        for name in names:
            differences[name].append(resampled_b[name] - resampled_a[name])
    tests = _delong(scores_a, scores_b, a.targets[mask], a.known_pairs[mask], a.labels) \
        if "auroc" in chosen or "macro_auroc" in chosen else {}
    rows = []
    for name in names:
        metric, _, label = name.partition("|")
        low, high, skipped = interval(np.concatenate(differences[name])) if differences[name] else (None, None, None)
        value_a, value_b = float(point_a[name][0]), float(point_b[name][0])
        test = tests.get(name)
        if test is not None and not np.isfinite(test[0]):
            test = None  # the two runs rank the samples identically: no test
        rows.append({"metric": metric, "label": label or None, "a": value_a, "b": value_b,
                     "difference": value_b - value_a, "ci_low": low, "ci_high": high, "resamples_skipped": skipped,
                     "delong_p": None if test is None else test[0], "delong_p_holm": None if test is None else test[1]})
    return rows


def _delong(scores_a: np.ndarray, scores_b: np.ndarray, targets: np.ndarray, known: np.ndarray,
            labels: list[str]) -> dict[str, tuple[float, float]]:
    """DeLong p-values (raw, Holm-adjusted across labels) per label, and for the macro mean (raw twice)."""
    defined = classification.label_sets(targets, labels, known)["auroc"]
    raw = np.array([delong.paired_test(scores_a[known[:, j], j], scores_b[known[:, j], j],
                                       targets[known[:, j], j]).p_value for j in defined])
    adjusted = delong.holm(raw)
    tests = {f"auroc|{labels[j]}": (float(raw[i]), float(adjusted[i])) for i, j in enumerate(defined)}
    if len(defined):
        macro = delong.macro_paired_test(scores_a[:, defined], scores_b[:, defined], targets[:, defined],
                                         known[:, defined]).p_value
        tests["macro_auroc"] = (float(macro), float(macro))
    return tests


def as_metric_rows(rows: list[dict[str, Any]], baseline: str) -> list[MetricRow]:
    """Comparison rows as `metrics` rows of run B: `compare.<metric>`, value B − A, its interval, and
    in params the baseline run, both values and the DeLong p-values."""
    return [MetricRow(f"{STORED_PREFIX}{row['metric']}", row["difference"], row["label"], row["ci_low"],
                      row["ci_high"], row["resamples_skipped"],
                      {"baseline": baseline, "a": row["a"], "b": row["b"], "delong_p": row["delong_p"],
                       "delong_p_holm": row["delong_p_holm"], "interval": "paired bootstrap, 95 %"})
            for row in rows]
