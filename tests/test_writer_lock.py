"""One writer at a time, refused at once with the holder named; readers keep working."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import embedstore.store as store_module
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

#: Holds the database open (as a writer's commit does) until the file named by argv[2] exists.
HOLD_DATABASE = textwrap.dedent(
    """
    import os, sys, time, duckdb
    con = duckdb.connect(sys.argv[1] + "/store.duckdb")
    print("ready", flush=True)
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.02)
    con.close()
    """
)

#: The real CLI (`embedstore ARGS...` after argv[1]) with its lock attempts and sleeps counted into the
#: JSON file named by argv[1] at exit: a refusal "at once" is one lock attempt and no sleep, whatever the clock says.
COUNTING_CLI = textwrap.dedent(
    """
    import atexit, fcntl, json, runpy, sys, time
    counts = {"lockf": 0, "sleep": 0}
    real_lockf, real_sleep = fcntl.lockf, time.sleep
    def lockf(*args):
        counts["lockf"] += 1
        return real_lockf(*args)
    def sleep(seconds):
        counts["sleep"] += 1
        real_sleep(seconds)
    fcntl.lockf, time.sleep = lockf, sleep
    report = sys.argv.pop(1)
    atexit.register(lambda: open(report, "w").write(json.dumps(counts)))
    runpy.run_module("embedstore.cli", run_name="__main__")
    """
)


@contextmanager
def _holding(script: str, store: Store, arg: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", script, str(store.path), arg],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_second_writer_process_is_refused_at_once_naming_the_holder(tmp_store: Store, tmp_path: Path, run_cli,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    counts_path = tmp_path / "counts.json"
    with _holding(HOLD_WRITER, tmp_store, "60") as holder:
        result = subprocess.run([sys.executable, "-c", COUNTING_CLI, str(counts_path), "store", "init",
                                 "--store", str(tmp_store.path)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 3
        assert f"pid {holder.pid}" in result.stderr and "long extraction" in result.stderr
        assert str(tmp_store.path) in result.stderr
        assert result.stderr.strip().count("\n") == 0
        # At once: one attempt at the lock, no retry and no wait.
        assert json.loads(counts_path.read_text()) == {"lockf": 1, "sleep": 0}
        # Readers are not locked out while the writer works between its commits.
        reader = run_cli("sql", "SELECT value FROM meta WHERE key = 'holder'", "--format", "csv",
                         "--store", str(tmp_store.path))
        assert reader.returncode == 0 and reader.stdout.splitlines() == ["value", "here"]
        # The same from Python: refused on the first attempt, the database never opened.
        attempts: list[int] = []
        real_lockf = fcntl.lockf

        def counting_lockf(fd: int, cmd: int, *args: Any) -> Any:
            attempts.append(cmd)
            return real_lockf(fd, cmd, *args)

        with monkeypatch.context() as patch:
            patch.setattr(fcntl, "lockf", counting_lockf)
            patch.setattr(store_module, "_connect", lambda *a, **k: pytest.fail("opened the database"))
            with pytest.raises(StoreLockedError):
                Store.init(tmp_store.path)
        assert attempts == [fcntl.LOCK_EX | fcntl.LOCK_NB]
    # Once the holder is gone (even killed), the lock is free again.
    Store.init(tmp_store.path)


def test_reader_waits_out_a_short_commit(tmp_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = tmp_path / "release"
    retries: list[float] = []

    def sleep(seconds: float) -> None:
        """The reader found the database held and waits before retrying: only now is the holder let go."""
        retries.append(seconds)
        release.touch()
        time.sleep(seconds)

    monkeypatch.setattr(store_module, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    with _holding(HOLD_DATABASE, tmp_store, str(release)) as holder:
        with tmp_store.reader() as con:
            assert con.execute("SELECT count(*) FROM label_names").fetchone() == (14,)
        assert retries  # it did wait, and was not refused
        assert holder.wait(timeout=60) == 0


def test_lock_file_forgets_its_holder_after_release(tmp_store: Store) -> None:
    with tmp_store.writer("x"):
        assert str(os.getpid()) in (tmp_store.path / "writer.lock").read_text()
    assert (tmp_store.path / "writer.lock").read_text() == ""
