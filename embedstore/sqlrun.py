"""Read-only SQL over the store for `embedstore sql`, and writing its results.

Four locks keep a query from changing anything, reaching outside the store or running forever:

1. The statement is checked with DuckDB's own parser before the store is opened: one SELECT
   (DESCRIBE, SHOW, SUMMARIZE, VALUES and FROM-first included) or EXPLAIN of one. Wherever they
   appear (subqueries, CTEs, LATERAL, EXPLAIN, DESCRIBE), table functions outside a short
   allow-list (`read_blob`, `read_csv`, `parquet_metadata`, `glob`, `query`, ...) and file names
   used as tables (`FROM 'x.csv'`) are refused.
2. The database is opened read-only, with external access, extensions and the configuration
   locked, and with DuckDB's local file system switched off: DuckDB otherwise lets SQL read the
   database's own file (`read_blob('store.duckdb')`) even with external access disabled.
3. Each query has a time limit (stopped with `interrupt()`) and a memory limit, which its result
   counts against too; nothing spills to disk, so a reader never writes a temp folder into the store.
4. Ctrl-C stops the running query before the interrupt goes on to the caller.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from embedstore.atomic import atomic_path
from embedstore.errors import InputError, SqlError, SqlRefusedError
from embedstore.store import Store, database_error

#: Table functions a query may call: row generators and read-only views of the catalog. Every
#: other one is refused: those that open files (read_*, parquet_*, glob, sniff_csv, ...), those
#: that run SQL text the check cannot see (query, query_table, ...) and those that change state.
ALLOWED_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "json_each", "json_tree",
    "duckdb_columns", "duckdb_constraints", "duckdb_databases", "duckdb_dependencies", "duckdb_functions",
    "duckdb_indexes", "duckdb_keywords", "duckdb_schemas", "duckdb_sequences", "duckdb_settings",
    "duckdb_tables", "duckdb_types", "duckdb_views", "pragma_table_info", "pragma_show", "pragma_version",
    "pg_timezone_names", "icu_calendar_names",
})
#: Scalar functions refused: they plan SQL text that the check cannot see.
REFUSED_FUNCTIONS = frozenset({"json_serialize_plan"})
#: A table name with one of these is a file name (DuckDB scans `FROM 'x.csv'` as that file).
_FILE_NAME_CHARS = frozenset("/\\.:~*?")
_EXPLAIN_WORDS = frozenset({"ANALYZE", "ANALYSE", "VERBOSE"})
_EXPLAIN_OPTIONS = frozenset({"ANALYZE", "ANALYSE", "VERBOSE", "FORMAT"})
_PARSER_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "enable_external_access": False, "autoinstall_known_extensions": False, "autoload_known_extensions": False}

DEFAULT_TIMEOUT_SECONDS = 60.0
#: Share of the machine's memory (or of the cgroup's limit) a query may use by default.
DEFAULT_MEMORY_SHARE = 0.25
_BATCH_ROWS = 65_536
_POLL_SECONDS = 0.2
_UNITS = {"b": 1, "byte": 1, "bytes": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*|%)\s*$", re.IGNORECASE)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# -- the statement check ----------------------------------------------------------------------

def _parse(con: duckdb.DuckDBPyConnection, sql: str) -> list[Any]:
    try:
        return list(con.extract_statements(sql))
    except duckdb.Error as error:
        raise SqlError(_first_line(error)) from None


def _explained(sql: str) -> str | None:
    """The statement an EXPLAIN statement explains (after EXPLAIN, ANALYZE and an option list)."""
    tokens = duckdb.tokenize(sql)
    words = []
    for i, (offset, kind) in enumerate(tokens):
        if kind != duckdb.token_type.comment:
            end = tokens[i + 1][0] if i + 1 < len(tokens) else len(sql)
            words.append((offset, kind, sql[offset:end].strip()))
    if not words or words[0][2].upper() != "EXPLAIN":
        return None
    i = 1
    while i < len(words):
        word = words[i][2].upper()
        if word in _EXPLAIN_WORDS:
            i += 1
        elif word == "(" and i + 1 < len(words) and words[i + 1][2].upper() in _EXPLAIN_OPTIONS:
            depth = 0
            while i < len(words):
                if words[i][1] == duckdb.token_type.operator:
                    depth += words[i][2].count("(") - words[i][2].count(")")
                i += 1
                if depth <= 0:
                    break
        else:
            break
    return sql[words[i][0]:] if i < len(words) else None


def _refusals(tree: Any) -> Iterator[str]:
    """Why a parse tree (json_serialize_sql's) reaches outside the store's tables, if it does."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            name = str(function.get("function_name", "")).lower() if function.get("class") == "FUNCTION" else ""
            if name not in ALLOWED_TABLE_FUNCTIONS:
                yield (f"refused: table function {name or '(an expression)'} is not allowed; `embedstore sql` reads "
                       "the store's tables only (table functions: range, generate_series, unnest, json_each, "
                       "json_tree and the duckdb_* catalog functions)")
        elif kind in ("BASE_TABLE", "SHOW_REF"):
            parts = [str(node.get(key) or "") for key in ("catalog_name", "schema_name", "table_name")]
            if any(_FILE_NAME_CHARS & set(part) for part in parts):
                name = ".".join(part for part in parts if part)
                yield f"refused: {name!r} names a file; `embedstore sql` reads the store's tables only, never files"
        if node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() in REFUSED_FUNCTIONS:
            yield f"refused: function {node.get('function_name')} is not allowed (it plans SQL text that is not checked)"


def _check(con: duckdb.DuckDBPyConnection, sql: str, kind: duckdb.StatementType) -> None:
    if kind == duckdb.StatementType.EXPLAIN:
        inner = _explained(sql)
        try:
            explained = _parse(con, inner) if inner is not None else []
        except SqlError:
            explained = []
        if len(explained) != 1 or explained[0].type != duckdb.StatementType.SELECT:
            what = f"{explained[0].type.name} statements" if len(explained) == 1 else "this statement"
            raise SqlRefusedError(f"refused: EXPLAIN of {what} is not allowed; only SELECT statements may be explained")
        sql, kind = str(inner), duckdb.StatementType.SELECT
    if kind != duckdb.StatementType.SELECT:
        raise SqlRefusedError(
            f"refused: {kind.name} statements are not allowed; `embedstore sql` is read-only (SELECT only)"
        )
    row = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    try:
        tree = json.loads(row[0]) if row else {"error": True}
    except RecursionError:
        raise SqlRefusedError("refused: the statement is nested too deeply to be checked; flatten it "
                              "(use WITH clauses instead of subqueries in subqueries)") from None
    if tree.get("error"):
        raise SqlRefusedError(f"refused: the statement cannot be checked ({tree.get('error_message', 'no parse tree')})")
    for reason in _refusals(tree.get("statements", [])):
        raise SqlRefusedError(reason)


_parser: duckdb.DuckDBPyConnection | None = None
_parser_lock = threading.Lock()


def check_statement(sql: str) -> None:
    """Refuse (SqlRefusedError) anything but one read-only statement over the store's tables.

    Uses DuckDB's parser on a private in-memory database (kept for the process), so a refused
    statement never reaches the store. Several statements are an InputError, a syntax error an SqlError.
    """
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(":memory:", config=_PARSER_CONFIG)
        statements = _parse(_parser, sql)
        if len(statements) != 1:
            raise InputError(f"give exactly one SQL statement, got {len(statements)}")
        _check(_parser, sql, statements[0].type)


# -- limits -----------------------------------------------------------------------------------

def _total_memory() -> int:
    """Physical memory, or the cgroup's memory limit where that is lower (containers)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = 8 * 2**30
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def default_memory_limit() -> int:
    """DEFAULT_MEMORY_SHARE of the machine's (or the container's) memory, in bytes."""
    return int(_total_memory() * DEFAULT_MEMORY_SHARE)


def parse_memory_limit(text: str) -> int:
    """A DuckDB-style size ("50MB", "2GB", "1.5GiB"; KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB
    of 1024) or a share of the machine's memory ("10%"), in bytes."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or (unit != "%" and unit not in _UNITS):
        raise InputError(f"memory limit {text!r}: write a size such as 512MB, 2GB or 1.5GiB, or a share such as 10%")
    value = float(match.group(1))
    if unit == "%":
        if not 0 < value <= 100:
            raise InputError(f"memory limit {text!r}: a share must lie between 0 and 100 %")
        return int(_total_memory() * value / 100)
    size = int(value * _UNITS[unit])
    if size < 2**20:
        raise InputError(f"memory limit {text!r}: give at least 1MiB")
    return size


def _timeout_seconds(timeout: float | None) -> float | None:
    if timeout is None or timeout == 0 or timeout == math.inf:
        return None
    if not math.isfinite(timeout) or timeout < 0:
        raise InputError(f"time limit {timeout:g}: give a number of seconds (0: no limit)")
    return float(timeout)


def _human(size: int) -> str:
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f}{unit}"
    return f"{size}B"


# -- running ----------------------------------------------------------------------------------

class _ResultTooLarge(Exception):
    """The result's Arrow batches outgrew the memory limit."""


def _stop(con: duckdb.DuckDBPyConnection, done: threading.Event) -> None:
    """Interrupt the running query until its thread has finished (again and again: an interrupt
    that arrives before DuckDB starts executing is not remembered)."""
    while not done.is_set():
        con.interrupt()
        try:
            done.wait(0.1)
        except KeyboardInterrupt:  # a second Ctrl-C: we are stopping already
            continue


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None, limit_bytes: int) -> pa.Table:
    relation = con.sql(sql, params=params or None)
    if relation is None:
        return pa.table({})
    reader = relation.to_arrow_reader(_BATCH_ROWS)
    try:
        batches, size = [], 0
        for batch in reader:
            size += batch.nbytes
            if size > limit_bytes:
                raise _ResultTooLarge
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=reader.schema)
    finally:
        reader.close()  # an open reader holds the connection, which could then not be closed


def _run_limited(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None,
                 seconds: float | None, limit_bytes: int) -> tuple[pa.Table | None, BaseException | None, bool]:
    """Run the query in a worker thread so that the time limit and Ctrl-C can interrupt it (DuckDB
    does not see Python's SIGINT while it runs). Returns (result, error, timed out).

    The wait is on an Event in short steps, not on Thread.join(): SIGINT may land on one of
    DuckDB's threads, which a single long wait would never notice, and a join() that Ctrl-C
    interrupts marks a running thread as finished (Python 3.11).
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            outcome["table"] = _fetch(con, sql, params, limit_bytes)
        except BaseException as error:  # handed to the calling thread, without the frames that hold the result
            outcome["error"] = error.with_traceback(None)
        finally:
            done.set()

    threading.Thread(target=work, name="embedstore-sql", daemon=True).start()
    deadline = None if seconds is None else time.monotonic() + seconds
    timed_out = False
    try:
        while not done.is_set():
            remaining = _POLL_SECONDS if deadline is None else min(_POLL_SECONDS, deadline - time.monotonic())
            if remaining <= 0:
                timed_out = True
                _stop(con, done)
                break
            done.wait(remaining)
    except KeyboardInterrupt:
        _stop(con, done)
        raise
    return outcome.get("table"), outcome.get("error"), timed_out


def run_query(store: Store, sql: str, params: dict[str, Any] | None = None, *,
              timeout: float | None = DEFAULT_TIMEOUT_SECONDS, memory_limit: str | None = None) -> pa.Table:
    """Run one read-only statement and return its result as an Arrow table.

    `timeout`: seconds before the query is stopped (None or 0: no limit). `memory_limit`: a size
    for `parse_memory_limit` (default: DEFAULT_MEMORY_SHARE of the machine's memory); the result
    counts against it too, and nothing spills to disk. Hitting either limit is an SqlError naming it.
    """
    seconds = _timeout_seconds(timeout)
    if memory_limit is None:
        limit_bytes = default_memory_limit()
        limit_text = f"{_human(limit_bytes)} ({DEFAULT_MEMORY_SHARE:.0%} of this machine's memory)"
    else:
        limit_bytes, limit_text = parse_memory_limit(memory_limit), memory_limit.strip()
    memory_message = f"memory limit of {limit_text}; narrow the query or raise the limit"
    check_statement(sql)
    settings = {"memory_limit": f"{limit_bytes}B", "temp_directory": "", "python_enable_replacements": False}
    try:
        with store.reader(settings=settings) as con:
            table, error, timed_out = _run_limited(con, sql, params, seconds, limit_bytes)
    except duckdb.OutOfMemoryException as oom:
        raise SqlError(f"the store cannot be opened within the {memory_message} ({_first_line(oom)})") from None
    if error is None and table is not None:
        return table
    if isinstance(error, _ResultTooLarge):
        raise SqlError(f"the result is larger than the {memory_message}") from None
    if isinstance(error, duckdb.OutOfMemoryException | MemoryError):
        raise SqlError(f"the query needs more memory than its {memory_message} ({_first_line(error)})") from None
    if isinstance(error, duckdb.InterruptException) and timed_out:
        raise SqlError(f"the query was stopped at its time limit of {seconds:g} s; narrow it or raise the limit") from None
    if isinstance(error, duckdb.PermissionException | duckdb.InvalidInputException):
        message = _first_line(error)
        if "read-only" in message or "disabled" in message or "locked" in message:
            raise SqlRefusedError(f"refused: {message}") from None
        raise SqlError(message) from None
    if isinstance(error, duckdb.Error | OSError):  # OSError: a DuckDB error raised while streaming through Arrow
        raise database_error(error, store.db_path) or SqlError(_first_line(error)) from None
    raise error if error is not None else SqlError("the query returned no result")


@dataclass(frozen=True)
class SqlRequest:
    """What `embedstore sql` runs: exactly one of `query` (SQL text), `file` (a .sql file) and `name`
    (a named query, its `params` given as `key=value` texts), with the limits of `run_query`."""

    query: str | None = None
    file: Path | None = None
    name: str | None = None
    params: tuple[str, ...] = ()
    timeout: float | None = DEFAULT_TIMEOUT_SECONDS
    memory_limit: str | None = None

    def statement(self) -> tuple[str, dict[str, Any]]:
        """The SQL text and its bound parameters; InputError for anything but one source, a file
        that cannot be read, or parameters that the named query does not take."""
        from embedstore import queries

        if sum(source is not None and source != "" for source in (self.query, self.file, self.name)) != 1:
            raise InputError("give exactly one of a query, a .sql file or a named query")
        if self.name:
            named = queries.load(self.name)
            return named.text, named.bind(_key_values(self.params))
        if self.params:
            raise InputError("parameters are for named queries; bind values in your own SQL yourself",
                             parameter="params")
        if self.file is not None:
            try:
                return self.file.read_text(encoding="utf-8"), {}
            except OSError as error:
                raise InputError(f"{self.file}: cannot read ({error.strerror})") from None
        return str(self.query), {}


def _key_values(raw: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"params {item!r}: write each as key=value", parameter="params")
        params[key] = value
    return params


@dataclass(frozen=True)
class SqlResult:
    """A query's result, and the store it was asked of (output files are checked against it)."""

    store: Store
    table: pa.Table


def run_sql(store_path: Path, request: SqlRequest, out: Path | None = None) -> SqlResult:
    """Everything `embedstore sql` does before printing: the statement from its one source (checked
    before the store is opened), the store opened, `out` refused if it lies among the store's
    managed files (before the query runs, not after), and the query run read-only."""
    from embedstore.outputs import check_output_path

    sql, params = request.statement()
    store = Store.open(store_path)
    if out is not None:
        check_output_path(store, out)
    return SqlResult(store, run_query(store, sql, params, timeout=request.timeout,
                                      memory_limit=request.memory_limit))


def write_output(data: bytes, out: Path, store: Store | None = None) -> None:
    """Write a result file atomically (embedstore writes it, never SQL); never among `store`'s
    managed files (nor any other store's: see `check_output_path`)."""
    from embedstore.outputs import check_output_path

    check_output_path(store, out)
    try:
        with atomic_path(out) as tmp:
            tmp.write_bytes(data)
    except OSError as error:
        raise InputError(f"{out}: cannot write ({error.strerror})") from None
