"""VinDr-CXR (`vindr-cxr`): several radiologists' labels per image, made one by a stated reader policy.

Two layouts are read:

* PhysioNet: `annotations/image_labels_train.csv` and `image_labels_test.csv` (or both in the folder
  itself), one row per image and reader (`image_id`, `rad_id`, then the 22 local and 6 global labels
  as 0/1); the test file has one consensus row per image. DICOMs at `train/<image_id>.dicom` and
  `test/<image_id>.dicom`.
* Kaggle's VinBigData competition: `train.csv`, one row per reader's box (`image_id`, `class_name`,
  `class_id`, `rad_id`, `x_min` … `y_max`; `No finding` rows have no box), 14 local labels and
  `No finding`; DICOMs at `train/<image_id>.dicom`. Its test images carry no labels and are not read.

Per image and label, the readers' marks become one value by `config.readers`: `any` (at least one
reader), `majority` (more than half of that image's readers) or `consensus` (all of them). `No finding`
is then 1 exactly when no other label is 1, so an image is never both normal and abnormal. Labels
keep VinDr's names (label set `vindr-cxr`). There is no patient id (de-identified): patient is None
and the split unit is the image. Boxes are not stored.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from embedstore.choices import ReaderPolicy
from embedstore.datasets.base import (
    PLAIN_NAME,
    IngestConfig,
    Loaded,
    Problem,
    SourceRow,
    draw_val,
    find_file,
    open_text,
    read_table,
    require_columns,
    text,
    uses_given_split,
)
from embedstore.datasets.nih14 import RenderTask
from embedstore.datasets.sample_annotations import (
    VINDR_GLOBAL,
    AnnotatedImage,
    DrawnRegion,
    regions_of,
    vindr_reader_rows,
    write_vindr,
)
from embedstore.datasets.sample_writing import counterpart_map, counterpart_names, refuse_nonempty, render_all
from embedstore.errors import InputError
from embedstore.label_sets import LabelSet, label_set
from embedstore.synthetic import ImageJob, SampleConfig, plan_dataset, render_frontal

LABEL_SET = "vindr-cxr"
TRAIN_LABELS, TEST_LABELS = "image_labels_train.csv", "image_labels_test.csv"
#: The readers' boxes (PhysioNet release: image_id, rad_id, class_name, x_min, y_min, x_max, y_max).
BOXES_TRAIN, BOXES_TEST = "annotations_train.csv", "annotations_test.csv"
ANNOTATIONS_DIR = "annotations"
KAGGLE_TRAIN = "train.csv"
KAGGLE_COLUMNS = ("image_id", "class_name", "rad_id")
KAGGLE_ALLOWED = (*KAGGLE_COLUMNS, "class_id", "x_min", "y_min", "x_max", "y_max")
#: Spellings of a label column seen in the release, and the label they are: the test file writes
#: `Other disease` where the train file writes `Other diseases`.
COLUMN_ALIASES = {"Other disease": "Other diseases"}
#: The Kaggle competition's classes: 14 local labels and No finding.
KAGGLE_LABELS = ("Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
                 "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
                 "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "No finding")
#: How each reader mark is written (blank: not marked, counted in a warning).
MARKS = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "": 0}
NO_FINDING_RULE = "No finding = 1 exactly when no other label is 1 after the reader policy"


# ---------------------------------------------------------------------------------------------
# Aggregating readers
# ---------------------------------------------------------------------------------------------

@dataclass
class ImageReads:
    """One image's reader rows: where it first appears, and each reader's set of marked labels."""

    file: str
    row: int
    split_dir: str
    readers: dict[str, set[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def policy_positive(votes: int, readers: int, policy: ReaderPolicy) -> bool:
    """Whether a label marked by `votes` of `readers` readers is positive under `policy`."""
    if policy == ReaderPolicy.ANY:
        return votes >= 1
    if policy == ReaderPolicy.CONSENSUS:
        return votes == readers
    return 2 * votes > readers


def aggregate(reads: ImageReads, labels: tuple[str, ...], normal: str, policy: ReaderPolicy) -> dict[str, int | None]:
    """The image's value per label by `policy`; the normal label by NO_FINDING_RULE."""
    n = len(reads.readers)
    votes = Counter(label for marked in reads.readers.values() for label in marked)
    values: dict[str, int | None] = {label: int(policy_positive(votes[label], n, policy))
                                     for label in labels if label != normal}
    values[normal] = int(not any(values.values()))
    return {label: values[label] for label in labels}


def _disagreement(images: list[ImageReads], normal: str) -> tuple[int, int, int, int]:
    """How often readers of one image disagree, among images read by several: (such images, those whose
    readers' finding sets differ, image × label pairs with at least one vote, those not marked by every
    reader)."""
    multi = [image for image in images if len(image.readers) > 1]
    differing = voted = split_votes = 0
    for image in multi:
        sets = [frozenset(marked - {normal}) for marked in image.readers.values()]
        differing += len(set(sets)) > 1
        votes = Counter(label for marked in sets for label in marked)
        voted += len(votes)
        split_votes += sum(count < len(sets) for count in votes.values())
    return len(multi), differing, voted, split_votes


# ---------------------------------------------------------------------------------------------
# Reading the two layouts
# ---------------------------------------------------------------------------------------------

def _physionet_file(root: Path, name: str) -> Path | None:
    return find_file(root / ANNOTATIONS_DIR, name) or find_file(root, name)


def _kaggle_file(root: Path) -> Path | None:
    """`train.csv(.gz)` whose header names image_id, class_name and rad_id (not CheXpert's train.csv)."""
    candidate = find_file(root, KAGGLE_TRAIN)
    if candidate is None:
        return None
    try:
        with open_text(candidate) as handle:
            header = next(csv.reader(handle), [])
    except (OSError, EOFError, UnicodeDecodeError, csv.Error):
        return None
    return candidate if all(column in header for column in KAGGLE_COLUMNS) else None


def _read_label_table(path: Path, split_dir: str, labels: LabelSet, reads: dict[str, ImageReads],
                      blanks: Counter[str]) -> None:
    """One PhysioNet image_labels file into `reads` (image_id → readers' marks)."""
    problems: list[Problem] = []
    frame = read_table(path, problems)
    both = [alias for alias, name in COLUMN_ALIASES.items() if alias in frame.columns and name in frame.columns]
    if both:
        raise InputError(f"{path}: columns {both[0]!r} and {COLUMN_ALIASES[both[0]]!r} are both present; they are "
                         "one label (the test file's and the train file's spelling)")
    frame = frame.rename({c: COLUMN_ALIASES[c] for c in frame.columns if c in COLUMN_ALIASES})
    require_columns(path, frame, ["image_id", *labels.labels], ["image_id", "rad_id", *labels.labels])
    has_readers = "rad_id" in frame.columns
    malformed = {p.row: p.message for p in problems}
    for line, record in enumerate(frame.iter_rows(named=True), start=2):
        image_id = text(record["image_id"])
        image = reads.get(image_id)
        if image is None:
            image = reads[image_id] = ImageReads(path.name, line, split_dir)
            _check_image_id(image, image_id)
        elif image.file != path.name:
            other = ImageReads(path.name, line, split_dir)
            other.problems.append(f"image {image_id} is also in {image.file} (row {image.row})")
            reads[f"{image_id}\0{path.name}"] = other
            continue
        if line in malformed:
            image.problems.append(f"(row {line}) {malformed[line]}")
        reader = text(record["rad_id"]) if has_readers else "consensus"
        if not reader:
            image.problems.append(f"(row {line}) rad_id is blank")
            continue
        if reader in image.readers:
            image.problems.append(f"(row {line}) a second row of reader {reader} for image {image_id}")
            continue
        marked: set[str] = set()
        for label in labels.labels:
            raw = text(record[label])
            if raw not in MARKS:
                image.problems.append(f"(row {line}) column {label!r}: value {raw!r} is not 0 or 1")
            elif MARKS[raw]:
                marked.add(label)
            elif not raw:
                blanks[path.name] += 1
        image.readers[reader] = marked


def _check_image_id(image: ImageReads, image_id: str) -> None:
    """An image id becomes a file name: one that could reach outside the folder is a bad row (and the
    file is never opened: ingest reads no image of a row with a problem)."""
    if not PLAIN_NAME.fullmatch(image_id):
        image.problems.append(f"image_id {image_id!r} is not a plain file name (letters, digits, _ . -)")


def _read_kaggle(path: Path, reads: dict[str, ImageReads]) -> None:
    """Kaggle's train.csv into `reads`: each reader's classes (boxes of one class count once)."""
    problems: list[Problem] = []
    frame = read_table(path, problems)
    require_columns(path, frame, KAGGLE_COLUMNS, KAGGLE_ALLOWED)
    malformed = {p.row: p.message for p in problems}
    for line, record in enumerate(frame.iter_rows(named=True), start=2):
        image_id = text(record["image_id"])
        image = reads.get(image_id)
        if image is None:
            image = reads[image_id] = ImageReads(path.name, line, "train")
            _check_image_id(image, image_id)
        if line in malformed:
            image.problems.append(f"(row {line}) {malformed[line]}")
        reader, name = text(record["rad_id"]), text(record["class_name"])
        if not reader:
            image.problems.append(f"(row {line}) rad_id is blank")
            continue
        if name not in KAGGLE_LABELS:
            image.problems.append(f"(row {line}) unknown class_name {name!r} (known: {', '.join(KAGGLE_LABELS)})")
            continue
        image.readers.setdefault(reader, set()).add(name)


def load(path: Path, config: IngestConfig) -> Loaded:
    """VinDr-CXR in the PhysioNet or the Kaggle VinBigData layout (module docstring)."""
    root = path if path.is_dir() else path.parent
    vindr = label_set(LABEL_SET)
    normal = str(vindr.normal)
    train = _physionet_file(root, TRAIN_LABELS)
    reads: dict[str, ImageReads] = {}
    blanks: Counter[str] = Counter()
    if train is not None:
        labels = vindr.labels
        loaded = Loaded("vindr-cxr", train, list(labels), [], label_set=vindr)
        test = _physionet_file(root, TEST_LABELS)
        _read_label_table(train, "train", vindr, reads, blanks)
        if test is not None:
            _read_label_table(test, "test", vindr, reads, blanks)
        loaded.options["layout"] = "physionet"
    else:
        kaggle = _kaggle_file(root)
        if kaggle is None:
            raise InputError(f"{root}: neither {ANNOTATIONS_DIR}/{TRAIN_LABELS} (PhysioNet) nor a VinBigData "
                             f"{KAGGLE_TRAIN} (Kaggle) in this folder")
        labels = tuple(label for label in vindr.labels if label in KAGGLE_LABELS)
        loaded = Loaded("vindr-cxr", kaggle, list(labels), [], label_set=vindr)
        _read_kaggle(kaggle, reads)
        test = None
        loaded.options["layout"] = "kaggle-vinbigdata"
    images = list(reads.values())
    inconsistent = 0
    for key, image in reads.items():
        image_id = key.split("\0")[0]
        inconsistent += sum(normal in marked and len(marked) > 1 for marked in image.readers.values())
        values = aggregate(image, labels, normal, config.readers) if image.readers else dict.fromkeys(labels)
        loaded.problems.extend(Problem(image.file, image.row, message) for message in image.problems)
        filename = f"{image.split_dir}/{image_id}.dicom"
        loaded.rows.append(SourceRow(
            file=image.file, row=image.row, uid=image_id, filename=filename, path=root / filename, report="",
            projection="Frontal", split=None, values=values, patient=None,
        ))
    _split(loaded, test is not None, config)
    per_image = Counter(len(image.readers) for image in images)
    multi, differing, voted, split_votes = _disagreement(images, normal)
    loaded.options |= {
        "readers": str(config.readers), "no_finding_rule": NO_FINDING_RULE, "patient": "none (de-identified)",
        "readers_per_image": {str(n): per_image[n] for n in sorted(per_image)},
        "reader_disagreement": {
            "multi_reader_images": multi, "images_readers_disagree": differing,
            "image_disagreement_rate": round(differing / multi, 4) if multi else None,
            "label_disagreement_rate": round(split_votes / voted, 4) if voted else None,
        },
    }
    if multi:
        loaded.warnings.append(
            f"readers disagree on {differing} of {multi} images read by several radiologists "
            f"({differing / multi:.1%}; {split_votes / max(voted, 1):.1%} of the labels marked by some reader are "
            f"not marked by all); labels follow the reader policy {config.readers}")
    if inconsistent:
        loaded.warnings.append(f"{inconsistent} reader(s) of an image mark {normal} together with a finding; "
                               f"their findings count, and {normal} is derived from the findings")
    for name, count in blanks.items():
        loaded.warnings.append(f"{count} blank reader mark(s) in {name} read as 0 (not marked)")
    return loaded


def _split(loaded: Loaded, official: bool, config: IngestConfig) -> None:
    """The PhysioNet split: the test file's images are test; of the train file's, the 1/8 that `draw_val`
    picks are val (no patient ids, so the unit is the image). Kaggle's labelled images are one set, so
    the split is left to ingest."""
    if not official or not uses_given_split(config):
        why = ("the competition's test images have no labels" if loaded.options["layout"] == "kaggle-vinbigdata"
               else f"no {TEST_LABELS}" if not official else f"{config.split} asked for")
        loaded.options["split_source"] = f"drawn by ingest ({why})"
        return
    val = draw_val([row.uid for row in loaded.rows if row.filename.startswith("train/")], config.seed)
    for row in loaded.rows:
        row.split = "test" if row.filename.startswith("test/") else "val" if row.uid in val else "train"
    loaded.options |= {
        "split_source": f"official {TRAIN_LABELS} / {TEST_LABELS}",
        "val_rule": "ceil(n/8) of the n train images: those whose sha256('<seed>:<image_id>') sorts first",
        "val_seed": config.seed, "val_images": len(val),
    }


def detect(path: Path) -> bool:
    """A folder holding image_labels_train.csv (in annotations/ or itself), or a VinBigData train.csv."""
    return path.is_dir() and (_physionet_file(path, TRAIN_LABELS) is not None or _kaggle_file(path) is not None)


# ---------------------------------------------------------------------------------------------
# The synthetic benchmark in this layout
# ---------------------------------------------------------------------------------------------

#: Reader noise of the synthetic sample: a reader misses a true finding with MISS, and adds one false
#: finding to an image with FALSE_FINDING.
MISS, FALSE_FINDING = 0.15, 0.05
READERS = tuple(f"R{k}" for k in range(1, 18))
#: Stored values: 12 bits in 16-bit words, MONOCHROME1 (high = dark); the window shows the full range.
BITS_STORED = 12
WINDOW = (2 ** (BITS_STORED - 1), 2 ** BITS_STORED)


def film_to_monochrome1(film: np.ndarray) -> np.ndarray:
    """An 8-bit film (bright = dense) as 12-bit MONOCHROME1 stored values (high = dark)."""
    top = 2 ** BITS_STORED - 1
    return np.rint((255 - film.astype(np.float64)) * top / 255).astype(np.uint16)


def _render_dicom(task: RenderTask) -> tuple[DrawnRegion, ...]:
    """Draw one synthetic film and write it as VinDr ships: 16-bit words, 12 bits stored, MONOCHROME1.
    Returns the regions drawn on it."""
    from embedstore.dicom import write_dicom

    target, seed, domain, index, findings, sides, size = task
    film, masks = render_frontal(seed, domain, index, findings, sides, size)
    write_dicom(target, film_to_monochrome1(film), photometric="MONOCHROME1", bits_stored=BITS_STORED,
                window=WINDOW, view_position="PA", uid_seed=f"{seed}:{index}")
    return regions_of(masks)


def _reader_marks(truth: list[str], labels: LabelSet, rng: np.random.Generator) -> set[str]:
    """One reader's labels: each true finding kept unless missed, now and then one false finding."""
    normal = str(labels.normal)
    marked = {label for label in truth if label != normal and rng.random() >= MISS}
    if rng.random() < FALSE_FINDING:
        others = [label for label in labels.labels if label != normal and label not in truth]
        marked.add(others[int(rng.integers(len(others)))])
    return marked or {normal}


def write_sample(config: SampleConfig, progress: Callable[[int], None] | None = None) -> Path:
    """The synthetic benchmark as VinDr-CXR ships on PhysioNet: DICOMs (MONOCHROME1, 12 of 16 bits) at
    `train/` and `test/<image_id>.dicom`, `annotations/image_labels_train.csv` with three readers per
    image (each misses a finding now and then and rarely adds one, seeded) and `image_labels_test.csv`
    with one consensus row per image (the true findings; `Other disease` spelt as the release spells
    it). About a sixth of the images are test. Also `annotations/annotations_{train,test}.csv`, the
    readers' boxes (`_write_boxes`). Returns the folder."""
    config.validate()
    refuse_nonempty(config.out)
    labels = label_set(LABEL_SET)
    rng = np.random.default_rng([config.seed, 18])
    jobs = [job for job in plan_dataset(config) if job.frontal]
    test_count = max(1, round(len(jobs) / 6))
    is_test = {int(i) for i in rng.permutation(len(jobs))[:test_count]}
    for folder in ("train", "test", ANNOTATIONS_DIR):
        (config.out / folder).mkdir(parents=True, exist_ok=True)
    train_rows: list[list[object]] = []
    test_rows: list[list[object]] = []
    tasks: list[RenderTask] = []
    map_of_study: dict[int, dict[str, str]] = {}
    # Per image: its id, whether it is test, each reader's (rad_id, marked labels), label → finding.
    reads: list[tuple[str, bool, list[tuple[str, list[str]]], dict[str, str]]] = []
    for position, job in enumerate(jobs):
        image_id = np.random.default_rng([config.seed, 18, job.index]).bytes(16).hex()
        if job.study.uid not in map_of_study:
            map_of_study[job.study.uid] = counterpart_map(job.study.findings, labels, rng)
        truth = counterpart_names(map_of_study[job.study.uid], labels)
        split_dir = "test" if position in is_test else "train"
        readers: list[tuple[str, list[str]]] = []
        if split_dir == "test":
            test_rows.append([image_id, *(int(label in truth) for label in labels.labels)])
        else:
            for reader in sorted(rng.choice(len(READERS), size=3, replace=False)):
                marked = _reader_marks(truth, labels, rng)
                train_rows.append([image_id, READERS[int(reader)], *(int(label in marked) for label in labels.labels)])
                readers.append((READERS[int(reader)], [label for label in labels.labels if label in marked]))
        reads.append((image_id, split_dir == "test", readers,
                      {label: finding for finding, label in map_of_study[job.study.uid].items()}))
        tasks.append((str(config.out / split_dir / f"{image_id}.dicom"), config.seed, config.domain, job.index,
                      job.study.findings, job.study.sides, config.size))
    drawn = render_all(tasks, _render_dicom, config.workers, progress)
    test_header = [next((alias for alias, name in COLUMN_ALIASES.items() if name == label), label)
                   for label in labels.labels]
    for name, header, rows in ((TRAIN_LABELS, ["image_id", "rad_id", *labels.labels], train_rows),
                               (TEST_LABELS, ["image_id", *test_header], test_rows)):
        with open(config.out / ANNOTATIONS_DIR / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
    _write_boxes(config, jobs, reads, drawn)
    return config.out


def _write_boxes(config: SampleConfig, jobs: list[ImageJob],
                 reads: list[tuple[str, bool, list[tuple[str, list[str]]], dict[str, str]]],
                 drawn: list[tuple[DrawnRegion, ...]]) -> None:
    """`annotations/annotations_train.csv` and `annotations_test.csv` (PhysioNet's box files): three
    readers per image whose boxes disagree as readers do (`vindr_reader_rows`). A training image's
    readers are its three in image_labels_train.csv, each boxing the local labels they marked there.

    The release's test boxes are one consensus of five readers; the synthetic test file has three
    readers too (drawn from READERS), each boxing the consensus findings, so that the agreement
    between readers (the human ceiling) can be measured on the test split as well.
    """
    order = label_set(LABEL_SET).labels
    train: list[list[object]] = []
    test: list[list[object]] = []
    for job, (image_id, in_test, readers, finding_of), regions in zip(jobs, reads, drawn, strict=True):
        stream = np.random.default_rng([config.seed, 18, 77, job.index])
        if in_test:
            consensus = [label for label in order if label in finding_of and label not in VINDR_GLOBAL]
            chosen = sorted(stream.choice(len(READERS), size=3, replace=False))
            readers = [(READERS[int(reader)], consensus) for reader in chosen]
        image = AnnotatedImage(image_id, config.size, regions)
        (test if in_test else train).extend(vindr_reader_rows(image, readers, finding_of, stream))
    write_vindr(config.out / ANNOTATIONS_DIR / BOXES_TRAIN, train)
    write_vindr(config.out / ANNOTATIONS_DIR / BOXES_TEST, test)
