"""The grants of idp/oidc/grants.py without an HTTP client: rows made directly, the token endpoint called through the
runtime's server inside a request context the way the /token view calls it (one request session, committed after
Authlib answers), and the answer and the rows checked. PKCE's authorization-request half is checked where /authorize
runs it, in the server's consent grant."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from authlib.oauth2.rfc6749 import OAuth2Error
from factories import REDIRECT, make_client, make_login_session, make_resident
from flask import Flask
from joserfc import jwt
from sqlalchemy import select, update

from idp.authn.assurance import AuthEvent, Method
from idp.models import AuthorizationCode, Grant, RefreshToken, Resident, SessionClient
from idp.oidc.clients import CreatedClient
from idp.oidc.tokens import (
    Authentication,
    access_token_holds,
    digest,
    grant_of,
    issue_refresh_token,
    subject_for,
)
from idp.runtime import EXTENSION as RUNTIME
from idp.runtime import db_session
from idp.runtime import of as runtime_of
from idp.settings import Settings

NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
ISSUER = "http://localhost:8000"
OTHER_REDIRECT = "https://rp.example.kr/other-callback"  # also registered: a wrong redirect URI, not an unknown one
SESSION_SIGN_IN = NOW - dt.timedelta(minutes=30)
# The code's sign-in differs from the login session's (a later passkey step-up): tokens must take the code's.
CODE_SIGN_IN = AuthEvent.of(Method.PASSKEY, issuer=ISSUER, at=NOW - dt.timedelta(minutes=2))
CODE_SCOPE = "openid profile offline_access"
NONCE = "n-0S6_WzA2Mj"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
OTHER_VERIFIER = "x" * 43


class FixedClock:
    """The runtime's clock, stopped at NOW: every request of a test sees the same time."""

    def now(self) -> dt.datetime:
        return NOW


@dataclass(frozen=True, slots=True)
class World:
    """A resident signed in (by SMS, half an hour ago) and the confidential web service she uses."""

    resident_id: uuid.UUID
    session_id: uuid.UUID
    sid: str
    web: CreatedClient


@pytest.fixture
def settings(settings: Settings, module_database_url: str) -> Settings:
    """A database of this module's own: the token requests commit, and on SQLite the app fixture's savepoints are
    the outermost transaction, so their release commits for real and would leave rows for other modules' tests."""
    return dataclasses.replace(settings, database_url=module_database_url)


@pytest.fixture
def world(app: Flask) -> World:
    """The rows of World, committed where the app's requests see them; the app's clock is stopped at NOW."""
    app.extensions[RUNTIME] = dataclasses.replace(runtime_of(app), clock=FixedClock())
    with runtime_of(app).sessions() as db:
        resident = make_resident(db, now=NOW - dt.timedelta(days=30))
        login = make_login_session(db, resident, at=SESSION_SIGN_IN, now=SESSION_SIGN_IN).session
        web = make_client(db, now=NOW, redirect_uris=(REDIRECT, OTHER_REDIRECT))
        db.commit()
        return World(resident.id, login.id, login.sid, web)


def add_client(app: Flask, **spec: Any) -> CreatedClient:
    """Another client, registered as `make_client` does (`spec` as ClientSpec fields)."""
    with runtime_of(app).sessions() as db:
        created = make_client(db, now=NOW, **spec)
        db.commit()
        return created


def challenge_of(verifier: str) -> str:
    """RFC 7636 §4.2 S256, computed here rather than by the library under test."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def issue_code(
    app: Flask, world: World, *, client: CreatedClient | None = None, scope: str = CODE_SCOPE, **fields: Any
) -> str:
    """A code as /authorize stores it (S256 challenge of VERIFIER, NONCE, the passkey sign-in); `fields` override."""
    code = secrets.token_urlsafe(32)
    values: dict[str, Any] = {
        "digest": digest(code),
        "grant_id": uuid.uuid4(),
        "client_id": (client or world.web).client.id,
        "resident_id": world.resident_id,
        "sid": world.sid,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "nonce": NONCE,
        "code_challenge": challenge_of(VERIFIER),
        "code_challenge_method": "S256",
        "claims": None,
        "acr": CODE_SIGN_IN.acr,
        "amr": list(CODE_SIGN_IN.amr),
        "auth_time": CODE_SIGN_IN.at,
        "created_at": NOW - dt.timedelta(seconds=10),
        "expires_at": NOW + dt.timedelta(seconds=50),
        **fields,
    }
    with runtime_of(app).sessions() as db:
        db.add(AuthorizationCode(**values))
        db.commit()
    return code


def issue_refresh(
    app: Flask, world: World, *, client: CreatedClient | None = None, scope: str = CODE_SCOPE
) -> tuple[str, uuid.UUID]:
    """A refresh token of a grant made from the passkey sign-in an hour ago, and the grant's id."""
    model = (client or world.web).client
    settings = runtime_of(app).settings
    grant_id = uuid.uuid4()
    with runtime_of(app).sessions() as db:
        resident = db.get(Resident, world.resident_id)
        assert resident is not None
        authentication = Authentication(
            resident=resident,
            sub=subject_for(model, resident.id, settings),
            sid=world.sid,
            acr=CODE_SIGN_IN.acr,
            amr=list(CODE_SIGN_IN.amr),
            auth_time=CODE_SIGN_IN.at,
        )
        token = issue_refresh_token(
            db,
            settings,
            client=model,
            authentication=authentication,
            scope=scope,
            grant_id=grant_id,
            claims=None,
            now=NOW - dt.timedelta(hours=1),
        )
        db.commit()
    return token, grant_id


def token_request(app: Flask, client: CreatedClient, data: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST /token as the view does it: Authlib answers, then the request's session is committed (whatever the
    answer, as the view does); leaving the context tears the app context down, which closes the session."""
    headers = {}
    if client.secret is not None:
        credentials = f"{client.client.id}:{client.secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
    else:
        data = {**data, "client_id": client.client.id}
    with app.test_request_context("/token", method="POST", data=data, headers=headers):
        response = runtime_of(app).oidc.create_token_response()
        db_session().commit()
        body = response.get_json()
        assert isinstance(body, dict)
        return response.status_code, body


def exchange(
    app: Flask, client: CreatedClient, code: str, *, verifier: str | None = VERIFIER, redirect_uri: str = REDIRECT
) -> tuple[int, dict[str, Any]]:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if verifier is not None:
        data["code_verifier"] = verifier
    return token_request(app, client, data)


def refresh(app: Flask, client: CreatedClient, token: str, *, scope: str | None = None) -> tuple[int, dict[str, Any]]:
    data = {"grant_type": "refresh_token", "refresh_token": token}
    if scope is not None:
        data["scope"] = scope
    return token_request(app, client, data)


def code_row(app: Flask, code: str) -> AuthorizationCode:
    with runtime_of(app).sessions() as db:
        row = db.get(AuthorizationCode, digest(code))
        assert row is not None
        return row


def refresh_row(app: Flask, token: str) -> RefreshToken:
    with runtime_of(app).sessions() as db:
        row = db.get(RefreshToken, digest(token))
        assert row is not None
        return row


def claims_of(app: Flask, token: str) -> dict[str, Any]:
    keys = runtime_of(app).keyring.current()
    return jwt.decode(token, keys.public_keys, registry=keys.verifier).claims


def epoch(value: dt.datetime) -> int:
    return int(value.timestamp())


# -- authorization code ----------------------------------------------------------------------------------------------


def test_code_exchange_gives_access_id_and_refresh_tokens_with_offline_access(app: Flask, world: World) -> None:
    code = issue_code(app, world)
    status, body = exchange(app, world.web, code)
    assert status == 200
    assert set(body) == {"token_type", "access_token", "expires_in", "scope", "id_token", "refresh_token"}
    assert (body["token_type"], body["scope"]) == ("Bearer", CODE_SCOPE)
    access = claims_of(app, body["access_token"])
    assert (access["client_id"], access["scope"]) == (world.web.client.id, CODE_SCOPE)
    assert claims_of(app, body["id_token"])["sub"] == access["sub"]
    row = code_row(app, code)
    assert row.consumed_at == NOW
    issued = refresh_row(app, body["refresh_token"])
    assert (issued.grant_id, issued.scope, issued.client_id) == (row.grant_id, CODE_SCOPE, world.web.client.id)


def test_code_exchange_without_offline_access_gives_no_refresh_token(app: Flask, world: World) -> None:
    status, body = exchange(app, world.web, issue_code(app, world, scope="openid profile"))
    assert status == 200
    assert "id_token" in body
    assert "refresh_token" not in body


def test_client_without_the_refresh_grant_gets_no_refresh_token_even_with_offline_access(
    app: Flask, world: World
) -> None:
    code_only = add_client(app, grant_types=("authorization_code",))
    status, body = exchange(app, code_only, issue_code(app, world, client=code_only))
    assert status == 200
    assert body["scope"] == CODE_SCOPE
    assert "refresh_token" not in body


def test_code_is_spent_once_and_its_replay_revokes_what_it_issued(app: Flask, world: World) -> None:
    code = issue_code(app, world)
    status, first = exchange(app, world.web, code)
    assert status == 200
    status, second = exchange(app, world.web, code)
    assert (status, second.get("error")) == (400, "invalid_grant")
    # RFC 6749 §4.1.2: a code used twice may be stolen; what it issued is revoked.
    assert refresh_row(app, first["refresh_token"]).revoked_at == NOW
    with runtime_of(app).sessions() as db:
        access = claims_of(app, first["access_token"])
        assert not access_token_holds(db, access)
        grant = db.get(Grant, grant_of(access["jti"]))
        assert grant is not None
        assert grant.revoked_at == NOW


@pytest.mark.parametrize(
    ("verifier", "error"),
    [(OTHER_VERIFIER, "invalid_grant"), (None, "invalid_request")],
    ids=["wrong-verifier", "no-verifier"],
)
def test_code_with_a_failed_pkce_check_is_refused_and_left_unspent(
    app: Flask, world: World, verifier: str | None, error: str
) -> None:
    code = issue_code(app, world)
    status, body = exchange(app, world.web, code, verifier=verifier)
    assert (status, body.get("error")) == (400, error)
    assert code_row(app, code).consumed_at is None
    status, body = exchange(app, world.web, code)
    assert status == 200
    assert "access_token" in body


def test_a_code_stored_with_plain_pkce_is_refused_at_the_token_endpoint(app: Flask, world: World) -> None:
    # /authorize refuses `plain`; the token endpoint must not honour it either (a second line of defence, RFC 9700
    # §2.1.1), whatever a row says.
    code = issue_code(app, world, code_challenge=VERIFIER, code_challenge_method="plain")
    status, body = exchange(app, world.web, code, verifier=VERIFIER)
    assert (status, body.get("error")) == (400, "invalid_grant")
    assert code_row(app, code).consumed_at is None


def test_code_with_another_redirect_uri_is_refused_and_left_unspent(app: Flask, world: World) -> None:
    code = issue_code(app, world)
    status, body = exchange(app, world.web, code, redirect_uri=OTHER_REDIRECT)
    assert (status, body.get("error")) == (400, "invalid_grant")
    assert code_row(app, code).consumed_at is None
    assert exchange(app, world.web, code)[0] == 200


def test_code_presented_by_another_client_is_refused_and_left_unspent(app: Flask, world: World) -> None:
    other = add_client(app, name="다른 서비스")
    code = issue_code(app, world)
    status, body = exchange(app, other, code)
    assert (status, body.get("error")) == (400, "invalid_grant")
    assert code_row(app, code).consumed_at is None
    assert exchange(app, world.web, code)[0] == 200


def test_expired_code_is_refused(app: Flask, world: World) -> None:
    code = issue_code(app, world, expires_at=NOW)
    status, body = exchange(app, world.web, code)
    assert (status, body.get("error")) == (400, "invalid_grant")
    assert code_row(app, code).consumed_at is None


def test_id_token_carries_the_codes_acr_amr_auth_time_and_nonce(app: Flask, world: World) -> None:
    status, body = exchange(app, world.web, issue_code(app, world))
    assert status == 200
    claims = claims_of(app, body["id_token"])
    assert (claims["acr"], claims["amr"], claims["auth_time"], claims["nonce"]) == (
        CODE_SIGN_IN.acr,
        list(CODE_SIGN_IN.amr),
        epoch(CODE_SIGN_IN.at),
        NONCE,
    )
    assert (claims["aud"], claims["sid"], claims["iat"]) == (world.web.client.id, world.sid, epoch(NOW))
    # Not the login session's own sign-in: the code's is what the resident consented with.
    assert claims["auth_time"] != epoch(SESSION_SIGN_IN)


def test_code_exchange_remembers_the_client_in_the_login_session(app: Flask, world: World) -> None:
    status, body = exchange(app, world.web, issue_code(app, world))
    assert status == 200
    with runtime_of(app).sessions() as db:
        taking_part = db.scalars(select(SessionClient).where(SessionClient.session_id == world.session_id)).all()
    assert [(row.client_id, row.sub) for row in taking_part] == [
        (world.web.client.id, claims_of(app, body["id_token"])["sub"])
    ]


# -- PKCE at the authorization request ------------------------------------------------------------------------------


def authorization_error(app: Flask, client: CreatedClient, **params: str) -> OAuth2Error | None:
    """What the server's consent grant (the /authorize view's first Authlib step) refuses, or None."""
    query = {"response_type": "code", "client_id": client.client.id, "redirect_uri": REDIRECT, "scope": "openid"}
    with app.test_request_context("/authorize", query_string={**query, **params}):
        try:
            runtime_of(app).oidc.get_consent_grant(end_user=None)
        except OAuth2Error as error:
            return error
    return None


def test_public_client_authorization_request_with_an_s256_challenge_is_accepted(app: Flask, world: World) -> None:
    public = add_client(app, public=True)
    assert authorization_error(app, public, code_challenge=challenge_of(VERIFIER), code_challenge_method="S256") is None


def test_plain_pkce_is_refused_at_authorization(app: Flask, world: World) -> None:
    error = authorization_error(app, world.web, code_challenge=challenge_of(VERIFIER), code_challenge_method="plain")
    assert error is not None
    assert (error.error, error.redirect_uri) == ("invalid_request", REDIRECT)
    assert "S256" in str(error.description)


def test_pkce_without_a_method_is_refused_at_authorization(app: Flask, world: World) -> None:
    # RFC 7636 §4.3: a missing method means `plain`.
    error = authorization_error(app, world.web, code_challenge=challenge_of(VERIFIER))
    assert error is not None
    assert error.error == "invalid_request"


def test_public_client_authorization_request_without_code_challenge_is_refused(app: Flask, world: World) -> None:
    error = authorization_error(app, add_client(app, public=True))
    assert error is not None
    assert (error.error, error.redirect_uri) == ("invalid_request", REDIRECT)
    assert "code_challenge" in str(error.description)


# -- refresh ---------------------------------------------------------------------------------------------------------


def test_refresh_rotates_the_token_and_the_old_one_is_refused_afterwards(app: Flask, world: World) -> None:
    old, grant_id = issue_refresh(app, world)
    status, body = refresh(app, world.web, old)
    assert status == 200
    assert body["refresh_token"] != old
    assert refresh_row(app, old).rotated_at == NOW
    new = refresh_row(app, body["refresh_token"])
    assert (new.grant_id, new.rotated_at, new.revoked_at) == (grant_id, None, None)
    status, body_again = refresh(app, world.web, old)
    assert (status, body_again.get("error")) == (400, "invalid_grant")
    # RFC 9700 §4.14.2: the rotated token's reuse revokes its family, the new token too.
    assert refresh_row(app, body["refresh_token"]).revoked_at == NOW


def test_narrowed_refresh_narrows_the_access_token_only(app: Flask, world: World) -> None:
    old, _ = issue_refresh(app, world)
    status, body = refresh(app, world.web, old, scope="openid")
    assert status == 200
    assert body["scope"] == "openid"
    assert claims_of(app, body["access_token"])["scope"] == "openid"
    assert refresh_row(app, body["refresh_token"]).scope == CODE_SCOPE
    status, wider_again = refresh(app, world.web, body["refresh_token"])
    assert status == 200
    assert wider_again["scope"] == CODE_SCOPE


def test_widened_refresh_is_invalid_scope_and_leaves_the_token_unspent(app: Flask, world: World) -> None:
    old, _ = issue_refresh(app, world)
    status, body = refresh(app, world.web, old, scope=CODE_SCOPE + " phone")
    assert (status, body.get("error")) == (400, "invalid_scope")
    unspent = refresh_row(app, old)
    assert (unspent.rotated_at, unspent.revoked_at) == (None, None)
    assert refresh(app, world.web, old)[0] == 200


def test_refresh_for_a_locked_resident_is_invalid_grant_and_leaves_the_token_unspent(app: Flask, world: World) -> None:
    old, _ = issue_refresh(app, world)
    with runtime_of(app).sessions() as db:
        db.execute(update(Resident).where(Resident.id == world.resident_id).values(locked_at=NOW))
        db.commit()
    status, body = refresh(app, world.web, old)
    assert (status, body.get("error")) == (400, "invalid_grant")
    unspent = refresh_row(app, old)
    assert (unspent.rotated_at, unspent.revoked_at) == (None, None)


def test_refresh_token_presented_by_another_client_is_invalid_grant(app: Flask, world: World) -> None:
    other = add_client(app, name="다른 서비스")
    old, _ = issue_refresh(app, world)
    status, body = refresh(app, other, old)
    assert (status, body.get("error")) == (400, "invalid_grant")
    # Neither spent nor revoked: another client cannot burn (or have revoked) a token it does not own.
    unspent = refresh_row(app, old)
    assert (unspent.rotated_at, unspent.revoked_at) == (None, None)
    assert refresh(app, world.web, old)[0] == 200


def test_refreshed_id_token_keeps_the_original_authentication(app: Flask, world: World) -> None:
    old, _ = issue_refresh(app, world)
    status, body = refresh(app, world.web, old)
    assert status == 200
    claims = claims_of(app, body["id_token"])
    # OIDC Core §12.2: auth_time, acr and amr are the original sign-in's; only iat is new.
    assert (claims["auth_time"], claims["acr"], claims["amr"], claims["iat"]) == (
        epoch(CODE_SIGN_IN.at),
        CODE_SIGN_IN.acr,
        list(CODE_SIGN_IN.amr),
        epoch(NOW),
    )
    assert "nonce" not in claims


# -- client credentials ----------------------------------------------------------------------------------------------


@pytest.fixture
def service(app: Flask, world: World) -> CreatedClient:
    """A service-to-service client an admin registered with resident scopes too (which this grant never gives)."""
    return add_client(
        app,
        name="민원 연계 배치",
        redirect_uris=(),
        grant_types=("client_credentials",),
        scopes=("openid", "profile", "phone", "offline_access"),
    )


def credentials(app: Flask, client: CreatedClient, scope: str | None = None) -> tuple[int, dict[str, Any]]:
    data = {"grant_type": "client_credentials"}
    if scope is not None:
        data["scope"] = scope
    return token_request(app, client, data)


def test_client_credentials_never_grant_openid_or_offline_access(app: Flask, service: CreatedClient) -> None:
    status, body = credentials(app, service, "openid profile offline_access")
    assert status == 200
    assert set(body) == {"token_type", "access_token", "expires_in", "scope"}
    assert body["scope"] == "profile"
    access = claims_of(app, body["access_token"])
    assert (access["sub"], access["client_id"], access["scope"]) == (service.client.id, service.client.id, "profile")
    assert "auth_time" not in access
    # No resident, so no grant: the token holds until it expires or is revoked on its own.
    assert grant_of(access["jti"]) is None
    with runtime_of(app).sessions() as db:
        assert access_token_holds(db, access)


def test_client_credentials_with_a_scope_the_client_was_not_allowed_is_invalid_scope(app: Flask, world: World) -> None:
    narrow = add_client(app, redirect_uris=(), grant_types=("client_credentials",), scopes=("profile",))
    status, body = credentials(app, narrow, "profile phone")
    assert (status, body.get("error")) == (400, "invalid_scope")


def test_client_credentials_without_a_scope_get_the_registered_scopes(app: Flask, service: CreatedClient) -> None:
    status, body = credentials(app, service)
    assert status == 200
    assert body["scope"] == "profile phone"
    assert claims_of(app, body["access_token"])["scope"] == "profile phone"
