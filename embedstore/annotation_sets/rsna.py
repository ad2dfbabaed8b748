"""`rsna`: the RSNA Pneumonia Detection Challenge's `stage_2_train_labels.csv`: `patientId, x, y,
width, height, Target`. Target 1 rows are boxes of Pneumonia (of Lung Opacity where the run has no
Pneumonia label); Target 0 rows have empty coordinates: the image was read, nothing drawn. One reader."""

from __future__ import annotations

from embedstore.annotation_sets.base import (
    FileRead,
    FormatReader,
    Source,
    cell,
    cell_box,
    header_names,
)
from embedstore.choices import AnnotationFormat

REQUIRED = ("patientId", "x", "y", "width", "height", "Target")
NO_BOX = "no box (Target 0)"


def sniff(source: Source) -> bool:
    return {"patientid", "target"} <= header_names(source)


def read(source: Source, out: FileRead) -> None:
    table = source.table()
    columns = table.columns(REQUIRED)
    name = "Pneumonia" if out.labels.match("Pneumonia")[0] is not None else "Lung Opacity"
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
            box = cell_box(out, where, [cell(fields, columns[c]) for c in REQUIRED[1:5]],
                           "Target 1 needs numbers x, y, width, height")
            if box is None:
                continue
        out.add_image(cell(fields, columns["patientId"]).strip(), [(name, where, box)], NO_BOX)


READER = FormatReader(AnnotationFormat.RSNA, "csv", sniff, read, "RSNA Pneumonia stage_2_train_labels.csv")
