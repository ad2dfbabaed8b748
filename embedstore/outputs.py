"""Where user output may go: never over or among the files a store manages.

Commands that write files for the user (`sql --out`, `report`, `chart`, `gradcam`, `data sample`)
call `check_output_path` first. A store manages its database file (and WAL), its writer lock, every
file at its top level, everything under `indices/`, `artefacts/` and `staging/`, and every path
its manifest records; `store verify` fails when any of them changes or when an unknown file
appears there. Other folders inside a store (the demo's `data/` and `report/`) are the user's.
"""

from __future__ import annotations

from pathlib import Path

from embedstore.errors import InputError
from embedstore.store import DB_NAME, STORE_FILES, STORE_FOLDERS, Store


def enclosing_store(path: Path) -> Path | None:
    """The store folder that `path` (resolved) lies in or is, if any: the nearest folder holding a store database."""
    for folder in (path, *path.parents):
        if (folder / DB_NAME).is_file():
            return folder
    return None


def _manifest_paths(store: Store) -> list[Path]:
    with store.reader() as con:
        rows = con.execute("SELECT path FROM manifest").fetchall()
    return [(store.path / relpath).resolve() for (relpath,) in rows]


def _refusal(target: Path, root: Path, folder: bool, recorded: list[Path]) -> str | None:
    if target == root:
        return "the store folder itself"
    if root not in target.parents:
        return None
    parts = target.relative_to(root).parts
    if parts[0] in STORE_FOLDERS:
        return f"inside the store's managed folder {parts[0]}/"
    if parts[0] in STORE_FILES:
        return f"the store's own file {parts[0]}"
    if target in recorded:
        return "a file the store's manifest records"
    if folder and any(target in path.parents for path in recorded):
        return "a folder holding files the store's manifest records"
    if len(parts) == 1 and not folder:
        return "a file at the store's top level, where every file belongs to the store"
    return None


def check_output_path(store: Store | None, out: Path, *, folder: bool = False) -> Path:
    """Refuse (InputError) an output path that is, or lies among, a store's managed files.

    `out` is resolved first (symlinks, `..`), so no spelling reaches the database. `folder` says
    that `out` is a folder the caller writes files into. Besides `store` (with its manifest), any
    other store that `out` lies in is checked by the same rules, without its manifest. Returns the
    resolved path.
    """
    target = Path(out).expanduser().resolve()
    checks: list[tuple[Path, list[Path]]] = []
    if store is not None:
        root = store.path.resolve()
        if root == target or root in target.parents:
            checks.append((root, _manifest_paths(store)))
    other = enclosing_store(target)
    if other is not None and all(other != root for root, _ in checks):
        checks.append((other, []))
    for root, recorded in checks:
        reason = _refusal(target, root, folder, recorded)
        if reason is not None:
            raise InputError(f"cannot write {out}: it is {reason} ({root}), which embedstore manages; "
                             "write user output outside the store or in a folder of your own inside it")
    return target
