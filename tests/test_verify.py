"""`store verify`: manifest sha256s, FAISS indices against their tables, unrecorded files."""

from __future__ import annotations

import duckdb
import numpy as np

from embedstore.atomic import sha256_file
from embedstore.integrity import verify_store
from embedstore.store import Store
from embedstore.vector_index import index_ids, index_relpath, read_index, write_index
from tests.conftest import add_embedding_run


def _problems(store: Store) -> list[str]:
    return [str(p) for p in verify_store(store).problems]


def test_consistent_store_verifies(tmp_store: Store) -> None:
    ids = add_embedding_run(tmp_store)
    report = verify_store(tmp_store)
    assert report.ok, report.problems
    assert report.checked_indices == 1
    index = read_index(tmp_store.resolve(index_relpath("run-a")))
    np.testing.assert_array_equal(np.sort(index_ids(index)), ids)


def test_tampered_faiss_file_is_caught(tmp_store: Store) -> None:
    add_embedding_run(tmp_store)
    path = tmp_store.resolve(index_relpath("run-a"))
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert any("sha256 differs" in p for p in _problems(tmp_store))


def test_truncated_faiss_file_is_caught(tmp_store: Store) -> None:
    add_embedding_run(tmp_store)
    path = tmp_store.resolve(index_relpath("run-a"))
    path.write_bytes(path.read_bytes()[:100])
    problems = _problems(tmp_store)
    assert any("bytes, manifest says" in p for p in problems)
    assert not any("FAISS" in p for p in problems)                 # a changed file is never parsed
    with tmp_store.writer("test") as writer, writer.transaction() as con:   # manifest made to agree
        con.execute("UPDATE manifest SET sha256 = ?, bytes = 100 WHERE path = ?",
                    [sha256_file(path), index_relpath("run-a")])
    assert any("not a readable FAISS index" in p for p in _problems(tmp_store))


def test_missing_table_row_is_caught(tmp_store: Store) -> None:
    ids = add_embedding_run(tmp_store)
    con = duckdb.connect(str(tmp_store.db_path))
    con.execute("DELETE FROM image_embeddings WHERE sample_id = ?", [int(ids[3])])
    con.close()
    problems = _problems(tmp_store)
    assert any("20 vectors but image_embeddings has 19 rows" in p for p in problems)
    assert any(f"sample ids not in image_embeddings (e.g. {ids[3]})" in p for p in problems)


def test_index_missing_a_row_is_caught_even_with_a_matching_sha(tmp_store: Store) -> None:
    ids = add_embedding_run(tmp_store)
    with tmp_store.writer("test") as writer:
        write_index(writer, "run-a", ids[1:], np.ones((len(ids) - 1, 8), dtype=np.float32))
    problems = _problems(tmp_store)
    assert any(f"rows missing from the index (e.g. sample {ids[0]})" in p for p in problems)


def test_deleted_and_unrecorded_files_are_caught(tmp_store: Store) -> None:
    add_embedding_run(tmp_store)
    tmp_store.resolve(index_relpath("run-a")).unlink()
    (tmp_store.path / "stray.bin").write_bytes(b"x")
    problems = _problems(tmp_store)
    assert f"{index_relpath('run-a')}: missing" in problems
    assert "stray.bin: file not recorded in the manifest" in problems


def test_verify_names_a_run_with_two_report_embeddings_of_one_sample(tmp_store: Store) -> None:
    """Retrieval would count such a sample twice: `store verify` names the run."""
    with tmp_store.writer("test") as writer, writer.transaction() as con:
        for _ in range(2):
            con.execute("INSERT INTO report_embeddings VALUES ('zs-x', 7, [0.5, 0.5]::FLOAT[], false)")
    report = verify_store(tmp_store)
    assert [(p.where, p.what) for p in report.problems] == [("report_embeddings (zs-x)", "1 duplicate sample ids")]
