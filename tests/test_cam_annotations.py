"""Expert annotations for Grad-CAM: boxes and masks land on the pixels the model sees (its resize
and centre crop), and a bad annotation file (unknown file or label, bad box, missing column, broken
or mis-sized mask) is named by file and row, exits cleanly and stores nothing."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from embedstore.annotations import InputGeometry, mask_name
from embedstore.cam.run import ValidateConfig, validate
from embedstore.errors import InputError
from embedstore.models import load_model
from embedstore.store import Store


def test_boxes_follow_the_models_resize_and_centre_crop(native_model: str) -> None:
    from PIL import Image

    transform = load_model(native_model).pixel_transform          # Resize(48, bicubic) + CenterCrop(48)
    geometry = InputGeometry.from_transform(transform, (100, 200))  # height 100, width 200
    assert geometry.resized == (48, 96) and (geometry.top, geometry.left) == (0, 24)
    assert geometry.box(60, 10, 100, 30) == pytest.approx((60 * 0.48 - 24, 4.8, 100 * 0.48 - 24, 14.4))
    assert geometry.box(0, 0, 30, 100)[2] == 0.0                    # cropped away entirely
    # Against the model's own pipeline: a white box drawn in original pixels lands where we say.
    original = np.zeros((100, 200), dtype=np.uint8)
    original[20:70, 80:150] = 255
    seen = transform(Image.fromarray(original).convert("RGB")).numpy()[0] > 0.5
    ours = geometry.box_mask(80, 20, 150, 70)
    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return np.count_nonzero(a & b) / np.count_nonzero(a | b)

    assert iou(seen, ours) > 0.9
    assert iou(geometry.mask(original), ours) > 0.9     # masks and boxes agree up to the edge pixels
    assert iou(geometry.mask(original), seen) > 0.9
    portrait = InputGeometry.from_transform(transform, (300, 150))
    assert portrait.resized == (96, 48) and (portrait.top, portrait.left) == (24, 0)


def _annotation_file(path: Path, rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label", "x0", "y0", "x1", "y1"])
        writer.writerows(rows)
    return path


BAD_ROWS = [
    (["nope.png", "Cardiomegaly", 1, 1, 9, 9], r"annotations.csv:3: unknown filename 'nope.png'"),
    (["{real}", "Heart Attack", 1, 1, 9, 9], r"annotations.csv:3: unknown label 'Heart Attack'"),
    (["{real}", "Cardiomegaly", 9, 1, 2, 9], r"annotations.csv:3: empty or negative box"),
    (["{real}", "Cardiomegaly", "a", 1, 2, 9], r"annotations.csv:3: box coordinates must be numbers"),
]


@pytest.mark.parametrize("row, message", BAD_ROWS)
def test_bad_annotation_rows_are_named(cam_store: tuple[Store, dict[str, str]], synthetic_dir: Path, tmp_path: Path,
                                       row: list[object], message: str) -> None:
    store, runs = cam_store
    with open(synthetic_dir / "annotations.csv") as handle:
        good = next(csv.reader(handle.readlines()[1:2]))
    row = [good[0] if value == "{real}" else value for value in row]
    path = _annotation_file(tmp_path / "annotations.csv", [good, row])
    with pytest.raises(InputError, match=f"^annotations {path}: 1 bad row\\(s\\); first: .*{message}"):
        validate(store, ValidateConfig(run=runs["ft-study"], annotations=path))


def test_bad_annotation_file_exits_cleanly_and_stores_nothing(cam_store: tuple[Store, dict[str, str]],
                                                              tmp_path: Path, run_cli: object) -> None:
    store, runs = cam_store
    path = _annotation_file(tmp_path / "annotations.csv", [["nope.png", "Cardiomegaly", 1, 1, 9, 9]])
    with store.reader() as con:
        before = con.execute("SELECT count(*) FROM gradcam").fetchall()[0][0]
    result = run_cli("gradcam", "validate", "--run", runs["ft-study"], "--annotations", str(path),
                     "--store", str(store.path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"embedstore: error: --annotations {path}: 1 bad row(s); first: {path}:2: unknown filename 'nope.png' "
        "(not in the run's dataset)")
    with store.reader() as con:
        assert con.execute("SELECT count(*) FROM gradcam").fetchall()[0][0] == before


def test_missing_columns_and_mask_files_are_named(cam_store: tuple[Store, dict[str, str]], synthetic_dir: Path,
                                                  tmp_path: Path) -> None:
    store, runs = cam_store
    bad = tmp_path / "boxes.csv"
    bad.write_text("filename,label,x0,y0\n")
    with pytest.raises(InputError, match="missing column\\(s\\) x1, y1"):
        validate(store, ValidateConfig(run=runs["ft-study"], annotations=bad))
    with pytest.raises(InputError, match="mask file .* is missing"):
        validate(store, ValidateConfig(run=runs["ft-study"], annotations=synthetic_dir / "annotations.csv",
                                       masks=tmp_path))
    # A broken or mis-sized mask of a test image is named, and nothing is stored.
    with store.reader() as con:
        test_files = {r[0] for r in con.execute("SELECT filename FROM samples WHERE split = 'test'").fetchall()}
        before = con.execute("SELECT count(*) FROM gradcam").fetchall()[0][0]
    with open(synthetic_dir / "annotations.csv") as handle:
        row = next(r for r in csv.reader(handle) if r[0] in test_files)
    one = _annotation_file(tmp_path / "one.csv", [row])
    masks = tmp_path / "masks"
    masks.mkdir()
    broken = masks / mask_name(row[0], row[1])
    broken.write_bytes(b"not a png")
    with pytest.raises(InputError, match=f"^masks {broken}: is truncated or not an image"):
        validate(store, ValidateConfig(run=runs["ft-study"], annotations=one, masks=masks))
    from PIL import Image

    Image.new("L", (7, 5)).save(broken, format="PNG")
    with pytest.raises(InputError, match=f"^masks {broken}: 7×5 pixels, but its image is 128×128"):
        validate(store, ValidateConfig(run=runs["ft-study"], annotations=one, masks=masks))
    with store.reader() as con:
        assert con.execute("SELECT count(*) FROM gradcam").fetchall()[0][0] == before
