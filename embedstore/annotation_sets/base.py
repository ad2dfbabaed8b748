"""What every annotation reader shares: the regions it yields, how file and label names are matched
to the run's, and how annotation files are opened (regular files only, bounded, gzip and one-CSV zips).

A reader (one module per format in this package) turns one file into `Region`s through a `FileRead`,
which matches image and label names, counts the rows it leaves out, records who read which image and
collects every bad row, so that one error lists them all (`file:row: message`).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
import stat
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from embedstore.annotations import InputGeometry
from embedstore.choices import AnnotationFormat
from embedstore.errors import InputError
from embedstore.images import _not_regular, shown

#: Largest annotation file read, in bytes, on disk and once decompressed (the published chest X-ray
#: annotation files are at most tens of megabytes).
MAX_FILE_BYTES = 1 << 30
#: Largest JSON document parsed, in bytes (Python holds several times its size in objects).
MAX_JSON_BYTES = 256 << 20
#: Most CSV rows read (VinDr-CXR's train annotations have 67,914; a few short bytes per row of a
#: compressed file must not become tens of gigabytes of Python objects).
MAX_ROWS = 5_000_000
#: Why a row that names an image but draws nothing on it (an all-zero mask) is left out.
EMPTY = "empty mask"
#: Bad rows listed in an error's details.
MAX_DETAILS = 50
#: Image suffixes stripped from a filename to give its stem (repeatedly: `x.dcm.png` → `x`).
IMAGE_SUFFIXES = (".dcm.png", ".png", ".jpg", ".jpeg", ".dcm", ".dicom")

#: Reasons a row is left out (published formats); the counts go into `AnnotationSet.left_out`.
IMAGE_MISSING = "image not in the dataset"
IMAGE_AMBIGUOUS = "image name matches several images in the dataset"
LABEL_MISSING = "label the run does not have"
LABEL_AMBIGUOUS = "ambiguous label"

#: Other spellings of label names that published annotation files use (lower case → label-set name).
LABEL_ALIASES = {"airspace opacity": "Lung Opacity",   # CheXlocalize's name for CheXpert's Lung Opacity
                 "infiltrate": "Infiltration"}          # NIH's BBox_List_2017.csv for its Infiltration label


# ---------------------------------------------------------------------------------------------
# Regions
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Box:
    """A box in original image pixels: edges, x1 and y1 exclusive; `frame` the (height, width) the
    coordinates refer to when the file says so (None: the image's own size)."""

    x0: float
    y0: float
    x1: float
    y1: float
    frame: tuple[int, int] | None = None


@dataclass(frozen=True)
class Mask:
    """A mask decoded only when used: `decode(original)` gives a bool array of `frame` (or, without
    a frame, of the image's `original` (height, width)), or raises InputError naming its source."""

    decode: Callable[[tuple[int, int]], np.ndarray] = field(repr=False)
    frame: tuple[int, int] | None = None


@dataclass(frozen=True)
class Region:
    """One region one reader drew for one label on one image, in original pixels."""

    filename: str
    label: str
    source: str
    reader: str
    shape: Box | Mask
    text: str | None = None

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """The box's coordinates as the file gives them (None for a mask)."""
        shape = self.shape
        return (shape.x0, shape.y0, shape.x1, shape.y1) if isinstance(shape, Box) else None

    def box_on(self, original: tuple[int, int]) -> tuple[float, float, float, float]:
        """The box on an image of `original` (height, width): scaled from its frame where that differs."""
        shape = self.shape
        if not isinstance(shape, Box):
            raise TypeError("box_on: the region is a mask")
        if shape.frame is None or shape.frame == original:
            return shape.x0, shape.y0, shape.x1, shape.y1
        sy, sx = original[0] / shape.frame[0], original[1] / shape.frame[1]
        return shape.x0 * sx, shape.y0 * sy, shape.x1 * sx, shape.y1 * sy

    def original_mask(self, original: tuple[int, int]) -> np.ndarray:
        """The region as a bool (height, width) array on an image of `original` size. A box covers the
        pixels whose centre lies in [y0, y1) × [x0, x1); a mask drawn on another frame is scaled
        nearest-neighbour."""
        height, width = original
        if isinstance(self.shape, Box):
            x0, y0, x1, y1 = self.box_on(original)
            ys = np.arange(height) + 0.5
            xs = np.arange(width) + 0.5
            return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
        mask = np.asarray(self.shape.decode(original)).astype(bool, copy=False)
        expected = self.shape.frame or original
        if mask.shape != expected:
            raise InputError(f"{shown(self.source)}: the mask is {mask.shape[-1]}×{mask.shape[0]} pixels, not the "
                             f"{expected[1]}×{expected[0]} it should be", parameter="annotations")
        return mask if expected == original else nearest(mask, original)

    def input_mask(self, geometry: InputGeometry) -> np.ndarray:
        """The region on the model's input pixels (through its resize and centre crop)."""
        if isinstance(self.shape, Box):
            return geometry.box_mask(*self.box_on(geometry.original))
        return geometry.mask(self.original_mask(geometry.original))


def nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`mask` resampled nearest-neighbour to `size` (height, width), pixel centres aligned."""
    rows = np.minimum(((np.arange(size[0]) + 0.5) * mask.shape[0] / size[0]).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * mask.shape[1] / size[1]).astype(np.int64), mask.shape[1] - 1)
    return mask[rows][:, cols]


@dataclass
class AnnotationSet:
    """Every region of one or more annotation files, who read which image, and what was left out."""

    paths: tuple[Path, ...]
    format: AnnotationFormat
    regions: list[Region]
    #: filename → every reader who read that image, sorted, including readers who drew nothing on it
    readers: dict[str, tuple[str, ...]]
    #: reason → rows left out for it
    left_out: dict[str, int]
    #: str(path) → sha256 of that file (of a folder: of its sorted (name, sha256) list)
    sha256: dict[str, str]

    def multi_reader_images(self) -> set[str]:
        """The images two or more readers read."""
        return {filename for filename, readers in self.readers.items() if len(readers) >= 2}


# ---------------------------------------------------------------------------------------------
# Matching file and label names to the run's
# ---------------------------------------------------------------------------------------------

def strip_image_suffixes(name: str) -> str:
    """`name` without its image suffixes (`.dcm.png`, `.png`, `.jpg`, `.jpeg`, `.dcm`, `.dicom`)."""
    while True:
        lower = name.lower()
        suffix = next((s for s in IMAGE_SUFFIXES if lower.endswith(s) and len(name) > len(s)), None)
        if suffix is None:
            return name
        name = name[:-len(suffix)]


def image_keys(name: str) -> list[str]:
    """The keys a filename is known by: itself, its basename, both without image suffixes, and the
    CheXpert/CheXlocalize key (`patient64622_study1_view1_frontal`: the last three path parts)."""
    posix = name.replace("\\", "/")
    base = posix.rsplit("/", 1)[-1]
    stripped = strip_image_suffixes(posix)
    keys = [name, base, strip_image_suffixes(base), stripped]
    parts = stripped.split("/")
    if len(parts) >= 3:
        keys.append("_".join(parts[-3:]))
    return list(dict.fromkeys(k for k in keys if k))


_AMBIGUOUS = "\0ambiguous"
_IMAGE_SUFFIX = re.compile(r"\.[A-Za-z][A-Za-z0-9]{1,4}")


class FileMatcher:
    """The dataset's filenames by every key of `image_keys`; a key two files share matches neither.
    With no known files every name is kept as it is."""

    def __init__(self, known: Collection[str] | None) -> None:
        self.known = None if known is None else set(known)
        self._index: dict[str, str] = {}
        for filename in sorted(self.known or ()):
            keys = image_keys(filename)
            base = keys[1]
            if _IMAGE_SUFFIX.fullmatch(Path(base).suffix):    # the stem `mask_name` gives (`x.tif` → `x`)
                keys.append(Path(base).stem)
            for key in dict.fromkeys(keys):
                held = self._index.get(key)
                self._index[key] = filename if held in (None, filename) else _AMBIGUOUS

    def match(self, key: str) -> tuple[str | None, str]:
        """(the dataset's filename, "") for an annotation's image key, or (None, the reason)."""
        if self.known is None or key in self.known:
            return key, ""
        for candidate in image_keys(key):
            held = self._index.get(candidate)
            if held == _AMBIGUOUS:
                return None, IMAGE_AMBIGUOUS
            if held is not None:
                return held, ""
        return None, IMAGE_MISSING


@cache
def _counterparts() -> dict[str, frozenset[str]]:
    """Lower-case label name → the CheXpert labels it corresponds to in any shipped label set."""
    from embedstore.label_sets import label_sets

    found: dict[str, set[str]] = {}
    for label_set in label_sets().values():
        for name, chexpert in label_set.chexpert.items():
            if chexpert:
                found.setdefault(name.lower(), set()).add(chexpert)
                found.setdefault(chexpert.lower(), set()).add(chexpert)
    return {name: frozenset(values) for name, values in found.items()}


def counterparts(label: str) -> frozenset[str]:
    """The CheXpert labels `label` corresponds to (its alias first), empty where none does."""
    lower = label.strip().lower()
    return _counterparts().get(LABEL_ALIASES.get(lower, lower).lower(), frozenset())


class LabelMatcher:
    """A file's label name → the run's: exact, else case-insensitive (or through a known alias),
    else through their CheXpert counterparts. Several run labels matching → none. With no known
    labels every name is kept as it is."""

    def __init__(self, known: Sequence[str] | None) -> None:
        self.known = None if known is None else list(known)
        self._memo: dict[str, tuple[str | None, str]] = {}

    def match(self, name: str) -> tuple[str | None, str]:
        """(the run's label, "") or (None, the reason)."""
        if self.known is None or name in self.known:
            return name, ""
        if name not in self._memo:
            self._memo[name] = self._match(name, self.known)
        return self._memo[name]

    @staticmethod
    def _match(name: str, known: list[str]) -> tuple[str | None, str]:
        lower = name.strip().lower()
        for spelling in dict.fromkeys([lower, LABEL_ALIASES.get(lower, lower).lower()]):
            hits = [label for label in known if label.strip().lower() == spelling]
            if hits:
                return (hits[0], "") if len(hits) == 1 else (None, LABEL_AMBIGUOUS)
        wanted = counterparts(name)
        hits = [label for label in known if counterparts(label) & wanted] if wanted else []
        if len(hits) == 1:
            return hits[0], ""
        return (None, LABEL_AMBIGUOUS) if hits else (None, LABEL_MISSING)


# ---------------------------------------------------------------------------------------------
# Reading one file
# ---------------------------------------------------------------------------------------------

@dataclass
class FileRead:
    """One file being read: its reader name, the matchers, and what reading it found."""

    path: Path
    format: AnnotationFormat
    reader: str
    images: FileMatcher
    labels: LabelMatcher
    masks: Path | None = None
    regions: list[Region] = field(default_factory=list)
    readers: dict[str, set[str]] = field(default_factory=dict)
    left_out: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    #: the reader ids the file itself carries (VinDr rad_id, a COCO annotation's reader)
    reader_ids: set[str] = field(default_factory=set)
    sha256: dict[str, str] = field(default_factory=dict)

    def where(self, row: int | str) -> str:
        """`path:row`, as sources and messages name a row."""
        return f"{self.path}:{row}"

    def bad(self, where: str, message: str) -> None:
        self.problems.append(shown(f"{where}: {message}"))

    def filled(self, where: str, **values: str) -> bool:
        """Whether every named value is non-blank; the first blank one is a bad row."""
        blank = next((name for name, value in values.items() if not value.strip()), None)
        if blank is not None:
            self.bad(where, f"{blank} is blank")
        return blank is None

    def image(self, key: str, rows: int = 1) -> str | None:
        """The dataset's filename for an image key, or None (its `rows` counted as left out)."""
        filename, reason = self.images.match(key)
        if filename is None:
            self.left_out[reason] += rows
        return filename

    def label(self, name: str) -> str | None:
        """The run's label for a file's label name, or None (the row counted as left out)."""
        label, reason = self.labels.match(name)
        if label is None:
            self.left_out[reason] += 1
        return label

    def add_image(self, key: str, shapes: Sequence[tuple[str, str, Box | Mask | None]], empty: str = EMPTY,
                  reader_id: str | None = None) -> None:
        """One image's (label, source, shape) entries read by `reader_id` (else the file's reader); a
        None shape draws nothing (counted as `empty`), and the image still counts as read."""
        filename = self.image(key, rows=len(shapes))
        if filename is None:
            return
        reader = self.read_by(filename, reader_id)
        for name, where, shape in shapes:
            if shape is None:
                self.left_out[empty] += 1
                continue
            label = self.label(name)
            if label is not None:
                self.regions.append(Region(filename, label, where, reader, shape))

    def read_by(self, filename: str, reader_id: str | None = None) -> str:
        """Record that `filename` was read (by the file's own reader id, else by the file's reader);
        returns the reader's name."""
        reader = self.reader
        if reader_id:
            reader = reader_id
            self.reader_ids.add(reader_id)
        self.readers.setdefault(filename, set()).add(reader)
        return reader

    def finish(self) -> None:
        """Raise with every bad row, or when nothing of the run's images and labels is left."""
        where = shown(self.path)
        if self.problems:
            raise InputError(f"annotations {where}: {len(self.problems)} bad row(s); first: {self.problems[0]}",
                             details=self.problems[:MAX_DETAILS], parameter="annotations")
        if not self.regions:
            counts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.left_out.items())) or "none"
            raise InputError(f"annotations {where}: no annotation of the run's images and labels (left out: {counts})",
                             parameter="annotations")


def cell_box(out: FileRead, where: str, cells: Sequence[str], message: str, corners: bool = False,
             frame: tuple[int, int] | None = None) -> Box | None:
    """A box from four table cells — x, y, width, height (or x0, y0, x1, y1 with `corners`) — or None
    with the row recorded as bad (`message` when a cell is not a number)."""
    try:
        a, b, c, d = (number(text) for text in cells)
    except ValueError:
        out.bad(where, message)
        return None
    x1, y1 = (c, d) if corners else (a + c, b + d)
    problem = box_problem(a, b, x1, y1)
    if problem:
        out.bad(where, problem)
        return None
    return Box(a, b, x1, y1, frame)


def number(text: str) -> float:
    """A finite float from a table cell (ValueError otherwise)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def json_number(value: object) -> float | None:
    """A finite JSON number (bools are not numbers), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def frame_problem(height: object, width: object) -> str | None:
    """Why (height, width) is no image frame: not positive whole numbers, or more pixels than any image
    embedstore decodes (a tiny file naming a huge frame would otherwise allocate gigabytes)."""
    from embedstore.images import MAX_IMAGE_PIXELS

    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (height, width)):
        return "the image size must be positive whole numbers"
    if int(height) * int(width) > MAX_IMAGE_PIXELS:  # type: ignore[call-overload]
        return f"an image of {width}×{height} pixels is over the limit of {MAX_IMAGE_PIXELS:,}"
    return None


def json_size(value: object) -> tuple[int, int] | None:
    """A JSON [height, width] of positive integers within the pixel limit, else None."""
    if not isinstance(value, list | tuple) or len(value) != 2 or frame_problem(*value):
        return None
    return int(value[0]), int(value[1])


def box_problem(x0: float, y0: float, x1: float, y1: float) -> str | None:
    """Why (x0, y0, x1, y1) is no box (empty, inverted, negative), or None."""
    if not (x0 < x1 and y0 < y1) or min(x0, y0) < 0:
        return f"empty, inverted or negative box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) (need x0 < x1, y0 < y1, all ≥ 0)"
    return None


# ---------------------------------------------------------------------------------------------
# Opening files
# ---------------------------------------------------------------------------------------------

def _refuse(path: Path, reason: str) -> InputError:
    return InputError(f"annotations {shown(path)}: {reason}", parameter="annotations")


class _Limited(io.RawIOBase):
    """A read-only stream that refuses to give more than `limit` bytes (a gzip bomb stops there)."""

    def __init__(self, inner: IO[bytes], limit: int, path: Path) -> None:
        super().__init__()
        self._inner, self._limit, self._path, self._seen = inner, limit, path, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._inner.read(len(view))
        self._seen += len(data)
        if self._seen > self._limit:
            raise _refuse(self._path, f"holds more than {self._limit:,} bytes; refused")
        view[:len(data)] = data
        return len(data)


def _zip_member(handle: IO[bytes], path: Path, stack: contextlib.ExitStack) -> IO[bytes]:
    """The one CSV of a zip: exactly one member, a plain name ending in .csv, within the size limit."""
    archive = stack.enter_context(zipfile.ZipFile(handle))
    members = archive.infolist()
    if len(members) != 1:
        raise _refuse(path, f"a zip of annotations must hold exactly one .csv file; it holds {len(members)} members")
    member = members[0]
    name = member.filename
    if not name or any(c in name for c in "/\\") or name.startswith(".") or not name.lower().endswith(".csv"):
        raise _refuse(path, f"zip member {name!r}: not a plain .csv file name")
    if member.file_size > MAX_FILE_BYTES:
        raise _refuse(path, f"zip member {name!r} is {member.file_size:,} bytes, over the limit of {MAX_FILE_BYTES:,}")
    return stack.enter_context(archive.open(member))


def check_regular(path: Path) -> os.stat_result:
    """The file's status, once it is known to be a regular file within the size limit."""
    name = os.fspath(path)
    if "\x00" in name:
        raise _refuse(path, "has a NUL byte in its path")
    try:
        info = os.stat(name)
    except FileNotFoundError:
        raise _refuse(path, "not found") from None
    except OSError as error:
        raise _refuse(path, f"cannot be read ({error.strerror or error})") from None
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(path, str(_not_regular(info.st_mode)))
    if info.st_size > MAX_FILE_BYTES:
        raise _refuse(path, f"{info.st_size:,} bytes, over the limit of {MAX_FILE_BYTES:,}")
    return info


@contextlib.contextmanager
def open_binary(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes (gunzipped for `.gz`, the one CSV member of a `.zip`), never more than
    MAX_FILE_BYTES. Only a regular file is opened (a FIFO would block, a device never end); read
    errors raise InputError naming the path."""
    check_regular(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    with reading(path), contextlib.ExitStack() as stack:
        handle: IO[bytes] = stack.enter_context(open(os.open(path, flags), "rb", closefd=True))
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(path, str(_not_regular(info.st_mode)))
        lower = path.name.lower()
        if lower.endswith(".gz"):
            handle = cast(IO[bytes], stack.enter_context(gzip.GzipFile(fileobj=handle, mode="rb")))
        elif lower.endswith(".zip"):
            handle = _zip_member(handle, path, stack)
        yield io.BufferedReader(_Limited(handle, MAX_FILE_BYTES, path))


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn a read error of `path` into one InputError line."""
    try:
        yield
    except UnicodeDecodeError:
        raise _refuse(path, "not UTF-8 text") from None
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, zipfile.LargeZipFile, csv.Error,
            RuntimeError, NotImplementedError) as error:
        reason = getattr(error, "strerror", None) or (str(error).splitlines() or [type(error).__name__])[0]
        raise _refuse(path, f"cannot be read ({shown(reason)[:120]})") from None


@dataclass
class Table:
    """A CSV's header and its rows, numbered from 2 (the header is row 1; blank lines are no rows)."""

    path: Path
    header: list[str]
    rows: list[tuple[int, list[str]]]

    def columns(self, required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, int]:
        """Column positions by name (compared stripped and case-insensitively); a missing required
        column is an InputError listing them all."""
        positions: dict[str, int] = {}
        for index, name in enumerate(self.header):
            positions.setdefault(name.strip().lower(), index)
        missing = [c for c in required if c.lower() not in positions]
        if missing:
            raise _refuse(self.path, f"missing column(s) {', '.join(missing)} (expected {','.join(required)})")
        return {c: positions[c.lower()] for c in (*required, *optional) if c.lower() in positions}


def cell(fields: list[str], index: int) -> str:
    """Field `index` of a row ("" where the row is shorter)."""
    return fields[index] if index < len(fields) else ""


class Source:
    """One annotation path: a folder, a CSV (plain, `.gz`, one-CSV `.zip`) or a JSON document, read
    once and kept."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._header: list[str] | None = None
        self._table: Table | None = None
        self._document: Any = None
        self._parsed = False

    @property
    def is_folder(self) -> bool:
        return self.path.is_dir()

    def looks_like_json(self) -> bool:
        """Whether the (decompressed) text starts with `{` or `[`."""
        with open_binary(self.path) as handle:
            start = handle.read(4096)
        return start.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"{", b"["))

    def header(self) -> list[str]:
        """The CSV's first line, as fields."""
        if self._table is not None:
            return self._table.header
        if self._header is None:
            with open_binary(self.path) as raw, reading(self.path):
                text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
                self._header = next(csv.reader(text), [])
        return self._header

    def table(self) -> Table:
        """The whole CSV."""
        if self._table is None:
            rows: list[tuple[int, list[str]]] = []
            with open_binary(self.path) as raw, reading(self.path):
                reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
                header = next(reader, [])
                for fields in reader:
                    if fields and any(f.strip() for f in fields):
                        if len(rows) == MAX_ROWS:
                            raise _refuse(self.path, f"more than {MAX_ROWS:,} rows")
                        rows.append((reader.line_num, fields))
            self._table = Table(self.path, header, rows)
        return self._table

    def document(self) -> Any:
        """The whole JSON document (at most MAX_JSON_BYTES)."""
        if not self._parsed:
            with open_binary(self.path) as raw, reading(self.path):
                data = raw.read(MAX_JSON_BYTES + 1)
            if len(data) > MAX_JSON_BYTES:
                raise _refuse(self.path, f"a JSON document over the limit of {MAX_JSON_BYTES:,} bytes; refused")
            try:
                self._document = json.loads(data.decode("utf-8-sig"))
            except UnicodeDecodeError:
                raise _refuse(self.path, "not UTF-8 text") from None
            except (ValueError, RecursionError) as error:
                raise _refuse(self.path, f"not valid JSON ({shown(error)[:120]})") from None
            self._parsed = True
        return self._document


@dataclass(frozen=True)
class FormatReader:
    """One format: what it reads (a CSV, a JSON document or a folder), how it is recognised from its
    header or document, and the reader that turns a source into regions."""

    format: AnnotationFormat
    kind: str
    sniff: Callable[[Source], bool]
    read: Callable[[Source, FileRead], None]
    description: str


def header_names(source: Source) -> set[str]:
    """The CSV's column names, stripped and lower case (for recognising a format)."""
    return {name.strip().lower() for name in source.header()}


def folder_sha256(folder: Path, suffix: str = ".png") -> str:
    """sha256 of a folder's regular `suffix` files, as the sorted (name, sha256) list in JSON."""
    from embedstore.atomic import sha256_file

    entries = []
    with reading(folder):
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.lower().endswith(suffix) and entry.is_file():
                entries.append((entry.name, sha256_file(Path(entry.path))))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()
