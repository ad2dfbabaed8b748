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
        counts = con.sql(queries.load("table_counts").text).to_arrow_table()
        runs = con.sql(queries.load("runs").text).to_arrow_table()
        artefacts = con.sql(queries.load("artefact_sizes").text).to_arrow_table()
    return StoreInfo(str(store.path), store.db_path.stat().st_size, counts, runs, artefacts)
