"""Reader-vs-reader agreement: the human ceiling a saliency map's localisation figures are read against.

Each reader of an image is held out in turn; the union of the other readers' regions for the same
finding is the reference. The reader's region scores its IoU with the reference (0 if the reader drew
nothing) and a hit when its `representative_point` lies inside the reference (a miss if the reader drew
nothing); a record exists only where the other readers drew something. A model's map is scored against
the same references, so its figures and these sit side by side. Box IoU compares boxes as continuous
rectangles: each box's best IoU with any box of another reader. Summaries resample images (a cluster
bootstrap: every record and box of a drawn image goes together).

Boxes are (x0, y0, x1, y1) in original pixels, x1 and y1 exclusive; pixel (y, x) is inside a box when
its centre (y + 0.5, x + 0.5) lies in [y0, y1) × [x0, x1), as `InputGeometry.box_mask` has it.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedstore.analyses.common import bootstrap_weights, interval
from embedstore.analyses.segmentation import nearest_pixel
from embedstore.errors import InputError

Box = tuple[float, float, float, float]

#: The VinDr-CXR class whose rows say "read, nothing drawn" (no coordinates).
NO_FINDING = "No finding"
#: Columns the VinDr-CXR box file must have.
VINDR_COLUMNS = ("image_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max")
#: At most this many bad rows are listed in an error.
MAX_LISTED = 20


@dataclass(frozen=True)
class ReaderRecord:
    """One reader's region for one (image, finding) against the union of the other readers' regions."""

    image: str
    label: str
    reader: str
    #: IoU of the reader's region with the others' union (0.0 if this reader drew nothing).
    iou: float
    #: Whether the reader's representative point lies inside the others' union (False if this reader drew nothing).
    hit: bool
    #: The others' union as a share of the frame (for size terciles).
    target_area: float
    #: The others' union in pixels (the frame of box files is the boxes' own, so a share means less there).
    target_pixels: int = 0


@dataclass(frozen=True)
class _Grid:
    """Cells of a coordinate-compressed frame: cell (i, j) covers rows [row_starts[i], + row_sizes[i])
    and columns [col_starts[j], + col_sizes[j]); a dense frame is the grid of unit cells."""

    row_starts: np.ndarray
    row_sizes: np.ndarray
    col_starts: np.ndarray
    col_sizes: np.ndarray

    @classmethod
    def unit(cls, shape: tuple[int, ...]) -> _Grid:
        height, width = shape
        return cls(np.arange(height, dtype=np.int64), np.ones(height, dtype=np.int64),
                   np.arange(width, dtype=np.int64), np.ones(width, dtype=np.int64))

    @property
    def areas(self) -> np.ndarray:
        return np.outer(self.row_sizes, self.col_sizes)


def _index_sums(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Per cell, the sum of the pixel indices it spans."""
    return sizes * starts + sizes * (sizes - 1) // 2


def _nearest_ties_low(total: int, count: int) -> int:
    """The integer nearest total / count, halves to the lower one: ceil(total / count − 1/2)."""
    return -((count - 2 * total) // (2 * count))


def _grid_point(region: np.ndarray, grid: _Grid) -> tuple[int, int] | None:
    """`representative_point` of a region given on `grid` cells, in pixels: the same point the dense
    mask gives, found from per-cell sums and one candidate pixel per cell."""
    areas = grid.areas
    if not region.any():
        return None
    count = int(areas[region].sum())
    sum_y = int((_index_sums(grid.row_starts, grid.row_sizes)[:, None] * grid.col_sizes[None, :])[region].sum())
    sum_x = int((grid.row_sizes[:, None] * _index_sums(grid.col_starts, grid.col_sizes)[None, :])[region].sum())
    cy, cx = (2 * sum_y + count) // (2 * count), (2 * sum_x + count) // (2 * count)
    i = int(np.searchsorted(grid.row_starts, cy, side="right")) - 1
    j = int(np.searchsorted(grid.col_starts, cx, side="right")) - 1
    if region[i, j]:
        return cy, cx
    rows, cols = np.nonzero(region)
    # within one cell the distance separates into rows and columns: the nearest row (halves to the
    # lower) and nearest column make its best pixel, first in row-major order among its ties
    ys = np.clip(_nearest_ties_low(sum_y, count), grid.row_starts[rows], grid.row_starts[rows] + grid.row_sizes[rows] - 1)
    xs = np.clip(_nearest_ties_low(sum_x, count), grid.col_starts[cols], grid.col_starts[cols] + grid.col_sizes[cols] - 1)
    return nearest_pixel(ys, xs, sum_y, sum_x, count)


def _inside(point: tuple[int, int], region: np.ndarray, grid: _Grid) -> bool:
    i = int(np.searchsorted(grid.row_starts, point[0], side="right")) - 1
    j = int(np.searchsorted(grid.col_starts, point[1], side="right")) - 1
    return bool(region[i, j])


def _records(image: str, label: str, masks: Mapping[str, np.ndarray], grid: _Grid) -> list[ReaderRecord]:
    if len(masks) < 2:
        return []
    readers = sorted(masks)
    regions = {reader: np.asarray(masks[reader], dtype=bool) for reader in readers}
    shapes = {region.shape for region in regions.values()}
    if len(shapes) != 1:
        raise ValueError(f"{image} {label}: readers' masks differ in shape: {sorted(shapes)}")
    areas = grid.areas
    frame = int(areas.sum())
    records = []
    for reader in readers:
        others = np.zeros(areas.shape, dtype=bool)
        for other in readers:
            if other != reader:
                others |= regions[other]
        target = int(areas[others].sum())
        if target == 0:
            continue
        own = regions[reader]
        overlap = int(areas[own & others].sum())
        union = int(areas[own | others].sum())
        point = _grid_point(own, grid)
        hit = point is not None and _inside(point, others, grid)
        records.append(ReaderRecord(image, label, reader, overlap / union, hit, target / frame, target))
    return records


def reader_records(image: str, label: str, masks: Mapping[str, np.ndarray]) -> list[ReaderRecord]:
    """One record per reader of the image (sorted) whose fellow readers drew something for `label`:
    the reader's mask against the union of the others' masks. `masks` holds every reader who read the
    image, all-False where they drew nothing; fewer than two readers give no records."""
    if len(masks) < 2:
        return []
    shape = np.asarray(next(iter(masks.values()))).shape
    if len(shape) != 2:
        raise ValueError(f"{image} {label}: a mask is two-dimensional, not {shape}")
    return _records(image, label, masks, _Grid.unit(shape))


def _check_boxes(boxes_by_reader: Mapping[str, Sequence[Box]]) -> None:
    for reader, boxes in boxes_by_reader.items():
        for box in boxes:
            x0, y0, x1, y1 = box
            if not all(math.isfinite(v) for v in box) or min(box) < 0 or x1 < x0 or y1 < y0:
                raise ValueError(f"reader {reader}: box {box} is not (x0, y0, x1, y1) with 0 ≤ x0 ≤ x1 and 0 ≤ y0 ≤ y1")


def _frame(boxes_by_reader: Mapping[str, Sequence[Box]]) -> tuple[int, int]:
    """The smallest integer frame [0, ceil(max y1)) × [0, ceil(max x1)) holding every box."""
    _check_boxes(boxes_by_reader)
    all_boxes = [box for boxes in boxes_by_reader.values() for box in boxes]
    if not all_boxes:
        return 0, 0
    return math.ceil(max(b[3] for b in all_boxes)), math.ceil(max(b[2] for b in all_boxes))


def rasterise_boxes(boxes_by_reader: Mapping[str, Sequence[Box]]) -> dict[str, np.ndarray]:
    """Each reader's boxes of one (image, finding) as one mask on the smallest frame from the origin
    holding every box (pixel-centre convention); a reader with no boxes gets an all-False mask. IoU and
    hits do not depend on the frame as long as every box fits."""
    height, width = _frame(boxes_by_reader)
    ys = np.arange(height) + 0.5
    xs = np.arange(width) + 0.5
    masks = {}
    for reader, boxes in boxes_by_reader.items():
        mask = np.zeros((height, width), dtype=bool)
        for x0, y0, x1, y1 in boxes:
            mask |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
        masks[reader] = mask
    return masks


def _pixel_span(low: float, high: float) -> tuple[int, int]:
    """The pixel indices [a, b) whose centres i + 0.5 lie in [low, high)."""
    return math.ceil(low - 0.5), max(math.ceil(low - 0.5), math.ceil(high - 0.5))


def _compressed(boxes_by_reader: Mapping[str, Sequence[Box]]) -> tuple[dict[str, np.ndarray], _Grid]:
    """The masks `rasterise_boxes` draws, on a grid whose cells are cut at the boxes' pixel edges (a few
    cells instead of millions of pixels; every figure is a sum over cells weighted by their area)."""
    height, width = _frame(boxes_by_reader)
    spans = {reader: [(*_pixel_span(y0, y1), *_pixel_span(x0, x1)) for x0, y0, x1, y1 in boxes]
             for reader, boxes in boxes_by_reader.items()}
    row_edges = np.unique(np.array([0, height] + [e for s in spans.values() for b in s for e in b[:2]], dtype=np.int64))
    col_edges = np.unique(np.array([0, width] + [e for s in spans.values() for b in s for e in b[2:]], dtype=np.int64))
    grid = _Grid(row_edges[:-1], np.diff(row_edges), col_edges[:-1], np.diff(col_edges))
    masks = {}
    for reader, boxes in spans.items():
        mask = np.zeros((len(grid.row_starts), len(grid.col_starts)), dtype=bool)
        for r0, r1, c0, c1 in boxes:
            i0, i1 = np.searchsorted(row_edges, [r0, r1])
            j0, j1 = np.searchsorted(col_edges, [c0, c1])
            mask[i0:i1, j0:j1] = True
        masks[reader] = mask
    return masks, grid


def box_records(image: str, label: str, boxes_by_reader: Mapping[str, Sequence[Box]]) -> list[ReaderRecord]:
    """`reader_records` of `rasterise_boxes` (the same records), computed on a compressed grid."""
    if len(boxes_by_reader) < 2:
        return []
    masks, grid = _compressed(boxes_by_reader)
    return _records(image, label, masks, grid)


def box_iou(a: Box, b: Box) -> float:
    """IoU of two boxes as continuous rectangles (0.0 where both have no area)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    overlap = max(width, 0.0) * max(height, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / union if union > 0 else 0.0


def box_iou_records(image: str, label: str, boxes: Mapping[str, Sequence[Box]]) -> list[float]:
    """For every box of every reader (readers sorted, boxes in order): its best IoU with any box of
    another reader, 0.0 if the others drew none."""
    values = []
    for reader in sorted(boxes):
        others = [box for other, theirs in boxes.items() if other != reader for box in theirs]
        for box in boxes[reader]:
            values.append(max((box_iou(box, other) for other in others), default=0.0))
    return values


def vindr_boxes(path: Path) -> tuple[dict[tuple[str, str], dict[str, list[Box]]], dict[str, tuple[str, ...]]]:
    """VinDr-CXR's box file (gzip or plain CSV, columns image_id, class_name, rad_id, x_min, y_min, x_max,
    y_max): the boxes of every (image, finding) by reader, and every image's readers (sorted): each
    rad_id with a row for the image, a "No finding" row (no coordinates) meaning read, nothing drawn."""
    path = Path(path)
    try:
        with path.open("rb") as probe:
            zipped = probe.read(2) == b"\x1f\x8b"
        handle = gzip.open(path, "rt", newline="", encoding="utf-8") if zipped else path.open(newline="", encoding="utf-8")
    except OSError as error:
        raise InputError(f"{path}: cannot be read ({error.strerror or error})") from None
    boxes: dict[tuple[str, str], dict[str, list[Box]]] = {}
    readers: dict[str, set[str]] = {}
    problems: list[str] = []
    try:
        with handle:
            rows = csv.DictReader(handle)
            missing = [c for c in VINDR_COLUMNS if c not in (rows.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing columns {', '.join(missing)} (a VinDr-CXR box file has "
                                 f"{', '.join(VINDR_COLUMNS)})")
            for line, row in enumerate(rows, start=2):
                problem = _vindr_row(row, boxes, readers)
                if problem:
                    problems.append(f"{path}:{line}: {problem}")
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot be read as CSV ({error})") from None
    if problems:
        listed = problems[:MAX_LISTED] + ([f"… and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else [])
        count = f"{len(problems)} bad row{'s' if len(problems) > 1 else ''}"
        raise InputError(f"{problems[0]} ({count})", details=listed)
    return boxes, {image: tuple(sorted(names)) for image, names in readers.items()}


def _vindr_row(row: dict[str, str | None], boxes: dict[tuple[str, str], dict[str, list[Box]]],
               readers: dict[str, set[str]]) -> str | None:
    """Add one row; the problem with it, if any."""
    if None in row or any(row.get(c) is None for c in VINDR_COLUMNS):
        return "wrong number of fields"
    image, label, reader = (str(row[c]).strip() for c in ("image_id", "class_name", "rad_id"))
    if not image or not label or not reader:
        return "empty image_id, class_name or rad_id"
    raw = [str(row[c]).strip() for c in ("x_min", "y_min", "x_max", "y_max")]
    if label == NO_FINDING:
        if any(raw):
            return f"a {NO_FINDING!r} row has coordinates"
        readers.setdefault(image, set()).add(reader)
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in raw)
    except ValueError:
        return f"{label}: coordinates {raw} are not four numbers"
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or min(x0, y0) < 0 or x1 <= x0 or y1 <= y0:
        return f"{label}: box {raw} is not x_min < x_max, y_min < y_max, all ≥ 0"
    readers.setdefault(image, set()).add(reader)
    boxes.setdefault((image, label), {}).setdefault(reader, []).append((x0, y0, x1, y1))
    return None


def subset_images(images: Collection[str], n: int, seed: int) -> set[str]:
    """`n` images drawn without replacement by numpy's default_rng(seed) from the sorted ids."""
    ordered = sorted(images)
    if n >= len(ordered):
        return set(ordered)
    chosen = np.random.default_rng(seed).choice(len(ordered), size=n, replace=False)
    return {ordered[i] for i in chosen}


def agreement_from_boxes(boxes: Mapping[tuple[str, str], Mapping[str, Sequence[Box]]],
                         readers: Mapping[str, Sequence[str]], images: Collection[str] | None = None,
                         ) -> tuple[list[ReaderRecord], dict[tuple[str, str], list[float]]]:
    """Reader records and box IoUs of every (image, finding) that a reader boxed (those of `images`
    only, if given): every reader of the image takes part, with no boxes where they drew nothing."""
    wanted = None if images is None else set(images)
    records: list[ReaderRecord] = []
    box_ious: dict[tuple[str, str], list[float]] = {}
    for image, label in sorted(boxes):
        if wanted is not None and image not in wanted:
            continue
        drawn = boxes[(image, label)]
        by_reader = {reader: list(drawn.get(reader, ())) for reader in sorted(set(readers.get(image, ())) | set(drawn))}
        records.extend(box_records(image, label, by_reader))
        box_ious[(image, label)] = box_iou_records(image, label, by_reader)
    return records, box_ious


#: The figures `summarise_agreement` reports, each with `_low` and `_high` interval ends.
FIGURES = ("miou", "hit_rate", "box_iou")
#: The label of the row over every finding.
OVERALL = "all"


def summarise_agreement(records: Sequence[ReaderRecord], box_ious: Mapping[tuple[str, str], Sequence[float]] | None,
                        bootstrap: int, seed: int) -> list[dict]:
    """Per finding (sorted) and over all findings (label "all", last): images, records and boxes, mIoU,
    hit rate and mean box IoU, each with a 95 % percentile bootstrap interval that resamples images
    (every record and box of a drawn image goes together), seeded: numpy's default_rng(seed), the same
    resamples of a group's images (sorted) in every call. Undefined figures are None."""
    labels = sorted({r.label for r in records} | {label for _, label in (box_ious or {})})
    rows = []
    for label in [*labels, OVERALL]:
        chosen = [r for r in records if label in (OVERALL, r.label)]
        boxes = {key: values for key, values in (box_ious or {}).items() if label in (OVERALL, key[1])}
        images = sorted({r.image for r in chosen} | {image for image, _ in boxes})
        position = {image: i for i, image in enumerate(images)}
        n = len(images)
        at = np.array([position[r.image] for r in chosen], dtype=np.int64)
        counts = np.bincount(at, minlength=n).astype(np.float64)
        # (sum, count) of each figure per image: a resample's mean is a ratio of weighted sums
        per_image: dict[str, tuple[np.ndarray, np.ndarray]] = {
            "miou": (np.bincount(at, [r.iou for r in chosen], n), counts),
            "hit_rate": (np.bincount(at, [float(r.hit) for r in chosen], n), counts),
        }
        if box_ious is not None:
            box_sums, box_counts = np.zeros(n), np.zeros(n)
            for (image, _), values in boxes.items():
                box_sums[position[image]] += float(np.sum(values, dtype=np.float64))
                box_counts[position[image]] += len(values)
            per_image["box_iou"] = (box_sums, box_counts)
        row: dict[str, object] = {"label": label, "n_images": n, "n_records": len(chosen),
                                  "n_boxes": int(sum(len(v) for v in boxes.values())) if box_ious is not None else None}
        resampled: dict[str, list[np.ndarray]] = {name: [] for name in per_image}
        if bootstrap > 0 and n > 0:
            for weights in bootstrap_weights(n, bootstrap, seed):
                for name, (sums, sizes) in per_image.items():
                    totals = weights @ sizes
                    with np.errstate(invalid="ignore", divide="ignore"):
                        resampled[name].append(np.where(totals > 0, (weights @ sums) / totals, np.nan))
        for name in FIGURES:
            value = low = high = None
            if name in per_image and per_image[name][1].sum() > 0:
                sums, sizes = per_image[name]
                value = float(sums.sum() / sizes.sum())
                if resampled[name]:
                    low, high, _ = interval(np.concatenate(resampled[name]))
            row |= {name: value, f"{name}_low": low, f"{name}_high": high}
        rows.append(row)
    return rows
