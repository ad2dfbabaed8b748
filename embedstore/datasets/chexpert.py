"""CheXpert (`chexpert`): `train.csv`, `valid.csv` and, where present, `test_labels.csv`, one row per
image with a `Path` column; labels are per study (all views of a study carry the same values).

A `Path` such as `CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg` starts with the
dataset folder's own name; `test_labels.csv` (the test set released with CheXlocalize) writes it
relative to the CSV's folder (`test/patient64741/study1/view1_frontal.jpg`). Both are resolved
against the folder holding the CSVs, whatever that folder is called. The loader never looks at the
image files (ingest reads and checks each one).

The official split is used only when all three files are there; otherwise rows carry no split and
ingest splits by patient. Sex, Age and AP/PA are not stored.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from embedstore.choices import SampleDomain
from embedstore.datasets.base import (
    IngestConfig,
    Loaded,
    Problem,
    SourceRow,
    find_file,
    keep_projection,
    malformed_rows,
    outside_folder,
    parse_values,
    read_table,
    require_columns,
    text,
)
from embedstore.datasets.sample_annotations import (
    AnnotatedImage,
    DrawnRegion,
    chexlocalize_id,
    regions_of,
    write_chexlocalize,
)
from embedstore.datasets.sample_writing import assign_patients, refuse_nonempty, render_all, write_csv
from embedstore.errors import InputError
from embedstore.label_sets import label_set
from embedstore.labels import CHEXPERT_LABELS, NO_FINDING
from embedstore.synthetic import ImageJob, SampleConfig, plan_dataset, render_frontal, render_lateral

TRAIN_CSV = "train.csv"
VALID_CSV = "valid.csv"
TEST_CSV = "test_labels.csv"
#: Each official file and the split its rows belong to.
OFFICIAL_FILES: tuple[tuple[str, str], ...] = ((TRAIN_CSV, "train"), (VALID_CSV, "val"), (TEST_CSV, "test"))
PATH_COLUMN = "Path"
VIEW_COLUMN = "Frontal/Lateral"
#: Columns CheXpert ships that are read (Path, Frontal/Lateral) or knowingly not stored (Sex, Age, AP/PA).
META_COLUMNS: tuple[str, ...] = (PATH_COLUMN, "Sex", "Age", VIEW_COLUMN, "AP/PA")
#: The first folder of a Path already relative to the CSV's folder; any other first folder is the
#: dataset folder's own name (CheXpert-v1.0-small, CheXpert-v1.0, or whatever it was renamed to).
IMAGE_FOLDERS = frozenset({"train", "valid", "val", "test"})
STUDY_PATTERN = re.compile(r"(?:^|/)(patient\d+)/(study\d+)/[^/]+$")
VIEW_PATTERN = re.compile(r"_(frontal|lateral)\.[A-Za-z]+$", re.IGNORECASE)
#: CheXpert's own column order: No Finding first, then the findings in the study's order.
FILE_LABEL_ORDER: tuple[str, ...] = (NO_FINDING, *(label for label in CHEXPERT_LABELS if label != NO_FINDING))
SAMPLE_FOLDER = "CheXpert-v1.0-small"
#: Where the sample writes CheXlocalize's files (its valid and test images' segmentations and polygons).
CHEXLOCALIZE_DIR = "chexlocalize"


# ---------------------------------------------------------------------------------------------
# Finding the files
# ---------------------------------------------------------------------------------------------

def _header(path: Path) -> list[str]:
    """The first row of a CSV (gunzipped for `.gz`), or [] when it cannot be read as one."""
    try:
        raw = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
        with io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as handle:
            return next(csv.reader(handle), [])
    except (OSError, EOFError, UnicodeDecodeError, csv.Error):
        return []


def _holds_chexpert(folder: Path) -> bool:
    """`folder` holds a train.csv whose header names Path and Frontal/Lateral."""
    train = find_file(folder, TRAIN_CSV)
    if train is None:
        return False
    columns = _header(train)
    return PATH_COLUMN in columns and VIEW_COLUMN in columns


def dataset_folder(path: Path) -> Path | None:
    """The folder holding CheXpert's CSVs: `path` itself, the folder of a CSV given by path, or the
    one `CheXpert-*` folder under `path` that holds them (None if there is none, or several)."""
    if path.is_file():
        return path.parent if _holds_chexpert(path.parent) else None
    if _holds_chexpert(path):
        return path
    if not path.is_dir():
        return None
    candidates = [child for child in sorted(path.iterdir()) if child.name.startswith("CheXpert-")
                  and child.is_dir() and _holds_chexpert(child)]
    return candidates[0] if len(candidates) == 1 else None


def detect(path: Path) -> bool:
    """A folder with CheXpert's train.csv (header: Path, Frontal/Lateral, ...), or a folder holding
    exactly one `CheXpert-*` folder that has one."""
    return path.is_dir() and dataset_folder(path) is not None


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def image_path(folder: Path, value: str) -> Path:
    """Where the image named by a Path value lies: relative to `folder` (the one holding the CSV)
    when the value starts with an image folder (train/, valid/, test/), else after dropping the
    first folder, which names the dataset folder itself."""
    first, _, rest = value.partition("/")
    return folder / (value if first in IMAGE_FOLDERS or not rest else rest)


def _projection(view: str, value: str) -> str:
    """The Frontal/Lateral value, or where it is blank or absent (test_labels.csv) the view named
    in the file name (`view1_frontal.jpg`); "" when neither says."""
    if view:
        return view
    match = VIEW_PATTERN.search(value)
    return match.group(1).capitalize() if match else ""


def _read_file(csv_path: Path, split: str | None, folder: Path, config: IngestConfig, loaded: Loaded) -> int:
    """Add the rows of one CheXpert CSV to `loaded`; returns how many rows it has."""
    frame = read_table(csv_path, loaded.problems)
    require_columns(csv_path, frame, [PATH_COLUMN, *CHEXPERT_LABELS], None)
    unknown = [c for c in frame.columns if c not in META_COLUMNS and c not in CHEXPERT_LABELS]
    if unknown:
        loaded.warnings.append(f"{csv_path.name}: column(s) {', '.join(unknown)} are not CheXpert's and were "
                               "ignored (a newer release?)")
    has_view = VIEW_COLUMN in frame.columns
    columns = [PATH_COLUMN, *([VIEW_COLUMN] if has_view else []), *CHEXPERT_LABELS]
    name = csv_path.name
    malformed = malformed_rows(loaded.problems, name)
    for line, record in enumerate(frame.select(columns).iter_rows(), start=2):
        value = text(record[0])
        projection = _projection(text(record[1]) if has_view else "", value)
        if not keep_projection(projection, config) and line not in malformed:
            continue
        raw = record[2:] if has_view else record[1:]
        values = parse_values(name, line, dict(zip(CHEXPERT_LABELS, raw, strict=True)), CHEXPERT_LABELS,
                              loaded.problems)
        match = STUDY_PATTERN.search(value)
        unsafe = outside_folder(value)
        if unsafe:
            loaded.problems.append(Problem(name, line, f"Path {value!r} {unsafe}"))
        elif match is None and value:
            loaded.problems.append(Problem(name, line, f"Path {value!r} does not end in patient<N>/study<N>/<image>"))
        loaded.rows.append(SourceRow(
            file=name, row=line, uid=f"{match.group(1)}/{match.group(2)}" if match else value, filename=value,
            path=image_path(folder, value), report="", projection=projection or None, split=split,
            values=values, patient=match.group(1) if match else None,
        ))
    return frame.height


def load(path: Path, config: IngestConfig) -> Loaded:
    """CheXpert's CSVs in `path` (or in the one CheXpert-* folder under it): one row per kept image,
    uid = patient/study, patient from the Path, the official split when train, valid and test are all there."""
    folder = dataset_folder(path)
    if folder is None:
        raise InputError(f"{path}: no CheXpert {TRAIN_CSV} (with {PATH_COLUMN} and {VIEW_COLUMN} columns) here, "
                         "nor in exactly one CheXpert-* folder in it")
    present = [(found, split) for name, split in OFFICIAL_FILES if (found := find_file(folder, name)) is not None]
    official = len(present) == len(OFFICIAL_FILES)
    loaded = Loaded("chexpert", present[0][0], list(CHEXPERT_LABELS), [], label_set=label_set("chexpert"))
    counts = {found.name: _read_file(found, split if official else None, folder, config, loaded)
              for found, split in present}
    if not official:
        missing = [name for name, _ in OFFICIAL_FILES if find_file(folder, name) is None]
        folded = " valid.csv's images are folded into that split, so the official validation set is no longer held out."
        loaded.warnings.append(
            f"{', '.join(missing)} not found in {folder}: the official train/valid/test split is incomplete, so "
            "rows carry no split and ingest splits them by patient (split study or stratified)."
            + (folded if VALID_CSV not in missing else ""))
    loaded.options = {
        "official_split": official,
        "files": counts,
        "view_rule": f"{VIEW_COLUMN} column (where blank or absent, _frontal/_lateral in the file name)",
        "uid": "patient/study (labels are per study)",
        "not_stored": ["Sex", "Age", "AP/PA"],
    }
    return loaded


# ---------------------------------------------------------------------------------------------
# Synthetic sample in CheXpert's layout
# ---------------------------------------------------------------------------------------------

def study_numbers(studies: list[int], patient_of_study: dict[int, int]) -> dict[int, int]:
    """Each study's number within its patient (1, 2, ... in order of the studies)."""
    seen: dict[int, int] = {}
    numbers = {}
    for uid in studies:
        patient = patient_of_study[uid]
        seen[patient] = seen.get(patient, 0) + 1
        numbers[uid] = seen[patient]
    return numbers


DrawTask = tuple[str, ImageJob, int, SampleDomain, int]


def _draw(task: DrawTask) -> tuple[DrawnRegion, ...]:
    """Render one view and save it as a grayscale JPEG (deterministic bytes for the same pixels);
    returns the regions drawn on a frontal view (none on a lateral)."""
    target, job, seed, domain, size = task
    regions: tuple[DrawnRegion, ...] = ()
    if job.frontal:
        pixels, masks = render_frontal(seed, domain, job.index, job.study.findings, job.study.sides, size)
        regions = regions_of(masks)
    else:
        pixels = render_lateral(seed, domain, job.index, size)
    Image.fromarray(pixels).save(target, format="JPEG", quality=92)
    return regions


def draw_views(targets: list[tuple[Path, ImageJob]], config: SampleConfig,
               progress: Callable[[int], None] | None) -> list[tuple[DrawnRegion, ...]]:
    """Render every (file, job) as a JPEG, in `config.workers` processes (same bytes whatever the count);
    returns the regions drawn on each, in order."""
    for target, _ in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    return render_all([(str(target), job, config.seed, config.domain, config.size) for target, job in targets],
                      _draw, config.workers, progress)


def write_sample(config: SampleConfig, progress: Callable[[int], None] | None = None) -> Path:
    """The synthetic benchmark in CheXpert's layout under `config.out/CheXpert-v1.0-small`: train.csv,
    valid.csv and test_labels.csv (patients split 70/15/15, numbered train first as CheXpert does),
    1 to 4 studies per patient, JPEGs at `{train,valid,test}/patientNNNNN/studyK/viewN_{frontal,lateral}.jpg`,
    and CheXlocalize's ground truth for the frontal valid and test images in `chexlocalize/`
    (`write_chexlocalize`). Returns the dataset folder (pass it, or `config.out`, to `embedstore ingest`)."""
    config.validate()
    refuse_nonempty(config.out)
    jobs = plan_dataset(config)
    patient_of_study, splits = assign_patients((job.study.uid for job in jobs), config.seed)
    n_patients = len(splits)
    studies = list(patient_of_study)
    rank = {"train": 0, "val": 1, "test": 2}
    numbering = sorted(range(n_patients), key=lambda p: (rank[splits[p]], p))
    number = {patient: position + 1 for position, patient in enumerate(numbering)}
    rng = np.random.default_rng([config.seed, 14, 3])
    sex = {p: ("Female", "Male")[int(rng.integers(0, 2))] for p in range(n_patients)}
    age = {p: int(rng.integers(18, 88)) for p in range(n_patients)}
    study_number = study_numbers(studies, patient_of_study)
    folder = config.out / SAMPLE_FOLDER
    rows: dict[str, list[list[object]]] = {"train": [], "val": [], "test": []}
    targets: list[tuple[Path, ImageJob]] = []
    views: dict[int, int] = {}
    for job in jobs:
        patient = patient_of_study[job.study.uid]
        split = splits[patient]
        views[job.study.uid] = views.get(job.study.uid, 0) + 1
        image_folder = {"train": "train", "val": "valid", "test": "test"}[split]
        relative = (f"{image_folder}/patient{number[patient]:05d}/study{study_number[job.study.uid]}/"
                    f"view{views[job.study.uid]}_{'frontal' if job.frontal else 'lateral'}.jpg")
        targets.append((folder / relative, job))
        labels = [job.study.values[label] for label in FILE_LABEL_ORDER]
        if split == "test":  # test_labels.csv: Path relative to its own folder, and labels only
            rows[split].append([relative, *labels])
            continue
        view = "Frontal" if job.frontal else "Lateral"
        ap_pa = ("AP", "PA")[int(rng.integers(0, 2))] if job.frontal else ""
        rows[split].append([f"{SAMPLE_FOLDER}/{relative}", sex[patient], age[patient] + study_number[job.study.uid] - 1,
                            view, ap_pa, *labels])
    folder.mkdir(parents=True)
    drawn = draw_views(targets, config, progress)
    write_csv(folder / TRAIN_CSV, [*META_COLUMNS, *FILE_LABEL_ORDER], rows["train"])
    write_csv(folder / VALID_CSV, [*META_COLUMNS, *FILE_LABEL_ORDER], rows["val"])
    write_csv(folder / TEST_CSV, [PATH_COLUMN, *FILE_LABEL_ORDER], rows["test"])
    for image_folder, split in (("valid", "val"), ("test", "test")):
        images = [AnnotatedImage(chexlocalize_id(str(target.relative_to(folder))), config.size, regions)
                  for (target, job), regions in zip(targets, drawn, strict=True)
                  if job.frontal and target.relative_to(folder).parts[0] == image_folder]
        write_chexlocalize(folder / CHEXLOCALIZE_DIR, split, images)
    return folder
