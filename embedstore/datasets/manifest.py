"""A generic CSV or Parquet manifest (`manifest`): one row per image, label columns or a `labels` list."""

from __future__ import annotations

from pathlib import Path

from embedstore.datasets.base import (
    IngestConfig,
    Loaded,
    Problem,
    SourceRow,
    keep_projection,
    malformed_rows,
    ordered_labels,
    parse_values,
    read_table,
    text,
)
from embedstore.errors import InputError

MANIFEST_META = {"path", "filename", "uid", "patient", "split", "report", "projection", "labels"}


def load_manifest(path: Path, config: IngestConfig) -> Loaded:
    """A generic CSV or Parquet manifest: `path` (or `filename`) relative to the manifest's folder,
    label columns (values 1/0/-1/blank) or a `labels` column (a list, or names joined by `|` or `;`),
    and optional `uid`, `patient`, `split`, `report`, `projection`."""
    problems: list[Problem] = []
    frame = read_table(path, problems)
    path_column = "path" if "path" in frame.columns else "filename"
    if path_column not in frame.columns:
        raise InputError(f"{path}: not a manifest (no path or filename column); to ingest a dataset as it "
                         "ships (CheXpert, MIMIC-CXR, NIH, VinDr, OpenI), give its folder", parameter="format")
    list_labels = "labels" in frame.columns
    label_columns = [c for c in frame.columns if c not in MANIFEST_META]
    if list_labels and label_columns:
        raise InputError(f"{path}: give labels either as a `labels` column or as label columns, not both "
                         f"(found labels and {', '.join(label_columns[:3])})")
    loaded = Loaded("manifest", path, [], [], problems)
    malformed = malformed_rows(problems, path.name)
    records = list(frame.iter_rows(named=True))
    if list_labels:
        names: list[str] = []
        parsed = []
        for record in records:
            raw = record["labels"]
            items = list(raw) if isinstance(raw, list | tuple) else text(raw).replace(";", "|").split("|")
            row_labels = [text(item) for item in items if text(item)]
            parsed.append(row_labels)
            names.extend(label for label in row_labels if label not in names)
        loaded.labels = ordered_labels(names)
    else:
        if not label_columns:
            raise InputError(f"{path}: no label columns and no `labels` column")
        loaded.labels = ordered_labels(label_columns)
    for index, record in enumerate(records):
        line = index + 2
        if not keep_projection(text(record.get("projection")), config) and line not in malformed:
            continue
        filename = text(record[path_column])
        if list_labels:
            values: dict[str, int | None] = {label: int(label in parsed[index]) for label in loaded.labels}
        else:
            values = parse_values(path.name, line, record, loaded.labels, loaded.problems)
        image = Path(filename)
        loaded.rows.append(SourceRow(
            file=path.name, row=line, uid=text(record.get("uid")) or filename, filename=filename,
            path=image if image.is_absolute() else path.parent / image, report=text(record.get("report")),
            projection=text(record.get("projection")) or None, split=text(record.get("split")) or None,
            values=values, patient=text(record.get("patient")) or None,
        ))
    return loaded




def detect_manifest(path: Path) -> bool:
    """A single .csv/.parquet file that no other layout claims."""
    return path.is_file() and path.suffix.lower() in {".csv", ".parquet"}
