"""A run's cached vectors as arrays: what every analysis reads (never a model).

`targets` is 1 where a label is positive, 0 otherwise; `known` is False for a (sample, label) pair
left out of the targets (`--uncertain ignore`: labels.positive NULL), whose 0 means nothing and which
every analysis leaves out (docs/analyze.md, "Uncertain labels"). Each label's clinical domain comes
from the store (label_names.domain, as ingest registered it): the normal label of a label set is the
one whose domain is `Normal`, and a label the store does not name is `Other`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstore import queries
from embedstore.embeddings import split_embedding_batches, split_report_batches
from embedstore.errors import InputError, IntegrityError
from embedstore.label_sets import OTHER_DOMAIN, known_domain
from embedstore.store import Store

#: The domain of a label set's normal label ("nothing found"), as label_names stores it.
NORMAL_DOMAIN = "Normal"

#: Embedding rows per batch when a split is streamed from the store (32 MiB of float32 at 512-d).
VECTOR_BATCH_ROWS = 16_384

#: DuckDB's buffer memory while analyses read a run: scans of a large run evict, never accumulate.
READ_MEMORY_LIMIT = "256MB"

#: Score and target rows per streamed batch.
PAIR_BATCH_ROWS = 1_000_000


@dataclass(frozen=True)
class StoredEmbeddings:
    """A complete run's image embeddings left in the store and read split by split, in batches: a
    run of a million vectors is never held whole (docs/analyze.md, "Large runs")."""

    store: Store
    run_id: str

    def batches(self, split: str, rows: int = VECTOR_BATCH_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(sample_ids, float32 vectors) of the split's samples, in no particular order."""
        with self.store.reader(settings={"memory_limit": READ_MEMORY_LIMIT}) as con:
            yield from split_embedding_batches(con, self.run_id, split, rows)

    def report_batches(self, split: str, rows: int = VECTOR_BATCH_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(sample_ids, float32 vectors) of the split's report embeddings (zs runs), in no particular order."""
        with self.store.reader(settings={"memory_limit": READ_MEMORY_LIMIT}) as con:
            yield from split_report_batches(con, self.run_id, split, rows)


@dataclass
class RunData:
    """One complete run: per sample (ordered by sample id) its split, embedding, scores and targets."""

    run_id: str
    mode: str
    protocol: str
    prompt_set: str | None
    model_id: str
    dataset: str
    train_seconds: float | None
    extract_seconds: float | None
    config: dict[str, Any]
    sample_ids: np.ndarray
    splits: np.ndarray
    labels: list[str]
    #: the image embeddings: a matrix (samples × dim, float32, a run built in memory) or left in the store
    embeddings: np.ndarray | StoredEmbeddings
    scores: np.ndarray
    targets: np.ndarray
    uids: np.ndarray | None = None
    #: False where a (sample, label) pair is left out; None: every pair known (set to all True)
    known: np.ndarray | None = None
    #: label -> clinical domain as the store names it; None: the shipped label sets' (a run built in memory)
    label_domains: dict[str, str] | None = None
    #: a run built in memory: (sample_ids, vectors) of its report embeddings; a stored run reads them from the store
    reports: tuple[np.ndarray, np.ndarray] | None = None
    _split_vectors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        """Every pair known unless told otherwise; domains from the shipped label sets unless the store gave them."""
        if self.known is None:
            self.known = np.ones(np.shape(self.targets), dtype=bool)
        if self.label_domains is None:
            self.label_domains = {label: known_domain(label) for label in self.labels}

    @property
    def known_pairs(self) -> np.ndarray:
        """`known` as a boolean array (always set after construction)."""
        return np.asarray(self.known, dtype=bool)

    def domain_of(self, label: str) -> str:
        """The clinical domain of `label` (`Other` for a label no label set or store names)."""
        return (self.label_domains or {}).get(label, OTHER_DOMAIN)

    def split(self, name: str) -> np.ndarray:
        """Boolean mask of the samples in split `name`."""
        mask = self.splits == name
        if not mask.any():
            raise InputError(f"split {name!r}: run {self.run_id} has no samples in it")
        return mask

    def release(self) -> None:
        """Drop the per-sample arrays once a run's figures are computed (`analyze` keeps each run only for
        its tables, which read ids, labels, domains and splits): scores, targets and `known` become
        empty (samples × labels with no samples), the cached split vectors go."""
        empty = (0, len(self.labels))
        self.scores, self.targets, self.known = np.zeros(empty), np.zeros(empty, dtype=np.int8), np.zeros(empty, bool)
        self._split_vectors.clear()

    def vectors(self, split: str) -> np.ndarray:
        """Embeddings of the split's samples in sample order (float32 from the store, read once per split)."""
        mask = self.split(split)
        if isinstance(self.embeddings, np.ndarray):
            return self.embeddings[mask]
        if split not in self._split_vectors:
            ids = self.sample_ids[mask]
            matrix: np.ndarray | None = None
            filled = np.zeros(len(ids), dtype=bool)
            for batch_ids, batch in self.embeddings.batches(split):
                if matrix is None:
                    matrix = np.empty((len(ids), batch.shape[1]), dtype=np.float32)
                rows = np.searchsorted(ids, batch_ids)
                if rows.max(initial=0) >= len(ids) or not np.array_equal(ids[rows], batch_ids) or filled[rows].any() \
                        or len(np.unique(rows)) != len(rows):
                    raise IntegrityError(f"run {self.run_id}: an embedding of split {split} belongs to no sample "
                                         "of the run, or to one twice; run `embedstore store verify`")
                matrix[rows] = batch
                filled[rows] = True
            if matrix is None or not filled.all():
                raise IntegrityError(f"run {self.run_id}: split {split} has {len(ids)} samples but "
                                     f"{int(filled.sum())} embeddings; run `embedstore store verify`")
            self._split_vectors[split] = matrix
        return self._split_vectors[split]

    def report_vectors(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(sample_ids ascending, float32 vectors) of the report embeddings of the split's samples; none (0 rows)
        for a run that stored none (lp, ft, a zs run extracted before schema version 4)."""
        mask = self.split(split)
        if self.reports is not None:
            ids, matrix = np.asarray(self.reports[0], dtype=np.int64), np.asarray(self.reports[1], dtype=np.float32)
            keep = np.isin(ids, self.sample_ids[mask])
            ids, matrix = ids[keep], matrix[keep]
        elif isinstance(self.embeddings, StoredEmbeddings):
            parts = list(self.embeddings.report_batches(split))
            ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
            matrix = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, 0), np.float32)
        else:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        order = np.argsort(ids, kind="stable")
        ids, matrix = ids[order], matrix[order]
        if len(np.unique(ids)) != len(ids):
            raise IntegrityError(f"run {self.run_id}: a sample of split {split} has two report embeddings; "
                                 "run `embedstore store verify`")
        return ids, matrix

    def vector_batches(self, split: str, rows: int = VECTOR_BATCH_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(sample_ids, float32 vectors) batches of the split, streamed: for building an index over a
        split that need not be held as a matrix beside it."""
        if isinstance(self.embeddings, np.ndarray) or split in self._split_vectors:
            ids, matrix = self.sample_ids[self.split(split)], self.vectors(split)
            for start in range(0, len(ids), rows):
                yield ids[start:start + rows], matrix[start:start + rows]
        else:
            self.split(split)
            yield from self.embeddings.batches(split, rows)

    @property
    def domains(self) -> dict[str, list[int]]:
        """Label columns per clinical domain, in order of first appearance (unnamed labels go to Other)."""
        grouped: dict[str, list[int]] = {}
        for j, label in enumerate(self.labels):
            grouped.setdefault(self.domain_of(label), []).append(j)
        return grouped

    @property
    def finding_columns(self) -> list[int]:
        """The columns of every label but the normal one(s) (domain `Normal`): what "abnormal" merges."""
        return [j for j, label in enumerate(self.labels) if self.domain_of(label) != NORMAL_DOMAIN]

    @property
    def normal_label(self) -> str | None:
        """The label that means "nothing found" (domain `Normal`), None where the label set has none."""
        return next((label for label in self.labels if self.domain_of(label) == NORMAL_DOMAIN), None)


def _positions(ids: np.ndarray, sample_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each sample id in the sorted `ids`, and whether it is one of them."""
    rows = np.clip(np.searchsorted(ids, sample_ids), 0, max(len(ids) - 1, 0))
    return rows, (ids[rows] == sample_ids) if len(ids) else np.zeros(len(sample_ids), dtype=bool)


def load_run(store: Store, run_id: str) -> RunData:
    """Read one complete run (scores, targets, splits) from the store; its embeddings stay there and
    are read split by split (`RunData.vectors`). Score and target rows are streamed in batches."""
    with store.reader(settings={"memory_limit": READ_MEMORY_LIMIT}) as con:
        overview = queries.fetch_one(con, "run_overview", run_id=run_id)
        if overview is None:
            raise InputError(f"run {run_id}: no such run in {store.path}")
        (_, mode, protocol, prompt_set, model_id, _, _, dataset, _, status, train_s, extract_s, _, config,
         _) = overview
        if status != "complete":
            raise InputError(f"run {run_id}: the run is {status}, not complete; resume its extraction to finish it")
        ids = np.asarray(queries.fetch_numpy(con, "run_sample_ids", run_id=run_id)["sample_id"], dtype=np.int64)
        labels: list[str] = list(json.loads(config)["labels"])
        scores = np.zeros((len(ids), len(labels)))
        for batch in queries.fetch_batches(con, "run_logits", PAIR_BATCH_ROWS, run_id=run_id, labels=labels):
            rows, present = _positions(ids, batch.column(0).to_numpy().astype(np.int64))
            scores[rows[present], batch.column(1).to_numpy().astype(np.int64)[present]] = batch.column(2).to_numpy()[present]
        targets = np.zeros((len(ids), len(labels)), dtype=np.int8)
        known = np.ones((len(ids), len(labels)), dtype=bool)
        for batch in queries.fetch_batches(con, "run_targets", PAIR_BATCH_ROWS, run_id=run_id, labels=labels):
            rows, present = _positions(ids, batch.column(0).to_numpy().astype(np.int64))
            columns = batch.column(1).to_numpy().astype(np.int64)
            positive = batch.column(2)
            left_out = positive.is_null().to_numpy(zero_copy_only=False)
            targets[rows[present], columns[present]] = positive.fill_null(False).to_numpy(
                zero_copy_only=False)[present]
            known[rows[present & left_out], columns[present & left_out]] = False
        split_rows = queries.fetch_numpy(con, "run_splits", run_id=run_id)
        domains = dict(queries.fetch(con, "label_domains", labels=labels))
    config = json.loads(config)
    splits = np.empty(len(ids), dtype=object)
    uids = np.empty(len(ids), dtype=object)
    rows_of, present = _positions(ids, np.asarray(split_rows["sample_id"], dtype=np.int64))
    splits[rows_of[present]] = np.asarray(split_rows["split"])[present]
    uids[rows_of[present]] = np.asarray(split_rows["uid"])[present]
    return RunData(run_id, mode, protocol, prompt_set, model_id, dataset, train_s, extract_s, config, ids,
                   splits.astype(str), labels, StoredEmbeddings(store, run_id), scores, targets, uids.astype(str),
                   known, {label: domains.get(label, OTHER_DOMAIN) for label in labels})


def dataset_runs(store: Store, dataset: str) -> list[str]:
    """Ids of the complete runs of a dataset, oldest first."""
    with store.reader() as con:
        rows = queries.fetch(con, "complete_runs", dataset=dataset)
    if not rows:
        raise InputError(f"dataset {dataset!r}: no complete runs; create them with `embedstore extract`")
    return [r[0] for r in rows]
