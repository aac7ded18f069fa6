"""Interop: real relying-party libraries against a real `idp serve`, the resident signing in through the sandbox.

- openid-client (npm, v6, OpenID Certified) in Node.js, through interop/rp.mjs: discovery, PKCE S256, state,
  nonce, RFC 9207 `iss`, the ID token's signature and claims, UserInfo, refresh, introspection and revocation.
- Authlib's OAuth 2.0 client over httpx, in Python: the same flow, the ID token checked with joserfc against the
  published JWKS.

The resident's browser (interop_support.ResidentBrowser) is httpx with cookies: it signs in with the carrier form and
the SMS code from the sandbox, allows consent, and stops at the redirect to the client, which is never contacted.

Both end with RP-initiated logout at the discovered `end_session_endpoint` (openid-client's buildEndSessionUrl; for
Authlib, which has no helper for it, the URL is built from the metadata).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from authlib.deprecate import AuthlibDeprecationWarning
from authlib.oidc.discovery import OpenIDProviderMetadata
from idp_server import IdpServer
from interop_support import (
    KIM_E164,
    REDIRECT,
    NodeRp,
    RegisteredClient,
    ResidentBrowser,
    ensure_node_modules,
    register_client,
)
from joserfc import jwt
from joserfc.jwk import KeySet
from sandbox_agency import SandboxAgency

with warnings.catch_warnings():
    # Authlib 1.9 warns once, on import, that it falls back to httpx because httpx2 is not installed; the project
    # depends on httpx, and the client works the same over it.
    warnings.simplefilter("ignore", AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import OAuth2Client

FULL_SCOPE = "openid profile phone offline_access"


@pytest.fixture(scope="session")
def node_modules() -> None:
    ensure_node_modules()


@pytest.fixture
def register(
    idp: IdpServer, tmp_path: Path, keys_dir: Path, fresh_database_url: str
) -> Callable[..., RegisteredClient]:
    """Register clients on the running server (its instance folder is the `idp` fixture's tmp_path/instance)."""

    def make(**spec: Any) -> RegisteredClient:
        return register_client(
            issuer=idp.base,
            database_url=fresh_database_url,
            instance_dir=tmp_path / "instance",
            keys_dir=keys_dir,
            **spec,
        )

    return make


@pytest.fixture
def browser(sandbox: SandboxAgency) -> Iterator[ResidentBrowser]:
    resident = ResidentBrowser(sandbox)
    yield resident
    resident.close()


def callback_params(callback: str) -> dict[str, str]:
    params = parse_qs(urlsplit(callback).query)
    assert all(len(values) == 1 for values in params.values()), params
    return {key: values[0] for key, values in params.items()}


def bearer_challenge_error(refusal: dict[str, Any] | None) -> str:
    """The `error` of the Bearer challenge openid-client parsed from a 401's WWW-Authenticate (RFC 6750 §3)."""
    assert refusal is not None, "the call was not refused"
    assert (refusal["code"], refusal["status"]) == ("OAUTH_WWW_AUTHENTICATE_CHALLENGE", 401), refusal
    (challenge,) = refusal["cause"]
    assert challenge["scheme"] == "bearer", challenge
    error: str = challenge["parameters"]["error"]
    return error


# -- openid-client -------------------------------------------------------------------------------------------------


SIGNED_OUT = "https://rp.example.kr/signed-out"


def run_openid_client(idp: IdpServer, client: RegisteredClient, browser: ResidentBrowser, scope: str) -> dict[str, Any]:
    """rp.mjs from discovery to revocation, the resident signing in between; its final report."""
    rp = NodeRp(issuer=idp.base, client=client, scope=scope, post_logout_redirect_uri=SIGNED_OUT)
    try:
        started = rp.read()
        assert started["step"] == "authorize", started
        metadata = started["server_metadata"]
        assert metadata["issuer"] == idp.base
        authorization_url = started["authorization_url"]
        assert authorization_url.startswith(f"{idp.base}/authorize?")
        sent = callback_params(authorization_url)
        assert sent["code_challenge_method"] == "S256"
        assert sent["state"] == started["state"]
        assert sent["nonce"] == started["nonce"]

        callback = browser.authorize(authorization_url)
        received = callback_params(callback)
        assert received["state"] == started["state"]
        assert received["iss"] == idp.base  # RFC 9207; openid-client checks it too
        rp.send(callback)
        report = rp.read()
        assert report["step"] == "done", report
        report["started"] = started
        return report
    finally:
        rp.stop()


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_openid_client_code_flow(
    node_modules: None,
    idp: IdpServer,
    register: Callable[..., RegisteredClient],
    browser: ResidentBrowser,
    auth_method: str,
) -> None:
    client = register(auth_method=auth_method, post_logout_redirect_uris=(SIGNED_OUT,))
    report = run_openid_client(idp, client, browser, FULL_SCOPE)
    assert browser.signed_in == 1
    assert browser.consented == 1

    claims = report["id_token_claims"]
    assert claims["iss"] == idp.base
    assert claims["aud"] == client.client_id
    assert claims["nonce"] == report["started"]["nonce"]
    assert claims["name"] == "김경기"
    assert claims["amr"] == ["sms", "mca"]
    tokens = report["token_response"]
    assert tokens["token_type"].lower() == "bearer"
    assert set(tokens) >= {"access_token", "id_token", "refresh_token", "expires_in", "scope"}

    userinfo = report["userinfo"]
    assert userinfo["sub"] == claims["sub"]
    assert userinfo["phone_number"] == KIM_E164
    assert userinfo["birthdate"] == "1985-03-14"

    introspection = report["introspection"]
    assert introspection["active"] is True
    assert introspection["client_id"] == client.client_id
    assert introspection["sub"] == claims["sub"]

    refreshed = report["refreshed"]
    assert refreshed["refresh_token"] != tokens["refresh_token"]
    assert refreshed["access_token"] != tokens["access_token"]
    again = report["refreshed_id_token_claims"]
    assert again is not None
    assert (again["iss"], again["sub"], again["aud"]) == (claims["iss"], claims["sub"], claims["aud"])
    assert again["auth_time"] == claims["auth_time"]
    assert report["refreshed_userinfo"]["sub"] == claims["sub"]

    # Revoking the refresh token revoked its grant (RFC 7009 §2.1): the access token and the refresh token are dead.
    assert report["revoked"] == "refresh_token"
    assert report["introspection_after_revocation"] == {"active": False}
    assert bearer_challenge_error(report["userinfo_after_revocation"]) == "invalid_token"
    refused = report["refresh_after_revocation"]
    assert (refused["code"], refused["status"], refused["error"]) == ("OAUTH_RESPONSE_BODY_ERROR", 400, "invalid_grant")

    # RP-Initiated Logout with the URL openid-client built: back to the service with its state, session over.
    logout = browser.http.get(report["end_session_url"])
    assert logout.status_code == 303
    assert logout.headers["Location"] == f"{SIGNED_OUT}?state=signed-out-state"
    assert browser.http.get(f"{idp.base}/account").headers["Location"].startswith("/login")


def test_openid_client_public_client(
    node_modules: None,
    idp: IdpServer,
    register: Callable[..., RegisteredClient],
    browser: ResidentBrowser,
) -> None:
    client = register(public=True, scopes=("openid", "profile"))
    assert client.secret is None
    report = run_openid_client(idp, client, browser, "openid profile")
    claims = report["id_token_claims"]
    assert claims["aud"] == client.client_id
    assert report["userinfo"] == {"sub": claims["sub"], "name": "김경기", "birthdate": "1985-03-14"}
    assert "refresh_token" not in report["token_response"]
    assert report["revoked"] == "access_token"
    assert bearer_challenge_error(report["userinfo_after_revocation"]) == "invalid_token"


# -- Authlib -------------------------------------------------------------------------------------------------------


@pytest.fixture
def insecure_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """Authlib refuses http:// issuers unless told; the e2e server is http://localhost."""
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")


def left_half_hash(value: str) -> str:
    """at_hash for an ID token signed with a SHA-256 algorithm (OIDC Core §3.1.3.6)."""
    digest = hashlib.sha256(value.encode()).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


def verified_id_token(
    id_token: str, keys: KeySet, metadata: dict[str, Any], client_id: str, **expected: Any
) -> dict[str, Any]:
    """The ID token's claims after joserfc checked its signature and OIDC Core §3.1.3.7's claims."""
    token = jwt.decode(id_token, keys, algorithms=metadata["id_token_signing_alg_values_supported"])
    assert token.header["alg"] == "RS256"  # the client's registered id_token_signed_response_alg
    options: dict[str, Any] = {
        "iss": {"essential": True, "value": metadata["issuer"]},
        "aud": {"essential": True, "value": client_id},
        "exp": {"essential": True},
        "iat": {"essential": True},
        "sub": {"essential": True},
    }
    options.update({name: {"essential": True, "value": value} for name, value in expected.items()})
    registry = jwt.JWTClaimsRegistry(leeway=5, **options)
    registry.validate(token.claims)
    return token.claims


def test_discovery_passes_authlib_metadata_validation(insecure_transport: None, idp: IdpServer) -> None:
    metadata = httpx.get(f"{idp.base}/.well-known/openid-configuration", timeout=10).json()
    OpenIDProviderMetadata(metadata).validate()  # OIDC Discovery §3 and RFC 8414 §2, as Authlib reads them


def test_authlib_client_code_flow(
    insecure_transport: None,
    idp: IdpServer,
    register: Callable[..., RegisteredClient],
    browser: ResidentBrowser,
) -> None:
    registered = register(post_logout_redirect_uris=(SIGNED_OUT,))
    discovered = httpx.get(f"{idp.base}/.well-known/openid-configuration", timeout=10)
    assert discovered.status_code == 200
    metadata: dict[str, Any] = discovered.json()
    keys = KeySet.import_key_set(httpx.get(metadata["jwks_uri"], timeout=10).json())

    with OAuth2Client(
        client_id=registered.client_id,
        client_secret=registered.secret,
        token_endpoint_auth_method=registered.auth_method,
        scope=FULL_SCOPE,
        redirect_uri=REDIRECT,
        code_challenge_method="S256",
        timeout=10,
    ) as client:
        verifier = secrets.token_urlsafe(48)
        nonce = secrets.token_urlsafe(16)
        url, state = client.create_authorization_url(
            metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce
        )
        assert "code_challenge_method=S256" in url

        callback = browser.authorize(url)
        # Authlib's client leaves the RFC 9207 check to the application; the IdP advertises and sends `iss`.
        assert metadata["authorization_response_iss_parameter_supported"] is True
        assert callback_params(callback)["iss"] == metadata["issuer"]
        token = client.fetch_token(
            metadata["token_endpoint"], authorization_response=callback, state=state, code_verifier=verifier
        )
        assert token["token_type"] == "Bearer"
        claims = verified_id_token(token["id_token"], keys, metadata, registered.client_id, nonce=nonce)
        assert claims["at_hash"] == left_half_hash(token["access_token"])
        assert claims["name"] == "김경기"

        userinfo = client.get(metadata["userinfo_endpoint"])
        assert userinfo.status_code == 200, userinfo.text
        assert userinfo.json()["sub"] == claims["sub"]
        assert userinfo.json()["phone_number"] == KIM_E164

        introspected = client.introspect_token(metadata["introspection_endpoint"], token=token["access_token"])
        assert introspected.status_code == 200, introspected.text
        assert introspected.json()["active"] is True
        assert introspected.json()["sub"] == claims["sub"]

        refreshed = client.refresh_token(metadata["token_endpoint"], refresh_token=token["refresh_token"])
        assert refreshed["refresh_token"] != token["refresh_token"]
        again = verified_id_token(
            refreshed["id_token"],
            keys,
            metadata,
            registered.client_id,
            sub=claims["sub"],
            auth_time=claims["auth_time"],
        )
        assert again["at_hash"] == left_half_hash(refreshed["access_token"])
        assert client.get(metadata["userinfo_endpoint"]).json()["sub"] == claims["sub"]  # the refreshed token

        revoked = client.revoke_token(
            metadata["revocation_endpoint"], token=refreshed["refresh_token"], token_type_hint="refresh_token"
        )
        assert revoked.status_code == 200, revoked.text
        after = client.introspect_token(metadata["introspection_endpoint"], token=refreshed["access_token"])
        assert after.json() == {"active": False}
        refused = client.get(metadata["userinfo_endpoint"])
        assert refused.status_code == 401
        assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]

    # RP-Initiated Logout 1.0 at the discovered endpoint, with the first ID token as the hint.
    logout_url = (
        metadata["end_session_endpoint"]
        + "?"
        + urlencode({"id_token_hint": token["id_token"], "post_logout_redirect_uri": SIGNED_OUT, "state": "bye"})
    )
    logout = browser.http.get(logout_url)
    assert logout.status_code == 303
    assert logout.headers["Location"] == f"{SIGNED_OUT}?state=bye"
    assert browser.http.get(f"{idp.base}/account").headers["Location"].startswith("/login")
