"""The engine: SQLite pragmas on every connection, and one writer at a time per process."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import Engine, text

from idp.db import make_engine


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'idp.sqlite3'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 5000
    engine.dispose()


def _counter_table(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))


def test_many_threads_write_to_sqlite_in_turn_without_locked_errors(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'idp.sqlite3'}", pool_size=16, max_overflow=0)
    _counter_table(engine)

    def write(worker: int) -> None:
        for n in range(25):
            with engine.begin() as connection:
                # A read, then a write in the same transaction: the upgrade SQLite's busy handler handles worst.
                connection.execute(text("SELECT count(*) FROM counter")).scalar()
                connection.execute(text("INSERT INTO counter (n) VALUES (:n)"), {"n": worker * 100 + n})

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(write, range(16)))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM counter")).scalar() == 16 * 25
    engine.dispose()


def test_a_connection_closed_mid_write_lets_the_next_writer_in_at_once(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'idp.sqlite3'}")
    _counter_table(engine)
    connection = engine.connect()
    connection.execute(text("INSERT INTO counter (n) VALUES (1)"))
    connection.close()  # neither committed nor rolled back by the caller: the pool rolls back and checks it in

    def write_elsewhere() -> float:
        started = time.monotonic()
        with engine.begin() as other:
            other.execute(text("INSERT INTO counter (n) VALUES (2)"))
        return time.monotonic() - started

    with ThreadPoolExecutor(max_workers=1) as pool:
        waited = pool.submit(write_elsewhere).result(timeout=30)
    # Far below the 5-second wait a writer lock left held would cost.
    assert waited < 1.0
    with engine.connect() as check:
        assert check.execute(text("SELECT n FROM counter")).scalars().all() == [2]
    engine.dispose()
