"""How the embedding space separates the labels.

`study` (the notebook's "compute_separability"; docs/protocols.md): raw embeddings of the split, one label per
sample = argmax of the multi-hot row (its first positive label); intra = mean over classes of the
mean Euclidean distance of members to their centroid; inter = mean distance over all pairs of class
centroids; ratio = inter / intra; logistic-probe (balanced class weights) and 5-NN (cosine)
accuracy fitted and scored on the same samples, as the notebook does; silhouette (cosine), Davies–Bouldin, Fisher ratio.

Intervals are point ± 1.96 bootstrap standard deviations: percentile intervals of these dispersion
figures sit below the estimate, because a resample duplicates members of small classes.

`multilabel` (docs/protocols.md): L2-normalised embeddings (scale-free), a sample counts toward every label
it has; the same inter / intra / ratio, plus per-label one-vs-rest separation (distance between the
positives' and negatives' centroids over their mean spread).

Pairs left out (`--uncertain ignore`) count nowhere: under `multilabel` a sample is a member of the
labels it is known positive for (never of a left-out one), and a label's one-vs-rest figure compares
its known positives with its known negatives; under `study` a sample's one label is its first known
positive, and a sample with no known positive but a left-out label (its class unknown) is left out.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from embedstore.analyses.common import (
    AnalysisOptions,
    MetricRow,
    bootstrap_weights,
    normal_interval,
    resampling_strata,
)
from embedstore.analyses.rundata import RunData
from embedstore.choices import Protocol

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression


def class_geometry(embeddings: np.ndarray, membership: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """inter, intra and ratio for each weighting of the samples (weights: resamples × samples).

    `membership` is samples × classes (one-hot for the study, multi-hot for multilabel); a class
    needs a member in the resample to count; with fewer than two classes, inter and ratio are NaN.
    Each class is handled on its own members only, so a weighting costs O(members × dim), not
    O(samples × classes × dim).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    mass = weights @ membership
    present = mass > 0
    safe_mass = np.where(present, mass, 1)
    n_classes = membership.shape[1]
    centroids = np.zeros((len(weights), n_classes, x.shape[1]))
    member_distance = np.zeros((len(weights), n_classes))
    squared_norms = (x**2).sum(axis=1)
    for c in range(n_classes):
        members = np.flatnonzero(membership[:, c])
        if len(members) == 0:
            continue
        own, member_weights = x[members], weights[:, members] * membership[members, c]
        centroid = (member_weights @ own) / safe_mass[:, c, None]
        centroids[:, c] = centroid
        if len(weights) == 1:
            # The reported figure: from the differences themselves, exact even for a class of one.
            distance = _distances(own, np.arange(len(own)), centroid[0])[None, :]
        else:
            # Resamples: the |x|² − 2x·c + |c|² expansion through BLAS (error ~1e-8, far below an interval's width).
            squared = squared_norms[members][None, :] - 2 * centroid @ own.T + (centroid**2).sum(1)[:, None]
            distance = np.sqrt(np.maximum(squared, 0))
        member_distance[:, c] = (member_weights * distance).sum(axis=1) / safe_mass[:, c]
    n_present = present.sum(axis=1)
    intra = np.where(n_present > 0, (member_distance * present).sum(1) / np.maximum(n_present, 1), np.nan)
    if len(weights) == 1:
        gaps = np.linalg.norm(centroids[:, :, None, :] - centroids[:, None, :, :], axis=-1)
    else:
        norms = (centroids**2).sum(2)
        gram = centroids @ centroids.transpose(0, 2, 1)
        gaps = np.sqrt(np.maximum(norms[:, :, None] + norms[:, None, :] - 2 * gram, 0))
    pairs = present[:, :, None] & present[:, None, :]
    pairs &= np.triu(np.ones(pairs.shape[1:], dtype=bool), k=1)[None]
    n_pairs = pairs.sum(axis=(1, 2))
    inter = np.where(n_pairs > 0, (gaps * pairs).sum(axis=(1, 2)) / np.maximum(n_pairs, 1), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = inter / intra
    return {"inter_class_distance": inter, "intra_class_distance": intra, "separation_ratio": ratio}


def argmax_labels(targets: np.ndarray) -> np.ndarray:
    """The study's single label per sample: the first positive label (argmax of the multi-hot row)."""
    return targets.argmax(axis=1)


def fisher_ratio(x: np.ndarray, classes: np.ndarray) -> float:
    """trace(between-class scatter) / trace(within-class scatter)."""
    mean = x.mean(axis=0)
    between = within = 0.0
    for k in np.unique(classes):
        members = x[classes == k]
        centre = members.mean(axis=0)
        between += len(members) * float(((centre - mean) ** 2).sum())
        within += float(((members - centre) ** 2).sum())
    return between / within if within > 0 else float("nan")


#: Rows per block when distances are taken from the differences themselves (bounds the temporary).
DISTANCE_BLOCK = 16_384


#: Above this many samples the notebook's quadratic figures (in-sample probe, 5-NN, exact silhouette)
#: are computed on a seeded subsample of this size, and the row's params say so.
STUDY_EXACT_LIMIT = 20_000


#: The study's in-sample probe gives up after this many lbfgs iterations (the notebook's setting).
PROBE_MAX_ITER = 1000


def fit_probe(x: np.ndarray, classes: np.ndarray, seed: int) -> tuple[LogisticRegression, dict[str, object]]:
    """The notebook's balanced logistic probe, and how its fit ended: `converged` (False when lbfgs
    stopped before converging, scikit-learn's ConvergenceWarning, which is recorded, not printed)
    and `n_iter`, the iterations it ran."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe = LogisticRegression(max_iter=PROBE_MAX_ITER, class_weight="balanced", random_state=seed).fit(x, classes)
    stopped = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    for other in caught:
        if other not in stopped:
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    return probe, {"converged": not stopped, "n_iter": int(np.max(probe.n_iter_))}


def _study_scores(x: np.ndarray, classes: np.ndarray, seed: int) -> tuple[dict[str, float], dict[str, object]]:
    """The notebook's in-sample probe and 5-NN accuracies, and its cluster indices; and how the
    probe's fit ended (`fit_probe`)."""
    from sklearn.metrics import davies_bouldin_score, silhouette_score
    from sklearn.neighbors import KNeighborsClassifier

    result = {"fisher_ratio": fisher_ratio(x, classes)}
    if len(x) > STUDY_EXACT_LIMIT:
        keep = np.random.default_rng(seed).choice(len(x), STUDY_EXACT_LIMIT, replace=False)
        x, classes = x[keep], classes[keep]
    if len(np.unique(classes)) < 2 or len(np.unique(classes)) >= len(x):
        return result, {}
    probe, fit = fit_probe(x, classes, seed)
    knn = KNeighborsClassifier(n_neighbors=min(5, len(x)), metric="cosine").fit(x, classes)
    return result | {
        "probe_accuracy": float(probe.score(x, classes)),
        "knn5_accuracy": float(knn.score(x, classes)),
        "silhouette_cosine": float(silhouette_score(x, classes, metric="cosine")),
        "davies_bouldin": float(davies_bouldin_score(x, classes)),
    }, fit


def _rows(point: dict[str, np.ndarray], resampled: dict[str, list[np.ndarray]], params: dict[str, object],
          label: str | None = None) -> list[MetricRow]:
    rows = []
    for name, value in point.items():
        low = high = skipped = None
        if resampled.get(name):
            low, high, skipped = normal_interval(np.concatenate(resampled[name]), float(value[0]))
        if np.isfinite(value[0]):
            rows.append(MetricRow(name, float(value[0]), label, low, high, skipped, params))
    return rows


def compute(run: RunData, options: AnalysisOptions) -> list[MetricRow]:
    """Separability of `options.split` under `options.protocol`, with bootstrap intervals."""
    mask = run.split(options.split)
    left_out: dict[str, object] = {}
    if options.protocol == Protocol.STUDY:
        no_class = ~(run.targets * run.known_pairs).any(axis=1) & ~run.known_pairs.all(axis=1)
        if (mask & no_class).any():  # a left-out label and no known positive: the sample's class is unknown
            left_out = {"left_out_samples": int((mask & no_class).sum())}
            mask = mask & ~no_class
    known = run.known_pairs[mask]
    targets = (run.targets[mask] * known).astype(np.float64)
    in_split = mask[run.split(options.split)]
    vectors = run.vectors(options.split)
    x = (vectors if in_split.all() else vectors[in_split]).astype(np.float64)
    if options.protocol == Protocol.STUDY:
        classes = argmax_labels(targets)
        membership = np.eye(targets.shape[1])[classes]
        params: dict[str, object] = {"embeddings": "raw", "labels": "argmax (first positive)"} | left_out
    else:
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        membership = targets
        params = {"embeddings": "L2-normalised", "labels": "multi-label (every positive label)"}
    point = class_geometry(x, membership, np.ones((1, len(x))))
    resampled: dict[str, list[np.ndarray]] = {name: [] for name in point}
    strata = resampling_strata(targets, options)
    for weights in bootstrap_weights(len(x), options.bootstrap, options.seed, strata=strata):
        for name, values in class_geometry(x, membership, weights).items():
            resampled[name].append(values)
    rows = _rows(point, resampled, params | ({"resampling": options.resampling} if options.bootstrap > 0 else {}))
    if options.protocol == Protocol.STUDY:
        sampled = params | ({"subsample": STUDY_EXACT_LIMIT} if len(x) > STUDY_EXACT_LIMIT else {})
        sampled |= {"probe": f"LogisticRegression(max_iter={PROBE_MAX_ITER}, class_weight='balanced')",
                    "in_sample": True}
        figures, fit = _study_scores(x, classes, options.seed)
        rows += [MetricRow(name, value, params=params if name == "fisher_ratio" else
                           sampled | (fit if name == "probe_accuracy" else {}))
                 for name, value in figures.items()]
    else:
        rows += _one_vs_rest(x, targets, run.labels, params, known)
    return rows


def _distances(x: np.ndarray, rows: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """‖x_i − centre‖ for the given rows, from the differences themselves, DISTANCE_BLOCK rows at a time
    (bounded memory on a large split)."""
    return np.concatenate([np.linalg.norm(x[rows[start:start + DISTANCE_BLOCK]] - centre, axis=1)
                           for start in range(0, len(rows), DISTANCE_BLOCK)] or [np.zeros(0)])


def _one_vs_rest(x: np.ndarray, targets: np.ndarray, labels: list[str], params: dict[str, object],
                 known: np.ndarray | None = None) -> list[MetricRow]:
    """Per label: ‖centroid(positives) − centroid(negatives)‖ / mean of the two groups' spreads, over
    the label's known samples."""
    rows = []
    for j, label in enumerate(labels):
        positive = targets[:, j] > 0
        negative = ~positive if known is None else ~positive & known[:, j]
        if not negative.any() or not positive.any():
            continue
        groups = [np.flatnonzero(positive), np.flatnonzero(negative)]
        centres = [group.astype(np.float64) @ x / group.sum() for group in (positive, negative)]
        spread = np.mean([_distances(x, group, centre).mean() for group, centre in zip(groups, centres, strict=True)])
        rows.append(MetricRow("one_vs_rest_separation", float(np.linalg.norm(centres[0] - centres[1]) / spread),
                              label, params=params))
    return rows
