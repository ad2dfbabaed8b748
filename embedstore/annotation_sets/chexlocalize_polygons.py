"""`chexlocalize-polygons`: CheXlocalize's `gt_annotations_{val,test}.json`: `{cxr_id: {"img_size":
[h, w], pathology: [[[x, y], …], …]}}`: each pathology's contours, rasterised and merged into one
mask per image and pathology as CheXlocalize's own converter draws them (PIL's polygon fill and
outline, pixel centres at whole coordinates — not COCO's convention, which puts pixel edges there).
Only positive pathologies appear. One reader."""

from __future__ import annotations

from functools import partial

import numpy as np

from embedstore.annotation_sets.base import FileRead, FormatReader, Mask, Source, json_number, json_size
from embedstore.annotation_sets.coco import polygon_outside
from embedstore.choices import AnnotationFormat
from embedstore.errors import InputError
from embedstore.images import shown

SIZE_KEY = "img_size"


def filled_polygons(polygons: list[list[float]], height: int, width: int,
                    original: tuple[int, int] | None = None) -> np.ndarray:
    """Checked flat polygons ([x0, y0, x1, y1, …]) filled and outlined on one bool mask, as
    CheXlocalize's annotation_to_segmentation draws them (PIL ImageDraw)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("1", (width, height))
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon(list(zip(polygon[0::2], polygon[1::2], strict=True)), outline=1, fill=1)
    return np.array(canvas, dtype=bool)


def sniff(source: Source) -> bool:
    document = source.document()
    if not isinstance(document, dict) or not document:
        return False
    first = next(iter(document.values()))
    return isinstance(first, dict) and SIZE_KEY in first


def _polygons(contours: object) -> list[list[float]] | None:
    """Contours [[[x, y], …], …] (three points or more each) as flat polygons, or None."""
    if not isinstance(contours, list):
        return None
    polygons = []
    for contour in contours:
        if not isinstance(contour, list) or len(contour) < 3:
            return None
        flat: list[float] = []
        for point in contour:
            values = [json_number(v) for v in point] if isinstance(point, list) else []
            if len(values) != 2 or values[0] is None or values[1] is None:
                return None
            flat += [values[0], values[1]]
        polygons.append(flat)
    return polygons


def read(source: Source, out: FileRead) -> None:
    document = source.document()
    if not isinstance(document, dict):
        raise InputError(f"annotations {shown(source.path)}: CheXlocalize annotations are an object "
                         "{cxr_id: {\"img_size\": [h, w], pathology: contours}}", parameter="annotations")
    for cxr_id, entry in document.items():
        size = json_size(entry.get(SIZE_KEY)) if isinstance(entry, dict) else None
        if not isinstance(entry, dict) or size is None:
            out.bad(out.where(cxr_id), "expected an object with \"img_size\": [height, width] and pathology contours")
            continue
        shapes = []
        for pathology, contours in entry.items():
            if pathology == SIZE_KEY:
                continue
            where = out.where(f"{cxr_id}/{pathology}")
            polygons = _polygons(contours)
            if polygons is None:
                out.bad(where, "expected a list of contours, each a list of three or more [x, y] points")
                continue
            outside = next((p for p in (polygon_outside(polygon, size) for polygon in polygons) if p), None)
            if outside:
                out.bad(where, outside)
                continue
            mask = Mask(partial(filled_polygons, polygons, *size), size) if polygons else None
            shapes.append((pathology, where, mask))
        out.add_image(cxr_id, shapes)


READER = FormatReader(AnnotationFormat.CHEXLOCALIZE_POLYGONS, "json", sniff, read,
                      "CheXlocalize gt_annotations_{val,test}.json, polygons")
