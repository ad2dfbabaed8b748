"""`boxes`: embedstore's own box file, `filename,label,x0,y0,x1,y1` in original pixels (x1, y1
exclusive), as `embedstore data sample` writes it. Strict: every row must name one of the run's
images and labels; with a masks folder each row's region is its mask file instead of the box."""

from __future__ import annotations

from embedstore.annotation_sets.base import Box, FileRead, FormatReader, Region, Source, cell, header_names, number
from embedstore.annotation_sets.png_masks import png_mask
from embedstore.annotations import mask_name
from embedstore.choices import AnnotationFormat
from embedstore.errors import InputError
from embedstore.images import shown

COLUMNS = ("filename", "label", "x0", "y0", "x1", "y1")


def sniff(source: Source) -> bool:
    return {"filename", "label"} <= header_names(source)


def read(source: Source, out: FileRead) -> None:
    table = source.table()
    columns = table.columns(COLUMNS)
    masks = out.masks
    if masks is not None and not masks.is_dir():
        raise InputError(f"masks {shown(masks)}: not a folder", parameter="masks")
    known_files, known_labels = out.images.known, out.labels.known
    for row, fields in table.rows:
        where = out.where(row)
        filename, label = cell(fields, columns["filename"]), cell(fields, columns["label"])
        try:
            x0, y0, x1, y1 = (number(cell(fields, columns[c])) for c in COLUMNS[2:])
        except ValueError:
            out.bad(where, "box coordinates must be numbers")
            continue
        if known_files is not None and filename not in known_files:
            out.bad(where, f"unknown filename {filename!r} (not in the run's dataset)")
        elif known_labels is not None and label not in known_labels:
            out.bad(where, f"unknown label {label!r}")
        elif not (x0 < x1 and y0 < y1) or min(x0, y0, x1, y1) < 0:
            out.bad(where, f"empty or negative box {(x0, y0, x1, y1)} (need x0 < x1, y0 < y1, all ≥ 0)")
        elif masks is not None and not (masks / mask_name(filename, label)).exists():
            out.bad(where, f"mask file {masks / mask_name(filename, label)} is missing")
        else:
            shape = png_mask(masks / mask_name(filename, label)) if masks is not None else Box(x0, y0, x1, y1)
            out.regions.append(Region(filename, label, where, out.read_by(filename), shape))


READER = FormatReader(AnnotationFormat.BOXES, "csv", sniff, read, "embedstore's CSV filename,label,x0,y0,x1,y1")
