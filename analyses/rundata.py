"""A run's cached vectors as arrays: what every analysis reads (never a model).

`targets` is 1 where a label is positive, 0 otherwise; `known` is False for a (sample, label) pair
left out of the targets (`--uncertain ignore`: labels.positive NULL), whose 0 means nothing and which
every analysis leaves out (docs/analyze.md, "Uncertain labels"). Each label's clinical domain comes
from the store (label_names.domain, as ingest registered it): the normal label of a label set is the
one whose domain is `Normal`, and a label the store does not name is `Other`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedstore import queries
from embedstore.embeddings import read_image_embeddings
from embedstore.errors import InputError
from embedstore.label_sets import OTHER_DOMAIN, known_domain
from embedstore.store import Store
from embedstore.vector_index import index_relpath

#: The domain of a label set's normal label ("nothing found"), as label_names stores it.
NORMAL_DOMAIN = "Normal"


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
    embeddings: np.ndarray
    scores: np.ndarray
    targets: np.ndarray
    index_path: Path
    uids: np.ndarray | None = None
    #: False where a (sample, label) pair is left out; None: every pair known (set to all True)
    known: np.ndarray | None = None
    #: label -> clinical domain as the store names it; None: the shipped label sets' (a run built in memory)
    label_domains: dict[str, str] | None = None

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


def load_run(store: Store, run_id: str) -> RunData:
    """Read one complete run (embeddings, scores, targets) from the store."""
    with store.reader() as con:
        overview = queries.fetch_one(con, "run_overview", run_id=run_id)
        if overview is None:
            raise InputError(f"run {run_id}: no such run in {store.path}")
        (_, mode, protocol, prompt_set, model_id, _, _, dataset, _, status, train_s, extract_s, _, config,
         _) = overview
        if status != "complete":
            raise InputError(f"run {run_id}: the run is {status}, not complete; resume its extraction to finish it")
        ids, embeddings = read_image_embeddings(con, run_id)
        labels: list[str] = list(json.loads(config)["labels"])
        rows = queries.fetch_numpy(con, "run_scores", run_id=run_id, labels=labels)
        left_out = queries.fetch_numpy(con, "run_left_out", run_id=run_id, labels=labels)
        split_rows = queries.fetch_numpy(con, "run_splits", run_id=run_id)
        domains = dict(queries.fetch(con, "label_domains", labels=labels))
    config = json.loads(config)
    scores = np.zeros((len(ids), len(labels)))
    targets = np.zeros((len(ids), len(labels)), dtype=np.int8)
    row_index = np.searchsorted(ids, np.asarray(rows["sample_id"], dtype=np.int64))
    col_index = np.asarray(rows["label_column"], dtype=np.int64)
    scores[row_index, col_index] = rows["logit"]
    targets[row_index, col_index] = np.asarray(rows["truth"], dtype=np.int8)
    known = np.ones((len(ids), len(labels)), dtype=bool)
    known[np.searchsorted(ids, np.asarray(left_out["sample_id"], dtype=np.int64)),
          np.asarray(left_out["label_column"], dtype=np.int64)] = False
    splits = np.empty(len(ids), dtype=object)
    uids = np.empty(len(ids), dtype=object)
    rows_of = np.searchsorted(ids, np.asarray(split_rows["sample_id"], dtype=np.int64))
    splits[rows_of] = split_rows["split"]
    uids[rows_of] = split_rows["uid"]
    return RunData(run_id, mode, protocol, prompt_set, model_id, dataset, train_s, extract_s, config, ids,
                   splits.astype(str), labels, embeddings, scores, targets, store.resolve(index_relpath(run_id)),
                   uids.astype(str), known, {label: domains.get(label, OTHER_DOMAIN) for label in labels})


def dataset_runs(store: Store, dataset: str) -> list[str]:
    """Ids of the complete runs of a dataset, oldest first."""
    with store.reader() as con:
        rows = queries.fetch(con, "complete_runs", dataset=dataset)
    if not rows:
        raise InputError(f"dataset {dataset!r}: no complete runs; create them with `embedstore extract`")
    return [r[0] for r in rows]
