"""`embedstore sql`: read-only SQL over the store."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from embedstore.cli.options import StoreOption, store_path

from embedstore.errors import InputError


def _parse_params(raw: list[str]) -> dict[str, str]:
    params = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--param {item!r}: write it as key=value")
        params[key] = value
    return params


def sql(
    query: str | None = typer.Argument(None, help="One SELECT statement."),
    file: Path | None = typer.Option(None, "-f", "--file", help="Read the statement from a .sql file."),
    name: str | None = typer.Option(None, "--name", help="Run a named query from embedstore's sql/ folder."),
    param: list[str] = typer.Option([], "--param", help="key=value for a named query's parameter."),
    list_: bool = typer.Option(False, "--list", help="List the named queries."),
    fmt: str = typer.Option("table", "--format", help="table, csv, json or parquet."),
    out: Path | None = typer.Option(None, "--out", help="Write the result to this file instead of stdout."),
    timeout: float = typer.Option(60.0, "--timeout", help="Stop the query after this many seconds (0: no limit)."),
    memory_limit: str | None = typer.Option(
        None, "--memory-limit", show_default=False,
        help="Memory the query (and its result) may use: 512MB, 2GB, 1.5GiB or 10% (default: 25% of the machine's)."),
    store: Path | None = StoreOption,
) -> None:
    """Query the store read-only (writes, file access, ATTACH, INSTALL/LOAD and SET are refused)."""
    from embedstore import queries
    from embedstore.outputs import check_output_path
    from embedstore.sqlrun import BINARY_FORMATS, render, run_query, write_output
    from embedstore.store import Store

    if list_:
        for named in queries.public_queries():
            params = " ".join(f"--param {p.name}=<{p.sql_type}>" for p in named.params)
            typer.echo(f"{named.name:<18} {named.description}" + (f"  [{params}]" if params else ""))
        return
    sources = [s for s in (query, file, name) if s]
    if len(sources) != 1:
        raise InputError("give exactly one of QUERY, -f FILE or --name NAME")
    bound: dict[str, object] = {}
    if name:
        named_query = queries.load(name)
        text = named_query.text
        bound = named_query.bind(_parse_params(param))
    elif file:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as error:
            raise InputError(f"-f {file}: cannot read ({error.strerror})") from None
    else:
        text = str(query)
        if param:
            raise InputError("--param is for named queries (--name); bind values in your own SQL yourself")
    if fmt in BINARY_FORMATS and out is None:
        raise InputError(f"--format {fmt} is binary: give --out FILE")
    opened = Store.open(store_path(store))
    if out is not None:
        check_output_path(opened, out)
    data = render(run_query(opened, text, bound, timeout=timeout, memory_limit=memory_limit), fmt)
    if out is None:
        sys.stdout.buffer.write(data)
    else:
        write_output(data, out, opened)
        typer.echo(f"wrote {out}", err=True)
