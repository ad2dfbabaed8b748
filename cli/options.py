"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path

import typer

from embedstore.paths import STORE_ENV

StoreOption = typer.Option(
    None,
    "--store",
    envvar=STORE_ENV,
    help="Store directory (default: $EMBEDSTORE_STORE, else ~/.local/share/embedstore/store).",
    show_default=False,
)


def store_path(value: Path | None) -> Path:
    from embedstore.paths import resolve_store_path

    return resolve_store_path(value)
