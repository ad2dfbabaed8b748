"""Atomic file writes (temp file in the same directory, fsync, rename) and sha256 of files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

_CHUNK = 1 << 20
#: The names `atomic_path` gives its temporary files (`.TARGET.XXXXXX.tmp`), as a glob pattern.
TEMPORARY_PATTERN = ".*.tmp"


def save_npy(path: Path, array: ArrayLike, durable: bool = False) -> None:
    """Write a NumPy array (no pickles) atomically."""
    import numpy as np

    with atomic_path(path, durable=durable) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(target: Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it replaces `target` in one rename.

    A crash or exception leaves `target` as it was and removes the temporary file. `durable`
    also fsyncs the file and its folder (store artefacts); caches that can be rebuilt skip it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; finished files get the usual permissions
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
        if durable:
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    finally:
        tmp.unlink(missing_ok=True)

