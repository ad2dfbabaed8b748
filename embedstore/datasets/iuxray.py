"""IU-Xray as the study used it: the study's 14-label CSV (`iuxray14`) and the Kaggle pair (`kaggle`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from embedstore.datasets.base import (
    IngestConfig,
    Loaded,
    Problem,
    SourceRow,
    keep_projection,
    malformed_rows,
    parse_values,
    read_table,
    require_columns,
    text,
)
from embedstore.errors import InputError
from embedstore.iuxray import IMAGE_DIR, PROJECTIONS_CSV, REPORTS_CSV, STUDY_CSV, TEXT_COLUMNS
from embedstore.labels import CHEXPERT_LABELS, NO_FINDING

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
    "implanted medical device": "Support Devices",
    "surgical instruments": "Support Devices",
    "calcified granuloma": "Lung Lesion",
    "granuloma": "Lung Lesion",
    "pulmonary congestion": "Edema",
    "catheters, indwelling": "Support Devices",
    "tube, inserted": "Support Devices",
}


def _report(record: dict[str, object]) -> str:
    return " ".join(text(record.get(c)) for c in TEXT_COLUMNS if text(record.get(c)))


def load_iuxray14(path: Path, config: IngestConfig) -> Loaded:
    """The study's `iuxray_frontal_14labels.csv`; images under `images/images_normalized/`."""
    csv_path = path / STUDY_CSV if path.is_dir() else path
    root = csv_path.parent
    loaded = Loaded("iuxray14", csv_path, list(CHEXPERT_LABELS), [])
    frame = read_table(csv_path, loaded.problems)
    required = ["uid", "filename", *TEXT_COLUMNS, *CHEXPERT_LABELS]
    require_columns(csv_path, frame, required, allowed=required)
    for line, record in enumerate(frame.iter_rows(named=True), start=2):
        filename = text(record["filename"])
        loaded.rows.append(SourceRow(
            file=csv_path.name, row=line, uid=text(record["uid"]), filename=filename,
            path=root / IMAGE_DIR / filename, report=_report(record), projection="Frontal", split=None,
            values=parse_values(csv_path.name, line, record, CHEXPERT_LABELS, loaded.problems),
        ))
    return loaded


def load_kaggle(path: Path, config: IngestConfig) -> Loaded:
    """The Kaggle pair `indiana_reports.csv` + `indiana_projections.csv`.

    Labels come from a CheXpert-14 labels CSV joined by uid (`--labels`), or else from the
    Problems column through PROBLEM_TO_LABEL, which is approximate (a warning says so).
    """
    root = path if path.is_dir() else path.parent
    loaded = Loaded("kaggle", root / PROJECTIONS_CSV, list(CHEXPERT_LABELS), [])
    reports = read_table(root / REPORTS_CSV, loaded.problems)
    projections = read_table(root / PROJECTIONS_CSV, loaded.problems)
    require_columns(root / REPORTS_CSV, reports, ["uid", "Problems", *TEXT_COLUMNS], None)
    require_columns(root / PROJECTIONS_CSV, projections, ["uid", "filename", "projection"], None)
    label_rows: dict[str, dict[str, object]] = {}
    if config.labels_csv is not None:
        label_rows = read_labels_by_uid(config.labels_csv, loaded.problems)
    else:
        loaded.warnings.append(
            "labels derived from the Problems column of indiana_reports.csv through an approximate mapping "
            "(docs/datasets.md, \"Formats\"); give a CheXpert labeler output CSV as the labels file for the "
            "study's labels"
        )
    by_uid = {text(r["uid"]): r | {"_line": i} for i, r in enumerate(reports.iter_rows(named=True), start=2)}
    unmapped: Counter[str] = Counter()
    malformed = malformed_rows(loaded.problems, PROJECTIONS_CSV)
    for line, record in enumerate(projections.iter_rows(named=True), start=2):
        projection = text(record["projection"])
        if not keep_projection(projection, config) and line not in malformed:
            continue
        uid = text(record["uid"])
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
            values = parse_values(config.labels_csv.name, int(str(label_record["_line"])), label_record,
                                   CHEXPERT_LABELS, label_problems)
            loaded.problems.extend(Problem(PROJECTIONS_CSV, line, f"({p}) uid {uid}") for p in label_problems)
        else:
            values = mesh_labels(text(report["Problems"]).split(";"), unmapped)
        filename = text(record["filename"])
        loaded.rows.append(SourceRow(
            file=PROJECTIONS_CSV, row=line, uid=uid, filename=filename, path=root / IMAGE_DIR / filename,
            report=_report(report), projection=projection, split=None, values=values,
        ))
    if unmapped:
        loaded.warnings.append(f"{len(unmapped)} Problems term(s) map to no CheXpert label, e.g. {sorted(unmapped)[:5]}")
    return loaded




def detect_iuxray14(path: Path) -> bool:
    root = path if path.is_dir() else path.parent
    return path.name == STUDY_CSV or (path.is_dir() and (root / STUDY_CSV).exists())


def detect_kaggle(path: Path) -> bool:
    root = path if path.is_dir() else path.parent
    return (root / REPORTS_CSV).exists() and (root / PROJECTIONS_CSV).exists()


def read_labels_by_uid(path: Path, problems: list[Problem]) -> dict[str, dict[str, object]]:
    """A CheXpert labels CSV (`uid` + the 14 CheXpert columns): uid -> its record, with `_line` the
    row it came from; a uid given twice is an InputError listing every repeat (as the Kaggle loader)."""
    table = read_table(path, problems)
    require_columns(path, table, ["uid", *CHEXPERT_LABELS], None)
    by_uid: dict[str, dict[str, object]] = {}
    duplicates = []
    for line, record in enumerate(table.iter_rows(named=True), start=2):
        uid = text(record["uid"])
        if uid in by_uid:
            duplicates.append(str(Problem(path.name, line, f"uid {uid} has a second labels row")))
        by_uid[uid] = record | {"_line": line}
    if duplicates:
        raise InputError(f"{path}: {len(duplicates)} duplicate uid(s) (listed above)", details=duplicates)
    return by_uid


def mesh_labels(terms: list[str], unmapped: Counter[str]) -> dict[str, int | None]:
    """CheXpert values from MeSH terms: the part before the first `/`, lower case, through
    PROBLEM_TO_LABEL (approximate); a term that maps nowhere is counted in `unmapped`."""
    values: dict[str, int | None] = {label: 0 for label in CHEXPERT_LABELS}
    for term in terms:
        key = term.split("/")[0].strip().lower()
        if key in PROBLEM_TO_LABEL:
            values[PROBLEM_TO_LABEL[key]] = 1
        elif key:
            unmapped[key] += 1
    return values
