"""`vindr`: VinDr-CXR's `annotations_train.csv` / `annotations_test.csv` (PhysioNet) and Kaggle
VinBigData's `train.csv`: one row per reader and finding, `image_id, rad_id, class_name, x_min,
y_min, x_max, y_max` (Kaggle adds class_id). A row with empty coordinates (`No finding`, a global
label) draws nothing, but its reader read the image. Without a rad_id column the file is one reader."""

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

REQUIRED = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
NO_BOX = "no box (No finding / global label)"


def sniff(source: Source) -> bool:
    return {"image_id", "class_name", "x_min"} <= header_names(source)


def read(source: Source, out: FileRead) -> None:
    table = source.table()
    columns = table.columns(REQUIRED, optional=("rad_id",))
    for row, fields in table.rows:
        where = out.where(row)
        values = [cell(fields, columns[c]).strip() for c in REQUIRED[2:]]
        names = {c: cell(fields, index).strip() for c, index in columns.items() if c in ("image_id", "class_name", "rad_id")}
        if not out.filled(where, **names):
            continue
        image_id, class_name, rad_id = names["image_id"], names["class_name"], names.get("rad_id")
        box = None
        if any(values):
            box = cell_box(out, where, values, "x_min, y_min, x_max, y_max must be numbers (or all empty)",
                           corners=True)
            if box is None:
                continue
        out.add_image(image_id, [(class_name, where, box)], NO_BOX, rad_id)


READER = FormatReader(AnnotationFormat.VINDR, "csv", sniff, read,
                      "VinDr-CXR annotations_{train,test}.csv / Kaggle VinBigData train.csv")
