"""What every analysis shares: its options, the rows it returns, and seeded bootstrap resampling."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstore.choices import Protocol, Resampling, SearchDevice, Split

log = logging.getLogger(__name__)

#: The protocols in the order tables show them (embedstore/choices.py declares them).
PROTOCOLS = tuple(Protocol)

#: Below this share of usable resamples a figure's interval is flagged with a warning.
MIN_KEPT_SHARE = 0.9


@dataclass(frozen=True)
class AnalysisOptions:
    """Options of `embedstore analyze` that analyses read."""

    protocol: Protocol = Protocol.MULTILABEL
    split: Split = Split.TEST
    bootstrap: int = 1000
    seed: int = 42
    k: int = 10
    #: How bootstrap resamples are drawn: `simple` from the whole split; `stratified` within strata
    #: of the rarest positive label of each sample, so every stratum (and the rarest label's
    #: positives) keeps its size in every resample.
    resampling: Resampling = Resampling.SIMPLE
    threshold: float = 0.5
    #: Conformal prediction sets promise coverage 1 − alpha (embedstore/analyses/conformal.py).
    alpha: float = 0.1
    #: Where neighbour search runs (embedstore/analyses/knn_search.py).
    search_device: SearchDevice = SearchDevice.AUTO
    sweep: tuple[float, ...] = tuple(round(0.20 + 0.05 * i, 2) for i in range(15))


@dataclass(frozen=True)
class MetricRow:
    """One figure for the `metrics` table: overall (label None) or per label / domain."""

    metric: str
    value: float
    label: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n_resamples_skipped: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


#: Bootstrap weights are drawn in chunks of at most this many resamples × samples (memory stays bounded).
WEIGHT_CHUNK_CELLS = 4_000_000


def bootstrap_weights(n: int, resamples: int, seed: int, chunk: int = 200,
                      strata: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Multiplicity of each sample in each resample (rows of a resamples × n matrix), in chunks of at
    most `chunk` resamples and WEIGHT_CHUNK_CELLS cells, so that memory stays bounded for large
    splits. Seeded: the same seed and n give the same resamples in every analysis (simple resampling:
    whatever the chunking). With `strata` (one stratum id per sample) each stratum is resampled within itself."""
    rng = np.random.default_rng(seed)
    members = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    chunk = max(1, min(chunk, WEIGHT_CHUNK_CELLS // max(n, 1)))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        offsets = np.arange(size)[:, None] * n
        counts = np.zeros(size * n, dtype=np.int64)
        for group in members:
            draws = group[rng.integers(0, len(group), size=(size, len(group)))]
            counts += np.bincount((draws + offsets).reshape(-1), minlength=size * n)
        yield counts.reshape(size, n).astype(np.float64)


def rarest_label_strata(targets: np.ndarray) -> np.ndarray:
    """Per sample, the column of its rarest positive label in `targets` (−1 without one): resampling
    within these strata keeps the rarest label's positives, and every label whose positives have
    no rarer label, in every resample."""
    positives = np.asarray(targets) > 0
    counts = positives.sum(axis=0)
    rarity = np.where(positives, counts[None, :], np.iinfo(np.int64).max)
    return np.where(positives.any(axis=1), rarity.argmin(axis=1), -1)


def resampling_strata(targets: np.ndarray, options: AnalysisOptions) -> np.ndarray | None:
    """The strata `options.resampling` asks for (None: simple resampling)."""
    return rarest_label_strata(targets) if options.resampling == Resampling.STRATIFIED else None


def fixed_macro(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Mean of `values` (resamples × labels) over a fixed set of label columns — those defined on the
    whole split — per resample; NaN (a skipped resample, counted) where one of them is undefined."""
    if len(columns) == 0:
        return np.full(len(values), np.nan)
    chosen = values[:, columns]
    return np.where(np.isfinite(chosen).all(axis=1), chosen.mean(axis=1) if chosen.size else np.nan, np.nan)


def interval(values: np.ndarray) -> tuple[float | None, float | None, int]:
    """95 % percentile interval of the finite resampled values, and how many resamples were skipped
    (a resample where the figure is undefined, e.g. a label with one class, never becomes NaN)."""
    finite = values[np.isfinite(values)]
    skipped = int(len(values) - len(finite))
    if len(finite) == 0:
        return None, None, skipped
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high), skipped


def normal_interval(values: np.ndarray, point: float) -> tuple[float | None, float | None, int]:
    """point ± 1.96 × the bootstrap standard deviation (for dispersion figures, whose percentile
    intervals are biased: a resample duplicates members of small classes, pulling them together)."""
    finite = values[np.isfinite(values)]
    skipped = int(len(values) - len(finite))
    if len(finite) < 2:
        return None, None, skipped
    spread = 1.96 * float(np.std(finite, ddof=1))
    return point - spread, point + spread, skipped


def with_intervals(point: dict[str, float], resampled: Callable[[np.ndarray], dict[str, np.ndarray]], n: int,
                   options: AnalysisOptions, params: dict[str, Any] | None = None, label: str | None = None,
                   params_of: dict[str, dict[str, Any]] | None = None,
                   strata: np.ndarray | None = None, normal: frozenset[str] = frozenset()) -> list[MetricRow]:
    """MetricRows for `point` figures ("metric|label", or "metric" for `label`), each with a bootstrap interval from
    `resampled(weights)`; `params_of` adds params to single figures, `strata` stratifies resampling; metrics in
    `normal` get the point ± 1.96 bootstrap SD instead of the percentile interval (biased figures, whose
    resampled values sit to one side of the estimate)."""
    rows = []
    collected: dict[str, list[np.ndarray]] = {name: [] for name in point}
    if options.bootstrap > 0 and n > 0:
        for weights in bootstrap_weights(n, options.bootstrap, options.seed, strata=strata):
            for name, values in resampled(weights).items():
                if name in collected:
                    collected[name].append(values)
    resampling = {"resampling": options.resampling} if options.bootstrap > 0 else {}
    for name, value in point.items():
        low = high = skipped = None
        metric, _, own_label = name.partition("|")
        if collected[name]:
            values = np.concatenate(collected[name])
            low, high, skipped = normal_interval(values, float(value)) if metric in normal else interval(values)
        rows.append(MetricRow(metric, float(value), own_label or label, low, high, skipped,
                              (params or {}) | resampling | (params_of or {}).get(name, {})))
    return rows


def warn_few_resamples(rows: list[MetricRow], options: AnalysisOptions, run_id: str, metrics: set[str]) -> None:
    """Warn for each of `metrics` whose interval rests on fewer than MIN_KEPT_SHARE of the resamples."""
    for row in rows:
        if row.metric not in metrics or row.n_resamples_skipped is None or options.bootstrap == 0:
            continue
        kept = 1 - row.n_resamples_skipped / options.bootstrap
        if kept < MIN_KEPT_SHARE:
            hint = ("; stratified resampling keeps rare labels' positives" if options.resampling == Resampling.SIMPLE
                    else "")
            log.warning("warning: %s %s%s (%s): only %.0f %% of the %d resamples had every averaged label defined; "
                        "the interval covers those only%s", run_id, row.metric, f" {row.label}" if row.label else "",
                        options.protocol, 100 * kept, options.bootstrap, hint)


def metrics_table(records: list[tuple[str, str, str, MetricRow]]) -> Any:
    """(run_id, protocol, split, row) records as an Arrow table in the `metrics` table's column order."""
    import json
    from datetime import UTC, datetime

    import pyarrow as pa

    created = datetime.now(UTC).replace(tzinfo=None)
    return pa.table({
        "run_id": pa.array([r[0] for r in records], pa.string()),
        "protocol": pa.array([r[1] for r in records], pa.string()),
        "split": pa.array([r[2] for r in records], pa.string()),
        "metric": pa.array([r[3].metric for r in records], pa.string()),
        "label": pa.array([r[3].label for r in records], pa.string()),
        "value": pa.array([r[3].value for r in records], pa.float64()),
        "ci_low": pa.array([r[3].ci_low for r in records], pa.float64()),
        "ci_high": pa.array([r[3].ci_high for r in records], pa.float64()),
        "n_resamples_skipped": pa.array([r[3].n_resamples_skipped for r in records], pa.int32()),
        "params": pa.array([json.dumps(r[3].params, default=str) for r in records], pa.string()),
        "created_at": pa.array([created] * len(records), pa.timestamp("us")),
    })
