"""CheXlocalize's protocol on maps, the human ceiling and phrase grounding, each checked against a
brute-force recomputation: thresholds tuned per label, per-map figures, size terciles, held-out
readers vs the model on the same references (paired gap, share of human), the sentence maps'
figures and their summaries."""

from __future__ import annotations

import numpy as np
import pytest

from embedstore.analyses.common import AnalysisOptions
from embedstore.analyses.localisation import HeldOutRecord, human_ceiling_rows, summarise_columns
from embedstore.cam.chexlocalize import Thresholds, binarise, held_out_records, segmentation_figures, tune_thresholds
from embedstore.cam.grounding import grounding_rows, phrase_record
from embedstore.cam.targets import Target


def brute_normalise(cam: np.ndarray) -> np.ndarray:
    low, high = cam.min(), cam.max()
    return np.zeros_like(cam, dtype=float) if high == low else (cam - low) / (high - low)


def brute_iou(prediction: np.ndarray, target: np.ndarray) -> float:
    both = either = 0
    for p, t in zip(prediction.ravel().tolist(), target.ravel().tolist(), strict=True):
        both += p and t
        either += p or t
    return both / either


def _maps_and_targets(seed: int, n: int, labels: tuple[str, ...] = ("A", "B")) -> tuple[list[Target], list[np.ndarray]]:
    """Maps with ties (values on a coarse grid) and targets of varied size, some maps flat."""
    rng = np.random.default_rng(seed)
    targets, maps = [], []
    for i in range(n):
        region = np.zeros((12, 12), dtype=bool)
        y, x = rng.integers(0, 8, size=2)
        h, w = rng.integers(1, 5, size=2)
        region[y:y + h, x:x + w] = True
        cam = np.round(rng.random((12, 12)) * 4) / 4
        cam[y:y + h, x:x + w] += rng.random() * 0.5
        if i % 7 == 3:
            cam = np.full((12, 12), 0.3)
        targets.append(Target(i, labels[i % len(labels)], region, f"f:{i}"))
        maps.append(cam)
    return targets, maps


def test_thresholds_maximise_each_labels_val_miou() -> None:
    targets, maps = _maps_and_targets(0, 30)
    thresholds = tune_thresholds(targets, maps, in_sample=False)
    grid = [round(0.05 * k, 2) for k in range(1, 20)]
    for label in ("A", "B"):
        pairs = [(m, t.region) for t, m in zip(targets, maps, strict=True) if t.label == label]
        means = [np.mean([brute_iou(brute_normalise(m) > g, r) for m, r in pairs]) for g in grid]
        best = grid[int(np.argmax(means))]                  # argmax: the lowest threshold among ties
        assert thresholds.of(label) == pytest.approx(best)
        assert thresholds.tuned[label][1] == pytest.approx(max(means))
    assert thresholds.of("C") is None                     # no val maps of C: Otsu per map
    assert [r.label for r in thresholds.rows({})] == ["A", "B"]


def test_per_map_figures_match_brute_force() -> None:
    from skimage.filters import threshold_otsu

    targets, maps = _maps_and_targets(1, 20)
    cuts = (0.02, 0.06)
    for target, cam in zip(targets, maps, strict=True):
        figures = segmentation_figures(cam, target.region, 0.4, cuts, np.random.default_rng(0))
        assert figures.iou == pytest.approx(brute_iou(brute_normalise(cam) > 0.4, target.region))
        normalised = brute_normalise(cam)
        otsu = 1.0 if normalised.max() == 0 else threshold_otsu(normalised, nbins=256)
        assert figures.iou_otsu == pytest.approx(brute_iou(normalised > otsu, target.region))
        peaks = [(y, x) for y in range(12) for x in range(12) if cam[y, x] == cam.max()]
        if len(peaks) == 1:
            assert figures.hit == bool(target.region[peaks[0]])
        area = target.region.mean()
        assert figures.size == ("small" if area <= 0.02 else "medium" if area <= 0.06 else "large")
    flat = np.full((12, 12), 0.5)
    assert not binarise(flat, 0.2).any() and not binarise(flat, None).any()


def test_held_out_readers_and_the_model_share_references() -> None:
    region = np.zeros((10, 10), dtype=bool)
    r1, r2, r3 = (np.zeros((10, 10), dtype=bool) for _ in range(3))
    r1[2:6, 2:6] = True
    r2[3:7, 3:8] = True                                  # r3 read the image and drew nothing
    region = r1 | r2 | r3
    cam = np.zeros((10, 10))
    cam[4, 4] = 1.0
    cam[3:6, 3:6] += 0.5
    target = Target(5, "A", region, "f:2", readers={"r1": r1, "r2": r2, "r3": r3})
    single = Target(6, "A", r1, "f:3")                   # one reader: no human figure
    records = held_out_records([target, single], [cam, cam], Thresholds({"A": (0.4, 0.0, 1)}), seed=0)
    assert [r.reader for r in records] == ["r1", "r2", "r3"]
    prediction = brute_normalise(cam) > 0.4
    for record, own, others in ((records[0], r1, r2 | r3), (records[1], r2, r1 | r3), (records[2], r3, r1 | r2)):
        assert record.human_iou == pytest.approx(brute_iou(own, others) if own.any() else 0.0)
        assert record.model_iou == pytest.approx(brute_iou(prediction, others))
        assert record.model_hit == bool(others[4, 4])
    assert records[2].human_iou == 0.0 and not records[2].human_hit       # drew nothing: IoU 0, a miss


def test_human_rows_pair_the_gap_and_take_the_ratio_of_means() -> None:
    rng = np.random.default_rng(3)
    records = [HeldOutRecord(i // 3, "AB"[i % 2], f"r{i % 3}", float(rng.random()), bool(rng.random() < 0.6),
                             float(rng.random()), bool(rng.random() < 0.4)) for i in range(40)]
    rows = {(r.metric, r.label): r for r in human_ceiling_rows(records, AnalysisOptions(bootstrap=300, seed=2), {})}
    human = np.array([r.human_iou for r in records])
    model = np.array([r.model_iou for r in records])
    assert rows[("localisation.human_miou", None)].value == pytest.approx(human.mean())
    assert rows[("localisation.held_out_miou", None)].value == pytest.approx(model.mean())
    gap = rows[("localisation.gap_to_human.miou", None)]
    assert gap.value == pytest.approx(model.mean() - human.mean())
    share = rows[("localisation.fraction_of_human.miou", None)]
    assert share.value == pytest.approx(model.mean() / human.mean())
    a = [i for i, r in enumerate(records) if r.label == "A"]
    assert rows[("localisation.human_hit_rate", "A")].value == pytest.approx(np.mean([records[i].human_hit for i in a]))
    # Paired: the gap's interval comes from the same resamples as both means — brute force with the same draws.
    from embedstore.analyses.common import bootstrap_weights

    images = sorted({str(r.sample_id) for r in records})            # resampled whole: an image's records together
    draws = np.concatenate(list(bootstrap_weights(len(images), 300, 2)))
    per_record = draws[:, [images.index(str(r.sample_id)) for r in records]]
    paired = (per_record @ (model - human)) / per_record.sum(axis=1)
    assert gap.ci_low == pytest.approx(np.percentile(paired, 2.5))
    assert gap.ci_high == pytest.approx(np.percentile(paired, 97.5))


def test_size_splits_average_only_their_tercile() -> None:
    values = np.array([0.1, 0.5, np.nan, 0.9, 0.3, 0.7])
    small = np.where(np.array([1, 0, 1, 0, 1, 0]) == 1, values, np.nan)
    rows = {(r.metric, r.label): r for r in summarise_columns(["A", "A", "B", "B", "A", "B"],
                                                              {"x": values, "x.small": small},
                                                              AnalysisOptions(bootstrap=0))}
    assert rows[("x", None)].value == pytest.approx(np.nanmean(values))
    assert rows[("x.small", None)].value == pytest.approx(np.mean([0.1, 0.3]))
    assert rows[("x.small", None)].params["n_maps"] == 2
    assert rows[("x", "B")].value == pytest.approx(0.8) and ("x.small", "B") not in rows   # B's small one is undefined


def test_phrase_figures_and_contrast_to_noise() -> None:
    region = np.zeros((8, 8), dtype=bool)
    region[1:4, 2:6] = True
    phrase = np.arange(64, dtype=float).reshape(8, 8) / 64
    phrase[2, 3] = 5.0
    label = np.ones((8, 8))
    label[7, 7] = 2.0
    record = phrase_record(1, "A", "small left effusion", region, phrase, label, np.random.default_rng(0))
    inside, outside = phrase[region], phrase[~region]
    cnr = abs(inside.mean() - outside.mean()) / np.sqrt(inside.var() + outside.var())
    assert record.cnr == pytest.approx(cnr) and record.hit and not record.label_hit
    assert record.label_cnr == pytest.approx(abs(1.0 - label[~region].mean()) / np.sqrt(label[~region].var()))
    rows = {(r.metric, r.label): r for r in grounding_rows([record, record], AnalysisOptions(bootstrap=0), {})}
    assert rows[("grounding.cnr", None)].value == pytest.approx(cnr)
    assert rows[("grounding.hit_rate", None)].value == 1.0 and rows[("grounding.label_hit_rate", "A")].value == 0.0
    assert rows[("grounding.cnr", None)].params["n_sentences"] == 1
