"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
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


def progress_factory(bars: ExitStack, unit: str) -> Callable[[int, str], Callable[[int], None]]:
    """A `progress(total, description)` callback for library functions: each call opens one bar,
    closed when `bars` closes."""
    from embedstore.progress import progress_bar

    def progress(total: int, description: str) -> Callable[[int], None]:
        return bars.enter_context(progress_bar(total, description, unit))

    return progress
