"""`embedstore ingest`: read a dataset in one of the known formats, validate everything, split it,
and write `datasets`, `samples`, `labels` and `label_names` in one transaction.

Nothing is half-done: every bad row is collected (file and line named), and unless `--skip-bad`
is given the store is left exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import numpy as np
import pyarrow as pa

from embedstore import datasets, queries
from embedstore.choices import IngestFormat, SplitMethod, UncertainPolicy
from embedstore.datasets.base import IngestConfig, Loaded, Problem, SourceRow
from embedstore.errors import InputError
from embedstore.images import NOT_FOUND, hash_verified, shown
from embedstore.splits import SPLIT_NAMES, SPLITTERS
from embedstore.store import Store, StoreWriter, append_rows, first_row

log = logging.getLogger(__name__)

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
# Validation
# ---------------------------------------------------------------------------------------------

#: Images checked per task; and from how many images on the checks run in worker processes (Python
#: threads contend for the interpreter: on small files 4 threads ran 3x slower than one).
IMAGE_CHECK_CHUNK = 64
PARALLEL_IMAGE_CHECKS = 2_000


def _check_images(rows: list[SourceRow], progress: Callable[[int], None] | None) -> list[str | None]:
    """Read, hash and decode every row's image with extraction's own decoder (embedstore.images:
    regular files only, size and pixel limits; a JPEG at its smallest DCT scale, every block still
    decoded), setting `image_sha256`; returns what is wrong with each, or None. Many images are
    checked in worker processes, one per core (at most 4)."""
    paths = [str(row.path) for row in rows]
    chunks = [paths[start:start + IMAGE_CHECK_CHUNK] for start in range(0, len(paths), IMAGE_CHECK_CHUNK)]
    workers = min(4, os.cpu_count() or 1)
    results: list[tuple[str, str | None]] = []
    if len(paths) >= PARALLEL_IMAGE_CHECKS and workers > 1:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding the writer lock
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for chunk_results in pool.map(hash_verified, chunks):
                results += chunk_results
                if progress:
                    progress(len(chunk_results))
    else:
        for chunk in chunks:
            results += hash_verified(chunk)
            if progress:
                progress(len(chunk))
    messages: list[str | None] = []
    for row, (sha256, reason) in zip(rows, results, strict=True):
        row.image_sha256 = sha256
        where = f" at {shown(row.path)}" if reason == NOT_FOUND else ""
        messages.append(None if reason is None else f"image {shown(row.filename)} {reason}{where}")
    return messages


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
        elif given_split and row.split is None and i not in by_row:  # a loader's problem says why already
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
    for i, message in zip(to_check, _check_images([loaded.rows[i] for i in to_check], progress), strict=True):
        if message:
            add(i, message)
    return by_row


#: What each uncertain policy makes of a raw value (1, 0, -1, None for blank): positive, negative,
#: or None (the pair is left out of that label's loss and metrics).
UNCERTAIN_RULES: dict[UncertainPolicy, Callable[[int | None], bool | None]] = {
    UncertainPolicy.ZEROS: lambda value: value == 1,
    UncertainPolicy.ONES: lambda value: value in (1, -1),
    UncertainPolicy.IGNORE: lambda value: None if value == -1 else value == 1,
}


def _derive_positives(loaded: Loaded, policy: UncertainPolicy) -> tuple[int, int]:
    """Set each row's derived `positive` labels from its raw `values` (left untouched) by the
    uncertain `policy`, and the label set's normal label (No Finding) for a sample with no positive
    finding (the study's rule). Under `ignore`, a sample whose findings are all negative or left out,
    with one left out at least, has an unknown normal label too (None), unless its own value is 1.

    Returns (derived, from_uncertain): the samples whose normal label is positive by the rule although
    their own value is not 1, and those of them with at least one uncertain (-1) finding, which
    become normal only because their findings were uncertain (read as negative under `zeros`).
    """
    rule = UNCERTAIN_RULES[policy]
    normal = loaded.label_set.normal if loaded.label_set.normal in loaded.labels else None
    derived = from_uncertain = 0
    for row in loaded.rows:
        row.positive = {label: rule(row.values[label]) for label in loaded.labels}
        if normal is None or row.values[normal] == 1:
            continue
        findings = [label for label in loaded.labels if label != normal]
        if any(row.positive[label] for label in findings):
            row.positive[normal] = False if row.positive[normal] is None else row.positive[normal]
            continue
        if any(row.positive[label] is None for label in findings):
            row.positive[normal] = None
            continue
        row.positive[normal] = True
        derived += 1
        from_uncertain += any(row.values[label] == -1 for label in findings)
    return derived, from_uncertain


def _identical_groups(rows: list[SourceRow]) -> list[list[int]]:
    """Row indices of each group of byte-identical images (same image sha256, two rows or more),
    in order of first appearance."""
    by_sha: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_sha.setdefault(row.image_sha256, []).append(i)
    return [group for group in by_sha.values() if len(group) > 1]


def _units(rows: list[SourceRow], groups: list[list[int]]) -> list[int]:
    """The split unit of each row: its patient where the dataset names one, else its uid, joined with
    the units linked through `groups` of identical images (union-find over unit <-> image), numbered
    in order of first appearance. Without patients or groups a unit is a uid."""
    parent: dict[str, str] = {}

    def find(uid: str) -> str:
        root = parent.setdefault(uid, uid)
        while root != parent[root]:
            root = parent[root]
        while uid != root:  # path compression
            parent[uid], uid = root, parent[uid]
        return root

    keys = [f"patient {row.patient}" if row.patient else f"uid {row.uid}" for row in rows]
    for key in keys:
        find(key)
    for group in groups:
        first = find(keys[group[0]])
        for i in group[1:]:
            other = find(keys[i])
            if other != first:
                parent[other] = first
    roots = [find(key) for key in keys]
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
    # The splitters depend only on the order of the units (first appearance), so unit numbers name them.
    names = [str(number) for number in range(max(units) + 1)]
    positives = np.zeros((len(names), len(labels)), dtype=bool)
    for row, unit in zip(rows, units, strict=True):
        positives[unit] |= np.array([row.positive[label] is True for label in labels])
    kind = "patient" if any(row.patient for row in rows) else "uid"
    what = (f"{len(names)} {kind}(s)" if method != SplitMethod.STRATIFIED
            else f"{len(names)} {kind} group(s) ({kind}s sharing an image are one)")
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
    if not config.path.exists():
        raise InputError(f"{config.path}: no such file or folder")
    fmt = datasets.detect(config.path) if config.format == IngestFormat.AUTO else config.format
    _refuse_unused_options(config, fmt)
    loaded = datasets.load(fmt, config.path, config)
    has_given_split = any(row.split for row in loaded.rows)
    method = config.split or (SplitMethod.GIVEN if has_given_split else SplitMethod.STUDY)
    if method == SplitMethod.GIVEN and not has_given_split:
        raise InputError(f"split given: {loaded.source.name} has no split column")
    if not loaded.rows:
        found = f" ({len(loaded.problems)} bad row(s), listed above)" if loaded.problems else ""
        raise InputError(f"{loaded.source}: no rows to ingest{found}", details=[str(p) for p in loaded.problems])
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
    derived, from_uncertain = _derive_positives(loaded, config.uncertain)
    identical = _identical_groups(loaded.rows)
    splits = _split(loaded.rows, loaded.labels, method, config.seed, identical)
    counts = {name: splits.count(name) for name in SPLIT_NAMES}
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        raise InputError(f"{loaded.source.name}: split(s) {', '.join(empty)} would be empty "
                         f"({len(loaded.rows)} samples, split {method}); ingest more samples")
    for label in loaded.labels:
        if not any(row.positive[label] is True for row in loaded.rows):
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
        _register_labels(con, loaded)
        sample_ids = con.execute("SELECT nextval('sample_id_seq') FROM range(?)", [len(loaded.rows)]).fetchnumpy()
        ids = np.asarray(next(iter(sample_ids.values())), dtype=np.int64)
        _insert_rows(con, dataset_id, ids, loaded, splits)
        con.execute(
            "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [dataset_id, config.name, fmt, str(loaded.source.resolve()), manifest_sha, len(loaded.rows), method,
             config.seed if method != SplitMethod.GIVEN else None, json.dumps(skipped), json.dumps(checks),
             datetime.now(UTC).replace(tzinfo=None), json.dumps(_options(loaded, config))],
        )
    for warning in loaded.warnings:
        log.warning("warning: %s", warning)
    return IngestResult(dataset_id, config.name, fmt, len(loaded.rows), counts, skipped, loaded.warnings, manifest_sha)


#: Options only some layouts read: given to another, each is refused rather than silently ignored.
LAYOUT_OPTIONS: dict[str, tuple[str, frozenset[IngestFormat]]] = {
    "labels_csv": ("a CheXpert labels CSV", frozenset({IngestFormat.KAGGLE, IngestFormat.OPENI})),
    "metadata_csv": ("a DICOM-metadata CSV", frozenset({IngestFormat.OPENI})),
}


def _refuse_unused_options(config: IngestConfig, fmt: IngestFormat) -> None:
    for parameter, (what, layouts) in LAYOUT_OPTIONS.items():
        if getattr(config, parameter) is not None and fmt not in layouts:
            raise InputError(f"{what} is read only by the {' and '.join(sorted(layouts))} format(s), not by {fmt}",
                             parameter=parameter)


def _checks(loaded: Loaded, splits: list[str], identical: list[list[int]], method: SplitMethod, derived: int,
            from_uncertain: int) -> dict[str, int]:
    """The counts stored in `datasets.checks`, each non-zero one also added to the warnings."""
    crossing = [group for group in identical if len({splits[i] for i in group}) > 1]
    splits_of_patient: dict[str, set[str]] = {}
    for row, split in zip(loaded.rows, splits, strict=True):
        if row.patient:
            splits_of_patient.setdefault(row.patient, set()).add(split)
    divided = sorted(patient for patient, found in splits_of_patient.items() if len(found) > 1)
    checks = {
        "identical_image_groups": len(identical),
        "identical_images": sum(len(group) for group in identical),
        "cross_split_duplicate_groups": len(crossing),
        "cross_split_duplicate_images": sum(len(group) for group in crossing),
        "no_finding_derived": derived,
        "no_finding_from_uncertain": from_uncertain,
        "patients": len(splits_of_patient),
        "patients_in_several_splits": len(divided),
        "uncertain_left_out": sum(value is None for row in loaded.rows for value in row.positive.values()),
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
    if divided:
        loaded.warnings.append(
            f"{len(divided)} patient(s) have images in more than one split of the given split (e.g. "
            f"{', '.join(shown(p) for p in divided[:3])}): it is kept as the dataset defines it; split by patient "
            "with the study or stratified split to keep each patient in one")
    if from_uncertain:
        loaded.warnings.append(
            f"{from_uncertain} sample(s) have No Finding only because none of their findings is positive: each "
            "has an uncertain (-1) finding (the raw values are kept in labels.value)")
    return checks


def _options(loaded: Loaded, config: IngestConfig) -> dict[str, object]:
    """How the labels were read, stored in `datasets.options` (provenance of every figure built on them)."""
    return {"label_set": loaded.label_set.name, "uncertain": str(config.uncertain), **loaded.options}


def _register_labels(con: duckdb.DuckDBPyConnection, loaded: Loaded) -> None:
    """Add the labels the store does not know yet to `label_names`, after the known ones, with their
    domain and CheXpert counterpart from the dataset's label set (`Other` and none for a label it lacks)."""
    known = {row[0] for row in con.execute("SELECT label FROM label_names").fetchall()}
    start = con.execute("SELECT coalesce(max(position), -1) + 1 FROM label_names").fetchall()[0][0]
    new = [label for label in loaded.labels if label not in known]
    for offset, label in enumerate(new):
        con.execute("INSERT INTO label_names VALUES (?, ?, ?, ?)",
                    [label, start + offset, loaded.label_set.domain(label), loaded.label_set.chexpert.get(label)])


def _insert_rows(
    con: duckdb.DuckDBPyConnection, dataset_id: str, ids: np.ndarray, loaded: Loaded, splits: list[str]
) -> None:
    rows = loaded.rows
    samples = pa.table({
        "dataset_id": pa.array([dataset_id] * len(rows)),
        "sample_id": pa.array(ids),
        "uid": pa.array([r.uid for r in rows]),
        "filename": pa.array([r.filename for r in rows]),
        "path": pa.array([os.path.abspath(r.path) for r in rows]),  # absolute; a symlink is kept as named
        "split": pa.array(splits),
        "report": pa.array([r.report for r in rows]),
        "projection": pa.array([r.projection for r in rows], pa.string()),
        "image_sha256": pa.array([r.image_sha256 for r in rows]),
        "patient": pa.array([r.patient for r in rows], pa.string()),
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
