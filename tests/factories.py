"""Rows for tests, made directly in the database: residents, clients and login sessions (with their cookie).

Each factory takes the session to add to, flushes and never commits: a unit test's `db` is rolled back, and an
integration test commits where its requests must see the rows (`oidc_flow.register` and the `signed_in` fixture).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, Protocol

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from idp.authn.assurance import AuthEvent, Method
from idp.authn.sessions import StartedSession, start_session
from idp.models import Resident
from idp.oidc.clients import ClientSpec, CreatedClient, create_client, secret_digest_key

ISSUER = "http://localhost:8000"  # the test settings' issuer (tests/conftest.py)
SECRET_KEY = "test-secret-key"  # the test settings' IDP_SECRET_KEY
REDIRECT = "https://rp.example.kr/callback"
# The sandbox agency's 김경기 (idp/sandbox/residents.json), as a carrier sign-in leaves her.
KIM: dict[str, Any] = {
    "name": "김경기",
    "birthdate": dt.date(1985, 3, 14),
    "phone": "+821000000001",
    "carrier": "SKT",
    "verified_by": "sandbox",
}


def make_resident(db: Session, *, now: dt.datetime | None = None, **fields: Any) -> Resident:
    """A resident verified by the carrier agency at `now` (김경기 unless `fields` say otherwise)."""
    at = now or dt.datetime.now(dt.UTC)
    values: dict[str, Any] = {**KIM, "verified_at": at, "created_at": at, **fields}
    resident = Resident(id=uuid.uuid4(), **values)
    db.add(resident)
    db.flush()
    return resident


def make_client(
    db: Session,
    *,
    now: dt.datetime | None = None,
    issuer: str = ISSUER,
    secret_key: str = SECRET_KEY,
    **spec: Any,
) -> CreatedClient:
    """A client as an admin registers it (restricted scopes and local back-channel URIs allowed); a confidential
    code-flow web service on `REDIRECT` unless `spec` (ClientSpec fields) says otherwise."""
    fields: dict[str, Any] = {"name": "민원24 테스트", "redirect_uris": (REDIRECT,), **spec}
    return create_client(
        db,
        ClientSpec(**fields),
        secret_key=secret_digest_key(secret_key),
        issuer=issuer,
        now=now or dt.datetime.now(dt.UTC),
        allow_restricted_scopes=True,
        allow_local_server_uris=True,
    )


def make_login_session(
    db: Session,
    resident: Resident,
    *,
    method: Method = Method.CARRIER_SMS,
    at: dt.datetime | None = None,
    now: dt.datetime | None = None,
    issuer: str = ISSUER,
    client_ip: str | None = "203.0.113.7",
) -> StartedSession:
    """A login session of `resident` after one sign-in by `method` at `at` (default `now`), and its cookie value."""
    opened = now or dt.datetime.now(dt.UTC)
    event = AuthEvent.of(method, issuer=issuer, at=at or opened)
    return start_session(db, resident, event, client_ip=client_ip, user_agent="pytest", now=opened)


class SignIn(Protocol):
    """The `signed_in` fixture (tests/conftest.py): a browser signed in without the sign-in pages."""

    def __call__(
        self,
        browser: FlaskClient,
        *,
        resident: Resident | None = None,
        method: Method = Method.CARRIER_SMS,
        at: dt.datetime | None = None,
        **fields: Any,
    ) -> StartedSession: ...
