"""What the synthetic benchmark's writers share when they write it in a dataset's layout
(`embedstore data sample --layout`): an empty target, patients and an official split drawn for the
synthetic studies, deterministic CSVs, findings named in the dataset's own labels, and drawing the
films in worker processes. Every writer gives the same bytes for the same seed, whatever the number
of workers.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from embedstore.errors import InputError
from embedstore.label_sets import LabelSet

Task = TypeVar("Task")
Result = TypeVar("Result")


def refuse_nonempty(out: Path) -> None:
    """A sample is written into an empty (or new) folder only."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out}: not an empty folder; choose an empty or new one", parameter="out")


def group_patients(n_studies: int, seed: int) -> list[int]:
    """The patient index of each study: consecutive studies grouped 1 to 4 per patient (about 1.9
    on average), so that splitting by patient differs from splitting by study."""
    rng = np.random.default_rng([seed, 14, 1])
    patients: list[int] = []
    while len(patients) < n_studies:
        size = int(rng.choice([1, 2, 3, 4], p=[0.45, 0.3, 0.15, 0.1]))
        patients.extend([len(set(patients))] * size)
    return patients[:n_studies]


def assign_patients(study_uids: Iterable[int], seed: int) -> tuple[dict[int, int], list[str]]:
    """The patient of each synthetic study (`group_patients`) and each patient's official split."""
    studies = list(dict.fromkeys(study_uids))
    patient_of_study = dict(zip(studies, group_patients(len(studies), seed), strict=True))
    return patient_of_study, official_split(max(patient_of_study.values()) + 1, seed)


def official_split(n_patients: int, seed: int) -> list[str]:
    """train/val/test for each patient (70/15/15, each split one patient at least where there are three)."""
    order = np.random.default_rng([seed, 14, 2]).permutation(n_patients)
    n_val = n_test = max(1, round(0.15 * n_patients)) if n_patients >= 3 else 0
    splits = [""] * n_patients
    for rank, patient in enumerate(order):
        splits[patient] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return splits


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    """A CSV, gzipped (with a fixed header time, so the bytes depend on the content only) when the
    name ends in `.gz`."""
    if path.name.endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped, \
                io.TextIOWrapper(zipped, encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        return
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def counterpart_map(findings: Iterable[str], labels: LabelSet, rng: np.random.Generator) -> dict[str, str]:
    """Each CheXpert finding's counterpart in a dataset's label set (its mapping read backwards): a
    finding with several counterparts (NIH Lung Lesion: Mass, Nodule) gets one of them (seeded), one
    with none (NIH: Fracture, Support Devices, …) is left out. Keyed in the order of `findings`."""
    by_chexpert: dict[str, list[str]] = {}
    for label in labels.labels:
        counterpart = labels.chexpert[label]
        if counterpart is not None and label != labels.normal:
            by_chexpert.setdefault(counterpart, []).append(label)
    mapping: dict[str, str] = {}
    for finding in findings:
        options = by_chexpert.get(finding, [])
        if options:
            mapping[finding] = options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]
    return mapping


def counterpart_names(mapping: dict[str, str], labels: LabelSet) -> list[str]:
    """The dataset labels of a `counterpart_map` in the label set's order; the normal label when empty."""
    names = set(mapping.values())
    return [label for label in labels.labels if label in names] or [str(labels.normal)]


def counterparts_of(findings: Iterable[str], labels: LabelSet, rng: np.random.Generator) -> list[str]:
    """A dataset's findings for a set of CheXpert findings (`counterpart_map`), in the label set's
    order; the normal label when none is left."""
    return counterpart_names(counterpart_map(findings, labels, rng), labels)


def render_all(tasks: Sequence[Task], render: Callable[[Task], Result], workers: int,
               progress: Callable[[int], None] | None) -> list[Result]:
    """Write every file with `render` (a module-level function, so that worker processes can run it),
    in `workers` processes when there is more than one (each file is seeded on its own, so the bytes
    are the same whatever the number of workers). Returns what `render` returned, in task order."""
    results: list[Result] = []
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(render, tasks, chunksize=16):
                results.append(result)
                if progress:
                    progress(1)
        return results
    for task in tasks:
        results.append(render(task))
        if progress:
            progress(1)
    return results
