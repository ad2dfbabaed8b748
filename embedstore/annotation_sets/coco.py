"""`coco`: a COCO JSON file: `images` [{id, file_name, width, height}], `annotations` [{id,
image_id, category_id, bbox [x, y, w, h], segmentation (polygons, or RLE with compressed or
uncompressed counts), iscrowd}], `categories` [{id, name}]. A segmentation is a mask, else the bbox
a box, both on the image's (height, width). An annotation's reader is its `attributes.reader` or
`reader` where given, else the file's. Also the COCO RLE and polygon helpers CheXlocalize uses."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np

from embedstore.annotation_sets.base import (
    Box,
    FileRead,
    FormatReader,
    Mask,
    Source,
    box_problem,
    frame_problem,
    json_number,
)
from embedstore.choices import AnnotationFormat
from embedstore.errors import InputError
from embedstore.images import shown

KEYS = ("images", "annotations", "categories")


def rle_counts(counts: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string, or None where it is no such string.

    Each count is a little-endian sequence of 5-bit groups in characters 48–111 (bit 0x20: more
    groups follow; bit 0x10 of the last group: negative), and from the fourth count on each is
    stored as the difference from the count two places before it."""
    values: list[int] = []
    position, end = 0, len(counts)
    while position < end:
        value = shift = 0
        while True:
            if position >= end or shift > 60:
                return None
            code = ord(counts[position]) - 48
            if not 0 <= code < 64:
                return None
            value |= (code & 0x1F) << shift
            shift += 5
            position += 1
            if not code & 0x20:
                if code & 0x10:
                    value |= -1 << shift
                break
        if len(values) > 2:
            value += values[-2]
        values.append(value)
    return values


def rle_problem(counts: list[int], size: tuple[int, int]) -> str | None:
    """Why run lengths cannot be a mask of `size` (negative, or not summing to its pixels), or None."""
    if any(c < 0 for c in counts):
        return "the RLE has a negative run length"
    if sum(counts) != size[0] * size[1]:
        return f"the RLE covers {sum(counts):,} pixels, not the {size[0] * size[1]:,} of its {size[1]}×{size[0]} size"
    return None


def is_empty(counts: list[int]) -> bool:
    """Whether run lengths (zeros first) draw no pixel."""
    return not any(counts[1::2])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """pycocotools' compiled decoder warns under NumPy 2 (`copy=False`) on every call; the result is right."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def decode_rle(rle: dict[str, Any], original: tuple[int, int] | None = None) -> np.ndarray:
    """A checked RLE ({size, counts}: compressed bytes or uncompressed list) as a bool mask."""
    from pycocotools import mask as coco_mask

    height, width = rle["size"]
    with _quiet():
        if isinstance(rle["counts"], list):
            rle = coco_mask.frPyObjects(rle, height, width)
        return np.asarray(coco_mask.decode(rle)).astype(bool)


def polygons_mask(polygons: list[list[float]], height: int, width: int,
                  original: tuple[int, int] | None = None) -> np.ndarray:
    """Checked polygons ([x0, y0, x1, y1, …], three points or more each), merged into one bool mask."""
    from pycocotools import mask as coco_mask

    with _quiet():
        rles = coco_mask.frPyObjects(polygons, height, width)
        return np.asarray(coco_mask.decode(coco_mask.merge(rles))).astype(bool)


def polygon_problem(polygon: object) -> str | None:
    """Why a flat COCO polygon is none (not numbers, odd length, under three points), or None."""
    if not isinstance(polygon, list) or any(json_number(v) is None for v in polygon):
        return "a polygon must be a list of numbers [x0, y0, x1, y1, …]"
    if len(polygon) % 2 or len(polygon) < 6:
        return f"a polygon needs three points or more as x, y pairs; it has {len(polygon)} numbers"
    return None


def polygon_outside(polygon: list[float], frame: tuple[int, int]) -> str | None:
    """Why a checked polygon cannot be drawn on an image of `frame`: a vertex more than one pixel
    outside it (rasterisers crash or run for minutes on coordinates far outside the image)."""
    height, width = frame
    xs, ys = polygon[0::2], polygon[1::2]
    if min(xs) < -1 or max(xs) > width + 1 or min(ys) < -1 or max(ys) > height + 1:
        return f"a polygon vertex lies outside the {width}×{height} image"
    return None


def rle_shape(rle: dict[str, Any], frame: tuple[int, int]) -> tuple[Mask | None, str | None]:
    """A COCO RLE dict on an image of `frame` → (its mask, None), (None, None) when it draws
    nothing, or (None, why it is broken)."""
    size = rle.get("size")
    if not isinstance(size, list) or [*size] != [*frame]:
        return None, f"RLE size {size!r} is not the image's [height, width] {list(frame)}"
    if frame_problem(*frame):
        return None, f"RLE size: {frame_problem(*frame)}"
    counts = rle.get("counts")
    if isinstance(counts, str | bytes):
        text = counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts
        runs = rle_counts(text)
        if runs is None:
            return None, "RLE counts are not a compressed COCO RLE string"
        encoded: dict[str, Any] = {"size": list(frame), "counts": text.encode("ascii")}
    elif isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        runs, encoded = counts, {"size": list(frame), "counts": list(counts)}
    else:
        return None, "RLE counts must be a string or a list of whole numbers"
    problem = rle_problem(runs, frame)
    if problem:
        return None, problem
    return (None, None) if is_empty(runs) else (Mask(partial(decode_rle, encoded), frame), None)


def _is_id(value: object) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)


def _shape(annotation: dict[str, Any], frame: tuple[int, int]) -> tuple[Box | Mask | None, str | None]:
    """The annotation's segmentation as a mask, else its bbox as a box: (shape, None), (None, None)
    for an empty RLE, or (None, why it is broken)."""
    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, list) and segmentation:
        for polygon in segmentation:
            problem = polygon_problem(polygon)
            if problem:
                return None, problem
        polygons = [[float(v) for v in polygon] for polygon in segmentation]
        outside = next((p for p in map(partial(polygon_outside, frame=frame), polygons) if p), None)
        if outside:
            return None, outside
        return Mask(partial(polygons_mask, polygons, *frame), frame), None
    if isinstance(segmentation, dict) and segmentation:
        return rle_shape(segmentation, frame)
    if segmentation not in (None, [], {}):
        return None, "segmentation must be a list of polygons or an RLE object"
    bbox = annotation.get("bbox")
    values = [json_number(v) for v in bbox] if isinstance(bbox, list) else []
    if len(values) != 4 or any(v is None for v in values):
        return None, "no segmentation, and bbox is not [x, y, width, height] numbers"
    x, y, w, h = (float(v or 0.0) for v in values)
    problem = box_problem(x, y, x + w, y + h)
    return (None, problem) if problem else (Box(x, y, x + w, y + h, frame), None)


def _reader_id(annotation: dict[str, Any]) -> str | None:
    attributes = annotation.get("attributes")
    value = attributes.get("reader") if isinstance(attributes, dict) else None
    value = annotation.get("reader") if value is None else value
    return str(value) if _is_id(value) and str(value) else None


def sniff(source: Source) -> bool:
    document = source.document()
    return isinstance(document, dict) and all(key in document for key in KEYS)


def read(source: Source, out: FileRead) -> None:
    document = source.document()
    if not (isinstance(document, dict) and all(isinstance(document.get(key), list) for key in KEYS)):
        raise InputError(f"annotations {shown(source.path)}: a COCO file needs lists 'images', 'annotations' and "
                         "'categories'", parameter="annotations")
    categories: dict[object, str] = {}
    for index, category in enumerate(document["categories"]):
        where = out.where(f"categories[{index}]")
        if not isinstance(category, dict) or not _is_id(category.get("id")) or not isinstance(category.get("name"), str):
            out.bad(where, "a category needs an id and a name")
        elif category["id"] in categories:
            out.bad(where, f"category id {category['id']!r} appears twice")
        else:
            categories[category["id"]] = category["name"]
    images: dict[object, tuple[str, tuple[int, int]]] = {}
    for index, image in enumerate(document["images"]):
        where = out.where(f"images[{index}]")
        size = [image.get("height"), image.get("width")] if isinstance(image, dict) else [None, None]
        if (not isinstance(image, dict) or not _is_id(image.get("id")) or not isinstance(image.get("file_name"), str)
                or not image["file_name"] or frame_problem(*size)):
            out.bad(where, "an image needs an id, a file_name and positive whole width and height"
                    + (f" ({frame_problem(*size)})" if frame_problem(*size) else ""))
        elif image["id"] in images:
            out.bad(where, f"image id {image['id']!r} appears twice")
        else:
            images[image["id"]] = (image["file_name"], (int(image["height"]), int(image["width"])))
    annotated: set[object] = set()
    for index, annotation in enumerate(document["annotations"]):
        where = out.where(f"annotations[{index}]")
        if not isinstance(annotation, dict):
            out.bad(where, "an annotation must be an object")
            continue
        image_id, category_id = annotation.get("image_id"), annotation.get("category_id")
        if not _is_id(image_id) or image_id not in images:
            out.bad(where, f"image_id {image_id!r} is not in 'images'")
            continue
        if not _is_id(category_id) or category_id not in categories:
            out.bad(where, f"category_id {category_id!r} is not in 'categories'")
            continue
        file_name, frame = images[image_id]
        shape, problem = _shape(annotation, frame)
        if problem:
            out.bad(where, problem)
            continue
        annotated.add(image_id)
        out.add_image(file_name, [(categories[category_id], where, shape)], reader_id=_reader_id(annotation))
    for image_id, (file_name, _) in images.items():
        if image_id not in annotated:
            filename, _ = out.images.match(file_name)
            if filename is not None:
                out.read_by(filename)


READER = FormatReader(AnnotationFormat.COCO, "json", sniff, read, "COCO JSON with images, annotations, categories")
