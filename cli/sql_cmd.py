"""`embedstore sql`: read-only SQL over the store."""

from __future__ import annotations

from pathlib import Path

import typer

from embedstore.choices import SqlFormat
from embedstore.cli.options import StoreOption, store_path
from embedstore.errors import InputError

#: Rows the `table` format shows of a result (the first and last half); other formats write every row.
TABLE_ROWS = 200


def sql(
    query: str | None = typer.Argument(None, help="One SELECT statement."),
    file: Path | None = typer.Option(None, "-f", "--file", help="Read the statement from a .sql file."),
    name: str | None = typer.Option(None, "--name", help="Run a named query from embedstore's sql/ folder."),
    param: list[str] = typer.Option([], "--param", help="key=value for a named query's parameter."),
    list_: bool = typer.Option(False, "--list", help="List the named queries."),
    fmt: SqlFormat = typer.Option(SqlFormat.TABLE, "--format",
                                  help=f"Output: an aligned table (at most {TABLE_ROWS} rows shown), CSV, JSON records, "
                                       "or Parquet (needs --out)."),
    out: Path | None = typer.Option(None, "--out", help="Write the result to this file instead of stdout."),
    timeout: float = typer.Option(60.0, "--timeout", help="Stop the query after this many seconds (0: no limit)."),
    memory_limit: str | None = typer.Option(
        None, "--memory-limit", show_default=False,
        help="Memory the query (and its result) may use: 512MB, 2GB, 1.5GiB or 10% (default: 25% of the machine's)."),
    store: Path | None = StoreOption,
) -> None:
    """Query the store read-only (writes, file access, ATTACH, INSTALL/LOAD and SET are refused)."""
    from embedstore import queries
    from embedstore.cli.output import BINARY_FORMATS, render, write_stdout
    from embedstore.sqlrun import SqlRequest, run_sql, write_output

    if list_:
        for named in queries.public_queries():
            params = " ".join(f"--param {p.name}=<{p.sql_type}>" for p in named.params)
            typer.echo(f"{named.name:<18} {named.description}" + (f"  [{params}]" if params else ""))
        return
    if sum(bool(source) for source in (query, file, name)) != 1:
        raise InputError("give exactly one of QUERY, -f FILE or --name NAME")
    if fmt in BINARY_FORMATS and out is None:
        raise InputError(f"--format {fmt} is binary: give --out FILE")
    request = SqlRequest(query=query, file=file, name=name, params=tuple(param), timeout=timeout,
                         memory_limit=memory_limit)
    result = run_sql(store_path(store), request, out)
    data = render(result.table, fmt, max_rows=TABLE_ROWS)
    if out is None:
        write_stdout(data)
    else:
        write_output(data, out, result.store)
        typer.echo(f"wrote {out}", err=True)
