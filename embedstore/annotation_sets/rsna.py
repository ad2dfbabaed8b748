"""`rsna`: the RSNA Pneumonia Detection Challenge's `stage_2_train_labels.csv`: `patientId, x, y,
width, height, Target`. Target 1 rows are boxes of Pneumonia (of Lung Opacity where the run has no
Pneumonia label); Target 0 rows have empty coordinates: the image was read, nothing drawn. One reader."""

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

REQUIRED = ("patientId", "x", "y", "width", "height", "Target")
NO_BOX = "no box (Target 0)"


def sniff(source: Source) -> bool:
    return {"patientid", "target"} <= header_names(source)


def read(source: Source, out: FileRead) -> None:
    table = source.table()
    columns = table.columns(REQUIRED)
    label, reason = out.labels.match("Pneumonia")
    if label is None:
        label, reason = out.labels.match("Lung Opacity")
    for row, fields in table.rows:
        where = out.where(row)
        target = cell(fields, columns["Target"]).strip()
        if not out.filled(where, patientId=cell(fields, columns["patientId"])):
            continue
        if target not in ("0", "1"):
            out.bad(where, f"Target {target!r}: must be 0 or 1")
            continue
        box = None
        if target == "1":
            try:
                x, y, w, h = (number(cell(fields, columns[c])) for c in REQUIRED[1:5])
            except ValueError:
                out.bad(where, "Target 1 needs numbers x, y, width, height")
                continue
            problem = box_problem(x, y, x + w, y + h)
            if problem:
                out.bad(where, problem)
                continue
            box = Box(x, y, x + w, y + h)
        filename = out.image(cell(fields, columns["patientId"]).strip())
        if filename is None:
            continue
        reader = out.read_by(filename)
        if box is None:
            out.left_out[NO_BOX] += 1
        elif label is None:
            out.left_out[reason] += 1
        else:
            out.regions.append(Region(filename, label, where, reader, box))


READER = FormatReader(AnnotationFormat.RSNA, "csv", sniff, read, "RSNA Pneumonia stage_2_train_labels.csv")
