"""The database: declarative base with naming convention, column aliases, engine and session factory."""

from __future__ import annotations

import datetime as dt
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Engine,
    MetaData,
    Select,
    TypeDecorator,
    bindparam,
    create_engine,
    event,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

# Stable constraint names, so that Alembic can alter and drop them on SQLite and PostgreSQL alike.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UtcDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
        list[dict[str, Any]]: JSON,
    }


uuid_pk = Annotated[uuid.UUID, mapped_column(primary_key=True, default=uuid.uuid4)]
created_at = Annotated[dt.datetime, mapped_column(default=utcnow, server_default=func.current_timestamp())]
bool_false = Annotated[bool, mapped_column(default=False, server_default=text("false"))]


ModelT = TypeVar("ModelT", bound=Base)
_BY_PRIMARY_KEY: dict[type[Base], Select[Any]] = {}


def load(db: Session, model: type[ModelT], key: Any) -> ModelT | None:
    """The row of `model` with this primary key, or None: `Session.get` without its per-call query building, which
    costs about as much again as the query on the hot paths (token, userinfo, introspection)."""
    statement = _BY_PRIMARY_KEY.get(model)
    if statement is None:
        [column] = inspect(model).primary_key
        statement = _BY_PRIMARY_KEY[model] = select(model).where(column == bindparam("key"))
    found: ModelT | None = db.execute(statement, {"key": key}).scalar_one_or_none()
    return found


# Connections kept open per process: at least one per server thread (idp.server.THREADS_PER_WORKER), with room for
# the carrier limits' own short connection (idp.authn.lockout) and the background workers. A pool smaller than what
# the threads use at once opens and closes a connection per request beyond it (PostgreSQL forks a backend for each).
POOL_SIZE = 16
POOL_OVERFLOW = 16  # beyond that, for bursts of other threads (the purge, logout deliveries); closed after use
POOL_RECYCLE = 1800  # seconds: reconnect before firewalls and poolers drop connections idle for long


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create the engine; SQLite gets WAL, foreign keys, a busy timeout and one writer at a time per process."""
    if url.startswith("sqlite"):
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        _WriterLock().install(engine)
        return engine
    options: dict[str, Any] = {
        "pool_size": POOL_SIZE,
        "max_overflow": POOL_OVERFLOW,
        "pool_recycle": POOL_RECYCLE,
        # No ping before each use (a round trip per request): a connection that died since its last use fails the
        # one request that meets it (503 with Retry-After), and SQLAlchemy then replaces every older connection.
        "pool_pre_ping": False,
    }
    return create_engine(url, **(options | kwargs))


WRITE_STATEMENTS = ("INSERT", "UPDATE", "DELETE", "REPLACE")
SQLITE_BUSY_TIMEOUT = 5.0  # seconds, as PRAGMA busy_timeout below


class _WriterLock:
    """SQLite has one writer at a time. Threads of one process that wait for it in SQLite's busy handler sleep in
    growing steps and wake in no order (p99 near a second with 32 connections); waiting here instead, they go in
    turn the moment the writer before them ends. Held from a transaction's first write to its end; re-entrant,
    because one thread may write on a second connection (the lockout counters) inside a request's transaction, and
    any thread may let go (a connection cleaned up elsewhere must not leave it held)."""

    def __init__(self) -> None:
        self._free = threading.Condition()
        self._owner: int | None = None
        self._depth = 0

    def install(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._before_execute)
        event.listen(engine, "commit", self._release)
        event.listen(engine, "rollback", self._release)
        # A connection returned to the pool mid-transaction (closed without commit or rollback) lets go too.
        event.listen(engine, "checkin", self._release_record)

    def acquire(self, timeout: float) -> bool:
        me = threading.get_ident()
        with self._free:
            if self._owner != me and not self._free.wait_for(lambda: self._owner is None, timeout):
                return False
            self._owner = me
            self._depth += 1
            return True

    def release(self) -> None:
        with self._free:
            if self._depth == 0:
                return
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._free.notify()

    def _before_execute(self, conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if conn.info.get("writer") or not statement.lstrip()[:7].upper().startswith(WRITE_STATEMENTS):
            return
        # After the busy timeout, go on without it: SQLite's own lock still keeps writes apart.
        if self.acquire(SQLITE_BUSY_TIMEOUT):
            conn.info["writer"] = True

    def _release(self, conn: Any) -> None:
        if conn.info.pop("writer", False):
            self.release()

    def _release_record(self, _dbapi_connection: Any, record: ConnectionPoolEntry | None, *_args: Any) -> None:
        if record is not None and record.info.pop("writer", False):
            self.release()


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside a writer; several server processes share one file.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Writers wait for each other instead of failing at once with "database is locked".
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises (for CLI commands)."""
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def migrations_dir() -> Path:
    """The Alembic scripts: inside the package when installed from a wheel, beside it in a checkout."""
    packaged = Path(__file__).parent / "migrations"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "migrations"


def head_revision() -> str | None:
    """The newest migration this release knows, which a database must be at before the IdP serves it."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(migrations_dir())).get_current_head()


def upgrade_database(url: str) -> tuple[str | None, str | None]:
    """Migrate the database to the newest revision; the revisions before and after."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The database holds residents' personal data: readable by the IdP's user only.
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            before = MigrationContext.configure(connection).get_current_revision()
        command.upgrade(config, "head")
        with engine.connect() as connection:
            after = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    return before, after


def database_is_current(url: str) -> bool:
    """Whether the database is at the newest migration (servers refuse an old schema)."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision() == head_revision()
    finally:
        engine.dispose()
