"""Expert annotations (boxes or masks, in original image pixels) brought onto the model's input.

Boxes come as `filename,label,x0,y0,x1,y1` (x1/y1 exclusive, as `embedstore data sample` writes
them); masks as `<filename without .dcm.png / extension>__<label_lower_with_underscores>.png` in a
folder. Both are mapped through the model's own geometry: resize of the shortest side, then centre
crop (torchvision's rules), so an annotation lands on the pixels the model actually saw.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedstore.errors import InputError

BOX_COLUMNS = ("filename", "label", "x0", "y0", "x1", "y1")


@dataclass(frozen=True)
class InputGeometry:
    """Original (height, width) → model input: resize to (resized_h, resized_w), crop at (top, left)
    a (crop_h, crop_w) window."""

    original: tuple[int, int]
    resized: tuple[int, int]
    top: int
    left: int
    crop: tuple[int, int]

    @classmethod
    def from_transform(cls, pixel_transform: object, original: tuple[int, int]) -> InputGeometry:
        """Follow the Resize / CenterCrop steps of a torchvision Compose for an image of `original` size."""
        from torchvision import transforms

        height, width = original
        top = left = 0
        crop = (height, width)
        for step in getattr(pixel_transform, "transforms", [pixel_transform]):
            if isinstance(step, transforms.Resize):
                height, width = _resized(step.size, (height, width), step.max_size)
                crop = (height, width)
            elif isinstance(step, transforms.CenterCrop):
                crop_h, crop_w = size_pair(step.size)
                top += int(round((height - crop_h) / 2.0))
                left += int(round((width - crop_w) / 2.0))
                crop = (crop_h, crop_w)
            elif type(step).__name__ in {"ResizeKeepRatio", "RandomResizedCrop", "ResizeMaxSize"}:
                raise InputError(f"the model's preprocessing uses {type(step).__name__}; embedstore maps "
                                 "annotations only through Resize and CenterCrop")
        return cls(original, (height, width), top, left, crop)

    @property
    def scale(self) -> tuple[float, float]:
        return self.resized[0] / self.original[0], self.resized[1] / self.original[1]

    def box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        """A box in original pixels (edges; x1, y1 exclusive) → input pixels, clipped to the crop."""
        sy, sx = self.scale
        return (float(np.clip(x0 * sx - self.left, 0, self.crop[1])), float(np.clip(y0 * sy - self.top, 0, self.crop[0])),
                float(np.clip(x1 * sx - self.left, 0, self.crop[1])), float(np.clip(y1 * sy - self.top, 0, self.crop[0])))

    def box_mask(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Input pixels whose centre lies inside the mapped box."""
        bx0, by0, bx1, by1 = self.box(x0, y0, x1, y1)
        ys = np.arange(self.crop[0]) + 0.5
        xs = np.arange(self.crop[1]) + 0.5
        return ((ys >= by0) & (ys < by1))[:, None] & ((xs >= bx0) & (xs < bx1))[None, :]

    def mask(self, original_mask: np.ndarray) -> np.ndarray:
        """A mask in original pixels → input pixels (bilinear resize, then half-threshold, then crop)."""
        from PIL import Image

        image = Image.fromarray((original_mask > 0).astype(np.uint8) * 255)
        resized = np.asarray(image.resize((self.resized[1], self.resized[0]), Image.Resampling.BILINEAR)) >= 128
        return _window(resized, self.top, self.left, self.crop)


def size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from torchvision/timm size values: an int, or a sequence of one or two."""
    if isinstance(size, int):
        return size, size
    return (int(size[0]), int(size[0])) if len(size) == 1 else (int(size[0]), int(size[1]))


def _resized(size: int | Sequence[int], original: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    """torchvision's output size: an int resizes the shorter side (the longer one truncated)."""
    height, width = original
    if not isinstance(size, int) and len(size) == 2:
        return int(size[0]), int(size[1])
    target = size if isinstance(size, int) else int(size[0])
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = target, int(target * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if height <= width else (new_long, new_short)


def _window(array: np.ndarray, top: int, left: int, crop: tuple[int, int]) -> np.ndarray:
    """array[top:top+h, left:left+w], zero-padded where the window leaves the array (CenterCrop pads)."""
    out = np.zeros(crop, dtype=array.dtype)
    src_y0, src_x0 = max(top, 0), max(left, 0)
    src_y1, src_x1 = min(top + crop[0], array.shape[0]), min(left + crop[1], array.shape[1])
    if src_y1 > src_y0 and src_x1 > src_x0:
        out[src_y0 - top:src_y1 - top, src_x0 - left:src_x1 - left] = array[src_y0:src_y1, src_x0:src_x1]
    return out


@dataclass(frozen=True)
class Annotation:
    """One expert annotation of one label on one image (original pixels)."""

    filename: str
    label: str
    box: tuple[float, float, float, float]
    row: int
    mask_path: Path | None = None

    def input_mask(self, geometry: InputGeometry) -> np.ndarray:
        """The annotated region on the model's input pixels."""
        if self.mask_path is None:
            return geometry.box_mask(*self.box)
        from embedstore.images import load_rgb, shown

        try:  # the images' own decoder: regular files only, size and pixel limits (an 8-bit mask is kept as is)
            image, _ = load_rgb(self.mask_path)
        except InputError as error:
            raise InputError(f"masks {shown(self.mask_path)}: {error}", parameter="masks") from None
        pixels = np.asarray(image.convert("L"))
        if pixels.shape != geometry.original:
            raise InputError(f"masks {shown(self.mask_path)}: {pixels.shape[1]}×{pixels.shape[0]} pixels, but its image is "
                             f"{geometry.original[1]}×{geometry.original[0]}", parameter="masks")
        return geometry.mask(pixels)


def mask_name(filename: str, label: str) -> str:
    """The mask file of (image, label): `<stem>__<label_lower_with_underscores>.png`."""
    stem = filename.removesuffix(".dcm.png")
    stem = stem if stem != filename else Path(filename).stem
    return f"{stem}__{label.lower().replace(' ', '_')}.png"


def read_annotations(path: Path, known_files: set[str], known_labels: Sequence[str],
                     masks: Path | None = None) -> list[Annotation]:
    """Every row of a box file, checked: columns, numbers, box order, filenames the dataset has,
    labels the run has, mask files present. All problems are listed, then one error is raised."""
    try:
        handle = open(path, newline="", encoding="utf-8")
    except OSError as error:
        raise InputError(f"annotations {path}: cannot be read ({error.strerror})", parameter="annotations") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in BOX_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"annotations {path}: missing column(s) {', '.join(missing)} "
                             f"(expected {','.join(BOX_COLUMNS)})", parameter="annotations")
        rows = list(reader)
    if masks is not None and not masks.is_dir():
        raise InputError(f"masks {masks}: not a folder", parameter="masks")
    annotations: list[Annotation] = []
    problems: list[str] = []
    for number, row in enumerate(rows, start=2):
        where = f"{path}:{number}"
        try:
            box = tuple(float(row[c]) for c in ("x0", "y0", "x1", "y1"))
        except (TypeError, ValueError):
            problems.append(f"{where}: box coordinates must be numbers")
            continue
        if row["filename"] not in known_files:
            problems.append(f"{where}: unknown filename {row['filename']!r} (not in the run's dataset)")
        elif row["label"] not in known_labels:
            problems.append(f"{where}: unknown label {row['label']!r}")
        elif not (box[0] < box[2] and box[1] < box[3]) or min(box) < 0:
            problems.append(f"{where}: empty or negative box {box} (need x0 < x1, y0 < y1, all ≥ 0)")
        else:
            mask_path = masks / mask_name(row["filename"], row["label"]) if masks is not None else None
            if mask_path is not None and not mask_path.exists():
                problems.append(f"{where}: mask file {mask_path} is missing")
                continue
            annotations.append(Annotation(row["filename"], row["label"], box, number, mask_path))  # type: ignore[arg-type]
    if problems:
        raise InputError(f"annotations {path}: {len(problems)} bad row(s); first: {problems[0]}", details=problems[:50],
                         parameter="annotations")
    if not annotations:
        raise InputError(f"annotations {path}: no annotation rows", parameter="annotations")
    return annotations
