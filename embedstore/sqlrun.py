"""Read-only SQL over the store for `embedstore sql`, and writing its results.

Three locks keep a query from changing anything or reaching outside the store: only SELECT and
EXPLAIN statements are accepted, the database is opened read-only, and external access and the
configuration are disabled at connect time (so `read_csv`, `COPY ... TO`, `ATTACH`, `INSTALL`,
`LOAD` and `SET` are refused by DuckDB itself).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from embedstore.atomic import atomic_path
from embedstore.errors import InputError, SqlError, SqlRefusedError
from embedstore.store import Store

ALLOWED_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def run_query(store: Store, sql: str, params: dict[str, Any] | None = None) -> pa.Table:
    """Run one read-only statement and return its result as an Arrow table."""
    with store.reader() as con:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as error:
            raise SqlError(_first_line(error)) from None
        if len(statements) != 1:
            raise InputError(f"give exactly one SQL statement, got {len(statements)}")
        kind = statements[0].type
        if kind not in ALLOWED_STATEMENTS:
            raise SqlRefusedError(
                f"refused: {kind.name} statements are not allowed; `embedstore sql` is read-only (SELECT only)"
            )
        try:
            return con.sql(sql, params=params or None).to_arrow_table()
        except (duckdb.PermissionException, duckdb.InvalidInputException) as error:
            message = _first_line(error)
            if "read-only" in message or "disabled" in message or "locked" in message:
                raise SqlRefusedError(f"refused: {message}") from None
            raise SqlError(message) from None
        except duckdb.Error as error:
            raise SqlError(_first_line(error)) from None


def _flatten_nested(frame: pl.DataFrame) -> pl.DataFrame:
    """Nested columns (lists, structs) as JSON-like text, for CSV and table output."""
    exprs = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.List | pl.Array | pl.Struct):
            exprs.append(pl.struct(pl.col(name).alias("v")).struct.json_encode().str.slice(5).str.head(-1).alias(name))
    return frame.with_columns(exprs) if exprs else frame


def _as_table(frame: pl.DataFrame) -> bytes:
    with pl.Config(tbl_rows=200, tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200, tbl_hide_dataframe_shape=False):
        return (str(_flatten_nested(frame)) + "\n").encode()


def _as_csv(frame: pl.DataFrame) -> bytes:
    return _flatten_nested(frame).write_csv().encode()


def _as_json(frame: pl.DataFrame) -> bytes:
    return frame.write_json().encode() + b"\n"


def _as_parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


FORMATTERS: dict[str, Callable[[pl.DataFrame], bytes]] = {
    "table": _as_table,
    "csv": _as_csv,
    "json": _as_json,
    "parquet": _as_parquet,
}
BINARY_FORMATS = {"parquet"}


def render(result: pa.Table, fmt: str) -> bytes:
    """Encode a result in one of FORMATTERS' formats."""
    if fmt not in FORMATTERS:
        raise InputError(f"--format {fmt}: choose one of {', '.join(FORMATTERS)}")
    return FORMATTERS[fmt](pl.from_arrow(result))


def write_output(data: bytes, out: Path) -> None:
    """Write a result file atomically (embedstore writes it, never SQL)."""
    try:
        with atomic_path(out) as tmp:
            tmp.write_bytes(data)
    except OSError as error:
        raise InputError(f"--out {out}: cannot write ({error.strerror})") from None
