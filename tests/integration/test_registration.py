"""Dynamic registration (RFC 7591/7592): only with an initial access token an admin minted."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace

import pytest
from flask import Flask
from oidc_flow import basic
from sqlalchemy import func, select

from idp.models import Client
from idp.oidc.clients import mint_initial_access_token
from idp.runtime import of as runtime_of
from idp.settings import Settings

METADATA = {
    "client_name": "건축인허가 테스트",
    "redirect_uris": ["https://permits.example.kr/callback"],
    "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
    "scope": "openid profile",
}


@pytest.fixture
def app(make_app: Callable[[Settings], Flask], settings: Settings, fresh_database_url: str) -> Flask:
    app = make_app(replace(settings, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


def mint(app: Flask, uses: int = 1) -> str:
    with runtime_of(app).sessions() as db:
        token = mint_initial_access_token(db, uses=uses, expires_in=600, note="test", now=dt.datetime.now(dt.UTC))
        db.commit()
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_registered_client_can_use_its_secret_and_manage_itself(app: Flask) -> None:
    client = app.test_client()
    response = client.post("/register", json=METADATA, headers=bearer(mint(app)))
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["client_name"] == METADATA["client_name"]
    assert body["redirect_uris"] == METADATA["redirect_uris"]
    assert body["client_secret_expires_at"] == 0
    assert body["registration_client_uri"] == f"http://localhost:8000/register/{body['client_id']}"
    token = client.post(
        "/token",
        data={"grant_type": "client_credentials", "scope": "profile"},
        headers=basic(body["client_id"], body["client_secret"]),
    )
    assert token.status_code == 200, token.get_data(as_text=True)
    read = client.get(f"/register/{body['client_id']}", headers=bearer(body["registration_access_token"]))
    assert read.status_code == 200
    assert "client_secret" not in read.get_json()
    assert (
        client.delete(f"/register/{body['client_id']}", headers=bearer(body["registration_access_token"])).status_code
        == 204
    )
    gone = client.get(f"/register/{body['client_id']}", headers=bearer(body["registration_access_token"]))
    assert gone.status_code == 401


@pytest.mark.parametrize(
    ("headers", "metadata", "status", "error"),
    [
        ({}, METADATA, 401, "invalid_token"),
        (bearer("not-a-token"), METADATA, 401, "invalid_token"),
        (None, {**METADATA, "redirect_uris": ["http://permits.example.kr/cb"]}, 400, "invalid_redirect_uri"),
        (
            None,
            {**METADATA, "redirect_uris": ["https://a.example.kr/cb", "https://b.example.kr/cb"]},
            400,
            "invalid_redirect_uri",
        ),
        (None, {**METADATA, "scope": "openid kr_ci"}, 400, "invalid_client_metadata"),
        (None, {**METADATA, "response_types": ["token"]}, 400, "invalid_client_metadata"),
        (None, {**METADATA, "redirect_uris": "https://permits.example.kr/cb"}, 400, "invalid_client_metadata"),
        (None, {**METADATA, "token_endpoint_auth_method": "client_secret_jwt"}, 400, "invalid_client_metadata"),
    ],
    ids=[
        "no-token",
        "unknown-token",
        "plain-http",
        "two-hosts",
        "restricted-scope",
        "implicit",
        "uris-not-list",
        "hs256-auth",
    ],
)
def test_registration_refusals(
    app: Flask, headers: dict[str, str] | None, metadata: dict[str, object], status: int, error: str
) -> None:
    response = app.test_client().post(
        "/register", json=metadata, headers=bearer(mint(app)) if headers is None else headers
    )
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["error"] == error
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_an_initial_access_token_is_single_use(app: Flask) -> None:
    token = mint(app, uses=1)
    client = app.test_client()
    assert client.post("/register", json=METADATA, headers=bearer(token)).status_code == 201
    again = client.post("/register", json=METADATA, headers=bearer(token))
    assert again.status_code == 401


def test_a_form_body_is_refused(app: Flask) -> None:
    response = app.test_client().post("/register", data={"client_name": "x"}, headers=bearer(mint(app)))
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_client_metadata"


def test_updates_are_refused_with_allow(app: Flask) -> None:
    body = app.test_client().post("/register", json=METADATA, headers=bearer(mint(app))).get_json()
    response = app.test_client().put(
        f"/register/{body['client_id']}", json=METADATA, headers=bearer(body["registration_access_token"])
    )
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, DELETE"


# -- URLs the IdP calls itself (back-channel logout, jwks_uri) -----------------------------------------------------

LOCAL_URLS = [
    "http://127.0.0.1:8080/backchannel",
    "https://127.0.0.1/backchannel",
    "https://localhost:8443/backchannel",
    "https://10.0.0.5/backchannel",
    "https://192.168.0.10/backchannel",
    "https://172.20.1.1/backchannel",
    "https://169.254.169.254/latest/meta-data",
    "https://100.64.0.1/backchannel",
    "https://0.0.0.0/backchannel",
    "https://[::1]/backchannel",
    "https://[fd00::1]/backchannel",
    "https://[fe80::1]/backchannel",
    "https://[::ffff:127.0.0.1]/backchannel",
    "https://224.0.0.1/backchannel",
    "https://2130706433/backchannel",
    "https://metadata.google.internal/backchannel",
    "http://permits.example.kr/backchannel",
]


DESCRIBED = {"backchannel_logout_uri": "back-channel logout URI", "jwks_uri": "jwks_uri"}


def server_uri_metadata(field: str, uri: str) -> dict[str, object]:
    if field == "jwks_uri":
        return {**METADATA, "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": uri}
    return {**METADATA, field: uri}


@pytest.fixture
def production_app(make_app: Callable[[Settings], Flask], settings: Settings, fresh_database_url: str) -> Flask:
    app = make_app(replace(settings, database_url=fresh_database_url, env="production"))
    app.config["TESTING"] = True
    return app


@pytest.mark.parametrize("uri", LOCAL_URLS)
@pytest.mark.parametrize("field", ["backchannel_logout_uri", "jwks_uri"])
def test_outside_development_urls_the_idp_calls_must_be_https_on_public_hosts(
    production_app: Flask, field: str, uri: str
) -> None:
    response = production_app.test_client().post(
        "/register", json=server_uri_metadata(field, uri), headers=bearer(mint(production_app))
    )
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == "invalid_client_metadata"  # RFC 7591 §3.2.2: a metadata value is invalid
    assert DESCRIBED[field] in body["error_description"]
    with runtime_of(production_app).sessions() as db:
        assert db.scalar(select(func.count()).select_from(Client)) == 0


@pytest.mark.parametrize("field", ["backchannel_logout_uri", "jwks_uri"])
def test_outside_development_https_urls_on_public_hosts_are_registered(production_app: Flask, field: str) -> None:
    uri = "https://permits.example.kr/oidc/endpoint"
    response = production_app.test_client().post(
        "/register", json=server_uri_metadata(field, uri), headers=bearer(mint(production_app))
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()[field] == uri


@pytest.mark.parametrize("field", ["backchannel_logout_uri", "jwks_uri"])
def test_in_development_a_loopback_url_is_registered(app: Flask, field: str) -> None:
    uri = "http://127.0.0.1:8170/oidc/endpoint"
    response = app.test_client().post("/register", json=server_uri_metadata(field, uri), headers=bearer(mint(app)))
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.get_json()[field] == uri


@pytest.mark.parametrize("opener", ["[", '{"client_name":'])
def test_a_body_nested_deeper_than_the_json_parser_goes_is_refused(app: Flask, opener: str) -> None:
    """Issue 10: the parser's recursion limit is an error like any malformed JSON (it was a 500)."""
    depth = 3_000  # past the parser's recursion limit, within the 64 kB body limit
    body = opener * depth + "1" + ("]" if opener == "[" else "}") * depth
    token = mint(app)
    response = app.test_client().post("/register", data=body, content_type="application/json", headers=bearer(token))
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"] == "invalid_client_metadata"
    # Refused before the token was spent.
    assert app.test_client().post("/register", json=METADATA, headers=bearer(token)).status_code == 201
