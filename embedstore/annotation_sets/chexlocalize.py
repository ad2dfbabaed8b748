"""`chexlocalize`: CheXlocalize's `gt_segmentations_{val,test}.json`: `{cxr_id: {pathology: {"size":
[h, w], "counts": "<compressed COCO RLE>"}}}`, cxr_id like `patient64622_study1_view1_frontal`,
ten pathologies per image, absent ones all-zero (no region, but the image was read). One reader."""

from __future__ import annotations

from embedstore.annotation_sets.base import FileRead, FormatReader, Source
from embedstore.annotation_sets.coco import rle_shape
from embedstore.choices import AnnotationFormat
from embedstore.errors import InputError
from embedstore.images import shown


def sniff(source: Source) -> bool:
    document = source.document()
    if not isinstance(document, dict) or not document:
        return False
    first = next(iter(document.values()))
    if not isinstance(first, dict) or not first:
        return False
    rle = next(iter(first.values()))
    return isinstance(rle, dict) and "counts" in rle and "size" in rle


def read(source: Source, out: FileRead) -> None:
    document = source.document()
    if not isinstance(document, dict):
        raise InputError(f"annotations {shown(source.path)}: CheXlocalize segmentations are an object "
                         "{cxr_id: {pathology: RLE}}", parameter="annotations")
    for cxr_id, pathologies in document.items():
        if not isinstance(pathologies, dict):
            out.bad(out.where(cxr_id), "expected an object {pathology: RLE}")
            continue
        shapes = []
        for pathology, rle in pathologies.items():
            where = out.where(f"{cxr_id}/{pathology}")
            size = rle.get("size") if isinstance(rle, dict) else None
            if not isinstance(rle, dict) or not isinstance(rle.get("counts"), str) or not (
                    isinstance(size, list) and len(size) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
                out.bad(where, "expected {\"size\": [height, width], \"counts\": \"<compressed RLE>\"}")
                continue
            mask, problem = rle_shape(rle, (size[0], size[1]))
            if problem:
                out.bad(where, problem)
                continue
            shapes.append((pathology, where, mask))
        out.add_image(cxr_id, shapes)


READER = FormatReader(AnnotationFormat.CHEXLOCALIZE, "json", sniff, read,
                      "CheXlocalize gt_segmentations_{val,test}.json, RLE masks")
