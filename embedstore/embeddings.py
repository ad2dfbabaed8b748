"""Bulk moves of embedding matrices between numpy and the store's `FLOAT[]` columns, via Arrow."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from embedstore import queries
from embedstore.store import append_rows


def _list_column(vectors: np.ndarray) -> pa.ListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)))


def insert_image_embeddings(
    con: duckdb.DuckDBPyConnection, run_id: str, sample_ids: np.ndarray, vectors: np.ndarray
) -> int:
    """Append one row per sample to `image_embeddings` inside the caller's transaction."""
    if vectors.ndim != 2 or len(sample_ids) != len(vectors):
        raise ValueError(f"need one sample id per vector: {len(sample_ids)} ids, vectors {vectors.shape}")
    batch = pa.table(
        {
            "run_id": pa.array([run_id] * len(sample_ids), pa.string()),
            "sample_id": pa.array(np.asarray(sample_ids, dtype=np.int64)),
            "embedding": _list_column(vectors),
        }
    )
    return append_rows(con, "image_embeddings", batch)


def read_image_embeddings(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids, matrix) of one run, ordered by sample id; matrix is float32 (n, d)."""
    table = con.sql(queries.load("run_embeddings").text, params={"run_id": run_id}).to_arrow_table()
    ids = table.column("sample_id").to_numpy().astype(np.int64)
    if len(ids) == 0:
        return ids, np.zeros((0, 0), dtype=np.float32)
    column = table.column("embedding").combine_chunks()
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return ids, flat.reshape(len(ids), -1)
