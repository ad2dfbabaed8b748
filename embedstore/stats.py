"""`embedstore data stats`: the numbers behind the study's label-distribution figure."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from embedstore import queries
from embedstore.errors import InputError
from embedstore.store import Store


@dataclass(frozen=True)
class DatasetStats:
    dataset: pa.Table
    per_label: pa.Table
    labels_per_image: pa.Table
    checks: pa.Table


def dataset_stats(store: Store, name: str) -> DatasetStats:
    """Per-label positives per split, prevalence, imbalance ratio, labels per image, and ingest's
    checks (`datasets.checks`: identical images, derived No Finding) as one row per count."""
    params = {"dataset": name}
    with store.reader() as con:
        dataset = con.sql(queries.load("dataset").text, params=params).to_arrow_table()
        if dataset.num_rows == 0:
            names = [row[0] for row in con.execute("SELECT name FROM datasets ORDER BY name").fetchall()]
            raise InputError(f"no dataset named {name!r} in {store.path} (have: {', '.join(names) or 'none'})")
        per_label = con.sql(queries.load("label_stats").text, params=params).to_arrow_table()
        per_image = con.sql(queries.load("labels_per_image").text, params=params).to_arrow_table()
    checks = json.loads(dataset.column("checks")[0].as_py() or "{}")
    table = pa.table({"check": pa.array(list(checks), pa.string()), "count": pa.array(list(checks.values()), pa.int64())})
    return DatasetStats(dataset.drop_columns(["checks"]), per_label, per_image, table)
