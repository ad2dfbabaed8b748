"""What every dataset loader shares: the rows it produces, the options it reads, and reading tables.

A loader (one module per layout in this package) turns files into `Loaded`: label names in order,
one `SourceRow` per image, and every bad row found as a `Problem` (`file:row: message`). Ingest
validates and writes; a loader never touches the store.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from embedstore.choices import IngestFormat, ReaderPolicy, SplitMethod, UncertainPolicy, parse
from embedstore.errors import InputError
from embedstore.images import shown
from embedstore.label_sets import LabelSet, label_set
from embedstore.labels import CHEXPERT_LABELS, LABEL_SPELLINGS, parse_label_value


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
    #: the patient (the unit no split may divide); None where the layout has none
    patient: str | None = None
    image_sha256: str = ""
    #: the derived target per label (`_derive_positives`); `values` stay exactly as read
    positive: dict[str, bool | None] = field(default_factory=dict)


@dataclass
class Loaded:
    """What a format loader read: label names in order, rows, and problems found so far."""

    format: str
    source: Path
    labels: list[str]
    rows: list[SourceRow]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: the label set whose names `labels` are (domains, normal label, CheXpert counterparts)
    label_set: LabelSet = field(default_factory=lambda: label_set("chexpert"))
    #: how the loader read labels (policies, mappings): stored in `datasets.options` as provenance
    options: dict[str, object] = field(default_factory=dict)


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
    #: openi: the DICOM-metadata CSV giving each image's view
    metadata_csv: Path | None = None
    all_projections: bool = False
    uncertain: UncertainPolicy = UncertainPolicy.ZEROS
    readers: ReaderPolicy = ReaderPolicy.MAJORITY
    skip_bad: bool = False
    replace: bool = False

    def __post_init__(self) -> None:
        """Plain strings are accepted from Python; a value outside its choices is an InputError."""
        object.__setattr__(self, "format", parse(IngestFormat, self.format, "format"))
        object.__setattr__(self, "uncertain", parse(UncertainPolicy, self.uncertain, "uncertain"))
        object.__setattr__(self, "readers", parse(ReaderPolicy, self.readers, "readers"))
        if self.split is not None:
            object.__setattr__(self, "split", parse(SplitMethod, self.split, "split"))


#: An id a layout turns into a file name (a DICOM or image id): letters, digits, `_`, `.` and `-`,
#: not starting with a dot, so that no id can reach outside the dataset's folder.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def outside_folder(relative: str) -> str | None:
    """Why a path read from a dataset's own file may not be used (absolute, a `..` part, a NUL), or
    None: a layout's paths stay inside its folder; only a manifest may name any file."""
    if "\x00" in relative:
        return "holds a NUL byte"
    if relative.startswith(("/", "\\")):
        return "is absolute; a path in this layout is relative to the dataset's folder"
    if ".." in relative.replace("\\", "/").split("/"):
        return "has a `..` part; a path in this layout stays inside the dataset's folder"
    return None


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------

def check_header(path: Path, columns: list[str]) -> None:
    """Every column named, and each name once: a second `Cardiomegaly` would silently replace the first."""
    first: dict[str, int] = {}
    for number, name in enumerate(columns, start=1):
        if not name.strip():
            raise InputError(f"{path}: column {number} of the header has an empty name")
        if name in first:
            raise InputError(f"{path}: column {name!r} appears more than once in the header "
                             f"(columns {first[name]} and {number})")
        first[name] = number


def open_text(path: Path) -> io.TextIOBase:
    """A text file for the csv module, gunzipped when its name ends in `.gz`."""
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, newline="", encoding="utf-8-sig")


def find_file(root: Path, name: str) -> Path | None:
    """`root/name`, or its gzipped copy `root/name.gz`, whichever exists (the plain file first)."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_table(path: Path, problems: list[Problem]) -> pl.DataFrame:
    """A CSV (all columns as text; `.csv.gz` read through gzip) or Parquet file; unreadable input is
    one clear line.

    The header must name every column once. A CSV row (numbered from 2, the header being row 1;
    blank lines are no rows) with more or fewer fields than the header is a bad row, added to
    `problems`; it stays in the frame, cut or padded with blanks, so that it can be skipped.
    """
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if path.suffix.lower() == ".parquet":
            check_header(path, list(pq.read_schema(path).names))
            return pl.read_parquet(path)
        with open_text(path) as handle:
            reader = csv.reader(handle)
            columns = next(reader, [])
            check_header(path, columns)
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
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot read as a table ({str(error).splitlines()[0][:120]})") from None


def malformed_rows(problems: list[Problem], file: str) -> set[int]:
    """Rows of `file` already found bad by `_read_table` (kept as samples, whatever their projection)."""
    return {p.row for p in problems if p.file == file and p.row is not None}


def require_columns(path: Path, frame: pl.DataFrame, required: Iterable[str], allowed: Iterable[str] | None) -> None:
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


def text(value: object) -> str:
    return "" if value is None else str(value).strip()


def parse_values(file: str, line: int, record: dict[str, object], labels: Iterable[str],
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


def keep_projection(projection: str, config: IngestConfig) -> bool:
    """Frontal images only, where the projection is known, unless --all-projections."""
    return config.all_projections or projection in ("", "Frontal")


def ordered_labels(names: Iterable[str]) -> list[str]:
    """CheXpert labels in the study's order first, any others after in the order given."""
    names = list(dict.fromkeys(names))
    known = [label for label in CHEXPERT_LABELS if label in names]
    return known + [label for label in names if label not in CHEXPERT_LABELS]


# ---------------------------------------------------------------------------------------------
# Official splits without a val list
# ---------------------------------------------------------------------------------------------

#: One unit (patient, or image where there are none) of an official training list in VAL_SHARE goes
#: to val when the official split is used and the dataset names no val set (NIH, VinDr).
VAL_SHARE = 8


def val_key(seed: int, unit: str) -> str:
    """The order in which units are drawn into val: SHA-256 of `seed:unit` (same for any row order)."""
    return hashlib.sha256(f"{seed}:{unit}".encode()).hexdigest()


def draw_val(units: Iterable[str], seed: int, share: int = VAL_SHARE) -> set[str]:
    """The units (patients, or images where there are none) of an official training list that go to
    val: the ceil(n / share) whose `val_key` sorts first. Deterministic for a seed, independent of row
    order, and whole units only, so a patient is never in both train and val."""
    distinct = sorted(set(units))
    count = math.ceil(len(distinct) / share)
    return set(sorted(distinct, key=lambda unit: val_key(seed, unit))[:count])


def uses_given_split(config: IngestConfig) -> bool:
    """Whether the official split is wanted: no split method named, or `given`."""
    return config.split in (None, SplitMethod.GIVEN)
