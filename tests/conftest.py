"""Shared fixtures: settings, a keyring, the database on SQLite and PostgreSQL, and the app/client/runner trio."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from factories import SignIn, make_login_session, make_resident
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings
from idp_server import IdpServer
from sandbox_agency import SandboxAgency, running_sandbox
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from strategies import corpus_lines

from idp import create_app
from idp.authn.assurance import Method
from idp.authn.sessions import StartedSession
from idp.db import make_engine, upgrade_database
from idp.keyring import Keyring
from idp.models import Resident
from idp.oidc.interaction import cookie_name
from idp.runtime import EXTENSION as RUNTIME
from idp.runtime import of as runtime_of
from idp.settings import Settings

POSTGRES_URL = os.environ.get("IDP_TEST_POSTGRES_URL")
TERMINATE_OTHER_CONNECTIONS = text(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"
)
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]

# Generated inputs (tests/integration/test_bad_input_generated.py): `make test` runs a small, fixed set of examples
# (derandomized: the same requests every run); CI sets IDP_HYPOTHESIS_PROFILE=long for eight times as many, also
# fixed, so that a red CI run is a change's doing and can be run again; `hunt` draws new ones to look for defects.
# Examples share one app per module, so no function-scoped fixture is involved; an example's time varies with
# the machine's load, so there is no deadline.
HYPOTHESIS_PROFILE = os.environ.get("IDP_HYPOTHESIS_PROFILE", "default")
hypothesis_settings.register_profile(
    "default", max_examples=25, derandomize=True, database=None, deadline=None, print_blob=True
)
hypothesis_settings.register_profile(
    "long",
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# For hunting defects: IDP_HYPOTHESIS_EXAMPLES new examples each, none shrunk.
hypothesis_settings.register_profile(
    "hunt",
    max_examples=int(os.environ.get("IDP_HYPOTHESIS_EXAMPLES", "300")),
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
hypothesis_settings.load_profile(HYPOTHESIS_PROFILE)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many distinct generated requests each endpoint got (the corpus of tests/strategies.py)."""
    for line in corpus_lines(HYPOTHESIS_PROFILE):
        terminalreporter.write_line(line)


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
    """A copy of the template keyring, as if it had just been made: its keys' times are moved to now, so tests that
    read a key's age (a `next` key younger than the JWKS cache age) do not depend on how long the session has run."""
    directory = tmp_path / "keys"
    shutil.copytree(keyring_template, directory)
    manifest = directory / "keyring.json"
    data = json.loads(manifest.read_bytes())
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for key in data["keys"]:
        key["created"] = now
        if key.get("activated"):
            key["activated"] = now
    manifest.write_text(json.dumps(data, indent=2) + "\n")
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
        PRISTINE[url] = copy_database(url, tmp_path_factory.mktemp("pristine-db"))
        yield url
        return
    assert POSTGRES_URL
    url = create_postgres_database(POSTGRES_URL)
    upgrade_database(url)
    PRISTINE[url] = copy_database(url, tmp_path_factory.mktemp("pristine-db"))
    yield url
    drop_database_copy(PRISTINE.pop(url))
    drop_postgres_database(POSTGRES_URL, url)


# The migrated database of each backend as it was before any test ran: copies start from it, so rows another test
# committed to the shared database never show up in a "fresh" one.
PRISTINE: dict[str, str] = {}


def copy_database(database_url: str, directory: Path) -> str:
    """An empty migrated database of its own (SQLite: a file in `directory`; PostgreSQL: a database made from the
    pristine one as template)."""
    source = PRISTINE.get(database_url, database_url)
    if source.startswith("sqlite"):
        copy = directory / "fresh.sqlite3"
        shutil.copyfile(source.removeprefix("sqlite:///"), copy)
        return f"sqlite:///{copy}"
    assert POSTGRES_URL
    name = f"idp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    template = make_url(source).database
    with admin.connect() as connection:
        # The template must have no other connections while it is copied.
        connection.execute(TERMINATE_OTHER_CONNECTIONS, {"name": template})
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    admin.dispose()
    return make_url(database_url).set(database=name).render_as_string(hide_password=False)


def drop_database_copy(url: str) -> None:
    if url.startswith("postgresql"):
        assert POSTGRES_URL
        drop_postgres_database(POSTGRES_URL, url)


@pytest.fixture
def fresh_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty migrated database of its own, for tests whose requests commit (copied from the migrated one)."""
    url = copy_database(database_url, tmp_path)
    yield url
    drop_database_copy(url)


@pytest.fixture(scope="module")
def module_database_url(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An empty migrated database shared by one module's tests (a table of cases that set up their world once)."""
    url = copy_database(database_url, tmp_path_factory.mktemp("module-db"))
    yield url
    drop_database_copy(url)


@pytest.fixture
def settings(tmp_path: Path, keys_dir: Path, database_url: str) -> Settings:
    return settings_for_test(tmp_path / "instance", keys_dir, database_url)


def settings_for_test(instance_dir: Path, keys_dir: Path, database_url: str, **extra: Any) -> Settings:
    """Settings for a test app: fixed secrets, keyring changes seen at once."""
    return Settings(
        issuer="http://localhost:8000",
        instance_dir=instance_dir,
        database_url=database_url,
        keys_dir=keys_dir,
        secret_key="test-secret-key",
        data_key="test-data-key",
        ci_pepper="test-ci-pepper",
        pairwise_secret="test-pairwise-secret",
        keyring_check_interval=0,
        **extra,
    )


@pytest.fixture(scope="module")
def module_app(
    module_database_url: str, keyring_template: Path, sandbox_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flask]:
    """An app shared by one module's tests, on the module's database and keyring, calling the sandbox agency."""
    directory = tmp_path_factory.mktemp("module-app")
    shutil.copytree(keyring_template, directory / "keys")
    app = create_app(
        settings_for_test(
            directory / "instance", directory / "keys", module_database_url, carrier_agency_url=sandbox_url
        )
    )
    app.config["TESTING"] = True
    yield app
    runtime_of(app).engine.dispose()


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
    factory: sessionmaker[Session] = runtime_of(app).sessions
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
    built = runtime_of(app)
    app.extensions[RUNTIME] = dataclasses.replace(built, sessions=factory)
    yield app
    outer.rollback()
    connection.close()
    engine.dispose()
    built.engine.dispose()


@pytest.fixture
def make_app() -> Iterator[Callable[[Settings], Flask]]:
    """Build extra apps with other settings; their engines are disposed after the test."""
    apps: list[Flask] = []

    def make(settings: Settings) -> Flask:
        apps.append(create_app(settings))
        return apps[-1]

    yield make
    for made in apps:
        runtime_of(made).engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


# -- the sandbox carrier agency, as a real server ------------------------------------------------------------------


@pytest.fixture(scope="session")
def sandbox_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`idp sandbox serve` on a free port for the whole test session."""
    with running_sandbox(tmp_path_factory.mktemp("sandbox-instance")) as agency:
        yield agency.url


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., IdpServer]]:
    """Start `idp serve` processes; each is stopped (with the sandbox it started) after the test."""
    started: list[IdpServer] = []

    def start(env: dict[str, str], *, workers: int = 1, port: int | None = None, args: Sequence[str] = ()) -> IdpServer:
        server = IdpServer(env, tmp_path / f"serve-{len(started)}.log", workers, port, args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def sandbox(sandbox_url: str) -> SandboxAgency:
    """The running sandbox, reset: no transactions, messages, limits, faults or clock offset."""
    agency = SandboxAgency(sandbox_url)
    agency.reset()
    return agency


# -- signed in without the sign-in pages ---------------------------------------------------------------------------


@pytest.fixture
def signed_in(app: Flask) -> SignIn:
    """Sign a browser in without the sign-in pages, for tests about what comes after signing in: a login session
    made in the app's database (of `resident`, or of a new resident: 김경기 unless `fields` say otherwise, verified
    by the sandbox agency), and its cookie set on the test client. One sign-in by `method` at `at` (now)."""

    def sign_in(
        browser: FlaskClient,
        *,
        resident: Resident | None = None,
        method: Method = Method.CARRIER_SMS,
        at: dt.datetime | None = None,
        **fields: Any,
    ) -> StartedSession:
        settings = runtime_of(app).settings
        with runtime_of(app).sessions() as db:
            person = db.merge(resident) if resident is not None else make_resident(db, **fields)
            started = make_login_session(db, person, method=method, at=at, issuer=settings.issuer, client_ip=None)
            db.commit()
        with app.app_context():
            browser.set_cookie(cookie_name(), started.cookie_value)
        return started

    return sign_in
