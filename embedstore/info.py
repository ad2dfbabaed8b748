"""`store info`: what a store holds: tables with row counts, runs, artefact sizes."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from embedstore import queries
from embedstore.store import Store


@dataclass(frozen=True)
class StoreInfo:
    path: str
    database_bytes: int
    table_rows: pa.Table
    runs: pa.Table
    artefacts: pa.Table


def store_info(store: Store) -> StoreInfo:
    """Collect the figures `embedstore store info` shows, in one read-only connection."""
    with store.reader() as con:
        counts = queries.fetch_arrow(con, "table_counts")
        runs = queries.fetch_arrow(con, "runs")
        artefacts = queries.fetch_arrow(con, "artefact_sizes")
    return StoreInfo(str(store.path), store.db_path.stat().st_size, counts, runs, artefacts)
