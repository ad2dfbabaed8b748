"""Localisation figures of a map against an annotation (pointing game with tolerance, energy
inside, top-p IoU and their chance levels) match brute force on tied maps, and their summaries are
means with bootstrap intervals per label."""

from __future__ import annotations

import numpy as np
import pytest

from embedstore.analyses.common import AnalysisOptions
from embedstore.analyses.localisation import MapRecord, map_figures, summarise


def test_localisation_figures_match_brute_force_with_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        cam = rng.integers(0, 4, size=(12, 10)).astype(float)        # heavy ties
        mask = rng.random((12, 10)) < rng.uniform(0.05, 0.5)
        if not mask.any():
            continue
        figures = map_figures(cam, mask, np.random.default_rng(0), top_fraction=0.2)
        peaks = cam == cam.max()
        assert figures.pointing_hit in {bool(v) for v in mask[peaks]}
        assert figures.energy_inside == pytest.approx(cam[mask].sum() / cam.sum())
        assert figures.area_share == pytest.approx(mask.mean())
        k = round(0.2 * cam.size)
        top = np.zeros(cam.size, bool)
        top[np.argsort(-cam.ravel(), kind="stable")[:k]] = True
        top = top.reshape(cam.shape)
        assert figures.iou_top == pytest.approx((top & mask).sum() / (top | mask).sum())
    # A flat map carries no information: its hit rate, energy and IoU are the chance levels.
    mask = np.zeros((20, 20), bool)
    mask[:5, :] = True
    flat = np.ones((20, 20))
    hits = [map_figures(flat, mask, np.random.default_rng(s)).pointing_hit for s in range(400)]
    assert abs(np.mean(hits) - 0.25) < 0.07
    assert map_figures(flat, mask, np.random.default_rng(0)).energy_inside == pytest.approx(0.25)
    assert map_figures(np.zeros((20, 20)), mask, np.random.default_rng(0)).energy_inside == pytest.approx(0.25)
    exact = map_figures(mask.astype(float), mask, np.random.default_rng(0))
    assert exact.pointing_hit and exact.iou_top == 1.0 and exact.iou_chance == pytest.approx(0.25 / 1.75)
    # Tolerance: a peak 3 px below the annotation hits with tolerance 3, not 2; the chance level is
    # the share of pixels within the tolerance (brute force over every pixel).
    peak = np.zeros((20, 20))
    peak[7, 4] = 1.0
    assert not map_figures(peak, mask, np.random.default_rng(0), tolerance=2.0).pointing_hit
    grown = map_figures(peak, mask, np.random.default_rng(0), tolerance=3.0)
    assert grown.pointing_hit and grown.pointing_chance == pytest.approx(8 * 20 / 400)
    assert grown.area_share == pytest.approx(0.25)


def test_summaries_are_means_with_intervals_per_label() -> None:
    rng = np.random.default_rng(1)
    records = []
    for i in range(40):
        cam, mask = rng.random((8, 8)), rng.random((8, 8)) < 0.3
        records.append(MapRecord(i, "A" if i % 2 else "B", map_figures(cam, mask, rng), None if i == 3 else i / 40,
                                 0.5))
    rows = {(r.metric, r.label): r for r in summarise(records, AnalysisOptions(bootstrap=200, seed=1))}
    hits = [r.figures.pointing_hit for r in records if r.label == "A"]
    assert rows[("gradcam.pointing_game", "A")].value == pytest.approx(np.mean(hits))
    deletion = [r.deletion_auc for r in records if r.deletion_auc is not None]
    assert rows[("gradcam.deletion_auc", None)].value == pytest.approx(np.mean(deletion))
    for row in rows.values():
        assert row.ci_low is not None and row.ci_high is not None
        assert row.ci_low - 1e-12 <= row.value <= row.ci_high + 1e-12
    assert rows[("gradcam.pointing_game", None)].params["n_maps"] == 40

