"""`store verify`: every manifest sha256 matches its file, every FAISS index equals its table.

Also the one way artefacts are read back (`read_artefact` and the loaders on it): only after their
size and sha256 match the manifest, and never by unpickling.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import logging
import os
import pickle
import re
import stat
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedstore import queries
from embedstore.atomic import TEMPORARY_PATTERN, sha256_file
from embedstore.errors import IntegrityError
from embedstore.store import DB_NAME, MANAGED_FOLDERS, STAGING_FOLDER, STORE_FILES, STORE_FOLDERS, Store

log = logging.getLogger(__name__)

#: How `verify` reports a temporary file of an interrupted atomic write.
TEMPORARY_FILE = "temporary file left by an interrupted write (the next writing command removes it)"

#: What each mode's complete run must have in the manifest and on disk (see embedstore/extract.py).
RUN_ARTEFACTS = {
    "zs": (("indices/{run_id}.image_embeddings.faiss", "FAISS index"),),
    "lp": (("indices/{run_id}.image_embeddings.faiss", "FAISS index"), ("artefacts/{run_id}/head.npz", "head")),
    "ft": (("indices/{run_id}.image_embeddings.faiss", "FAISS index"),
           ("artefacts/{run_id}/finetuned.pt", "fine-tuned checkpoint")),
}


def required_artefacts(run_id: str, mode: str) -> list[str]:
    """The artefacts a complete run of `mode` wrote, relative to the store."""
    return [pattern.format(run_id=run_id) for pattern, _ in RUN_ARTEFACTS.get(mode, RUN_ARTEFACTS["zs"])]


@dataclass(frozen=True)
class Problem:
    """One mismatch: the artefact (or table) concerned and what is wrong with it."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass(frozen=True)
class VerifyReport:
    checked_files: int
    checked_indices: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_index(store: Store, relpath: str, run_id: str, table_name: str) -> list[Problem]:
    from embedstore.vector_index import INDEXED_TABLES, index_ids, read_index

    if table_name not in INDEXED_TABLES:
        return [Problem(relpath, f"manifest names unknown table {table_name!r}")]
    try:
        ids = index_ids(read_index(store.resolve(relpath)))
    except IntegrityError as error:
        return [Problem(relpath, str(error).split(": ", 1)[-1])]
    with store.reader() as con:
        table_ids = queries.fetch_numpy(con, INDEXED_TABLES[table_name], run_id=run_id)
    expected = np.asarray(table_ids["sample_id"], dtype=np.int64)
    problems = []
    if len(ids) != len(expected):
        problems.append(
            Problem(relpath, f"{len(ids)} vectors but {table_name} has {len(expected)} rows for run {run_id}")
        )
    if len(np.unique(ids)) != len(ids):
        problems.append(Problem(relpath, f"{len(ids) - len(np.unique(ids))} duplicate sample ids"))
    only_index = np.setdiff1d(ids, expected)
    only_table = np.setdiff1d(expected, ids)
    if len(only_index):
        problems.append(Problem(relpath, f"{len(only_index)} sample ids not in {table_name} (e.g. {only_index[0]})"))
    if len(only_table):
        missing = f"{len(only_table)} {table_name} rows missing from the index (e.g. sample {only_table[0]})"
        problems.append(Problem(relpath, missing))
    return problems


def check_database(store: Store) -> list[Problem]:
    """Read every column of every table, so that DuckDB checks the checksum of every block holding
    table data (opening the file checks its headers and catalog). One problem per unreadable table."""
    import duckdb

    try:
        with store.reader() as con:
            tables = [row[0] for row in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
                "ORDER BY table_name").fetchall()]
    except (IntegrityError, duckdb.Error) as error:
        return [Problem(DB_NAME, f"cannot be read: {error}")]
    problems = []
    for table in tables:
        quoted = '"' + table.replace('"', '""') + '"'
        try:
            with store.reader() as con:  # a fresh connection: a failed read can leave DuckDB's unusable
                con.execute(f"SELECT count(*), bit_xor(hash(COLUMNS(*))) FROM {quoted}").fetchall()
        except (IntegrityError, duckdb.Error) as error:
            cause = error.__cause__ if isinstance(error, IntegrityError) and error.__cause__ else error
            problems.append(Problem(DB_NAME, f"table {table}: unreadable ({' '.join(str(cause).split())[:200]})"))
    return problems


def _missing_run_artefacts(complete_runs: list[tuple[str, str]], recorded: set[str]) -> list[Problem]:
    """A complete run whose artefacts are not in the manifest (a recorded one missing on disk is
    reported by the manifest check)."""
    problems = []
    for run_id, mode in complete_runs:
        for pattern, what in RUN_ARTEFACTS.get(mode, RUN_ARTEFACTS["zs"]):
            relpath = pattern.format(run_id=run_id)
            if relpath not in recorded:
                problems.append(Problem(relpath, f"missing: run {run_id} is complete but its {what} is not "
                                                 "in the manifest"))
    return problems


def _leftover_staging(store: Store, complete_runs: list[tuple[str, str]]) -> list[Problem]:
    """A complete run whose staging folder still holds files: its chunks were all committed (or the
    run would not be complete), so they are debris of an interrupted clean-up, never data to keep (an
    emptied folder is no problem)."""
    return [Problem(f"{STAGING_FOLDER}/{run_id}", f"staging folder left by run {run_id}, which is complete")
            for run_id, _ in complete_runs
            if any(path.is_file() for path in (store.path / STAGING_FOLDER / run_id).rglob("*"))]


def _unrecorded_files(store: Store, recorded: set[str]) -> list[Problem]:
    """Files the manifest does not know in its folders, and temporary files of interrupted writes
    (unless a writer runs now: they may be its writes in progress)."""
    from embedstore.locking import writer_running

    managed = [path for folder in MANAGED_FOLDERS for path in (store.path / folder).rglob("*")]
    problems = []
    for path in sorted({*managed, *store.path.glob("*")}):
        relpath = path.relative_to(store.path).as_posix()
        if (path.is_file() and relpath not in recorded and relpath not in STORE_FILES
                and not fnmatch.fnmatch(path.name, TEMPORARY_PATTERN)):
            problems.append(Problem(relpath, "file not recorded in the manifest"))
    nested = [path for folder in STORE_FOLDERS for path in (store.path / folder).rglob(TEMPORARY_PATTERN)]
    temporary = sorted(path for path in {*store.path.glob(TEMPORARY_PATTERN), *nested} if path.is_file())
    if (problems or temporary) and writer_running(store.path):
        # a running writer renames an artefact into place just before it records it in the manifest
        log.info("%d unrecorded and %d temporary file(s) not checked: a writer is running", len(problems),
                 len(temporary))
        return []
    return problems + [Problem(path.relative_to(store.path).as_posix(), TEMPORARY_FILE) for path in temporary]


def verify_store(store: Store) -> VerifyReport:
    """Check the database's every block, every artefact against the manifest, every index against
    its table, that no run has two report embeddings of one sample, that every complete run has its
    artefacts, and that no stray file is left."""
    damaged = check_database(store)
    if damaged:  # nothing read from a damaged database can be trusted; restore it first
        return VerifyReport(0, 0, tuple(damaged))
    with store.reader() as con:
        rows = queries.fetch(con, "manifest_files")
        complete_runs = [(str(r[0]), str(r[1])) for r in queries.fetch(con, "complete_run_modes")]
        repeated = queries.fetch(con, "duplicate_report_embeddings")
    problems: list[Problem] = [Problem(f"report_embeddings ({run_id})", f"{count} duplicate sample ids")
                               for run_id, count in repeated]
    n_indices = 0
    for relpath, kind, run_id, table_name, digest, size in rows:
        path = store.resolve(relpath)
        if not path.is_file():
            problems.append(Problem(relpath, "missing"))
            continue
        try:
            actual_size = path.stat().st_size
            actual_digest = sha256_file(path) if actual_size == size else None
        except OSError as error:
            problems.append(Problem(relpath, f"cannot be read ({error.strerror or error})"))
            continue
        matches = False
        if actual_size != size:
            problems.append(Problem(relpath, f"{actual_size} bytes, manifest says {size}"))
        elif actual_digest != digest:
            problems.append(Problem(relpath, "sha256 differs from the manifest (file changed)"))
        else:
            matches = True
        if kind == "faiss":
            n_indices += 1
            if matches:            # a changed file is reported, never parsed
                problems.extend(_check_index(store, relpath, run_id, table_name))
    recorded = {relpath for relpath, *_ in rows}
    problems += _missing_run_artefacts(complete_runs, recorded)
    problems += _leftover_staging(store, complete_runs)
    problems += _unrecorded_files(store, recorded)
    return VerifyReport(len(rows), n_indices, tuple(problems))


_VERIFY_HINT = "run `embedstore store verify` to see what changed"


def read_artefact(store: Store, relpath: str) -> bytes:
    """The bytes of a store artefact, returned only when their size and sha256 match the manifest.

    Every artefact embedstore reads back comes through here, and the bytes checked are the bytes then
    parsed, so a file replaced between the check and the read is not parsed either. A missing,
    unrecorded, non-regular or changed file raises IntegrityError naming it.
    """
    with store.reader() as con:
        row = queries.fetch_one(con, "artefact_sha256", path=relpath)
    path = store.resolve(relpath)
    if row is None:
        raise IntegrityError(f"{path}: not recorded in the store's manifest, so it is not read; {_VERIFY_HINT}")
    digest, size = str(row[0]), int(row[1])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)          # a FIFO put there must not block the read
    except OSError as error:
        raise IntegrityError(f"{path}: cannot be read ({error.strerror or error}); {_VERIFY_HINT}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise IntegrityError(f"{path}: not a regular file, so it is not read; {_VERIFY_HINT}")
        data = handle.read(size + 1)
    if len(data) != size:
        found = f"more than {size}" if len(data) > size else str(len(data))
        raise IntegrityError(f"{path}: {found} bytes but the manifest says {size}, so it is not read; {_VERIFY_HINT}")
    if hashlib.sha256(data).hexdigest() != digest:
        raise IntegrityError(f"{path}: sha256 differs from the manifest (the file was changed or replaced), "
                             f"so it is not read; {_VERIFY_HINT}")
    return data


def _refused_pickle(store: Store, relpath: str, error: Exception) -> IntegrityError:
    found = re.search(r"(?:Unsupported global: GLOBAL|global) ([\w.]+)", str(error))
    what = f"it would unpickle {found.group(1)}" if found else "it needs unpickling"
    return IntegrityError(f"{store.resolve(relpath)}: holds more than tensors and plain values ({what}); embedstore "
                          "never unpickles a file, so it is not read (a checkpoint from an earlier embedstore "
                          "must be made again: run that fine-tune in a new store)")


def load_tensors(store: Store, relpath: str) -> Any:
    """A torch artefact (checked by `read_artefact`), loaded with `weights_only=True` onto the CPU:
    tensors, dicts, lists and plain values only, so loading never runs code from the file."""
    import torch

    data = read_artefact(store, relpath)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refused_pickle(store, relpath, error) from None
    except (RuntimeError, ValueError, EOFError, OSError) as error:
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise IntegrityError(f"{store.resolve(relpath)}: not a readable torch file ({reason})") from None


def load_arrays(store: Store, relpath: str) -> dict[str, np.ndarray]:
    """An `.npz` artefact (checked by `read_artefact`) as plain arrays; object arrays, which would
    need unpickling, are refused (`allow_pickle=False`)."""
    data = read_artefact(store, relpath)
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("an .npy array, not an .npz archive")
        with archive:
            return {name: archive[name] for name in archive.files}
    except ValueError as error:
        if "pickle" in str(error) or "Object arrays" in str(error):
            raise _refused_pickle(store, relpath, error) from None
        raise IntegrityError(f"{store.resolve(relpath)}: not a readable .npz archive ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise IntegrityError(f"{store.resolve(relpath)}: not a readable .npz archive ({error})") from None
