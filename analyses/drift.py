"""`embedstore drift`: is there a domain shift between two sets of image embeddings?

A side is a split of the run's dataset (train, val, test) or another dataset, whose embeddings come
from a complete zs or lp run of the same weights, preprocessing and encoding precision on it (a
dataset named like the run's own dataset is the whole run). Embeddings are unit-normalised, and
each side is subsampled (seeded) to at most `max_samples` rows, on which every embedding figure is
computed; the label figures count whole sides. The figures (docs/analyze.md, "Domain shift"):

* `drift.mmd2`: the unbiased squared maximum mean discrepancy with the RBF kernel
  k(a, b) = exp(−‖a − b‖² / (2σ²)), σ the median distance of the pooled sample (median heuristic),
  and `drift.mmd_p`, its permutation p-value (b + 1) / (P + 1);
* `drift.c2st_auroc`: a classifier two-sample test, the out-of-fold AUROC of a logistic regression
  telling the sides apart (stratified k-fold), with DeLong's 95 % interval;
* `drift.centroid_cosine` and `drift.centroid_l2`: cosine distance and L2 distance between the mean
  embeddings, with a bootstrap interval (each side resampled on its own);
* `drift.prevalence_from`, `drift.prevalence_to`, `drift.prevalence_shift`: per label (labelled on
  both sides), the positive share of each side and to − from, with a bootstrap interval.

Rows are stored in `metrics` under the run, with split `FROM->TO`; running a pair again replaces them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstore import queries
from embedstore.analyses import delong
from embedstore.analyses.common import MetricRow, bootstrap_weights, metrics_table, normal_interval
from embedstore.analyses.rundata import RunData, load_run
from embedstore.choices import Mode, Split
from embedstore.errors import InputError
from embedstore.store import Store, append_rows

log = logging.getLogger(__name__)

#: Stored figures are `metrics` rows named with this prefix (sql/clear_metrics.sql keeps them).
STORED_PREFIX = "drift."

#: The `split` of a stored pair: `FROM->TO`.
PAIR_SEPARATOR = "->"

#: The median heuristic looks at the distances of at most this many pooled points (a seeded subset).
MEDIAN_POINTS = 2000

#: Kernel rows computed at once (a block of kernel rows × pooled points is held).
KERNEL_BLOCK = 512

#: Pooled points × permutations held at once; more permutations take more passes over the kernel.
PERMUTATION_CELLS = 12_000_000

#: Folds of the classifier two-sample test (fewer where a side has fewer samples).
C2ST_FOLDS = 5

#: Iterations the two-sample classifier may take.
C2ST_MAX_ITER = 1000

#: Sides that are splits of the run's own dataset.
SPLITS = tuple(split.value for split in Split)

#: Frozen-encoder modes: their image embeddings are the pretrained encoder's (comparable across runs).
FROZEN_MODES = (Mode.ZS, Mode.LP)


@dataclass(frozen=True)
class DriftConfig:
    """Options of `embedstore drift`."""

    run: str
    from_side: str
    to_side: str
    permutations: int = 1000
    bootstrap: int = 1000
    seed: int = 42
    max_samples: int = 5000

    def __post_init__(self) -> None:
        """A value the figures cannot use is an InputError naming it."""
        if self.permutations < 0:
            raise InputError(f"permutations {self.permutations}: must be 0 (no p-value) or more",
                             parameter="permutations")
        if self.bootstrap < 0:
            raise InputError(f"bootstrap {self.bootstrap}: must be 0 (no intervals) or more", parameter="bootstrap")
        if self.seed < 0:
            raise InputError(f"seed {self.seed}: must be 0 or more", parameter="seed")
        if self.max_samples < 2:
            raise InputError(f"max_samples {self.max_samples}: must be 2 or more (the unbiased MMD needs two "
                             "samples a side)", parameter="max_samples")
        if self.from_side == self.to_side:
            raise InputError(f"to_side {self.to_side!r}: the same side as the other one; name two different "
                             "splits or datasets", parameter="to_side")

    @property
    def pair(self) -> str:
        """The `split` the pair's rows are stored under."""
        return f"{self.from_side}{PAIR_SEPARATOR}{self.to_side}"


@dataclass
class Side:
    """One side of the comparison: the run its embeddings come from, which of its samples, and the
    (subsampled, unit-normalised) embeddings."""

    name: str
    run: RunData
    #: positions in `run` of the side's samples (sample order), all of them
    positions: np.ndarray
    #: positions in `run` of the subsample the embedding figures use
    kept: np.ndarray
    vectors: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class DriftResult:
    """The figures of one pair, as stored."""

    run_id: str
    from_side: str
    to_side: str
    pair: str
    rows: list[MetricRow]
    #: labels labelled on one side only (no prevalence figures)
    skipped_labels: list[str]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float64; a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """‖a_i − b_j‖² for every pair of rows (never below 0)."""
    squared = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(squared, 0.0)


def median_bandwidth(pooled: np.ndarray, seed: int) -> tuple[float, int]:
    """σ of the median heuristic: the median Euclidean distance between distinct pooled points (on a
    seeded subset of MEDIAN_POINTS points where there are more); where more than half the pairs are
    duplicates, the median of the non-zero distances, and 1 where every point is the same. Returns
    σ and how many points it looked at."""
    if len(pooled) > MEDIAN_POINTS:
        chosen = np.sort(np.random.default_rng([seed, 2]).choice(len(pooled), MEDIAN_POINTS, replace=False))
        pooled = pooled[chosen]
    upper = np.triu_indices(len(pooled), k=1)
    distances = np.sqrt(_squared_distances(pooled, pooled)[upper])
    sigma = float(np.median(distances)) if len(distances) else 0.0
    if sigma <= 0:
        positive = distances[distances > 0]
        sigma = float(np.median(positive)) if len(positive) else 1.0
    return sigma, len(pooled)


def rbf_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """k(a_i, b_j) = exp(−‖a_i − b_j‖² / (2σ²))."""
    return np.exp(-_squared_distances(a, b) / (2.0 * bandwidth * bandwidth))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """The unbiased MMD² (Gretton et al. 2012): the mean kernel within x and within y off the
    diagonal, minus twice the mean kernel between them."""
    n, m = len(x), len(y)
    kxx, kyy, kxy = rbf_kernel(x, x, bandwidth), rbf_kernel(y, y, bandwidth), rbf_kernel(x, y, bandwidth)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2.0 * kxy.mean())


#: The permutations' random stream under a seed (the centroid and prevalence bootstraps draw their own).
PERMUTATION_STREAM = 7


def _permutation_chunks(total: int, n: int, permutations: int, seed: int) -> Iterator[np.ndarray]:
    """Membership of the first side (pooled points × columns, 0/1) for the observed split (the first
    column of the first chunk) and each permutation: permutation p is `rng.permutation(total)` of a
    `default_rng([seed, PERMUTATION_STREAM])`, its first n pooled rows being the first side. At most PERMUTATION_CELLS cells
    a chunk."""
    rng = np.random.default_rng([seed, PERMUTATION_STREAM])   # its own stream, apart from the bootstraps'
    width = max(1, PERMUTATION_CELLS // max(total, 1))
    observed = np.zeros(total)
    observed[:n] = 1.0
    columns: list[np.ndarray] = [observed]
    for _ in range(permutations):
        column = np.zeros(total)
        column[rng.permutation(total)[:n]] = 1.0
        columns.append(column)
        if len(columns) == width:
            yield np.stack(columns, axis=1)
            columns = []
    if columns:
        yield np.stack(columns, axis=1)


def mmd2_permutations(x: np.ndarray, y: np.ndarray, bandwidth: float, permutations: int,
                      seed: int) -> tuple[float, np.ndarray]:
    """The unbiased MMD² of the observed sides and of each permutation of the pooled rows (see
    `_permutation_chunks`), from the pooled kernel in blocks of rows (never held whole). For a
    membership column a (b = 1 − a): within-x = aᵀKa − Σ_x K_ii, between = aᵀK1 − aᵀKa, within-y
    = 1ᵀK1 − aᵀKa − 2 between − Σ_y K_ii."""
    pooled = np.concatenate([x, y])
    total, n, m = len(pooled), len(x), len(y)
    values: list[np.ndarray] = []
    for members in _permutation_chunks(total, n, permutations, seed):
        within_x = np.zeros(members.shape[1])
        a_row_sums = np.zeros(members.shape[1])
        diagonal_x = np.zeros(members.shape[1])
        everything = diagonal = 0.0
        for start in range(0, total, KERNEL_BLOCK):
            rows = slice(start, min(start + KERNEL_BLOCK, total))
            block = rbf_kernel(pooled[rows], pooled, bandwidth)
            block_diagonal = block[np.arange(block.shape[0]), np.arange(rows.start, rows.stop)]
            row_sums = block.sum(axis=1)
            within_x += (members[rows] * (block @ members)).sum(axis=0)
            a_row_sums += members[rows].T @ row_sums
            diagonal_x += members[rows].T @ block_diagonal
            everything += float(row_sums.sum())
            diagonal += float(block_diagonal.sum())
        between = a_row_sums - within_x
        within_y = everything - within_x - 2.0 * between - (diagonal - diagonal_x)
        values.append((within_x - diagonal_x) / (n * (n - 1)) + within_y / (m * (m - 1)) - 2.0 * between / (n * m))
    stacked = np.concatenate(values)
    return float(stacked[0]), stacked[1:]


def permutation_p(observed: float, permuted: np.ndarray) -> float:
    """(b + 1) / (P + 1), b the permutations whose statistic is at least the observed one (to 1e-12:
    the same split computed another way counts)."""
    exceeding = int(np.count_nonzero(permuted >= observed - 1e-12))
    return (exceeding + 1) / (len(permuted) + 1)


def c2st_folds(n_from: int, n_to: int) -> int:
    """Folds of the classifier two-sample test: C2ST_FOLDS, fewer where a side is smaller (0: too small)."""
    folds = min(C2ST_FOLDS, n_from, n_to)
    return folds if folds >= 2 else 0


def c2st_scores(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Out-of-fold decision values of a standardised logistic regression telling y (1) from x (0),
    folds from scikit-learn's StratifiedKFold(shuffle=True, random_state=seed); the pooled truth;
    and how the fits went (folds, converged)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pooled = np.concatenate([x, y])
    truth = np.concatenate([np.zeros(len(x), dtype=np.int64), np.ones(len(y), dtype=np.int64)])
    folds = c2st_folds(len(x), len(y))
    scores = np.zeros(len(pooled))
    converged = True
    for train, held_out in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(pooled, truth):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=C2ST_MAX_ITER))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(pooled[train], truth[train])
        converged &= not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        scores[held_out] = model.decision_function(pooled[held_out])
    return scores, truth, {"folds": folds, "classifier": "standardised logistic regression", "converged": converged}


def centroid_shift(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(cosine distance, L2 distance) between the sides' mean embeddings."""
    mx, my = x.mean(axis=0), y.mean(axis=0)
    norms = float(np.linalg.norm(mx) * np.linalg.norm(my))
    cosine = 1.0 - float(mx @ my) / norms if norms > 0 else float("nan")
    return cosine, float(np.linalg.norm(mx - my))


def centroid_resamples(x: np.ndarray, y: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine and L2 centroid distances of `resamples` bootstrap resamples, each side resampled on its
    own (`bootstrap_weights` of x with `seed`, of y with `seed + 1`)."""
    if resamples == 0:
        return np.zeros(0), np.zeros(0)
    mx = np.concatenate([w @ x / len(x) for w in bootstrap_weights(len(x), resamples, seed)])
    my = np.concatenate([w @ y / len(y) for w in bootstrap_weights(len(y), resamples, seed + 1)])
    norms = np.linalg.norm(mx, axis=1) * np.linalg.norm(my, axis=1)
    cosines = 1.0 - (mx * my).sum(axis=1) / np.where(norms > 0, norms, np.nan)
    return cosines, np.linalg.norm(mx - my, axis=1)


def _nonnegative_interval(values: np.ndarray, point: float) -> tuple[float | None, float | None, int]:
    """point ± 1.96 bootstrap SD (`normal_interval`: a distance's resamples sit above it), low clipped at 0."""
    low, high, skipped = normal_interval(values, point)
    return (None if low is None else max(0.0, low)), high, skipped


@dataclass(frozen=True)
class Prevalence:
    """One label's positive share on each side (known values only) and its bootstrap resamples."""

    label: str
    positives_from: int
    known_from: int
    positives_to: int
    known_to: int

    @property
    def share_from(self) -> float:
        return self.positives_from / self.known_from

    @property
    def share_to(self) -> float:
        return self.positives_to / self.known_to


def prevalences(a: RunData, rows_a: np.ndarray, b: RunData, rows_b: np.ndarray) -> tuple[list[Prevalence], list[str]]:
    """Per label of side a that side b labels too (in a's order), positives and known values on each
    side; and the labels of one side only, or with no known value on a side (skipped)."""
    shared = [label for label in a.labels if label in b.labels]
    skipped = [label for label in a.labels if label not in b.labels] + [lb for lb in b.labels if lb not in a.labels]
    found = []
    for label in shared:
        i, j = a.labels.index(label), b.labels.index(label)
        known_a, known_b = a.known_pairs[rows_a, i], b.known_pairs[rows_b, j]
        if not known_a.any() or not known_b.any():
            skipped.append(label)
            continue
        found.append(Prevalence(label, int((a.targets[rows_a, i][known_a] > 0).sum()), int(known_a.sum()),
                                int((b.targets[rows_b, j][known_b] > 0).sum()), int(known_b.sum())))
    return found, skipped


def prevalence_resamples(found: list[Prevalence], resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Bootstrap shares of each side, per label (resamples × labels): resampling a side's known values
    with replacement draws its positives from Binomial(known, share); `default_rng([seed, 3])` draws,
    label by label, the from-side's then the to-side's."""
    rng = np.random.default_rng([seed, 3])
    shares_from = np.zeros((resamples, len(found)))
    shares_to = np.zeros((resamples, len(found)))
    for k, p in enumerate(found):
        shares_from[:, k] = rng.binomial(p.known_from, p.share_from, resamples) / p.known_from
        shares_to[:, k] = rng.binomial(p.known_to, p.share_to, resamples) / p.known_to
    return {"from": shares_from, "to": shares_to}


def _percentile(values: np.ndarray) -> tuple[float | None, float | None]:
    if len(values) == 0:
        return None, None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _dataset_names(store: Store) -> list[str]:
    with store.reader() as con:
        return [str(row[0]) for row in queries.fetch(con, "dataset_names")]


def _other_run(store: Store, run: RunData, dataset: str, parameter: str) -> RunData:
    """The complete zs/lp run of `dataset` with the run's weights, preprocessing and precision."""
    if run.mode not in FROZEN_MODES:
        raise InputError(f"{parameter} {dataset!r}: run {run.run_id} is {run.mode}, whose image embeddings come "
                         "from its own fine-tuned encoder; compare its splits, or use a zs or lp run of the model",
                         parameter=parameter)
    with store.reader() as con:
        overview = queries.fetch_one(con, "run_overview", run_id=run.run_id)
        found = None if overview is None else queries.fetch_one(
            con, "drift_run", dataset=dataset, model_sha256=overview[5],
            preprocess_key=run.config.get("preprocess_key"), encode_precision=run.config.get("encode_precision"))
    if found is None:
        raise InputError(f"dataset {dataset!r}: no complete zs or lp run of model {run.model_id} with the same "
                         f"weights and preprocessing as run {run.run_id}; run `embedstore extract --mode zs "
                         f"--model {run.model_id} --data {dataset}` first", parameter=parameter)
    return load_run(store, str(found[0]))


def _vectors_at(run: RunData, positions: np.ndarray) -> np.ndarray:
    """The run's embeddings of the samples at `positions` (in that order), read split by split."""
    out: np.ndarray | None = None
    for split in np.unique(run.splits[positions]):
        chosen = np.flatnonzero(run.splits[positions] == split)
        rows = np.searchsorted(np.flatnonzero(run.splits == split), positions[chosen])
        block = run.vectors(str(split))[rows]
        if out is None:
            out = np.empty((len(positions), block.shape[1]), dtype=np.float64)
        out[chosen] = block
    return unit_rows(out if out is not None else np.zeros((0, 0)))


def resolve_side(store: Store, run: RunData, value: str, parameter: str, index: int, max_samples: int,
                 seed: int) -> Side:
    """One side: a split of the run, or a dataset (the run itself where it is the run's dataset),
    subsampled with `default_rng([seed, index])` to at most `max_samples` samples."""
    if value in SPLITS:
        source, positions = run, np.flatnonzero(run.split(value))
    else:
        names = _dataset_names(store)
        if value not in names:
            raise InputError(f"{parameter} {value!r}: neither a split ({', '.join(SPLITS)}) nor a dataset of the "
                             f"store (have: {', '.join(names) or 'none'})", parameter=parameter)
        source = run if value == run.dataset else _other_run(store, run, value, parameter)
        positions = np.arange(len(source.sample_ids))
        if not len(positions):
            raise InputError(f"{parameter} {value!r}: run {source.run_id} has no samples", parameter=parameter)
    # One film per study: a study's films (and a patient's) are alike, and resampling or permuting
    # them one by one would make the two-sample tests too confident.
    studies = np.asarray(source.uids)[positions] if source.uids is not None else positions
    kept = positions[np.sort(np.unique(studies, return_index=True)[1])]
    if len(kept) > max_samples:
        kept = kept[np.sort(np.random.default_rng([seed, index]).choice(len(kept), max_samples, replace=False))]
    if len(kept) < 2:
        raise InputError(f"{parameter} {value!r}: {len(kept)} sample; the figures need two or more a side",
                         parameter=parameter)
    return Side(value, source, positions, kept, _vectors_at(source, kept))


def figures(a: Side, b: Side, config: DriftConfig) -> tuple[list[MetricRow], list[str]]:
    """Every drift figure of side a (from) against side b (to), and the labels skipped."""
    x, y = a.vectors, b.vectors
    bandwidth, bandwidth_points = median_bandwidth(np.concatenate([x, y]), config.seed)
    params: dict[str, Any] = {
        "from": a.name, "to": b.name, "from_run": a.run.run_id, "to_run": b.run.run_id,
        "n_from": len(x), "n_to": len(y), "n_from_total": len(a.positions), "n_to_total": len(b.positions),
        "max_samples": config.max_samples, "one_film_per_study": True,
        "subsampled": bool(len(x) < len(a.positions) or len(y) < len(b.positions)),
        "bandwidth": bandwidth, "bandwidth_points": bandwidth_points, "permutations": config.permutations,
        "bootstrap": config.bootstrap, "seed": config.seed, "kernel": "rbf, median heuristic",
    }
    rows: list[MetricRow] = []
    observed, permuted = mmd2_permutations(x, y, bandwidth, config.permutations, config.seed)
    rows.append(MetricRow(f"{STORED_PREFIX}mmd2", observed, params=params | {"estimator": "unbiased"}))
    if config.permutations:
        rows.append(MetricRow(f"{STORED_PREFIX}mmd_p", permutation_p(observed, permuted), params=params))
    if c2st_folds(len(x), len(y)):
        scores, truth, fit = c2st_scores(x, y, config.seed)
        auroc, low, high = delong.auroc_interval(scores, truth)
        rows.append(MetricRow(f"{STORED_PREFIX}c2st_auroc", auroc, None, low, high,
                              params=params | fit | {"interval": "DeLong, 95 %"}))
    cosine, distance = centroid_shift(x, y)
    cosines, distances = centroid_resamples(x, y, config.bootstrap, config.seed)
    for name, point, resampled in (("centroid_cosine", cosine, cosines), ("centroid_l2", distance, distances)):
        c_low, c_high, skipped = _nonnegative_interval(resampled, point) if config.bootstrap else (None, None, None)
        rows.append(MetricRow(f"{STORED_PREFIX}{name}", point, None, c_low, c_high, skipped,
                              params | {"interval": "bootstrap, point ± 1.96 SD, each side resampled"}))
    found, skipped_labels = prevalences(a.run, a.positions, b.run, b.positions)
    resampled_shares = prevalence_resamples(found, config.bootstrap, config.seed)
    for k, p in enumerate(found):
        counts = params | {"positives_from": p.positives_from, "known_from": p.known_from,
                           "positives_to": p.positives_to, "known_to": p.known_to,
                           "interval": "bootstrap percentile, 95 %", "samples": "every sample of each side"}
        shares = {"prevalence_from": (p.share_from, resampled_shares["from"][:, k]),
                  "prevalence_to": (p.share_to, resampled_shares["to"][:, k]),
                  "prevalence_shift": (p.share_to - p.share_from,
                                       resampled_shares["to"][:, k] - resampled_shares["from"][:, k])}
        for name, (point, resampled) in shares.items():
            rows.append(MetricRow(f"{STORED_PREFIX}{name}", point, p.label, *_percentile(resampled),
                                  0 if config.bootstrap else None, counts))
    return rows, skipped_labels


def drift(store: Store, config: DriftConfig) -> DriftResult:
    """Compute the pair's figures and store them (replacing the pair's earlier rows)."""
    run = load_run(store, config.run)
    a = resolve_side(store, run, config.from_side, "from_side", 0, config.max_samples, config.seed)
    b = resolve_side(store, run, config.to_side, "to_side", 1, config.max_samples, config.seed)
    if a.run.run_id == b.run.run_id and np.intersect1d(a.positions, b.positions).size:
        raise InputError(f"to_side {config.to_side!r}: shares samples with {config.from_side!r} (a two-sample "
                         "test needs disjoint sides); name two different splits or datasets", parameter="to_side")
    rows, skipped = figures(a, b, config)
    if skipped:
        log.info("drift: no prevalence figures for %s (labelled on one side only, or with no known value)",
                 ", ".join(skipped))
    with store.writer(f"embedstore drift ({config.run})") as writer, writer.transaction() as con:
        queries.execute(con, "clear_drift", run_id=config.run, split=config.pair)
        append_rows(con, "metrics", metrics_table([(config.run, run.protocol, config.pair, row) for row in rows]))
    return DriftResult(config.run, config.from_side, config.to_side, config.pair, rows, skipped)


def summary_records(result: DriftResult) -> list[dict[str, Any]]:
    """The whole-side figures as table rows (metric, value, interval, sides' sizes)."""
    return [{"metric": row.metric, "value": row.value, "ci_low": row.ci_low, "ci_high": row.ci_high,
             "n_from": row.params.get("n_from"), "n_to": row.params.get("n_to")}
            for row in result.rows if row.label is None]


def prevalence_records(result: DriftResult) -> list[dict[str, Any]]:
    """Per label: the positive share of each side, to − from and its interval, and the counts."""
    by_label: dict[str, dict[str, Any]] = {}
    for row in result.rows:
        if row.label is None:
            continue
        record = by_label.setdefault(row.label, {
            "label": row.label, "positives_from": row.params["positives_from"], "known_from": row.params["known_from"],
            "positives_to": row.params["positives_to"], "known_to": row.params["known_to"]})
        name = row.metric.removeprefix(STORED_PREFIX)
        record[name.removeprefix("prevalence_")] = row.value
        if name == "prevalence_shift":
            record["ci_low"], record["ci_high"] = row.ci_low, row.ci_high
    order = ("label", "from", "to", "shift", "ci_low", "ci_high", "positives_from", "known_from", "positives_to",
             "known_to")
    return [{key: record.get(key) for key in order} for record in by_label.values()]


@dataclass(frozen=True)
class StoredPair:
    """The newest stored drift pair of the chosen runs: its figures by metric (whole-side ones) and params."""

    run_id: str
    from_side: str
    to_side: str
    figures: dict[str, dict[str, Any]]
    params: dict[str, Any]


def latest_pair(store: Store, runs: tuple[str, ...] = (), dataset: str | None = None) -> StoredPair:
    """The most recently stored drift pair (of `runs`, or of the runs of `dataset`, where given)."""
    import json

    with store.reader() as con:
        rows = queries.fetch_arrow(con, "drift_figures").to_pylist()
    rows = [r for r in rows if (not runs or r["run_id"] in runs) and (dataset is None or r["dataset"] == dataset)]
    if not rows:
        raise InputError("no stored domain-shift figures; run `embedstore drift --run RUN --from A --to B` first")
    newest = rows[0]
    chosen = [r for r in rows if r["run_id"] == newest["run_id"] and r["sides"] == newest["sides"]]
    whole = {r["metric"].removeprefix(STORED_PREFIX): r for r in chosen if r["label"] is None}
    return StoredPair(newest["run_id"], str(newest["from_side"]), str(newest["to_side"]), whole,
                      json.loads(newest["params"]))


def projection_sides(store: Store, pair: StoredPair, max_points: int) -> tuple[Side, Side]:
    """The stored pair's two sides as `drift` drew them (same seed), each cut to at most `max_points`."""
    run = load_run(store, pair.run_id)
    seed = int(pair.params.get("seed", 42))
    limit = min(max_points, int(pair.params.get("max_samples", max_points)))
    return (resolve_side(store, run, pair.from_side, "from_side", 0, limit, seed),
            resolve_side(store, run, pair.to_side, "to_side", 1, limit, seed))
