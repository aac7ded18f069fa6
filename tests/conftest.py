"""Shared fixtures: settings, a keyring, the database on SQLite and PostgreSQL, and the app/client/runner trio."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from idp import create_app
from idp.cli import upgrade_database
from idp.db import make_engine
from idp.keyring import Keyring
from idp.settings import Settings

POSTGRES_URL = os.environ.get("IDP_TEST_POSTGRES_URL")
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if POSTGRES_URL:
        return
    skip = pytest.mark.skip(reason="IDP_TEST_POSTGRES_URL is not set (.ci/run sets it)")
    for item in items:
        if "postgresql" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def keyring_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A default keyring generated once; tests get copies (RSA generation is slow)."""
    directory = tmp_path_factory.mktemp("keyring-template") / "keys"
    Keyring.from_directory(directory).ensure_default()
    return directory


@pytest.fixture
def keys_dir(tmp_path: Path, keyring_template: Path) -> Path:
    directory = tmp_path / "keys"
    shutil.copytree(keyring_template, directory)
    return directory


@pytest.fixture
def keyring(keys_dir: Path) -> Keyring:
    return Keyring.from_directory(keys_dir, check_interval=0)


def create_postgres_database(base_url: str) -> str:
    """Create an empty database beside the server's default one; its URL."""
    name = f"idp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(base_url: str, url: str) -> None:
    name = make_url(url).database
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session", params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated database, once per test session and backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'idp.sqlite3'}"
        upgrade_database(url)
        yield url
        return
    assert POSTGRES_URL
    url = create_postgres_database(POSTGRES_URL)
    upgrade_database(url)
    yield url
    drop_postgres_database(POSTGRES_URL, url)


@pytest.fixture
def settings(tmp_path: Path, keys_dir: Path, database_url: str) -> Settings:
    return Settings(
        issuer="http://localhost:8000",
        instance_dir=tmp_path / "instance",
        database_url=database_url,
        keys_dir=keys_dir,
        secret_key="test-secret-key",
        data_key="test-data-key",
        ci_pepper="test-ci-pepper",
        pairwise_secret="test-pairwise-secret",
        keyring_check_interval=0,
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    """A session for service tests: everything it writes is rolled back after the test."""
    connection = engine.connect()
    outer = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    yield session
    session.close()
    outer.rollback()
    connection.close()


@pytest.fixture
def db_session(app: Flask) -> Session:
    """The session the app's requests use, inside the test's rolled-back transaction."""
    factory: sessionmaker[Session] = app.extensions["idp.db"][1]
    return factory()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    """The app, with every session joined to one outer transaction that is rolled back after the test."""
    app = create_app(settings)
    app.config["TESTING"] = True
    engine = make_engine(settings.sqlalchemy_url)
    connection = engine.connect()
    outer = connection.begin()
    factory = sessionmaker(bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint")
    real_engine, _ = app.extensions["idp.db"]
    app.extensions["idp.db"] = (real_engine, factory)
    yield app
    outer.rollback()
    connection.close()
    engine.dispose()
    real_engine.dispose()


@pytest.fixture
def make_app() -> Iterator[Callable[[Settings], Flask]]:
    """Build extra apps with other settings; their engines are disposed after the test."""
    apps: list[Flask] = []

    def make(settings: Settings) -> Flask:
        apps.append(create_app(settings))
        return apps[-1]

    yield make
    for made in apps:
        made.extensions["idp.db"][0].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()
