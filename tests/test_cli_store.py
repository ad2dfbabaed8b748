"""`embedstore store init|info|verify` from the shell: output, exit codes, one-line errors."""

from __future__ import annotations

from pathlib import Path

import duckdb

from embedstore.store import Store
from embedstore.vector_index import index_relpath
from tests.conftest import add_embedding_run


def test_init_info_verify_from_the_shell(tmp_path: Path, run_cli) -> None:
    store = tmp_path / "s"
    first = run_cli("store", "init", "--store", str(store))
    assert first.returncode == 0 and first.stdout.startswith("created")
    second = run_cli("store", "init", env={"EMBEDSTORE_STORE": str(store)})
    assert second.returncode == 0 and second.stdout.startswith("already a store")
    add_embedding_run(Store.open(store))
    info = run_cli("store", "info", "--store", str(store))
    assert info.returncode == 0
    assert "image_embeddings" in info.stdout and "┆ 20 " in info.stdout.split("image_embeddings")[1].splitlines()[0]
    assert "run-a" in info.stdout and "faiss" in info.stdout
    ok = run_cli("store", "verify", "--store", str(store))
    assert ok.returncode == 0 and "1 FAISS indices match" in ok.stdout


def test_verify_exits_non_zero_naming_each_mismatch(tmp_store: Store, run_cli) -> None:
    add_embedding_run(tmp_store)
    path = tmp_store.resolve(index_relpath("run-a"))
    path.write_bytes(path.read_bytes()[:64])
    result = run_cli("store", "verify", "--store", str(tmp_store.path))
    assert result.returncode == 5
    assert f"MISMATCH {index_relpath('run-a')}" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("embedstore: error: ")


def test_unknown_schema_version_from_the_shell(tmp_store: Store, run_cli) -> None:
    con = duckdb.connect(str(tmp_store.db_path))
    con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    con.close()
    result = run_cli("store", "info", "--store", str(tmp_store.path))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "schema version 999" in result.stderr


def test_missing_store_is_a_clean_error(tmp_path: Path, run_cli) -> None:
    result = run_cli("sql", "SELECT 1", "--store", str(tmp_path / "none"))
    assert result.returncode == 1
    assert result.stderr.startswith("embedstore: error: no store at") and "Traceback" not in result.stderr
