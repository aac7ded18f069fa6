"""Fixtures shared by the authentication tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_agency import free_port
from sqlalchemy import Engine
from waiting import wait_until

from idp.authn.lockout import DatabaseRateLimiter
from idp.db import Base, make_engine

LIMITER_KEY = b"test lockout key"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian's) on a free port, without persistence."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is missing: `make test` installs Debian's redis-server")
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path_factory.mktemp("redis"),
        stdout=subprocess.DEVNULL,
    )

    def accepts() -> bool:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True

    try:
        wait_until(
            accepts, timeout=10, waiting_for=f"redis-server to accept connections on port {port}", ignoring=(OSError,)
        )
    except AssertionError:
        process.kill()
        raise
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def limiter(engine: Engine, tmp_path: Path) -> Iterator[DatabaseRateLimiter]:
    """The database limiter; on SQLite its counters live in a file of their own.

    The counters commit on their own connection. On SQLite the test's open transaction holds the write lock from
    its first insert on, so counters in the same file would wait for it until the busy timeout.
    """
    if engine.dialect.name == "postgresql":
        yield DatabaseRateLimiter(engine, LIMITER_KEY)
        return
    counters = make_engine(f"sqlite:///{tmp_path / 'counters.sqlite3'}")
    Base.metadata.tables["rate_limit_counter"].create(counters)
    yield DatabaseRateLimiter(counters, LIMITER_KEY)
    counters.dispose()


@pytest.fixture
def client_ip() -> str:
    # Unique per test: on PostgreSQL the counters are committed to the database every test shares.
    return f"2001:db8::{uuid.uuid4().hex[:4]}:{uuid.uuid4().hex[:4]}"
