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
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import duckdb
import pyarrow as pa

from embedstore import SCHEMA_VERSION, __version__, queries
from embedstore.atomic import TEMPORARY_PATTERN, atomic_path, sha256_file
from embedstore.errors import (
    EmbedstoreError,
    InputError,
    IntegrityError,
    SchemaVersionError,
    StoreBusyError,
    StoreEnvironmentError,
    StoreNotFoundError,
)
from embedstore.label_sets import label_set
from embedstore.locking import LOCK_NAME, WriterLock, describe_process

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
#: A writer waits for readers as long as they need; it says who it waits for after this long, then every minute.
WRITER_NOTICE_SECONDS = 10.0
WRITER_NOTICE_EVERY_SECONDS = 60.0

_HOLDER_PID = re.compile(r"\(PID (\d+)\)")


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _is_lock_conflict(error: duckdb.Error) -> bool:
    return "lock" in str(error).lower() and "conflicting" in str(error).lower()


def database_holder(error: duckdb.Error) -> str:
    """The process DuckDB names as holding the database file (its pid is in the error message)."""
    match = _HOLDER_PID.search(str(error))
    return describe_process(int(match.group(1))) if match else "another process"


#: DuckDB's words for a database file that is damaged: a block's checksum, a truncated file, not DuckDB at all.
_DAMAGED = ("corrupt database file", "not a valid duckdb database file", "could not read enough bytes")
#: Causes (as the OS words them) that are the environment's, not the data's.
_ENVIRONMENT = ("permission denied", "read-only file system", "no space left on device", "disk quota exceeded",
                "is a directory", "not a directory", "no such file or directory", "input/output error",
                "file too large", "too many open files")


#: DuckDB errors that concern the database file itself; every other kind is about a query.
_FILE_LEVEL_ERRORS = (duckdb.IOException, duckdb.SerializationException, duckdb.InternalException,
                      duckdb.FatalException, duckdb.TransactionException, duckdb.InvalidInputException)
#: The same kinds as they read when DuckDB's error reaches Python as an OSError through Arrow.
_FILE_LEVEL_PREFIXES = ("io error", "serialization error", "internal error", "fatal error", "transaction error",
                        "invalid input error", "corrupt database file")


def _file_level(error: Exception, lowered: str) -> bool:
    if isinstance(error, duckdb.Error):  # a failed block checksum arrives as the base class itself
        return isinstance(error, _FILE_LEVEL_ERRORS) or type(error) is duckdb.Error
    # An OSError is about the file unless it carries a DuckDB query error's "<Kind> Error:" prefix.
    kind = lowered.split(" error:", 1)[0]
    return lowered.startswith(_FILE_LEVEL_PREFIXES) or not kind.isalpha()


def database_error(error: Exception, db_path: Path) -> EmbedstoreError | None:
    """The one-line store error that a DuckDB error about the database file stands for, else None.

    A damaged file is an IntegrityError (exit 5); a file the environment will not let DuckDB read or
    write (permissions, read-only or full disk) is a StoreEnvironmentError (exit 6). DuckDB's errors
    reach Python as duckdb.Error, or as OSError when raised while streaming a result through Arrow.
    """
    message = " ".join(str(error).split())
    lowered = message.lower()
    if not _file_level(error, lowered):  # a query's own error (conversion, binder, ...) may quote any text
        return None
    if not isinstance(error, duckdb.InvalidInputException) and any(word in lowered for word in _DAMAGED):
        return IntegrityError(f"database {db_path} is damaged ({message[:200]}); embedstore will not use it: "
                              "`embedstore store verify` shows what is affected, restore the store from a backup")
    about_store = isinstance(error, duckdb.IOException) or str(db_path) in message  # commits name their file
    if about_store and not isinstance(error, duckdb.InvalidInputException) and any(w in lowered for w in _ENVIRONMENT):
        return StoreEnvironmentError(f"cannot use database {db_path}: {message.removeprefix('IO Error: ')[:300]}")
    return None


def environment_error(error: OSError, doing: str, path: Path) -> StoreEnvironmentError:
    """An OSError on one of the store's files as one line naming the file and the cause."""
    return StoreEnvironmentError(f"cannot {doing} {path}: {error.strerror or error}")


@contextlib.contextmanager
def _database_errors(db_path: Path, consequence: str = "") -> Iterator[None]:
    """Translate DuckDB errors about the database file (not query errors) into one-line store errors."""
    try:
        yield
    except (duckdb.Error, OSError) as error:
        translated = database_error(error, db_path)
        if translated is None:
            raise
        raise type(translated)(f"{translated}{consequence}") from error


def _connect(db_path: Path, *, read_only: bool, wait_seconds: float | None,
             config: dict[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
    """Open the database, retrying while another process holds it.

    Readers give up after `wait_seconds` (a writer's commits are short). A writer passes None and
    waits for as long as a reader holds the file, naming that reader now and then: readers have
    their own time limits, and a writer must never fail because someone is reading.
    """
    started = time.monotonic()
    next_notice = started + WRITER_NOTICE_SECONDS
    delay = 0.02
    while True:
        try:
            if read_only:
                return duckdb.connect(str(db_path), read_only=True, config={**READ_ONLY_CONFIG, **(config or {})})
            return duckdb.connect(str(db_path))
        except duckdb.IOException as error:
            if not _is_lock_conflict(error):
                raise
            now = time.monotonic()
            if wait_seconds is not None and now - started >= wait_seconds:
                raise StoreBusyError(
                    f"store {db_path.parent} stayed busy for {wait_seconds:.0f} s (held by {database_holder(error)})"
                ) from None
            if wait_seconds is None and now >= next_notice:
                log.warning("waiting for %s to close store %s (%.0f s so far); nothing is lost meanwhile",
                            database_holder(error), db_path.parent, now - started)
                next_notice = now + WRITER_NOTICE_EVERY_SECONDS
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
        store._refuse_a_file()
        try:
            store.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise environment_error(error, "create store", Path(error.filename or store.path)) from error
        existed = store.db_path.exists()
        with store.writer("store init") as writer, writer.transaction() as con:
            if existed:
                _check_schema_version(con, store.path)
                return store, False
            queries.execute(con, "schema")
            con.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("created_by", f"embedstore {__version__}"),
                    ("created_at", _now().isoformat(timespec="seconds")),
                ],
            )
            chexpert = label_set("chexpert")
            con.executemany(
                "INSERT INTO label_names VALUES (?, ?, ?, ?)",
                [(label, pos, chexpert.domain(label), label) for pos, label in enumerate(chexpert.labels)],
            )
        log.info("created store %s", store.path)
        return store, True

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open an existing store, refusing one whose schema version this code does not know."""
        store = cls(path)
        store._refuse_a_file()
        if not store.db_path.exists():
            raise StoreNotFoundError(
                f"no store at {store.path}; create one with `embedstore store init --store {store.path}`"
            )
        with store.reader() as con:
            _check_schema_version(con, store.path)
        return store

    @classmethod
    def upgrade(cls, path: Path) -> tuple[Store, int]:
        """Bring a store of an older schema version to SCHEMA_VERSION in one transaction (asked for by
        name, never done silently). Returns (store, the version found)."""
        store = cls(path)
        store._refuse_a_file()
        if not store.db_path.exists():
            raise StoreNotFoundError(f"no store at {store.path}")
        with store.writer("store upgrade") as writer, writer.transaction() as con:
            try:
                row = first_row(con, "SELECT value FROM meta WHERE key = 'schema_version'")
            except duckdb.CatalogException:
                raise SchemaVersionError(f"{store.db_path} is not an embedstore store (no meta table)") from None
            found = int(row[0]) if row and str(row[0]).isdigit() else -1
            if found == SCHEMA_VERSION:
                return store, found
            if found not in UPGRADES:
                raise SchemaVersionError(f"store {store.path} has schema version {row[0] if row else None}; "
                                         f"this embedstore upgrades only from version(s) "
                                         f"{', '.join(map(str, UPGRADES))} to {SCHEMA_VERSION}")
            for version in range(found, SCHEMA_VERSION):
                queries.execute_all(con, UPGRADES[version], {"chexpert_labels": list(label_set("chexpert").labels)})
            queries.execute(con, "schema")  # idempotent: views (labels_wide) as this version defines them
        return store, found

    def _refuse_a_file(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise StoreEnvironmentError(f"store {self.path} is a file, not a folder: give a store folder's path")

    # -- connections ----------------------------------------------------------------------
    @contextlib.contextmanager
    def reader(self, wait_seconds: float = READER_WAIT_SECONDS,
               settings: dict[str, Any] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection: no writes, no file access, no extensions, settings locked.

        `settings` (for user SQL: memory_limit, temp_directory, ...) are applied before the
        configuration is locked, and then the local file system is switched off too: DuckDB lets
        SQL read the database's own file even with external access disabled.
        """
        with _database_errors(self.db_path):
            con = _connect(self.db_path, read_only=True, wait_seconds=wait_seconds,
                           config=None if settings is None else {**settings, "lock_configuration": False})
            try:
                if settings is not None:
                    con.execute("SET disabled_filesystems = 'LocalFileSystem'")
                    con.execute("SET lock_configuration = true")
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
APPENDABLE_TABLES = frozenset({"samples", "labels", "image_embeddings", "text_embeddings", "report_embeddings",
                               "scores", "metrics", "gradcam"})


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


def resolve_dataset(store: Store, name: str | None) -> str:
    """The dataset a command works on: `name`, checked to be in the store, or without a name the
    store's only dataset. Every command that takes a dataset resolves it here."""
    with store.reader() as con:
        names = [str(row[0]) for row in queries.fetch(con, "dataset_names")]
    have = ", ".join(names) or "none"
    if name is None:
        if len(names) != 1:
            raise InputError(f"the store has {len(names)} datasets ({have}); name one", parameter="data")
        return names[0]
    if name not in names:
        raise InputError(f"dataset {name!r}: no such dataset in {store.path} (have: {have}); "
                         "ingest it with `embedstore ingest`")
    return name


def _check_schema_version(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    try:
        row = first_row(con, "SELECT value FROM meta WHERE key = 'schema_version'")
    except duckdb.CatalogException:
        raise SchemaVersionError(f"{path / DB_NAME} is not an embedstore store (no meta table)") from None
    found = row[0] if row else None
    if found != str(SCHEMA_VERSION):
        raise SchemaVersionError(
            f"store {path} has schema version {found}; this embedstore ({__version__}) reads only "
            f"version {SCHEMA_VERSION} and never migrates silently: "
            + (f"upgrade it with `embedstore store upgrade --store {path}`" if found in {str(v) for v in UPGRADES}
               else "use a matching embedstore or a new store")
        )


#: The named query that brings a store from each older schema version to the next.
UPGRADES: dict[int, str] = {2: "upgrade_v2_to_v3", 3: "upgrade_v3_to_v4"}


#: Folders whose every file must be in the manifest (beside the store's own files at the top level).
MANAGED_FOLDERS = ("indices", "artefacts")
#: Where a run's embedding chunks wait while a reader holds the database (see embedstore/embeddings.py).
STAGING_FOLDER = "staging"
#: The folders a store manages: interrupted atomic writes may leave temporary files in them, and
#: user output never goes there (embedstore/outputs.py).
STORE_FOLDERS = (*MANAGED_FOLDERS, STAGING_FOLDER)


class StoreWriter:
    """Holds the writer lock; opens the database read-write only inside `transaction()`."""

    def __init__(self, store: Store, command: str | None) -> None:
        self.store = store
        self._lock = WriterLock(store.path, command)

    def __enter__(self) -> StoreWriter:
        try:
            self._lock.__enter__()
        except OSError as error:
            raise environment_error(error, "take the writer lock", self._lock.path) from error
        self._remove_stale_temporary_files()
        return self

    def _remove_stale_temporary_files(self) -> None:
        """Temporary files of atomic writes (`.NAME.XXXX.tmp`) left by a writer that was killed:
        with the lock held, no other writer can be writing them."""
        if not self.store.db_path.exists():  # `store init` in a folder of the user's: not ours to clean
            return
        folders = [self.store.path, *(self.store.path / name for name in STORE_FOLDERS)]
        for folder in folders:
            pattern = TEMPORARY_PATTERN if folder == self.store.path else f"**/{TEMPORARY_PATTERN}"
            for path in folder.glob(pattern) if folder.is_dir() else []:
                try:
                    path.unlink(missing_ok=True)
                except OSError:  # a read-only store: `verify` still reports it
                    continue
                log.info("removed %s, left by an interrupted write", path)

    def __exit__(self, *exc_info: Any) -> None:
        self._lock.__exit__(*exc_info)

    @contextlib.contextmanager
    def transaction(self, wait_seconds: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """One short read-write transaction: committed on success, rolled back on any error.

        By default it waits for readers as long as they hold the database; with `wait_seconds` it
        raises StoreBusyError instead (for a caller that can stage its rows and go on working).
        """
        with _database_errors(self.store.db_path, "; nothing of this step was committed"):
            con = _connect(self.store.db_path, read_only=False, wait_seconds=wait_seconds)
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
        write: Callable[[BinaryIO], None],
        *,
        run_id: str | None = None,
        table_name: str | None = None,
        n_rows: int | None = None,
    ) -> str:
        """Write an artefact atomically and record it in the manifest. Returns its sha256.

        `write` gets an open binary file, closed here: a failed write (a full disk) is an OSError,
        reported as one line, never a short file recorded as good.
        """
        target = self.store.resolve(relpath)
        try:
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as handle:
                    write(handle)
                digest = sha256_file(tmp)
                size = tmp.stat().st_size
        except OSError as error:
            raise StoreEnvironmentError(f"cannot write {target}: {error.strerror or error}; nothing was "
                                        "recorded and the store is as it was") from error
        with self.transaction() as con:
            con.execute(
                "INSERT OR REPLACE INTO manifest VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [relpath, kind, run_id, table_name, digest, size, n_rows, _now()],
            )
        return digest
