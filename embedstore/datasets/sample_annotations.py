"""The expert-annotation files each dataset family publishes, written from the synthetic benchmark's
ground truth (`embedstore data sample --layout`): COCO, RSNA Pneumonia and SIIM-ACR files for the
IU-Xray layout, NIH's `BBox_List_2017.csv`, VinDr-CXR's per-reader boxes, CheXlocalize's masks and
polygons, and MS-CXR's phrase-grounded boxes.

The films' painters give a mask per finding; a worker process keeps only a `DrawnRegion` of it (the
tight box and the COCO run-length code), so that thousands of films come back cheaply. Every
coordinate is in the written image's own pixels. Anything random here (reader jitter, phrasings)
comes from a generator the caller seeds for that purpose alone, so the files a layout wrote before
keep their bytes.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

#: CheXpert findings' names in CheXlocalize where they differ.
CHEXLOCALIZE_NAMES: dict[str, str] = {"Lung Opacity": "Airspace Opacity"}
#: The ten pathologies CheXlocalize segments, in its order.
CHEXLOCALIZE_PATHOLOGIES: tuple[str, ...] = (
    "Airspace Opacity", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Lung Lesion", "Pleural Effusion", "Pneumothorax", "Support Devices",
)
#: NIH's eight box classes: the label-set name each is filed under in BBox_List_2017.csv.
NIH_BOX_CLASSES: dict[str, str] = {
    "Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Effusion", "Infiltration": "Infiltrate",
    "Mass": "Mass", "Nodule": "Nodule", "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax",
}
NIH_BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
#: MS-CXR's eight categories (CheXpert names).
MS_CXR_CATEGORIES: tuple[str, ...] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity",
                                      "Pleural Effusion", "Pneumonia", "Pneumothorax")
MS_CXR_COLUMNS: tuple[str, ...] = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
                                   "image_width", "image_height", "split")
#: A box whose centre lies above this fraction of the film's height is in the upper zone (the
#: synthetic lungs' vertical centre).
ZONE_SPLIT = 0.46
VINDR_COLUMNS: tuple[str, ...] = ("image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max")
#: VinDr-CXR's global labels (diagnoses of the whole image, never boxed).
VINDR_GLOBAL: frozenset[str] = frozenset({"COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases",
                                          "No finding"})
VINDR_NORMAL = "No finding"
#: Reader disagreement: each box edge moves by N(0, EDGE_SD × box side); a reader draws the box
#: LARGER_SCALE times as large around its centre with P_LARGER, and splits a finding into its left
#: and right halves with P_SPLIT.
EDGE_SD, P_LARGER, LARGER_SCALE, P_SPLIT = 0.1, 0.15, 1.3, 0.1
#: The synthetic lungs (normalised centre x, centre y, half width, half height), where a reader's
#: box for a finding with nothing drawn is placed.
NOMINAL_LUNGS: tuple[tuple[float, float, float, float], ...] = ((0.31, 0.46, 0.135, 0.27), (0.69, 0.46, 0.135, 0.27))


# ---------------------------------------------------------------------------------------------
# Regions: what a worker returns of each finding's mask
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DrawnRegion:
    """One finding drawn on a film: its CheXpert name, tight box (x0, y0, x1, y1; x1 and y1
    exclusive), pixel count, the mask's shape and its COCO compressed run-length code."""

    finding: str
    box: tuple[int, int, int, int]
    area: int
    shape: tuple[int, int]
    counts: str

    @property
    def rle(self) -> dict[str, object]:
        """The COCO RLE dict (`size` [h, w], `counts` as text)."""
        return {"size": list(self.shape), "counts": self.counts}

    def mask(self) -> np.ndarray:
        """The bool mask back from the run-length code."""
        from pycocotools import mask as coco_mask

        with warnings.catch_warnings():  # pycocotools' array wrapper predates numpy 2's copy keyword
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
            return np.asarray(coco_mask.decode(self.rle), dtype=bool)


def encode_rle(mask: np.ndarray) -> str:
    """COCO's compressed run-length code of a 2-D mask, as text."""
    from pycocotools import mask as coco_mask

    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return str(encoded["counts"].decode("ascii"))


def regions_of(masks: Mapping[str, np.ndarray]) -> tuple[DrawnRegion, ...]:
    """A DrawnRegion per finding whose mask is not empty, in the order given."""
    regions = []
    for finding, mask in masks.items():
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        regions.append(DrawnRegion(finding, box, int(len(xs)), (int(mask.shape[0]), int(mask.shape[1])), encode_rle(mask)))
    return tuple(regions)


@dataclass(frozen=True)
class AnnotatedImage:
    """One film as an annotation file names it, its side in pixels and the regions drawn on it."""

    name: str
    size: int
    regions: tuple[DrawnRegion, ...]

    def region(self, finding: str) -> DrawnRegion | None:
        return next((r for r in self.regions if r.finding == finding), None)


def _number(value: float) -> str:
    """A coordinate as the releases write them: a float (`12.0`, `12.5`)."""
    return repr(float(value))


def _write_rows(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# IU-Xray: COCO, RSNA Pneumonia, SIIM-ACR
# ---------------------------------------------------------------------------------------------

def write_coco(path: Path, images: Sequence[AnnotatedImage], categories: Sequence[str]) -> None:
    """COCO instances: an image entry per film (`file_name` its dataset file name), a category per
    finding (ids from 1 in `categories` order), an annotation per region with its box [x, y, w, h],
    area and RLE segmentation."""
    category_id = {name: position + 1 for position, name in enumerate(categories)}
    annotations: list[dict[str, object]] = []
    for image_id, image in enumerate(images, start=1):
        for region in image.regions:
            x0, y0, x1, y1 = region.box
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_id[region.finding],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": region.area, "iscrowd": 0, "segmentation": region.rle,
            })
    _write_json(path, {
        "images": [{"id": i, "file_name": image.name, "width": image.size, "height": image.size}
                   for i, image in enumerate(images, start=1)],
        "categories": [{"id": category_id[name], "name": name} for name in categories],
        "annotations": annotations,
    })


def write_rsna(path: Path, images: Sequence[AnnotatedImage]) -> None:
    """RSNA Pneumonia's `stage_2_train_labels.csv`: a Target=1 row per Pneumonia box, one Target=0 row
    with no box for every other film (`name` is the patientId)."""
    rows: list[list[object]] = []
    for image in images:
        boxes = [r.box for r in image.regions if r.finding == "Pneumonia"]
        for x0, y0, x1, y1 in boxes:
            rows.append([image.name, _number(x0), _number(y0), _number(x1 - x0), _number(y1 - y0), 1])
        if not boxes:
            rows.append([image.name, "", "", "", "", 0])
    _write_rows(path, ["patientId", "x", "y", "width", "height", "Target"], rows)


def siim_rle(mask: np.ndarray) -> str:
    """SIIM-ACR's relative run-length code: the mask read column by column, each run of 1s as (offset,
    length) where the offset counts from the end of the previous run (the first from 0); written with
    a leading space, ` -1` for an empty mask."""
    flat = np.concatenate([[0], mask.T.flatten().astype(np.int8), [0]])
    changes = np.flatnonzero(np.diff(flat))
    starts, ends = changes[0::2], changes[1::2]
    if len(starts) == 0:
        return " -1"
    offsets = starts - np.concatenate([[0], ends[:-1]])
    return "".join(f" {int(o)} {int(n)}" for o, n in zip(offsets, ends - starts, strict=True))


def write_siim(path: Path, images: Sequence[AnnotatedImage]) -> None:
    """SIIM-ACR Pneumothorax's `train-rle.csv` (header `ImageId, EncodedPixels`): one row per film,
    its pneumothorax mask in `siim_rle` code (`name` is the ImageId)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write("ImageId, EncodedPixels\n")
        for image in images:
            region = image.region("Pneumothorax")
            handle.write(f"{image.name},{siim_rle(region.mask()) if region else ' -1'}\n")


# ---------------------------------------------------------------------------------------------
# NIH ChestX-ray14
# ---------------------------------------------------------------------------------------------

def write_nih_bbox(path: Path, images: Sequence[tuple[AnnotatedImage, Mapping[str, str]]]) -> None:
    """NIH's `BBox_List_2017.csv`: a box per region whose NIH label (each film's {CheXpert finding:
    NIH label}) is one of the eight box classes, filed under that class; films without one are left out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(NIH_BBOX_HEADER + "\n")
        for image, labels in images:
            for region in image.regions:
                box_class = NIH_BOX_CLASSES.get(labels.get(region.finding, ""))
                if box_class is None:
                    continue
                x0, y0, x1, y1 = region.box
                handle.write(f"{image.name},{box_class},{_number(x0)},{_number(y0)},{_number(x1 - x0)},"
                             f"{_number(y1 - y0)},,,\n")


# ---------------------------------------------------------------------------------------------
# VinDr-CXR: three readers' boxes
# ---------------------------------------------------------------------------------------------

def _float_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    return float(box[0]), float(box[1]), float(box[2]), float(box[3])


def _clip_box(box: Sequence[float], size: int) -> tuple[float, float, float, float]:
    """A box inside the image with x_min < x_max and y_min < y_max (one pixel at least), to 0.1 px."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, y0 = min(max(x0, 0.0), size - 1.0), min(max(y0, 0.0), size - 1.0)
    x1, y1 = min(max(x1, x0 + 1.0), float(size)), min(max(y1, y0 + 1.0), float(size))
    return round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)


def _reader_box(box: tuple[float, float, float, float], size: int,
                rng: np.random.Generator) -> tuple[float, float, float, float]:
    """One reader's box around a true one: now and then drawn larger, every edge moved a little."""
    x0, y0, x1, y1 = box
    larger = rng.random() < P_LARGER
    noise = rng.normal(0.0, EDGE_SD, size=4)
    if larger:
        cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * LARGER_SCALE / 2, (y1 - y0) * LARGER_SCALE / 2
        x0, y0, x1, y1 = cx - half_w, cy - half_h, cx + half_w, cy + half_h
    w, h = x1 - x0, y1 - y0
    return _clip_box((x0 + noise[0] * w, y0 + noise[1] * h, x1 + noise[2] * w, y1 + noise[3] * h), size)


def _halves(region: DrawnRegion) -> list[tuple[float, float, float, float]]:
    """The tight boxes of a region's left and right halves (one box if a half is empty)."""
    x0, _, x1, _ = region.box
    middle = (x0 + x1) // 2
    mask = region.mask()
    boxes = []
    for part, offset in ((mask[:, :middle], 0), (mask[:, middle:], middle)):
        ys, xs = np.nonzero(part)
        if len(xs):
            boxes.append((float(xs.min() + offset), float(ys.min()), float(xs.max() + offset + 1), float(ys.max() + 1)))
    return boxes if len(boxes) == 2 else [_float_box(region.box)]


def _false_box(size: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A plausible box for a finding with nothing drawn: somewhere in one of the lungs."""
    cx, cy, rx, ry = NOMINAL_LUNGS[int(rng.integers(2))]
    angle, radius = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1)) * 0.7
    x, y = (cx + radius * rx * np.cos(angle)) * size, (cy + radius * ry * np.sin(angle)) * size
    w, h = rng.uniform(0.08, 0.18) * size, rng.uniform(0.08, 0.18) * size
    return _clip_box((x - w / 2, y - h / 2, x + w / 2, y + h / 2), size)


def vindr_reader_rows(image: AnnotatedImage, readers: Sequence[tuple[str, Sequence[str]]],
                      finding_of: Mapping[str, str], rng: np.random.Generator) -> list[list[object]]:
    """The rows of `annotations_*.csv` for one image: each reader (rad_id, the labels they marked, in
    label-set order) boxes each local label marked: around the drawn finding it stands for
    (`finding_of`: VinDr label → CheXpert finding) with that reader's disagreement, or, where nothing
    is drawn (a false finding), somewhere in a lung. A reader who boxes nothing gets one `No finding`
    row with empty coordinates."""
    rows: list[list[object]] = []
    for rad_id, marked in readers:
        boxes: list[tuple[str, tuple[float, float, float, float]]] = []
        for label in marked:
            if label in VINDR_GLOBAL:
                continue
            finding = finding_of.get(label)
            region = image.region(finding) if finding else None
            if region is None:
                boxes.append((label, _false_box(image.size, rng)))
                continue
            truths = _halves(region) if rng.random() < P_SPLIT else [_float_box(region.box)]
            boxes.extend((label, _reader_box(truth, image.size, rng)) for truth in truths)
        if not boxes:
            rows.append([image.name, rad_id, VINDR_NORMAL, "", "", "", ""])
        rows.extend([image.name, rad_id, label, *box] for label, box in boxes)
    return rows


def write_vindr(path: Path, rows: Sequence[Sequence[object]]) -> None:
    """VinDr-CXR's `annotations_train.csv` / `annotations_test.csv` (PhysioNet): rows of `vindr_reader_rows`."""
    _write_rows(path, VINDR_COLUMNS, rows)


# ---------------------------------------------------------------------------------------------
# CheXlocalize
# ---------------------------------------------------------------------------------------------

def chexlocalize_id(relative_path: str) -> str:
    """CheXlocalize's cxr_id of an image: the path's last three parts joined by `_`, suffix dropped
    (`valid/patient64622/study1/view1_frontal.jpg` → `patient64622_study1_view1_frontal`)."""
    parts = Path(relative_path).with_suffix("").parts[-3:]
    return "_".join(parts)


def polygons_of(mask: np.ndarray) -> list[list[list[float]]]:
    """The outlines of a mask as CheXlocalize's polygons: [[x, y], …] per contour through the centres
    of the region's edge pixels (a contour at level 0.99, rounded to whole pixels), since CheXlocalize
    fills and outlines a polygon with PIL, whose pixel centres lie at whole coordinates — a contour
    between pixels (level 0.5) would grow the region by its outline. The mask is padded by a pixel so
    that contours at the border close."""
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.float64), 1)
    polygons = []
    for contour in find_contours(padded, 0.99):
        points = [[float(round(col)) - 1.0, float(round(row)) - 1.0] for row, col in contour]
        kept = [p for k, p in enumerate(points) if k == 0 or p != points[k - 1]]
        polygons.append(kept + [kept[0]] * (3 - len(kept)))   # a one- or two-pixel region: three points still
    return polygons


def write_chexlocalize(folder: Path, split: str, images: Sequence[AnnotatedImage]) -> None:
    """CheXlocalize's `gt_segmentations_<split>.json` ({cxr_id: {pathology: RLE}}, all ten pathologies,
    an empty mask where absent) and `gt_annotations_<split>.json` ({cxr_id: {"img_size": [h, w],
    pathology: polygons}}, positive pathologies only). `name` is the cxr_id."""
    segmentations: dict[str, dict[str, object]] = {}
    annotations: dict[str, dict[str, object]] = {}
    empty: dict[int, str] = {}
    for image in images:
        if image.size not in empty:
            empty[image.size] = encode_rle(np.zeros((image.size, image.size), dtype=bool))
        drawn = {CHEXLOCALIZE_NAMES.get(r.finding, r.finding): r for r in image.regions}
        segmentations[image.name] = {
            name: drawn[name].rle if name in drawn else {"size": [image.size, image.size], "counts": empty[image.size]}
            for name in CHEXLOCALIZE_PATHOLOGIES}
        outlines: dict[str, object] = {"img_size": [image.size, image.size]}
        for name in CHEXLOCALIZE_PATHOLOGIES:
            if name in drawn:
                outlines[name] = polygons_of(drawn[name].mask())
        annotations[image.name] = outlines
    _write_json(folder / f"gt_segmentations_{split}.json", segmentations)
    _write_json(folder / f"gt_annotations_{split}.json", annotations)


# ---------------------------------------------------------------------------------------------
# MS-CXR
# ---------------------------------------------------------------------------------------------

@cache
def ms_cxr_phrases() -> dict[str, dict[str, list[str]]]:
    """The phrasings of each MS-CXR category by zone (`ms_cxr_phrases.json`; `{side}` is the
    patient's side)."""
    data = json.loads(resources.files("embedstore.datasets").joinpath("ms_cxr_phrases.json").read_text(encoding="utf-8"))
    phrases: dict[str, dict[str, list[str]]] = data["phrases"]
    return phrases


def box_side(box: Sequence[float], size: int) -> str:
    """The patient's side of a box on a frontal film: the image's left half is the patient's right."""
    return "right" if (box[0] + box[2]) / 2 < size / 2 else "left"


def box_zone(box: Sequence[float], size: int) -> str:
    """`upper` when the box's centre is above ZONE_SPLIT of the film's height, else `lower`."""
    return "upper" if (box[1] + box[3]) / 2 < ZONE_SPLIT * size else "lower"


def ms_cxr_phrase(finding: str, box: Sequence[float], size: int, rng: np.random.Generator) -> str:
    """A short radiology phrase for one box: one of its finding's phrasings for the box's zone (seeded),
    naming the patient's side."""
    options = ms_cxr_phrases()[finding][box_zone(box, size)]
    return options[int(rng.integers(len(options)))].format(side=box_side(box, size))


def ms_cxr_rows(image: AnnotatedImage, path: str, split: str, rng: np.random.Generator) -> list[list[object]]:
    """The rows of `MS_CXR_Local_Alignment_v1.0.0.csv` for one film: a box per region of an MS-CXR
    category, with its phrase (`image.name` is the dicom_id, `path` the image's relative path)."""
    rows: list[list[object]] = []
    for region in image.regions:
        if region.finding not in MS_CXR_CATEGORIES:
            continue
        x0, y0, x1, y1 = region.box
        rows.append([image.name, region.finding, ms_cxr_phrase(region.finding, region.box, image.size, rng), path,
                     x0, y0, x1 - x0, y1 - y0, image.size, image.size, split])
    return rows


def write_ms_cxr(path: Path, rows: Sequence[Sequence[object]]) -> None:
    """MS-CXR's `MS_CXR_Local_Alignment_v1.0.0.csv`: rows of `ms_cxr_rows`."""
    _write_rows(path, MS_CXR_COLUMNS, rows)
