"""`embedstore data stats`: the numbers behind the study's label-distribution figure."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from embedstore import queries
from embedstore.errors import InputError
from embedstore.store import Store, resolve_dataset


@dataclass(frozen=True)
class DatasetStats:
    dataset: pa.Table
    splits: pa.Table
    per_label: pa.Table
    labels_per_image: pa.Table
    checks: pa.Table


def dataset_stats(store: Store, name: str) -> DatasetStats:
    """Images, uids and patients per split; per-label positives per split, prevalence, imbalance ratio;
    labels per image; and ingest's checks (`datasets.checks`: identical images, derived No Finding,
    patients in several splits, pairs left out) as one row per count."""
    name = resolve_dataset(store, name)
    with store.reader() as con:
        dataset = queries.fetch_arrow(con, "dataset", dataset=name)
        if dataset.num_rows == 0:  # removed since it was resolved
            raise InputError(f"dataset {name!r}: no such dataset in {store.path}")
        splits = queries.fetch_arrow(con, "split_counts", dataset=name)
        per_label = queries.fetch_arrow(con, "label_stats", dataset=name)
        per_image = queries.fetch_arrow(con, "labels_per_image", dataset=name)
    checks = json.loads(dataset.column("checks")[0].as_py() or "{}")
    table = pa.table({"check": pa.array(list(checks), pa.string()), "count": pa.array(list(checks.values()), pa.int64())})
    return DatasetStats(dataset.drop_columns(["checks"]), splits, per_label, per_image, table)
