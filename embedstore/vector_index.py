"""FAISS indices over a run's embeddings: ids are `sample_id`s (IndexIDMap2), writes are atomic.

Vectors are L2-normalised before indexing, so inner product is cosine similarity.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np

from embedstore.errors import IntegrityError
from embedstore.store import StoreWriter

#: Which table each kind of index mirrors; `store verify` compares them row for row.
INDEXED_TABLES = {"image_embeddings": "index_ids"}


def index_relpath(run_id: str, table_name: str = "image_embeddings") -> str:
    return f"indices/{run_id}.{table_name}.faiss"


def build_index(ids: np.ndarray, vectors: np.ndarray) -> faiss.Index:
    """An exact cosine index (flat inner product over unit vectors) keyed by `ids`."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise ValueError(f"need one id per vector, got {len(ids)} ids for array of shape {vectors.shape}")
    unit = vectors.copy()
    faiss.normalize_L2(unit)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(unit.shape[1]))
    index.add_with_ids(unit, ids)
    return index


def _write(index: faiss.Index, handle: BinaryIO) -> None:
    """Through the store's Python file: FAISS's own file writer ignores a failed write (a full disk
    would leave a short file recorded as good)."""
    faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))  # type: ignore[attr-defined]


def write_index(writer: StoreWriter, run_id: str, ids: np.ndarray, vectors: np.ndarray,
                table_name: str = "image_embeddings") -> str:
    """Build, write atomically and record in the manifest. Returns the file's sha256."""
    index = build_index(ids, vectors)
    return writer.write_artefact(
        index_relpath(run_id, table_name),
        "faiss",
        lambda handle: _write(index, handle),
        run_id=run_id,
        table_name=table_name,
        n_rows=int(index.ntotal),
    )


def read_index(path: Path) -> faiss.Index:
    """Read a store's index file (`<store>/indices/<file>`) once its bytes match that store's manifest
    (`integrity.read_artefact`: FAISS never parses a changed file), turning FAISS's errors into one line."""
    from embedstore.integrity import read_artefact
    from embedstore.store import Store

    if path.parent.name != "indices":
        raise IntegrityError(f"{path}: not an index file of a store (indices/<file>); run `embedstore store verify`")
    data = read_artefact(Store(path.parent.parent), f"indices/{path.name}")
    try:
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise IntegrityError(f"{path}: not a readable FAISS index ({reason[:120]})") from None


def index_ids(index: faiss.Index) -> np.ndarray:
    """The sample ids stored in an IndexIDMap2, in insertion order."""
    if not isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        index = faiss.downcast_index(index)
    return faiss.vector_to_array(index.id_map).astype(np.int64)  # type: ignore[attr-defined]
