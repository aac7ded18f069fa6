"""Migrations that move data: what a database of the release before looks like after the upgrade."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, insert, inspect, select, text
from sqlalchemy.engine import make_url

from idp.db import make_engine, migrations_dir, upgrade_database
from idp.models import Client, Grant, RefreshToken, Resident

NOW = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(hours=1)
FAMILY_END = NOW + dt.timedelta(days=30)
CLIENT = {
    "id": "service",
    "name": "민원24",
    "token_endpoint_auth_method": "none",
    "redirect_uris": [],
    "post_logout_redirect_uris": [],
    "grant_types": [],
    "scopes": [],
    "subject_type": "pairwise",
    "id_token_signed_response_alg": "RS256",
    "first_party": False,
    "created_at": NOW,
}


def at_revision(url: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    command.upgrade(config, revision)


@pytest.fixture
def empty_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A database of the test's own with no tables yet, on the backend of `database_url`."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'old.sqlite3'}"
        return
    name = f"idp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_every_refresh_family_gets_its_grant_when_access_tokens_stop_being_rows(empty_database_url: str) -> None:
    at_revision(empty_database_url, "0006")
    engine = make_engine(empty_database_url)
    resident = uuid.uuid4()
    live, revoked = uuid.uuid4(), uuid.uuid4()
    # The tables written here are the same at 0006 and now: the models' own describe them.
    with engine.begin() as connection:
        connection.execute(insert(Client.__table__), [CLIENT])
        connection.execute(insert(Resident.__table__), [{"id": resident, "ci_pepper_version": 1, "created_at": NOW}])
        common = {"client_id": "service", "resident_id": resident, "scope": "openid offline_access", "acr": "aal1"}
        common |= {"amr": [], "auth_time": NOW, "expires_at": NOW + dt.timedelta(days=14)}
        common |= {"family_expires_at": FAMILY_END, "rotated_at": None, "revoked_at": None}
        asked = {"userinfo": {"phone_number": None}}
        connection.execute(
            insert(RefreshToken.__table__),
            [
                # A family rotated once (its first token rotated, the second live) that asked for a UserInfo claim.
                {
                    **common,
                    "digest": b"a" * 32,
                    "grant_id": live,
                    "claims": asked,
                    "created_at": NOW,
                    "rotated_at": NOW,
                },
                {**common, "digest": b"b" * 32, "grant_id": live, "claims": asked, "created_at": LATER},
                # A family revoked (a rotated token came back).
                {
                    **common,
                    "digest": b"c" * 32,
                    "grant_id": revoked,
                    "claims": None,
                    "created_at": NOW,
                    "revoked_at": LATER,
                },
            ],
        )
    engine.dispose()

    upgrade_database(empty_database_url)

    engine = make_engine(empty_database_url)
    with engine.connect() as connection:
        grants = {row.id: row for row in connection.execute(select(Grant.__table__))}
        tables = set(inspect(connection).get_table_names())
    engine.dispose()
    assert set(grants) == {live, revoked}
    kept = grants[live]
    assert (kept.client_id, kept.resident_id, kept.claims, kept.revoked_at) == (
        "service",
        resident,
        asked["userinfo"],
        None,
    )
    assert kept.created_at == NOW
    assert kept.expires_at >= FAMILY_END
    assert grants[revoked].revoked_at == LATER
    assert "access_token" not in tables
    assert {"token_grant", "revoked_access_token", "cache_generation"} <= tables
