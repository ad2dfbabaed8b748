"""Hostile stores: tampered indices, damaged databases, stray temporary files, missing artefacts of
complete runs, and broken environments (disk full, read-only, foreign lock, a file for a store).

Every case ends in one line naming the path and the cause, a documented exit code, and a store that
is as it was. Tests may run as root, where chmod does not stop writes: those cases are simulated by
patching the failing call in-process (and run for real only when not root).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedstore.errors import IntegrityError, StoreEnvironmentError
from embedstore.integrity import TEMPORARY_FILE, check_database, required_artefacts, verify_store
from embedstore.store import Store
from embedstore.vector_index import index_relpath, write_index
from tests.conftest import CliResult


def _permissions_enforced() -> bool:
    """Whether file modes stop this process (not so for root, unless its capabilities were dropped)."""
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o555)
        try:
            Path(folder, "probe").touch()
        except PermissionError:
            return True
        finally:
            os.chmod(folder, 0o755)
    return False


PERMISSIONS_ENFORCED = _permissions_enforced()

#: DuckDB's file layout (storage version of duckdb 2.x): three 4 KiB headers, then fixed-size blocks.
DUCKDB_HEADER_BYTES = 3 * 4096


# ---------------------------------------------------------------------------------------------
# Fixtures: one store with a complete zs, lp and ft run, built once and copied per test
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, synthetic_dir: Path, native_model: str) -> dict[str, Any]:
    from embedstore.extract import ExtractConfig, extract
    from embedstore.ingest import IngestConfig, ingest

    root = tmp_path_factory.mktemp("hostile-store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDSTORE_CACHE", str(tmp_path_factory.getbasetemp() / "embedstore-cache"))
        store, _ = Store.init(root / "store")
        ingest(store, IngestConfig(path=synthetic_dir, name="syn"))
        runs = {mode: extract(store, ExtractConfig(mode=mode, model=native_model, data="syn", protocol="study",
                                                   epochs=1, encode_batch_size=64)).run_id
                for mode in ("zs", "lp", "ft")}
    with store.reader() as con:
        sample = con.execute("SELECT min(sample_id) FROM samples").fetchall()[0][0]
    return {"path": store.path, "runs": runs, "sample": int(sample)}


@pytest.fixture
def store(pristine: dict[str, Any], tmp_path: Path) -> Store:
    """A private copy of the pristine store that a test may damage."""
    shutil.copytree(pristine["path"], tmp_path / "store")
    return Store(tmp_path / "store")


@pytest.fixture
def inprocess(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run the CLI's `main` in this process (so a test's patches apply); returns code, stdout, stderr."""
    from embedstore.cli.app import main

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["embedstore", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main()
        out = capsys.readouterr()
        code = exited.value.code
        return CliResult(code if isinstance(code, int) else 1, out.out, out.err)

    return run


def one_line_error(result: CliResult, code: int, *needles: str) -> None:
    """The command failed with one error line (after any progress lines) on stderr, the given exit
    code, and no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and lines, result.stderr
    errors = [line for line in lines if line.startswith("embedstore: error: ")]
    assert errors == [lines[-1]], result.stderr
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])


def snapshot(store: Store) -> dict[str, bytes]:
    """Every file of the store but the lock, by relative path (what "the store is intact" compares)."""
    return {p.relative_to(store.path).as_posix(): p.read_bytes() for p in sorted(store.path.rglob("*"))
            if p.is_file() and p.name != "writer.lock"}


def flip(path: Path, offset: int, data: bytes) -> None:
    """XOR `data` into the file at `offset`."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        old = handle.read(len(data))
        handle.seek(offset)
        handle.write(bytes(a ^ b for a, b in zip(old, data, strict=True)))


def used_blocks(store: Store, tables: tuple[str, ...] | None = None) -> tuple[int, list[int]]:
    """The database's block size and the blocks that hold data of `tables` (default: every table)."""
    con = duckdb.connect(str(store.db_path), read_only=True)
    try:
        block_size = int(con.execute("SELECT block_size FROM pragma_database_size()").fetchall()[0][0])
        blocks: set[int] = set()
        for (table,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            if tables is None or table in tables:
                rows = con.execute("SELECT block_id FROM pragma_storage_info(?) WHERE block_id >= 0",
                                   [table]).fetchall()
                blocks.update(int(r[0]) for r in rows)
    finally:
        con.close()
    return block_size, sorted(blocks)


def problems(store: Store) -> list[str]:
    return [str(p) for p in verify_store(store).problems]


# ---------------------------------------------------------------------------------------------
# Item 7: a tampered FAISS index is never used
# ---------------------------------------------------------------------------------------------

def _tamper_index(store: Store, run_id: str) -> Path:
    """Flip 16 bytes in the middle of the index's vectors: FAISS still reads it, the figures change."""
    path = store.resolve(index_relpath(run_id))
    flip(path, path.stat().st_size // 2, bytes(range(1, 17)))
    return path


def test_tampered_index_is_refused_by_neighbors_and_never_read_by_analyses(store: Store, pristine: dict[str, Any],
                                                                         inprocess) -> None:
    """`analyze` searches neighbours from the embeddings table (never the stored index file), so a
    tampered index cannot change a figure; `neighbors` reads the file and refuses it, and verify flags it."""
    from embedstore.analyses import neighbors
    from embedstore.analyses.common import AnalysisOptions
    from embedstore.analyses.rundata import load_run

    zs = pristine["runs"]["zs"]
    options = AnalysisOptions(protocol="study", bootstrap=0)
    untouched = neighbors.compute(load_run(store, zs), options)
    path = _tamper_index(store, zs)
    before = snapshot(store)
    assert neighbors.compute(load_run(store, zs), options) == untouched
    with pytest.raises(IntegrityError, match="sha256"):
        neighbors.nearest(store, zs, sample=pristine["sample"], k=3)
    neighbors = inprocess("neighbors", "--run", zs, "--sample", str(pristine["sample"]), "--store", str(store.path))
    one_line_error(neighbors, 5, str(path))
    verify = inprocess("store", "verify", "--store", str(store.path))
    assert verify.returncode == 5 and f"MISMATCH {index_relpath(zs)}: sha256 differs" in verify.stderr
    assert snapshot(store) == before


# ---------------------------------------------------------------------------------------------
# Item 12: verify reads every block, reports temporary files and runs without their artefacts
# ---------------------------------------------------------------------------------------------

def test_overwritten_database_tail_is_found_by_verify_and_no_command_tracebacks(
        store: Store, pristine: dict[str, Any], run_cli, inprocess) -> None:
    block_size, blocks = used_blocks(store)
    size = store.db_path.stat().st_size
    assert (size - DUCKDB_HEADER_BYTES) // block_size - 1 in blocks  # the last block holds table data
    with open(store.db_path, "r+b") as handle:
        handle.seek(size - 4096)
        handle.write(np.random.default_rng(0).bytes(4096))
    verify = run_cli("store", "verify", "--store", str(store.path))
    assert verify.returncode == 5, verify.stdout + verify.stderr
    assert "MISMATCH store.duckdb: table " in verify.stderr and "Traceback" not in verify.stderr
    damaged = next(p for p in problems(store) if p.startswith("store.duckdb: table "))
    table = damaged.removeprefix("store.duckdb: table ").split(":")[0]
    one_line_error(inprocess("sql", f"SELECT * FROM {table}", "--store", str(store.path)), 5, str(store.db_path))
    zs = pristine["runs"]["zs"]
    for args in (("neighbors", "--run", zs, "--sample", str(pristine["sample"])),
                 ("analyze", "--bootstrap", "0", "--protocol", "study"), ("store", "info")):
        result = inprocess(*args, "--store", str(store.path))
        if result.returncode:  # whether a command reads the damaged table depends on which it is
            one_line_error(result, 5, str(store.db_path), "damaged")


def test_damaged_embeddings_block_is_one_line_for_neighbors_and_analyze(
        store: Store, pristine: dict[str, Any], run_cli, inprocess) -> None:
    block_size, blocks = used_blocks(store, ("image_embeddings",))
    flip(store.db_path, DUCKDB_HEADER_BYTES + blocks[-1] * block_size + block_size // 2, b"\x55" * 8)
    before = snapshot(store)
    zs = pristine["runs"]["zs"]
    neighbors = run_cli("neighbors", "--run", zs, "--sample", str(pristine["sample"]), "--store", str(store.path))
    one_line_error(neighbors, 5, str(store.db_path), "damaged", "store verify")
    analyze = inprocess("analyze", "--bootstrap", "0", "--protocol", "study", "--store", str(store.path))
    one_line_error(analyze, 5, str(store.db_path), "damaged")
    assert snapshot(store) == before
    assert any(p.startswith("store.duckdb: table image_embeddings: unreadable (Corrupt database file")
               for p in problems(store))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_changed_word_of_a_used_block_is_found_by_verify(store: Store, data: st.DataObject) -> None:
    """DuckDB's block checksum XORs a hash of each 8-byte word, so a change to one word is always
    seen (two changed words can cancel out: that is DuckDB's limit, not verify's)."""
    block_size, blocks = used_blocks(store)
    block = data.draw(st.sampled_from(blocks), label="block")
    word = data.draw(st.integers(0, block_size // 8 - 1), label="word")
    mask = data.draw(st.binary(min_size=8, max_size=8).filter(any), label="mask")
    offset = DUCKDB_HEADER_BYTES + block * block_size + 8 * word
    flip(store.db_path, offset, mask)
    try:
        found = [str(p) for p in check_database(store)]
    finally:
        flip(store.db_path, offset, mask)  # the same XOR again restores the block
    assert found and all(p.startswith("store.duckdb: table ") for p in found), found


def test_truncated_database_is_found_by_verify_and_refused_everywhere(store: Store, run_cli, inprocess) -> None:
    os.truncate(store.db_path, store.db_path.stat().st_size // 2)
    found = problems(store)
    assert found and all(p.startswith("store.duckdb: ") for p in found), found
    verify = run_cli("store", "verify", "--store", str(store.path))
    assert verify.returncode == 5 and "Traceback" not in verify.stderr
    info = inprocess("store", "info", "--store", str(store.path))
    one_line_error(info, 5, str(store.db_path))


@pytest.mark.parametrize("content", [b"", b"not a database", bytes(range(256)) * 400], ids=["empty", "text", "binary"])
def test_garbage_database_is_one_line_for_every_command(store: Store, content: bytes, run_cli, inprocess) -> None:
    store.db_path.write_bytes(content)
    verify = run_cli("store", "verify", "--store", str(store.path))
    one_line_error(verify, 5, str(store.db_path), "not a valid DuckDB database file")
    for args in (("store", "init"), ("store", "info"), ("sql", "SELECT 1"), ("data", "stats", "syn")):
        one_line_error(inprocess(*args, "--store", str(store.path)), 5, str(store.db_path))
    assert store.db_path.read_bytes() == content


def test_stray_temporary_files_are_reported(store: Store, pristine: dict[str, Any]) -> None:
    lp = pristine["runs"]["lp"]
    strays = [f"indices/.{lp}.image_embeddings.faiss.k2j3.tmp", f"artefacts/{lp}/.head.npz.x1.tmp", ".half.x.tmp"]
    for relpath in strays:
        store.resolve(relpath).write_bytes(b"partial")
    found = problems(store)
    for relpath in strays:
        assert f"{relpath}: {TEMPORARY_FILE}" in found


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from embedstore.store import Store
    with Store(sys.argv[1]).writer("extract in progress"):
        print("ready", flush=True)
        time.sleep(60)
    """
)


def test_temporary_files_of_a_running_writer_are_not_mismatches(store: Store) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        (store.path / "indices" / ".x.faiss.abc.tmp").write_bytes(b"in flight")
        assert verify_store(store).ok, problems(store)
    finally:
        holder.kill()
        holder.wait()
    assert problems(store) == [f"indices/.x.faiss.abc.tmp: {TEMPORARY_FILE}"]


@pytest.mark.parametrize("mode", ["zs", "lp", "ft"])
def test_complete_run_without_its_artefacts_fails_verify(store: Store, pristine: dict[str, Any], mode: str,
                                                         run_cli) -> None:
    run_id = pristine["runs"][mode]
    for relpath in required_artefacts(run_id, mode):
        store.resolve(relpath).unlink()
        con = duckdb.connect(str(store.db_path))
        con.execute("DELETE FROM manifest WHERE path = ?", [relpath])
        con.close()
    verify = run_cli("store", "verify", "--store", str(store.path))
    assert verify.returncode == 5
    for relpath in required_artefacts(run_id, mode):
        assert f"MISMATCH {relpath}: missing: run {run_id} is complete but its" in verify.stderr


def test_required_artefacts_per_mode() -> None:
    assert required_artefacts("r", "zs") == ["indices/r.image_embeddings.faiss"]
    assert required_artefacts("r", "lp") == ["indices/r.image_embeddings.faiss", "artefacts/r/head.npz"]
    assert required_artefacts("r", "ft") == ["indices/r.image_embeddings.faiss", "artefacts/r/finetuned.pt"]


# ---------------------------------------------------------------------------------------------
# Item 16: broken environments are one line naming the path, and lose nothing
# ---------------------------------------------------------------------------------------------

def test_store_init_on_a_file_is_one_line(tmp_path: Path, run_cli, inprocess) -> None:
    target = tmp_path / "somefile"
    target.write_text("keep me")
    result = run_cli("store", "init", "--store", str(target))
    one_line_error(result, 6, str(target), "not a folder")
    info = inprocess("store", "info", "--store", str(target))
    one_line_error(info, 6, str(target), "not a folder")
    inside = inprocess("store", "init", "--store", str(target / "sub"))
    one_line_error(inside, 6, str(target), "Not a directory")
    assert target.read_text() == "keep me"


def test_lock_file_that_is_a_folder_is_one_line(store: Store, inprocess) -> None:
    lock = store.path / "writer.lock"
    lock.unlink()
    lock.mkdir()
    result = inprocess("store", "init", "--store", str(store.path))
    one_line_error(result, 6, str(lock), "Is a directory")


def _refuse_lock(cause: int) -> Callable[..., int]:
    real_open = os.open

    def fake(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith("writer.lock"):
            raise OSError(cause, os.strerror(cause), str(path))
        return real_open(path, flags, *args, **kwargs)

    return fake


@pytest.mark.parametrize("cause", [errno.EACCES, errno.EROFS])
def test_foreign_or_read_only_lock_is_one_line(store: Store, cause: int, monkeypatch: pytest.MonkeyPatch,
                                               inprocess) -> None:
    import embedstore.locking

    before = snapshot(store)
    monkeypatch.setattr(embedstore.locking.os, "open", _refuse_lock(cause))
    with pytest.raises(StoreEnvironmentError, match=os.strerror(cause)):
        store.writer("test").__enter__()
    one_line_error(inprocess("store", "init", "--store", str(store.path)), 6, str(store.path / "writer.lock"),
                   os.strerror(cause))
    monkeypatch.undo()
    assert snapshot(store) == before and verify_store(store).ok


@pytest.mark.skipif(not PERMISSIONS_ENFORCED, reason="root ignores file permissions; the patched tests above cover it")
def test_real_foreign_lock_and_read_only_store(store: Store, run_cli, inprocess) -> None:
    lock = store.path / "writer.lock"
    lock.chmod(0)
    one_line_error(run_cli("store", "init", "--store", str(store.path)), 6, str(lock), "Permission denied")
    lock.chmod(0o644)
    before = snapshot(store)
    folders = [store.path, *(p for p in store.path.rglob("*") if p.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        verify = inprocess("store", "verify", "--store", str(store.path))
        assert verify.returncode == 0, verify.stderr  # readers need no write access
        with store.writer("test") as writer:
            with pytest.raises(StoreEnvironmentError, match="Permission denied") as refused:
                writer.write_artefact("indices/x.faiss", "faiss", lambda handle: handle.write(b"x"))
            assert str(store.path / "indices" / "x.faiss") in str(refused.value)
            with pytest.raises(StoreEnvironmentError, match=str(store.db_path)), writer.transaction() as con:
                con.execute("INSERT INTO meta VALUES ('x', 'y')")
    finally:
        for folder in folders:
            folder.chmod(0o755)
    assert snapshot(store) == before and verify_store(store).ok


class _FailingCommit:
    """A DuckDB connection whose commit fails as on a full disk (the real one rolls back)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
        self._con, self._db_path = con, db_path

    def commit(self) -> None:
        raise duckdb.TransactionException(f'TransactionContext Error: Failed to commit: Could not write file '
                                          f'"{self._db_path}.wal": No space left on device')

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


@pytest.fixture
def disk_full_on_commit(store: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real_connect = duckdb.connect

    def connect(database: str, read_only: bool = False, **kwargs: Any) -> Any:
        con = real_connect(database, read_only=read_only, **kwargs)
        return con if read_only else _FailingCommit(con, store.db_path)

    monkeypatch.setattr(duckdb, "connect", connect)
    yield
    monkeypatch.undo()


def test_disk_full_while_writing_an_index_loses_nothing(store: Store, pristine: dict[str, Any],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import embedstore.store

    zs = pristine["runs"]["zs"]
    before = snapshot(store)

    def full_disk(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        return open("/dev/full", mode, *args, **kwargs) if "w" in mode else open(path, mode, *args, **kwargs)

    monkeypatch.setattr(embedstore.store, "open", full_disk, raising=False)  # where artefacts are opened
    with store.writer("test") as writer, pytest.raises(StoreEnvironmentError) as refused:
        write_index(writer, zs, np.arange(3), np.ones((3, 4), dtype=np.float32))
    assert str(store.resolve(index_relpath(zs))) in str(refused.value)
    assert "No space left on device" in str(refused.value)
    monkeypatch.undo()
    assert snapshot(store) == before and verify_store(store).ok


def test_disk_full_while_writing_an_artefact_is_one_line(store: Store, inprocess,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import embedstore.info

    before = snapshot(store)

    def write_and_fail(handle: Any) -> None:
        handle.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with store.writer("test") as writer, pytest.raises(StoreEnvironmentError, match="No space left on device"):
        writer.write_artefact("artefacts/x/head.npz", "head", write_and_fail)
    assert snapshot(store) == before

    def stray(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EIO, os.strerror(errno.EIO), "/somewhere/odd")

    monkeypatch.setattr(embedstore.info, "store_info", stray)
    result = inprocess("store", "info", "--store", str(store.path))
    one_line_error(result, 1, "/somewhere/odd", "Input/output error", "bug")


def test_disk_full_on_commit_is_one_line_and_rolls_back(store: Store, inprocess, disk_full_on_commit: None) -> None:
    with store.reader() as con:
        before = con.execute("SELECT count(*) FROM meta").fetchall()
    with store.writer("test") as writer, pytest.raises(StoreEnvironmentError) as refused:
        with writer.transaction() as con:
            con.execute("INSERT INTO meta VALUES ('x', 'y')")
    assert "No space left on device" in str(refused.value) and str(store.db_path) in str(refused.value)
    with store.reader() as con:
        assert con.execute("SELECT count(*) FROM meta").fetchall() == before
    result = inprocess("store", "init", "--store", str(store.path))
    one_line_error(result, 6, str(store.db_path), "No space left on device")


def test_read_only_database_file_refuses_writers_in_one_line(store: Store, monkeypatch: pytest.MonkeyPatch,
                                                             inprocess) -> None:
    real_connect = duckdb.connect

    def connect(database: str, read_only: bool = False, **kwargs: Any) -> Any:
        if not read_only:
            raise duckdb.IOException(f'IO Error: Cannot open file "{database}": Permission denied')
        return real_connect(database, read_only=read_only, **kwargs)

    monkeypatch.setattr(duckdb, "connect", connect)
    one_line_error(inprocess("store", "init", "--store", str(store.path)), 6, str(store.db_path), "Permission denied")
    verify = inprocess("store", "verify", "--store", str(store.path))
    assert verify.returncode == 0, verify.stderr


def test_unexpected_errors_keep_their_traceback_on_request(store: Store, inprocess,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import embedstore.info

    def stray(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(embedstore.info, "store_info", stray)
    monkeypatch.setenv("EMBEDSTORE_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["embedstore", "store", "info", "--store", str(store.path)])
    from embedstore.cli.app import main

    with pytest.raises(OSError):
        main()


def test_the_next_writer_removes_temporary_files_of_a_killed_one(store: Store, pristine: dict[str, Any]) -> None:
    lp = pristine["runs"]["lp"]
    strays = [f"indices/.{lp}.image_embeddings.faiss.k2j3.tmp", f"artefacts/{lp}/.head.npz.x1.tmp",
              f"staging/{lp}/.chunk-1-2.parquet.y.tmp", ".store.duckdb.z.tmp"]
    for relpath in strays:
        store.resolve(relpath).parent.mkdir(parents=True, exist_ok=True)
        store.resolve(relpath).write_bytes(b"partial")
    with store.writer("next"):
        pass
    assert not any(store.resolve(relpath).exists() for relpath in strays)
    assert verify_store(store).ok, problems(store)
