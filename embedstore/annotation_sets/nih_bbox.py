"""`nih-bbox`: NIH ChestX-ray14's `BBox_List_2017.csv`, header `Image Index,Finding Label,Bbox
[x,y,w,h],,,`: columns by position (image, label, x, y, width, height in original pixels), trailing
empty columns. One reader."""

from __future__ import annotations

from embedstore.annotation_sets.base import FileRead, FormatReader, Source, cell_box
from embedstore.choices import AnnotationFormat
from embedstore.errors import InputError
from embedstore.images import shown

HEADER = ("image index", "finding label")


def sniff(source: Source) -> bool:
    return tuple(name.strip().lower() for name in source.header()[:2]) == HEADER


def read(source: Source, out: FileRead) -> None:
    table = source.table()
    if tuple(name.strip().lower() for name in table.header[:2]) != HEADER:
        raise InputError(f"annotations {shown(source.path)}: not NIH's BBox_List header (expected "
                         "'Image Index,Finding Label,Bbox [x,y,w,h]')", parameter="annotations")
    for row, fields in table.rows:
        where = out.where(row)
        if len(fields) < 6:
            out.bad(where, f"{len(fields)} field(s); need 6 (image, label, x, y, w, h)")
            continue
        if not out.filled(where, **{"Image Index": fields[0], "Finding Label": fields[1]}):
            continue
        box = cell_box(out, where, fields[2:6], "x, y, w, h must be numbers")
        if box is not None:
            out.add_image(fields[0], [(fields[1], where, box)])


READER = FormatReader(AnnotationFormat.NIH_BBOX, "csv", sniff, read, "NIH ChestX-ray14 BBox_List_2017.csv")
