"""The store: creation, idempotence, schema versions, default path, atomic artefacts, manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest

from embedstore import SCHEMA_VERSION
from embedstore.embeddings import read_image_embeddings
from embedstore.errors import SchemaVersionError, StoreEnvironmentError, StoreNotFoundError
from embedstore.paths import default_store_path, resolve_store_path
from embedstore.store import Store
from tests.conftest import add_embedding_run

SCHEMA_TABLES = {
    "meta", "datasets", "samples", "labels", "label_names", "runs", "image_embeddings",
    "text_embeddings", "report_embeddings", "scores", "metrics", "gradcam", "manifest",
}


def test_init_creates_every_table_of_the_schema(tmp_store: Store) -> None:
    with tmp_store.reader() as con:
        tables = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        version = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        labels = con.execute("SELECT label, domain FROM label_names ORDER BY position").fetchall()
    assert SCHEMA_TABLES <= tables
    assert version == (str(SCHEMA_VERSION),)
    assert labels[0] == ("Enlarged Cardiomediastinum", "Cardiovascular")
    assert labels[-1] == ("No Finding", "Normal")
    assert len(labels) == 14


def test_init_is_idempotent_and_keeps_data(tmp_store: Store) -> None:
    add_embedding_run(tmp_store)
    again, created = Store.init(tmp_store.path)
    assert not created
    with again.reader() as con:
        assert con.execute("SELECT count(*) FROM image_embeddings").fetchone() == (20,)
        assert con.execute("SELECT count(*) FROM label_names").fetchone() == (14,)


def test_unknown_schema_version_is_refused(tmp_store: Store) -> None:
    con = duckdb.connect(str(tmp_store.db_path))
    con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(SchemaVersionError, match="schema version 999"):
        Store.open(tmp_store.path)
    with pytest.raises(SchemaVersionError, match="never migrates"):
        Store.init(tmp_store.path)


def test_database_without_meta_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    duckdb.connect(str(tmp_path / "s" / "store.duckdb")).close()
    with pytest.raises(SchemaVersionError, match="not an embedstore store"):
        Store.open(tmp_path / "s")


def test_missing_store_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="embedstore store init"):
        Store.open(tmp_path / "nowhere")


def test_store_path_comes_from_option_then_env_then_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EMBEDSTORE_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_store_path() == tmp_path / "xdg" / "embedstore" / "store"
    monkeypatch.setenv("EMBEDSTORE_STORE", str(tmp_path / "env"))
    assert resolve_store_path(None) == tmp_path / "env"
    assert resolve_store_path(tmp_path / "opt") == tmp_path / "opt"


def test_embeddings_round_trip_through_the_store(tmp_store: Store) -> None:
    ids = add_embedding_run(tmp_store, n=7, d=5, seed=3)
    with tmp_store.reader() as con:
        got_ids, matrix = read_image_embeddings(con, "run-a")
    expected = np.random.default_rng(3).normal(size=(7, 5)).astype(np.float32)
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(matrix, expected)


def test_failed_artefact_write_leaves_old_file_and_manifest(tmp_store: Store) -> None:
    with tmp_store.writer("test") as writer:
        digest = writer.write_artefact("artefacts/a.bin", "blob", lambda handle: handle.write(b"old"))

        def fail(handle: Any) -> None:
            handle.write(b"half")
            raise OSError("disk full")

        with pytest.raises(StoreEnvironmentError, match="cannot write .*a.bin: disk full"):
            writer.write_artefact("artefacts/a.bin", "blob", fail)
    assert (tmp_store.path / "artefacts" / "a.bin").read_bytes() == b"old"
    assert not list((tmp_store.path / "artefacts").glob("*.tmp"))
    with tmp_store.reader() as con:
        assert con.execute("SELECT sha256 FROM manifest").fetchall() == [(digest,)]


def test_failed_transaction_rolls_back(tmp_store: Store) -> None:
    with tmp_store.writer("test") as writer:
        with pytest.raises(RuntimeError), writer.transaction() as con:
            con.execute(
                "INSERT INTO runs (run_id, mode, protocol, model_id, dataset_id, status)"
                " VALUES ('r', 'zs', 'study', 'm', 'd', 'running')"
            )
            raise RuntimeError("killed mid-transaction")
    with tmp_store.reader() as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)
