"""Reader-vs-reader agreement against brute force: records and box IoUs on hand-made readers (one who
drew nothing, identical, overlapping, disjoint and tied regions), rasterising exactly (and on a larger
frame), the cluster bootstrap against a per-resample loop, the VinDr-CXR parser's refusals, and the
real VinDr-CXR file on a seeded subset, recomputed by pixel loops that share no code with the module."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torchxrayvision
from hypothesis import given, settings
from hypothesis import strategies as st

from embedstore.analyses.readers import (
    ReaderRecord,
    agreement_from_boxes,
    box_iou_records,
    box_records,
    rasterise_boxes,
    reader_records,
    subset_images,
    summarise_agreement,
    vindr_boxes,
)
from embedstore.errors import InputError

Box = tuple[float, float, float, float]


# --- brute force ----------------------------------------------------------------------------------


def brute_point(pixels: list[tuple[int, int]]) -> tuple[int, int] | None:
    """Centroid pixel (exact) if drawn, else the nearest drawn pixel, ties to the lowest (row, column)."""
    if not pixels:
        return None
    cy = Fraction(sum(y for y, _ in pixels), len(pixels))
    cx = Fraction(sum(x for _, x in pixels), len(pixels))
    centre = (math.floor(cy + Fraction(1, 2)), math.floor(cx + Fraction(1, 2)))
    if centre in set(pixels):
        return centre
    return min(pixels, key=lambda p: ((p[0] - cy) ** 2 + (p[1] - cx) ** 2, p[0], p[1]))


def brute_records(image: str, label: str, masks: dict[str, np.ndarray]) -> list[tuple[str, float, bool, float]]:
    """(reader, IoU, hit, target share) by pixel loops."""
    if len(masks) < 2:
        return []
    readers = sorted(masks)
    height, width = masks[readers[0]].shape
    out = []
    for reader in readers:
        others = {(y, x) for other in readers if other != reader for y in range(height) for x in range(width)
                  if masks[other][y, x]}
        if not others:
            continue
        own = [(y, x) for y in range(height) for x in range(width) if masks[reader][y, x]]
        overlap = sum(1 for p in own if p in others)
        union = len(others) + len(own) - overlap
        point = brute_point(own)
        out.append((reader, overlap / union, point is not None and point in others, len(others) / (height * width)))
    return out


def brute_rasterise(boxes: list[Box], height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for y in range(height):
        for x in range(width):
            mask[y, x] = any(b[1] <= y + 0.5 < b[3] and b[0] <= x + 0.5 < b[2] for b in boxes)
    return mask


def brute_box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union > 0 else 0.0


def as_tuples(records: list[ReaderRecord]) -> list[tuple[str, float, bool, float]]:
    return [(r.reader, r.iou, r.hit, r.target_area) for r in records]


def assert_same(records: list[ReaderRecord], expected: list[tuple[str, float, bool, float]]) -> None:
    got = as_tuples(records)
    assert [g[0] for g in got] == [e[0] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g[1] == pytest.approx(e[1], abs=1e-12) and g[2] == e[2] and g[3] == pytest.approx(e[3], abs=1e-12)


# --- reader records on hand-made readers ----------------------------------------------------------


def test_three_readers_one_of_whom_drew_nothing() -> None:
    boxes: dict[str, list[Box]] = {"A": [(2, 2, 8, 6)], "B": [(2, 2, 8, 6)], "C": []}
    masks = rasterise_boxes(boxes)
    records = reader_records("img", "Nodule", masks)
    # A against B ∪ C = B: identical; C drew nothing: IoU 0 and a miss
    assert [(r.reader, r.iou, r.hit) for r in records] == [("A", 1.0, True), ("B", 1.0, True), ("C", 0.0, False)]
    assert all(r.image == "img" and r.label == "Nodule" for r in records)
    assert records[0].target_area == pytest.approx(24 / (6 * 8)) and records[0].target_pixels == 24
    assert_same(records, brute_records("img", "Nodule", masks))
    assert box_iou_records("img", "Nodule", boxes) == [1.0, 1.0]


def test_a_lone_boxer_has_no_reference_and_fewer_than_two_readers_give_nothing() -> None:
    boxes: dict[str, list[Box]] = {"B": [], "A": [(0, 0, 4, 4)], "C": []}
    records = reader_records("i", "L", rasterise_boxes(boxes))
    assert [(r.reader, r.iou, r.hit) for r in records] == [("B", 0.0, False), ("C", 0.0, False)]
    assert box_iou_records("i", "L", boxes) == [0.0]           # the others drew nothing
    assert reader_records("i", "L", rasterise_boxes({"A": [(0, 0, 4, 4)]})) == []
    assert reader_records("i", "L", {}) == []


def test_overlapping_disjoint_and_tied_regions() -> None:
    boxes: dict[str, list[Box]] = {
        "A": [(0, 0, 10, 10)],
        "B": [(5, 0, 15, 10)],                       # half of A: continuous IoU 1/3
        "C": [(20, 20, 24, 24), (0, 20, 4, 24)],     # disjoint from A and B, two boxes whose centroid falls between
    }
    masks = rasterise_boxes(boxes)
    records = reader_records("i", "L", masks)
    assert_same(records, brute_records("i", "L", masks))
    by_reader = {r.reader: r for r in records}
    # A against B ∪ C: overlap 50 pixels, union 100 + 100 + 32 − 50
    assert by_reader["A"].iou == pytest.approx(50 / 182)
    assert by_reader["C"].iou == 0.0 and not by_reader["C"].hit
    assert box_iou_records("i", "L", boxes) == pytest.approx([1 / 3, 1 / 3, 0.0, 0.0])


def test_box_iou_records_against_loops_with_ties_and_touching_edges() -> None:
    boxes: dict[str, list[Box]] = {
        "R2": [(0, 0, 2, 2), (10, 10, 12, 12)],
        "R1": [(2, 0, 4, 2), (0.5, 0.5, 2.5, 2.5)],   # touching R2's first box (IoU 0), overlapping it
        "R3": [(10, 10, 12, 12)],                     # identical to R2's second
    }
    expected = []
    for reader in sorted(boxes):
        others = [b for other, theirs in boxes.items() if other != reader for b in theirs]
        expected += [max((brute_box_iou(b, o) for o in others), default=0.0) for b in boxes[reader]]
    assert box_iou_records("i", "L", boxes) == pytest.approx(expected, abs=1e-15)
    assert box_iou_records("i", "L", boxes)[0] == 0.0 and box_iou_records("i", "L", boxes)[-1] == 1.0


@st.composite
def reader_boxes(draw: st.DrawFn) -> dict[str, list[Box]]:
    """Two to four readers, some with no box, boxes on a small frame with fractional edges."""
    coordinate = st.integers(0, 24).map(lambda v: v / 2)
    readers = draw(st.lists(st.sampled_from("ABCD"), min_size=2, max_size=4, unique=True))
    out: dict[str, list[Box]] = {}
    for reader in readers:
        boxes = []
        for _ in range(draw(st.integers(0, 3))):
            x0, y0 = draw(coordinate), draw(coordinate)
            boxes.append((x0, y0, x0 + draw(st.integers(1, 12)) / 2, y0 + draw(st.integers(1, 12)) / 2))
        out[reader] = boxes
    return out


@settings(max_examples=150, deadline=None)
@given(reader_boxes())
def test_records_match_pixel_loops_on_any_frame(boxes: dict[str, list[Box]]) -> None:
    masks = rasterise_boxes(boxes)
    height = math.ceil(max((b[3] for bs in boxes.values() for b in bs), default=0))
    width = math.ceil(max((b[2] for bs in boxes.values() for b in bs), default=0))
    for reader, mask in masks.items():
        assert mask.shape == (height, width)
        assert np.array_equal(mask, brute_rasterise(boxes[reader], height, width))
    records = reader_records("i", "L", masks)
    assert_same(records, brute_records("i", "L", masks))
    # the compressed grid gives the same records, target shares included
    assert box_records("i", "L", boxes) == records
    # a larger frame changes the shares but no IoU, hit or target size
    bigger = {r: np.pad(m, ((0, 7), (0, 3))) for r, m in masks.items()}
    wide = reader_records("i", "L", bigger)
    assert [(r.reader, r.iou, r.hit, r.target_pixels) for r in wide] == [
        (r.reader, r.iou, r.hit, r.target_pixels) for r in records]


def test_rasterise_uses_pixel_centres() -> None:
    masks = rasterise_boxes({"A": [(0.4, 1.6, 2.5, 2.4)], "B": []})
    # rows whose centre lies in [1.6, 2.4): row 1 (1.5) no, row 2 (2.5) no → empty; the frame is 3 × 3
    assert masks["A"].shape == (3, 3) and not masks["A"].any() and not masks["B"].any()
    masks = rasterise_boxes({"A": [(0.5, 1.5, 2.5, 2.6)]})
    assert masks["A"].tolist() == [[False, False, False], [True, True, False], [True, True, False]]
    assert rasterise_boxes({"A": [], "B": []})["A"].shape == (0, 0)
    with pytest.raises(ValueError):
        rasterise_boxes({"A": [(-1, 0, 2, 2)]})


# --- the cluster bootstrap ------------------------------------------------------------------------


def naive_summary(records: list[ReaderRecord], box_ious: dict[tuple[str, str], list[float]], label: str,
                  bootstrap: int, seed: int) -> dict[str, tuple[float, float, float]]:
    """Point and 95 % interval of each figure, one resample at a time: draw images (with the seeded
    generator, 200 resamples per draw as the module's weights are drawn), pool their records and boxes."""
    chosen = [r for r in records if label in ("all", r.label)]
    boxes = {k: v for k, v in box_ious.items() if label in ("all", k[1])}
    images = sorted({r.image for r in chosen} | {k[0] for k in boxes})
    n = len(images)
    rng = np.random.default_rng(seed)
    draws = np.concatenate([rng.integers(0, n, size=(min(200, bootstrap - s), n)) for s in range(0, bootstrap, 200)])
    figures: dict[str, list[float]] = {"miou": [], "hit_rate": [], "box_iou": []}
    for draw in draws:
        ious, hits, bvals = [], [], []
        for i in draw:
            ious += [r.iou for r in chosen if r.image == images[i]]
            hits += [float(r.hit) for r in chosen if r.image == images[i]]
            bvals += [v for k, vs in boxes.items() if k[0] == images[i] for v in vs]
        for name, values in (("miou", ious), ("hit_rate", hits), ("box_iou", bvals)):
            if values:
                figures[name].append(sum(values) / len(values))
    point = {"miou": np.mean([r.iou for r in chosen]), "hit_rate": np.mean([r.hit for r in chosen]),
             "box_iou": np.mean([v for vs in boxes.values() for v in vs])}
    return {name: (float(point[name]), *np.percentile(figures[name], [2.5, 97.5])) for name in figures}


def _synthetic() -> tuple[list[ReaderRecord], dict[tuple[str, str], list[float]]]:
    rng = np.random.default_rng(11)
    all_records: list[ReaderRecord] = []
    all_boxes: dict[tuple[str, str], list[float]] = {}
    for i in range(23):
        image = f"img{i:02d}"
        for label in ("Cardiomegaly", "Nodule"):
            if rng.random() < 0.3:
                continue
            boxes = {r: [(float(x), float(y), float(x + w), float(y + h))
                         for x, y, w, h in rng.integers(1, 9, size=(rng.integers(0, 3), 4))] for r in ("R1", "R2", "R3")}
            if not any(boxes.values()):
                continue
            all_records += box_records(image, label, boxes)
            all_boxes[(image, label)] = box_iou_records(image, label, boxes)
    return all_records, all_boxes


def test_summary_intervals_match_a_per_resample_loop() -> None:
    records, box_ious = _synthetic()
    assert any(r.iou == 0 for r in records) and any(r.hit for r in records)
    rows = summarise_agreement(records, box_ious, bootstrap=450, seed=5)
    assert [row["label"] for row in rows] == ["Cardiomegaly", "Nodule", "all"]
    for row in rows:
        expected = naive_summary(records, box_ious, row["label"], 450, 5)
        for name, (point, low, high) in expected.items():
            assert row[name] == pytest.approx(point, abs=1e-12)
            assert row[f"{name}_low"] == pytest.approx(low, abs=1e-12)
            assert row[f"{name}_high"] == pytest.approx(high, abs=1e-12)
        chosen = [r for r in records if row["label"] in ("all", r.label)]
        assert row["n_records"] == len(chosen)
        assert row["n_boxes"] == sum(len(v) for k, v in box_ious.items() if row["label"] in ("all", k[1]))
    assert rows[-1]["n_images"] == len({r.image for r in records} | {k[0] for k in box_ious})


def test_summary_without_boxes_or_bootstrap() -> None:
    records, _ = _synthetic()
    rows = summarise_agreement(records, None, bootstrap=0, seed=0)
    assert rows[-1]["box_iou"] is None and rows[-1]["n_boxes"] is None
    assert rows[-1]["miou_low"] is None and rows[-1]["miou"] == pytest.approx(np.mean([r.iou for r in records]))
    assert summarise_agreement([], None, bootstrap=10, seed=0) == [
        {"label": "all", "n_images": 0, "n_records": 0, "n_boxes": None,
         **{f"{n}{e}": None for n in ("miou", "hit_rate", "box_iou") for e in ("", "_low", "_high")}}]


# --- the VinDr-CXR parser -------------------------------------------------------------------------

HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n"


def test_vindr_boxes_reads_readers_and_boxes(tmp_path: Path) -> None:
    text = HEADER + ("a,No finding,14,R1,,,,\n"
                     "a,Nodule/Mass,8,R2,10.0,20.0,30.0,40.0\n"
                     "a,Nodule/Mass,8,R2,1,2,3,4\n"
                     "a,Cardiomegaly,3,R3,5,5,9,9\n"
                     "b,No finding,14,R4,,,,\n")
    for path in (tmp_path / "plain.csv", tmp_path / "zipped.csv.gz"):
        if path.suffix == ".gz":
            with gzip.open(path, "wt") as handle:
                handle.write(text)
        else:
            path.write_text(text)
        boxes, readers = vindr_boxes(path)
        assert readers == {"a": ("R1", "R2", "R3"), "b": ("R4",)}
        assert boxes == {("a", "Nodule/Mass"): {"R2": [(10.0, 20.0, 30.0, 40.0), (1.0, 2.0, 3.0, 4.0)]},
                         ("a", "Cardiomegaly"): {"R3": [(5.0, 5.0, 9.0, 9.0)]}}
        records, box_ious = agreement_from_boxes(boxes, readers)
        # every reader of image a takes part; R1 drew nothing for either finding
        assert [(r.label, r.reader, r.iou, r.hit) for r in records] == [
            ("Cardiomegaly", "R1", 0.0, False), ("Cardiomegaly", "R2", 0.0, False),
            ("Nodule/Mass", "R1", 0.0, False), ("Nodule/Mass", "R3", 0.0, False)]
        assert box_ious == {("a", "Cardiomegaly"): [0.0], ("a", "Nodule/Mass"): [0.0, 0.0]}
        assert agreement_from_boxes(boxes, readers, images={"b"}) == ([], {})


@pytest.mark.parametrize(("row", "problem"), [
    ("a,Nodule/Mass,8,R2,10,20,x,40", "not four numbers"),
    ("a,Nodule/Mass,8,R2,30,20,10,40", "x_min < x_max"),
    ("a,Nodule/Mass,8,R2,10,20,10,40", "x_min < x_max"),
    ("a,Nodule/Mass,8,R2,-1,20,10,40", "≥ 0"),
    ("a,Nodule/Mass,8,R2,,,,", "not four numbers"),
    ("a,No finding,14,R2,1,2,3,4", "has coordinates"),
    ("a,Nodule/Mass,8,,1,2,3,4", "empty"),
    ("a,Nodule/Mass,8,R2,1,2,3", "wrong number of fields"),
])
def test_vindr_boxes_names_the_bad_row(tmp_path: Path, row: str, problem: str) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text(HEADER + "a,No finding,14,R1,,,,\n" + row + "\n")
    with pytest.raises(InputError) as raised:
        vindr_boxes(path)
    assert f"{path}:3" in str(raised.value) and problem in str(raised.value)


def test_vindr_boxes_refuses_missing_files_and_columns(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot be read"):
        vindr_boxes(tmp_path / "absent.csv")
    path = tmp_path / "cols.csv"
    path.write_text("image_id,class_name,rad_id\na,No finding,R1\n")
    with pytest.raises(InputError, match="missing columns x_min"):
        vindr_boxes(path)


# --- the real VinDr-CXR file ----------------------------------------------------------------------


def _vindr_file() -> Path:
    """VinDr-CXR's real train boxes, as the dev dependency torchxrayvision ships them."""
    return Path(torchxrayvision.__file__).parent / "data" / "vinbigdata-train.csv.gz"


def _brute_group(boxes: dict[str, list[Box]]) -> tuple[list[tuple[str, float, bool]], list[float]]:
    """Records and box IoUs of one (image, finding) by numpy pixel tests on a frame around the boxes
    (shifted by whole pixels, which moves no pixel centre across an edge) and exact centroids."""
    every = [b for bs in boxes.values() for b in bs]
    top, left = math.floor(min(b[1] for b in every)) - 2, math.floor(min(b[0] for b in every)) - 2
    height = math.ceil(max(b[3] for b in every)) - top + 2
    width = math.ceil(max(b[2] for b in every)) - left + 2
    ys, xs = np.arange(height) + top + 0.5, np.arange(width) + left + 0.5
    masks = {}
    for reader, own in boxes.items():
        mask = np.zeros((height, width), dtype=bool)
        for x0, y0, x1, y1 in own:
            mask |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
        masks[reader] = mask
    records = []
    for reader in sorted(boxes):
        others = np.zeros((height, width), dtype=bool)
        for other in boxes:
            if other != reader:
                others |= masks[other]
        if not others.any():
            continue
        own_mask = masks[reader]
        value = int(np.count_nonzero(own_mask & others)) / int(np.count_nonzero(own_mask | others))
        hit = False
        py, px = np.nonzero(own_mask)
        if len(py):
            cy, cx = Fraction(int(py.sum()), len(py)), Fraction(int(px.sum()), len(px))
            point = (math.floor(cy + Fraction(1, 2)), math.floor(cx + Fraction(1, 2)))
            if not own_mask[point]:
                d = (py - float(cy)) ** 2 + (px - float(cx)) ** 2
                near = np.flatnonzero(d <= d.min() + 1e-6)
                point = min(((int(py[i]), int(px[i])) for i in near),
                            key=lambda p: ((p[0] - cy) ** 2 + (p[1] - cx) ** 2, p))
            hit = bool(others[point])
        records.append((reader, value, hit))
    ious = []
    for reader in sorted(boxes):
        theirs = [b for other, bs in boxes.items() if other != reader for b in bs]
        ious += [max((brute_box_iou(b, o) for o in theirs), default=0.0) for b in boxes[reader]]
    return records, ious


@pytest.mark.slow
def test_real_vindr_subset_matches_brute_force_and_pinned_figures() -> None:
    path = _vindr_file()
    # an independent reading of the file: readers per image, boxes per (image, finding, reader)
    readers: dict[str, set[str]] = {}
    groups: dict[tuple[str, str], dict[str, list[Box]]] = {}
    with gzip.open(path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            readers.setdefault(row["image_id"], set()).add(row["rad_id"])
            if row["class_name"] != "No finding":
                box = (float(row["x_min"]), float(row["y_min"]), float(row["x_max"]), float(row["y_max"]))
                groups.setdefault((row["image_id"], row["class_name"]), {}).setdefault(row["rad_id"], []).append(box)
    assert len(readers) == 15000 and all(len(r) == 3 for r in readers.values())
    ordered = sorted(readers)
    chosen = {ordered[i] for i in np.random.default_rng(0).choice(len(ordered), size=300, replace=False)}

    boxes, parsed_readers = vindr_boxes(path)
    assert subset_images(parsed_readers, 300, 0) == chosen
    records, box_ious = agreement_from_boxes(boxes, parsed_readers, chosen)

    brute_ious: list[float] = []
    brute: list[tuple[str, str, str, float, bool]] = []
    for (image, label) in sorted(k for k in groups if k[0] in chosen):
        group = {r: groups[(image, label)].get(r, []) for r in sorted(readers[image])}
        group_records, group_ious = _brute_group(group)
        brute += [(image, label, *record) for record in group_records]
        brute_ious += group_ious
        assert box_ious[(image, label)] == pytest.approx(group_ious, abs=1e-12)
    assert len(records) == len(brute) > 300
    for record, expected in zip(records, brute, strict=True):
        assert (record.image, record.label, record.reader, record.hit) == (*expected[:3], expected[4])
        assert record.iou == pytest.approx(expected[3], abs=1e-12)

    rows = {row["label"]: row for row in summarise_agreement(records, box_ious, bootstrap=0, seed=0)}
    overall = rows["all"]
    assert overall["miou"] == pytest.approx(np.mean([b[3] for b in brute]), abs=1e-12)
    assert overall["hit_rate"] == pytest.approx(np.mean([b[4] for b in brute]), abs=1e-12)
    assert overall["box_iou"] == pytest.approx(np.mean(brute_ious), abs=1e-12)
    cardio = [b[3] for b in brute if b[1] == "Cardiomegaly"]
    assert rows["Cardiomegaly"]["miou"] == pytest.approx(np.mean(cardio), abs=1e-12)
    # pinned: what this code gives on this subset
    assert (overall["n_images"], overall["n_records"], overall["n_boxes"]) == PINNED_COUNTS
    assert overall["miou"] == pytest.approx(PINNED["miou"], abs=1e-9)
    assert overall["hit_rate"] == pytest.approx(PINNED["hit_rate"], abs=1e-9)
    assert overall["box_iou"] == pytest.approx(PINNED["box_iou"], abs=1e-9)
    assert rows["Cardiomegaly"]["miou"] == pytest.approx(PINNED["cardiomegaly_miou"], abs=1e-9)


#: The seeded 300-image subset: images with a boxed finding, reader records, boxes.
PINNED_COUNTS = (84, 846, 740)
PINNED = {"miou": 0.324170492970547, "hit_rate": 0.5011820330969267, "box_iou": 0.4560753767027568,
          "cardiomegaly_miou": 0.6001030508746221}


@pytest.mark.slow
def test_bench_reproduces_the_published_human_ceiling(tmp_path: Path) -> None:
    """docs/figures/vindr-human-ceiling.json is what bench/human_ceiling.py gives on the installed file."""
    import json

    _vindr_file()
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("human_ceiling", root / "bench" / "human_ceiling.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    published = json.loads((root / "docs" / "figures" / "vindr-human-ceiling.json").read_text(encoding="utf-8"))
    report = bench.main(["--bootstrap", str(published["bootstrap"]), "--seed", str(published["seed"]),
                         "--out", str(tmp_path / "ceiling.json")])
    assert report["source"] == published["source"], "the box file changed: rerun the command in docs/human_ceiling.md"
    assert json.loads((tmp_path / "ceiling.json").read_text())["rows"] == published["rows"]
    assert report["rows_reader_drew"] == published["rows_reader_drew"]
    assert report["definitions"] == published["definitions"]
    overall = report["rows"][-1]
    assert overall["label"] == "all" and overall["n_images"] == 4394 and overall["n_records"] == 39555
