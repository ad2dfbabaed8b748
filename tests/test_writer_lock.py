"""One writer at a time, refused at once with the holder named; readers keep working."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from embedstore.errors import StoreLockedError
from embedstore.store import Store

HOLD_WRITER = textwrap.dedent(
    """
    import sys, time
    from embedstore.store import Store
    with Store.open(sys.argv[1]).writer("long extraction") as w:
        with w.transaction() as con:
            con.execute("INSERT INTO meta VALUES ('holder', 'here')")
        print("ready", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)

HOLD_DATABASE = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1] + "/store.duckdb")
    print("ready", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
    """
)


@contextmanager
def _holding(script: str, store: Store, seconds: float) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", script, str(store.path), str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_second_writer_process_is_refused_at_once_naming_the_holder(tmp_store: Store, run_cli) -> None:
    with _holding(HOLD_WRITER, tmp_store, 60) as holder:
        started = time.monotonic()
        result = run_cli("store", "init", "--store", str(tmp_store.path))
        waited = time.monotonic() - started
        assert result.returncode == 3
        assert f"pid {holder.pid}" in result.stderr and "long extraction" in result.stderr
        assert str(tmp_store.path) in result.stderr
        assert result.stderr.strip().count("\n") == 0
        assert waited < 5
        # Readers are not locked out while the writer works between its commits.
        reader = run_cli("sql", "SELECT value FROM meta WHERE key = 'holder'", "--format", "csv",
                         "--store", str(tmp_store.path))
        assert reader.returncode == 0 and reader.stdout.splitlines() == ["value", "here"]
        with pytest.raises(StoreLockedError):
            Store.init(tmp_store.path)
    # Once the holder is gone (even killed), the lock is free again.
    Store.init(tmp_store.path)


def test_reader_waits_out_a_short_commit(tmp_store: Store) -> None:
    with _holding(HOLD_DATABASE, tmp_store, 1.0) as holder:
        with tmp_store.reader() as con:
            assert con.execute("SELECT count(*) FROM label_names").fetchone() == (14,)
        assert holder.wait(timeout=10) == 0


def test_lock_file_forgets_its_holder_after_release(tmp_store: Store) -> None:
    with tmp_store.writer("x"):
        assert str(os.getpid()) in (tmp_store.path / "writer.lock").read_text()
    assert (tmp_store.path / "writer.lock").read_text() == ""
