"""Localisation figures of saliency maps against annotated regions, and their summaries.

Per map: pointing game (is the map's maximum inside the annotation, or within `tolerance` pixels
of it as Zhang et al. 2018 count a hit; ties broken at random, so a flat map scores its chance),
energy pointing game (share of the map's mass inside), IoU of the top-p region with the
annotation, and the chance baselines: a random point lands in the (tolerance-grown) annotation with
probability equal to its area share, a uniform map puts the annotation's area share inside, and a
random top-p region has expected IoU p·a / (p + a − p·a). CheXlocalize's figures of a map (its
IoU once binarised, its hit without tolerance, the annotation's size tercile: embedstore/cam/
chexlocalize.py) ride along as `SegmentationFigures`. Summaries are means per label and overall with
bootstrap intervals; the human ceiling compares each held-out reader with the model on the same
references, paired.
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
class SegmentationFigures:
    """CheXlocalize's figures of one map against its (non-empty) annotation: IoU of the map binarised
    at the label's threshold (tuned on val, or Otsu's where val has no annotation of the label), IoU
    at Otsu's threshold, the hit (the map's maximum inside the annotation, no tolerance) and the
    annotation's size tercile."""

    iou: float
    iou_otsu: float
    hit: bool
    size: str


@dataclass(frozen=True)
class MapRecord:
    """One map's figures, with what it was computed for."""

    sample_id: int
    label: str
    figures: MapFigures
    deletion_auc: float | None
    insertion_auc: float | None
    segmentation: SegmentationFigures | None = None


#: Lesion-size terciles of the annotations (by area share), smallest first.
SIZE_CLASSES = ("small", "medium", "large")


def _optional(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _columns(records: Sequence[MapRecord], prefix: str = "gradcam.",
             segmentation_prefix: str = "localisation.") -> dict[str, np.ndarray]:
    """Every per-map figure as a column named by its metric; a size split is the figure where the
    map's annotation is of that size and undefined (NaN, left out of means) elsewhere."""
    columns = {
        f"{prefix}pointing_game": np.array([r.figures.pointing_hit for r in records], dtype=np.float64),
        f"{prefix}pointing_chance": np.array([r.figures.pointing_chance for r in records]),
        f"{prefix}energy_inside": np.array([r.figures.energy_inside for r in records]),
        f"{prefix}iou_top": np.array([r.figures.iou_top for r in records]),
        f"{prefix}area_share": np.array([r.figures.area_share for r in records]),
        f"{prefix}iou_chance": np.array([r.figures.iou_chance for r in records]),
        f"{prefix}deletion_auc": _optional([r.deletion_auc for r in records]),
        f"{prefix}insertion_auc": _optional([r.insertion_auc for r in records]),
    }
    segmented = [r.segmentation for r in records]
    if any(s is not None for s in segmented):
        iou = _optional([s.iou if s else None for s in segmented])
        hit = _optional([float(s.hit) if s else None for s in segmented])
        sizes = np.array([s.size if s else "" for s in segmented])
        columns |= {f"{segmentation_prefix}miou": iou, f"{segmentation_prefix}hit_rate": hit,
                    f"{segmentation_prefix}miou_otsu": _optional([s.iou_otsu if s else None for s in segmented])}
        for size in SIZE_CLASSES:
            columns[f"{segmentation_prefix}miou.{size}"] = np.where(sizes == size, iou, np.nan)
            columns[f"{segmentation_prefix}hit_rate.{size}"] = np.where(sizes == size, hit, np.nan)
    return columns


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


def summarise_columns(labels: Sequence[str], columns: dict[str, np.ndarray], options: AnalysisOptions,
                      params: dict[str, object] | None = None, localised: Collection[str] = LOCALISED_FINDINGS,
                      ratios: dict[str, tuple[str, str]] | None = None,
                      clusters: Sequence[object] | None = None) -> list[MetricRow]:
    """Mean of every column (one value per record, NaN where undefined) over all records (label None),
    over the localised findings and per label, with seeded bootstrap intervals (records resampled with
    replacement; with `clusters`, one id per record, whole clusters — an image's records together);
    `ratios` adds figures that are the ratio of two columns' means."""
    label_of = np.asarray(labels, dtype=object)
    groups: dict[str | None, np.ndarray] = {None: np.arange(len(labels)),
                                            LOCALISED_GROUP: np.flatnonzero([label in localised for label in labels])}
    for name in dict.fromkeys(labels):
        groups[name] = np.flatnonzero(label_of == name)
    rows: list[MetricRow] = []
    for label, members in groups.items():
        if len(members) == 0:
            continue
        own = {name: values[members] for name, values in columns.items()}
        if clusters is None:
            spread, n_draws = np.arange(len(members)), len(members)
        else:
            _, spread = np.unique(np.asarray(clusters, dtype=object)[members].astype(str), return_inverse=True)
            n_draws = int(spread.max()) + 1

        def resampled(weights: np.ndarray, own: dict[str, np.ndarray] = own,
                      spread: np.ndarray = spread) -> dict[str, np.ndarray]:
            means = _weighted_means(own, weights[:, spread])
            with np.errstate(invalid="ignore", divide="ignore"):
                for name, (top, bottom) in (ratios or {}).items():
                    means[name] = np.where(means[bottom] != 0, means[top] / means[bottom], np.nan)
            return means

        point = {name: float(values[0]) for name, values in resampled(np.ones((1, n_draws))).items()}
        defined = {name: value for name, value in point.items() if np.isfinite(value)}
        counts = {name: {"n_maps": int(np.isfinite(own[name]).sum())} for name in defined if name in own}
        group = {"n_maps": len(members)} | ({"n_images": n_draws, "resampled": "images"} if clusters is not None else {})
        rows.extend(with_intervals(defined, resampled, n_draws, options, (params or {}) | group,
                                   label=label, params_of=counts))
    return rows


def summarise(records: Sequence[MapRecord], options: AnalysisOptions, prefix: str = "gradcam.",
              params: dict[str, object] | None = None,
              localised: Collection[str] = LOCALISED_FINDINGS,
              segmentation_prefix: str = "localisation.") -> list[MetricRow]:
    """Mean of every per-map figure over all maps (label None), over the localised findings (`localised`:
    the run's labels that are, `localised_labels`), and per label, with seeded bootstrap intervals
    (maps resampled with replacement)."""
    return summarise_columns([r.label for r in records], _columns(records, prefix, segmentation_prefix), options,
                             params, localised)


@dataclass(frozen=True)
class HeldOutRecord:
    """One reader's region held out as the reference (the other readers' union): how the reader
    did against it, and how the model's map did against the same reference."""

    sample_id: int
    label: str
    reader: str
    human_iou: float
    human_hit: bool
    model_iou: float
    model_hit: bool


def human_ceiling_rows(records: Sequence[HeldOutRecord], options: AnalysisOptions, params: dict[str, object] | None,
                       localised: Collection[str] = LOCALISED_FINDINGS) -> list[MetricRow]:
    """Reader-vs-reader figures (the human ceiling), the model's on the same references, the gap
    (model − human, a paired interval: both resampled with the same weights) and the model's share of
    the human figure; intervals resample images (an image's records share readers and references)."""
    human_iou = np.array([r.human_iou for r in records], dtype=np.float64)
    human_hit = np.array([r.human_hit for r in records], dtype=np.float64)
    model_iou = np.array([r.model_iou for r in records], dtype=np.float64)
    model_hit = np.array([r.model_hit for r in records], dtype=np.float64)
    columns = {"localisation.human_miou": human_iou, "localisation.human_hit_rate": human_hit,
               "localisation.held_out_miou": model_iou, "localisation.held_out_hit_rate": model_hit,
               "localisation.gap_to_human.miou": model_iou - human_iou,
               "localisation.gap_to_human.hit_rate": model_hit - human_hit}
    ratios = {"localisation.fraction_of_human.miou": ("localisation.held_out_miou", "localisation.human_miou"),
              "localisation.fraction_of_human.hit_rate": ("localisation.held_out_hit_rate",
                                                          "localisation.human_hit_rate")}
    n_readers = len({r.reader for r in records})
    return summarise_columns([r.label for r in records], columns, options, (params or {}) | {"n_readers": n_readers},
                             localised, ratios, clusters=[r.sample_id for r in records])
