"""The one table printer of the CLI: a table, or several titled ones, as an aligned text table,
Markdown, CSV, JSON or Parquet (like sqlite-utils' `output_rows`). Every command that prints a
table calls `print_tables`; `sql --out` writes what `render` returns."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from embedstore.choices import SqlFormat, TableFormat
from embedstore.errors import InputError

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    Frame: TypeAlias = pl.DataFrame | pa.Table
    #: One table, or several by title (printed in order, each under its title).
    Tables: TypeAlias = Frame | Mapping[str, Frame]

#: Text cells longer than this are cut (with …) in the `table` format; other formats keep them whole.
TEXT_WIDTH = 100
#: Width of the `table` format's lines (wider tables wrap their cells).
LINE_WIDTH = 250
#: Formats written as bytes that a terminal cannot show: they need an output file.
BINARY_FORMATS = frozenset({SqlFormat.PARQUET})


def _frame(table: Frame) -> pl.DataFrame:
    import polars as pl

    if isinstance(table, pl.DataFrame):
        return table
    return cast("pl.DataFrame", pl.from_arrow(table))  # a Table gives a DataFrame (a Series only from an Array)


def _flatten_nested(frame: pl.DataFrame) -> pl.DataFrame:
    """Nested columns (lists, structs) as JSON-like text, for the table and CSV formats."""
    import polars as pl

    exprs = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.List | pl.Array | pl.Struct):
            exprs.append(pl.struct(pl.col(name).alias("v")).struct.json_encode().str.slice(5).str.head(-1).alias(name))
    return frame.with_columns(exprs) if exprs else frame


def _text_table(frame: pl.DataFrame, max_rows: int | None) -> str:
    import polars as pl

    with pl.Config(tbl_rows=-1 if max_rows is None else max_rows, tbl_cols=-1, fmt_str_lengths=TEXT_WIDTH,
                   tbl_width_chars=LINE_WIDTH, tbl_hide_column_data_types=True,
                   tbl_hide_dataframe_shape=max_rows is None or frame.height <= max_rows):
        return str(_flatten_nested(frame))


def markdown(frame: pl.DataFrame) -> str:
    """A DataFrame as a GitHub-flavoured Markdown table (`|` inside a cell escaped)."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in _flatten_nested(frame).iter_rows()]
    return "\n".join([header, rule, *body])


def _records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return frame.to_dicts()


def _one(frame: pl.DataFrame, fmt: str, max_rows: int | None) -> str:
    if fmt == TableFormat.TABLE:
        return _text_table(frame, max_rows) + "\n"
    if fmt == TableFormat.MARKDOWN:
        return markdown(frame) + "\n"
    if fmt == TableFormat.CSV:
        return _flatten_nested(frame).write_csv()
    return frame.write_json() + "\n"


def _titled(title: str, frame: pl.DataFrame, fmt: str, max_rows: int | None) -> str:
    if fmt == TableFormat.TABLE:
        return f"{title}:\n{_text_table(frame, max_rows)}\n\n"
    if fmt == TableFormat.MARKDOWN:
        return f"### {title}\n\n{markdown(frame)}\n\n"
    return f"# {title}\n{_flatten_nested(frame).write_csv()}\n"


def render(tables: Tables, fmt: str = TableFormat.TABLE, *, max_rows: int | None = None) -> bytes:
    """`tables` in `fmt` (a TableFormat or SqlFormat value).

    One table: `table` (aligned, nested columns as `[x, y, …]` text), `markdown`, `csv`, `json` (a
    list of records) or `parquet`. Several titled tables: each under its title (`title:`, `### title`
    or `# title` in CSV), or one JSON object of record lists by title; tables without columns are
    left out. `max_rows` cuts the `table` format to that many rows (head and tail) and then says
    the shape.
    """
    if fmt not in {*TableFormat, *SqlFormat}:
        valid = ", ".join(dict.fromkeys([*TableFormat, *SqlFormat]))
        raise InputError(f"format {fmt!r}: choose one of {valid}")
    if isinstance(tables, Mapping):
        frames = {title: _frame(table) for title, table in tables.items()}
        frames = {title: frame for title, frame in frames.items() if frame.width}
        if fmt == SqlFormat.PARQUET:
            raise InputError("format 'parquet' writes one table, not several")
        if fmt == TableFormat.JSON:
            return (json.dumps({title: _records(f) for title, f in frames.items()}, default=str, indent=1)
                    + "\n").encode()
        return "".join(_titled(title, frame, fmt, max_rows) for title, frame in frames.items()).encode()
    frame = _frame(tables)
    if fmt == SqlFormat.PARQUET:
        buffer = io.BytesIO()
        frame.write_parquet(buffer)
        return buffer.getvalue()
    return _one(frame, fmt, max_rows).encode()


def write_stdout(data: bytes) -> None:
    """Bytes to standard output, after any text already echoed (which stays first)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def print_tables(tables: Tables, fmt: str = TableFormat.TABLE, *, max_rows: int | None = None) -> None:
    """Print `tables` in `fmt` on standard output (see `render`)."""
    if fmt in BINARY_FORMATS:
        raise InputError(f"format {fmt!r} is binary: write it to a file")
    write_stdout(render(tables, fmt, max_rows=max_rows))


def print_json(value: object) -> None:
    """Any JSON-able value (records, say), indented, on standard output."""
    write_stdout((json.dumps(value, default=str, indent=1) + "\n").encode())
