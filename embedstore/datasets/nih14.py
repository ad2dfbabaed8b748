"""NIH ChestX-ray14 (`nih14`): `Data_Entry_2017*.csv`, the official `train_val_list.txt` / `test_list.txt`,
PNGs under `images*/`.

Labels are per image, under NIH's own names (label set `nih14`): each of the 14 findings and
`No Finding` is 1 when `Finding Labels` (names joined by `|`) lists it, else 0. uid is the Image
Index, patient the Patient ID as written in the CSV. The official split names train_val and test
only; val is drawn from train_val by patient (`draw_val`), so that no patient is in train and val.
"""

from __future__ import annotations

import csv
import os
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
    draw_val,
    find_file,
    keep_projection,
    open_text,
    text,
    uses_given_split,
)
from embedstore.datasets.sample_annotations import AnnotatedImage, DrawnRegion, regions_of, write_nih_bbox
from embedstore.datasets.sample_writing import counterpart_map, counterpart_names, refuse_nonempty, render_all
from embedstore.errors import InputError
from embedstore.label_sets import LabelSet, label_set
from embedstore.synthetic import SampleConfig, plan_dataset, render_frontal

LABEL_SET = "nih14"
#: The label file of the release (2017, with a trailing empty column) and of the 2020 update.
DATA_ENTRY = re.compile(r"Data_Entry_2017.*\.csv(\.gz)?", re.IGNORECASE)
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
#: NIH's box annotations (about 1,000 boxes of eight findings on 880 images).
BBOX_LIST = "BBox_List_2017.csv"
IMAGE_INDEX, FINDING_LABELS, PATIENT_ID, VIEW_POSITION = "Image Index", "Finding Labels", "Patient ID", "View Position"
REQUIRED_COLUMNS = (IMAGE_INDEX, FINDING_LABELS, PATIENT_ID, VIEW_POSITION)
FRONTAL_VIEWS = frozenset({"PA", "AP"})
#: One train_val patient in VAL_SHARE goes to val when the official split is used.
VAL_SHARE = 8
#: Images per `images_NNN/images/` folder in the release (the sample writes the same way).
IMAGES_PER_FOLDER = 10_000


# ---------------------------------------------------------------------------------------------
# Finding files and images
# ---------------------------------------------------------------------------------------------

def data_entry_files(root: Path) -> list[Path]:
    """Every `Data_Entry_2017*.csv(.gz)` directly in `root`, sorted by name (the 2020 update last)."""
    if not root.is_dir():
        return []
    return sorted(entry for entry in root.iterdir() if DATA_ENTRY.fullmatch(entry.name) and entry.is_file())


def image_index(root: Path) -> tuple[dict[str, Path], int]:
    """Every file under the `images*` folders of `root`, by file name, in one directory walk; and how many
    names were found more than once (the first in sorted order is kept)."""
    found: dict[str, Path] = {}
    repeated = 0
    folders = sorted(entry for entry in root.iterdir() if entry.name.lower().startswith("images") and entry.is_dir())
    for folder in folders:
        for current, subfolders, files in os.walk(folder):
            subfolders.sort()
            for name in sorted(files):
                if name in found:
                    repeated += 1
                else:
                    found[name] = Path(current) / name
    return found, repeated


def read_name_list(path: Path) -> list[str]:
    """One image name a line (blank lines skipped), as the official split lists are written."""
    try:
        with open_text(path) as handle:
            return [line.strip() for line in handle if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read the list ({str(error).splitlines()[0][:120]})") from None


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _read_data_entry(path: Path, problems: list[Problem]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (row number, fields) of a Data_Entry CSV.

    The 2017 file ends every line with a comma (an unnamed empty last column) and its size and
    spacing columns are named with unquoted commas inside (`OriginalImage[Width,Height]`), so the
    header is read as plain fields: trailing empty names are dropped, and only the columns used are
    looked up by name. A row with a different number of fields than the header is a bad row.
    """
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with open_text(path) as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            width = len(header)
            while header and not header[-1].strip():
                header = header[:-1]
            rows: list[tuple[int, list[str]]] = []
            for number, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                if len(fields) != width:
                    problems.append(Problem(path.name, number, f"{len(fields)} fields, but the header has {width}"))
                    fields = (fields + [""] * width)[:width]
                rows.append((number, fields))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"{path}: cannot read as a table ({str(error).splitlines()[0][:120]})") from None
    return [name.strip() for name in header], rows


def _column_positions(path: Path, header: list[str]) -> dict[str, int]:
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (found {', '.join(header[:9])})")
    repeated = [name for name in REQUIRED_COLUMNS if header.count(name) > 1]
    if repeated:
        raise InputError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header")
    return {name: header.index(name) for name in REQUIRED_COLUMNS}


def projection_of(view: str) -> str | None:
    """PA and AP are frontal; any other view written is lateral; blank is unknown."""
    view = view.strip().upper()
    if not view:
        return None
    return "Frontal" if view in FRONTAL_VIEWS else "Lateral"


def parse_findings(raw: str, labels: LabelSet) -> tuple[dict[str, int | None], str | None]:
    """Each label's value (1 listed, 0 not) from `Finding Labels`, or what is wrong with it."""
    names = [name.strip() for name in raw.split("|")]
    if not any(names):
        return {}, "Finding Labels is blank"
    unknown = sorted({name for name in names if name not in labels.domains})
    if unknown:
        return {}, f"unknown finding(s) {', '.join(repr(n) for n in unknown)} in Finding Labels " \
                   f"(known: {', '.join(labels.labels)})"
    listed = set(names) - {""}
    if labels.normal in listed and len(listed) > 1:
        return {}, f"Finding Labels lists {labels.normal} together with findings ({raw})"
    return {label: int(label in listed) for label in labels.labels}, None


def _official_lists(root: Path) -> tuple[Path, Path] | None:
    train_val, test = find_file(root, TRAIN_VAL_LIST), find_file(root, TEST_LIST)
    if train_val is None and test is None:
        return None
    if train_val is None or test is None:
        present, absent = (TRAIN_VAL_LIST, TEST_LIST) if test is None else (TEST_LIST, TRAIN_VAL_LIST)
        raise InputError(f"{root}: {present} is there but {absent} is not; give both official lists or neither "
                         "(without them the split is drawn by patient)")
    return train_val, test


def load(path: Path, config: IngestConfig) -> Loaded:
    """ChestX-ray14 in the NIH release layout (or Kaggle's): see the module docstring."""
    root = path if path.is_dir() else path.parent
    warnings: list[str] = []
    if path.is_dir():
        candidates = data_entry_files(root)
        if not candidates:
            raise InputError(f"{root}: no Data_Entry_2017*.csv(.gz) in this folder")
        csv_path = candidates[-1]
        if len(candidates) > 1:
            warnings.append(f"several label files in {root.name}: read {csv_path.name}, not "
                            f"{', '.join(c.name for c in candidates[:-1])}")
    else:
        csv_path = path
    labels = label_set(LABEL_SET)
    loaded = Loaded("nih14", csv_path, list(labels.labels), [], warnings=warnings, label_set=labels)
    header, records = _read_data_entry(csv_path, loaded.problems)
    position = _column_positions(csv_path, header)
    images, repeated = image_index(root)
    if repeated:
        loaded.warnings.append(f"{repeated} image name(s) occur in more than one images* folder; the first "
                               "in sorted order is used")
    malformed = {p.row for p in loaded.problems}
    parsed: dict[str, tuple[dict[str, int | None], str | None]] = {}
    for line, fields in records:
        name = fields[position[IMAGE_INDEX]].strip()
        projection = projection_of(fields[position[VIEW_POSITION]])
        if not keep_projection(projection or "", config) and line not in malformed:
            continue
        raw = fields[position[FINDING_LABELS]]
        if raw not in parsed:  # a few hundred distinct combinations in 112,120 rows
            parsed[raw] = parse_findings(raw, labels)
        values, wrong = parsed[raw]
        values = dict(values)
        if wrong:
            loaded.problems.append(Problem(csv_path.name, line, wrong))
            values = {label: None for label in labels.labels}
        patient = text(fields[position[PATIENT_ID]])
        if not patient:
            loaded.problems.append(Problem(csv_path.name, line, "Patient ID is blank"))
        image = images.get(name)
        if name and image is None:
            loaded.problems.append(Problem(csv_path.name, line, f"image {name} not found in any images*/ folder "
                                                                f"of {root}"))
        loaded.rows.append(SourceRow(
            file=csv_path.name, row=line, uid=name, filename=name, path=image or root / "images" / name, report="",
            projection=projection, split=None, values=values, patient=patient or None,
        ))
    loaded.options = {"data_entry": csv_path.name, "patient": "Patient ID as written in the CSV",
                      "labels": "Finding Labels split at |; listed 1, not listed 0"}
    lists = _official_lists(root)
    if lists is None:
        loaded.options["split_source"] = "none in the folder: drawn by ingest, by patient"
    elif not uses_given_split(config):
        loaded.options["split_source"] = f"{config.split} (official lists not used)"
    else:
        _apply_official_split(loaded, lists, config.seed)
    return loaded


def _apply_official_split(loaded: Loaded, lists: tuple[Path, Path], seed: int) -> None:
    """train_val_list.txt → train, and val for the patients `draw_val` picks; test_list.txt → test.

    An image in both lists or in neither is a bad row. A patient with images in both lists keeps each
    image's listed split (a warning counts them).
    """
    train_val = set(read_name_list(lists[0]))
    test = set(read_name_list(lists[1]))
    file = loaded.source.name
    listed: list[SourceRow] = []
    for row in loaded.rows:
        in_train_val, in_test = row.uid in train_val, row.uid in test
        if in_train_val and in_test:
            loaded.problems.append(Problem(file, row.row, f"image {row.uid} is in both {TRAIN_VAL_LIST} and {TEST_LIST}"))
        elif not in_train_val and not in_test:
            loaded.problems.append(Problem(file, row.row, f"image {row.uid} is in neither {TRAIN_VAL_LIST} nor {TEST_LIST}"))
        else:
            row.split = "test" if in_test else "train"
            listed.append(row)
    train_units = [row.patient or row.uid for row in listed if row.split == "train"]
    val_units = draw_val(train_units, seed)
    for row in listed:
        if row.split == "train" and (row.patient or row.uid) in val_units:
            row.split = "val"
    test_patients = {row.patient for row in listed if row.split == "test" and row.patient}
    shared = {row.patient for row in listed if row.split != "test" and row.patient in test_patients}
    if shared:
        loaded.warnings.append(f"{len(shared)} patient(s) have images in both {TRAIN_VAL_LIST} and {TEST_LIST}; "
                               "each image keeps its listed split")
    names = {row.uid for row in loaded.rows}
    unknown = len((train_val | test) - names)
    if unknown:
        loaded.warnings.append(f"{unknown} name(s) in the official lists have no row read from {file}")
    loaded.options |= {
        "split_source": f"official {TRAIN_VAL_LIST} / {TEST_LIST}",
        "val_rule": f"ceil(n/{VAL_SHARE}) of the n patients in {TRAIN_VAL_LIST}: those whose "
                    "sha256('<seed>:<patient>') sorts first",
        "val_seed": seed,
        "val_patients": len(val_units),
        "train_val_patients": len(set(train_units)),
        "patients_in_both_lists": len(shared),
    }


def detect(path: Path) -> bool:
    """A folder holding a Data_Entry_2017*.csv(.gz)."""
    return path.is_dir() and bool(data_entry_files(path))


# ---------------------------------------------------------------------------------------------
# The synthetic benchmark in this layout
# ---------------------------------------------------------------------------------------------

#: The Data_Entry_2017.csv header as released: two names with unquoted commas, and a trailing comma.
DATA_ENTRY_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                     "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


#: One film to draw: target file, seed, domain, image index, findings, their sides, size.
RenderTask = tuple[str, int, SampleDomain, int, tuple[str, ...], dict[str, int], int]


def _render_png(task: RenderTask) -> tuple[DrawnRegion, ...]:
    """Draw one synthetic film and write it as an 8-bit grey PNG (a worker process's job); returns the
    regions drawn on it."""
    target, seed, domain, index, findings, sides, size = task
    pixels, masks = render_frontal(seed, domain, index, findings, sides, size)
    Image.fromarray(pixels).save(target, optimize=False)
    return regions_of(masks)


def write_sample(config: SampleConfig, progress: Callable[[int], None] | None = None) -> Path:
    """The synthetic benchmark as ChestX-ray14 ships: PNGs named `<patient>_<follow-up>.png` under
    `images_001/images/` (10,000 a folder), `Data_Entry_2017.csv` in the 2017 format, and the
    official lists split by patient (about a fifth of the patients in test), and `BBox_List_2017.csv`
    with a box for every finding of NIH's eight box classes drawn on a film (NIH boxed about 880
    images; here every film with such a finding is boxed). Frontal films only; one to three synthetic
    studies make a patient, each film a follow-up. Returns the folder."""
    config.validate()
    refuse_nonempty(config.out)

    labels = label_set(LABEL_SET)
    rng = np.random.default_rng([config.seed, 14])
    jobs = [job for job in plan_dataset(config) if job.frontal]
    studies: dict[int, list[int]] = {}
    for position, job in enumerate(jobs):
        studies.setdefault(job.study.uid, []).append(position)
    patients: list[list[int]] = []
    study_ids = list(studies)
    while study_ids:
        take = int(rng.integers(1, 4))
        patients.append([position for uid in study_ids[:take] for position in studies[uid]])
        study_ids = study_ids[take:]
    order = rng.permutation(len(patients))
    test_patients = {int(p) for p in order[:max(1, round(len(patients) / 5))]}
    rows: list[list[object]] = []
    tasks: list[RenderTask] = []
    train_val_names: list[str] = []
    test_names: list[str] = []
    map_of_study: dict[int, dict[str, str]] = {}
    film_labels: list[tuple[str, dict[str, str]]] = []
    for patient_index, positions in enumerate(patients):
        patient_id = patient_index + 1
        age, gender = int(rng.integers(18, 86)), ("M", "F")[int(rng.integers(2))]
        for follow_up, position in enumerate(positions):
            job = jobs[position]
            name = f"{patient_id:08d}_{follow_up:03d}.png"
            folder = config.out / f"images_{len(tasks) // IMAGES_PER_FOLDER + 1:03d}" / "images"
            folder.mkdir(parents=True, exist_ok=True)
            if job.study.uid not in map_of_study:
                map_of_study[job.study.uid] = counterpart_map(job.study.findings, labels, rng)
            view = "PA" if rng.random() < 0.6 else "AP"
            film_labels.append((name, map_of_study[job.study.uid]))
            rows.append([name, "|".join(counterpart_names(map_of_study[job.study.uid], labels)), follow_up, patient_id,
                         age + follow_up // 3, gender, view, config.size, config.size, 0.143, 0.143, ""])
            tasks.append((str(folder / name), config.seed, config.domain, job.index, job.study.findings,
                          job.study.sides, config.size))
            (test_names if patient_index in test_patients else train_val_names).append(name)
    drawn = render_all(tasks, _render_png, config.workers, progress)
    with open(config.out / "Data_Entry_2017.csv", "w", newline="", encoding="utf-8") as handle:
        handle.write(DATA_ENTRY_HEADER + "\n")
        csv.writer(handle, lineterminator="\n").writerows(rows)
    (config.out / TRAIN_VAL_LIST).write_text("".join(f"{n}\n" for n in train_val_names), encoding="utf-8")
    (config.out / TEST_LIST).write_text("".join(f"{n}\n" for n in test_names), encoding="utf-8")
    write_nih_bbox(config.out / BBOX_LIST, [(AnnotatedImage(name, config.size, regions), mapping)
                                            for (name, mapping), regions in zip(film_labels, drawn, strict=True)])
    return config.out

