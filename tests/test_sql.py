"""`embedstore sql`: read-only, no file access, locked settings; named queries; output formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from embedstore import queries
from embedstore.cli.output import render
from embedstore.errors import InputError, SqlError, SqlRefusedError
from embedstore.sqlrun import run_query
from embedstore.store import Store
from tests.conftest import add_embedding_run

REFUSED = [
    "INSERT INTO meta VALUES ('k', 'v')",
    "UPDATE meta SET value = 'x'",
    "DELETE FROM runs",
    "CREATE TABLE t (a INT)",
    "CREATE TEMP TABLE t (a INT)",
    "DROP TABLE runs",
    "COPY (SELECT 1) TO '{tmp}/out.csv'",
    "COPY runs FROM '{tmp}/in.csv'",
    "SELECT * FROM read_csv('{tmp}/in.csv')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_parquet('{tmp}/x.parquet')",
    "ATTACH '{tmp}/other.duckdb' AS other",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "PRAGMA enable_profiling",
]


@pytest.mark.parametrize("statement", REFUSED)
def test_writes_file_access_and_settings_are_refused(tmp_store: Store, tmp_path: Path, statement: str) -> None:
    (tmp_path / "in.csv").write_text("a\n1\n")
    with pytest.raises(SqlRefusedError, match="^refused: "):
        run_query(tmp_store, statement.format(tmp=tmp_path))
    assert not (tmp_path / "out.csv").exists()
    with tmp_store.reader() as con:
        assert con.execute("SELECT count(*) FROM meta").fetchone() == (3,)


def test_refused_statement_from_the_shell_is_one_line_and_non_zero(tmp_store: Store, run_cli) -> None:
    result = run_cli("sql", "DELETE FROM runs", "--store", str(tmp_store.path))
    assert result.returncode == 4
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("embedstore: error: refused: DELETE")


def test_select_describe_and_explain_work(tmp_store: Store) -> None:
    assert run_query(tmp_store, "SELECT count(*) AS n FROM label_names").to_pylist() == [{"n": 14}]
    assert run_query(tmp_store, "DESCRIBE runs").num_rows > 10
    assert run_query(tmp_store, "EXPLAIN SELECT * FROM runs").num_rows >= 1


def test_one_statement_at_a_time_and_clean_syntax_errors(tmp_store: Store) -> None:
    with pytest.raises(InputError, match="exactly one SQL statement"):
        run_query(tmp_store, "SELECT 1; SELECT 2")
    with pytest.raises(SqlError, match="syntax error"):
        run_query(tmp_store, "SELEC 1")
    with pytest.raises(SqlError, match="nope"):
        run_query(tmp_store, "SELECT * FROM nope")


def test_output_formats_round_trip_embeddings(tmp_store: Store, tmp_path: Path, run_cli) -> None:
    add_embedding_run(tmp_store, n=3, d=2, seed=1)
    query = "SELECT sample_id, embedding FROM image_embeddings ORDER BY sample_id"
    result = run_query(tmp_store, query)
    records = json.loads(render(result, "json"))
    assert [r["sample_id"] for r in records] == [100, 101, 102]
    assert len(records[0]["embedding"]) == 2
    csv = render(result, "csv").decode().splitlines()
    assert csv[0] == "sample_id,embedding"
    assert csv[1].startswith('100,"[') and csv[1].count(",") == 2
    out = tmp_path / "res.parquet"
    shell = run_cli("sql", query, "--format", "parquet", "--out", str(out), "--store", str(tmp_store.path))
    assert shell.returncode == 0, shell.stderr
    np.testing.assert_allclose(
        np.array(pl.read_parquet(out)["embedding"].to_list()), np.array([r["embedding"] for r in records]), rtol=1e-6
    )
    assert run_cli("sql", query, "--format", "parquet", "--store", str(tmp_store.path)).returncode == 2


def test_named_queries_bind_typed_parameters(tmp_store: Store, run_cli) -> None:
    add_embedding_run(tmp_store, run_id="r1", n=4)
    named = queries.load("run_embeddings")
    assert named.params[0].name == "run_id"
    assert run_query(tmp_store, named.text, named.bind({"run_id": "r1"})).num_rows == 4
    assert run_query(tmp_store, named.text, named.bind({"run_id": "r1' OR 1=1 --"})).num_rows == 0
    with pytest.raises(InputError, match="needs the parameter run_id"):
        named.bind({})
    with pytest.raises(InputError, match="^params other"):
        named.bind({"run_id": "r1", "other": "x"})
    shell = run_cli("sql", "--name", "run_embeddings", "--param", "run_id=r1", "--format", "csv",
                    "--store", str(tmp_store.path))
    assert shell.returncode == 0 and len(shell.stdout.splitlines()) == 5
    listing = run_cli("sql", "--list")
    assert "run_embeddings" in listing.stdout and "schema" not in listing.stdout
    assert "--param run_id=<VARCHAR>" in listing.stdout


def test_sql_from_file(tmp_store: Store, tmp_path: Path, run_cli) -> None:
    (tmp_path / "q.sql").write_text("SELECT label FROM label_names WHERE position = 1")
    shell = run_cli("sql", "-f", str(tmp_path / "q.sql"), "--format", "csv", "--store", str(tmp_store.path))
    assert shell.stdout.splitlines() == ["label", "Cardiomegaly"]
    missing = run_cli("sql", "-f", str(tmp_path / "none.sql"), "--store", str(tmp_store.path))
    assert missing.returncode == 2 and "none.sql" in missing.stderr


def test_every_shipped_query_parses_and_declares_its_parameters(tmp_store: Store) -> None:
    for named in queries.all_queries().values():
        assert named.description, f"{named.name}.sql has no description line"
        for param in named.params:
            assert f"${param.name}" in named.text


def test_sql_path_imports_no_torch_or_faiss(tmp_store: Store) -> None:
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from embedstore.cli.app import app\n"
        f"app(['sql', 'SELECT 1', '--store', {str(tmp_store.path)!r}], standalone_mode=False)\n"
        "heavy = sorted(m for m in ('torch', 'faiss', 'open_clip', 'sklearn') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "heavy: []" in proc.stdout
