"""Dynamic registration without HTTP: metadata to a client spec (RFC 7591 §2), registration behind an initial access
token, and the RFC 7592 registration access token."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import pytest
from authlib.oauth2.base import OAuth2Error
from factories import ISSUER, make_client
from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.models import AuditEvent, Client
from idp.oidc.clients import (
    ClientSpec,
    client_secret_digest,
    find_client,
    mint_initial_access_token,
    secret_digest_key,
)
from idp.oidc.registration import (
    MAX_METADATA_FIELDS,
    client_for_registration_token,
    delete_registration,
    read_registration,
    register_client,
    spec_from_metadata,
)

NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
KEY = secret_digest_key("test-secret-key")
SIGNING = ["ES256", "RS256"]
METADATA: dict[str, Any] = {
    "client_name": "건축인허가 테스트",
    "redirect_uris": ["https://permits.example.kr/callback"],
    "scope": "openid profile",
}


def register(db: Session, token: str | None, metadata: dict[str, Any], **options: Any) -> dict[str, Any]:
    return register_client(
        db, token, metadata, secret_key=KEY, issuer=ISSUER, now=NOW, signing_algorithms=SIGNING, **options
    )


def mint(db: Session, *, uses: int = 1, expires_in: int = 600) -> str:
    return mint_initial_access_token(db, uses=uses, expires_in=expires_in, note="test", now=NOW)


def refused(call: Any, *args: Any, **kwargs: Any) -> OAuth2Error:
    with pytest.raises(OAuth2Error) as caught:
        call(*args, **kwargs)
    return caught.value


# -- metadata --------------------------------------------------------------------------------------------------------


def test_metadata_becomes_a_client_spec() -> None:
    spec = spec_from_metadata(
        {
            "client_name": "복지 앱",
            "redirect_uris": ["https://welfare.example.kr/cb"],
            "post_logout_redirect_uris": ["https://welfare.example.kr/bye"],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code"],
            "scope": "openid phone",
            "backchannel_logout_uri": "https://welfare.example.kr/logout",
            "id_token_signed_response_alg": "ES256",
            "default_acr_values": ["phr", "phrh"],
        }
    )
    assert spec == ClientSpec(
        name="복지 앱",
        redirect_uris=("https://welfare.example.kr/cb",),
        post_logout_redirect_uris=("https://welfare.example.kr/bye",),
        public=True,
        auth_method="none",
        grant_types=("authorization_code",),
        scopes=("openid", "phone"),
        backchannel_logout_uri="https://welfare.example.kr/logout",
        id_token_alg="ES256",
        default_acr="phr",
    )


def test_metadata_defaults_leave_the_choices_to_create_client() -> None:
    spec = spec_from_metadata({"client_name": "배치"})
    assert spec == ClientSpec(name="배치")


def test_what_a_service_may_not_choose_is_not_read() -> None:
    spec = spec_from_metadata(
        {
            **METADATA,
            "first_party": True,
            "subject_type": "public",
            "client_id": "chosen-id",
            "client_secret": "chosen-secret",
        }
    )
    assert spec.first_party is False
    assert spec.subject_type is None
    assert spec.name == METADATA["client_name"]


@pytest.mark.parametrize(
    "metadata",
    [
        ["not", "an", "object"],
        {f"field_{n}": "x" for n in range(MAX_METADATA_FIELDS + 1)},
        {**METADATA, "response_types": ["token"]},
        {**METADATA, "response_types": ["code", "id_token"]},
        {**METADATA, "response_types": "code"},
        {**METADATA, "redirect_uris": "https://permits.example.kr/callback"},
        {**METADATA, "redirect_uris": [42]},
        {**METADATA, "client_name": ["건축"]},
        {**METADATA, "scope": ["openid"]},
        {**METADATA, "token_endpoint_auth_method": 1},
        {**METADATA, "jwks": [{"kty": "EC"}]},
        {**METADATA, "jwks_uri": {"url": "https://permits.example.kr/jwks"}},
        {**METADATA, "grant_types": [None]},
        {**METADATA, "default_acr_values": "phr"},
    ],
    ids=[
        "list",
        "too-many-fields",
        "implicit",
        "hybrid",
        "text-response-types",
        "text-redirect-uris",
        "number-redirect-uri",
        "list-name",
        "list-scope",
        "number-auth-method",
        "list-jwks",
        "object-jwks-uri",
        "null-grant-type",
        "text-acr-values",
    ],
)
def test_metadata_of_the_wrong_shape_is_refused(metadata: Any) -> None:
    error = refused(spec_from_metadata, metadata)
    assert (error.error, error.status_code) == ("invalid_client_metadata", 400)


# -- registering -----------------------------------------------------------------------------------------------------


def test_registration_with_an_initial_access_token_creates_a_client_that_can_manage_itself(db: Session) -> None:
    body = register(db, mint(db), METADATA)
    client = find_client(db, body["client_id"])
    assert client is not None
    assert client.name == METADATA["client_name"]
    assert client.scopes == ["openid", "profile"]
    assert client.first_party is False
    assert client.subject_type == "pairwise"
    # RFC 7591 §3.2.1: the secret once, never expiring; the RFC 7592 token and URI to manage the registration.
    assert body["client_secret_expires_at"] == 0
    assert client.secret_digest == client_secret_digest(body["client_secret"], KEY)
    assert body["client_id_issued_at"] == int(NOW.timestamp())
    assert body["registration_client_uri"] == f"{ISSUER}/register/{client.id}"
    assert client.registration_token_digest == hashlib.sha256(body["registration_access_token"].encode()).digest()
    assert client_for_registration_token(db, client.id, body["registration_access_token"]) is client
    assert db.scalars(select(AuditEvent.client_id).where(AuditEvent.event == "client.registered")).all() == [client.id]


def test_public_client_registers_without_a_secret(db: Session) -> None:
    body = register(db, mint(db), {**METADATA, "token_endpoint_auth_method": "none"})
    assert "client_secret" not in body
    assert body["token_endpoint_auth_method"] == "none"


@pytest.mark.parametrize("token", [None, "", "never-minted", "x" * 600])
def test_registration_without_a_valid_initial_access_token_is_refused(db: Session, token: str | None) -> None:
    error = refused(register, db, token, METADATA)
    assert (error.error, error.status_code) == ("invalid_token", 401)
    assert db.scalars(select(Client)).all() == []


def test_an_initial_access_token_is_spent_by_its_uses(db: Session) -> None:
    token = mint(db, uses=2)
    register(db, token, METADATA)
    register(db, token, METADATA)
    error = refused(register, db, token, METADATA)
    assert (error.error, error.status_code) == ("invalid_token", 401)
    assert len(db.scalars(select(Client)).all()) == 2


def test_an_expired_initial_access_token_is_refused(db: Session) -> None:
    token = mint_initial_access_token(db, uses=5, expires_in=60, note=None, now=NOW - dt.timedelta(seconds=60))
    assert refused(register, db, token, METADATA).error == "invalid_token"


@pytest.mark.parametrize(
    ("metadata", "error"),
    [
        ({**METADATA, "redirect_uris": ["http://permits.example.kr/cb"]}, "invalid_redirect_uri"),
        ({**METADATA, "redirect_uris": ["https://permits.example.kr/cb#x"]}, "invalid_redirect_uri"),
        ({**METADATA, "scope": "openid kr_ci"}, "invalid_client_metadata"),
        ({**METADATA, "scope": "openid admin"}, "invalid_client_metadata"),
        ({**METADATA, "id_token_signed_response_alg": "PS256"}, "invalid_client_metadata"),
        ({**METADATA, "id_token_signed_response_alg": "HS256"}, "invalid_client_metadata"),
        ({**METADATA, "backchannel_logout_uri": "https://127.0.0.1/logout"}, "invalid_client_metadata"),
        ({**METADATA, "client_name": ""}, "invalid_client_metadata"),
    ],
    ids=[
        "http-redirect",
        "fragment",
        "restricted-scope",
        "unknown-scope",
        "alg-without-a-key",
        "hmac-alg",
        "loopback-backchannel",
        "no-name",
    ],
)
def test_metadata_create_client_refuses_is_an_rfc_7591_error(db: Session, metadata: dict[str, Any], error: str) -> None:
    refusal = refused(register, db, mint(db), metadata)
    assert (refusal.error, refusal.status_code) == (error, 400)
    assert db.scalars(select(Client)).all() == []


def test_development_may_register_a_local_back_channel_uri(db: Session) -> None:
    local = {**METADATA, "backchannel_logout_uri": "http://127.0.0.1:8001/logout"}
    body = register(db, mint(db), local, allow_local_server_uris=True)
    assert body["backchannel_logout_uri"] == "http://127.0.0.1:8001/logout"


# -- managing a registration (RFC 7592) ------------------------------------------------------------------------------


@pytest.fixture
def registered(db: Session) -> dict[str, Any]:
    return register(db, mint(db), METADATA)


@pytest.mark.parametrize(
    "token",
    [None, "", "wrong", "x" * 5000],
    ids=["none", "empty", "wrong", "oversized"],
)
def test_registration_access_token_must_be_the_clients_own(
    db: Session, registered: dict[str, Any], token: str | None
) -> None:
    error = refused(client_for_registration_token, db, registered["client_id"], token)
    assert (error.error, error.status_code) == ("invalid_token", 401)


def test_one_clients_registration_token_does_not_manage_another(db: Session, registered: dict[str, Any]) -> None:
    other = register(db, mint(db), {**METADATA, "client_name": "다른 서비스"})
    error = refused(client_for_registration_token, db, other["client_id"], registered["registration_access_token"])
    assert error.error == "invalid_token"


@pytest.mark.parametrize("client_id", ["unknown-client", "", "x" * 129, "bad id\x00"])
def test_an_unknown_client_is_answered_like_a_wrong_token(
    db: Session, registered: dict[str, Any], client_id: str
) -> None:
    error = refused(client_for_registration_token, db, client_id, registered["registration_access_token"])
    assert (error.error, error.status_code) == ("invalid_token", 401)


def test_a_client_an_admin_created_has_no_registration_to_manage(db: Session) -> None:
    created = make_client(db, now=NOW)
    assert created.client.registration_token_digest is None
    error = refused(client_for_registration_token, db, created.client.id, "anything")
    assert error.error == "invalid_token"


def test_reading_a_registration_never_shows_a_secret(db: Session, registered: dict[str, Any]) -> None:
    client = client_for_registration_token(db, registered["client_id"], registered["registration_access_token"])
    body = read_registration(client, issuer=ISSUER)
    assert body["client_id"] == client.id
    assert body["registration_client_uri"] == f"{ISSUER}/register/{client.id}"
    assert not {"client_secret", "registration_access_token"} & set(body)
    assert registered["client_secret"] not in str(body)


def test_deleting_a_registration_removes_the_client_and_its_token(db: Session, registered: dict[str, Any]) -> None:
    client = client_for_registration_token(db, registered["client_id"], registered["registration_access_token"])
    delete_registration(db, client)
    assert find_client(db, registered["client_id"]) is None
    error = refused(client_for_registration_token, db, registered["client_id"], registered["registration_access_token"])
    assert error.error == "invalid_token"
    deregistered = db.scalars(select(AuditEvent.client_id).where(AuditEvent.event == "client.deregistered")).all()
    assert deregistered == [registered["client_id"]]
