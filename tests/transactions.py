"""The transactions a request commits on the app's database: each is a round trip to begin and one to commit, and
one more transaction for PostgreSQL to count (bench/signins.py reports them per sign-in)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event


@contextmanager
def commits(engine: Engine) -> Iterator[list[str]]:
    """The commits on `engine` (every connection of its pool) inside the block, one entry each."""
    seen: list[str] = []

    def committed(_connection: Any) -> None:
        seen.append("commit")

    event.listen(engine, "commit", committed)
    try:
        yield seen
    finally:
        event.remove(engine, "commit", committed)
