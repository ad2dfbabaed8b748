"""Where the store and the model cache live when the user does not say."""

from __future__ import annotations

import os
from pathlib import Path

STORE_ENV = "EMBEDSTORE_STORE"
CACHE_ENV = "EMBEDSTORE_CACHE"


def _xdg(var: str, fallback: str) -> Path:
    base = os.environ.get(var)
    return Path(base) if base else Path.home() / fallback


def default_store_path() -> Path:
    """`$EMBEDSTORE_STORE`, else `$XDG_DATA_HOME/embedstore/store` (`~/.local/share/embedstore/store`)."""
    explicit = os.environ.get(STORE_ENV)
    if explicit:
        return Path(explicit)
    return _xdg("XDG_DATA_HOME", ".local/share") / "embedstore" / "store"


def resolve_store_path(path: str | os.PathLike[str] | None) -> Path:
    """The `--store` option if given, else the documented default."""
    return Path(path) if path else default_store_path()


def default_cache_path() -> Path:
    """`$EMBEDSTORE_CACHE`, else `$XDG_CACHE_HOME/embedstore` (`~/.cache/embedstore`): models shared by stores."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    return _xdg("XDG_CACHE_HOME", ".cache") / "embedstore"
