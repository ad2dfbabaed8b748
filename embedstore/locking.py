"""The store's single-writer lock: a POSIX record lock (`lockf`) on `writer.lock`, holding who took it.

A record lock belongs to the process, not to the file description, so worker processes forked by
the writer (image decoding) do not keep the store locked after the writer is killed.

DuckDB admits one read-write process and no readers beside it, so a writer opens the database
only for short commits; this lock is what keeps a second writer out for the writer's whole life.
A second writer is refused at once, with the holder's pid, command and start time.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
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
        except OSError:
            os.close(fd)
            raise StoreLockedError(
                f"store {self.store_dir} is being written by {describe_holder(self.path)}; "
                "wait for it to finish or stop it"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
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
