"""Hostile input for `embedstore sql` and for every `--out`: SQL that reads the store's own file
(or any file) under any spelling, EXPLAIN ANALYZE of a write, output paths that would replace the
store's database, indices or artefacts (directly, through `..` or a symlink), and queries without
end (time and memory limits, Ctrl-C)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedstore import queries
from embedstore.errors import InputError, SqlError, SqlRefusedError
from embedstore.integrity import verify_store
from embedstore.sqlrun import run_query
from embedstore.store import Store
from tests.conftest import add_embedding_run

#: Every DuckDB table function that opens a file (core, json and parquet; the installed 2.0 list).
FILE_FUNCTIONS = [
    "read_blob", "read_text", "read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "parquet_metadata",
    "parquet_schema", "parquet_file_metadata", "parquet_kv_metadata", "parquet_full_metadata", "read_json",
    "read_json_auto", "read_ndjson", "read_ndjson_auto", "read_json_objects", "read_ndjson_objects", "sniff_csv",
    "glob", "read_duckdb",
]
#: Table functions that run SQL text the check cannot see, or that change state.
OTHER_REFUSED_FUNCTIONS = ["query", "query_table", "checkpoint", "force_checkpoint", "enable_logging",
                           "json_execute_serialized_sql", "histogram"]
HUGE_CROSS_JOIN = "SELECT count(*) FROM range(1000000000000) a, range(1000) b WHERE a.range + b.range < 0"


@pytest.fixture
def store(tmp_store: Store) -> Store:
    """A store with a FAISS index and an artefact, both in the manifest."""
    add_embedding_run(tmp_store, n=5, d=4)
    with tmp_store.writer("test") as writer:
        writer.write_artefact("artefacts/run-a/head.npz", "head", lambda handle: handle.write(b"head"), run_id="run-a")
    return tmp_store


def db_spellings(store: Store, tmp_path: Path) -> dict[str, str]:
    """The store's database file, spelt every way a path can reach it."""
    file_link = tmp_path / "db-link"
    file_link.symlink_to(store.db_path)
    folder_link = tmp_path / "store-link"
    folder_link.symlink_to(store.path)
    return {
        "absolute": str(store.db_path),
        "dotdot": str(store.path / "indices" / ".." / "store.duckdb"),
        "file symlink": str(file_link),
        "folder symlink": str(folder_link / "store.duckdb"),
        "glob": str(store.path / "*.duckdb"),
        "wal": f"{store.db_path}.wal",
        "elsewhere": str(tmp_path / "plain.txt"),
    }


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the real `embedstore` entry point in this process; returns (exit code, stderr)."""
    from embedstore.cli.app import main

    monkeypatch.setattr(sys, "argv", ["embedstore", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Item 5: SQL never reads a file, the store's own database included
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("function", FILE_FUNCTIONS)
def test_every_file_reading_function_is_refused_whatever_the_path(store: Store, tmp_path: Path,
                                                                   function: str) -> None:
    (tmp_path / "plain.txt").write_text("a\n1\n")
    for how, path in db_spellings(store, tmp_path).items():
        with pytest.raises(SqlRefusedError, match=f"^refused: .*{function}"):
            run_query(store, f"SELECT * FROM {function}('{path}')")
        assert how


def test_read_blob_of_the_store_returns_nothing_from_the_shell(store: Store, tmp_path: Path, run_cli) -> None:
    result = run_cli("sql", f"SELECT octet_length(content) AS n FROM read_blob('{store.db_path}')",
                     "--format", "csv", "--store", str(store.path))
    assert result.returncode == 4, result.stdout
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("embedstore: error: refused: ")


@pytest.mark.parametrize("template", [
    "SELECT * FROM '{db}'", 'SELECT * FROM "{db}"', "FROM '{db}'", "DESCRIBE '{db}'", "SUMMARIZE '{db}'",
    "SELECT * FROM '{db}' AS t", "SELECT * FROM '{folder}/indices/run-a.image_embeddings.faiss'",
    "SELECT * FROM 'data.csv'",
])
def test_a_file_name_as_table_is_refused(store: Store, template: str) -> None:
    with pytest.raises(SqlRefusedError, match="^refused: "):
        run_query(store, template.format(db=store.db_path, folder=store.path))


@pytest.mark.parametrize("function", OTHER_REFUSED_FUNCTIONS)
def test_table_functions_outside_the_allow_list_are_refused(store: Store, function: str) -> None:
    with pytest.raises(SqlRefusedError, match=f"^refused: .*{function}"):
        run_query(store, f"SELECT * FROM {function}('SELECT 1')")


def test_the_sql_connection_itself_cannot_open_files(store: Store, tmp_path: Path) -> None:
    """The second lock behind the statement check: the reader `embedstore sql` gets has the local
    file system switched off, so even SQL the check let through could not read the database file."""
    for path in db_spellings(store, tmp_path).values():
        with store.reader(settings={}) as con, pytest.raises(duckdb.PermissionException, match="disabled"):
            con.sql(f"SELECT * FROM read_blob('{path}')").fetchall()
    with store.reader(settings={}) as con:
        assert con.execute("SELECT count(*) FROM label_names").fetchone() == (14,)
        assert con.execute("SELECT count(*) FROM image_embeddings").fetchone() == (5,)


@pytest.mark.parametrize("statement", [
    "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
    "EXPLAIN (ANALYZE) CREATE TEMP TABLE t AS SELECT 1",
    "explain /* c */ analyze\ncreate temp table t as select 1",
    "EXPLAIN ANALYZE INSERT INTO meta VALUES ('k', 'v')",
    "EXPLAIN CREATE TABLE t (a INT)",
    "EXPLAIN ANALYZE DELETE FROM runs",
    "EXPLAIN ANALYZE SET threads = 1",
    "EXPLAIN ANALYZE SELECT * FROM read_blob('{db}')",
    "EXPLAIN (FORMAT json) SELECT * FROM read_text('{db}')",
    "EXPLAIN ANALYZE FROM '{db}'",
])
def test_explain_only_of_an_allowed_statement(store: Store, statement: str) -> None:
    with pytest.raises(SqlRefusedError, match="^refused: "):
        run_query(store, statement.format(db=store.db_path))


@pytest.mark.parametrize("statement", [
    "SELECT * FROM range(3)", "SELECT * FROM generate_series(1, 3)", "SELECT * FROM unnest([1, 2])",
    "SELECT * FROM json_each('{\"a\": 1}')", "SELECT count(*) FROM duckdb_tables()",
    "SELECT * FROM information_schema.tables", "SELECT * FROM pragma_table_info('runs')", "DESCRIBE runs",
    "SUMMARIZE label_names", "SHOW TABLES", "VALUES (1), (2)", "FROM label_names SELECT label",
    "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 3) SELECT * FROM r",
    "SELECT * FROM runs, LATERAL (SELECT * FROM range(2)) t", "EXPLAIN SELECT * FROM runs",
    "EXPLAIN ANALYZE SELECT count(*) FROM samples", "EXPLAIN (FORMAT json) SELECT 1",
    "SELECT read_text FROM (SELECT 1 AS read_text)", "SELECT 'read_blob(''x'')' AS s",
])
def test_reading_the_store_still_works(store: Store, statement: str) -> None:
    assert run_query(store, statement).num_rows >= 1


def test_a_statement_too_deep_to_check_is_refused_in_one_line(store: Store) -> None:
    deep = "SELECT " + "(SELECT " * 400 + "1" + ")" * 400
    with pytest.raises(SqlRefusedError, match="^refused: .*nested too deeply"):
        run_query(store, deep)


def test_every_named_query_passes_the_check(store: Store) -> None:
    from embedstore.sqlrun import check_statement

    for named in queries.public_queries():
        check_statement(named.text)


FUNCTION_SPELLINGS = st.builds(
    lambda name, case, quoted, schema: (schema + (f'"{name}"' if quoted else name)).translate(case),
    st.sampled_from(FILE_FUNCTIONS + OTHER_REFUSED_FUNCTIONS),
    st.sampled_from([{}, str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                     str.maketrans("aeiou", "AEIOU")]),
    st.booleans(),
    st.sampled_from(["", "main.", "system.main.", '"main".', "pg_catalog.", "temp.main."]),
)
GAPS = st.sampled_from([" ", "  ", "\n", "\t", " /* x */ ", " -- c\n", "/**/"])
ARGUMENTS = st.sampled_from(["'{db}'", "'{dotdot}'", "'{link}'", "concat('{folder}', '/store.duckdb')",
                             "(SELECT '{db}')", "['{db}']", "'{folder}/*'", "lower('{db}')"])
CONTEXTS = st.sampled_from([
    "SELECT * FROM{g}{call}",
    "select*from{g}{call}",
    "FROM{g}{call}",
    "SELECT (SELECT count(*) FROM {call})",
    "SELECT * FROM (SELECT * FROM (SELECT * FROM{g}{call}) a) b",
    "WITH x AS (SELECT * FROM{g}{call}) SELECT * FROM x",
    "WITH x AS MATERIALIZED (SELECT 1) SELECT * FROM x, (FROM {call}) y",
    "SELECT * FROM runs r, LATERAL (SELECT * FROM{g}{call}) t",
    "SELECT * FROM range(1) r JOIN {call} ON true",
    "SELECT 1 WHERE EXISTS (SELECT 1 FROM{g}{call})",
    "SELECT 1 UNION ALL SELECT count(*) FROM{g}{call}",
    "SELECT count(*) FILTER (WHERE x IN (SELECT 1 FROM {call})) FROM range(2) t(x)",
    "EXPLAIN SELECT * FROM{g}{call}",
    "EXPLAIN{g}ANALYZE SELECT * FROM{g}{call}",
    "DESCRIBE SELECT * FROM {call}",
    "SUMMARIZE SELECT * FROM {call}",
    "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r, {call} WHERE x < 3) SELECT * FROM r",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(function=FUNCTION_SPELLINGS, gap=GAPS, argument=ARGUMENTS, context=CONTEXTS)
def test_hostile_spellings_are_all_refused(store: Store, tmp_path: Path, function: str, gap: str, argument: str,
                                           context: str) -> None:
    link = tmp_path / "db-link"
    if not link.is_symlink():
        link.symlink_to(store.db_path)
    values = {"db": store.db_path, "dotdot": store.path / "indices" / ".." / "store.duckdb", "link": link,
              "folder": store.path}
    call = f"{function}{gap}({argument.format(**values)})"
    statement = context.format(g=gap, call=call)
    with pytest.raises(SqlRefusedError, match="^refused: "):
        run_query(store, statement)


# ---------------------------------------------------------------------------------------------
# Item 6: no output path replaces or lands among the store's managed files
# ---------------------------------------------------------------------------------------------

def refused_targets(store: Store, tmp_path: Path) -> dict[str, Path]:
    file_link = tmp_path / "out-link.csv"
    file_link.symlink_to(store.db_path)
    folder_link = tmp_path / "store-link"
    folder_link.symlink_to(store.path)
    return {
        "database": store.db_path,
        "wal": Path(f"{store.db_path}.wal"),
        "writer lock": store.path / "writer.lock",
        "index in the manifest": store.path / "indices" / "run-a.image_embeddings.faiss",
        "new file in indices": store.path / "indices" / "result.csv",
        "artefact": store.path / "artefacts" / "run-a" / "head.npz",
        "new file in artefacts": store.path / "artefacts" / "x.csv",
        "staging": store.path / "staging" / "x.csv",
        "store folder": store.path,
        "new file at the top": store.path / "result.csv",
        "dotdot": store.path / "report" / ".." / "store.duckdb",
        "file symlink": file_link,
        "folder symlink": folder_link / "indices" / "run-a.image_embeddings.faiss",
        "folder symlink to the db": folder_link / "store.duckdb",
    }


def test_check_output_path_refuses_every_managed_spelling(store: Store, tmp_path: Path) -> None:
    from embedstore.outputs import check_output_path

    for how, target in refused_targets(store, tmp_path).items():
        with pytest.raises(InputError, match="cannot write .*embedstore manages"):
            check_output_path(store, target)
        assert how
    for allowed in (tmp_path / "out.csv", store.path / "report" / "report.html", store.path / "data" / "x" / "a.csv",
                    store.path / "mine" / "result.csv"):
        assert check_output_path(store, allowed) == allowed.resolve()


def test_check_output_path_for_folders(store: Store, tmp_path: Path) -> None:
    from embedstore.outputs import check_output_path

    for target in (store.path, store.path / "indices", store.path / "artefacts" / "run-a", store.path / "staging",
                   store.path / "indices" / ".." / "artefacts", store.path / "store.duckdb"):
        with pytest.raises(InputError, match="cannot write .*embedstore manages"):
            check_output_path(store, target, folder=True)
    for allowed in (store.path / "report" / "charts", store.path / "maps", tmp_path / "charts"):
        check_output_path(store, allowed, folder=True)


def test_a_manifest_path_outside_the_managed_folders_is_protected_too(store: Store, tmp_path: Path) -> None:
    from embedstore.outputs import check_output_path

    with store.writer("test") as writer:
        writer.write_artefact("report/kept.bin", "other", lambda handle: handle.write(b"x"))
    with pytest.raises(InputError, match="manifest"):
        check_output_path(store, store.path / "report" / "kept.bin")
    with pytest.raises(InputError, match="manifest"):
        check_output_path(store, store.path / "report", folder=True)


COMMANDS = {
    "sql": lambda out: ["sql", "SELECT 1 AS a", "--format", "csv", "--out", str(out)],
    "report": lambda out: ["report", "--out", str(out)],
    "chart": lambda out: ["chart", "labels", "--out", str(out)],
    "gradcam": lambda out: ["gradcam", "--run", "run-a", "--out", str(out)],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_command_writes_output_into_the_store(store: Store, tmp_path: Path, command: str,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = {p: digest(p) for p in store.path.rglob("*") if p.is_file() and p.name != "writer.lock"}
    folder_link = tmp_path / "store-link"
    folder_link.symlink_to(store.path)
    file_link = tmp_path / "db-link"
    file_link.symlink_to(store.db_path)
    folder = command in ("chart", "gradcam")
    targets = ([store.path, store.path / "indices", store.path / "artefacts" / "run-a", folder_link / "indices",
                store.path / "report" / ".." / "indices"] if folder else
               [store.db_path, store.path / "indices" / "run-a.image_embeddings.faiss",
                store.path / "artefacts" / "out.csv", file_link, store.path / "report" / ".." / "store.duckdb",
                folder_link / "store.duckdb"])
    for target in targets:
        code, err = cli(monkeypatch, capsys, *COMMANDS[command](target), "--store", str(store.path))
        assert code == 2, err
        assert err.count("\n") == 1 and "cannot write" in err and "embedstore manages" in err, err
        assert {p: digest(p) for p in before} == before
        assert verify_store(store).ok, verify_store(store).problems


def test_sql_out_into_the_database_from_the_shell_keeps_the_store(store: Store, run_cli) -> None:
    before = digest(store.db_path)
    result = run_cli("sql", "select 1", "--format", "csv", "--out", str(store.db_path), "--store", str(store.path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert digest(store.db_path) == before
    assert run_cli("store", "verify", "--store", str(store.path)).returncode == 0


def test_data_sample_out_into_a_store_folder_is_refused(store: Store) -> None:
    from embedstore.synthetic import SampleConfig

    for target in (store.path / "indices" / "data", store.path, store.path / "artefacts"):
        with pytest.raises(InputError, match="embedstore manages"):
            SampleConfig(out=target, n=10).validate()
    SampleConfig(out=store.path / "data" / "sample", n=10).validate()


# ---------------------------------------------------------------------------------------------
# Item 18: time and memory limits, Ctrl-C
# ---------------------------------------------------------------------------------------------

def test_timeout_stops_a_huge_cross_join(store: Store) -> None:
    outcome: list[BaseException] = []

    def query() -> None:
        try:
            run_query(store, HUGE_CROSS_JOIN, timeout=0.5)
        except BaseException as error:  # noqa: BLE001 — checked below, in the test's thread
            outcome.append(error)

    # The query would run for days: only the time limit stops it. The thread and its join's limit
    # only turn a broken limit into a failure instead of a stalled suite.
    worker = threading.Thread(target=query, daemon=True)
    worker.start()
    worker.join(600)
    if worker.is_alive():
        pytest.fail("the time limit did not stop the query")
    assert len(outcome) == 1 and isinstance(outcome[0], SqlError), outcome
    assert "time limit of 0.5 s" in str(outcome[0])


def test_timeout_from_the_shell_is_one_line(store: Store, run_cli) -> None:
    result = run_cli("sql", HUGE_CROSS_JOIN, "--timeout", "1", "--store", str(store.path), timeout=120)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "time limit of 1 s" in result.stderr, result.stderr


@pytest.mark.parametrize("statement", [
    "SELECT list(i) FROM range(100000000) t(i)",
    "SELECT string_agg(i::VARCHAR, ',') FROM range(100000000) t(i)",
    "SELECT count(DISTINCT 'x' || i) FROM range(20000000) t(i)",
    "SELECT * FROM range(20000000)",
])
def test_memory_limit_stops_a_query_that_materialises(store: Store, statement: str) -> None:
    entries = sorted(store.path.iterdir())
    with pytest.raises(SqlError, match="memory limit of 50MB"):
        run_query(store, statement, memory_limit="50MB")
    assert sorted(store.path.iterdir()) == entries  # nothing spilled into the store (no store.duckdb.tmp/)


def test_memory_limit_from_the_shell(store: Store, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli(monkeypatch, capsys, "sql", "SELECT list(i) FROM range(100000000) t(i)", "--memory-limit",
                    "50MB", "--store", str(store.path))
    assert code == 1 and err.count("\n") == 1 and "memory limit of 50MB" in err, err
    code, err = cli(monkeypatch, capsys, "sql", "SELECT 1", "--memory-limit", "lots", "--store", str(store.path))
    assert code == 2 and "lots" in err, err
    code, err = cli(monkeypatch, capsys, "sql", "SELECT 1", "--timeout", "-1", "--store", str(store.path))
    assert code == 2 and "-1" in err, err


@pytest.mark.parametrize(("text", "expected"), [
    ("50MB", 50_000_000), ("2GB", 2_000_000_000), ("2 GiB", 2 * 1024**3), ("512mib", 512 * 1024**2),
    ("1.5GB", 1_500_000_000), ("1048576B", 2**20), ("1024 KiB", 2**20), ("1TB", 10**12),
])
def test_memory_limit_sizes(text: str, expected: int) -> None:
    from embedstore.sqlrun import parse_memory_limit

    assert parse_memory_limit(text) == expected


@pytest.mark.parametrize("text", ["lots", "", "-1GB", "5XB", "GB", "1e9", "0MB", "nan", "1000B", "64KB", "0%", "101%"])
def test_bad_memory_limit_sizes(text: str) -> None:
    from embedstore.sqlrun import parse_memory_limit

    with pytest.raises(InputError, match="memory limit"):
        parse_memory_limit(text)


def test_default_limits_and_no_spilling(store: Store) -> None:
    from embedstore.sqlrun import default_memory_limit, parse_memory_limit

    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < default_memory_limit() <= total // 4 + 1
    row: dict[str, Any] = run_query(
        store, "SELECT current_setting('memory_limit') AS m, current_setting('temp_directory') AS t").to_pylist()[0]
    assert row["t"] == ""
    assert abs(parse_memory_limit(row["m"].replace(" ", "")) - default_memory_limit()) < 0.02 * default_memory_limit()


def _holds_open(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc to see the query start")
def test_ctrl_c_stops_a_running_query(store: Store) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "embedstore.cli", "sql", HUGE_CROSS_JOIN, "--timeout", "0",
                             "--store", str(store.path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _holds_open(proc.pid, store.db_path.resolve()) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("embedstore: "), stderr
    assert "Traceback" not in stderr and stdout == ""
