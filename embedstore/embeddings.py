"""Bulk moves of embedding matrices between numpy and the store's `FLOAT[]` columns, via Arrow.

Rows a writer cannot commit yet (a reader holds the database) are staged as Parquet files under
`<store>/staging/<run_id>/` and committed later; committing a staged file twice adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import duckdb
import numpy as np
import pyarrow as pa

from embedstore import queries
from embedstore.store import STAGING_FOLDER, append_rows


def _list_column(vectors: np.ndarray) -> pa.ListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    offsets = cast(pa.Int32Array, pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)))
    return pa.ListArray.from_arrays(offsets, pa.array(vectors.reshape(-1)), type=pa.list_(pa.float32()))


def _embedding_batch(run_id: str, sample_ids: np.ndarray, vectors: np.ndarray) -> pa.Table:
    if vectors.ndim != 2 or len(sample_ids) != len(vectors):
        raise ValueError(f"need one sample id per vector: {len(sample_ids)} ids, vectors {vectors.shape}")
    return pa.table(
        {
            "run_id": pa.array([run_id] * len(sample_ids), pa.string()),
            "sample_id": pa.array(np.asarray(sample_ids, dtype=np.int64)),
            "embedding": _list_column(vectors),
        }
    )


def report_embedding_rows(run_id: str, sample_ids: np.ndarray, vectors: np.ndarray, truncated: np.ndarray) -> pa.Table:
    """`report_embeddings` rows (run_id, sample_id, embedding, truncated): one per report encoded."""
    table = _embedding_batch(run_id, sample_ids, vectors)
    if len(truncated) != len(sample_ids):
        raise ValueError(f"need one truncation flag per report: {len(truncated)} flags, {len(sample_ids)} reports")
    return table.append_column("truncated", pa.array(np.asarray(truncated, dtype=bool)))


def split_report_batches(con: duckdb.DuckDBPyConnection, run_id: str, split: str,
                         rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(sample_ids, float32 matrix) batches of one run's report embeddings in one split, streamed in no
    particular order (none for a run that stored no report embeddings)."""
    for batch in queries.fetch_batches(con, "split_report_embeddings", rows, run_id=run_id, split=split):
        yield batch.column(0).to_numpy().astype(np.int64), vector_matrix(batch.column(1))


def insert_image_embeddings(
    con: duckdb.DuckDBPyConnection, run_id: str, sample_ids: np.ndarray, vectors: np.ndarray
) -> int:
    """Append one row per sample to `image_embeddings` inside the caller's transaction."""
    return append_rows(con, "image_embeddings", _embedding_batch(run_id, sample_ids, vectors))


def staging_folder(store_path: Path, run_id: str) -> Path:
    """Where a run's not-yet-committed embedding chunks wait."""
    return store_path / STAGING_FOLDER / run_id


def stage_image_embeddings(folder: Path, run_id: str, sample_ids: np.ndarray, vectors: np.ndarray) -> Path:
    """Write one chunk as a Parquet file (atomically) to be committed later."""
    import pyarrow.parquet as pq

    from embedstore.atomic import atomic_path
    from embedstore.store import environment_error

    target = folder / f"chunk-{int(sample_ids[0]):020d}-{len(sample_ids)}.parquet"
    try:
        with atomic_path(target) as tmp:
            pq.write_table(_embedding_batch(run_id, sample_ids, vectors), tmp)
    except OSError as error:
        raise environment_error(error, "stage embeddings in", target) from error
    return target


def staged_files(folder: Path) -> list[Path]:
    """A run's staged chunks, in order (temporary files of an interrupted write are not chunks)."""
    return sorted(folder.glob("chunk-*.parquet")) if folder.is_dir() else []


def commit_staged(con: duckdb.DuckDBPyConnection, run_id: str, files: list[Path]) -> int:
    """Append a run's staged chunks inside the caller's transaction, skipping rows the run already
    has (a chunk committed just before a kill is not added twice). Returns the rows read."""
    import pyarrow.parquet as pq

    rows = 0
    for path in files:
        table = pq.read_table(path)
        insert_new_image_embeddings(con, run_id, table)
        rows += table.num_rows
    return rows


def insert_new_image_embeddings(con: duckdb.DuckDBPyConnection, run_id: str, table: pa.Table) -> None:
    """Append the rows of `table` (run_id, sample_id, embedding) that the run does not hold yet, inside
    the caller's transaction: a row can never be added twice, whoever staged or encoded it."""
    con.register("_staged", table)
    try:
        queries.execute(con, "insert_staged_embeddings", run_id=run_id)
    finally:
        con.unregister("_staged")


def new_embedding_rows(run_id: str, sample_ids: np.ndarray, vectors: np.ndarray) -> pa.Table:
    """Freshly encoded rows in the staged chunks' layout, for `insert_new_image_embeddings`."""
    return _embedding_batch(run_id, sample_ids, vectors)


def remove_staging(store_path: Path, run_id: str) -> None:
    """Drop a run's staging folder (its rows are committed or no longer wanted)."""
    import shutil

    shutil.rmtree(staging_folder(store_path, run_id), ignore_errors=True)


def remove_staged(files: list[Path]) -> None:
    """Delete committed chunks, and their folder once it is empty."""
    for path in files:
        path.unlink(missing_ok=True)
    for folder in {path.parent for path in files}:
        try:
            folder.rmdir()
        except OSError:
            pass


def vector_matrix(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A `FLOAT[]` column of equal-length vectors as a float32 (n, d) matrix."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    rows = len(column)
    if rows == 0:
        return np.zeros((0, 0), dtype=np.float32)
    flat = cast(pa.ListArray, column).flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(rows, -1)


def split_embedding_batches(con: duckdb.DuckDBPyConnection, run_id: str, split: str,
                            rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(sample_ids, float32 matrix) batches of one run's embeddings in one split, streamed in no
    particular order: a large run is never read whole."""
    for batch in queries.fetch_batches(con, "split_embeddings", rows, run_id=run_id, split=split):
        yield batch.column(0).to_numpy().astype(np.int64), vector_matrix(batch.column(1))


def read_image_embeddings(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(sample_ids, matrix) of one run, ordered by sample id; matrix is float32 (n, d)."""
    table = queries.fetch_arrow(con, "run_embeddings", run_id=run_id)
    ids = table.column("sample_id").to_numpy().astype(np.int64)
    return ids, vector_matrix(table.column("embedding"))
