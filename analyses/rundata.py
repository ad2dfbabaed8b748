"""A run's cached vectors as arrays: what every analysis reads (never a model)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embedstore import queries
from embedstore.embeddings import read_image_embeddings
from embedstore.errors import InputError
from embedstore.labels import DOMAIN_OF, NO_FINDING
from embedstore.store import Store
from embedstore.vector_index import index_relpath


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

    def split(self, name: str) -> np.ndarray:
        """Boolean mask of the samples in split `name`."""
        mask = self.splits == name
        if not mask.any():
            raise InputError(f"split {name!r}: run {self.run_id} has no samples in it")
        return mask

    @property
    def domains(self) -> dict[str, list[int]]:
        """Label columns per clinical domain (labels outside the CheXpert set go to Other)."""
        grouped: dict[str, list[int]] = {}
        for j, label in enumerate(self.labels):
            grouped.setdefault(DOMAIN_OF.get(label, "Other"), []).append(j)
        return grouped

    @property
    def abnormal(self) -> np.ndarray:
        """Normal-vs-abnormal truth: any positive label other than No Finding."""
        columns = [j for j, label in enumerate(self.labels) if label != NO_FINDING]
        return self.targets[:, columns].max(axis=1)


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
        split_rows = queries.fetch_numpy(con, "run_splits", run_id=run_id)
    config = json.loads(config)
    scores = np.zeros((len(ids), len(labels)))
    targets = np.zeros((len(ids), len(labels)), dtype=np.int8)
    row_index = np.searchsorted(ids, np.asarray(rows["sample_id"], dtype=np.int64))
    col_index = np.asarray(rows["label_column"], dtype=np.int64)
    scores[row_index, col_index] = rows["logit"]
    targets[row_index, col_index] = np.asarray(rows["truth"], dtype=np.int8)
    splits = np.empty(len(ids), dtype=object)
    uids = np.empty(len(ids), dtype=object)
    rows_of = np.searchsorted(ids, np.asarray(split_rows["sample_id"], dtype=np.int64))
    splits[rows_of] = split_rows["split"]
    uids[rows_of] = split_rows["uid"]
    return RunData(run_id, mode, protocol, prompt_set, model_id, dataset, train_s, extract_s, config, ids,
                   splits.astype(str), labels, embeddings, scores, targets, store.resolve(index_relpath(run_id)),
                   uids.astype(str))


def dataset_runs(store: Store, dataset: str) -> list[str]:
    """Ids of the complete runs of a dataset, oldest first."""
    with store.reader() as con:
        rows = queries.fetch(con, "complete_runs", dataset=dataset)
    if not rows:
        raise InputError(f"dataset {dataset!r}: no complete runs; create them with `embedstore extract`")
    return [r[0] for r in rows]
