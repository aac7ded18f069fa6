"""The client service: validation and defaults, keyed secret digests, rotation, and initial access tokens."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from joserfc.jwk import ECKey, OctKey, RSAKey
from sqlalchemy import Engine, delete, event, func, select
from sqlalchemy.orm import Session

from idp.authn.assurance import PHR, PHRH, aal1, aal2
from idp.db import make_engine, make_session_factory
from idp.generations import BUMP_GENERATION, CLIENT_GENERATION, READ_GENERATION
from idp.models import AuditEvent, Client, InitialAccessToken
from idp.oidc.clients import (
    MAX_SECRET_LENGTH,
    ClientCache,
    ClientInvalidError,
    ClientRedirectUriInvalidError,
    ClientSpec,
    CreatedClient,
    InitialAccessTokenInvalidError,
    client_secret_digest,
    client_to_json,
    consume_initial_access_token,
    create_client,
    delete_client,
    find_client,
    initial_access_token_digest,
    list_clients,
    mint_initial_access_token,
    rotate_client_secret,
    secret_digest_key,
    verify_client_secret,
)

ISSUER = "http://localhost:8000"
NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
KEY = secret_digest_key("test-secret-key")
WEB = ClientSpec(name="수원시 민원", redirect_uris=("https://minwon.suwon.example/callback",))
JSON_FIELDS = {
    "client_id",
    "client_name",
    "redirect_uris",
    "post_logout_redirect_uris",
    "token_endpoint_auth_method",
    "grant_types",
    "scope",
    "jwks_uri",
    "backchannel_logout_uri",
    "first_party",
    "subject_type",
    "id_token_signed_response_alg",
    "default_acr",
    "created_at",
}


def create(db: Session, spec: ClientSpec, **kwargs: Any) -> CreatedClient:
    return create_client(db, spec, secret_key=KEY, issuer=ISSUER, now=NOW, **kwargs)


def count_clients(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(Client)) or 0


def public_jwks(kid: str = "rp-1") -> dict[str, Any]:
    key = ECKey.generate_key("P-256", parameters={"kid": kid})
    return {"keys": [key.as_dict(private=False)]}


# -- defaults ------------------------------------------------------------------------------------------------------


def test_web_service_gets_code_flow_secret_basic_pairwise_and_default_scopes(db: Session) -> None:
    created = create(db, WEB)
    client = created.client
    assert client.token_endpoint_auth_method == "client_secret_basic"
    assert client.grant_types == ["authorization_code", "refresh_token"]
    assert client.scopes == ["openid", "profile", "phone", "offline_access"]
    assert client.subject_type == "pairwise"
    assert client.id_token_signed_response_alg == "RS256"
    assert client.default_acr is None
    assert client.first_party is False
    assert client.sector_identifier == "minwon.suwon.example"
    assert client.created_at == NOW
    assert created.secret is not None
    assert find_client(db, client.id) is client


def test_client_id_is_url_safe_and_secret_carries_256_bits(db: Session) -> None:
    ids = set()
    for _ in range(20):
        created = create(db, WEB)
        assert created.secret is not None
        ids.add(created.client.id)
        assert created.client.id.replace("-", "").replace("_", "").isalnum()
        assert not created.client.id.startswith("-")
        assert len(created.client.id) >= 24
        assert len(created.secret) == 43  # token_urlsafe(32): 32 random bytes in base64url
    assert len(ids) == 20


def test_service_without_redirect_uris_gets_client_credentials(db: Session) -> None:
    client = create(db, ClientSpec(name="배치 작업")).client
    assert client.grant_types == ["client_credentials"]
    assert client.redirect_uris == []
    assert client.sector_identifier is None


def test_public_client_gets_no_secret_and_auth_method_none(db: Session) -> None:
    created = create(db, replace(WEB, public=True))
    assert created.secret is None
    assert created.client.secret_digest is None
    assert created.client.token_endpoint_auth_method == "none"
    assert created.client.is_public


def test_auth_method_none_without_public_flag_is_a_public_client(db: Session) -> None:
    created = create(db, replace(WEB, auth_method="none"))
    assert created.secret is None
    assert created.client.is_public


def test_client_secret_post_gets_a_secret(db: Session) -> None:
    created = create(db, replace(WEB, auth_method="client_secret_post"))
    assert created.secret is not None
    assert verify_client_secret(created.client, created.secret, key=KEY)


def test_private_key_jwt_with_inline_public_keys_gets_no_secret(db: Session) -> None:
    jwks = public_jwks()
    created = create(db, replace(WEB, auth_method="private_key_jwt", jwks=jwks))
    assert created.secret is None
    assert created.client.secret_digest is None
    assert created.client.jwks == jwks
    assert created.client.jwks_uri is None


def test_private_key_jwt_with_jwks_uri(db: Session) -> None:
    spec = replace(WEB, auth_method="private_key_jwt", jwks_uri="https://minwon.suwon.example/jwks.json")
    created = create(db, spec)
    assert created.secret is None
    assert created.client.jwks_uri == "https://minwon.suwon.example/jwks.json"
    assert created.client.jwks is None


def test_private_key_jwt_accepts_rsa_public_keys(db: Session) -> None:
    jwks = {"keys": [RSAKey.generate_key(2048).as_dict(private=False)]}
    assert create(db, replace(WEB, auth_method="private_key_jwt", jwks=jwks)).client.jwks == jwks


def test_keys_of_unknown_types_beside_usable_ones_are_ignored(db: Session) -> None:
    # RFC 7517 §5: a key whose kty is not understood is skipped (a post-quantum key published alongside).
    jwks = {"keys": [{"kty": "AKP", "alg": "ML-DSA-44", "pub": "AAAA"}, *public_jwks()["keys"]]}
    assert create(db, replace(WEB, auth_method="private_key_jwt", jwks=jwks)).client.jwks == jwks


@pytest.mark.parametrize(
    "uri",
    [
        "http://localhost:3000/callback",
        "http://127.0.0.1/callback",
        "http://[::1]:8080/callback",
        "https://minwon.suwon.example/callback?tenant=gg",
    ],
)
def test_loopback_http_and_any_https_redirect_uri_are_accepted(db: Session, uri: str) -> None:
    client = create(db, replace(WEB, redirect_uris=(uri,))).client
    assert client.redirect_uris == [uri]


@pytest.mark.parametrize("uri", ["http://127.0.0.1:8170/bc", "http://localhost:8170/bc", "https://10.0.0.5/bc"])
def test_development_may_register_local_urls_the_idp_calls(db: Session, uri: str) -> None:
    # `make run` and the tests register relying services on this machine; outside development they are refused.
    spec = replace(WEB, backchannel_logout_uri=uri)
    assert create(db, spec, allow_local_server_uris=True).client.backchannel_logout_uri == uri
    keys = replace(PKJ, jwks_uri=uri)
    assert create(db, keys, allow_local_server_uris=True).client.jwks_uri == uri


def test_several_redirect_uris_on_one_host_share_its_sector(db: Session) -> None:
    uris = ("https://a.gg.example/cb", "https://a.gg.example:8443/other", "https://a.gg.example/cb")
    client = create(db, replace(WEB, redirect_uris=uris)).client
    assert client.redirect_uris == ["https://a.gg.example/cb", "https://a.gg.example:8443/other"]
    assert client.sector_identifier == "a.gg.example"


def test_public_subjects_may_use_redirect_uris_on_several_hosts(db: Session) -> None:
    spec = replace(WEB, redirect_uris=("https://a.gg.example/cb", "https://b.gg.example/cb"), subject_type="public")
    client = create(db, spec).client
    assert client.subject_type == "public"
    assert client.sector_identifier is None


def test_explicit_settings_are_stored(db: Session) -> None:
    spec = replace(
        WEB,
        post_logout_redirect_uris=("https://minwon.suwon.example/bye",),
        backchannel_logout_uri="https://minwon.suwon.example/backchannel",
        grant_types=("authorization_code",),
        scopes=("openid", "phone"),
        first_party=True,
        id_token_alg="ES256",
        default_acr=PHR,
    )
    client = create(db, spec).client
    assert client.post_logout_redirect_uris == ["https://minwon.suwon.example/bye"]
    assert client.backchannel_logout_uri == "https://minwon.suwon.example/backchannel"
    assert client.grant_types == ["authorization_code"]
    assert client.scopes == ["openid", "phone"]
    assert client.first_party is True
    assert client.id_token_signed_response_alg == "ES256"
    assert client.default_acr == PHR


@pytest.mark.parametrize("acr", [aal1(ISSUER), aal2(ISSUER), PHR, PHRH])
def test_every_acr_of_the_issuer_may_be_the_default(db: Session, acr: str) -> None:
    assert create(db, replace(WEB, default_acr=acr)).client.default_acr == acr


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS256", "EdDSA"])
def test_every_keyring_algorithm_may_sign_id_tokens(db: Session, alg: str) -> None:
    assert create(db, replace(WEB, id_token_alg=alg)).client.id_token_signed_response_alg == alg


def test_kr_ci_is_never_a_default_and_needs_the_admin(db: Session) -> None:
    assert "kr_ci" not in create(db, WEB).client.scopes
    with pytest.raises(ClientInvalidError, match="'kr_ci' is restricted"):
        create(db, replace(WEB, scopes=("openid", "kr_ci")))
    client = create(db, replace(WEB, scopes=("openid", "kr_ci")), allow_restricted_scopes=True).client
    assert client.scopes == ["openid", "kr_ci"]


def test_creation_is_audited_without_the_secret(db: Session) -> None:
    created = create(db, WEB)
    event = db.scalar(select(AuditEvent).where(AuditEvent.client_id == created.client.id))
    assert event is not None
    assert event.event == "client.created"
    assert created.secret is not None
    assert created.secret not in str(event.details)


# -- validation ----------------------------------------------------------------------------------------------------

PRIVATE_EC = {"keys": [ECKey.generate_key("P-256").as_dict(private=True)]}
OCT = {"keys": [OctKey.generate_key(256).as_dict()]}
PKJ = replace(WEB, auth_method="private_key_jwt")

INVALID: list[tuple[str, ClientSpec, str]] = [
    ("empty name", replace(WEB, name="  "), "name is empty"),
    ("long name", replace(WEB, name="가" * 201), "longer than 200"),
    ("name with a newline", replace(WEB, name="a\nb"), "control characters"),
    ("relative redirect", replace(WEB, redirect_uris=("/callback",)), "absolute http(s) URL"),
    ("no scheme", replace(WEB, redirect_uris=("minwon.example/cb",)), "absolute http(s) URL"),
    ("custom scheme", replace(WEB, redirect_uris=("kr.go.gg.app:/cb",)), "absolute http(s) URL"),
    ("ftp", replace(WEB, redirect_uris=("ftp://minwon.example/cb",)), "absolute http(s) URL"),
    ("no host", replace(WEB, redirect_uris=("https:///cb",)), "absolute http(s) URL"),
    ("fragment", replace(WEB, redirect_uris=("https://minwon.example/cb#x",)), "fragment"),
    ("empty fragment", replace(WEB, redirect_uris=("https://minwon.example/cb#",)), "fragment"),
    ("http elsewhere", replace(WEB, redirect_uris=("http://minwon.example/cb",)), "must use https"),
    ("http on a LAN", replace(WEB, redirect_uris=("http://192.168.0.10/cb",)), "must use https"),
    ("user info", replace(WEB, redirect_uris=("https://a:b@minwon.example/cb",)), "user info"),
    ("bad port", replace(WEB, redirect_uris=("https://minwon.example:99999/cb",)), "not a valid URL"),
    ("space", replace(WEB, redirect_uris=("https://minwon.example/c b",)), "spaces"),
    ("empty", replace(WEB, redirect_uris=("",)), "empty"),
    ("too long", replace(WEB, redirect_uris=("https://minwon.example/" + "a" * 2000,)), "too long"),
    (
        "two hosts",
        replace(WEB, redirect_uris=("https://a.gg.example/cb", "https://b.gg.example/cb")),
        "pairwise subjects need one sector",
    ),
    ("code flow without redirect", ClientSpec(name="x", grant_types=("authorization_code",)), "redirect URI"),
    ("public without redirect", ClientSpec(name="x", public=True), "public client needs a redirect URI"),
    ("post-logout http", replace(WEB, post_logout_redirect_uris=("http://x.example/",)), "post-logout"),
    ("post-logout fragment", replace(WEB, post_logout_redirect_uris=("https://x.example/#a",)), "fragment"),
    ("back-channel relative", replace(WEB, backchannel_logout_uri="/logout"), "back-channel logout URI"),
    ("back-channel http", replace(WEB, backchannel_logout_uri="http://x.example/bc"), "must use https"),
    ("back-channel fragment", replace(WEB, backchannel_logout_uri="https://x.example/bc#f"), "fragment"),
    ("back-channel loopback http", replace(WEB, backchannel_logout_uri="http://127.0.0.1:8080/bc"), "must use https"),
    ("back-channel loopback", replace(WEB, backchannel_logout_uri="https://127.0.0.1/bc"), "public address"),
    ("back-channel private", replace(WEB, backchannel_logout_uri="https://10.0.0.5/bc"), "public address"),
    ("back-channel mapped", replace(WEB, backchannel_logout_uri="https://[::ffff:a00:5]/bc"), "public address"),
    ("back-channel localhost", replace(WEB, backchannel_logout_uri="https://localhost/bc"), "public host name"),
    ("public basic", replace(WEB, public=True, auth_method="client_secret_basic"), "public client cannot use"),
    ("public post", replace(WEB, public=True, auth_method="client_secret_post"), "public client cannot use"),
    ("public pkj", replace(WEB, public=True, auth_method="private_key_jwt"), "public client cannot use"),
    ("unknown auth method", replace(WEB, auth_method="tls_client_auth"), "unknown auth method 'tls_client_auth'"),
    ("pkj without keys", PKJ, "needs the client's public keys"),
    ("pkj with both", replace(PKJ, jwks=public_jwks(), jwks_uri="https://x.example/jwks"), "not both"),
    ("pkj http jwks_uri", replace(PKJ, jwks_uri="http://x.example/jwks"), "jwks_uri"),
    ("pkj loopback jwks_uri", replace(PKJ, jwks_uri="http://[::1]:8080/jwks"), "must use https"),
    ("pkj metadata jwks_uri", replace(PKJ, jwks_uri="https://169.254.169.254/jwks"), "public address"),
    ("pkj internal jwks_uri", replace(PKJ, jwks_uri="https://keys.corp.internal/jwks"), "public host name"),
    ("pkj private key", replace(PKJ, jwks=PRIVATE_EC), "private or symmetric"),
    ("pkj oct key", replace(PKJ, jwks=OCT), "private or symmetric"),
    ("pkj not a key set", replace(PKJ, jwks={"kty": "EC"}), '{"keys": [...]}'),
    ("pkj empty key set", replace(PKJ, jwks={"keys": []}), '{"keys": [...]}'),
    ("pkj broken key", replace(PKJ, jwks={"keys": [{"kty": "EC", "crv": "P-256"}]}), "does not parse"),
    ("pkj unknown kty only", replace(PKJ, jwks={"keys": [{"kty": "XYZ"}]}), "does not parse"),
    ("pkj private unknown kty", replace(PKJ, jwks={"keys": [{"kty": "XYZ", "d": "x"}]}), "private or symmetric"),
    ("keys with a secret", replace(WEB, jwks=public_jwks()), "only with private_key_jwt"),
    ("jwks_uri with a secret", replace(WEB, jwks_uri="https://x.example/jwks"), "only with private_key_jwt"),
    ("unknown grant", replace(WEB, grant_types=("password",)), "unknown grant type 'password'"),
    ("implicit", replace(WEB, grant_types=("implicit",)), "unknown grant type 'implicit'"),
    ("no grants", replace(WEB, grant_types=()), "at least one grant type"),
    ("refresh alone", replace(WEB, grant_types=("refresh_token",)), "needs the authorization_code grant"),
    (
        "refresh with client credentials",
        replace(WEB, grant_types=("client_credentials", "refresh_token")),
        "needs the authorization_code grant",
    ),
    (
        "public client credentials",
        replace(WEB, public=True, grant_types=("authorization_code", "client_credentials")),
        "client_credentials grant needs a confidential client",
    ),
    ("unknown scope", replace(WEB, scopes=("openid", "email")), "unknown scope 'email'"),
    ("no scopes", replace(WEB, scopes=()), "at least one scope"),
    ("unknown subject type", replace(WEB, subject_type="sector"), "unknown subject type 'sector'"),
    ("unknown alg", replace(WEB, id_token_alg="HS256"), "unknown ID token algorithm 'HS256'"),
    ("alg none", replace(WEB, id_token_alg="none"), "unknown ID token algorithm 'none'"),
    ("unknown acr", replace(WEB, default_acr="urn:mace:incommon:iap:silver"), "unknown acr"),
    ("acr of another issuer", replace(WEB, default_acr="https://other.example/acr/aal1"), "unknown acr"),
]


@pytest.mark.parametrize(("spec", "message"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_metadata_is_refused_with_one_line_and_nothing_is_added(
    db: Session, spec: ClientSpec, message: str
) -> None:
    before = count_clients(db)
    with pytest.raises(ClientInvalidError) as raised:
        create(db, spec)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert count_clients(db) == before


@pytest.mark.parametrize(
    "spec",
    [
        replace(WEB, redirect_uris=("http://minwon.example/cb",)),
        replace(WEB, redirect_uris=("https://minwon.example/cb#x",)),
        replace(WEB, redirect_uris=("https://a.gg.example/cb", "https://b.gg.example/cb")),
        ClientSpec(name="x", grant_types=("authorization_code",)),
    ],
)
def test_redirect_uri_problems_are_their_own_error(db: Session, spec: ClientSpec) -> None:
    # Dynamic registration answers them with invalid_redirect_uri, not invalid_client_metadata (RFC 7591 §3.2.2).
    with pytest.raises(ClientRedirectUriInvalidError):
        create(db, spec)


def test_post_logout_redirect_problems_are_metadata_errors(db: Session) -> None:
    with pytest.raises(ClientInvalidError) as raised:
        create(db, replace(WEB, post_logout_redirect_uris=("http://x.example/",)))
    assert not isinstance(raised.value, ClientRedirectUriInvalidError)


# -- secrets -------------------------------------------------------------------------------------------------------


def test_only_a_keyed_digest_of_the_secret_is_stored(db: Session) -> None:
    created = create(db, WEB)
    secret = created.secret
    assert secret is not None
    digest = created.client.secret_digest
    assert digest is not None
    assert len(digest) == 32
    assert digest != secret.encode()
    assert digest != hashlib.sha256(secret.encode()).digest()  # keyed: a stolen table alone cannot be checked
    assert digest == hmac.new(KEY, secret.encode(), hashlib.sha256).digest()
    stored = db.scalar(select(Client.secret_digest).where(Client.id == created.client.id))
    assert stored == digest


def test_digest_key_is_derived_from_the_secret_key_setting() -> None:
    assert secret_digest_key("test-secret-key") == KEY
    assert len(KEY) == 32
    assert KEY != b"test-secret-key"
    assert secret_digest_key("another-secret-key") != KEY
    assert client_secret_digest("s", KEY) != client_secret_digest("s", secret_digest_key("another-secret-key"))


def test_verify_accepts_the_secret_and_refuses_anything_else(db: Session) -> None:
    created = create(db, WEB)
    secret = created.secret
    assert secret is not None
    client = created.client
    assert verify_client_secret(client, secret, key=KEY) is True
    assert verify_client_secret(client, secret[:-1], key=KEY) is False
    assert verify_client_secret(client, secret + "x", key=KEY) is False
    assert verify_client_secret(client, secret.upper(), key=KEY) is False
    assert verify_client_secret(client, "", key=KEY) is False
    assert verify_client_secret(client, secret, key=secret_digest_key("rotated-secret-key")) is False


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every pair of digests given to hmac.compare_digest during the test."""
    pairs: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        pairs.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return pairs


def test_verify_refuses_oversized_secrets_without_hashing(db: Session, compared: list[tuple[bytes, bytes]]) -> None:
    created = create(db, WEB)
    assert created.secret is not None
    oversized = created.secret + "a" * (MAX_SECRET_LENGTH + 1)
    assert verify_client_secret(created.client, oversized, key=KEY) is False
    assert compared == []


def test_verify_compares_in_constant_time_on_both_outcomes(db: Session, compared: list[tuple[bytes, bytes]]) -> None:
    created = create(db, WEB)
    assert created.secret is not None
    assert verify_client_secret(created.client, created.secret, key=KEY)
    assert not verify_client_secret(created.client, "wrong", key=KEY)
    # Both outcomes compare two 32-byte digests: the time taken says nothing about the stored one.
    assert [(len(a), len(b)) for a, b in compared] == [(32, 32), (32, 32)]


@pytest.mark.parametrize(
    "spec", [replace(WEB, public=True), replace(WEB, auth_method="private_key_jwt", jwks=public_jwks())]
)
def test_clients_without_a_secret_never_verify_one(db: Session, spec: ClientSpec) -> None:
    client = create(db, spec).client
    assert verify_client_secret(client, "anything", key=KEY) is False
    assert verify_client_secret(client, "", key=KEY) is False


def test_rotation_invalidates_the_old_secret(db: Session) -> None:
    created = create(db, WEB)
    old = created.secret
    assert old is not None
    later = NOW + dt.timedelta(days=30)
    new = rotate_client_secret(db, created.client, key=KEY, now=later)
    assert new != old
    assert len(new) == 43
    assert verify_client_secret(created.client, new, key=KEY)
    assert not verify_client_secret(created.client, old, key=KEY)
    assert created.client.secret_rotated_at == later
    db.expire(created.client)
    reloaded = find_client(db, created.client.id)
    assert reloaded is not None
    assert verify_client_secret(reloaded, new, key=KEY)
    events = db.scalars(select(AuditEvent.event).where(AuditEvent.client_id == created.client.id)).all()
    assert "client.secret_rotated" in events


@pytest.mark.parametrize(
    ("spec", "method"),
    [
        (replace(WEB, public=True), "none"),
        (replace(WEB, auth_method="private_key_jwt", jwks=public_jwks()), "private_key_jwt"),
    ],
)
def test_rotation_is_refused_for_clients_without_a_secret(db: Session, spec: ClientSpec, method: str) -> None:
    client = create(db, spec).client
    with pytest.raises(ClientInvalidError, match=f"uses {method}: it has no secret to rotate"):
        rotate_client_secret(db, client, key=KEY, now=NOW)
    assert client.secret_digest is None
    assert client.secret_rotated_at is None


def test_secret_post_clients_can_rotate(db: Session) -> None:
    created = create(db, replace(WEB, auth_method="client_secret_post"))
    new = rotate_client_secret(db, created.client, key=KEY, now=NOW)
    assert verify_client_secret(created.client, new, key=KEY)


# -- find, list, delete, JSON --------------------------------------------------------------------------------------


def test_find_returns_none_for_unknown_empty_or_oversized_ids(db: Session) -> None:
    assert find_client(db, "no-such-client") is None
    assert find_client(db, "") is None
    assert find_client(db, "x" * 65) is None


def test_list_is_oldest_first(db: Session) -> None:
    first = create_client(db, WEB, secret_key=KEY, issuer=ISSUER, now=NOW - dt.timedelta(days=1)).client
    second = create(db, WEB).client
    ids = [client.id for client in list_clients(db)]
    assert ids.index(first.id) < ids.index(second.id)


def test_delete_removes_the_client_and_records_it(db: Session) -> None:
    client = create(db, WEB).client
    client_id = client.id
    delete_client(db, client)
    assert find_client(db, client_id) is None
    assert client_id not in [c.id for c in list_clients(db)]
    # Without an ORDER BY, PostgreSQL may return the rows in any order (it did, once in a full run).
    query = select(AuditEvent.event).where(AuditEvent.client_id == client_id).order_by(AuditEvent.id)
    assert db.scalars(query).all() == ["client.created", "client.deleted"]


def test_json_has_a_stable_shape_and_never_the_digest(db: Session) -> None:
    created = create(db, replace(WEB, backchannel_logout_uri="https://minwon.suwon.example/bc", default_acr=PHR))
    data = client_to_json(created.client)
    assert set(data) == JSON_FIELDS
    assert data["client_id"] == created.client.id
    assert data["client_name"] == "수원시 민원"
    assert data["scope"] == "openid profile phone offline_access"
    assert data["grant_types"] == ["authorization_code", "refresh_token"]
    assert data["token_endpoint_auth_method"] == "client_secret_basic"
    assert data["backchannel_logout_uri"] == "https://minwon.suwon.example/bc"
    assert data["default_acr"] == PHR
    assert data["created_at"] == "2026-11-26T06:00:00Z"
    assert created.secret is not None
    assert created.secret not in str(data)
    assert not any(isinstance(value, bytes) for value in data.values())


# -- initial access tokens -----------------------------------------------------------------------------------------


def test_initial_access_token_is_stored_only_as_its_digest(db: Session) -> None:
    token = mint_initial_access_token(db, uses=1, expires_in=3600, note="수원시 신규 서비스", now=NOW)
    assert len(token) == 43
    row = db.get(InitialAccessToken, initial_access_token_digest(token))
    assert row is not None
    assert row.digest == hashlib.sha256(token.encode()).digest()
    assert row.uses_left == 1
    assert row.expires_at == NOW + dt.timedelta(hours=1)
    assert row.note == "수원시 신규 서비스"
    assert token.encode() not in (row.digest, (row.note or "").encode())


def test_initial_access_token_allows_as_many_uses_as_minted(db: Session) -> None:
    token = mint_initial_access_token(db, uses=2, expires_in=3600, note=None, now=NOW)
    assert consume_initial_access_token(db, token, now=NOW) is True
    assert consume_initial_access_token(db, token, now=NOW) is True
    assert consume_initial_access_token(db, token, now=NOW) is False
    db.expire_all()
    row = db.get(InitialAccessToken, initial_access_token_digest(token))
    assert row is not None
    assert row.uses_left == 0


def test_initial_access_token_expires(db: Session) -> None:
    token = mint_initial_access_token(db, uses=5, expires_in=60, note=None, now=NOW)
    assert consume_initial_access_token(db, token, now=NOW + dt.timedelta(seconds=59)) is True
    assert consume_initial_access_token(db, token, now=NOW + dt.timedelta(seconds=60)) is False
    assert consume_initial_access_token(db, token, now=NOW + dt.timedelta(days=1)) is False


@pytest.mark.parametrize("token", ["", "unknown-token", "x" * (MAX_SECRET_LENGTH + 1)])
def test_unknown_empty_or_oversized_initial_access_tokens_are_refused(db: Session, token: str) -> None:
    mint_initial_access_token(db, uses=1, expires_in=60, note=None, now=NOW)
    assert consume_initial_access_token(db, token, now=NOW) is False


@pytest.mark.parametrize(
    ("uses", "expires_in", "note", "message"),
    [
        (0, 60, None, "uses must be from 1"),
        (-1, 60, None, "uses must be from 1"),
        (1001, 60, None, "uses must be from 1"),
        (1, 0, None, "lifetime must be from 1"),
        (1, 366 * 86400, None, "lifetime must be from 1"),
        (1, 60, "x" * 201, "note must be one line"),
        (1, 60, "two\nlines", "note must be one line"),
    ],
)
def test_initial_access_token_limits(db: Session, uses: int, expires_in: int, note: str | None, message: str) -> None:
    with pytest.raises(InitialAccessTokenInvalidError, match=message):
        mint_initial_access_token(db, uses=uses, expires_in=expires_in, note=note, now=NOW)
    assert db.scalar(select(func.count()).select_from(InitialAccessToken)) == 0


@pytest.fixture
def committed_engine(fresh_database_url: str) -> Iterator[Engine]:
    """An engine on a database of its own: racing transactions must commit to see each other."""
    engine = make_engine(fresh_database_url)
    yield engine
    engine.dispose()


RACERS = 8


def race(engine: Engine, attempt: Callable[[Session], bool]) -> list[bool]:
    """Run `attempt` in RACERS threads, each in its own transaction, started together."""
    barrier = threading.Barrier(RACERS)
    results: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            with Session(engine) as session:
                barrier.wait()
                outcome = attempt(session)
                session.commit()
            with lock:
                results.append(outcome)
        except BaseException as exc:  # a thread's failure is reported by the test, not lost
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    return results


def test_single_use_initial_access_token_is_used_once_however_many_race(committed_engine: Engine) -> None:
    with Session(committed_engine) as session:
        token = mint_initial_access_token(session, uses=1, expires_in=3600, note=None, now=NOW)
        session.commit()
    results = race(committed_engine, lambda session: consume_initial_access_token(session, token, now=NOW))
    assert sorted(results) == [False] * (RACERS - 1) + [True]
    with Session(committed_engine) as session:
        row = session.get(InitialAccessToken, initial_access_token_digest(token))
        assert row is not None
        assert row.uses_left == 0


def test_racing_uses_never_exceed_the_minted_count(committed_engine: Engine) -> None:
    with Session(committed_engine) as session:
        token = mint_initial_access_token(session, uses=3, expires_in=3600, note=None, now=NOW)
        session.commit()
    results = race(committed_engine, lambda session: consume_initial_access_token(session, token, now=NOW))
    assert results.count(True) == 3


# -- the per-process cache -------------------------------------------------------------------------------------------


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def count_statements(engine: Engine) -> list[str]:
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    return seen


@pytest.fixture
def committed(fresh_database_url: str) -> Iterator[tuple[Engine, Callable[[], Session]]]:
    """An engine on a database of the test's own, whose commits stay (as two processes would see them)."""
    engine = make_engine(fresh_database_url)
    yield engine, make_session_factory(engine)
    engine.dispose()


def generation(engine: Engine) -> int:
    with engine.connect() as connection:
        value: int = connection.execute(READ_GENERATION, {"generation": CLIENT_GENERATION}).scalar_one()
        return value


def test_a_cached_client_is_read_without_a_query_until_the_interval_passes(
    committed: tuple[Engine, Callable[[], Session]],
) -> None:
    engine, sessions = committed
    with sessions() as db:
        created = create_client(db, WEB, secret_key=KEY, issuer=ISSUER, now=NOW)
        db.commit()
    ticks = Ticks()
    cache = ClientCache(check_interval=1.0, clock=ticks)
    statements = count_statements(engine)
    with sessions() as db:
        first = cache.get(db, created.client.id)
    assert first is not None
    assert len(statements) == 2  # the generation, then the client
    for _ in range(3):
        ticks.now += 0.3
        with sessions() as db:
            assert cache.get(db, created.client.id) is first
    assert len(statements) == 2
    ticks.now += 0.2  # a second after the last check: the generation is read again, the client is not
    with sessions() as db:
        assert cache.get(db, created.client.id) is first
    assert len(statements) == 3
    # Detached from every session, the copy still answers what the protocol checks ask.
    assert (first.name, first.redirect_uris, first.is_public) == (WEB.name, list(WEB.redirect_uris), False)


def test_a_change_committed_by_another_process_is_seen_within_the_interval(
    committed: tuple[Engine, Callable[[], Session]],
) -> None:
    engine, sessions = committed
    with sessions() as db:
        created = create_client(db, WEB, secret_key=KEY, issuer=ISSUER, now=NOW)
        db.commit()
    ticks = Ticks()
    cache = ClientCache(check_interval=1.0, clock=ticks)
    with sessions() as db:
        assert cache.get(db, created.client.id) is not None
    # Another process deletes the client: its ORM flush moves the generation, which is all this process sees.
    with engine.begin() as connection:
        connection.execute(delete(Client).where(Client.id == created.client.id))
        connection.execute(BUMP_GENERATION, {"generation": CLIENT_GENERATION})
    ticks.now += 0.5
    with sessions() as db:
        assert cache.get(db, created.client.id) is not None  # within the interval: the copy still serves
    ticks.now += 0.5
    with sessions() as db:
        assert cache.get(db, created.client.id) is None


@pytest.mark.parametrize("change", ["rotate", "delete", "edit"])
def test_every_orm_change_to_a_client_moves_the_generation_and_clears_this_process_at_once(
    committed: tuple[Engine, Callable[[], Session]], change: str
) -> None:
    engine, sessions = committed
    with sessions() as db:
        created = create_client(db, WEB, secret_key=KEY, issuer=ISSUER, now=NOW)
        db.commit()
    before = generation(engine)
    ticks = Ticks()
    cache = ClientCache(check_interval=3600.0, clock=ticks)
    with sessions() as db:
        cached = cache.get(db, created.client.id)
    assert cached is not None
    with sessions() as db:
        client = find_client(db, created.client.id)
        assert client is not None
        if change == "rotate":
            rotate_client_secret(db, client, key=KEY, now=NOW)
        elif change == "delete":
            delete_client(db, client)
        else:
            client.redirect_uris = ["https://minwon.suwon.example/other"]
        db.commit()
    assert generation(engine) == before + 1
    with sessions() as db:
        fresh = cache.get(db, created.client.id)  # no time passed: this process's own commit cleared it
    if change == "delete":
        assert fresh is None
    else:
        assert fresh is not None
        assert fresh is not cached
        assert (fresh.secret_digest != cached.secret_digest) == (change == "rotate")


def test_a_rolled_back_change_moves_nothing(committed: tuple[Engine, Callable[[], Session]]) -> None:
    engine, sessions = committed
    with sessions() as db:
        created = create_client(db, WEB, secret_key=KEY, issuer=ISSUER, now=NOW)
        db.commit()
    before = generation(engine)
    with sessions() as db:
        client = find_client(db, created.client.id)
        assert client is not None
        client.name = "바뀐 이름"
        db.flush()
        db.rollback()
    assert generation(engine) == before


@pytest.mark.parametrize("client_id", ["", "no such client", "a" * 65, "\x00", "unknown-but-well-formed"])
def test_unknown_and_malformed_client_ids_are_not_remembered(
    committed: tuple[Engine, Callable[[], Session]], client_id: str
) -> None:
    _engine, sessions = committed
    cache = ClientCache()
    with sessions() as db:
        assert cache.get(db, client_id) is None
        assert cache.get(db, client_id) is None
    assert cache._clients == {}
