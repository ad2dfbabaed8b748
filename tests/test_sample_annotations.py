"""The expert-annotation files each synthetic layout writes (`embedstore data sample --layout`): they
exist, parse with plain csv/json, and agree with the masks of the findings drawn on the films.

The truth is drawn again here: each layout's per-film render function is watched while the sample
is written, and `render_frontal` is called anew with the arguments it was given.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from skimage.draw import polygon2mask

from embedstore import synthetic
from embedstore.choices import SampleLayout
from embedstore.datasets import chexpert, nih14, sample_annotations, vindr
from embedstore.synthetic import FINDINGS, SampleConfig, render_frontal, write_layout

#: pycocotools' array wrapper predates numpy 2's copy keyword.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")

N, SEED, SIZE = 40, 5, 64
#: The function each layout draws one film with, and which module it is looked up in.
WATCHED: dict[SampleLayout, tuple[ModuleType, str]] = {
    SampleLayout.IUXRAY: (synthetic, "_write_image"),
    SampleLayout.CHEXPERT: (chexpert, "_draw"),
    SampleLayout.MIMIC_CXR: (chexpert, "_draw"),
    SampleLayout.NIH14: (nih14, "_render_png"),
    SampleLayout.VINDR_CXR: (vindr, "_render_dicom"),
}
VINDR_LABELS = {entry["name"]: entry["chexpert"] for entry in json.loads(
    resources.files("embedstore.label_sets").joinpath("vindr-cxr.json").read_text(encoding="utf-8"))["labels"]}
#: VinDr-CXR's global labels (never boxed); the other 22 are local.
VINDR_GLOBAL = {"COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"}
CHEXLOCALIZE = ("Airspace Opacity", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
                "Enlarged Cardiomediastinum", "Lung Lesion", "Pleural Effusion", "Pneumothorax", "Support Devices")
MS_CXR = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity", "Pleural Effusion", "Pneumonia",
          "Pneumothorax")
#: A word each MS-CXR phrase of a category must contain (one of).
MS_CXR_WORDS = {"Atelectasis": ("atelectasis",), "Cardiomegaly": ("cardiomegaly", "cardiac", "heart"),
                "Consolidation": ("consolidation",), "Edema": ("edema",), "Lung Opacity": ("opacity",),
                "Pleural Effusion": ("effusion",), "Pneumonia": ("pneumonia",), "Pneumothorax": ("pneumothorax",)}

Box = tuple[float, float, float, float]


@dataclass
class Written:
    """A sample written by a layout: the folder, what write_layout returned, each frontal film's
    findings (non-empty masks) by the film's path."""

    out: Path
    root: Path
    truth: dict[Path, dict[str, np.ndarray]]

    def by_name(self, key: Callable[[Path], str]) -> dict[str, dict[str, np.ndarray]]:
        return {key(film): masks for film, masks in self.truth.items()}


def _film(layout: SampleLayout, args: tuple[Any, ...]) -> tuple[Path, tuple[Any, ...] | None]:
    """The film a watched call draws, and render_frontal's arguments for it (None for a lateral)."""
    if layout == SampleLayout.IUXRAY:
        job, seed, domain, size, out = args
        film = Path(out) / "images" / "images_normalized" / job.filename
    elif layout in (SampleLayout.CHEXPERT, SampleLayout.MIMIC_CXR):
        target, job, seed, domain, size = args[0]
        film = Path(target)
    else:
        target, seed, domain, index, findings, sides, size = args[0]
        return Path(target), (seed, domain, index, findings, sides, size)
    return film, (seed, domain, job.index, job.study.findings, job.study.sides, size) if job.frontal else None


def write_watched(layout: SampleLayout, out: Path) -> Written:
    """Write `layout` (balanced domain, so every finding occurs) and draw each frontal film's truth again."""
    calls: list[tuple[Any, ...]] = []
    module, name = WATCHED[layout]
    original = getattr(module, name)

    def watch(*args: Any) -> Any:
        calls.append(args)
        return original(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, name, watch)
        root = write_layout(layout, SampleConfig(out=out, n=N, seed=SEED, size=SIZE, workers=1, domain="source"))
    truth = {}
    for args in calls:
        film, params = _film(layout, args)
        if params is not None:
            truth[film] = {finding: mask for finding, mask in render_frontal(*params)[1].items() if mask.any()}
    return Written(out, root, truth)


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Callable[[SampleLayout], Written]:
    """Each layout's sample, written once for the module (read-only)."""
    written: dict[SampleLayout, Written] = {}

    def get(layout: SampleLayout) -> Written:
        if layout not in written:
            written[layout] = write_watched(layout, tmp_path_factory.mktemp(str(layout)) / "sample")
        return written[layout]

    return get


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def iou(a: Box, b: Box) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def rows(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def decode_siim(code: str, height: int, width: int) -> np.ndarray:
    """The challenge's relative run-length code, pixel by pixel."""
    flat = [0] * (height * width)
    values = [int(v) for v in code.split()]
    position = 0
    for offset, length in zip(values[0::2], values[1::2], strict=True):
        position += offset
        for k in range(length):
            flat[position + k] = 1
        position += length
    return np.array(flat, dtype=bool).reshape(width, height).T


# ---------------------------------------------------------------------------------------------
# IU-Xray: COCO, RSNA Pneumonia, SIIM-ACR
# ---------------------------------------------------------------------------------------------

def test_iuxray_coco_holds_every_frontal_film_and_the_mask_of_each_finding(samples: Callable[..., Written]) -> None:
    written = samples(SampleLayout.IUXRAY)
    truth = written.by_name(lambda film: film.name)
    coco = json.loads((written.out / "annotations" / "coco.json").read_text(encoding="utf-8"))
    assert [c["name"] for c in coco["categories"]] == list(FINDINGS)
    category = {c["id"]: c["name"] for c in coco["categories"]}
    images = {image["id"]: image for image in coco["images"]}
    assert sorted(image["file_name"] for image in images.values()) == sorted(truth)
    assert all(image["width"] == image["height"] == SIZE for image in images.values())
    seen = Counter()
    for annotation in coco["annotations"]:
        name, finding = images[annotation["image_id"]]["file_name"], category[annotation["category_id"]]
        mask = truth[name][finding]
        x0, y0, x1, y1 = tight_box(mask)
        assert annotation["bbox"] == [x0, y0, x1 - x0, y1 - y0] and annotation["area"] == mask.sum()
        assert annotation["iscrowd"] == 0 and annotation["segmentation"]["size"] == [SIZE, SIZE]
        assert (coco_mask.decode(annotation["segmentation"]).astype(bool) == mask).all()
        seen[name, finding] += 1
    assert seen == Counter({(name, finding): 1 for name, masks in truth.items() for finding in masks})
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"]) > 20


def test_iuxray_rsna_file_boxes_pneumonia_and_lists_every_other_film(samples: Callable[..., Written]) -> None:
    written = samples(SampleLayout.IUXRAY)
    truth = written.by_name(lambda film: film.name.removesuffix(".dcm.png"))
    path = written.out / "annotations" / "stage_2_train_labels.csv"
    assert path.read_text(encoding="utf-8").splitlines()[0] == "patientId,x,y,width,height,Target"
    found = defaultdict(list)
    for row in rows(path):
        found[row["patientId"]].append(row)
    assert set(found) == set(truth)
    positives = 0
    for stem, masks in truth.items():
        if "Pneumonia" in masks:
            x0, y0, x1, y1 = tight_box(masks["Pneumonia"])
            assert [(float(r["x"]), float(r["y"]), float(r["width"]), float(r["height"]), r["Target"])
                    for r in found[stem]] == [(x0, y0, x1 - x0, y1 - y0, "1")]
            positives += 1
        else:
            assert [list(r.values())[1:] for r in found[stem]] == [["", "", "", "", "0"]]
    assert positives >= 2


def test_iuxray_siim_file_codes_each_pneumothorax_mask(samples: Callable[..., Written]) -> None:
    written = samples(SampleLayout.IUXRAY)
    truth = written.by_name(lambda film: film.name.removesuffix(".dcm.png"))
    lines = (written.out / "annotations" / "train-rle.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "ImageId, EncodedPixels"
    codes = dict(line.split(",", 1) for line in lines[1:])
    assert len(codes) == len(lines) - 1 and set(codes) == set(truth)
    positives = 0
    for stem, masks in truth.items():
        code = codes[stem]
        assert code.startswith(" ")
        if "Pneumothorax" not in masks:
            assert code == " -1"
            continue
        assert (decode_siim(code, SIZE, SIZE) == masks["Pneumothorax"]).all()
        positives += 1
    assert positives >= 2


def test_siim_code_of_masks_touching_the_edges_matches_a_pixel_loop() -> None:
    rng = np.random.default_rng(0)
    for shape in ((5, 7), (16, 16)):
        for _ in range(20):
            mask = rng.random(shape) < 0.4
            mask[-1, -1] = True  # a run that ends on the last pixel
            code = sample_annotations.siim_rle(mask)
            assert code.startswith(" ") and (decode_siim(code, *shape) == mask).all()
    assert sample_annotations.siim_rle(np.zeros((4, 4), dtype=bool)) == " -1"
    assert sample_annotations.siim_rle(np.array([[0, 1], [1, 1]], dtype=bool)) == " 1 3"


# ---------------------------------------------------------------------------------------------
# NIH ChestX-ray14
# ---------------------------------------------------------------------------------------------

def test_nih_bbox_list_boxes_the_eight_classes_under_the_label_each_film_was_given(
        samples: Callable[..., Written]) -> None:
    written = samples(SampleLayout.NIH14)
    truth = written.by_name(lambda film: film.name)
    path = written.out / "BBox_List_2017.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        assert handle.readline() == "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        body = list(csv.reader(handle))
    assert body and all(len(fields) == 9 and fields[6:] == ["", "", ""] for fields in body)
    listed = {row["Image Index"]: row["Finding Labels"].split("|") for row in rows(written.out / "Data_Entry_2017.csv")}
    expected = Counter()
    for name, masks in truth.items():
        for finding, mask in masks.items():
            label = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Pleural Effusion": "Effusion",
                     "Lung Opacity": "Infiltrate", "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax",
                     "Lung Lesion": "Mass" if "Mass" in listed[name] else "Nodule"}.get(finding)
            if label is not None:
                assert label.replace("Infiltrate", "Infiltration") in listed[name]
                x0, y0, x1, y1 = tight_box(mask)
                expected[name, label, float(x0), float(y0), float(x1 - x0), float(y1 - y0)] += 1
    got = Counter((f[0], f[1], *(float(v) for v in f[2:6])) for f in body)
    assert got == expected
    assert len({f[0] for f in body}) < len(truth)  # only the films with a box class


# ---------------------------------------------------------------------------------------------
# VinDr-CXR
# ---------------------------------------------------------------------------------------------

def _vindr(written: Written, split: str) -> tuple[list[dict[str, str]], dict[str, list[dict[str, str]]]]:
    labels = rows(written.out / "annotations" / f"image_labels_{split}.csv")
    boxes = defaultdict(list)
    for row in rows(written.out / "annotations" / f"annotations_{split}.csv"):
        boxes[row["image_id"]].append(row)
    return labels, boxes


def _check_reader(image_rows: list[dict[str, str]], marked: set[str]) -> None:
    """A reader's rows: a box per marked local label (two where they split it), or one No finding row."""
    local = {label for label in marked if label not in VINDR_GLOBAL}
    if not local:
        assert [(r["class_name"], r["x_min"], r["y_max"]) for r in image_rows] == [("No finding", "", "")]
        return
    assert {r["class_name"] for r in image_rows} == local
    counts = Counter(r["class_name"] for r in image_rows)
    assert set(counts.values()) <= {1, 2}
    for r in image_rows:
        x0, y0, x1, y1 = (float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE


def test_vindr_train_boxes_come_from_the_three_readers_of_each_image(samples: Callable[..., Written]) -> None:
    written = samples(SampleLayout.VINDR_CXR)
    labels, boxes = _vindr(written, "train")
    assert list(boxes) == list(dict.fromkeys(row["image_id"] for row in labels))
    readers = defaultdict(dict)
    for row in labels:
        readers[row["image_id"]][row["rad_id"]] = {label for label in VINDR_LABELS if row[label] == "1"}
    for image_id, marks in readers.items():
        assert len(marks) == 3 and {r["rad_id"] for r in boxes[image_id]} == set(marks)
        for rad_id, marked in marks.items():
            _check_reader([r for r in boxes[image_id] if r["rad_id"] == rad_id], marked)
    assert any(r["class_name"] == "No finding" for rs in boxes.values() for r in rs)


def test_vindr_test_boxes_have_three_readers_boxing_the_consensus(samples: Callable[..., Written]) -> None:
    written = samples(SampleLayout.VINDR_CXR)
    labels, boxes = _vindr(written, "test")
    assert labels and list(boxes) == [row["image_id"] for row in labels]
    for row in labels:
        consensus = {label for label in VINDR_LABELS if row.get(label) == "1"}
        image_rows = boxes[row["image_id"]]
        rad_ids = {r["rad_id"] for r in image_rows}
        assert len(rad_ids) == 3 and rad_ids <= set(vindr.READERS)
        for rad_id in rad_ids:
            _check_reader([r for r in image_rows if r["rad_id"] == rad_id], consensus)


def test_vindr_readers_disagree_on_boxes_that_still_overlap_the_finding(samples: Callable[..., Written]) -> None:
    written = samples(SampleLayout.VINDR_CXR)
    truth = written.by_name(lambda film: film.stem)
    overlaps: list[float] = []
    by_finding: dict[tuple[str, str], set[tuple[str, ...]]] = defaultdict(set)
    for split in ("train", "test"):
        for image_id, image_rows in _vindr(written, split)[1].items():
            for r in image_rows:
                finding = VINDR_LABELS[r["class_name"]]
                if finding in truth[image_id]:
                    box = tuple(float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
                    overlaps.append(iou(box, tight_box(truth[image_id][finding])))
                    by_finding[image_id, r["class_name"]].add((r["rad_id"], *map(str, box)))
    shared = [boxes for boxes in by_finding.values() if len({b[0] for b in boxes}) >= 2]
    assert len(overlaps) > 30 and np.mean(overlaps) > 0.2
    assert shared and np.mean([len({b[1:] for b in boxes}) > 1 for boxes in shared]) > 0.9
    assert np.mean(np.array(overlaps) > 0.99) < 0.5  # readers rarely draw the very box


# ---------------------------------------------------------------------------------------------
# CheXpert: CheXlocalize
# ---------------------------------------------------------------------------------------------

def _chexlocalize_truth(written: Written, folder: str) -> dict[str, dict[str, np.ndarray]]:
    """cxr_id → CheXlocalize pathology → mask of the frontal films under `folder` (valid/ or test/)."""
    found = {}
    for film, masks in written.truth.items():
        relative = film.relative_to(written.root)
        if relative.parts[0] == folder:
            cxr_id = "_".join(relative.with_suffix("").parts[-3:])
            found[cxr_id] = {"Airspace Opacity" if f == "Lung Opacity" else f: m for f, m in masks.items()
                             if ("Airspace Opacity" if f == "Lung Opacity" else f) in CHEXLOCALIZE}
    return found


@pytest.mark.parametrize(("split", "folder"), [("val", "valid"), ("test", "test")])
def test_chexlocalize_segmentations_give_all_ten_pathologies_of_each_frontal_image(
        samples: Callable[..., Written], split: str, folder: str) -> None:
    written = samples(SampleLayout.CHEXPERT)
    truth = _chexlocalize_truth(written, folder)
    listed = ([r["Path"] for r in rows(written.root / "valid.csv") if r["Frontal/Lateral"] == "Frontal"]
              if folder == "valid" else [r["Path"] for r in rows(written.root / "test_labels.csv")
                                          if r["Path"].endswith("_frontal.jpg")])
    assert sorted("_".join(Path(p).with_suffix("").parts[-3:]) for p in listed) == sorted(truth)
    segmentations = json.loads((written.root / "chexlocalize" / f"gt_segmentations_{split}.json").read_text())
    assert set(segmentations) == set(truth) and truth
    positives = 0
    for cxr_id, per in segmentations.items():
        assert list(per) == list(CHEXLOCALIZE)
        for name, rle in per.items():
            assert rle["size"] == [SIZE, SIZE] and isinstance(rle["counts"], str)
            decoded = coco_mask.decode(rle).astype(bool)
            expected = truth[cxr_id].get(name, np.zeros((SIZE, SIZE), dtype=bool))
            assert (decoded == expected).all(), (cxr_id, name)
            positives += bool(expected.any())
    assert positives >= 3


@pytest.mark.parametrize(("split", "folder"), [("val", "valid"), ("test", "test")])
def test_chexlocalize_polygons_outline_each_positive_pathology(samples: Callable[..., Written], split: str,
                                                               folder: str) -> None:
    written = samples(SampleLayout.CHEXPERT)
    truth = _chexlocalize_truth(written, folder)
    annotations = json.loads((written.root / "chexlocalize" / f"gt_annotations_{split}.json").read_text())
    assert set(annotations) == set(truth)
    overlaps = []
    for cxr_id, per in annotations.items():
        assert per["img_size"] == [SIZE, SIZE]
        assert set(per) - {"img_size"} == set(truth[cxr_id])
        for name, polygons in per.items():
            if name == "img_size":
                continue
            drawn = np.zeros((SIZE, SIZE), dtype=bool)
            for polygon in polygons:  # [[x, y], ...]; pixel centres inside, holes by parity
                drawn ^= polygon2mask((SIZE, SIZE), np.array(polygon, dtype=float)[:, ::-1])
            mask = truth[cxr_id][name]
            overlaps.append((drawn & mask).sum() / (drawn | mask).sum())
    assert overlaps and min(overlaps) > 0.8


# ---------------------------------------------------------------------------------------------
# MIMIC-CXR: MS-CXR
# ---------------------------------------------------------------------------------------------

def test_ms_cxr_boxes_each_finding_of_its_categories_with_a_phrase_naming_the_side(
        samples: Callable[..., Written]) -> None:
    written = samples(SampleLayout.MIMIC_CXR)
    path = written.out / "ms-cxr" / "MS_CXR_Local_Alignment_v1.0.0.csv"
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header == "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split"
    splits = {r["dicom_id"]: r["split"] for r in rows(written.out / "mimic-cxr-2.0.0-split.csv.gz")}
    truth = written.by_name(lambda film: film.stem)
    expected = Counter((dicom, finding, *tight_box(mask)) for dicom, masks in truth.items()
                       for finding, mask in masks.items() if finding in MS_CXR)
    found = rows(path)
    got = Counter()
    for r in found:
        x, y, w, h = (int(r[k]) for k in "xywh")
        got[r["dicom_id"], r["category_name"], x, y, x + w, y + h] += 1
        assert (written.out / r["path"]).is_file() and Path(r["path"]).stem == r["dicom_id"]
        assert r["image_width"] == r["image_height"] == str(SIZE)
        assert r["split"] == {"validate": "val"}.get(splits[r["dicom_id"]], splits[r["dicom_id"]])
        text = r["label_text"].lower()
        assert any(word in text for word in MS_CXR_WORDS[r["category_name"]]), text
        if r["category_name"] not in ("Cardiomegaly", "Edema"):
            side = "right" if x + w / 2 < SIZE / 2 else "left"  # the image's left half: the patient's right
            other = {"right": "left", "left": "right"}[side]
            assert re.search(rf"\b{side}\b", text) and not re.search(rf"\b{other}\b", text), (text, x, w)
    assert got == expected and len(found) > 10
    assert len({r["label_text"] for r in found if r["category_name"] == "Lung Opacity"}) > 1


# ---------------------------------------------------------------------------------------------
# Determinism, and the files the layouts wrote before
# ---------------------------------------------------------------------------------------------

def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("layout", list(SampleLayout))
def test_annotation_files_are_the_same_whatever_the_number_of_workers(
        layout: SampleLayout, samples: Callable[..., Written], tmp_path: Path) -> None:
    written = samples(layout)
    write_layout(layout, SampleConfig(out=tmp_path / "two", n=N, seed=SEED, size=SIZE, workers=2, domain="source"))
    assert _digest(tmp_path / "two") == _digest(written.out)


#: sha256 of label files as the layouts wrote them before they wrote annotation files (n=40, seed 5,
#: 64 px, target domain; gzipped files by their content). They depend on the seeded streams only: a
#: change means a writer's draws changed.
PINNED: dict[SampleLayout, dict[str, str]] = {
    SampleLayout.IUXRAY: {
        "iuxray_frontal_14labels.csv": "5592f0a891a0c64060f96d756f1f55856075d2b37fdcfff327ca0192094a1197",
        "indiana_reports.csv": "fffd64eea7482ba6882bb0d294b9991693798c078131de3c4654475ee9f546be",
        "indiana_projections.csv": "8edd22512272a6acef3bbabe6cc66a6c2ccfb43b8ad4e729e7529d6cbdb5600d",
    },
    SampleLayout.NIH14: {
        "Data_Entry_2017.csv": "c7f9b4ab1023df4c39be9296d9b0e31c29606bb081448596c52ec10b1bed962c",
        "train_val_list.txt": "9bea9517f4d5e5e8ff34b1b7e591996fef0e23be07c5dd1a54ccebd9d65b91a3",
        "test_list.txt": "c03b1548d4f4d20871b7e357e6635f2652e77d42f9388707316e24527225c2af",
    },
    SampleLayout.VINDR_CXR: {
        "annotations/image_labels_train.csv": "2d0935480ffe469579c693069936fcb094b5e17f3b9d80fa7df2887ee6415f21",
        "annotations/image_labels_test.csv": "0df88e7d57b0567223c661457b67ab68c6781d68c75a50082e2cb2ded4c84a5e",
    },
    SampleLayout.CHEXPERT: {
        "CheXpert-v1.0-small/train.csv": "98a4ee824b71c4d79673e1cf547a6a6c206a064d32d24aad669566bb3cfe0d98",
        "CheXpert-v1.0-small/valid.csv": "d0848461cf1c873f2fec9c5148bbae64331e6249df1b49255a2695de86504017",
        "CheXpert-v1.0-small/test_labels.csv": "363020b2603aa3323ae278284efca300beba289e42ab9baeb88d5df9c5b993a2",
    },
    SampleLayout.MIMIC_CXR: {
        "mimic-cxr-2.0.0-chexpert.csv.gz": "ea0ab0e32fca6c4381a994de844a20af49a3d786f6d1f85775876ec46fd5a4fc",
        "mimic-cxr-2.0.0-metadata.csv.gz": "7696808d1dba8e0b6f2855c419044cf7f561fc1907cdee137bb071963c7d3331",
        "mimic-cxr-2.0.0-split.csv.gz": "8f6cb35598cc9eeb26eea18bc10dca79d17171e0346654066a8f1ac68cd5dfa3",
    },
}


@pytest.mark.parametrize("layout", list(SampleLayout))
def test_label_files_keep_the_bytes_they_had_before_annotation_files(layout: SampleLayout, tmp_path: Path) -> None:
    write_layout(layout, SampleConfig(out=tmp_path / "d", n=40, seed=5, size=64, workers=1))
    for name, expected in PINNED[layout].items():
        data = (tmp_path / "d" / name).read_bytes()
        assert hashlib.sha256(gzip.decompress(data) if name.endswith(".gz") else data).hexdigest() == expected, name


# ---------------------------------------------------------------------------------------------
# Round trip: each file read back by embedstore.annotation_sets
# ---------------------------------------------------------------------------------------------

def read_back(path: Path) -> Any:
    """The file read with the dataset's own names kept (no known files or labels)."""
    from embedstore.annotation_sets import read_annotations

    return read_annotations([path], None, None)


def _regions(annotations: Any) -> dict[tuple[str, str], np.ndarray]:
    found: dict[tuple[str, str], np.ndarray] = {}
    for region in annotations.regions:
        assert (region.filename, region.label) not in found
        found[region.filename, region.label] = region.original_mask((SIZE, SIZE))
    return found


def test_iuxray_files_read_back_as_the_drawn_masks_and_boxes(samples: Callable[..., Written]) -> None:
    written = samples(SampleLayout.IUXRAY)
    folder = written.out / "annotations"
    by_file = written.by_name(lambda film: film.name)
    coco = read_back(folder / "coco.json")
    assert set(coco.readers) == set(by_file)
    masks = _regions(coco)
    assert set(masks) == {(name, finding) for name, found in by_file.items() for finding in found}
    assert all((mask == by_file[name][finding]).all() for (name, finding), mask in masks.items())
    by_stem = written.by_name(lambda film: film.name.removesuffix(".dcm.png"))
    rsna = read_back(folder / "stage_2_train_labels.csv")
    assert set(rsna.readers) == set(by_stem)
    assert sorted((r.filename, r.label, r.box) for r in rsna.regions) == sorted(
        (stem, "Pneumonia", tuple(float(v) for v in tight_box(found["Pneumonia"])))
        for stem, found in by_stem.items() if "Pneumonia" in found)
    siim = _regions(read_back(folder / "train-rle.csv"))
    assert set(siim) == {(stem, "Pneumothorax") for stem, found in by_stem.items() if "Pneumothorax" in found}
    assert all((mask == by_stem[stem]["Pneumothorax"]).all() for (stem, _), mask in siim.items())


def test_nih_bbox_list_reads_back_as_the_drawn_boxes(samples: Callable[..., Written]) -> None:
    written = samples(SampleLayout.NIH14)
    truth = written.by_name(lambda film: film.name)
    names = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural Effusion",
             "Infiltrate": "Lung Opacity", "Mass": "Lung Lesion", "Nodule": "Lung Lesion", "Pneumonia": "Pneumonia",
             "Pneumothorax": "Pneumothorax"}
    regions = read_back(written.out / "BBox_List_2017.csv").regions
    assert regions and all(r.box == tuple(float(v) for v in tight_box(truth[r.filename][names[r.label]]))
                           for r in regions)


def test_vindr_boxes_read_back_with_every_reader_of_each_image(samples: Callable[..., Written]) -> None:
    written = samples(SampleLayout.VINDR_CXR)
    for split in ("train", "test"):
        path = written.out / "annotations" / f"annotations_{split}.csv"
        annotations = read_back(path)
        written_rows = rows(path)
        readers = defaultdict(set)
        for r in written_rows:
            readers[r["image_id"]].add(r["rad_id"])
        assert {image: set(names) for image, names in annotations.readers.items()} == readers
        assert sorted((r.filename, r.reader, r.label, r.box) for r in annotations.regions) == sorted(
            (r["image_id"], r["rad_id"], r["class_name"], tuple(float(r[k]) for k in ("x_min", "y_min", "x_max", "y_max")))
            for r in written_rows if r["x_min"])


@pytest.mark.parametrize(("split", "folder"), [("val", "valid"), ("test", "test")])
def test_chexlocalize_files_read_back_as_the_drawn_masks(samples: Callable[..., Written], split: str,
                                                         folder: str) -> None:
    written = samples(SampleLayout.CHEXPERT)
    truth = _chexlocalize_truth(written, folder)
    expected = {(cxr_id, name) for cxr_id, found in truth.items() for name in found}
    segmentations = read_back(written.root / "chexlocalize" / f"gt_segmentations_{split}.json")
    assert set(segmentations.readers) == set(truth)
    masks = _regions(segmentations)
    assert set(masks) == expected
    assert all((mask == truth[cxr_id][name]).all() for (cxr_id, name), mask in masks.items())
    outlines = _regions(read_back(written.root / "chexlocalize" / f"gt_annotations_{split}.json"))
    assert set(outlines) == expected
    overlaps = [(mask & truth[key[0]][key[1]]).sum() / (mask | truth[key[0]][key[1]]).sum()
                for key, mask in outlines.items()]
    # The contours run through the edge pixels' centres, drawn back the way CheXlocalize draws them
    # (PIL fill and outline): the region comes back whole, save where a contour cuts a one-pixel corner.
    assert min(overlaps) > 0.9 and np.mean(overlaps) > 0.97


def test_ms_cxr_file_reads_back_as_the_drawn_boxes_with_their_phrases(samples: Callable[..., Written]) -> None:
    written = samples(SampleLayout.MIMIC_CXR)
    path = written.out / "ms-cxr" / "MS_CXR_Local_Alignment_v1.0.0.csv"
    truth = written.by_name(lambda film: film.stem)
    phrases = {(r["dicom_id"], r["category_name"]): r["label_text"] for r in rows(path)}
    regions = read_back(path).regions
    assert len(regions) == len(phrases)
    for region in regions:
        assert region.box_on((SIZE, SIZE)) == tuple(float(v) for v in tight_box(truth[region.filename][region.label]))
        assert region.text == phrases[region.filename, region.label]
