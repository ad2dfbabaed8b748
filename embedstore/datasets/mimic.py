"""MIMIC-CXR-JPG (`mimic-cxr`): `mimic-cxr-2.0.0-metadata.csv(.gz)` (one row per image),
`mimic-cxr-2.0.0-chexpert.csv(.gz)` (the 14 labels per study) and `mimic-cxr-2.0.0-split.csv(.gz)`
(the official split per image), images at `files/pXX/p<subject_id>/s<study_id>/<dicom_id>.jpg`.

The CSVs are looked for in the folder given and then in its parent (so both the release's top folder
and its `files/` folder work); images and reports lie under the folder holding the CSVs. A report is
`files/pXX/p<subject_id>/s<study_id>.txt`, where MIMIC-CXR's `mimic-cxr-reports.zip` puts it when
unzipped in that folder; a study without one gets an empty report.

ViewPosition PA or AP is "Frontal", LATERAL or LL "Lateral"; any other value is stored as written and
a blank one as unknown (NULL). Only frontal images are kept unless all projections are asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

from embedstore.datasets.base import (
    PLAIN_NAME,
    IngestConfig,
    Loaded,
    Problem,
    SourceRow,
    find_file,
    malformed_rows,
    parse_values,
    read_table,
    require_columns,
)
from embedstore.datasets.chexpert import draw_views
from embedstore.datasets.sample_annotations import AnnotatedImage, DrawnRegion, ms_cxr_rows, write_ms_cxr
from embedstore.datasets.sample_writing import assign_patients, refuse_nonempty, write_csv
from embedstore.errors import InputError
from embedstore.label_sets import label_set
from embedstore.labels import CHEXPERT_LABELS
from embedstore.synthetic import ImageJob, SampleConfig, plan_dataset

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
IMAGE_ROOT = "files"
#: MS-CXR's phrase-grounded boxes, as the sample writes them.
MS_CXR_DIR, MS_CXR_CSV = "ms-cxr", "MS_CXR_Local_Alignment_v1.0.0.csv"
#: ViewPosition values and the projection each is stored as; any other non-blank value is kept as written.
VIEW_PROJECTION: dict[str, str] = {"PA": "Frontal", "AP": "Frontal", "LATERAL": "Lateral", "LL": "Lateral"}
#: The official split's names and ingest's.
SPLIT_NAMES: dict[str, str] = {"train": "train", "validate": "val", "test": "test"}
OFFICIAL_NAME: dict[str, str] = {ours: theirs for theirs, ours in SPLIT_NAMES.items()}
METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows", "Columns",
    "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning", "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
VIEW_RULE = ("ViewPosition PA/AP = Frontal, LATERAL/LL = Lateral, other values as written, blank = unknown (NULL); "
             "only Frontal kept unless all projections are asked for")


# ---------------------------------------------------------------------------------------------
# Finding the files
# ---------------------------------------------------------------------------------------------

def metadata_file(path: Path) -> Path | None:
    """The metadata CSV in `path` (or in a given file's folder), else in its parent; None if neither has it."""
    folder = path if path.is_dir() else path.parent
    for candidate in (folder, folder.parent):
        found = find_file(candidate, METADATA_CSV)
        if found is not None:
            return found
    return None


def detect(path: Path) -> bool:
    """A folder holding `mimic-cxr-2.0.0-metadata.csv(.gz)`, or one whose parent does (`files/`)."""
    return path.is_dir() and metadata_file(path) is not None


def study_folder(subject: str, study: str) -> str:
    """`files/pXX/p<subject>/s<study>` (pXX: the first two digits of the subject id)."""
    return f"{IMAGE_ROOT}/p{subject[:2]}/p{subject}/s{study}"


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def _first_rows(frame: pl.DataFrame, key: str, file: str, what: str, problems: list[Problem]) -> pl.DataFrame:
    """`frame` with its line numbers (`_line_<file>`), one row per `key`: a second row for the same key
    is a problem at that row (no image row is its own, so ingest cannot skip it: the file must be fixed)."""
    lines = frame.with_row_index("_line", offset=2).with_columns(pl.col(key).str.strip_chars())
    repeated = lines.filter(pl.col(key).is_duplicated())
    first_line: dict[str, int] = {}
    for value, line in repeated.select(key, "_line").iter_rows():
        if value in first_line:
            problems.append(Problem(file, line, f"{what} {value} has a second row (first at row {first_line[value]})"))
        else:
            first_line[value] = line
    return lines.unique(subset=key, keep="first", maintain_order=True)


def _read_report(path: Path) -> tuple[str, str | None]:
    """A study's report text (stripped; "" where there is no file), and what is wrong with it, if anything."""
    try:
        return path.read_bytes().decode("utf-8").strip(), None
    except FileNotFoundError:
        return "", None
    except UnicodeDecodeError as error:
        return "", f"report {path.name} is not UTF-8 text (byte {error.start})"
    except OSError as error:
        return "", f"report {path.name} cannot be read ({error.strerror or error})"


def _projection() -> pl.Expr:
    """The stored projection of a ViewPosition: Frontal/Lateral by VIEW_PROJECTION, others as
    written, blank as null (unknown)."""
    view = pl.col("ViewPosition").str.strip_chars()
    return pl.when(view == "").then(None).otherwise(view.replace(VIEW_PROJECTION)).alias("_projection")


def load(path: Path, config: IngestConfig) -> Loaded:
    """MIMIC-CXR-JPG: one row per kept image of the metadata CSV, labels from the study's chexpert.csv
    row, the official split from split.csv, uid = s<study_id>, patient = p<subject_id>."""
    metadata_path = metadata_file(path)
    if metadata_path is None:
        raise InputError(f"{path}: no {METADATA_CSV}(.gz) here or in its parent folder")
    root = metadata_path.parent
    labels_path = find_file(root, CHEXPERT_CSV)
    split_path = find_file(root, SPLIT_CSV)
    if labels_path is None:
        raise InputError(f"{root}: {CHEXPERT_CSV}(.gz) not found next to {metadata_path.name}; it holds the labels")
    loaded = Loaded("mimic-cxr", metadata_path, list(CHEXPERT_LABELS), [], label_set=label_set("chexpert"))
    problems = loaded.problems
    metadata = read_table(metadata_path, problems)
    require_columns(metadata_path, metadata, ["dicom_id", "subject_id", "study_id", "ViewPosition"], None)
    labels = read_table(labels_path, problems)
    require_columns(labels_path, labels, ["subject_id", "study_id", *CHEXPERT_LABELS], None)
    unknown = [c for c in labels.columns if c not in ("subject_id", "study_id", *CHEXPERT_LABELS)]
    if unknown:
        loaded.warnings.append(f"{labels_path.name}: column(s) {', '.join(unknown)} are not CheXpert labels and were "
                               "ignored")
    name = metadata_path.name
    malformed = malformed_rows(problems, name)
    images = metadata.with_row_index("_line", offset=2).with_columns(
        _projection(), *(pl.col(c).str.strip_chars() for c in ("dicom_id", "subject_id", "study_id")))
    keep = ((pl.col("_projection") == "Frontal").fill_null(False) | pl.lit(config.all_projections)
            | pl.col("_line").is_in(sorted(malformed)))
    kept = images.filter(keep)
    left_out = images.filter(~keep)
    if left_out.height:
        counts = left_out.group_by(pl.col("ViewPosition").str.strip_chars()).len().sort(["len", "ViewPosition"],
                                                                                         descending=[True, False])
        listed = ", ".join(f"{view or '(blank)'} {n}" for view, n in counts.iter_rows())
        loaded.warnings.append(f"{left_out.height} image(s) whose ViewPosition is not PA or AP were left out "
                               f"({listed}); ingest with all projections to keep them")
    studies = _first_rows(labels, "study_id", labels_path.name, "study_id", problems).select(
        "study_id", pl.col("subject_id").str.strip_chars().alias("_labels_subject"),
        pl.col("_line").alias("_labels_line"), *CHEXPERT_LABELS)
    kept = kept.join(studies, on="study_id", how="left", maintain_order="left")
    if split_path is not None:
        splits = read_table(split_path, problems)
        require_columns(split_path, splits, ["dicom_id", "split"], None)
        splits = _first_rows(splits, "dicom_id", split_path.name, "dicom_id", problems).select(
            "dicom_id", pl.col("split").str.strip_chars().alias("_split"), pl.col("_line").alias("_split_line"))
        kept = kept.join(splits, on="dicom_id", how="left", maintain_order="left")
    else:
        kept = kept.with_columns(pl.lit(None, pl.String).alias("_split"), pl.lit(None, pl.UInt32).alias("_split_line"))
        loaded.warnings.append(f"{SPLIT_CSV}(.gz) not found in {root}: rows carry no official split, so ingest "
                               "splits them by patient (split study or stratified)")
    columns = ["_line", "dicom_id", "subject_id", "study_id", "_projection", "_labels_subject", "_labels_line",
               "_split", "_split_line", *CHEXPERT_LABELS]
    study_values: dict[str, tuple[dict[str, int | None], list[Problem]]] = {}
    report_of: dict[str, str] = {}
    for line, dicom, subject, study, projection, labels_subject, labels_line, split, split_line, *raw in (
            kept.select(columns).iter_rows()):
        here: list[str] = []
        good_ids = subject.isdigit() and study.isdigit() and bool(dicom)
        if not good_ids:
            here.append(f"subject_id {subject!r}, study_id {study!r}, dicom_id {dicom!r}: each must be given, "
                        "the ids as digits")
        uid = f"s{study}"
        if labels_line is None:
            here.append(f"study {uid} has no row in {labels_path.name}")
            values: dict[str, int | None] = dict.fromkeys(CHEXPERT_LABELS)
        else:
            if labels_subject != subject:
                here.append(f"study {uid} belongs to subject {labels_subject} in {labels_path.name} "
                            f"(row {labels_line}), to {subject} here")
            if study not in study_values:
                label_problems: list[Problem] = []
                parsed = parse_values(labels_path.name, labels_line, dict(zip(CHEXPERT_LABELS, raw, strict=True)),
                                      CHEXPERT_LABELS, label_problems)
                study_values[study] = parsed, label_problems
            parsed, label_problems = study_values[study]
            values = dict(parsed)
            here.extend(f"({p}) study {uid}" for p in label_problems)
        if split_path is not None and split_line is None:
            here.append(f"dicom_id {dicom} has no row in {split_path.name}")
        elif split_path is not None and split not in SPLIT_NAMES:
            here.append(f"split {split!r} ({split_path.name} row {split_line}) is not one of {', '.join(SPLIT_NAMES)}")
        if not PLAIN_NAME.fullmatch(dicom):
            here.append(f"dicom_id {dicom!r} is not a plain file name (letters, digits, _ . -)")
        problems.extend(Problem(name, line, message) for message in here)
        folder = study_folder(subject, study)
        filename = f"{folder}/{dicom}.jpg"
        if good_ids:  # a report is looked for only where the ids name a real folder
            report_of.setdefault(folder, "")
        loaded.rows.append(SourceRow(
            file=name, row=line, uid=uid, filename=filename, path=root / filename, report="",
            projection=projection, split=SPLIT_NAMES.get(split or ""), values=values, patient=f"p{subject}",
        ))
    _attach_reports(loaded, root, report_of)
    loaded.options = {"official_split": split_path is not None, "view_rule": VIEW_RULE,
                      "uid": "s<study_id> (labels are per study)", "patient": "p<subject_id>",
                      "reports": sum(1 for report in report_of.values() if report)}
    return loaded


def _read_reports(root: Path, folders: list[str]) -> list[tuple[str, str | None]]:
    return [_read_report(root / f"{folder}.txt") for folder in folders]


#: How many studies are looked up before concluding the reports were not unzipped (MIMIC-CXR ships
#: them all in one archive, so they are all there or none is).
REPORT_PROBE = 256


def _any_report(root: Path, folders: list[str]) -> bool:
    return any((root / f"{folder}.txt").is_file() for folder in folders)


def _attach_reports(loaded: Loaded, root: Path, report_of: dict[str, str]) -> None:
    """Read each study's report once (in threads, a few hundred files per task: it is one small file
    per study) and give it to its rows; an unreadable one is a problem of each of its rows."""
    folders = list(report_of)
    if not _any_report(root, folders[:REPORT_PROBE]):
        loaded.warnings.append(f"no report files ({IMAGE_ROOT}/pXX/p<subject>/s<study>.txt) found for the first "
                               f"{min(REPORT_PROBE, len(folders))} stud(ies): reports not read, every report is empty")
        return
    chunks = [folders[i:i + 512] for i in range(0, len(folders), 512)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [result for chunk in pool.map(lambda chunk: _read_reports(root, chunk), chunks) for result in chunk]
    trouble: dict[str, str] = {}
    for folder, (report, problem) in zip(folders, results, strict=True):
        report_of[folder] = report
        if problem:
            trouble[folder] = problem
    for row in loaded.rows:
        folder = row.filename.rsplit("/", 1)[0]
        row.report = report_of.get(folder, "")
        if folder in trouble:
            loaded.problems.append(Problem(row.file, row.row, trouble[folder]))
    missing = sum(1 for folder in folders if not report_of[folder] and folder not in trouble)
    if missing:
        loaded.warnings.append(f"{missing} of {len(folders)} stud(ies) have no report file ({IMAGE_ROOT}/pXX/p<subject>/"
                               "s<study>.txt) or an empty one: their report is empty")


# ---------------------------------------------------------------------------------------------
# Synthetic sample in MIMIC-CXR-JPG's layout
# ---------------------------------------------------------------------------------------------

#: The ViewPosition (and view code meaning) of the sample's lateral views in turn: every second one
#: blank, as about 15,000 images of MIMIC-CXR-JPG are, so that the unknown-view rule is exercised.
LATERAL_VIEWS: tuple[tuple[str, str], ...] = (("LATERAL", "lateral"), ("", ""), ("LL", "left lateral"), ("", ""))


def _report_text(job: ImageJob, has_lateral: bool) -> str:
    """A report laid out as MIMIC-CXR's are (FINAL REPORT, EXAMINATION, INDICATION, ... sections)."""
    report = job.study.report
    exam = "CHEST (PA AND LAT)" if has_lateral else "CHEST (PORTABLE AP)"
    return (f"                                 FINAL REPORT\n EXAMINATION:  {exam}\n \n INDICATION:  "
            f"{report['indication']}\n \n COMPARISON:  {report['comparison']}\n \n FINDINGS: \n \n "
            f"{report['findings']}\n \n IMPRESSION: \n \n {report['impression']}\n")


def write_sample(config: SampleConfig, progress: Callable[[int], None] | None = None) -> Path:
    """The synthetic benchmark in MIMIC-CXR-JPG's layout under `config.out`: the three gzipped CSVs,
    JPEGs at `files/pXX/p<subject>/s<study>/<dicom_id>.jpg`, a report `s<study>.txt` per study, 1 to 4
    studies per patient, some lateral views (a few with a blank ViewPosition, as MIMIC has), and MS-CXR's
    phrase-grounded boxes for the frontal films (`_write_ms_cxr`). Returns `config.out` (pass it to
    `embedstore ingest`)."""
    config.validate()
    refuse_nonempty(config.out)
    jobs = plan_dataset(config)
    patient_of_study, splits = assign_patients((job.study.uid for job in jobs), config.seed)
    n_patients, studies = len(splits), list(patient_of_study)
    rng = np.random.default_rng([config.seed, 14, 4])
    spacing = 9_999_999 // n_patients
    subject_ids = [str(10_000_000 + p * spacing + int(rng.integers(0, spacing))) for p in range(n_patients)]
    study_ids = {uid: str(50_000_000 + 40_000 * position + int(rng.integers(0, 40_000)))
                 for position, uid in enumerate(studies)}
    with_lateral = {job.study.uid for job in jobs if not job.frontal}
    metadata: list[list[object]] = []
    split_rows: list[list[object]] = []
    targets: list[tuple[Path, ImageJob]] = []
    reports: dict[Path, str] = {}
    films: list[tuple[str, str, str]] = []
    laterals = 0
    for job in jobs:
        subject, study = subject_ids[patient_of_study[job.study.uid]], study_ids[job.study.uid]
        dicom = "-".join(rng.bytes(4).hex() for _ in range(5))
        if job.frontal:
            view, meaning = (("PA", "postero-anterior"), ("AP", "antero-posterior"))[int(rng.integers(0, 2))]
        else:
            view, meaning = LATERAL_VIEWS[laterals % len(LATERAL_VIEWS)]
            laterals += 1
        exam = "CHEST (PA AND LAT)" if job.study.uid in with_lateral else "CHEST (PORTABLE AP)"
        date = f"{int(rng.integers(2110, 2210))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        time = f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}.000"
        metadata.append([dicom, subject, study, exam, view, config.size, config.size, date, time, exam, meaning,
                         ("Erect", "Recumbent")[int(rng.integers(0, 2))]])
        split_rows.append([dicom, study, subject, OFFICIAL_NAME[splits[patient_of_study[job.study.uid]]]])
        folder = config.out / study_folder(subject, study)
        targets.append((folder / f"{dicom}.jpg", job))
        films.append((dicom, f"{study_folder(subject, study)}/{dicom}.jpg", splits[patient_of_study[job.study.uid]]))
        reports.setdefault(folder.with_name(f"{folder.name}.txt"), _report_text(job, job.study.uid in with_lateral))
    config.out.mkdir(parents=True, exist_ok=True)
    drawn = draw_views(targets, config, progress)
    for report_path, report in reports.items():
        report_path.write_text(report, encoding="utf-8")
    by_uid = {job.study.uid: job.study for job in jobs}
    write_csv(config.out / f"{METADATA_CSV}.gz", list(METADATA_COLUMNS), metadata)
    write_csv(config.out / f"{CHEXPERT_CSV}.gz", ["subject_id", "study_id", *sorted(CHEXPERT_LABELS)],
              [[subject_ids[patient_of_study[uid]], study_ids[uid], *(by_uid[uid].values[label]
                                                                       for label in sorted(CHEXPERT_LABELS))]
               for uid in studies])
    write_csv(config.out / f"{SPLIT_CSV}.gz", ["dicom_id", "study_id", "subject_id", "split"], split_rows)
    _write_ms_cxr(config, jobs, films, drawn)
    return config.out


def _write_ms_cxr(config: SampleConfig, jobs: list[ImageJob], films: list[tuple[str, str, str]],
                  drawn: list[tuple[DrawnRegion, ...]]) -> None:
    """`ms-cxr/MS_CXR_Local_Alignment_v1.0.0.csv`: a box per drawn finding of MS-CXR's eight categories
    on a frontal film, with a short phrase naming its side and zone (seeded per film on its own stream),
    the film's relative path and its official split (as MS-CXR spells splits: train, val, test)."""
    rows: list[list[object]] = []
    for job, (dicom, relative, split), regions in zip(jobs, films, drawn, strict=True):
        if job.frontal:
            stream = np.random.default_rng([config.seed, 14, 4, 77, job.index])
            rows.extend(ms_cxr_rows(AnnotatedImage(dicom, config.size, regions), relative, split, stream))
    write_ms_cxr(config.out / MS_CXR_DIR / MS_CXR_CSV, rows)
