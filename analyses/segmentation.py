"""CheXlocalize's segmentation figures of saliency maps (Saporta et al., Nature Machine Intelligence 2022),
MS-CXR's contrast-to-noise ratio (Boecking et al. 2022), and the helpers a human reader's region needs.

A map is min-max normalised to [0, 1] and binarised above a threshold: one per finding tuned on
validation maps to maximise mean IoU (`tune_threshold`), or Otsu's (`otsu_threshold`). The figures are
mIoU of that segmentation with the ground truth and the hit rate (the map's maximum inside the ground
truth), both on the true-positive slice: maps whose ground truth is non-empty (`iou` refuses an empty
target). A human reader's region has no maximum; its `representative_point` stands in for one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The thresholds `tune_threshold` tries by default: 0.05, 0.10, …, 0.95.
THRESHOLD_GRID: np.ndarray = np.round(np.arange(1, 20) * 0.05, 2)


def normalise(cam_map: np.ndarray) -> np.ndarray:
    """The map min-max scaled to [0, 1] (float64), so that one threshold fits maps of any scale; a flat
    map has no contrast and becomes all zeros."""
    values = np.asarray(cam_map, dtype=np.float64)
    if values.size == 0:
        return values.copy()
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def otsu_threshold(cam_map: np.ndarray) -> float:
    """Otsu's threshold (scikit-image, 256 bins) of the normalised map: the cut that best separates two
    classes of values, with no tuning data. A flat map gets 1.0, so that its segmentation is empty."""
    from skimage.filters import threshold_otsu

    normalised = normalise(cam_map)
    if normalised.size == 0 or float(normalised.max()) == 0.0:
        return 1.0
    return float(threshold_otsu(normalised, nbins=256))


def segment(cam_map: np.ndarray, threshold: float) -> np.ndarray:
    """The map's segmentation: pixels whose normalised value is strictly above `threshold`."""
    return normalise(cam_map) > threshold


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what} {a.shape} and target {b.shape} differ in shape")


def iou(prediction: np.ndarray, target: np.ndarray) -> float:
    """|prediction ∩ target| / |prediction ∪ target| of two boolean masks. The figure is defined on
    the true-positive slice only, so an empty target raises ValueError; an empty prediction scores 0."""
    prediction, target = np.asarray(prediction, dtype=bool), np.asarray(target, dtype=bool)
    _same_shape(prediction, target, "prediction")
    if not target.any():
        raise ValueError("the target is empty: IoU is computed on images whose ground truth is non-empty")
    return float(np.count_nonzero(prediction & target) / np.count_nonzero(prediction | target))


def map_hit(cam_map: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> bool:
    """Whether the map's maximum lies inside `target` (the pointing game); ties among maxima are broken
    at random with `rng`, one draw per map as `map_figures` draws, so a flat map scores its chance."""
    values = np.asarray(cam_map, dtype=np.float64).reshape(-1)
    inside = np.asarray(target, dtype=bool)
    _same_shape(np.asarray(cam_map), inside, "map")
    peaks = np.flatnonzero(values == values.max())
    return bool(inside.reshape(-1)[peaks[rng.integers(len(peaks))]])


def nearest_pixel(ys: np.ndarray, xs: np.ndarray, sum_y: int, sum_x: int, count: int) -> tuple[int, int]:
    """Of the candidate pixels (ys, xs), the one whose centre is nearest the centroid (sum_y / count,
    sum_x / count) in pixel-index units, ties to the lowest (row, column); exact: floats only narrow
    the candidates, integers decide."""
    dy = ys.astype(np.float64) - sum_y / count
    dx = xs.astype(np.float64) - sum_x / count
    squared = dy * dy + dx * dx
    close = np.flatnonzero(squared <= squared.min() * (1 + 1e-9) + 1e-9)
    best = min(close.tolist(), key=lambda i: ((count * int(ys[i]) - sum_y) ** 2 + (count * int(xs[i]) - sum_x) ** 2,
                                                int(ys[i]), int(xs[i])))
    return int(ys[best]), int(xs[best])


def representative_point(mask: np.ndarray) -> tuple[int, int] | None:
    """A drawn region's stand-in for a map's maximum, (row, column): the pixel holding the region's
    centroid (pixel (y, x) covers [y, y+1) × [x, x+1), its centre at (y+0.5, x+0.5)) if that pixel is
    in the region, else the region's pixel whose centre is nearest the centroid (ties: lowest row-major
    index). None for an empty mask."""
    region = np.asarray(mask, dtype=bool)
    if region.ndim != 2:
        raise ValueError(f"a mask is two-dimensional, not {region.shape}")
    ys, xs = np.nonzero(region)
    count = len(ys)
    if count == 0:
        return None
    sum_y, sum_x = int(ys.sum(dtype=np.int64)), int(xs.sum(dtype=np.int64))
    # the centroid's pixel: floor(mean + 0.5) in index units, in integers so that halves are exact
    cy, cx = (2 * sum_y + count) // (2 * count), (2 * sum_x + count) // (2 * count)
    if region[cy, cx]:
        return cy, cx
    return nearest_pixel(ys, xs, sum_y, sum_x, count)


def tune_threshold(maps: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                   grid: np.ndarray = THRESHOLD_GRID) -> tuple[float, float]:
    """The threshold of `grid` whose segmentations have the highest mean IoU with `targets` (as
    CheXlocalize tunes one per finding on validation maps), ties to the lowest threshold; returns
    (threshold, mean IoU). Every target must be non-empty."""
    if len(maps) != len(targets):
        raise ValueError(f"{len(maps)} maps but {len(targets)} targets")
    thresholds = np.asarray(grid, dtype=np.float64).reshape(-1)
    if len(maps) == 0 or thresholds.size == 0:
        raise ValueError("tuning a threshold needs at least one map and one threshold")
    totals = np.zeros(thresholds.size)
    for cam_map, target in zip(maps, targets, strict=True):
        normalised = normalise(cam_map)
        for i, threshold in enumerate(thresholds):
            totals[i] += iou(normalised > threshold, target)
    means = totals / len(maps)
    best = means.max()
    tied = np.flatnonzero(means == best)
    chosen = tied[np.argmin(thresholds[tied])]
    return float(thresholds[chosen]), float(means[chosen])


def _variance(values: np.ndarray) -> float:
    """Population variance, exactly 0 for equal values (numpy's mean of them may be off by rounding)."""
    return 0.0 if values.max() == values.min() else float(values.var())


def contrast_to_noise(cam_map: np.ndarray, region: np.ndarray) -> float:
    """MS-CXR's contrast-to-noise ratio of a map against a region: |mean inside − mean outside| /
    sqrt(var inside + var outside), population variances of the raw map values; NaN where a side is
    empty or both sides are flat (the ratio is undefined)."""
    values = np.asarray(cam_map, dtype=np.float64)
    inside = np.asarray(region, dtype=bool)
    _same_shape(values, inside, "map")
    a, b = values[inside], values[~inside]
    if a.size == 0 or b.size == 0:
        return float("nan")
    denominator = float(np.sqrt(_variance(a) + _variance(b)))
    if denominator == 0:
        return float("nan")
    return float(abs(a.mean() - b.mean()) / denominator)


def size_cuts(area_shares: np.ndarray) -> tuple[float, float]:
    """Tercile cut points of the targets' area shares (np.quantile at 1/3 and 2/3), so that figures can
    be reported for small, medium and large regions."""
    shares = np.asarray(area_shares, dtype=np.float64).reshape(-1)
    if shares.size == 0:
        raise ValueError("size terciles need at least one area share")
    low, high = np.quantile(shares, [1 / 3, 2 / 3])
    return float(low), float(high)


def size_class(area_share: float, cuts: tuple[float, float]) -> str:
    """The tercile of an area share: "small" up to the first cut (inclusive), "medium" up to the
    second (inclusive), "large" above it."""
    if area_share <= cuts[0]:
        return "small"
    return "medium" if area_share <= cuts[1] else "large"

