"""Hostile and careless use of the CLI and of one store by several processes: usage errors are one
line with exit 2, Ctrl-C says how to resume, a second writer is refused before any heavy work, and
a reader never makes a writer fail (the writer stages what it cannot commit and goes on)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import embedstore.store as store_module
from embedstore.errors import InputError
from embedstore.extract import ExtractConfig, extract
from embedstore.integrity import verify_store
from embedstore.store import Store

HOLD_WRITER = textwrap.dedent(
    """
    import sys, time
    from embedstore.store import Store
    with Store.open(sys.argv[1]).writer("long extraction") as w:
        print("ready", flush=True)
        time.sleep(60)
    """
)

#: A reader that keeps the database open until the file named by argv[2] exists (the test kills it otherwise).
HOLD_READER = textwrap.dedent(
    """
    import os, sys, time
    from embedstore.store import Store
    with Store(sys.argv[1]).reader() as con:
        con.execute("SELECT count(*) FROM samples").fetchall()
        print("ready", flush=True)
        while not os.path.exists(sys.argv[2]):
            time.sleep(0.05)
    """
)


@contextmanager
def _process(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- usage errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, named", [
    (["extract"], "--mode"),                                   # missing option
    (["store", "info", "--nope"], "--nope"),                   # unknown option
    (["gradcam", "--run", "x", "--n", "abc", "--out", "o"], "--n"),  # malformed value
    (["bogus"], "bogus"),                                      # unknown command
    (["sql", "--format"], "--format"),                         # option without its value
    (["neighbors", "--run", "x", "-k", "abc"], "-k"),
])
def test_usage_errors_are_one_line_with_exit_2(run_cli, args: list[str], named: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    line = _one_line(result.stderr)
    assert line.startswith("embedstore: error:") and named in line


def test_a_bare_group_prints_its_help(run_cli) -> None:
    result = run_cli("store")
    assert result.returncode == 0 and "init" in result.stdout and result.stderr == ""


def test_negative_neighbour_count_is_refused(tmp_store: Store, run_cli) -> None:
    from tests.conftest import add_embedding_run

    add_embedding_run(tmp_store)
    result = run_cli("neighbors", "--run", "run-a", "--sample", "100", "-k", "-3", "--store", str(tmp_store.path))
    assert result.returncode == 2
    assert "-k -3" in _one_line(result.stderr)


# -- a second writer is refused before any heavy work ---------------------------------------------

def test_second_writer_is_refused_before_loading_dataset_or_model(tmp_store: Store, tmp_path: Path,
                                                                  run_cli) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.csv").write_text("path,Cardiomegaly\nmissing.png,1\n")
    with _process(HOLD_WRITER, str(tmp_store.path)) as holder:
        # Neither the dataset nor the model exists: only a refusal that comes first names the holder.
        refused = run_cli("extract", "--mode", "zs", "--model", f"local-dir:{tmp_path / 'no-model'}",
                          "--data", "no-such-data", "--store", str(tmp_store.path))
        assert refused.returncode == 3
        assert f"pid {holder.pid}" in _one_line(refused.stderr)
        # The manifest's image is missing: only a refusal before validation names the holder.
        refused = run_cli("ingest", str(bad / "manifest.csv"), "--name", "x", "--store", str(tmp_store.path))
        assert refused.returncode == 3
        assert f"pid {holder.pid}" in refused.stderr and "missing.png" not in refused.stderr


def test_ft_with_one_epoch_under_multilabel_warns(tmp_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    config = ExtractConfig(mode="ft", model="demo", data="absent", protocol="multilabel", epochs=1)
    with caplog.at_level(logging.WARNING, logger="embedstore"), pytest.raises(InputError):
        extract(tmp_store, config)
    assert any("warm-up" in record.getMessage() and "2 or more" in record.getMessage() for record in caplog.records)


# -- a writer never fails because of readers ------------------------------------------------------

def test_writer_waits_for_a_reader_and_names_it(tmp_store: Store, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(store_module, "WRITER_NOTICE_SECONDS", 0.2)
    release = tmp_path / "release"

    class ReleaseOnNotice(logging.Handler):
        """The reader is let go only once the writer has said it waits for it."""

        def emit(self, record: logging.LogRecord) -> None:
            if "waiting" in record.getMessage():
                release.touch()

    handler = ReleaseOnNotice()
    logging.getLogger("embedstore").addHandler(handler)
    guard = threading.Timer(300, release.touch)  # only so that a missing notice fails below instead of hanging
    guard.start()
    try:
        with _process(HOLD_READER, str(tmp_store.path), str(release)) as reader:
            with caplog.at_level(logging.WARNING, logger="embedstore"), tmp_store.writer("test") as writer:
                with writer.transaction() as con:
                    con.execute("INSERT INTO meta VALUES ('after', 'reader')")
            messages = " ".join(record.getMessage() for record in caplog.records)
    finally:
        guard.cancel()
        logging.getLogger("embedstore").removeHandler(handler)
    assert f"pid {reader.pid}" in messages and "waiting" in messages
    with tmp_store.reader() as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'after'").fetchall() == [("reader",)]


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 small images: long enough an extraction to interrupt or read during."""
    from embedstore.synthetic import SampleConfig, write_sample

    out = tmp_path_factory.mktemp("big") / "iuxray"
    write_sample(SampleConfig(out=out, n=240, size=64, workers=1))
    return out


def _count(store: Store) -> int:
    try:
        with store.reader(wait_seconds=0.5) as con:
            return int(con.execute("SELECT count(*) FROM image_embeddings").fetchall()[0][0])
    except Exception:  # noqa: BLE001 — the writer may hold the file for a moment
        return 0


def _extract_command(store: Store, model: str) -> list[str]:
    return [sys.executable, "-m", "embedstore.cli", "extract", "--mode", "zs", "--model", model, "--data", "big",
            "--encode-batch-size", "2", "--chunk-size", "2", "--workers", "1", "--store", str(store.path)]


def _wait_for(condition, seconds: float = 240) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_long_reader_never_fails_the_extraction(tmp_store: Store, tmp_path: Path, big_dir: Path,
                                                  native_model: str) -> None:
    from embedstore.embeddings import staged_files, staging_folder
    from embedstore.ingest import IngestConfig, ingest

    ingest(tmp_store, IngestConfig(path=big_dir, name="big"))
    release = tmp_path / "release"
    log_path = tmp_path / "stderr.txt"
    with open(log_path, "w") as log_file:  # a file, not a pipe: the progress bar would fill a pipe and block
        proc = subprocess.Popen(_extract_command(tmp_store, native_model), stdout=subprocess.DEVNULL,
                                stderr=log_file, text=True)
    try:
        assert _wait_for(lambda: _count(tmp_store) >= 4)
        with tmp_store.reader() as con:
            (run_id,), = con.execute("SELECT run_id FROM runs").fetchall()
        with _process(HOLD_READER, str(tmp_store.path), str(release)):
            # The extraction keeps encoding while the reader holds the database: it stages chunks.
            assert _wait_for(lambda: len(staged_files(staging_folder(tmp_store.path, run_id))) >= 3)
            release.touch()
        proc.wait(timeout=300)
    finally:
        proc.kill()
    stderr = log_path.read_text()
    assert proc.returncode == 0, stderr
    assert "staged" in stderr
    with tmp_store.reader() as con:
        assert con.execute("SELECT status FROM runs").fetchall() == [("complete",)]
        assert con.execute("SELECT count(*), count(DISTINCT sample_id) FROM image_embeddings").fetchall() == [(240, 240)]
    assert not staging_folder(tmp_store.path, run_id).exists()
    assert verify_store(tmp_store).ok


@pytest.mark.slow
def test_ctrl_c_on_extract_says_how_to_resume(tmp_store: Store, tmp_path: Path, big_dir: Path, native_model: str,
                                              run_cli) -> None:
    from embedstore.ingest import IngestConfig, ingest

    ingest(tmp_store, IngestConfig(path=big_dir, name="big"))
    command = _extract_command(tmp_store, native_model)
    log_path = tmp_path / "stderr.txt"
    # Ctrl-C in a terminal reaches the whole foreground process group (decoding workers too).
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file, text=True,
                                start_new_session=True)
    try:
        assert _wait_for(lambda: _count(tmp_store) >= 4)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    stderr = log_path.read_text()
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    assert "--resume" in stderr.strip().splitlines()[-1]
    resumed = run_cli(*command[3:], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    with tmp_store.reader() as con:
        assert con.execute("SELECT count(*), count(DISTINCT sample_id) FROM image_embeddings").fetchall() == [(240, 240)]
    assert verify_store(tmp_store).ok
