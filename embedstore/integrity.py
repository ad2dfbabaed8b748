"""`store verify`: every manifest sha256 matches its file, every FAISS index equals its table."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from embedstore import queries
from embedstore.atomic import sha256_file
from embedstore.errors import IntegrityError
from embedstore.store import STORE_FILES, Store

log = logging.getLogger(__name__)

#: Folders whose every file must be in the manifest (beside the store's own files at the top level).
MANAGED_FOLDERS = ("indices", "artefacts")


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
        query = queries.load(INDEXED_TABLES[table_name]).text
        table_ids = con.execute(query, {"run_id": run_id}).fetchnumpy()
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


def verify_store(store: Store) -> VerifyReport:
    """Check every artefact against the manifest and every index against its table."""
    with store.reader() as con:
        rows = con.execute(queries.load("manifest_files").text).fetchall()
    problems: list[Problem] = []
    n_indices = 0
    for relpath, kind, run_id, table_name, digest, size in rows:
        path = store.resolve(relpath)
        if not path.is_file():
            problems.append(Problem(relpath, "missing"))
            continue
        actual_size = path.stat().st_size
        if actual_size != size:
            problems.append(Problem(relpath, f"{actual_size} bytes, manifest says {size}"))
        elif sha256_file(path) != digest:
            problems.append(Problem(relpath, "sha256 differs from the manifest (file changed)"))
        if kind == "faiss":
            n_indices += 1
            problems.extend(_check_index(store, relpath, run_id, table_name))
    recorded = {relpath for relpath, *_ in rows}
    managed = [path for folder in MANAGED_FOLDERS for path in (store.path / folder).rglob("*")]
    for path in sorted([*managed, *store.path.glob("*")]):
        relpath = path.relative_to(store.path).as_posix()
        if path.is_file() and relpath not in recorded and relpath not in STORE_FILES and not path.name.endswith(".tmp"):
            problems.append(Problem(relpath, "file not recorded in the manifest"))
    return VerifyReport(len(rows), n_indices, tuple(problems))
