"""IU-Xray as NLM's OpenI ships it (`openi`): one `ecgen-radiology/<n>.xml` report per study, given as
that folder or as the `NLMCXR_reports.tgz` archive itself, and the study's PNGs found by name.

Each `parentImage` of a report is one row: uid = the report's `uId` (`CXR1`), filename =
`<parentImage id>.png`, report = INDICATION, COMPARISON, FINDINGS and IMPRESSION joined as the other
IU-Xray loaders do. IU-Xray names no patient, so the uid is the split grouping.

The XML is parsed as hostile input: a file over `MAX_REPORT_BYTES` is refused unread, and a DOCTYPE
(hence any entity declaration) is refused while parsing, before it can define anything. Archive
members are read straight from the tar stream, never extracted; a member that is not a regular file
or whose name is not a plain relative path is refused by name.

Views: IU-Xray's image numbers do not tell frontal from lateral, so the view comes from a
DICOM-metadata CSV (`metadata_csv`, e.g. torchxrayvision's `nlmcxr_dicom_metadata.csv.gz`: `imageid`,
`View Position`). An image whose view is unknown (no CSV, no row, a blank View Position) is kept,
and a warning counts it. Labels: a CheXpert labels CSV keyed by uid (`labels_csv`), or else the MeSH
major (and minor) terms through the Kaggle loader's approximate PROBLEM_TO_LABEL.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import stat
import tarfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree
from xml.parsers import expat

from embedstore.datasets.base import (
    PLAIN_NAME,
    IngestConfig,
    Loaded,
    Problem,
    SourceRow,
    keep_projection,
    parse_values,
    text,
)
from embedstore.datasets.iuxray import mesh_labels, read_labels_by_uid
from embedstore.errors import InputError
from embedstore.iuxray import TEXT_COLUMNS
from embedstore.labels import CHEXPERT_LABELS

REPORTS_DIR = "ecgen-radiology"
REPORTS_ARCHIVE = "NLMCXR_reports.tgz"
IMAGES_DIR = "NLMCXR_png"
#: The largest report read (the real ones are under 10 KB): a bigger member or file is refused unread.
MAX_REPORT_BYTES = 1 << 20
#: MeSH elements whose terms give labels: the indexers' terms (not `automatic`, machine-assigned,
#: which the Kaggle copy's Problems column leaves out too).
MESH_TAGS = ("major", "minor")
#: DICOM View Position -> the projection stored; any other value (or none) is an unknown view.
VIEW_POSITIONS = {"PA": "Frontal", "AP": "Frontal", "LL": "Lateral", "RL": "Lateral", "LATERAL": "Lateral",
                  "LARGE LATERAL": "Lateral"}
METADATA_ID, METADATA_VIEW = "imageid", "View Position"
_PLAIN_PART = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_. -]*")


class _Refused(Exception):
    """A report holds something no OpenI report has (a DOCTYPE or entity declaration)."""


@dataclass
class _Report:
    """What one report XML gives: its uid, text, MeSH terms, and its images with the line of each."""

    uid: str
    report: str
    terms: list[str]
    images: list[tuple[str, int]]


@dataclass
class _Reports:
    """Every report read (member name -> bytes), and the members refused or ignored on the way."""

    source: Path
    files: list[tuple[str, bytes]] = field(default_factory=list)
    ignored: int = 0


# ---------------------------------------------------------------------------------------------
# Reading the reports
# ---------------------------------------------------------------------------------------------

def _report_order(name: str) -> tuple[str, int, str]:
    """`ecgen-radiology/2.xml` before `ecgen-radiology/10.xml`: folder and archive give the same rows."""
    folder, _, base = name.rpartition("/")
    stem = base.removesuffix(".xml")
    return folder, int(stem) if stem.isdigit() else -1, base


def _plain_member(name: str) -> bool:
    """A relative path of plain names: no `..`, no absolute path, no backslash or control character."""
    parts = name.removeprefix("./").removesuffix("/").split("/")
    return all(_PLAIN_PART.fullmatch(part) and part not in (".", "..") for part in parts)


def _wanted(base: str) -> bool:
    """A report file by name: `*.xml`, not hidden (macOS archives carry `._n.xml` resource forks)."""
    return base.lower().endswith(".xml") and not base.startswith(".")


def _read_archive(archive_path: Path, problems: list[Problem]) -> _Reports:
    """The `*.xml` members of a tar(.gz), read from the stream; a link, device or oddly named member
    is a Problem naming it, and nothing is ever written to disk."""
    reports = _Reports(archive_path)
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            for member in archive:
                name = member.name
                if member.isdir():
                    continue
                if not _plain_member(name):
                    problems.append(Problem(archive_path.name, None, f"member {name!r} is not a plain relative "
                                                                     "path; refused"))
                    continue
                if not member.isreg():
                    problems.append(Problem(archive_path.name, None, f"member {name} is not a regular file "
                                                                     "(a link or device); refused"))
                    continue
                name = name.removeprefix("./")
                if not _wanted(name.rpartition("/")[2]):
                    reports.ignored += 1
                    continue
                if member.size > MAX_REPORT_BYTES:
                    problems.append(Problem(name, None, f"{member.size} bytes, over the {MAX_REPORT_BYTES}-byte "
                                                        "limit of a report; refused"))
                    continue
                handle = archive.extractfile(member)
                if handle is None:  # pragma: no cover - isreg() members always have data
                    continue
                reports.files.append((name, handle.read(MAX_REPORT_BYTES + 1)))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise InputError(f"{archive_path}: cannot read as a tar archive ({str(error).splitlines()[0][:120]})") from None
    reports.files.sort(key=lambda item: _report_order(item[0]))
    return reports


def _read_folder(folder: Path, problems: list[Problem]) -> _Reports:
    """The `*.xml` files of `ecgen-radiology/` (not its subfolders), named `ecgen-radiology/<n>.xml`
    as in the archive; a FIFO or device there is a Problem, never opened."""
    reports = _Reports(folder)
    for entry in sorted(folder.iterdir(), key=lambda p: _report_order(f"{folder.name}/{p.name}")):
        name = f"{folder.name}/{entry.name}"
        try:
            mode = entry.stat().st_mode
            if stat.S_ISDIR(mode):
                continue
            if not _wanted(entry.name):
                reports.ignored += 1
                continue
            if not stat.S_ISREG(mode):
                problems.append(Problem(name, None, "not a regular file; refused"))
                continue
            with open(entry, "rb") as handle:
                data = handle.read(MAX_REPORT_BYTES + 1)
        except OSError as error:
            problems.append(Problem(name, None, f"cannot be read ({error.strerror or error})"))
            continue
        if len(data) > MAX_REPORT_BYTES:
            problems.append(Problem(name, None, f"over the {MAX_REPORT_BYTES}-byte limit of a report; refused"))
            continue
        reports.files.append((name, data))
    return reports


def _parse_xml(data: bytes) -> tuple[ElementTree.Element, list[int]]:
    """The element tree of one report and the line of each `parentImage`, in document order.

    Expat builds the tree with a DOCTYPE refused at its start, so no entity (internal, external or
    parameter) can be declared; an undeclared entity reference is then a plain parse error.
    """
    builder = ElementTree.TreeBuilder()
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    image_lines: list[int] = []

    def start(tag: str, attributes: dict[str, str]) -> None:
        if tag == "parentImage":
            image_lines.append(parser.CurrentLineNumber)
        builder.start(tag, attributes)

    def refuse_doctype(name: str, *_: object) -> None:
        raise _Refused(f"a DOCTYPE declaration ({name}) at line {parser.CurrentLineNumber}")

    def refuse_entity(name: str, *_: object) -> None:
        raise _Refused(f"an entity declaration ({name}) at line {parser.CurrentLineNumber}")

    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_entity
    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.Parse(data, True)
    return builder.close(), image_lines


def _element_text(element: ElementTree.Element) -> str:
    """All text inside `element`, stripped (as the Kaggle copy's CSV cells are)."""
    return text("".join(element.itertext()))


def parse_report(name: str, data: bytes, problems: list[Problem]) -> _Report | None:
    """One report XML, or None with a Problem naming the file (unparsable, refused, or without uId)."""
    try:
        root, image_lines = _parse_xml(data)
    except expat.ExpatError as error:
        problems.append(Problem(name, error.lineno,
                                f"not well-formed XML ({expat.ErrorString(error.code)})"))
        return None
    except _Refused as refused:
        problems.append(Problem(name, None, f"holds {refused}, which no OpenI report has; refused"))
        return None
    uid_element = root.find("uId")
    uid = text(uid_element.get("id")) if uid_element is not None else ""
    if not uid:
        problems.append(Problem(name, None, "no <uId id=...> (the report's uid)"))
        return None
    sections = {text(e.get("Label")).lower(): _element_text(e) for e in root.iter("AbstractText")}
    report = " ".join(sections[c] for c in TEXT_COLUMNS if sections.get(c))
    terms = [_element_text(e) for e in root.iterfind("MeSH/*") if e.tag in MESH_TAGS]
    images = [(text(e.get("id")), line) for e, line in zip(root.iter("parentImage"), image_lines, strict=True)]
    return _Report(uid, report, [t for t in terms if t], images)


# ---------------------------------------------------------------------------------------------
# Views, labels and images
# ---------------------------------------------------------------------------------------------

def _open_csv(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, newline="", encoding="utf-8-sig")


def read_views(path: Path, problems: list[Problem]) -> dict[str, str]:
    """Image id -> DICOM View Position (upper case, blank where the CSV leaves it blank).

    Only the `imageid` and `View Position` columns are read: the real CSV has 176 columns, one of
    them without a name, which the generic table reader rightly refuses for a labels table.
    """
    if not path.is_file():
        raise InputError(f"{path}: file not found", parameter="metadata_csv")
    views: dict[str, str] = {}
    first_line: dict[str, int] = {}
    try:
        with _open_csv(path) as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            missing = [c for c in (METADATA_ID, METADATA_VIEW) if c not in header]
            if missing:
                raise InputError(f"{path}: missing column(s) {', '.join(missing)} (a DICOM-metadata CSV names each "
                                 f"image by {METADATA_ID!r} and gives its {METADATA_VIEW!r})", parameter="metadata_csv")
            id_at, view_at = header.index(METADATA_ID), header.index(METADATA_VIEW)
            for line, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                if len(fields) != len(header):
                    problems.append(Problem(path.name, line, f"{len(fields)} fields, but the header has {len(header)}"))
                    continue
                image_id, view = fields[id_at].strip(), fields[view_at].strip().upper()
                if image_id in views and views[image_id] != view:
                    problems.append(Problem(path.name, line, f"image {image_id} has View Position {view!r} here and "
                                                             f"{views[image_id]!r} at row {first_line[image_id]}"))
                    continue
                views[image_id] = view
                first_line.setdefault(image_id, line)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, zlib.error) as error:
        raise InputError(f"{path}: cannot read as a CSV ({str(error).splitlines()[0][:120]})",
                         parameter="metadata_csv") from None
    return views


def _find_images(root: Path) -> tuple[dict[str, Path], int]:
    """Every `*.png` under `root` by file name (one walk, sorted, hidden folders skipped); the first of
    a name wins, and the number of names found more than once is returned with them."""
    found: dict[str, Path] = {}
    repeated: set[str] = set()
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(files):
            if name.lower().endswith(".png"):
                if name in found:
                    repeated.add(name)
                else:
                    found[name] = Path(folder) / name
    return found, len(repeated)


# ---------------------------------------------------------------------------------------------
# The layout
# ---------------------------------------------------------------------------------------------

def _locate(path: Path) -> tuple[Path, Path]:
    """(the reports: folder or archive, the folder searched for PNGs) for the path given."""
    if path.is_file():
        return path, path.parent
    if path.is_dir() and path.name == REPORTS_DIR:
        return path, path.parent
    if (path / REPORTS_DIR).is_dir():
        return path / REPORTS_DIR, path
    if (path / REPORTS_ARCHIVE).is_file():
        return path / REPORTS_ARCHIVE, path
    raise InputError(f"{path}: holds neither {REPORTS_DIR}/ nor {REPORTS_ARCHIVE} (the OpenI reports)")


def load(path: Path, config: IngestConfig) -> Loaded:
    """The OpenI reports (folder or archive) and their PNGs: one row per parentImage (module docstring)."""
    reports_path, root = _locate(path)
    loaded = Loaded("openi", reports_path, list(CHEXPERT_LABELS), [])
    if reports_path.is_dir():
        reports = _read_folder(reports_path, loaded.problems)
        if root.joinpath(REPORTS_ARCHIVE).is_file():
            loaded.warnings.append(f"read the reports from {REPORTS_DIR}/; {REPORTS_ARCHIVE} beside it was not read")
    else:
        reports = _read_archive(reports_path, loaded.problems)
    if reports.ignored:
        loaded.warnings.append(f"{reports.ignored} file(s) in {reports_path.name} not named *.xml (or hidden) ignored")
    if not reports.files:
        raise InputError(f"{reports_path}: no *.xml report found", details=[str(p) for p in loaded.problems])
    parsed = [(name, parse_report(name, data, loaded.problems)) for name, data in reports.files]

    views = read_views(config.metadata_csv, loaded.problems) if config.metadata_csv is not None else None
    label_rows = read_labels_by_uid(config.labels_csv, loaded.problems) if config.labels_csv is not None else None
    # NLMCXR_png/ alone when it is there: the folder given may hold other datasets too
    images, repeated = _find_images(root / IMAGES_DIR if (root / IMAGES_DIR).is_dir() else root)
    if repeated:
        loaded.warnings.append(f"{repeated} PNG name(s) found in more than one folder under {root}; "
                               "the first in sorted order is used")

    unmapped: Counter[str] = Counter()
    uid_file: dict[str, str] = {}
    without_images: list[str] = []
    unknown_views: Counter[str] = Counter()
    dropped = 0
    for name, report in parsed:
        if report is None:
            continue
        if not report.images:
            without_images.append(report.uid)
        if label_rows is None or config.labels_csv is None:
            values, label_problems = mesh_labels(report.terms, unmapped), list[str]()
        else:
            values, label_problems = _csv_labels(report.uid, label_rows, config.labels_csv.name)
        if report.uid in uid_file:
            label_problems.append(f"uid {report.uid} is also the uid of {uid_file[report.uid]}")
        uid_file.setdefault(report.uid, name)
        for image_id, line in report.images:
            if not PLAIN_NAME.fullmatch(image_id):
                loaded.problems.append(Problem(name, line, f"parentImage id {image_id!r} is not a plain file name"))
                continue
            projection, unknown = _view(image_id, views)
            if unknown:
                unknown_views[unknown] += 1
            if not keep_projection(projection or "", config):
                dropped += 1
                continue
            filename = f"{image_id}.png"
            loaded.rows.append(SourceRow(
                file=name, row=line, uid=report.uid, filename=filename,
                path=images.get(filename, root / IMAGES_DIR / filename), report=report.report,
                projection=projection, split=None, values=dict(values),
            ))
            loaded.problems.extend(Problem(name, line, message) for message in label_problems)

    if not loaded.rows and loaded.problems:  # ingest would only say "no rows": say why
        raise InputError(f"{reports_path}: no image row could be read ({len(loaded.problems)} problem(s), listed above)",
                         details=[str(p) for p in loaded.problems])
    _warn(loaded, config, root, views, unknown_views, dropped, without_images, unmapped, len(images))
    return loaded


def _csv_labels(uid: str, label_rows: dict[str, dict[str, object]],
                labels_name: str) -> tuple[dict[str, int | None], list[str]]:
    """A report's values from the labels CSV, found by its uid (`CXR12`) or by the bare number (`12`,
    the Kaggle copy's uid), and the problems of that labels row (each becomes a problem of every
    image of the report, which skipping bad rows can leave out)."""
    record = label_rows.get(uid) or label_rows.get(uid.removeprefix("CXR"))
    if record is None:
        return {label: None for label in CHEXPERT_LABELS}, [f"uid {uid} has no row in {labels_name}"]
    found: list[Problem] = []
    values = parse_values(labels_name, int(str(record["_line"])), record, CHEXPERT_LABELS, found)
    return values, [f"({problem}) uid {uid}" for problem in found]


def _view(image_id: str, views: dict[str, str] | None) -> tuple[str | None, str]:
    """(projection or None, why the view is unknown or "") of one image."""
    if views is None:
        return None, "no metadata CSV"
    if image_id not in views:
        return None, "no row in the metadata CSV"
    position = views[image_id]
    if position in VIEW_POSITIONS:
        return VIEW_POSITIONS[position], ""
    return None, f"View Position {position!r}" if position else "a blank View Position"


def _warn(loaded: Loaded, config: IngestConfig, root: Path, views: dict[str, str] | None, unknown_views: Counter[str],
          dropped: int, without_images: list[str], unmapped: Counter[str], n_images: int) -> None:
    """The warnings and `options` (stored as provenance) that say how views and labels were read."""
    if views is None:
        loaded.warnings.append(
            f"no DICOM-metadata CSV given: the view of every image is unknown and all {len(loaded.rows)} are kept, "
            "lateral ones included; give the DICOM-metadata CSV (nlmcxr_dicom_metadata.csv.gz, shipped with "
            "torchxrayvision) to keep frontal images only")
    elif unknown_views:
        reasons = ", ".join(f"{count} {reason}" for reason, count in unknown_views.most_common())
        loaded.warnings.append(f"{sum(unknown_views.values())} image(s) of unknown view kept ({reasons}); "
                               "some may be lateral")
    if dropped:
        loaded.warnings.append(f"{dropped} lateral image(s) left out (frontal only; all projections keeps them)")
    if without_images:
        loaded.warnings.append(f"{len(without_images)} report(s) have no parentImage, so no row: "
                               f"{', '.join(without_images[:5])}{', ...' if len(without_images) > 5 else ''}")
    if n_images == 0 and loaded.rows:
        loaded.warnings.append(f"no *.png found under {root} (extract NLMCXR_png.tgz beside the reports)")
    if config.labels_csv is None:
        loaded.warnings.append(
            "labels derived from the MeSH major/minor terms through an approximate mapping (docs/datasets.md, "
            "\"openi\"); give a CheXpert labeler output CSV as the labels file for the study's labels")
        if unmapped:
            loaded.warnings.append(
                f"{len(unmapped)} MeSH term(s) ({sum(unmapped.values())} uses) map to no CheXpert label, e.g. "
                f"{', '.join(term for term, _ in unmapped.most_common(5))}")
    loaded.options = {
        "reports": loaded.source.name,
        "view_rule": ("View Position from " + config.metadata_csv.name
                      + ": PA/AP frontal, LL/RL/LATERAL lateral; blank or absent unknown, kept"
                      if config.metadata_csv is not None else "no metadata CSV: view unknown, every image kept"),
        "label_source": (f"labels CSV {config.labels_csv.name} by uid" if config.labels_csv is not None
                         else "MeSH major/minor terms through the approximate PROBLEM_TO_LABEL"),
    }


def detect(path: Path) -> bool:
    """A folder holding `ecgen-radiology/` or `NLMCXR_reports.tgz`, that folder itself, or the archive."""
    if path.is_file():
        name = path.name.lower()
        return name.startswith("nlmcxr_reports") and name.endswith((".tgz", ".tar.gz", ".tar"))
    if path.is_dir():
        return path.name == REPORTS_DIR or (path / REPORTS_DIR).is_dir() or (path / REPORTS_ARCHIVE).is_file()
    return False
