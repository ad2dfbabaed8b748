"""Expert annotations in the layouts datasets publish them in (embedstore/annotation_sets): each format
is detected and read back exactly (masks pixel by pixel against brute-force decoders written here),
names are matched to the dataset's and the run's, several readers are kept apart, rows outside the
run are counted, bad rows are named by file and row, and hostile files are refused in one line."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torchxrayvision

from embedstore.annotation_sets import (
    READERS,
    AnnotationSet,
    Box,
    Mask,
    Region,
    base,
    detect_format,
    read_annotations,
)
from embedstore.annotation_sets.base import LabelMatcher, image_keys
from embedstore.annotation_sets.coco import rle_counts
from embedstore.annotations import InputGeometry
from embedstore.choices import AnnotationFormat
from embedstore.errors import InputError
from embedstore.label_sets import label_set

F = AnnotationFormat
NIH = list(label_set("nih14").labels)
CHEXPERT = list(label_set("chexpert").labels)
VINDR = list(label_set("vindr-cxr").labels)


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _json(path: Path, document: object) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _real(name: str) -> Path:
    """A real annotation file the dev dependency torchxrayvision ships (installed by `make test`)."""
    path = Path(torchxrayvision.__file__).parent / "data" / name
    assert path.is_file(), f"torchxrayvision ships no {name}"
    return path


def _only(result: AnnotationSet) -> Region:
    assert len(result.regions) == 1, result.regions
    return result.regions[0]


def _bad_rows(error: pytest.ExceptionInfo[InputError], folder: Path) -> list[str]:
    """The `file:row` of each listed bad row, the file relative to `folder`."""
    return [line.removeprefix(f"{folder}/").split(": ", 1)[0] for line in error.value.details]


# ---------------------------------------------------------------------------------------------
# Brute-force references
# ---------------------------------------------------------------------------------------------

def _coco_rle(mask: np.ndarray) -> dict[str, object]:
    """COCO's compressed RLE of a bool mask (pycocotools' own encoder), as JSON holds it."""
    from pycocotools import mask as coco_mask

    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _runs_column_major(mask: np.ndarray) -> list[int]:
    """Run lengths (zeros first) over the mask's pixels in column-major order, one pixel at a time."""
    runs, value, length = [], 0, 0
    for pixel in mask.T.reshape(-1):
        if int(pixel) != value:
            runs.append(length)
            value, length = int(pixel), 0
        length += 1
    runs.append(length)
    return runs


def _siim_brute_force(code: str, height: int, width: int) -> np.ndarray:
    """The SIIM challenge's relative run-length code, decoded one run at a time."""
    flat = np.zeros(width * height, dtype=bool)
    numbers = [int(v) for v in code.split()]
    position = 0
    for offset, length in zip(numbers[0::2], numbers[1::2], strict=True):
        position += offset
        for index in range(position, position + length):
            flat[index] = True
        position += length
    return flat.reshape(width, height).T


def _inside_polygon(points: list[tuple[float, float]], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose centre lies inside the polygon (even-odd rule), and each centre's distance to its edges."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    inside = np.zeros((height, width), dtype=bool)
    distance = np.full((height, width), np.inf)
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True):
        crosses = ((y0 > ys) != (y1 > ys)) & (xs < (x1 - x0) * (ys - y0) / ((y1 - y0) or 1e-12) + x0)
        inside ^= crosses
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / (dx * dx + dy * dy), 0, 1)
        distance = np.minimum(distance, np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy)))
    return inside, distance


# ---------------------------------------------------------------------------------------------
# Tiny complete examples, one per format
# ---------------------------------------------------------------------------------------------

def _examples(folder: Path) -> dict[AnnotationFormat, Path]:
    """A tiny complete file of every format (the examples docs/annotations.md shows)."""
    masks = folder / "masks"
    masks.mkdir()
    from PIL import Image

    Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(masks / "a__cardiomegaly.png")
    rect = np.zeros((6, 8), dtype=bool)
    rect[1:4, 2:6] = True
    return {
        F.BOXES: _csv(folder / "boxes.csv", ["filename", "label", "x0", "y0", "x1", "y1"],
                      [["a.png", "Cardiomegaly", 1, 2, 5, 6]]),
        F.PNG_MASKS: masks,
        F.NIH_BBOX: _nih(folder / "BBox_List_2017.csv", [["00000001_000.png", "Cardiomegaly", 1.5, 2, 3, 4]]),
        F.VINDR: _csv(folder / "annotations_train.csv",
                      ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
                      [["abc", "R1", "Cardiomegaly", 1, 2, 5, 6], ["abc", "R2", "No finding", "", "", "", ""]]),
        F.CHEXLOCALIZE: _json(folder / "gt_segmentations_val.json",
                              {"patient1_study1_view1_frontal": {"Cardiomegaly": _coco_rle(rect),
                                                                 "Edema": _coco_rle(np.zeros((6, 8), bool))}}),
        F.CHEXLOCALIZE_POLYGONS: _json(folder / "gt_annotations_val.json",
                                       {"patient1_study1_view1_frontal": {
                                           "img_size": [6, 8], "Cardiomegaly": [[[2, 1], [6, 1], [6, 4], [2, 4]]]}}),
        F.MS_CXR: _csv(folder / "MS_CXR_Local_Alignment_v1.0.0.csv",
                       ["path", "dicom_id", "category_name", "label_text", "x", "y", "w", "h", "image_width",
                        "image_height", "split"],
                       [["files/p1/a.jpg", "d1", "Pneumonia", "Patchy opacity, right base", 10, 20, 30, 40, 100, 200,
                         "test"]]),
        F.RSNA: _csv(folder / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"],
                     [["p1", "", "", "", "", 0], ["p2", 10, 20, 30, 40, 1]]),
        F.SIIM: _siim(folder / "train-rle.csv", [["1.2.3", " 5 2 3 1"], ["1.2.4", " -1"]]),
        F.COCO: _json(folder / "coco.json", {
            "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 2], "iscrowd": 0}],
            "categories": [{"id": 1, "name": "Cardiomegaly"}]}),
    }


def _nih(path: Path, rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as handle:
        handle.write("Image Index,Finding Label,Bbox [x,y,w,h],,,\n")
        csv.writer(handle).writerows(rows)
    return path


def _siim(path: Path, rows: list[list[object]]) -> Path:
    return _csv(path, ["ImageId", " EncodedPixels"], rows)


def test_every_format_is_detected_and_has_a_reader(tmp_path: Path) -> None:
    examples = _examples(tmp_path)
    assert set(examples) == set(READERS) == set(F) - {F.AUTO}
    for fmt, path in examples.items():
        assert detect_format(path) == fmt, path
        result = read_annotations([path], None, None)
        assert result.format == fmt and result.regions, fmt
        gz = tmp_path / f"{path.name}.gz"
        if path.is_file():
            gz.write_bytes(gzip.compress(path.read_bytes()))
            assert detect_format(gz) == fmt
            assert [r.label for r in read_annotations([gz], None, None).regions] == [r.label for r in result.regions]


def test_the_documented_examples_read_back(tmp_path: Path) -> None:
    """Every example file in docs/annotations.md is complete: detected as its section's format and read."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "annotations.md").read_text(encoding="utf-8")
    example = re.compile(r"^`([^`]+)`[^\n]*:\n\n```(?:csv|json)\n(.*?)^```", re.MULTILINE | re.DOTALL)
    seen = set()
    for section in docs.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        for name, text in example.findall(body):
            path = tmp_path / title / name
            path.parent.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            assert detect_format(path) == AnnotationFormat(title), name
            assert read_annotations([path], None, None).regions, name
            seen.add(AnnotationFormat(title))
    assert seen == set(F) - {F.AUTO, F.PNG_MASKS}


def test_an_unknown_layout_names_the_file_and_lists_the_formats(tmp_path: Path) -> None:
    path = _csv(tmp_path / "other.csv", ["foo", "bar"], [[1, 2]])
    with pytest.raises(InputError, match=r"other.csv: not a known annotation format \(header 'foo,bar'\); "
                                         r"formats: boxes: .*; coco: "):
        detect_format(path)
    with pytest.raises(InputError, match=r"a JSON document of no known shape.*chexlocalize-polygons"):
        read_annotations([_json(tmp_path / "x.json", [1, 2])], None, None)
    with pytest.raises(InputError, match=r"masks .*: a masks folder goes with a boxes file; .* is nih-bbox"):
        (tmp_path / "examples").mkdir()
        read_annotations([_examples(tmp_path / "examples")[F.NIH_BBOX]], None, None, masks=tmp_path / "examples" / "masks")


# ---------------------------------------------------------------------------------------------
# Regions: pixel convention, frames, input geometry
# ---------------------------------------------------------------------------------------------

def test_box_pixels_frames_and_input_geometry() -> None:
    region = Region("a.png", "Cardiomegaly", "x:2", "r", Box(1.5, 0, 3, 2))
    expected = np.zeros((4, 5), dtype=bool)
    expected[0:2, 1:3] = True                        # centres 1.5, 2.5 in [1.5, 3); 0.5, 1.5 in [0, 2)
    assert np.array_equal(region.original_mask((4, 5)), expected)
    assert region.box == (1.5, 0, 3, 2)
    framed = Region("a.png", "Cardiomegaly", "x:2", "r", Box(10, 20, 30, 40, frame=(200, 100)))
    assert framed.box_on((100, 50)) == (5, 10, 15, 20)
    assert framed.box_on((200, 100)) == (10, 20, 30, 40)
    geometry = InputGeometry(original=(100, 50), resized=(100, 50), top=0, left=0, crop=(100, 50))
    assert np.array_equal(framed.input_mask(geometry), framed.original_mask((100, 50)))
    assert np.count_nonzero(framed.original_mask((100, 50))) == 10 * 10


def test_masks_on_another_frame_are_scaled_nearest_neighbour() -> None:
    small = np.zeros((4, 4), dtype=bool)
    small[1, 2] = small[3, 0] = True
    region = Region("a.png", "Edema", "x:a/Edema", "r", Mask(lambda _: small, frame=(4, 4)))
    assert np.array_equal(region.original_mask((8, 8)), np.kron(small, np.ones((2, 2), dtype=bool)))
    assert np.array_equal(region.original_mask((4, 4)), small)
    assert region.box is None
    liar = Region("a.png", "Edema", "f.json:a/Edema", "r", Mask(lambda _: small, frame=(5, 4)))
    with pytest.raises(InputError, match=r"^f.json:a/Edema: the mask is 4×4 pixels, not the 4×5 it should be"):
        liar.original_mask((8, 8))


# ---------------------------------------------------------------------------------------------
# Per format
# ---------------------------------------------------------------------------------------------

def test_boxes_are_strict_and_keep_the_old_messages(tmp_path: Path) -> None:
    header = ["filename", "label", "x0", "y0", "x1", "y1"]
    good = ["a.png", "Cardiomegaly", 1, 2, 5, 6]
    path = _csv(tmp_path / "annotations.csv", header, [good, ["nope.png", "Cardiomegaly", 1, 1, 9, 9],
                                                       ["a.png", "Heart Attack", 1, 1, 9, 9],
                                                       ["a.png", "Cardiomegaly", 9, 1, 2, 9],
                                                       ["a.png", "Cardiomegaly", "a", 1, 2, 9],
                                                       ["a.png", "Cardiomegaly", "nan", 1, 2, 9]])
    with pytest.raises(InputError) as caught:
        read_annotations([path], {"a.png"}, ["Cardiomegaly"])
    assert str(caught.value) == (f"annotations {path}: 5 bad row(s); first: {path}:3: unknown filename 'nope.png' "
                                 "(not in the run's dataset)")
    assert caught.value.details[1:] == [f"{path}:4: unknown label 'Heart Attack'",
                                        f"{path}:5: empty or negative box (9.0, 1.0, 2.0, 9.0) (need x0 < x1, y0 < y1, "
                                        "all ≥ 0)",
                                        f"{path}:6: box coordinates must be numbers",
                                        f"{path}:7: box coordinates must be numbers"]
    result = read_annotations([_csv(tmp_path / "one.csv", header, [good])], {"a.png", "b.png"}, ["Cardiomegaly"])
    region = _only(result)
    assert (region.filename, region.label, region.box, region.source, region.reader) == (
        "a.png", "Cardiomegaly", (1, 2, 5, 6), f"{tmp_path / 'one.csv'}:2", "one.csv")
    assert result.readers == {"a.png": ("one.csv",)} and result.left_out == {}
    assert result.sha256 == {str(tmp_path / "one.csv"): hashlib.sha256((tmp_path / "one.csv").read_bytes()).hexdigest()}
    with pytest.raises(InputError, match=r"missing column\(s\) x1, y1 \(expected filename,label,x0,y0,x1,y1\)"):
        read_annotations([_csv(tmp_path / "short.csv", header[:4], [])], None, None, fmt=F.BOXES)


def test_boxes_with_a_masks_folder(tmp_path: Path) -> None:
    from PIL import Image

    path = _csv(tmp_path / "boxes.csv", ["filename", "label", "x0", "y0", "x1", "y1"],
                [["x.dcm.png", "Pleural Effusion", 0, 0, 4, 4]])
    masks = tmp_path / "masks"
    masks.mkdir()
    with pytest.raises(InputError, match=rf"{re.escape(str(path))}:2: mask file .*x__pleural_effusion.png is missing"):
        read_annotations([path], None, None, masks=masks)
    pixels = np.zeros((5, 7), dtype=np.uint8)
    pixels[1:3, 2:6] = 200
    Image.fromarray(pixels).save(masks / "x__pleural_effusion.png")
    result = read_annotations([path], {"x.dcm.png"}, ["Pleural Effusion"], masks=masks)
    region = _only(result)
    assert isinstance(region.shape, Mask) and region.box is None
    assert np.array_equal(region.original_mask((5, 7)), pixels > 0)
    assert str(masks) in result.sha256
    with pytest.raises(InputError, match=r"^masks .*x__pleural_effusion.png: 7×5 pixels, but its image is 8×8$"):
        region.original_mask((8, 8))
    with pytest.raises(InputError, match=r"^masks .*: not a folder"):
        read_annotations([path], None, None, masks=path)


def test_png_masks_folder(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "masks"
    folder.mkdir()
    pixels = np.zeros((6, 8), dtype=np.uint8)
    pixels[2:5, 1:3] = 255
    Image.fromarray(pixels).save(folder / "patient1__pleural_effusion.png")
    Image.fromarray(pixels).save(folder / "patient1__heart_attack.png")
    Image.fromarray(pixels).save(folder / "ghost__cardiomegaly.png")
    (folder / "notes.txt").write_text("not a mask")
    assert detect_format(folder) == F.PNG_MASKS
    known = {"images/patient1.dcm.png", "images/other.png"}
    result = read_annotations([folder], known, ["Cardiomegaly", "Pleural Effusion"])
    region = _only(result)
    assert (region.filename, region.label, region.reader) == ("images/patient1.dcm.png", "Pleural Effusion", "masks")
    assert np.array_equal(region.original_mask((6, 8)), pixels > 0)
    assert result.left_out == {"image not in the dataset": 1, "label the run does not have": 1}
    assert result.readers == {"images/patient1.dcm.png": ("masks",)}
    with pytest.raises(InputError, match=r"^annotations .*patient1__pleural_effusion.png: 8×6 pixels, but its image is 9×6"):
        region.original_mask((6, 9))
    (folder / "unnamed.png").write_bytes((folder / "ghost__cardiomegaly.png").read_bytes())
    with pytest.raises(InputError, match=r"1 bad row\(s\); first: .*unnamed.png: not named <image stem>__<label"):
        read_annotations([folder], None, None)
    (folder / "unnamed.png").unlink()
    everything = read_annotations([folder], None, None)
    assert sorted((r.filename, r.label) for r in everything.regions) == [
        ("ghost", "cardiomegaly"), ("patient1", "heart_attack"), ("patient1", "pleural_effusion")]


def test_nih_bbox(tmp_path: Path) -> None:
    path = _nih(tmp_path / "BBox_List_2017.csv", [
        ["00000001_000.png", "Effusion", 10.5, 20, 30, 40],
        ["00000001_000.png", "Infiltrate", 1, 2, 3, 4],
        ["00000002_000.png", "Mass", 1, 2, 3, 4],
        ["99999999_000.png", "Mass", 1, 2, 3, 4],
    ])
    assert detect_format(path) == F.NIH_BBOX
    known = {"images_001/images/00000001_000.png", "images_001/images/00000002_000.png"}
    result = read_annotations([path], known, NIH)
    assert [(r.filename, r.label, r.box) for r in result.regions] == [
        ("images_001/images/00000001_000.png", "Effusion", (10.5, 20, 40.5, 60)),
        ("images_001/images/00000001_000.png", "Infiltration", (1, 2, 4, 6)),   # NIH's own two spellings
        ("images_001/images/00000002_000.png", "Mass", (1, 2, 4, 6))]
    assert result.left_out == {"image not in the dataset": 1}
    chexpert = read_annotations([path], known, CHEXPERT)
    assert [r.label for r in chexpert.regions] == ["Pleural Effusion", "Lung Opacity", "Lung Lesion"]
    assert all(r.reader == "BBox_List_2017.csv" for r in result.regions)
    blank = _nih(tmp_path / "blank.csv", [["", "Mass", 1, 2, 3, 4], ["a.png", " ", 1, 2, 3, 4]])
    with pytest.raises(InputError, match=r"2 bad row\(s\); first: .*blank.csv:2: Image Index is blank") as caught:
        read_annotations([blank], None, None)
    assert caught.value.details[1].endswith("blank.csv:3: Finding Label is blank")


def test_the_real_nih_bbox_list_reads_every_box() -> None:
    path = _real("BBox_List_2017.csv.gz")
    assert detect_format(path) == F.NIH_BBOX
    result = read_annotations([path], None, None)
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert len(result.regions) == len(rows) == 984
    for index in (0, 1, 500, 983):
        row, region = rows[index], result.regions[index]
        x, y, w, h = (float(v) for v in row[2:6])
        assert (region.filename, region.label, region.box) == (row[0], row[1], (x, y, x + w, y + h))
    assert {r.label for r in result.regions} == {"Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass",
                                                 "Nodule", "Pneumonia", "Pneumothorax"}
    assert len({r.label for r in read_annotations([path], None, NIH).regions}) == 8


def test_vindr_readers_including_those_who_drew_nothing(tmp_path: Path) -> None:
    path = _csv(tmp_path / "annotations_train.csv",
                ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"], [
                    ["a", "R1", "Cardiomegaly", 10, 20, 30, 40],
                    ["a", "R2", "Cardiomegaly", 12, 22, 32, 42],
                    ["a", "R2", "Aortic enlargement", 1, 2, 3, 4],
                    ["a", "R3", "No finding", "", "", "", ""],
                    ["a", "R1", "Nodule/Mass", 1, 2, 3, 4],
                    ["b", "R1", "No finding", "", "", "", ""],
                    ["zzz", "R4", "Cardiomegaly", 1, 2, 3, 4]])
    assert detect_format(path) == F.VINDR
    known = {"train/a.dicom", "train/b.dicom"}
    result = read_annotations([path], known, ["Cardiomegaly", "Aortic enlargement"])
    assert [(r.filename, r.label, r.reader, r.box) for r in result.regions] == [
        ("train/a.dicom", "Cardiomegaly", "R1", (10, 20, 30, 40)),
        ("train/a.dicom", "Cardiomegaly", "R2", (12, 22, 32, 42)),
        ("train/a.dicom", "Aortic enlargement", "R2", (1, 2, 3, 4))]
    assert result.readers == {"train/a.dicom": ("R1", "R2", "R3"), "train/b.dicom": ("R1",)}
    assert result.multi_reader_images() == {"train/a.dicom"}
    assert result.left_out == {"no box (No finding / global label)": 2, "label the run does not have": 1,
                               "image not in the dataset": 1}
    bad = _csv(tmp_path / "bad.csv", ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"], [
        ["a", "R1", "Cardiomegaly", 10, 20, 30, 40], ["a", "R1", "Cardiomegaly", "abc", 20, 30, 40],
        ["a", "R1", "Cardiomegaly", 30, 20, 10, 40], ["a", "R1", "Cardiomegaly", 10, "", 30, 40],
        ["a", "", "Cardiomegaly", 10, 20, 30, 40]])
    with pytest.raises(InputError, match=rf"^annotations {re.escape(str(bad))}: 4 bad row\(s\); first: "
                                         rf"{re.escape(str(bad))}:3: x_min, y_min, x_max, y_max must be numbers") as caught:
        read_annotations([bad], None, None)
    assert _bad_rows(caught, tmp_path) == ["bad.csv:3", "bad.csv:4", "bad.csv:5", "bad.csv:6"]
    assert "inverted" in caught.value.details[1] and "rad_id is blank" in caught.value.details[3]


def test_the_real_vinbigdata_file_reads_with_three_readers_per_image() -> None:
    path = _real("vinbigdata-train.csv.gz")
    assert detect_format(path) == F.VINDR
    result = read_annotations([path], None, None)
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 67914
    with_box = [r for r in rows if r["x_min"]]
    assert len(result.regions) == len(with_box)
    assert result.left_out == {"no box (No finding / global label)": len(rows) - len(with_box)}
    counts = np.array([len(readers) for readers in result.readers.values()])
    assert len(result.readers) == len({r["image_id"] for r in rows}) and np.mean(counts == 3) > 0.9
    first = result.regions[0]
    assert (first.filename, first.label, first.reader, first.box) == (
        with_box[0]["image_id"], with_box[0]["class_name"], with_box[0]["rad_id"],
        tuple(float(with_box[0][c]) for c in ("x_min", "y_min", "x_max", "y_max")))
    vindr = read_annotations([path], None, VINDR)
    assert len(vindr.regions) == len(with_box)


def test_chexlocalize_masks_decode_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    blob = rng.random((40, 30)) > 0.7
    empty = np.zeros((40, 30), dtype=bool)
    path = _json(tmp_path / "gt_segmentations_val.json", {
        "patient64622_study1_view1_frontal": {"Airspace Opacity": _coco_rle(blob), "Edema": _coco_rle(empty),
                                              "Cardiomegaly": _coco_rle(blob.T.copy().T)},
        "patient00001_study1_view1_frontal": {"Edema": _coco_rle(blob)}})
    assert detect_format(path) == F.CHEXLOCALIZE
    known = {"CheXpert-v1.0/valid/patient64622/study1/view1_frontal.jpg"}
    result = read_annotations([path], known, ["Lung Opacity", "Edema"])
    region = _only(result)
    assert (region.filename, region.label, region.source) == (
        "CheXpert-v1.0/valid/patient64622/study1/view1_frontal.jpg", "Lung Opacity",
        f"{path}:patient64622_study1_view1_frontal/Airspace Opacity")
    assert isinstance(region.shape, Mask) and region.shape.frame == (40, 30)
    assert np.array_equal(region.original_mask((40, 30)), blob)
    assert np.array_equal(region.original_mask((80, 60)), np.kron(blob, np.ones((2, 2), dtype=bool)))
    assert result.readers == {"CheXpert-v1.0/valid/patient64622/study1/view1_frontal.jpg":
                              ("gt_segmentations_val.json",)}
    assert result.left_out == {"empty mask": 1, "label the run does not have": 1, "image not in the dataset": 1}


def test_the_rle_parser_matches_pycocotools_run_lengths() -> None:
    rng = np.random.default_rng(1)
    for shape, density in [((7, 5), 0.5), ((64, 48), 0.9), ((300, 200), 0.02), ((3, 3), 0.0), ((4, 4), 1.0)]:
        mask = rng.random(shape) < density
        assert rle_counts(str(_coco_rle(mask)["counts"])) == _runs_column_major(mask)
    big = np.zeros((2000, 2000), dtype=bool)
    big[1500:, 1500:] = True                          # long runs: several 5-bit groups, negative differences
    assert rle_counts(str(_coco_rle(big)["counts"])) == _runs_column_major(big)


@pytest.mark.parametrize("counts, reason", [("", "covers 0 pixels"), ("zzz~", "not a compressed COCO RLE string"),
                                            ("0", "covers 0 pixels"), ("a", "not a compressed COCO RLE string"),
                                            ("9/", "not a compressed COCO RLE string")])
def test_a_broken_rle_is_a_bad_row(tmp_path: Path, counts: str, reason: str) -> None:
    path = _json(tmp_path / "gt_segmentations_val.json", {
        "p1_study1_view1_frontal": {"Edema": _coco_rle(np.ones((4, 4), bool)),
                                    "Cardiomegaly": {"size": [4, 4], "counts": counts}}})
    with pytest.raises(InputError, match=rf"1 bad row\(s\); first: .*json:p1_study1_view1_frontal/Cardiomegaly: .*{reason}"):
        read_annotations([path], None, None)


def test_chexlocalize_polygons_are_rasterised(tmp_path: Path) -> None:
    triangle = [(3.0, 2.0), (36.0, 9.5), (12.5, 30.0)]
    path = _json(tmp_path / "gt_annotations_val.json", {
        "patient64622_study1_view1_frontal": {
            "img_size": [40, 50],
            "Cardiomegaly": [[[2, 1], [6, 1], [6, 4], [2, 4]], [[40, 30], [45, 30], [45, 35], [40, 35]]],
            "Lung Lesion": [[list(p) for p in triangle]]}})
    assert detect_format(path) == F.CHEXLOCALIZE_POLYGONS
    result = read_annotations([path], None, None)
    by_label = {r.label: r for r in result.regions}
    # CheXlocalize's own converter draws with PIL: pixel centres at whole coordinates, outline included.
    rectangles = np.zeros((40, 50), dtype=bool)
    rectangles[1:5, 2:7] = rectangles[30:36, 40:46] = True
    assert np.array_equal(by_label["Cardiomegaly"].original_mask((40, 50)), rectangles)
    inside, distance = _inside_polygon([(x + 0.5, y + 0.5) for x, y in triangle], 40, 50)
    drawn = by_label["Lung Lesion"].original_mask((40, 50))
    clear = distance > 1.0                            # rasterisers may differ on pixels the edge crosses
    assert np.array_equal(drawn[clear], inside[clear]) and drawn.sum() > 100
    bad = _json(tmp_path / "bad.json", {"p1_study1_view1_frontal": {"img_size": [4, 4], "Edema": [[[1, 1], [2, 2]]]},
                                        "p2_study1_view1_frontal": {"img_size": [4, 4], "Edema": [[[1, "x"], [2, 2],
                                                                                                   [3, 3]]]},
                                        "p3_study1_view1_frontal": {"img_size": "big"}})
    with pytest.raises(InputError, match=r"3 bad row\(s\)") as caught:
        read_annotations([bad], None, None, fmt=F.CHEXLOCALIZE_POLYGONS)
    assert _bad_rows(caught, tmp_path) == ["bad.json:p1_study1_view1_frontal/Edema",
                                           "bad.json:p2_study1_view1_frontal/Edema", "bad.json:p3_study1_view1_frontal"]


def test_ms_cxr_boxes_carry_their_frame_and_sentence(tmp_path: Path) -> None:
    header = ["path", "dicom_id", "category_name", "label_text", "x", "y", "w", "h", "image_width", "image_height"]
    text = "Small left apical pneumothorax, ~1 cm"
    path = _csv(tmp_path / "MS_CXR_Local_Alignment_v1.0.0.csv", header, [
        ["files/p10/p10000032/s1/d1.jpg", "d1", "Pneumothorax", text, 10, 20, 30, 40, 100, 200],
        ["files/p10/p10000032/s1/d2.jpg", "d2", "Pneumothorax", text, 1, 2, 3, 4, 100, 200]])
    assert detect_format(path) == F.MS_CXR
    result = read_annotations([path], {"files/p10/p10000032/s1/d1.jpg"}, CHEXPERT)
    region = _only(result)
    assert (region.filename, region.label, region.text, region.box) == (
        "files/p10/p10000032/s1/d1.jpg", "Pneumothorax", text, (10, 20, 40, 60))
    assert isinstance(region.shape, Box) and region.shape.frame == (200, 100)
    assert region.box_on((100, 50)) == (5, 10, 20, 30)
    assert result.left_out == {"image not in the dataset": 1}
    bad = _csv(tmp_path / "bad.csv", header, [["p", "d1", "Edema", "t", 1, 2, -3, 4, 100, 200],
                                              ["p", "d1", "Edema", "t", 1, 2, 3, 4, 100.5, 200]])
    with pytest.raises(InputError, match=r"2 bad row\(s\)") as caught:
        read_annotations([bad], None, None)
    assert _bad_rows(caught, tmp_path) == ["bad.csv:2", "bad.csv:3"]


def test_rsna_targets_and_label_fallback(tmp_path: Path) -> None:
    path = _csv(tmp_path / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], [
        ["p1", "", "", "", "", 0], ["p2", 264.0, 152.0, 213.0, 379.0, 1], ["p2", 562.0, 152.0, 256.0, 453.0, 1],
        ["p9", 1, 2, 3, 4, 1]])
    assert detect_format(path) == F.RSNA
    known = {"stage_2_train_images/p1.dcm", "stage_2_train_images/p2.dcm"}
    result = read_annotations([path], known, CHEXPERT)
    assert [(r.filename, r.label, r.box) for r in result.regions] == [
        ("stage_2_train_images/p2.dcm", "Pneumonia", (264, 152, 477, 531)),
        ("stage_2_train_images/p2.dcm", "Pneumonia", (562, 152, 818, 605))]
    assert set(result.readers) == known
    assert result.left_out == {"no box (Target 0)": 1, "image not in the dataset": 1}
    assert {r.label for r in read_annotations([path], known, ["Lung Opacity", "Edema"]).regions} == {"Lung Opacity"}
    with pytest.raises(InputError, match=r"no annotation of the run's images and labels \(left out: 1 image not in the "
                                         r"dataset, 2 label the run does not have, 1 no box \(Target 0\)\)"):
        read_annotations([path], known, ["Edema"])
    bad = _csv(tmp_path / "bad.csv", ["patientId", "x", "y", "width", "height", "Target"],
               [["p1", "", "", "", "", 2], ["p2", "", 1, 2, 3, 1]])
    with pytest.raises(InputError, match=r"2 bad row\(s\); first: .*bad.csv:2: Target '2': must be 0 or 1"):
        read_annotations([bad], None, None)


def test_the_real_rsna_zip_reads() -> None:
    path = _real("kaggle_stage_2_train_labels.csv.zip")
    assert detect_format(path) == F.RSNA
    result = read_annotations([path], None, None)
    with zipfile.ZipFile(path) as archive, archive.open(archive.namelist()[0]) as member:
        rows = list(csv.DictReader(io.TextIOWrapper(member, encoding="utf-8")))
    positives = [r for r in rows if r["Target"] == "1"]
    assert len(result.regions) == len(positives) and {r.label for r in result.regions} == {"Pneumonia"}
    assert len(result.readers) == len({r["patientId"] for r in rows})
    x, y, w, h = (float(positives[0][c]) for c in ("x", "y", "width", "height"))
    assert result.regions[0].box == (x, y, x + w, y + h)


def test_siim_relative_run_lengths(tmp_path: Path) -> None:
    path = _siim(tmp_path / "train-rle.csv", [["1.2.3", " 5 2 3 1"], ["1.2.3", " 0 1"], ["1.2.4", " -1"],
                                              ["1.2.5", " 30 2"]])
    assert detect_format(path) == F.SIIM
    known = {"dicom-images-train/1.2.3/1.2.3.1/1.2.3.dcm", "dicom-images-train/1.2.4/1.2.4.1/1.2.4.dcm",
             "dicom-images-train/1.2.5/1.2.5.1/1.2.5.dcm"}
    result = read_annotations([path], known, CHEXPERT)
    assert [(r.filename.rsplit("/", 1)[-1], r.label) for r in result.regions] == [
        ("1.2.3.dcm", "Pneumothorax"), ("1.2.3.dcm", "Pneumothorax"), ("1.2.5.dcm", "Pneumothorax")]
    first = result.regions[0].original_mask((3, 4))  # height 3, width 4: 12 pixels, column-major
    assert np.array_equal(first, _siim_brute_force("5 2 3 1", 3, 4))
    expected = np.zeros(12, dtype=bool)
    expected[[5, 6, 10]] = True
    assert np.array_equal(first, expected.reshape(4, 3).T)
    assert result.left_out == {"no mask (-1)": 1} and len(result.readers) == 3
    with pytest.raises(InputError, match=rf"^{re.escape(str(path))}:5: the run-length code ends at pixel 32, past "
                                         r"the 12 pixels of its 4×3 image"):
        result.regions[2].original_mask((3, 4))
    bad = _siim(tmp_path / "bad.csv", [["1.2.3", "1 x"], ["1.2.3", "1 2 3"], ["1.2.3", "1 0"], ["1.2.3", ""]])
    with pytest.raises(InputError, match=r"4 bad row\(s\)") as caught:
        read_annotations([bad], None, None)
    assert _bad_rows(caught, tmp_path) == ["bad.csv:2", "bad.csv:3", "bad.csv:4", "bad.csv:5"]


def test_the_real_siim_file_decodes_like_the_brute_force_decoder() -> None:
    path = _real("siim-pneumothorax-train-rle.csv.gz")
    assert detect_format(path) == F.SIIM
    result = read_annotations([path], None, None)
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    drawn = [row for row in rows if row[1].strip() != "-1"]
    assert len(result.regions) == len(drawn) and result.left_out == {"no mask (-1)": len(rows) - len(drawn)}
    for index in (0, 1, 100, len(drawn) - 1):
        region = result.regions[index]
        assert region.filename == drawn[index][0]
        mask = region.original_mask((1024, 1024))
        assert np.array_equal(mask, _siim_brute_force(drawn[index][1], 1024, 1024)) and mask.any()


def test_coco_boxes_polygons_and_rles(tmp_path: Path) -> None:
    blob = np.zeros((6, 8), dtype=bool)
    blob[2:5, 3] = blob[0, 7] = True
    uncompressed = {"size": [6, 8], "counts": _runs_column_major(blob)}
    path = _json(tmp_path / "coco.json", {
        "images": [{"id": 1, "file_name": "imgs/a.png", "width": 8, "height": 6},
                   {"id": 2, "file_name": "imgs/b.png", "width": 8, "height": 6},
                   {"id": 3, "file_name": "imgs/zz.png", "width": 8, "height": 6}],
        "categories": [{"id": 1, "name": "Cardiomegaly"}, {"id": 2, "name": "Effusion"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 2]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [2, 1, 4, 3], "attributes": {"reader": "dr-a"},
             "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]]},
            {"id": 3, "image_id": 1, "category_id": 1, "segmentation": _coco_rle(blob), "iscrowd": 1, "reader": 7},
            {"id": 4, "image_id": 1, "category_id": 1, "segmentation": uncompressed, "iscrowd": 1},
            {"id": 5, "image_id": 3, "category_id": 1, "bbox": [1, 2, 3, 2]}]})
    assert detect_format(path) == F.COCO
    result = read_annotations([path], {"a.png", "b.png"}, CHEXPERT)
    assert [(r.filename, r.label, r.reader, r.source.rsplit(":", 1)[-1]) for r in result.regions] == [
        ("a.png", "Cardiomegaly", "coco.json", "annotations[0]"), ("a.png", "Pleural Effusion", "dr-a", "annotations[1]"),
        ("a.png", "Cardiomegaly", "7", "annotations[2]"), ("a.png", "Cardiomegaly", "coco.json", "annotations[3]")]
    box, polygon, compressed, plain = result.regions
    assert box.box == (1, 2, 4, 4) and isinstance(box.shape, Box) and box.shape.frame == (6, 8)
    rectangle = np.zeros((6, 8), dtype=bool)
    rectangle[1:4, 2:6] = True
    assert np.array_equal(polygon.original_mask((6, 8)), rectangle)
    assert np.array_equal(compressed.original_mask((6, 8)), blob)
    assert np.array_equal(plain.original_mask((6, 8)), blob)
    assert np.array_equal(compressed.original_mask((12, 16)), np.kron(blob, np.ones((2, 2), dtype=bool)))
    assert result.readers == {"a.png": ("7", "coco.json", "dr-a"), "b.png": ("coco.json",)}
    assert result.left_out == {"image not in the dataset": 1}
    bad = _json(tmp_path / "bad.json", {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}, {"id": 2, "file_name": "b.png"}],
        "categories": [{"id": 1, "name": "Edema"}],
        "annotations": [{"id": 1, "image_id": 9, "category_id": 1, "bbox": [1, 2, 3, 2]},
                        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 2, -3, 2]},
                        {"id": 3, "image_id": 1, "category_id": 1, "segmentation": {"size": [5, 8], "counts": "PT0"}},
                        {"id": 4, "image_id": 1, "category_id": 1, "segmentation": {"size": [6, 8], "counts": ""}},
                        {"id": 5, "image_id": 1, "category_id": 1, "segmentation": [[1, 2, 3, 4]]},
                        {"id": 6, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 2]}]})
    with pytest.raises(InputError, match=r"6 bad row\(s\); first: .*bad.json:images\[1\]") as caught:
        read_annotations([bad], None, None)
    assert _bad_rows(caught, tmp_path) == ["bad.json:images[1]"] + [f"bad.json:annotations[{i}]" for i in range(5)]


# ---------------------------------------------------------------------------------------------
# Matching names, several readers
# ---------------------------------------------------------------------------------------------

def test_image_keys_and_ambiguous_stems(tmp_path: Path) -> None:
    assert image_keys("CheXpert-v1.0/valid/patient64622/study1/view1_frontal.jpg") == [
        "CheXpert-v1.0/valid/patient64622/study1/view1_frontal.jpg", "view1_frontal.jpg", "view1_frontal",
        "CheXpert-v1.0/valid/patient64622/study1/view1_frontal", "patient64622_study1_view1_frontal"]
    assert image_keys("1.2.276.0.1.dcm") == ["1.2.276.0.1.dcm", "1.2.276.0.1"]   # only image suffixes are stripped
    assert image_keys("x.dcm.png") == ["x.dcm.png", "x"]
    path = _nih(tmp_path / "BBox_List_2017.csv", [["00000001_000.png", "Mass", 1, 2, 3, 4],
                                                  ["00000002_000.png", "Mass", 1, 2, 3, 4],
                                                  ["images/00000001_000.png", "Mass", 1, 2, 3, 4]])
    known = {"images/00000001_000.png", "other/00000001_000.png", "images/00000002_000.jpg"}
    result = read_annotations([path], known, NIH)
    assert [r.filename for r in result.regions] == ["images/00000002_000.jpg", "images/00000001_000.png"]
    assert result.left_out == {"image name matches several images in the dataset": 1}


def test_labels_match_exactly_case_insensitively_or_through_chexpert() -> None:
    nih = LabelMatcher(NIH)
    assert nih.match("Mass") == ("Mass", "")
    assert nih.match("EFFUSION") == ("Effusion", "")
    assert nih.match("Pleural Effusion") == ("Effusion", "")
    assert nih.match("Lung Lesion") == (None, "ambiguous label")          # Mass and Nodule
    assert nih.match("Nodule/Mass") == (None, "ambiguous label")
    assert nih.match("Support Devices") == (None, "label the run does not have")
    chexpert = LabelMatcher(CHEXPERT)
    assert chexpert.match("Airspace Opacity") == ("Lung Opacity", "")
    assert chexpert.match("Effusion") == ("Pleural Effusion", "")
    assert chexpert.match("Pleural effusion") == ("Pleural Effusion", "")
    assert chexpert.match("Aortic enlargement") == ("Enlarged Cardiomediastinum", "")
    assert LabelMatcher(VINDR).match("Effusion") == ("Pleural effusion", "")
    assert LabelMatcher(None).match("anything") == ("anything", "")
    assert LabelMatcher(["Opacity", "opacity"]).match("OPACITY") == (None, "ambiguous label")


def test_several_files_are_several_readers(tmp_path: Path) -> None:
    header = ["filename", "label", "x0", "y0", "x1", "y1"]
    for folder in ("ann1", "ann2"):
        (tmp_path / folder).mkdir()
    one = _csv(tmp_path / "ann1" / "boxes.csv", header, [["a.png", "Edema", 1, 2, 3, 4]])
    two = _csv(tmp_path / "ann2" / "boxes.csv", header, [["a.png", "Edema", 1, 2, 5, 6], ["b.png", "Edema", 1, 2, 5, 6]])
    three = _csv(tmp_path / "reader3.csv", header, [["a.png", "Edema", 1, 1, 3, 3]])
    result = read_annotations([one, two, three], {"a.png", "b.png"}, ["Edema"])
    assert [r.reader for r in result.regions] == ["ann1/boxes.csv", "ann2/boxes.csv", "ann2/boxes.csv", "reader3.csv"]
    assert result.readers == {"a.png": ("ann1/boxes.csv", "ann2/boxes.csv", "reader3.csv"), "b.png": ("ann2/boxes.csv",)}
    assert result.multi_reader_images() == {"a.png"} and result.format == F.BOXES
    assert set(result.sha256) == {str(one), str(two), str(three)}
    vindr = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    v1 = _csv(tmp_path / "v1.csv", vindr, [["a", "R1", "Edema", 1, 2, 3, 4]])
    v2 = _csv(tmp_path / "v2.csv", vindr, [["a", "R1", "Edema", 1, 2, 3, 4], ["b", "R2", "No finding", "", "", "", ""]])
    alone = read_annotations([v1, three], {"a.png", "b.png"}, ["Edema"])
    assert alone.readers == {"a.png": ("R1", "reader3.csv")} and alone.format == F.VINDR
    both = read_annotations([v1, v2], {"a.png", "b.png"}, ["Edema"])      # train + test files: one R1
    assert both.readers == {"a.png": ("R1",), "b.png": ("R2",)}
    assert [r.reader for r in both.regions] == ["R1", "R1"]
    with pytest.raises(InputError, match="given twice"):
        read_annotations([one, one], None, None)
    with pytest.raises(InputError, match="no file given"):
        read_annotations([], None, None)


def test_bad_rows_are_listed_up_to_fifty(tmp_path: Path) -> None:
    path = _nih(tmp_path / "BBox_List_2017.csv", [["a.png", "Mass", "x", 1, 1, 1]] * 60)
    with pytest.raises(InputError) as caught:
        read_annotations([path], None, None)
    assert str(caught.value) == (f"annotations {path}: 60 bad row(s); first: {path}:2: x, y, w, h must be numbers")
    assert len(caught.value.details) == 50 and caught.value.parameter == "annotations"
    with pytest.raises(InputError, match=r"left out: 60 image not in the dataset\)"):
        read_annotations([_nih(tmp_path / "none.csv", [["a.png", "Mass", 1, 1, 1, 1]] * 60)], {"b.png"}, NIH)


# ---------------------------------------------------------------------------------------------
# Hostile files
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_or_device_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "annotations.csv"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a character device")):
        with pytest.raises(InputError, match=rf"^annotations {re.escape(str(path))}: is {kind}, not a regular file$"):
            read_annotations([path], None, None)
        with pytest.raises(InputError, match="not a regular file"):
            detect_format(path)
    masks = tmp_path / "masks"
    masks.mkdir()
    os.mkfifo(masks / "a__edema.png")
    with pytest.raises(InputError, match=r"1 bad row\(s\); first: .*a__edema.png: is a FIFO, not a regular file"):
        read_annotations([masks], None, None)
    boxes = _csv(tmp_path / "boxes.csv", ["filename", "label", "x0", "y0", "x1", "y1"], [["a.png", "Edema", 0, 0, 1, 1]])
    region = _only(read_annotations([boxes], None, None, masks=masks))
    with pytest.raises(InputError, match=r"^masks .*a__edema.png: is a FIFO, not a regular file"):
        region.original_mask((8, 8))


def test_broken_containers_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(path: Path, pattern: str) -> None:
        with pytest.raises(InputError, match=pattern) as caught:
            read_annotations([path], None, None)
        assert "\n" not in str(caught.value) and str(caught.value).startswith(f"annotations {path}: ")

    fake = tmp_path / "boxes.csv.gz"
    fake.write_text("filename,label,x0,y0,x1,y1\n")
    refused(fake, r"cannot be read \(Not a gzipped file")
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(b"filename,label,x0,y0,x1,y1\n" * 100)[:40])
    refused(cut, r"cannot be read")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("filename,label,x0,y0,x1,y1\nä.png,Edema,1,1,2,2\n".encode("latin-1"))
    refused(latin, r"not UTF-8 text$")
    refused(_json(tmp_path / "empty.json", {}), r"a JSON document of no known shape")
    (tmp_path / "bad.json").write_text('{"a": ')
    with pytest.raises(InputError, match=r"bad.json: not valid JSON"):
        read_annotations([tmp_path / "bad.json"], None, None, fmt=F.COCO)
    for members, pattern in (({"a.csv": "x", "b.csv": "y"}, r"exactly one .csv file; it holds 2 members"),
                             ({"../a.csv": "x"}, r"zip member '../a.csv': not a plain .csv file name"),
                             ({"sub/a.csv": "x"}, r"zip member 'sub/a.csv': not a plain .csv file name"),
                             ({"a.txt": "x"}, r"not a plain .csv file name")):
        archive = tmp_path / f"labels{len(list(tmp_path.glob('*.zip')))}.csv.zip"
        with zipfile.ZipFile(archive, "w") as writer:
            for name, text in members.items():
                writer.writestr(name, text)
        refused(archive, pattern)
    (tmp_path / "junk.zip").write_bytes(b"PK not really")
    refused(tmp_path / "junk.zip", r"cannot be read")
    monkeypatch.setattr(base, "MAX_JSON_BYTES", 100)
    refused(_json(tmp_path / "large.json", {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x" * 200}]}),
            r"a JSON document over the limit of 100 bytes; refused")
    monkeypatch.setattr(base, "MAX_FILE_BYTES", 1000)
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress(b"filename,label,x0,y0,x1,y1\n" + b"a.png,Edema,1,1,2,2\n" * 1000))
    assert bomb.stat().st_size < 1000
    refused(bomb, r"holds more than 1,000 bytes; refused")
    refused(_csv(tmp_path / "big.csv", ["filename", "label"], [["x" * 600, "y" * 600]]), r"over the limit of 1,000")


def test_huge_frames_far_vertices_and_overflowing_runs_are_bad_rows(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A few bytes must not allocate gigabytes, crash a rasteriser or overflow a counter: a frame
    over the pixel limit (COCO RLE, COCO image, CheXlocalize size and img_size), a polygon vertex
    far outside its image, SIIM runs past the limit (up to 2^64) and more rows than the cap are
    refused by file and row, in one line, before anything is decoded."""
    def bad(path: Path, pattern: str) -> None:
        with pytest.raises(InputError, match=pattern) as caught:
            read_annotations([path], None, None)
        assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)

    huge = [100_000, 100_000]
    bad(_json(tmp_path / "gt_segmentations_val.json",
              {"patient1_study1_view1_frontal": {"Edema": {"size": huge, "counts": "0PPigPZ9"}}}), r"1 bad row")
    bad(_json(tmp_path / "gt_annotations_val.json",
              {"patient1_study1_view1_frontal": {"img_size": huge, "Edema": [[[1, 1], [3, 1], [3, 3]]]}}), r"1 bad row")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 100_000, "height": 100_000}],
            "categories": [{"id": 1, "name": "Edema"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}]}
    bad(_json(tmp_path / "huge.json", coco), r"over the limit of 50,000,000")
    for vertex in (4.3e8, 1e12, -50.0):
        far = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
               "categories": [{"id": 1, "name": "Edema"}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                "segmentation": [[1, 1, vertex, 2, 3, 3]]}]}
        bad(_json(tmp_path / "far.json", far), r"vertex lies outside the 64×64 image")
        polygons = {"patient1_study1_view1_frontal": {"img_size": [64, 64], "Edema": [[[1, 1], [vertex, 1], [3, 3]]]}}
        bad(_json(tmp_path / "gt_annotations_test.json", polygons), r"vertex lies outside")
    for code in (f"1 {2 ** 63}", f"{4 * 10 ** 18} 1 {4 * 10 ** 18} 1", f"{2 ** 64} 2"):
        bad(_siim(tmp_path / "train-rle.csv", [["img", code]]), r"EncodedPixels run past 50,000,000 pixels")
    monkeypatch.setattr(base, "MAX_ROWS", 3)
    rows = [["a.png", "Edema", 1, 1, 2, 2]] * 4
    bad(_csv(tmp_path / "many.csv", ["filename", "label", "x0", "y0", "x1", "y1"], rows), r"more than 3 rows")
