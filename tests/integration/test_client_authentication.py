"""Client authentication at /token, /introspect and /revoke: private_key_jwt assertions and Basic credentials."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import ECKey
from oidc_flow import register
from werkzeug.test import TestResponse

from idp.oidc.clients import CreatedClient
from idp.settings import Settings

ISSUER = "http://localhost:8000"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture
def app(make_app: Callable[[Settings], Flask], settings: Settings, fresh_database_url: str) -> Flask:
    """The app on a database of its own: what a request commits (or fails to) is what the next one sees."""
    app = make_app(replace(settings, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def key() -> ECKey:
    return ECKey.generate_key("P-256", auto_kid=True)


@pytest.fixture
def signer(app: Flask, key: ECKey) -> CreatedClient:
    return register(
        app,
        name="서명 클라이언트",
        redirect_uris=(),
        grant_types=("client_credentials",),
        scopes=("profile",),
        auth_method="private_key_jwt",
        jwks={"keys": [key.as_dict(private=False)]},
    )


def assertion(client: CreatedClient, key: ECKey, **changes: Any) -> str:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims = {
        "iss": client.client.id,
        "sub": client.client.id,
        "aud": ISSUER,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
    } | changes
    return jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key)


def authenticated(browser: FlaskClient, path: str, client_assertion: str) -> TestResponse:
    form = {"client_assertion_type": ASSERTION_TYPE, "client_assertion": client_assertion}
    if path == "/token":
        form |= {"grant_type": "client_credentials", "scope": "profile"}
    else:
        form |= {"token": "not-a-token-of-ours"}
    return browser.post(path, data=form)


def assert_invalid_client(response: TestResponse) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.get_json()["error"] == "invalid_client"


@pytest.mark.parametrize("first", ["/introspect", "/revoke", "/token"])
def test_an_assertion_authenticates_once_whatever_the_endpoint(
    app: Flask, signer: CreatedClient, key: ECKey, first: str
) -> None:
    browser = app.test_client()
    once = assertion(signer, key)

    assert authenticated(browser, first, once).status_code == 200

    for path in ("/introspect", "/revoke", "/token"):
        assert_invalid_client(authenticated(browser, path, once))


@pytest.mark.parametrize(
    ("path", "audience", "accepted"),
    [
        ("/token", ISSUER, True),
        ("/token", f"{ISSUER}/token", True),
        ("/token", f"{ISSUER}/introspect", False),
        ("/token", f"{ISSUER}/revoke", False),
        ("/introspect", ISSUER, True),
        ("/introspect", f"{ISSUER}/token", True),
        ("/introspect", f"{ISSUER}/introspect", True),
        ("/introspect", f"{ISSUER}/revoke", False),
        ("/revoke", f"{ISSUER}/revoke", True),
        ("/revoke", f"{ISSUER}/introspect", False),
        ("/token", "https://elsewhere.example/token", False),
    ],
)
def test_an_assertion_names_this_server_or_the_endpoint_it_is_sent_to(
    app: Flask, signer: CreatedClient, key: ECKey, path: str, audience: str, accepted: bool
) -> None:
    response = authenticated(app.test_client(), path, assertion(signer, key, aud=audience))
    if accepted:
        assert response.status_code == 200, response.get_data(as_text=True)
    else:
        assert_invalid_client(response)


@pytest.mark.parametrize("path", ["/token", "/introspect", "/revoke"])
@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param(b"\xff\xfe:\x00", id="not-utf8"),
        pytest.param(b"client:\xc3\x28", id="not-utf8-secret"),
        pytest.param(b"no-colon", id="no-colon"),
        pytest.param(b"%ZZ:%ZZ", id="bad-percent-encoding"),
        pytest.param(b"", id="empty"),
    ],
)
def test_malformed_basic_credentials_are_invalid_client(app: Flask, path: str, credentials: bytes) -> None:
    header = "Basic " + base64.b64encode(credentials).decode()
    form = {"grant_type": "client_credentials"} if path == "/token" else {"token": "x"}
    response = app.test_client().post(path, data=form, headers={"Authorization": header})
    assert_invalid_client(response)
    assert "WWW-Authenticate" in response.headers


@pytest.mark.parametrize("path", ["/token", "/introspect", "/revoke"])
def test_basic_credentials_that_are_not_base64_are_invalid_client(app: Flask, path: str) -> None:
    form = {"grant_type": "client_credentials"} if path == "/token" else {"token": "x"}
    response = app.test_client().post(path, data=form, headers={"Authorization": "Basic %%%not-base64"})
    assert_invalid_client(response)
