"""Discovery (OIDC Discovery 1.0, RFC 8414) and the JWKS over HTTP."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient

from idp.keyring import PRIVATE_MEMBERS, Keyring, KeyState
from idp.settings import Settings

METADATA_PATHS = ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"]


@pytest.mark.parametrize("path", METADATA_PATHS)
def test_metadata_names_the_issuer_and_its_keys(client: FlaskClient, settings: Settings, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    metadata = response.get_json()
    assert metadata["issuer"] == settings.issuer
    assert metadata["jwks_uri"] == f"{settings.issuer}/jwks"
    assert metadata["id_token_signing_alg_values_supported"] == ["ES256", "RS256"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_metadata_lists_only_endpoints_that_exist(client: FlaskClient, settings: Settings) -> None:
    metadata = client.get(METADATA_PATHS[0]).get_json()
    for key, value in metadata.items():
        if key.endswith("_endpoint") or key.endswith("_uri"):
            path = value.removeprefix(settings.issuer)
            assert client.get(path).status_code != 404, key


def test_metadata_follows_the_keyring(client: FlaskClient, keyring: Keyring) -> None:
    keyring.generate("EdDSA")
    keyring.rotate("EdDSA")
    metadata = client.get(METADATA_PATHS[0]).get_json()
    assert metadata["id_token_signing_alg_values_supported"] == ["ES256", "RS256", "EdDSA"]


def test_jwks_publishes_next_active_and_retired_keys_without_private_members(
    client: FlaskClient, keyring: Keyring
) -> None:
    keyring.rotate()
    for alg in ("PS256", "EdDSA"):
        keyring.generate(alg)
    response = client.get("/jwks")
    assert response.status_code == 200
    assert response.mimetype == "application/jwk-set+json"
    published = {key["kid"]: key for key in response.get_json()["keys"]}
    records = keyring.records()
    assert set(published) == {record.kid for record in records}
    assert {record.state for record in records} == {KeyState.NEXT, KeyState.ACTIVE, KeyState.RETIRED}
    for key in published.values():
        assert not PRIVATE_MEMBERS & set(key), key
        assert key["use"] == "sig"
    assert b'"d"' not in response.data


def test_jwks_cache_age_is_shorter_than_a_next_key_waits(client: FlaskClient, settings: Settings) -> None:
    response = client.get("/jwks")
    assert response.headers["Cache-Control"] == f"public, max-age={settings.jwks_max_age}"
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def test_jwks_answers_not_modified_to_a_matching_etag(client: FlaskClient) -> None:
    first = client.get("/jwks")
    etag = first.headers["ETag"]
    again = client.get("/jwks", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.data == b""


def test_jwks_shows_a_rotation_without_restart(client: FlaskClient, keyring: Keyring) -> None:
    before = {key["kid"] for key in client.get("/jwks").get_json()["keys"]}
    result = keyring.rotate("ES256")
    after = {key["kid"] for key in client.get("/jwks").get_json()["keys"]}
    assert after - before
    assert result.activated[0].kid in before


def test_withdrawn_key_leaves_the_jwks(client: FlaskClient, keyring: Keyring) -> None:
    retired = keyring.records()[0]
    keyring.retire(retired.kid, now=True)
    kids = {key["kid"] for key in json.loads(client.get("/jwks").data)["keys"]}
    assert retired.kid not in kids


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/no-such-page", 404, "not_found"),
        ("POST", "/jwks", 405, "method_not_allowed"),
        ("DELETE", "/.well-known/openid-configuration", 405, "method_not_allowed"),
    ],
)
def test_unknown_paths_and_methods_answer_json(
    client: FlaskClient, method: str, path: str, status: int, error: str
) -> None:
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.get_json() == {"error": error}
