"""`embedstore ingest`: read a dataset in one of the known formats, validate everything, split it,
and write `datasets`, `samples`, `labels` and `label_names` in one transaction.

Nothing is half-done: every bad row is collected (file and line named), and unless `--skip-bad`
is given the store is left exactly as it was.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from embedstore import queries
from embedstore.choices import IngestFormat, SplitMethod, parse
from embedstore.errors import InputError
from embedstore.images import NOT_FOUND, load_rgb, shown
from embedstore.iuxray import IMAGE_DIR, PROJECTIONS_CSV, REPORTS_CSV, STUDY_CSV, TEXT_COLUMNS
from embedstore.labels import CHEXPERT_LABELS, DOMAIN_OF, LABEL_SPELLINGS, NO_FINDING, parse_label_value
from embedstore.splits import SPLIT_NAMES, SPLITTERS
from embedstore.store import Store, StoreWriter, append_rows, first_row

log = logging.getLogger(__name__)

#: IU-Xray "Problems" terms and the CheXpert label each is taken as (approximate; docs/datasets.md, "Formats").
PROBLEM_TO_LABEL: dict[str, str] = {
    "normal": NO_FINDING,
    "mediastinum": "Enlarged Cardiomediastinum",
    "cardiomegaly": "Cardiomegaly",
    "opacity": "Lung Opacity",
    "airspace disease": "Lung Opacity",
    "infiltrate": "Lung Opacity",
    "nodule": "Lung Lesion",
    "mass": "Lung Lesion",
    "granulomatous disease": "Lung Lesion",
    "edema": "Edema",
    "pulmonary edema": "Edema",
    "consolidation": "Consolidation",
    "pneumonia": "Pneumonia",
    "pulmonary atelectasis": "Atelectasis",
    "atelectasis": "Atelectasis",
    "pneumothorax": "Pneumothorax",
    "pleural effusion": "Pleural Effusion",
    "thickening": "Pleural Other",
    "pleural thickening": "Pleural Other",
    "fractures, bone": "Fracture",
    "fracture": "Fracture",
    "medical device": "Support Devices",
    "catheters, indwelling": "Support Devices",
    "tube, inserted": "Support Devices",
}


@dataclass(frozen=True)
class Problem:
    """One bad row (or file): where it is and what is wrong."""

    file: str
    row: int | None
    message: str

    def __str__(self) -> str:
        """`file:row: message`, control characters escaped (a value from a CSV may hold any)."""
        return shown(f"{self.file}:{self.row}: {self.message}" if self.row is not None else f"{self.file}: {self.message}")


@dataclass
class SourceRow:
    """One image as read from the input, before validation."""

    file: str
    row: int
    uid: str
    filename: str
    path: Path
    report: str
    projection: str | None
    split: str | None
    values: dict[str, int | None]
    image_sha256: str = ""
    #: the derived target per label (`_derive_positives`); `values` stay exactly as read
    positive: dict[str, bool] = field(default_factory=dict)


@dataclass
class Loaded:
    """What a format loader read: label names in order, rows, and problems found so far."""

    format: str
    source: Path
    labels: list[str]
    rows: list[SourceRow]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class IngestConfig:
    """Options of `embedstore ingest`."""

    path: Path
    name: str
    format: IngestFormat = IngestFormat.AUTO
    #: How train/val/test are assigned; None: `given` when the input has a split column, else `study`.
    split: SplitMethod | None = None
    seed: int = 42
    labels_csv: Path | None = None
    all_projections: bool = False
    skip_bad: bool = False
    replace: bool = False

    def __post_init__(self) -> None:
        """Plain strings are accepted from Python; a value outside its choices is an InputError."""
        object.__setattr__(self, "format", parse(IngestFormat, self.format, "format"))
        if self.split is not None:
            object.__setattr__(self, "split", parse(SplitMethod, self.split, "split"))


@dataclass(frozen=True)
class IngestResult:
    dataset_id: str
    name: str
    format: str
    n_samples: int
    split_counts: dict[str, int]
    skipped: list[str]
    warnings: list[str]
    manifest_sha256: str


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------

def _check_header(path: Path, columns: list[str]) -> None:
    """Every column named, and each name once: a second `Cardiomegaly` would silently replace the first."""
    first: dict[str, int] = {}
    for number, name in enumerate(columns, start=1):
        if not name.strip():
            raise InputError(f"{path}: column {number} of the header has an empty name")
        if name in first:
            raise InputError(f"{path}: column {name!r} appears more than once in the header "
                             f"(columns {first[name]} and {number})")
        first[name] = number


def _read_table(path: Path, problems: list[Problem]) -> pl.DataFrame:
    """A CSV (all columns as text) or Parquet file; unreadable input is one clear line.

    The header must name every column once. A CSV row (numbered from 2, the header being row 1;
    blank lines are no rows) with more or fewer fields than the header is a bad row, added to
    `problems`; it stays in the frame, cut or padded with blanks, so that it can be skipped.
    """
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if path.suffix.lower() == ".parquet":
            _check_header(path, list(pq.read_schema(path).names))
            return pl.read_parquet(path)
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            columns = next(reader, [])
            _check_header(path, columns)
            records: list[list[str]] = []
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(columns):
                    problems.append(Problem(path.name, len(records) + 2,
                                            f"{len(fields)} fields, but the header has {len(columns)}"))
                    fields = (fields + [""] * len(columns))[:len(columns)]
                records.append(fields)
        return pl.DataFrame(records, schema={c: pl.String for c in columns}, orient="row")
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot read as a table ({str(error).splitlines()[0][:120]})") from None


def _malformed(problems: list[Problem], file: str) -> set[int]:
    """Rows of `file` already found bad by `_read_table` (kept as samples, whatever their projection)."""
    return {p.row for p in problems if p.file == file and p.row is not None}


def _require_columns(path: Path, frame: pl.DataFrame, required: Iterable[str], allowed: Iterable[str] | None) -> None:
    columns = set(frame.columns)
    missing = [c for c in required if c not in columns]
    unknown = sorted(columns - set(allowed)) if allowed is not None else []
    parts = []
    if missing:
        parts.append(f"missing column(s) {', '.join(missing)}")
    if unknown:
        parts.append(f"unknown column(s) {', '.join(unknown)}")
    if parts:
        raise InputError(f"{path}: {'; '.join(parts)}")


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _parse_values(file: str, line: int, record: dict[str, object], labels: Iterable[str],
                  problems: list[Problem]) -> dict[str, int | None]:
    """Each label's value (labels.parse_label_value); a value outside the listed spellings is a bad row."""
    values: dict[str, int | None] = {}
    for label in labels:
        raw = record.get(label)
        try:
            values[label] = parse_label_value(raw)
        except ValueError:
            problems.append(Problem(file, line, f"column {label!r}: value {raw!r} is not {LABEL_SPELLINGS}"))
            values[label] = None
    return values


def _report(record: dict[str, object]) -> str:
    return " ".join(_text(record.get(c)) for c in TEXT_COLUMNS if _text(record.get(c)))


def load_iuxray14(path: Path, config: IngestConfig) -> Loaded:
    """The study's `iuxray_frontal_14labels.csv`; images under `images/images_normalized/`."""
    csv_path = path / STUDY_CSV if path.is_dir() else path
    root = csv_path.parent
    loaded = Loaded("iuxray14", csv_path, list(CHEXPERT_LABELS), [])
    frame = _read_table(csv_path, loaded.problems)
    required = ["uid", "filename", *TEXT_COLUMNS, *CHEXPERT_LABELS]
    _require_columns(csv_path, frame, required, allowed=required)
    for line, record in enumerate(frame.iter_rows(named=True), start=2):
        filename = _text(record["filename"])
        loaded.rows.append(SourceRow(
            file=csv_path.name, row=line, uid=_text(record["uid"]), filename=filename,
            path=root / IMAGE_DIR / filename, report=_report(record), projection="Frontal", split=None,
            values=_parse_values(csv_path.name, line, record, CHEXPERT_LABELS, loaded.problems),
        ))
    return loaded


def load_kaggle(path: Path, config: IngestConfig) -> Loaded:
    """The Kaggle pair `indiana_reports.csv` + `indiana_projections.csv`.

    Labels come from a CheXpert-14 labels CSV joined by uid (`--labels`), or else from the
    Problems column through PROBLEM_TO_LABEL, which is approximate (a warning says so).
    """
    root = path if path.is_dir() else path.parent
    loaded = Loaded("kaggle", root / PROJECTIONS_CSV, list(CHEXPERT_LABELS), [])
    reports = _read_table(root / REPORTS_CSV, loaded.problems)
    projections = _read_table(root / PROJECTIONS_CSV, loaded.problems)
    _require_columns(root / REPORTS_CSV, reports, ["uid", "Problems", *TEXT_COLUMNS], None)
    _require_columns(root / PROJECTIONS_CSV, projections, ["uid", "filename", "projection"], None)
    label_rows: dict[str, dict[str, object]] = {}
    if config.labels_csv is not None:
        table = _read_table(config.labels_csv, loaded.problems)
        _require_columns(config.labels_csv, table, ["uid", *CHEXPERT_LABELS], None)
        duplicates = []
        for line, record in enumerate(table.iter_rows(named=True), start=2):
            uid = _text(record["uid"])
            if uid in label_rows:
                duplicates.append(str(Problem(config.labels_csv.name, line, f"uid {uid} has a second labels row")))
            label_rows[uid] = record | {"_line": line}
        if duplicates:
            raise InputError(f"{config.labels_csv}: {len(duplicates)} duplicate uid(s) (listed above)", details=duplicates)
    else:
        loaded.warnings.append(
            "labels derived from the Problems column of indiana_reports.csv through an approximate mapping "
            "(docs/datasets.md, \"Formats\"); give a CheXpert labeler output CSV as the labels file for the "
            "study's labels"
        )
    by_uid = {_text(r["uid"]): r | {"_line": i} for i, r in enumerate(reports.iter_rows(named=True), start=2)}
    unmapped: set[str] = set()
    malformed = _malformed(loaded.problems, PROJECTIONS_CSV)
    for line, record in enumerate(projections.iter_rows(named=True), start=2):
        projection = _text(record["projection"])
        if not _keep_projection(projection, config) and line not in malformed:
            continue
        uid = _text(record["uid"])
        report = by_uid.get(uid)
        if report is None:
            loaded.problems.append(Problem(PROJECTIONS_CSV, line, f"uid {uid} has no row in {REPORTS_CSV}"))
            continue
        if config.labels_csv is not None:
            if uid not in label_rows:
                loaded.problems.append(Problem(PROJECTIONS_CSV, line, f"uid {uid} has no row in {config.labels_csv.name}"))
                continue
            label_record = label_rows[uid]
            label_problems: list[Problem] = []
            values = _parse_values(config.labels_csv.name, int(str(label_record["_line"])), label_record,
                                   CHEXPERT_LABELS, label_problems)
            loaded.problems.extend(Problem(PROJECTIONS_CSV, line, f"({p}) uid {uid}") for p in label_problems)
        else:
            values = {label: 0 for label in CHEXPERT_LABELS}
            for term in _text(report["Problems"]).split(";"):
                key = term.strip().lower()
                if key in PROBLEM_TO_LABEL:
                    values[PROBLEM_TO_LABEL[key]] = 1
                elif key:
                    unmapped.add(term.strip())
        filename = _text(record["filename"])
        loaded.rows.append(SourceRow(
            file=PROJECTIONS_CSV, row=line, uid=uid, filename=filename, path=root / IMAGE_DIR / filename,
            report=_report(report), projection=projection, split=None, values=values,
        ))
    if unmapped:
        loaded.warnings.append(f"{len(unmapped)} Problems term(s) map to no CheXpert label, e.g. {sorted(unmapped)[:5]}")
    return loaded


MANIFEST_META = {"path", "filename", "uid", "split", "report", "projection", "labels"}


def load_manifest(path: Path, config: IngestConfig) -> Loaded:
    """A generic CSV or Parquet manifest: `path` (or `filename`) relative to the manifest's folder,
    label columns (values 1/0/-1/blank) or a `labels` column (a list, or names joined by `|` or `;`),
    and optional `uid`, `split`, `report`, `projection`."""
    problems: list[Problem] = []
    frame = _read_table(path, problems)
    path_column = "path" if "path" in frame.columns else "filename"
    _require_columns(path, frame, [path_column], None)
    list_labels = "labels" in frame.columns
    label_columns = [c for c in frame.columns if c not in MANIFEST_META]
    if list_labels and label_columns:
        raise InputError(f"{path}: give labels either as a `labels` column or as label columns, not both "
                         f"(found labels and {', '.join(label_columns[:3])})")
    loaded = Loaded("manifest", path, [], [], problems)
    malformed = _malformed(problems, path.name)
    records = list(frame.iter_rows(named=True))
    if list_labels:
        names: list[str] = []
        parsed = []
        for record in records:
            raw = record["labels"]
            items = list(raw) if isinstance(raw, list | tuple) else _text(raw).replace(";", "|").split("|")
            row_labels = [_text(item) for item in items if _text(item)]
            parsed.append(row_labels)
            names.extend(label for label in row_labels if label not in names)
        loaded.labels = _ordered_labels(names)
    else:
        if not label_columns:
            raise InputError(f"{path}: no label columns and no `labels` column")
        loaded.labels = _ordered_labels(label_columns)
    for index, record in enumerate(records):
        line = index + 2
        if not _keep_projection(_text(record.get("projection")), config) and line not in malformed:
            continue
        filename = _text(record[path_column])
        if list_labels:
            values: dict[str, int | None] = {label: int(label in parsed[index]) for label in loaded.labels}
        else:
            values = _parse_values(path.name, line, record, loaded.labels, loaded.problems)
        image = Path(filename)
        loaded.rows.append(SourceRow(
            file=path.name, row=line, uid=_text(record.get("uid")) or filename, filename=filename,
            path=image if image.is_absolute() else path.parent / image, report=_text(record.get("report")),
            projection=_text(record.get("projection")) or None, split=_text(record.get("split")) or None,
            values=values,
        ))
    return loaded


def _keep_projection(projection: str, config: IngestConfig) -> bool:
    """Frontal images only, where the projection is known, unless --all-projections."""
    return config.all_projections or projection in ("", "Frontal")


def _ordered_labels(names: Iterable[str]) -> list[str]:
    """CheXpert labels in the study's order first, any others after in the order given."""
    names = list(dict.fromkeys(names))
    known = [label for label in CHEXPERT_LABELS if label in names]
    return known + [label for label in names if label not in CHEXPERT_LABELS]


def _detect(path: Path) -> IngestFormat:
    root = path if path.is_dir() else path.parent
    if path.is_file() and path.name != STUDY_CSV and path.suffix.lower() in {".csv", ".parquet"}:
        return IngestFormat.MANIFEST
    if (root / STUDY_CSV).exists():
        return IngestFormat.IUXRAY14
    if (root / REPORTS_CSV).exists() and (root / PROJECTIONS_CSV).exists():
        return IngestFormat.KAGGLE
    raise InputError(
        f"{path}: cannot tell the format (no {STUDY_CSV}, no {REPORTS_CSV} + {PROJECTIONS_CSV}, "
        "not a .csv/.parquet manifest); name it", parameter="format"
    )


#: The reader of each format (`auto` detects one of these from the files).
FORMATS: dict[IngestFormat, Callable[[Path, IngestConfig], Loaded]] = {
    IngestFormat.IUXRAY14: load_iuxray14,
    IngestFormat.KAGGLE: load_kaggle,
    IngestFormat.MANIFEST: load_manifest,
}


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

def _check_image(row: SourceRow) -> str | None:
    """Read, hash and fully decode the file with extraction's own decoder (embedstore.images: regular
    files only, size and pixel limits); returns what is wrong, or None."""
    try:
        image, data = load_rgb(row.path)
    except InputError as error:
        where = f" at {shown(row.path)}" if str(error) == NOT_FOUND else ""
        return f"image {shown(row.filename)} {error}{where}"
    image.close()
    row.image_sha256 = hashlib.sha256(data).hexdigest()
    return None


def _row_problems(loaded: Loaded, progress: Callable[[int], None] | None,
                  given_split: bool = False) -> dict[int, list[Problem]]:
    """Problems per row index: parsing, identity, duplicates, conflicting uids, image files, and
    (with `given_split`) a blank split."""
    by_row: dict[int, list[Problem]] = {}
    index_of: dict[tuple[str, int | None], int] = {(r.file, r.row): i for i, r in enumerate(loaded.rows)}
    unattached = []
    for problem in loaded.problems:
        if (problem.file, problem.row) in index_of:
            by_row.setdefault(index_of[problem.file, problem.row], []).append(problem)
        else:  # a row the loader could not turn into a sample (a reports or labels row): never skippable
            unattached.append(str(problem))
    if unattached:
        raise InputError(f"{len(unattached)} bad row(s) that cannot be skipped (listed above); fix them",
                         details=unattached)

    def add(i: int, message: str) -> None:
        row = loaded.rows[i]
        by_row.setdefault(i, []).append(Problem(row.file, row.row, message))

    first_with: dict[str, int] = {}
    uid_first: dict[str, int] = {}
    for i, row in enumerate(loaded.rows):
        if not row.filename:
            add(i, "empty filename")
            continue
        if not row.uid:
            add(i, "empty uid")
        if row.split is not None and row.split not in SPLIT_NAMES:
            add(i, f"split {row.split!r} is not one of {', '.join(SPLIT_NAMES)}")
        elif given_split and row.split is None:
            add(i, f"split is blank; give one of {', '.join(SPLIT_NAMES)}")
        if row.filename in first_with:
            add(i, f"duplicate filename {row.filename} (first at row {loaded.rows[first_with[row.filename]].row})")
            continue
        first_with[row.filename] = i
        if row.uid in uid_first:
            first = loaded.rows[uid_first[row.uid]]
            if first.values != row.values:
                add(i, f"uid {row.uid} has labels that conflict with row {first.row}")
        else:
            uid_first[row.uid] = i
    to_check = [i for i in range(len(loaded.rows)) if i not in by_row]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for i, message in zip(to_check, pool.map(lambda j: _check_image(loaded.rows[j]), to_check), strict=True):
            if message:
                add(i, message)
            if progress:
                progress(1)
    return by_row


def _derive_positives(loaded: Loaded) -> tuple[int, int]:
    """Set each row's derived `positive` labels: value 1, and No Finding for a sample with no
    positive finding (the study's rule), leaving the raw `values` untouched.

    Returns (derived, from_uncertain): the samples whose No Finding is positive by the rule although
    their own No Finding value is not 1, and those of them with at least one uncertain (-1) finding,
    which become No Finding only because their findings were uncertain.
    """
    derived = from_uncertain = 0
    for row in loaded.rows:
        row.positive = {label: row.values[label] == 1 for label in loaded.labels}
        if NO_FINDING not in loaded.labels or row.positive[NO_FINDING]:
            continue
        findings = [value for label, value in row.values.items() if label != NO_FINDING]
        if not any(value == 1 for value in findings):
            row.positive[NO_FINDING] = True
            derived += 1
            from_uncertain += any(value == -1 for value in findings)
    return derived, from_uncertain


def _identical_groups(rows: list[SourceRow]) -> list[list[int]]:
    """Row indices of each group of byte-identical images (same image sha256, two rows or more),
    in order of first appearance."""
    by_sha: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_sha.setdefault(row.image_sha256, []).append(i)
    return [group for group in by_sha.values() if len(group) > 1]


def _units(rows: list[SourceRow], groups: list[list[int]]) -> list[int]:
    """The split unit of each row: the uids linked through `groups` of identical images, found by
    union-find over uid <-> image, numbered in order of first appearance. Without groups a unit is a uid."""
    parent: dict[str, str] = {}

    def find(uid: str) -> str:
        root = parent.setdefault(uid, uid)
        while root != parent[root]:
            root = parent[root]
        while uid != root:  # path compression
            parent[uid], uid = root, parent[uid]
        return root

    for row in rows:
        find(row.uid)
    for group in groups:
        first = find(rows[group[0]].uid)
        for i in group[1:]:
            other = find(rows[i].uid)
            if other != first:
                parent[other] = first
    roots = [find(row.uid) for row in rows]
    number = {root: n for n, root in enumerate(dict.fromkeys(roots))}
    return [number[root] for root in roots]


# ---------------------------------------------------------------------------------------------
# Ingest
# ---------------------------------------------------------------------------------------------

def _split(rows: list[SourceRow], labels: list[str], method: SplitMethod, seed: int,
           identical: list[list[int]]) -> list[str]:
    """Each row's split. `study` splits uids exactly as the study did; `stratified` splits units of
    uids linked by `identical` images, so that no image sits in two splits; `given` is read."""
    if method == SplitMethod.GIVEN:
        return [row.split or "" for row in rows]
    units = _units(rows, identical if method == SplitMethod.STRATIFIED else [])
    first_uid: dict[int, str] = {}
    for row, unit in zip(rows, units, strict=True):
        first_uid.setdefault(unit, row.uid)
    names = [first_uid[unit] for unit in range(len(first_uid))]
    positives = np.zeros((len(names), len(labels)), dtype=bool)
    for row, unit in zip(rows, units, strict=True):
        positives[unit] |= np.array([row.positive[label] for label in labels])
    what = (f"{len(names)} uid(s)" if method != SplitMethod.STRATIFIED
            else f"{len(names)} uid group(s) (uids sharing an image are one)")
    too_few = InputError(f"split {method}: with {what} a split would be empty; ingest more samples")
    if len(names) < len(SPLIT_NAMES):
        raise too_few
    try:
        unit_split = SPLITTERS[method](names, positives, seed)
    except ValueError:  # sklearn's train_test_split refuses a split it would leave empty
        raise too_few from None
    return [unit_split[unit] for unit in units]


def _manifest_sha256(rows: list[SourceRow], splits: list[str], labels: list[str]) -> str:
    """Hash of every sample's uid, filename, image sha256, split, raw label values and derived positives."""
    digest = hashlib.sha256()
    for row, split in sorted(zip(rows, splits, strict=True), key=lambda pair: pair[0].filename):
        record = [row.uid, row.filename, row.image_sha256, split, [row.values[label] for label in labels],
                  [row.positive[label] for label in labels]]
        digest.update(json.dumps(record, separators=(",", ":")).encode() + b"\n")
    return digest.hexdigest()


def ingest(store: Store, config: IngestConfig, progress: Callable[[int], None] | None = None) -> IngestResult:
    """Validate and write a dataset; on any problem (without `skip_bad`) the store is unchanged.

    The writer lock is taken before any image is read, so a second writer is refused at once.
    """
    with store.writer(f"embedstore ingest {config.name}") as writer:
        return _ingest_locked(writer, config, progress)


def _ingest_locked(writer: StoreWriter, config: IngestConfig, progress: Callable[[int], None] | None) -> IngestResult:
    fmt = _detect(config.path) if config.format == IngestFormat.AUTO else config.format
    if not config.path.exists():
        raise InputError(f"{config.path}: no such file or folder")
    loaded = FORMATS[fmt](config.path, config)
    has_given_split = any(row.split for row in loaded.rows)
    method = config.split or (SplitMethod.GIVEN if has_given_split else SplitMethod.STUDY)
    if method == SplitMethod.GIVEN and not has_given_split:
        raise InputError(f"split given: {loaded.source.name} has no split column")
    if not loaded.rows:
        raise InputError(f"{loaded.source}: no rows to ingest")
    problems = _row_problems(loaded, progress, given_split=method == SplitMethod.GIVEN)
    if problems and not config.skip_bad:
        details = [str(p) for i in sorted(problems) for p in problems[i]]
        raise InputError(
            f"{len(problems)} bad row(s) in {loaded.source.name} (listed above); fix them or skip them",
            details=details, parameter="skip_bad",
        )
    skipped = [str(p) for i in sorted(problems) for p in problems[i]]
    loaded.rows = [row for i, row in enumerate(loaded.rows) if i not in problems]
    if not loaded.rows:
        raise InputError(f"{loaded.source}: every row is bad; nothing to ingest")
    derived, from_uncertain = _derive_positives(loaded)
    identical = _identical_groups(loaded.rows)
    splits = _split(loaded.rows, loaded.labels, method, config.seed, identical)
    counts = {name: splits.count(name) for name in SPLIT_NAMES}
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        raise InputError(f"{loaded.source.name}: split(s) {', '.join(empty)} would be empty "
                         f"({len(loaded.rows)} samples, split {method}); ingest more samples")
    for label in loaded.labels:
        if not any(row.positive[label] for row in loaded.rows):
            loaded.warnings.append(f"label {label!r} has no positive sample")
    checks = _checks(loaded, splits, identical, method, derived, from_uncertain)
    manifest_sha = _manifest_sha256(loaded.rows, splits, loaded.labels)
    dataset_id = f"ds_{uuid.uuid4().hex[:12]}"
    with writer.transaction() as con:
        existing = first_row(con, "SELECT dataset_id FROM datasets WHERE name = ?", [config.name])
        if existing:
            if not config.replace:
                raise InputError(f"dataset {config.name!r} exists; replace it, or ingest under another name",
                                 parameter="replace")
            n_runs = con.execute("SELECT count(*) FROM runs WHERE dataset_id = ?", [existing[0]]).fetchall()[0][0]
            if n_runs:
                raise InputError(f"dataset {config.name!r} has {n_runs} run(s) built on it and is not replaced; "
                                 "ingest under a new name instead", parameter="name")
            queries.execute_all(con, "delete_dataset", {"dataset_id": existing[0]})
        _register_labels(con, loaded.labels)
        sample_ids = con.execute("SELECT nextval('sample_id_seq') FROM range(?)", [len(loaded.rows)]).fetchnumpy()
        ids = np.asarray(next(iter(sample_ids.values())), dtype=np.int64)
        _insert_rows(con, dataset_id, ids, loaded, splits)
        con.execute(
            "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [dataset_id, config.name, fmt, str(loaded.source.resolve()), manifest_sha, len(loaded.rows), method,
             config.seed if method != SplitMethod.GIVEN else None, json.dumps(skipped), json.dumps(checks),
             datetime.now(UTC).replace(tzinfo=None)],
        )
    for warning in loaded.warnings:
        log.warning("warning: %s", warning)
    return IngestResult(dataset_id, config.name, fmt, len(loaded.rows), counts, skipped, loaded.warnings, manifest_sha)


def _checks(loaded: Loaded, splits: list[str], identical: list[list[int]], method: SplitMethod, derived: int,
            from_uncertain: int) -> dict[str, int]:
    """The counts stored in `datasets.checks`, each non-zero one also added to the warnings."""
    crossing = [group for group in identical if len({splits[i] for i in group}) > 1]
    checks = {
        "identical_image_groups": len(identical),
        "identical_images": sum(len(group) for group in identical),
        "cross_split_duplicate_groups": len(crossing),
        "cross_split_duplicate_images": sum(len(group) for group in crossing),
        "no_finding_derived": derived,
        "no_finding_from_uncertain": from_uncertain,
    }
    if identical:
        kept = "; each group was put in one split" if method == SplitMethod.STRATIFIED else ""
        loaded.warnings.append(
            f"{checks['identical_image_groups']} group(s) of byte-identical images ({checks['identical_images']} "
            f"images) under different rows; the named query duplicate_images lists them{kept}")
    if crossing:
        loaded.warnings.append(
            f"{checks['cross_split_duplicate_groups']} group(s) of byte-identical images "
            f"({checks['cross_split_duplicate_images']} images) sit in more than one split: the {method} split "
            "is kept (reproduction), so the same image can be in training and in val or test")
    if from_uncertain:
        loaded.warnings.append(
            f"{from_uncertain} sample(s) have No Finding only because none of their findings is positive: each "
            "has an uncertain (-1) finding (the raw values are kept in labels.value)")
    return checks


def _register_labels(con: duckdb.DuckDBPyConnection, labels: list[str]) -> None:
    known = {row[0] for row in con.execute("SELECT label FROM label_names").fetchall()}
    start = con.execute("SELECT coalesce(max(position), -1) + 1 FROM label_names").fetchall()[0][0]
    new = [label for label in labels if label not in known]
    for offset, label in enumerate(new):
        con.execute("INSERT INTO label_names VALUES (?, ?, ?)", [label, start + offset, DOMAIN_OF.get(label, "Other")])


def _insert_rows(
    con: duckdb.DuckDBPyConnection, dataset_id: str, ids: np.ndarray, loaded: Loaded, splits: list[str]
) -> None:
    rows = loaded.rows
    samples = pa.table({
        "dataset_id": pa.array([dataset_id] * len(rows)),
        "sample_id": pa.array(ids),
        "uid": pa.array([r.uid for r in rows]),
        "filename": pa.array([r.filename for r in rows]),
        "path": pa.array([str(r.path.resolve()) for r in rows]),
        "split": pa.array(splits),
        "report": pa.array([r.report for r in rows]),
        "projection": pa.array([r.projection for r in rows], pa.string()),
        "image_sha256": pa.array([r.image_sha256 for r in rows]),
    })
    labels = pa.table({
        "dataset_id": pa.array([dataset_id] * (len(rows) * len(loaded.labels))),
        "sample_id": pa.array(np.repeat(ids, len(loaded.labels))),
        "label": pa.array([label for _ in rows for label in loaded.labels]),
        "value": pa.array([r.values[label] for r in rows for label in loaded.labels], pa.int8()),
        "positive": pa.array([r.positive[label] for r in rows for label in loaded.labels], pa.bool_()),
    })
    append_rows(con, "samples", samples)
    append_rows(con, "labels", labels)
