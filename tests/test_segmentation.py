"""CheXlocalize's segmentation figures, MS-CXR's CNR and the size terciles, each against a brute-force
implementation (pure-Python loops, exact fractions, scikit-learn's jaccard_score) on maps with ties,
flat maps and single-pixel targets."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from embedstore.analyses.localisation import map_figures
from embedstore.analyses.segmentation import (
    THRESHOLD_GRID,
    contrast_to_noise,
    iou,
    map_hit,
    normalise,
    otsu_threshold,
    representative_point,
    segment,
    size_class,
    size_cuts,
    tune_threshold,
)

SHAPES = st.tuples(st.integers(1, 7), st.integers(1, 7))


@st.composite
def tied_maps(draw: st.DrawFn, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Maps of a few repeated values (ties everywhere), sometimes flat."""
    shape = shape or draw(SHAPES)
    levels = draw(st.integers(1, 4))
    return draw(arrays(np.float64, shape, elements=st.integers(0, levels - 1).map(lambda v: v * 0.37 - 0.2)))


@st.composite
def map_and_target(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """A tied map and a non-empty target of its shape (often a single pixel)."""
    shape = draw(SHAPES)
    cam_map = draw(tied_maps(shape))
    if draw(st.booleans()):
        target = np.zeros(shape, dtype=bool)
        target[draw(st.integers(0, shape[0] - 1)), draw(st.integers(0, shape[1] - 1))] = True
    else:
        target = draw(arrays(np.bool_, shape))
        target.flat[draw(st.integers(0, target.size - 1))] = True
    return cam_map, target


def _cells(a: np.ndarray) -> list[float]:
    return [float(v) for v in a.reshape(-1)]


def brute_normalise(cam_map: np.ndarray) -> list[float]:
    values = _cells(cam_map)
    low, high = min(values), max(values)
    return [0.0 if high == low else (v - low) / (high - low) for v in values]


def brute_iou(prediction: list[bool], target: list[bool]) -> float:
    both = sum(1 for p, t in zip(prediction, target, strict=True) if p and t)
    either = sum(1 for p, t in zip(prediction, target, strict=True) if p or t)
    return both / either


# --- normalise, segment, iou ---------------------------------------------------------------------


@settings(deadline=None)
@given(tied_maps())
def test_normalise_matches_loops(cam_map: np.ndarray) -> None:
    result = normalise(cam_map)
    assert result.dtype == np.float64 and result.shape == cam_map.shape
    assert np.allclose(result.reshape(-1), brute_normalise(cam_map), rtol=0, atol=1e-12)
    assert result.min() >= 0 and result.max() <= 1


def test_normalise_flat_map_is_zero_and_scale_free() -> None:
    assert np.array_equal(normalise(np.full((3, 4), 7.5)), np.zeros((3, 4)))
    cam_map = np.array([[1.0, 3.0], [3.0, 5.0]])
    assert np.array_equal(normalise(cam_map), normalise(10 * cam_map - 4))
    assert np.array_equal(normalise(cam_map), [[0, 0.5], [0.5, 1]])


@settings(deadline=None)
@given(tied_maps(), st.sampled_from([0.0, 0.05, 0.37, 0.5, 0.95, 1.0]))
def test_segment_is_strictly_above_the_threshold(cam_map: np.ndarray, threshold: float) -> None:
    expected = [v > threshold for v in brute_normalise(cam_map)]
    assert segment(cam_map, threshold).reshape(-1).tolist() == expected


@settings(deadline=None)
@given(map_and_target(), st.floats(0, 1))
def test_iou_matches_jaccard_score_and_loops(pair: tuple[np.ndarray, np.ndarray], threshold: float) -> None:
    from sklearn.metrics import jaccard_score

    cam_map, target = pair
    prediction = segment(cam_map, threshold)
    value = iou(prediction, target)
    assert value == pytest.approx(brute_iou(prediction.reshape(-1).tolist(), target.reshape(-1).tolist()), abs=1e-15)
    assert value == pytest.approx(jaccard_score(target.reshape(-1), prediction.reshape(-1), zero_division=0.0), abs=1e-15)


def test_iou_edge_cases() -> None:
    target = np.zeros((3, 3), dtype=bool)
    target[1, 1] = True
    assert iou(np.zeros((3, 3), dtype=bool), target) == 0.0          # empty prediction
    assert iou(target.copy(), target) == 1.0                            # single pixel, exact
    assert iou(np.ones((3, 3), dtype=bool), target) == pytest.approx(1 / 9)
    with pytest.raises(ValueError, match="empty"):
        iou(target, np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        iou(np.ones((2, 3), dtype=bool), target)


# --- Otsu -----------------------------------------------------------------------------------------


def brute_otsu(values: list[float], nbins: int = 256) -> tuple[float, list[float], list[float]]:
    """Otsu over a histogram of `nbins` equal bins on [min, max], in loops: the first bin centre that
    maximises the between-class variance of the bins up to it and the bins after; also every split's
    variance and the bin centres, for comparing near-ties."""
    low, high = min(values), max(values)
    width = (high - low) / nbins
    counts = [0] * nbins
    for v in values:
        counts[min(int((v - low) / width), nbins - 1)] += 1
    centres = [low + (i + 0.5) * width for i in range(nbins)]
    variances = []
    for k in range(nbins - 1):
        w0 = sum(counts[: k + 1])
        w1 = sum(counts[k + 1:])
        if w0 == 0 or w1 == 0:
            variances.append(0.0)
            continue
        m0 = sum(c * x for c, x in zip(counts[: k + 1], centres[: k + 1], strict=True)) / w0
        m1 = sum(c * x for c, x in zip(counts[k + 1:], centres[k + 1:], strict=True)) / w1
        variances.append(w0 * w1 * (m0 - m1) ** 2)
    best = max(range(nbins - 1), key=lambda k: (variances[k], -k))
    return centres[best], variances, centres


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(2, 9), st.integers(2, 9)),
              elements=st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.8, 0.81, 1.0, 2.0])))
def test_otsu_matches_a_histogram_brute_force(cam_map: np.ndarray) -> None:
    if np.ptp(cam_map) == 0:
        assert otsu_threshold(cam_map) == 1.0
        return
    threshold = otsu_threshold(cam_map)
    expected, variances, centres = brute_otsu(brute_normalise(cam_map))
    if threshold != pytest.approx(expected, abs=1e-12):  # a float near-tie between two splits
        chosen = min(range(len(centres)), key=lambda i: abs(centres[i] - threshold))
        assert abs(centres[chosen] - threshold) < 1e-12
        assert variances[chosen] == pytest.approx(max(variances), rel=1e-9)
    # Otsu's cut separates the map's values: something on each side
    seg = segment(cam_map, threshold)
    assert seg.any() and not seg.all()


def test_otsu_flat_map_selects_nothing_and_two_levels_split_exactly() -> None:
    flat = np.full((4, 4), 0.3)
    assert otsu_threshold(flat) == 1.0
    assert not segment(flat, otsu_threshold(flat)).any()
    two = np.zeros((4, 4))
    two[1:3, 2:] = 5.0
    assert np.array_equal(segment(two, otsu_threshold(two)), two > 0)


# --- pointing game --------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(map_and_target(), st.integers(0, 2**32 - 1))
def test_map_hit_matches_loops_and_map_figures(pair: tuple[np.ndarray, np.ndarray], seed: int) -> None:
    cam_map, target = pair
    values, inside = _cells(cam_map), target.reshape(-1).tolist()
    top = max(values)
    peaks = [i for i, v in enumerate(values) if v == top]
    expected = inside[peaks[int(np.random.default_rng(seed).integers(len(peaks)))]]
    assert map_hit(cam_map, target, np.random.default_rng(seed)) is expected
    assert map_figures(cam_map, target, np.random.default_rng(seed)).pointing_hit is expected


def test_map_hit_flat_map_scores_its_chance_and_a_unique_peak_is_certain() -> None:
    target = np.zeros((5, 8), dtype=bool)
    target[:2, :5] = True                                # a quarter of the frame
    rng = np.random.default_rng(3)
    hits = [map_hit(np.ones((5, 8)), target, rng) for _ in range(4000)]
    assert abs(np.mean(hits) - 0.25) < 0.03
    peaked = np.zeros((5, 8))
    peaked[1, 4] = 1.0
    assert all(map_hit(peaked, target, rng) for _ in range(50))
    peaked[1, 4], peaked[4, 7] = 0.0, 1.0
    assert not any(map_hit(peaked, target, rng) for _ in range(50))


# --- representative point -------------------------------------------------------------------------


def brute_point(mask: np.ndarray) -> tuple[int, int] | None:
    """The centroid's pixel (floor of centroid + 1/2, in exact fractions) if in the mask, else the mask
    pixel whose index is nearest the centroid, ties to the lowest row-major index: loops only."""
    height, width = mask.shape
    pixels = [(y, x) for y in range(height) for x in range(width) if mask[y, x]]
    if not pixels:
        return None
    cy = Fraction(sum(y for y, _ in pixels), len(pixels))
    cx = Fraction(sum(x for _, x in pixels), len(pixels))
    centre = (math.floor(cy + Fraction(1, 2)), math.floor(cx + Fraction(1, 2)))
    if centre in pixels:
        return centre
    return min(pixels, key=lambda p: ((p[0] - cy) ** 2 + (p[1] - cx) ** 2, p[0] * width + p[1]))


@st.composite
def box_masks(draw: st.DrawFn) -> np.ndarray:
    """Unions of a few boxes, often mirrored, so that centroids fall in gaps with tied neighbours."""
    height, width = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(draw(st.integers(0, 3))):
        y0, x0 = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        y1, x1 = draw(st.integers(y0 + 1, height)), draw(st.integers(x0 + 1, width))
        mask[y0:y1, x0:x1] = True
        if draw(st.booleans()):
            mask[height - y1:height - y0, width - x1:width - x0] = True
    return mask


@settings(max_examples=300, deadline=None)
@given(st.one_of(box_masks(), arrays(np.bool_, SHAPES)))
def test_representative_point_matches_exact_brute_force(mask: np.ndarray) -> None:
    assert representative_point(mask) == brute_point(mask)


def test_representative_point_hand_cases() -> None:
    assert representative_point(np.zeros((3, 3), dtype=bool)) is None
    single = np.zeros((4, 5), dtype=bool)
    single[2, 3] = True
    assert representative_point(single) == (2, 3)
    even = np.zeros((6, 6), dtype=bool)
    even[1:5, 1:5] = True                 # centroid (2.5, 2.5): its pixel (containing (3.0, 3.0)) is (3, 3)
    assert representative_point(even) == (3, 3)
    ring = np.ones((5, 5), dtype=bool)
    ring[1:4, 1:4] = False                # centroid (2, 2) in the hole: four ring pixels tie at distance 2
    assert representative_point(ring) == (0, 2)
    pair = np.zeros((3, 9), dtype=bool)
    pair[:, :2] = pair[:, 7:] = True      # centroid (1, 4) between two bars: (1, 1) and (1, 7) tie
    assert representative_point(pair) == (1, 1)


# --- threshold tuning -----------------------------------------------------------------------------


def brute_tune(maps: list[np.ndarray], targets: list[np.ndarray], grid: list[float]) -> tuple[float, float]:
    best: tuple[float, float] | None = None
    for threshold in grid:
        scores = []
        for cam_map, target in zip(maps, targets, strict=True):
            prediction = [v > threshold for v in brute_normalise(cam_map)]
            scores.append(brute_iou(prediction, target.reshape(-1).tolist()))
        mean = sum(scores) / len(scores)
        if best is None or mean > best[1] + 1e-12 or (abs(mean - best[1]) <= 1e-12 and threshold < best[0]):
            best = (threshold, mean)
    assert best is not None
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(map_and_target(), min_size=1, max_size=5))
def test_tune_threshold_matches_an_explicit_loop(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    maps, targets = [m for m, _ in pairs], [t for _, t in pairs]
    threshold, mean = tune_threshold(maps, targets)
    expected = brute_tune(maps, targets, THRESHOLD_GRID.tolist())
    assert threshold == pytest.approx(expected[0], abs=1e-12)
    assert mean == pytest.approx(expected[1], abs=1e-12)


def test_tune_threshold_ties_go_to_the_lowest_and_bad_input_is_refused() -> None:
    target = np.zeros((2, 2), dtype=bool)
    target[0, 0] = True
    flat = np.ones((2, 2))                # every threshold selects nothing: all tie at IoU 0
    assert tune_threshold([flat], [target]) == (0.05, 0.0)
    two = np.array([[1.0, 0.0], [0.0, 0.0]])  # every threshold in (0, 1) selects exactly the target
    assert tune_threshold([two], [target], grid=np.array([0.9, 0.2, 0.5])) == (0.2, 1.0)
    assert THRESHOLD_GRID.tolist() == [round(0.05 * i, 2) for i in range(1, 20)]
    with pytest.raises(ValueError):
        tune_threshold([], [])
    with pytest.raises(ValueError):
        tune_threshold([flat], [])


# --- contrast-to-noise ----------------------------------------------------------------------------


def brute_cnr(cam_map: np.ndarray, region: np.ndarray) -> float:
    """The ratio in exact fractions (so a flat side has variance exactly 0), rounded at the end."""
    cells = [Fraction(v) for v in _cells(cam_map)]
    inside = [v for v, r in zip(cells, region.reshape(-1).tolist(), strict=True) if r]
    outside = [v for v, r in zip(cells, region.reshape(-1).tolist(), strict=True) if not r]
    if not inside or not outside:
        return math.nan
    mi: Fraction = sum(inside, Fraction(0)) / len(inside)
    mo: Fraction = sum(outside, Fraction(0)) / len(outside)
    vi: Fraction = sum(((v - mi) ** 2 for v in inside), Fraction(0)) / len(inside)
    vo: Fraction = sum(((v - mo) ** 2 for v in outside), Fraction(0)) / len(outside)
    return math.nan if vi + vo == 0 else float(abs(mi - mo)) / math.sqrt(vi + vo)


@settings(deadline=None)
@given(tied_maps(), st.data())
def test_contrast_to_noise_matches_the_hand_formula(cam_map: np.ndarray, data: st.DataObject) -> None:
    region = data.draw(arrays(np.bool_, cam_map.shape))
    expected = brute_cnr(cam_map, region)
    value = contrast_to_noise(cam_map, region)
    if math.isnan(expected):
        assert math.isnan(value)
    else:
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_contrast_to_noise_hand_cases() -> None:
    cam_map = np.array([[1.0, 2.0], [3.0, 4.0]])
    region = np.array([[True, False], [False, False]])
    # inside [1] (var 0), outside [2, 3, 4] (mean 3, var 2/3): 2 / sqrt(2/3)
    assert contrast_to_noise(cam_map, region) == pytest.approx(2 / math.sqrt(2 / 3))
    assert contrast_to_noise(cam_map, ~region) == contrast_to_noise(cam_map, region)     # symmetric
    assert math.isnan(contrast_to_noise(cam_map, np.zeros((2, 2), dtype=bool)))
    assert math.isnan(contrast_to_noise(cam_map, np.ones((2, 2), dtype=bool)))
    assert math.isnan(contrast_to_noise(np.array([[1.0, 1.0], [5.0, 5.0]]), np.array([[True, True], [False, False]])))


# --- size terciles --------------------------------------------------------------------------------


def brute_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    h = (len(ordered) - 1) * q
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


@settings(deadline=None)
@given(st.lists(st.sampled_from([0.01, 0.02, 0.05, 0.1, 0.3, 0.5]), min_size=1, max_size=30))
def test_size_cuts_are_terciles_and_classes_split_at_them(shares: list[float]) -> None:
    cuts = size_cuts(np.array(shares))
    assert cuts[0] == pytest.approx(brute_quantile(shares, 1 / 3), abs=1e-12)
    assert cuts[1] == pytest.approx(brute_quantile(shares, 2 / 3), abs=1e-12)
    for share in shares:
        expected = "small" if share <= cuts[0] else "medium" if share <= cuts[1] else "large"
        assert size_class(share, cuts) == expected


def test_size_class_at_the_cut_points() -> None:
    cuts = size_cuts(np.array([0.1, 0.2, 0.3, 0.4]))     # quantiles at 1/3 and 2/3: 0.2 and 0.3
    assert cuts == pytest.approx((0.2, 0.3))
    assert size_class(cuts[0], cuts) == "small"
    assert size_class(np.nextafter(cuts[0], 1), cuts) == "medium"
    assert size_class(cuts[1], cuts) == "medium"
    assert size_class(np.nextafter(cuts[1], 1), cuts) == "large"
    tied = size_cuts(np.array([0.2, 0.2, 0.2]))
    assert tied == (0.2, 0.2) and size_class(0.2, tied) == "small" and size_class(0.21, tied) == "large"
    with pytest.raises(ValueError):
        size_cuts(np.array([]))
