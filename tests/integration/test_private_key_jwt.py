"""`private_key_jwt` with keys at the client's jwks_uri (RFC 7523, OIDC Core §9), fetched by the token endpoint:
from a loopback server in development, and never from one outside development."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from flask import Flask
from joserfc import jwt
from joserfc.jwk import ECKey
from local_server import Answer, LocalServer
from oidc_flow import register

from idp.runtime import of as runtime_of
from idp.settings import Settings

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"  # RFC 7523 §2.2


@pytest.fixture
def key() -> ECKey:
    return ECKey.generate_key("P-256", auto_kid=True)


@pytest.fixture
def jwks_server(key: ECKey) -> Iterator[LocalServer]:
    body = json.dumps({"keys": [key.as_dict(private=False)]}).encode()
    server = LocalServer(lambda path: Answer(body=body, headers={"Content-Type": "application/json"}))
    yield server
    server.close()


@pytest.fixture
def development_app(make_app: Callable[[Settings], Flask], settings: Settings, fresh_database_url: str) -> Flask:
    app = make_app(replace(settings, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


def client_credentials(app: Flask, client_id: str, key: ECKey) -> tuple[int, dict[str, object]]:
    issuer = runtime_of(app).settings.issuer
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": f"{issuer}/token",
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
    }
    assertion = jwt.encode({"alg": "ES256", "kid": key.kid}, claims, key)
    response = app.test_client().post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "scope": "profile",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )
    return response.status_code, response.get_json()


def register_signer(app: Flask, jwks_uri: str) -> str:
    created = register(
        app,
        name="복지포털 배치",
        redirect_uris=(),
        grant_types=("client_credentials",),
        scopes=("profile",),
        auth_method="private_key_jwt",
        jwks_uri=jwks_uri,
    )
    return created.client.id


def test_in_development_keys_are_fetched_from_a_loopback_jwks_uri(
    development_app: Flask, jwks_server: LocalServer, key: ECKey
) -> None:
    client_id = register_signer(development_app, f"http://127.0.0.1:{jwks_server.port}/jwks.json")
    status, body = client_credentials(development_app, client_id, key)
    assert status == 200, body
    assert [(seen.method, seen.path) for seen in jwks_server.requests] == [("GET", "/jwks.json")]


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_outside_development_a_loopback_jwks_uri_is_never_connected_to(
    make_app: Callable[[Settings], Flask],
    development_app: Flask,
    jwks_server: LocalServer,
    key: ECKey,
    scheme: str,
) -> None:
    # Registered in development (or before the rule); a production server on the same database refuses to fetch.
    client_id = register_signer(development_app, f"{scheme}://127.0.0.1:{jwks_server.port}/jwks.json")
    production = make_app(replace(runtime_of(development_app).settings, env="production"))
    production.config["TESTING"] = True
    status, body = client_credentials(production, client_id, key)
    assert (status, body["error"]) == (401, "invalid_client")
    assert jwks_server.connections == 0
