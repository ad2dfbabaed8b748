"""`ms-cxr`: MS-CXR's `MS_CXR_Local_Alignment_v1.0.0.csv`: one box per row with the sentence that
describes it, `dicom_id, category_name, label_text, x, y, w, h, image_width, image_height` (the
box in pixels of an image_height × image_width frame; other columns are ignored). One reader."""

from __future__ import annotations

from embedstore.annotation_sets.base import (
    Box,
    FileRead,
    FormatReader,
    Region,
    Source,
    box_problem,
    cell,
    header_names,
    number,
)
from embedstore.choices import AnnotationFormat

REQUIRED = ("dicom_id", "category_name", "label_text", "x", "y", "w", "h", "image_width", "image_height")


def sniff(source: Source) -> bool:
    return {"dicom_id", "label_text"} <= header_names(source)


def read(source: Source, out: FileRead) -> None:
    table = source.table()
    columns = table.columns(REQUIRED)
    for row, fields in table.rows:
        where = out.where(row)
        if not out.filled(where, dicom_id=cell(fields, columns["dicom_id"]),
                          category_name=cell(fields, columns["category_name"])):
            continue
        try:
            x, y, w, h, width, height = (number(cell(fields, columns[c])) for c in REQUIRED[3:])
        except ValueError:
            out.bad(where, "x, y, w, h, image_width, image_height must be numbers")
            continue
        if not (width.is_integer() and height.is_integer() and width > 0 and height > 0):
            out.bad(where, f"image_width {width:g}, image_height {height:g}: must be positive whole numbers")
            continue
        problem = box_problem(x, y, x + w, y + h)
        if problem:
            out.bad(where, problem)
            continue
        filename = out.image(cell(fields, columns["dicom_id"]).strip())
        if filename is None:
            continue
        reader = out.read_by(filename)
        label = out.label(cell(fields, columns["category_name"]).strip())
        if label is not None:
            box = Box(x, y, x + w, y + h, frame=(int(height), int(width)))
            out.regions.append(Region(filename, label, where, reader, box, text=cell(fields, columns["label_text"])))


READER = FormatReader(AnnotationFormat.MS_CXR, "csv", sniff, read, "MS-CXR MS_CXR_Local_Alignment_v1.0.0.csv")
