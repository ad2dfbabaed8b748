"""The store: one directory holding a DuckDB file, FAISS index files, model artefacts and a manifest.

Readers open the database read-only with external access disabled and configuration locked.
A writer first takes the store's writer lock (one writer at a time, refused at once otherwise),
then opens the database read-write only for short transactions, so readers are never locked
out for longer than a commit.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from embedstore import SCHEMA_VERSION, __version__, queries
from embedstore.atomic import atomic_path, sha256_file
from embedstore.errors import SchemaVersionError, StoreBusyError, StoreNotFoundError
from embedstore.labels import CHEXPERT_LABELS, DOMAIN_OF
from embedstore.locking import LOCK_NAME, WriterLock, describe_holder

log = logging.getLogger(__name__)

DB_NAME = "store.duckdb"
#: Files the store keeps beside its artefacts; everything else under the directory is in the manifest.
STORE_FILES = frozenset({DB_NAME, f"{DB_NAME}.wal", LOCK_NAME})

READ_ONLY_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}

READER_WAIT_SECONDS = 15.0
WRITER_WAIT_SECONDS = 60.0


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _is_lock_conflict(error: duckdb.Error) -> bool:
    return "lock" in str(error).lower() and "conflicting" in str(error).lower()


def _connect(db_path: Path, *, read_only: bool, wait_seconds: float) -> duckdb.DuckDBPyConnection:
    """Open the database, retrying while another process holds it for a short commit."""
    deadline = time.monotonic() + wait_seconds
    delay = 0.02
    while True:
        try:
            if read_only:
                return duckdb.connect(str(db_path), read_only=True, config=READ_ONLY_CONFIG)
            return duckdb.connect(str(db_path))
        except duckdb.IOException as error:
            if not _is_lock_conflict(error) or time.monotonic() >= deadline:
                if _is_lock_conflict(error):
                    holder = describe_holder(db_path.parent / LOCK_NAME)
                    raise StoreBusyError(
                        f"store {db_path.parent} stayed busy for {wait_seconds:.0f} s (held by {holder})"
                    ) from None
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 0.5)


class Store:
    """An embedstore store directory. Create with `Store.init`, open with `Store.open`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.db_path = self.path / DB_NAME

    # -- creation and opening -------------------------------------------------------------
    @classmethod
    def init(cls, path: Path) -> tuple[Store, bool]:
        """Create the store at `path`, or check the one there. Returns (store, created)."""
        store = cls(path)
        store.path.mkdir(parents=True, exist_ok=True)
        existed = store.db_path.exists()
        with store.writer("store init") as writer, writer.transaction() as con:
            if existed:
                _check_schema_version(con, store.path)
                return store, False
            con.execute(queries.load("schema").text)
            con.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("created_by", f"embedstore {__version__}"),
                    ("created_at", _now().isoformat(timespec="seconds")),
                ],
            )
            con.executemany(
                "INSERT INTO label_names VALUES (?, ?, ?)",
                [(label, pos, DOMAIN_OF[label]) for pos, label in enumerate(CHEXPERT_LABELS)],
            )
        log.info("created store %s", store.path)
        return store, True

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open an existing store, refusing one whose schema version this code does not know."""
        store = cls(path)
        if not store.db_path.exists():
            raise StoreNotFoundError(
                f"no store at {store.path}; create one with `embedstore store init --store {store.path}`"
            )
        with store.reader() as con:
            _check_schema_version(con, store.path)
        return store

    # -- connections ----------------------------------------------------------------------
    @contextlib.contextmanager
    def reader(self, wait_seconds: float = READER_WAIT_SECONDS) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection: no writes, no file access, no extensions, settings locked."""
        con = _connect(self.db_path, read_only=True, wait_seconds=wait_seconds)
        try:
            yield con
        finally:
            con.close()

    def writer(self, command: str | None = None) -> StoreWriter:
        """Take the writer lock (refused at once if another process holds it)."""
        return StoreWriter(self, command)

    def resolve(self, relpath: str) -> Path:
        """Absolute path of an artefact recorded in the manifest."""
        return self.path / relpath


def first_row(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> tuple[Any, ...] | None:
    """The first row of a query, with the result fully consumed (DuckDB needs that before the next query)."""
    rows = con.execute(sql, params if params is not None else []).fetchall()
    return rows[0] if rows else None


#: Tables that bulk appends may target (identifiers are never taken from user input).
APPENDABLE_TABLES = frozenset({"samples", "labels", "image_embeddings", "text_embeddings", "scores", "metrics", "gradcam"})


def append_rows(con: duckdb.DuckDBPyConnection, table: str, batch: pa.Table) -> int:
    """Append an Arrow table (columns in the table's order) inside the caller's transaction."""
    if table not in APPENDABLE_TABLES:
        raise ValueError(f"not an appendable table: {table}")
    con.register("_append_batch", batch)
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM _append_batch")
    finally:
        con.unregister("_append_batch")
    return batch.num_rows


def _check_schema_version(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    try:
        row = first_row(con, "SELECT value FROM meta WHERE key = 'schema_version'")
    except duckdb.CatalogException:
        raise SchemaVersionError(f"{path / DB_NAME} is not an embedstore store (no meta table)") from None
    found = row[0] if row else None
    if found != str(SCHEMA_VERSION):
        raise SchemaVersionError(
            f"store {path} has schema version {found}; this embedstore ({__version__}) reads only "
            f"version {SCHEMA_VERSION} and never migrates silently: use a matching embedstore or a new store"
        )


class StoreWriter:
    """Holds the writer lock; opens the database read-write only inside `transaction()`."""

    def __init__(self, store: Store, command: str | None) -> None:
        self.store = store
        self._lock = WriterLock(store.path, command)

    def __enter__(self) -> StoreWriter:
        self._lock.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._lock.__exit__(*exc_info)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One short read-write transaction: committed on success, rolled back on any error."""
        con = _connect(self.store.db_path, read_only=False, wait_seconds=WRITER_WAIT_SECONDS)
        try:
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()
        finally:
            con.close()

    def write_artefact(
        self,
        relpath: str,
        kind: str,
        write: Callable[[Path], None],
        *,
        run_id: str | None = None,
        table_name: str | None = None,
        n_rows: int | None = None,
    ) -> str:
        """Write an artefact atomically and record it in the manifest. Returns its sha256."""
        target = self.store.resolve(relpath)
        with atomic_path(target) as tmp:
            write(tmp)
            digest = sha256_file(tmp)
            size = tmp.stat().st_size
        with self.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO manifest VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [relpath, kind, run_id, table_name, digest, size, n_rows, _now()],
            )
        return digest
