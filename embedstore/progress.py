"""Progress bars for long work: shown on a terminal, silent in logs and CI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(total: int, description: str, unit: str = "it") -> Iterator[Callable[[int], None]]:
    """Yield an `advance(n)` callback backed by tqdm (disabled when stderr is not a terminal)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit=unit, disable=None, leave=False) as bar:

        def advance(n: int) -> None:
            bar.update(n)

        yield advance
