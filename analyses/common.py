"""What every analysis shares: its options, the rows it returns, and seeded bootstrap resampling."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOLS = ("study", "multilabel")


@dataclass(frozen=True)
class AnalysisOptions:
    """Options of `embedstore analyze` that analyses read."""

    protocol: str = "multilabel"
    split: str = "test"
    bootstrap: int = 1000
    seed: int = 42
    k: int = 10
    threshold: float = 0.5
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


def bootstrap_weights(n: int, resamples: int, seed: int, chunk: int = 200) -> Iterator[np.ndarray]:
    """Multiplicity of each sample in each resample (rows of a resamples × n matrix), in chunks so
    that memory stays bounded for large splits. Seeded: the same seed gives the same resamples."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        draws = rng.integers(0, n, size=(size, n))
        weights = np.zeros((size, n))
        np.add.at(weights, (np.repeat(np.arange(size), n), draws.reshape(-1)), 1.0)
        yield weights


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
                   options: AnalysisOptions, label_of: Callable[[str], str | None] = lambda name: None,
                   params: dict[str, Any] | None = None) -> list[MetricRow]:
    """MetricRows for `point` figures, each with a bootstrap interval from `resampled(weights)`."""
    rows = []
    collected: dict[str, list[np.ndarray]] = {name: [] for name in point}
    if options.bootstrap > 0 and n > 0:
        for weights in bootstrap_weights(n, options.bootstrap, options.seed):
            for name, values in resampled(weights).items():
                if name in collected:
                    collected[name].append(values)
    for name, value in point.items():
        low = high = skipped = None
        if collected[name]:
            low, high, skipped = interval(np.concatenate(collected[name]))
        metric, _, label = name.partition("|")
        rows.append(MetricRow(metric, float(value), label or label_of(name), low, high, skipped, params or {}))
    return rows


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
