"""Localisation figures of saliency maps against annotated regions, and their summaries.

Per map: pointing game (is the map's maximum inside the annotation, or within `tolerance` pixels
of it as Zhang et al. 2018 count a hit; ties broken at random, so a flat map scores its chance),
energy pointing game (share of the map's mass inside), IoU of the top-p region with the
annotation, and the chance baselines: a random point lands in the (tolerance-grown) annotation with
probability equal to its area share, a uniform map puts the annotation's area share inside, and a
random top-p region has expected IoU p·a / (p + a − p·a). Summaries are means per label and overall
with bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from embedstore import queries
from embedstore.analyses.common import AnalysisOptions, MetricRow, with_intervals
from embedstore.labels import LOCALISED_FINDINGS, LOCALISED_GROUP

if TYPE_CHECKING:
    from embedstore.store import Store


@dataclass(frozen=True)
class MapFigures:
    """The localisation figures of one map against one annotation."""

    pointing_hit: bool
    pointing_chance: float
    energy_inside: float
    iou_top: float
    area_share: float
    iou_chance: float


def map_figures(cam_map: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                top_fraction: float | None = None, tolerance: float = 0.0) -> MapFigures:
    """Figures of one map (H × W, non-negative) against a boolean mask of the same shape; a pointing
    hit may lie up to `tolerance` pixels (centre to centre) outside the mask; the top region holds
    `top_fraction` of the pixels (None: as many pixels as the annotation)."""
    from scipy.ndimage import distance_transform_edt

    if cam_map.shape != mask.shape:
        raise ValueError(f"map {cam_map.shape} and annotation {mask.shape} differ in shape")
    values = cam_map.reshape(-1).astype(np.float64)
    inside = mask.reshape(-1).astype(bool)
    n = values.size
    area = float(inside.mean())
    target = inside
    if tolerance > 0 and inside.any():
        target = (distance_transform_edt(~mask.astype(bool)) <= tolerance).reshape(-1)
    peaks = np.flatnonzero(values == values.max())
    hit = bool(target[peaks[rng.integers(len(peaks))]])
    total = float(values.sum())
    energy = float(values[inside].sum() / total) if total > 0 else area
    fraction = area if top_fraction is None else top_fraction
    k = max(1, int(round(fraction * n)))
    top = np.zeros(n, dtype=bool)
    top[np.argsort(-values, kind="stable")[:k]] = True
    union = np.count_nonzero(top | inside)
    iou = np.count_nonzero(top & inside) / union if union else 0.0
    p = k / n
    chance = p * area / (p + area - p * area) if area > 0 else 0.0
    return MapFigures(hit, float(target.mean()), energy, float(iou), area, float(chance))


@dataclass(frozen=True)
class MapRecord:
    """One map's figures, with what it was computed for."""

    sample_id: int
    label: str
    figures: MapFigures
    deletion_auc: float | None
    insertion_auc: float | None


def _columns(records: Sequence[MapRecord]) -> dict[str, np.ndarray]:
    def optional(values: list[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    return {
        "pointing_game": np.array([r.figures.pointing_hit for r in records], dtype=np.float64),
        "pointing_chance": np.array([r.figures.pointing_chance for r in records]),
        "energy_inside": np.array([r.figures.energy_inside for r in records]),
        "iou_top": np.array([r.figures.iou_top for r in records]),
        "area_share": np.array([r.figures.area_share for r in records]),
        "iou_chance": np.array([r.figures.iou_chance for r in records]),
        "deletion_auc": optional([r.deletion_auc for r in records]),
        "insertion_auc": optional([r.insertion_auc for r in records]),
    }


def _weighted_means(columns: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each figure's mean under each row of `weights` (resamples × maps), undefined maps left out."""
    means = {}
    for name, values in columns.items():
        finite = np.isfinite(values)
        w = weights * finite
        totals = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[name] = np.where(totals > 0, (w @ np.where(finite, values, 0.0)) / totals, np.nan)
    return means


def localised_labels(store: Store, labels: Sequence[str]) -> tuple[str, ...]:
    """Those of `labels` that are localised findings: whose CheXpert counterpart (label_names.chexpert,
    as ingest registered it) is one of LOCALISED_FINDINGS, so that NIH `Effusion` counts as `Pleural Effusion`."""
    with store.reader() as con:
        counterpart = dict(queries.fetch(con, "label_chexpert", labels=list(labels)))
    return tuple(label for label in labels if counterpart.get(label, label) in LOCALISED_FINDINGS)


def summarise(records: Sequence[MapRecord], options: AnalysisOptions, prefix: str = "gradcam.",
              params: dict[str, object] | None = None,
              localised: Collection[str] = LOCALISED_FINDINGS) -> list[MetricRow]:
    """Mean of every figure over all maps (label None), over the localised findings (`localised`: the
    run's labels that are, `localised_labels`), and per label, with seeded bootstrap intervals (maps
    resampled with replacement)."""
    groups: dict[str | None, list[MapRecord]] = {None: list(records),
                                                 LOCALISED_GROUP: [r for r in records if r.label in localised]}
    for record in records:
        groups.setdefault(record.label, []).append(record)
    rows: list[MetricRow] = []
    for label, members in groups.items():
        if not members:
            continue
        columns = _columns(members)
        point = {name: float(values[0]) for name, values in _weighted_means(columns, np.ones((1, len(members)))).items()}
        defined = {f"{prefix}{name}": value for name, value in point.items() if np.isfinite(value)}
        group_params = (params or {}) | {"n_maps": len(members)}

        def resampled(weights: np.ndarray, columns: dict[str, np.ndarray] = columns) -> dict[str, np.ndarray]:
            return {f"{prefix}{name}": values for name, values in _weighted_means(columns, weights).items()}

        rows.extend(with_intervals(defined, resampled, len(members), options, group_params, label=label))
    return rows
