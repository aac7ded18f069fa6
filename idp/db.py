"""The database: declarative base with naming convention, column aliases, engine and session factory."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

from flask import Flask, current_app, g
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


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create the engine; SQLite gets WAL, foreign keys and a busy timeout on every connection."""
    if url.startswith("sqlite"):
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


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


def init_app(app: Flask, url: str) -> None:
    """Give the app its engine and close each request's session when the request ends."""
    engine = make_engine(url)
    app.extensions["idp.db"] = (engine, make_session_factory(engine))
    app.teardown_appcontext(_close_session)


def engine() -> Engine:
    """The current app's engine."""
    bound: Engine = current_app.extensions["idp.db"][0]
    return bound


def session() -> Session:
    """The current request's session, opened on first use; views commit it once."""
    if "db_session" not in g:
        factory: sessionmaker[Session] = current_app.extensions["idp.db"][1]
        g.db_session = factory()
    opened: Session = g.db_session
    return opened


def _close_session(_exc: BaseException | None) -> None:
    opened = g.pop("db_session", None)
    if opened is not None:
        opened.close()


def migrations_dir() -> Path:
    """The Alembic scripts: inside the package when installed from a wheel, beside it in a checkout."""
    packaged = Path(__file__).parent / "migrations"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "migrations"


def head_revision() -> str | None:
    """The newest migration this release knows, which a database must be at before the IdP serves it."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(migrations_dir())).get_current_head()
