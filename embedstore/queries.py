"""Named queries: one `.sql` file each in the `embedstore.sql` package, loaded by name.

A file starts with comment lines that describe it::

    -- Positives per label and split for one dataset.
    -- param dataset VARCHAR: the dataset's name
    -- internal            (optional: used by embedstore itself, hidden from `sql --list`)

Parameters are bound by DuckDB (`$dataset`), never pasted into the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from embedstore.errors import InputError

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

_PARAM_LINE = re.compile(r"^--\s*param\s+(\w+)\s+(\w+)\s*:\s*(.*)$")
_PARAM_TYPES: dict[str, Callable[[str], Any]] = {
    "VARCHAR": str,
    "BIGINT": int,
    "INTEGER": int,
    "DOUBLE": float,
}


@dataclass(frozen=True)
class QueryParam:
    name: str
    sql_type: str
    description: str

    def convert(self, raw: str, query_name: str) -> Any:
        """Turn a `--param key=value` string into the Python value DuckDB binds."""
        try:
            return _PARAM_TYPES[self.sql_type](raw)
        except ValueError:
            raise InputError(f"params {self.name}={raw!r}: query {query_name!r} expects {self.sql_type}",
                             parameter="params") from None


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    params: tuple[QueryParam, ...]
    internal: bool
    text: str

    def bind(self, raw_params: dict[str, str]) -> dict[str, Any]:
        """Check and convert user parameters: every declared one given, no unknown ones."""
        declared = {p.name: p for p in self.params}
        unknown = sorted(set(raw_params) - set(declared))
        if unknown:
            raise InputError(f"params {unknown[0]}: query {self.name!r} takes {sorted(declared) or 'none'}",
                             parameter="params")
        missing = sorted(set(declared) - set(raw_params))
        if missing:
            needed = declared[missing[0]]
            raise InputError(f"query {self.name!r} needs the parameter {needed.name}=VALUE ({needed.description})",
                             parameter="params")
        return {key: declared[key].convert(value, self.name) for key, value in raw_params.items()}


def _parse(name: str, text: str) -> NamedQuery:
    description = ""
    params: list[QueryParam] = []
    internal = False
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        if match := _PARAM_LINE.match(line):
            pname, ptype, pdesc = match.groups()
            if ptype.upper() not in _PARAM_TYPES:
                raise ValueError(f"sql/{name}.sql: unknown parameter type {ptype}")
            params.append(QueryParam(pname, ptype.upper(), pdesc.strip()))
        elif line.strip() == "-- internal":
            internal = True
        elif not description:
            description = line[2:].strip()
    return NamedQuery(name, description, tuple(params), internal, text)


@cache
def all_queries() -> dict[str, NamedQuery]:
    """Every named query shipped in `embedstore.sql`, by name."""
    found = {}
    for entry in resources.files("embedstore.sql").iterdir():
        if entry.name.endswith(".sql"):
            name = entry.name[: -len(".sql")]
            found[name] = _parse(name, entry.read_text(encoding="utf-8"))
    return dict(sorted(found.items()))


def load(name: str) -> NamedQuery:
    """The named query `name`, or a clear error listing what exists."""
    queries = all_queries()
    if name not in queries:
        public = [q for q, v in queries.items() if not v.internal]
        raise InputError(f"name {name}: no such query ({len(public)} named queries exist; the sql command lists them)",
                         parameter="name")
    return queries[name]


def execute(con: duckdb.DuckDBPyConnection, name: str, **params: Any) -> duckdb.DuckDBPyConnection:
    """Run the named query on `con` with `params` bound by DuckDB; returns the connection, ready for
    `fetchall`, `fetchnumpy` or `arrow`. The one way embedstore runs its own queries."""
    return con.execute(load(name).text, params)


def fetch(con: duckdb.DuckDBPyConnection, name: str, **params: Any) -> list[tuple[Any, ...]]:
    """Every row of the named query."""
    rows: list[tuple[Any, ...]] = execute(con, name, **params).fetchall()
    return rows


def fetch_one(con: duckdb.DuckDBPyConnection, name: str, **params: Any) -> tuple[Any, ...] | None:
    """The first row of the named query, or None; the result is fully consumed (DuckDB refuses the next
    query on a connection with an unfinished result)."""
    rows: list[tuple[Any, ...]] = execute(con, name, **params).fetchall()
    return rows[0] if rows else None


def fetch_numpy(con: duckdb.DuckDBPyConnection, name: str, **params: Any) -> dict[str, Any]:
    """The named query's columns as numpy arrays."""
    columns: dict[str, Any] = execute(con, name, **params).fetchnumpy()
    return columns


def fetch_arrow(con: duckdb.DuckDBPyConnection, name: str, **params: Any) -> pa.Table:
    """The named query's result as a pyarrow Table."""
    return con.sql(load(name).text, params=params).to_arrow_table() if params else con.sql(load(name).text).to_arrow_table()


def fetch_batches(con: duckdb.DuckDBPyConnection, name: str, rows: int, **params: Any) -> Iterator[pa.RecordBatch]:
    """The named query's result as Arrow record batches of up to `rows` rows, streamed (never whole)."""
    reader = con.sql(load(name).text, params=params).to_arrow_reader(rows)
    yield from reader


def execute_all(con: duckdb.DuckDBPyConnection, name: str, params: dict[str, Any]) -> None:
    """Run a multi-statement named query statement by statement, each bound to the parameters it uses."""
    import duckdb

    for statement in duckdb.connect().extract_statements(load(name).text):
        used = {key: value for key, value in params.items() if f"${key}" in statement.query}
        con.execute(statement.query, used)


def public_queries() -> list[NamedQuery]:
    """Queries meant for users (`embedstore sql --list`)."""
    return [q for q in all_queries().values() if not q.internal]
