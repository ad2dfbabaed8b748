"""`embedstore store init|upgrade|info|verify`."""

from __future__ import annotations

from pathlib import Path

import typer

from embedstore.cli.options import StoreOption, store_path

app = typer.Typer(help="Create, inspect and verify a store.", no_args_is_help=True)


@app.command()
def init(store: Path | None = StoreOption) -> None:
    """Create a store (idempotent: an existing store of this version is left as it is)."""
    from embedstore.store import Store

    opened, created = Store.init(store_path(store))
    typer.echo(f"{'created' if created else 'already a store'}: {opened.path}")


@app.command()
def upgrade(store: Path | None = StoreOption) -> None:
    """Bring a store made by an older embedstore to this version's schema, in one transaction."""
    from embedstore import SCHEMA_VERSION
    from embedstore.store import Store

    opened, found = Store.upgrade(store_path(store))
    typer.echo(f"{opened.path}: schema version {found} → {SCHEMA_VERSION}" if found != SCHEMA_VERSION
               else f"{opened.path}: already at schema version {SCHEMA_VERSION}")


@app.command()
def info(store: Path | None = StoreOption) -> None:
    """Tables with row counts, runs, and artefact sizes."""
    from embedstore.cli.output import print_tables
    from embedstore.info import store_info
    from embedstore.store import Store

    summary = store_info(Store.open(store_path(store)))
    typer.echo(f"store {summary.path} (database {summary.database_bytes:,} bytes)\n")
    print_tables({"tables": summary.table_rows, "runs": summary.runs, "artefacts": summary.artefacts})


@app.command()
def verify(store: Path | None = StoreOption) -> None:
    """Check every artefact's sha256 and every FAISS index against its table; non-zero exit on mismatch."""
    from embedstore.errors import IntegrityError
    from embedstore.integrity import verify_store
    from embedstore.store import Store

    report = verify_store(Store.open(store_path(store)))
    for problem in report.problems:
        typer.echo(f"MISMATCH {problem}", err=True)
    if not report.ok:
        raise IntegrityError(f"{len(report.problems)} mismatch(es) in {store_path(store)}")
    typer.echo(f"ok: {report.checked_files} artefacts, {report.checked_indices} FAISS indices match")
