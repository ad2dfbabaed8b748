"""The store's single-writer lock: a POSIX record lock (`lockf`) on `writer.lock`, holding who took it.

A record lock belongs to the process, not to the file description, so worker processes forked by
the writer (image decoding) do not keep the store locked after the writer is killed.

DuckDB admits one read-write process and no readers beside it, so a writer opens the database
only for short commits; this lock is what keeps a second writer out for the writer's whole life.
A second writer is refused at once, with the holder's pid, command and start time.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import struct
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from embedstore.errors import StoreLockedError

LOCK_NAME = "writer.lock"


def describe_holder(lock_path: Path) -> str:
    """Who holds the lock, as written by the holder (best effort: the file may be mid-write)."""
    for _ in range(5):
        try:
            info = json.loads(lock_path.read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']} ({info['command']}, since {info['since']})"
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    return "another process"


def describe_process(pid: int) -> str:
    """A process by pid and, where /proc tells it, its command line (how the user started it)."""
    if pid == os.getpid():
        return f"pid {pid} (this process)"
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"pid {pid}"
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    if len(words) > 2 and Path(words[0]).name.startswith("python") and words[1] == "-m":
        words = words[2:]  # `python -m embedstore.cli sql …` reads better as `embedstore.cli sql …`
    elif words:
        words[0] = Path(words[0]).name
    command = " ".join(words)
    return f"pid {pid} ({command[:120]}{'…' if len(command) > 120 else ''})"


def writer_running(store_dir: Path) -> bool | None:
    """Whether a process holds the store's writer lock now, asked without taking it (F_GETLK),
    so a writer starting meanwhile is never refused. None where this platform's lock record is unknown."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fd = os.open(store_dir / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        query = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)  # Linux struct flock
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return None
    finally:
        os.close(fd)
    return bool(struct.unpack_from("h", answer)[0] != fcntl.F_UNLCK)


def refuse_if_written(store_dir: Path) -> None:
    """Refuse at once when another process holds the writer lock: a command calls this before its
    heavy imports so a second writer is turned away in well under a second. The lock itself is
    still taken, later, by the writer (a writer starting in between is caught there)."""
    if writer_running(store_dir):
        raise _locked(store_dir, store_dir / LOCK_NAME)


def _locked(store_dir: Path, lock_path: Path) -> StoreLockedError:
    return StoreLockedError(f"store {store_dir} is being written by {describe_holder(lock_path)}; "
                            "wait for it to finish or stop it")


class WriterLock:
    """Context manager taking the store's writer lock without waiting."""

    def __init__(self, store_dir: Path, command: str | None = None) -> None:
        self.path = store_dir / LOCK_NAME
        self.store_dir = store_dir
        self.command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                raise  # not held by another process: the file system cannot lock (the caller names it)
            raise _locked(self.store_dir, self.path) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError:
            os.close(fd)  # a full disk: release the lock rather than keep it with no holder named
            raise
        self._fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
