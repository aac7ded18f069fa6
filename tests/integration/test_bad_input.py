"""Malformed, forged and misplaced requests at every OIDC endpoint: the exact OAuth error, and never a 500.

One parametrized table per endpoint. The app, its database, the clients and one signed-in browser are built once
per module and backend (a fresh database costs more than all the cases together); every case makes the codes and
tokens it spends, so no case depends on another.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from flask import Flask, Response, request, request_finished
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import ECKey
from oidc_flow import REDIRECT, REQUEST_ID, Authorization, authorize, basic, csrf_of, exchange, pkce, register, sign_in
from sandbox_agency import SandboxAgency
from sqlalchemy import update
from werkzeug.test import TestResponse

from idp.models import AuthorizationCode
from idp.oidc.clients import CreatedClient
from idp.oidc.tokens import digest, new_jti
from idp.runtime import of as runtime_of

ISSUER = "http://localhost:8000"
STATE = "st-8f3a"
NONCE = "n-0S6_WzA2Mj"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
EVIL = "https://evil.example/callback"
# -- the world the cases run in ----------------------------------------------------------------------------------------


@dataclass
class World:
    """The module's app, its clients and a browser signed in (with consent given to `rp` and `spa`)."""

    app: Flask
    browser: FlaskClient
    rp: CreatedClient  # confidential, client_secret_basic
    other: CreatedClient  # a second confidential client
    spa: CreatedClient  # public: PKCE and no secret
    service: CreatedClient  # client_credentials only, no redirect URI
    no_code: CreatedClient  # redirect URI registered, but only the client_credentials grant
    signer: CreatedClient  # private_key_jwt, client_credentials only
    signer_key: ECKey
    seen: list[tuple[str, int]] = field(default_factory=list)

    def anonymous(self) -> FlaskClient:
        return self.app.test_client()

    def fresh_client(self) -> CreatedClient:
        """A client the resident has not consented to yet."""
        return register(self.app, name=f"새 서비스 {secrets.token_hex(3)}")


@pytest.fixture(scope="module")
def world(module_app: Flask, sandbox_url: str) -> Iterator[World]:
    app = module_app
    signer_key = ECKey.generate_key("P-256", auto_kid=True)
    world = World(
        app=app,
        browser=app.test_client(),
        rp=register(app),
        other=register(app, name="다른 서비스"),
        spa=register(app, name="브라우저 앱", public=True),
        service=register(app, name="배치", redirect_uris=(), grant_types=("client_credentials",), scopes=("profile",)),
        no_code=register(app, name="코드 없음", grant_types=("client_credentials",)),
        signer=register(
            app,
            name="서명 클라이언트",
            redirect_uris=(),
            grant_types=("client_credentials",),
            scopes=("profile",),
            auth_method="private_key_jwt",
            jwks={"keys": [signer_key.as_dict(private=False)]},
        ),
        signer_key=signer_key,
    )

    def record(sender: Flask, response: Response, **extra: Any) -> None:
        world.seen.append((f"{request.method} {request.path}", response.status_code))

    request_finished.connect(record, app, weak=False)
    sandbox = SandboxAgency(sandbox_url)
    sandbox.reset()
    sign_in(world.browser, sandbox)
    authorize(world.browser, world.rp.client.id)  # consent given once, for the default scopes
    authorize(world.browser, world.spa.client.id)
    yield world
    request_finished.disconnect(record, app)


@pytest.fixture
def seen(world: World) -> list[tuple[str, int]]:
    """Every response the app gives during the test (the case's own requests and those that prepare it)."""
    world.seen.clear()
    return world.seen


def assert_no_server_error(seen: list[tuple[str, int]]) -> None:
    """The final check of every row: whatever the input, the app answered below 500."""
    failures = [f"{what} → {status}" for what, status in seen if status >= 500]
    assert not failures, failures


Case = Callable[[World], TestResponse]


# -- helpers: codes, tokens, forgeries ---------------------------------------------------------------------------------


def b64(data: bytes | dict[str, Any] | list[Any]) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def payload_of(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


def code_for(w: World, client: CreatedClient | None = None, **extra: str) -> Authorization:
    return authorize(w.browser, (client or w.rp).client.id, **extra)


def exchanged(w: World, client: CreatedClient, authorization: Authorization) -> TestResponse:
    """The code exchanged at /token as its client would (oidc_flow.exchange, typed)."""
    response: TestResponse = exchange(w.browser, client, authorization)
    return response


def tokens_for(w: World, client: CreatedClient | None = None, **extra: str) -> dict[str, Any]:
    client = client or w.rp
    response = exchanged(w, client, code_for(w, client, **extra))
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def active_key_signed(w: World, **changes: Any) -> str:
    """A real access token's claims, changed, signed again with the keyring's active ES256 key."""
    claims = payload_of(tokens_for(w)["access_token"]) | changes
    keys = runtime_of(w.app).keyring.current()
    token: str = keys.active("ES256").sign(claims, typ="at+jwt")
    return token


def forged(w: World) -> str:
    """A real access token's claims signed with a key that is not in the keyring (under the active key's kid)."""
    claims = payload_of(tokens_for(w)["access_token"])
    kid = runtime_of(w.app).keyring.current().active("ES256").kid
    return jwt.encode({"alg": "ES256", "kid": kid, "typ": "at+jwt"}, claims, ECKey.generate_key("P-256"))


def expired(w: World) -> str:
    now = int(dt.datetime.now(dt.UTC).timestamp())
    return active_key_signed(w, iat=now - 3600, exp=now - 1800)


def alg_none(w: World) -> str:
    claims = payload_of(tokens_for(w)["access_token"])
    return f"{b64({'alg': 'none', 'typ': 'at+jwt'})}.{b64(claims)}."


def hs256_with_public_key(w: World) -> str:
    """The key-confusion attack: HS256 with the published ES256 public key (PEM) as the HMAC secret."""
    claims = payload_of(tokens_for(w)["access_token"])
    key = runtime_of(w.app).keyring.current().active("ES256")
    secret = key.jwk.as_pem(private=False)
    signing_input = f"{b64({'alg': 'HS256', 'kid': key.kid, 'typ': 'at+jwt'})}.{b64(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def id_token(w: World) -> str:
    token: str = tokens_for(w)["id_token"]
    return token


def revoked(w: World) -> str:
    body = tokens_for(w)
    answer = w.browser.post("/revoke", data={"token": body["refresh_token"]}, headers=basic_of(w.rp))
    assert answer.status_code == 200
    token: str = body["access_token"]
    return token


def service_token(w: World) -> str:
    answer = w.browser.post(
        "/token", data={"grant_type": "client_credentials", "scope": "profile"}, headers=basic_of(w.service)
    )
    token: str = answer.get_json()["access_token"]
    return token


def without_openid(w: World) -> str:
    token: str = tokens_for(w, scope="profile")["access_token"]
    return token


def other_clients_token(w: World) -> str:
    token: str = tokens_for(w, w.spa)["access_token"]
    return token


BAD_TOKENS: dict[str, Callable[[World], str]] = {
    "garbage": lambda w: "not-a-token",
    "malformed-header": lambda w: f"{b64([])}.{b64({})}.AA",
    "oversized": lambda w: "a." + "b" * 5000 + ".c",
    "forged-signature": forged,
    "expired": expired,
    "alg-none": alg_none,
    "hs256-with-public-key": hs256_with_public_key,
    "id-token": id_token,
    "wrong-issuer": lambda w: active_key_signed(w, iss="https://evil.example"),
    "unknown-jti": lambda w: active_key_signed(w, jti=secrets.token_urlsafe(24)),
    "unknown-grant": lambda w: active_key_signed(w, jti=new_jti(uuid.uuid4())),
}


def basic_of(created: CreatedClient) -> dict[str, str]:
    assert created.secret
    return basic(created.client.id, created.secret)


def expire_code(w: World, code: str) -> None:
    """Put the code's expiry in the past, in the database."""
    factory = runtime_of(w.app).sessions
    with factory() as db:
        db.execute(
            update(AuthorizationCode)
            .where(AuthorizationCode.digest == digest(code))
            .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
        )
        db.commit()


def assertion(w: World, *, key: ECKey | None = None, **changes: Any) -> str:
    """A private_key_jwt client assertion for the signing client (RFC 7523 §3), changed by `changes`."""
    now = int(dt.datetime.now(dt.UTC).timestamp())
    client_id = w.signer.client.id
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": f"{ISSUER}/token",
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
    } | changes
    signing_key = key or w.signer_key
    return jwt.encode({"alg": "ES256", "kid": signing_key.kid}, claims, signing_key)


def assertion_grant(w: World, client_assertion: str) -> TestResponse:
    return w.browser.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "scope": "profile",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": client_assertion,
        },
    )


# -- /authorize --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Back:
    """Redirected back to the client with `error`, the request's `state` and `iss` (RFC 9207)."""

    error: str
    state: str = STATE


@dataclass(frozen=True)
class Posted:
    """Sent back to the client as Back, but by an auto-submitted form (response_mode=form_post)."""

    error: str


@dataclass(frozen=True)
class Page:
    """The error page with status 400, never a redirect: the client or its redirect URI is not trusted."""

    error: str


def authorize_query(w: World, client: CreatedClient | None = None, **changes: str | list[str] | None) -> str:
    """A valid authorization request for `client`, changed by `changes` (None drops a parameter)."""
    _, challenge = pkce()
    query: dict[str, str | list[str]] = {
        "response_type": "code",
        "client_id": (client or w.rp).client.id,
        "redirect_uri": REDIRECT,
        "scope": "openid profile",
        "state": STATE,
        "nonce": NONCE,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return "/authorize?" + urlencode(query, doseq=True)


def ask(*, signed_in: bool = True, client: str = "rp", **changes: str | list[str] | None) -> Case:
    """GET /authorize for the world's client `client`, changed by `changes`."""

    def send(w: World) -> TestResponse:
        browser = w.browser if signed_in else w.anonymous()
        return browser.get(authorize_query(w, getattr(w, client), **changes))

    return send


def two_client_ids(w: World) -> TestResponse:
    return w.browser.get(authorize_query(w, client_id=[w.rp.client.id, w.other.client.id]))


def two_redirect_uris(w: World) -> TestResponse:
    return w.browser.get(authorize_query(w, redirect_uri=[REDIRECT, EVIL]))


def consent_required(w: World) -> TestResponse:
    return w.browser.get(authorize_query(w, w.fresh_client(), prompt="none"))


def consent_denied(w: World) -> TestResponse:
    page = w.browser.get(authorize_query(w, w.fresh_client()))
    html = page.get_data(as_text=True)
    request_id = REQUEST_ID.search(html)
    assert request_id, html[-500:]
    answer = w.browser.post(
        "/consent", data={"csrf_token": csrf_of(html), "request_id": request_id.group(1), "decision": "deny"}
    )
    assert answer.status_code == 303
    return w.browser.get(answer.headers["Location"])


def posted_form(w: World) -> TestResponse:
    query = parse_qs(urlsplit(authorize_query(w, scope="openid admin")).query)
    return w.browser.post("/authorize", data={key: values[0] for key, values in query.items()})


AUTHORIZE_CASES = [
    # The client or its redirect URI cannot be trusted: an error page, never a redirect (RFC 6749 §4.1.2.1).
    pytest.param(ask(client_id="not-registered"), Page("invalid_client"), id="unknown-client"),
    pytest.param(ask(client_id=None), Page("invalid_client"), id="missing-client-id"),
    pytest.param(ask(client_id="c" * 3000), Page("invalid_request"), id="oversized-client-id"),
    pytest.param(ask(client_id="rp\x00"), Page("invalid_request"), id="nul-in-client-id"),
    pytest.param(ask(redirect_uri=EVIL), Page("invalid_request"), id="unregistered-redirect-uri"),
    pytest.param(ask(redirect_uri=REDIRECT + "/../evil"), Page("invalid_request"), id="redirect-uri-path-suffix"),
    pytest.param(ask(redirect_uri=REDIRECT + "?next=x"), Page("invalid_request"), id="redirect-uri-extra-query"),
    pytest.param(ask(redirect_uri=None), Page("invalid_request"), id="missing-redirect-uri"),
    pytest.param(
        ask(redirect_uri=EVIL, response_type="token"), Page("unsupported_response_type"), id="token-to-unregistered-uri"
    ),
    pytest.param(ask(client_id="nobody", response_mode="fragment"), Page("invalid_request"), id="bad-mode-bad-client"),
    pytest.param(
        two_client_ids,
        Page("invalid_request"),
        id="duplicated-client-id",
    ),
    pytest.param(
        two_redirect_uris,
        Page("invalid_request"),
        id="duplicated-redirect-uri",
    ),
    # Client and redirect URI verified: the error goes back to the client with state and iss.
    pytest.param(ask(response_type="token"), Back("unsupported_response_type"), id="response-type-token"),
    pytest.param(ask(response_type="code id_token"), Back("unsupported_response_type"), id="response-type-hybrid"),
    pytest.param(
        ask(response_type=None),
        Back("invalid_request"),
        id="missing-response-type",
    ),
    pytest.param(ask(scope="openid admin"), Back("invalid_scope"), id="unknown-scope"),
    pytest.param(ask(scope="openid kr_ci"), Back("invalid_scope"), id="scope-not-allowed-to-client"),
    pytest.param(ask(scope=None), Back("invalid_scope"), id="missing-scope"),
    pytest.param(posted_form, Back("invalid_scope"), id="posted-unknown-scope"),
    pytest.param(ask(signed_in=False, prompt="none"), Back("login_required"), id="prompt-none-without-session"),
    pytest.param(consent_required, Back("consent_required"), id="prompt-none-without-consent"),
    pytest.param(ask(prompt="none login"), Back("invalid_request"), id="prompt-none-with-login"),
    pytest.param(consent_denied, Back("access_denied"), id="consent-denied"),
    pytest.param(ask(response_mode="form_post", scope="openid admin"), Posted("invalid_scope"), id="form-post-scope"),
    pytest.param(
        ask(signed_in=False, response_mode="form_post", prompt="none"),
        Posted("login_required"),
        id="form-post-login-required",
    ),
    pytest.param(ask(response_mode="fragment"), Back("invalid_request"), id="response-mode-fragment"),
    pytest.param(ask(response_mode="jwt"), Back("invalid_request"), id="response-mode-unknown"),
    pytest.param(ask(request=f"{b64({'alg': 'none'})}.{b64({})}."), Back("request_not_supported"), id="request-object"),
    pytest.param(
        ask(request_uri="https://rp.example.kr/request.jwt"), Back("request_uri_not_supported"), id="request-uri"
    ),
    pytest.param(
        ask(claims="{not json"),
        Back("invalid_request"),
        id="claims-not-json",
    ),
    pytest.param(
        ask(claims='{"id_token": []}'),
        Back("invalid_request"),
        id="claims-member-not-object",
    ),
    pytest.param(ask(max_age="abc"), Back("invalid_request"), id="max-age-not-a-number"),
    pytest.param(ask(max_age="-1"), Back("invalid_request"), id="max-age-negative"),
    pytest.param(
        ask(max_age="\u00b2"),
        Back("invalid_request"),
        id="max-age-superscript-digit",
    ),
    pytest.param(ask(prompt="none", max_age="0"), Back("login_required"), id="prompt-none-max-age-0"),
    pytest.param(ask(code_challenge_method="plain"), Back("invalid_request"), id="pkce-plain"),
    pytest.param(ask(code_challenge=None), Back("invalid_request"), id="pkce-method-without-challenge"),
    pytest.param(ask(code_challenge="too-short"), Back("invalid_request"), id="pkce-challenge-malformed"),
    pytest.param(
        ask(client="spa", code_challenge=None, code_challenge_method=None),
        Back("invalid_request"),
        id="public-client-without-pkce",
    ),
    pytest.param(ask(state=[STATE, "second"]), Back("invalid_request"), id="duplicated-state"),
    pytest.param(ask(scope=["openid", "openid profile"]), Back("invalid_request"), id="duplicated-scope"),
    pytest.param(ask(state="s" * 3000), Back("invalid_request", state="s" * 3000), id="oversized-state"),
    pytest.param(ask(nonce="n" * 3000), Back("invalid_request"), id="oversized-nonce"),
    pytest.param(
        ask(nonce="n\x00"),
        Back("invalid_request"),
        id="nul-in-nonce",
    ),
    pytest.param(
        ask(nonce="n" * 1000),
        Back("invalid_request"),
        id="nonce-longer-than-stored",
    ),
    pytest.param(
        ask(client="no_code"),
        Back("unauthorized_client"),
        id="client-without-code-grant",
    ),
]


@pytest.mark.parametrize(("send", "outcome"), AUTHORIZE_CASES)
def test_authorize_refuses(
    world: World, seen: list[tuple[str, int]], send: Case, outcome: Back | Posted | Page
) -> None:
    response = send(world)
    if isinstance(outcome, Posted):
        assert response.status_code == 200, response.headers.get("Location")
        assert "Location" not in response.headers
        html = response.get_data(as_text=True)
        assert f'action="{REDIRECT}"' in html
        for name, value in (("error", outcome.error), ("state", STATE), ("iss", ISSUER)):
            assert f'name="{name}" value="{value}"' in html
        assert 'name="code"' not in html
        assert response.headers["Cache-Control"] == "no-store"
    elif isinstance(outcome, Back):
        assert response.status_code == 302, response.get_data(as_text=True)[-600:]
        location = response.headers["Location"]
        assert location.startswith(REDIRECT + "?"), location
        params = parse_qs(urlsplit(location).query)
        assert params["error"] == [outcome.error], params
        assert params["state"] == [outcome.state]
        assert params["iss"] == [ISSUER]
        assert "code" not in params
        assert response.headers["Cache-Control"] == "no-store"
    else:
        assert response.status_code == 400, response.headers.get("Location")
        assert "Location" not in response.headers
        assert response.mimetype == "text/html"
        assert f"({outcome.error})" in response.get_data(as_text=True)
    assert_no_server_error(seen)


# -- /token ------------------------------------------------------------------------------------------------------------


def token_request(w: World, form: dict[str, str | list[str]], client: CreatedClient | None = None) -> TestResponse:
    return w.browser.post("/token", data=form, headers=basic_of(client or w.rp))


def code_form(authorization: Authorization, **changes: str | list[str] | None) -> dict[str, str | list[str]]:
    form: dict[str, str | list[str]] = {
        "grant_type": "authorization_code",
        "code": authorization.code,
        "redirect_uri": REDIRECT,
        "code_verifier": authorization.verifier,
    }
    for key, value in changes.items():
        if value is None:
            form.pop(key, None)
        else:
            form[key] = value
    return form


def with_code(**changes: str | list[str] | None) -> Case:
    """A fresh code of `rp`, exchanged with the form changed by `changes`."""
    return lambda w: token_request(w, code_form(code_for(w), **changes))


def replayed_code(w: World) -> TestResponse:
    authorization = code_for(w)
    assert exchanged(w, w.rp, authorization).status_code == 200
    return exchanged(w, w.rp, authorization)


def expired_code(w: World) -> TestResponse:
    authorization = code_for(w)
    expire_code(w, authorization.code)
    return exchanged(w, w.rp, authorization)


def code_of_another_client(w: World) -> TestResponse:
    return exchanged(w, w.other, code_for(w))


def verifier_without_challenge(w: World) -> TestResponse:
    authorization = code_for(w, code_challenge="", code_challenge_method="")
    return exchanged(w, w.rp, authorization)


def public_without_verifier(w: World) -> TestResponse:
    authorization = code_for(w, w.spa)
    return w.browser.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": authorization.code,
            "redirect_uri": REDIRECT,
            "client_id": w.spa.client.id,
        },
    )


def duplicated_code(w: World) -> TestResponse:
    authorization = code_for(w)
    return token_request(w, code_form(authorization, code=[authorization.code, "second"]))


def refresh_of_another_client(w: World) -> TestResponse:
    refresh = tokens_for(w)["refresh_token"]
    return token_request(w, {"grant_type": "refresh_token", "refresh_token": refresh}, w.other)


def refresh_wider_scope(w: World) -> TestResponse:
    refresh = tokens_for(w, scope="openid offline_access")["refresh_token"]
    return token_request(w, {"grant_type": "refresh_token", "refresh_token": refresh, "scope": "openid phone"})


def json_body(w: World) -> TestResponse:
    authorization = code_for(w)
    return w.browser.post("/token", json=code_form(authorization), headers=basic_of(w.rp))


def with_auth(headers: dict[str, str] | None = None, **form: str) -> Case:
    """A client_credentials request of the `service` client, authenticated by `headers` and `form`."""
    return lambda w: w.browser.post(
        "/token", data={"grant_type": "client_credentials", "scope": "profile", **form}, headers=headers or {}
    )


def wrong_secret(w: World) -> TestResponse:
    return with_auth(basic(w.service.client.id, "not-the-secret"))(w)


def no_credentials(w: World) -> TestResponse:
    return with_auth(client_id=w.service.client.id)(w)


def secret_in_form(w: World) -> TestResponse:
    assert w.service.secret
    return with_auth(client_id=w.service.client.id, client_secret=w.service.secret)(w)


def oversized_secret(w: World) -> TestResponse:
    return with_auth(basic(w.service.client.id, "s" * 600))(w)


def public_with_secret(w: World) -> TestResponse:
    return with_auth(client_id=w.spa.client.id, client_secret="made-up")(w)


TOKEN_CASES = [
    # PKCE (RFC 7636, S256 only)
    pytest.param(with_code(code_verifier=pkce()[0]), 400, "invalid_grant", id="wrong-pkce-verifier"),
    pytest.param(with_code(code_verifier=None), 400, "invalid_request", id="missing-pkce-verifier"),
    pytest.param(with_code(code_verifier="short"), 400, "invalid_request", id="malformed-pkce-verifier"),
    pytest.param(verifier_without_challenge, 400, "invalid_request", id="verifier-without-challenge"),
    pytest.param(public_without_verifier, 400, "invalid_request", id="public-client-without-verifier"),
    # the code
    pytest.param(code_of_another_client, 400, "invalid_grant", id="code-of-another-client"),
    pytest.param(expired_code, 400, "invalid_grant", id="expired-code"),
    pytest.param(replayed_code, 400, "invalid_grant", id="replayed-code"),
    pytest.param(with_code(code="not-a-code"), 400, "invalid_grant", id="unknown-code"),
    pytest.param(with_code(code="c" * 5000), 400, "invalid_grant", id="oversized-code"),
    pytest.param(with_code(code=None), 400, "invalid_request", id="missing-code"),
    pytest.param(with_code(redirect_uri="https://rp.example.kr/other"), 400, "invalid_grant", id="other-redirect-uri"),
    pytest.param(with_code(redirect_uri=None), 400, "invalid_grant", id="missing-redirect-uri"),
    pytest.param(
        duplicated_code,
        400,
        "invalid_request",
        id="duplicated-code",
    ),
    pytest.param(
        with_code(grant_type=["authorization_code", "client_credentials"]),
        400,
        "invalid_request",
        id="duplicated-grant-type",
    ),
    # refresh tokens
    pytest.param(refresh_of_another_client, 400, "invalid_grant", id="refresh-token-of-another-client"),
    pytest.param(
        lambda w: token_request(w, {"grant_type": "refresh_token", "refresh_token": "nope"}),
        400,
        "invalid_grant",
        id="unknown-refresh-token",
    ),
    pytest.param(
        lambda w: token_request(w, {"grant_type": "refresh_token"}), 400, "invalid_request", id="missing-refresh-token"
    ),
    pytest.param(refresh_wider_scope, 400, "invalid_scope", id="refresh-widens-scope"),
    # the grant type and the body
    pytest.param(
        json_body,
        400,
        "invalid_request",
        id="json-body",
    ),
    pytest.param(
        with_code(grant_type=None),
        400,
        "invalid_request",
        id="missing-grant-type",
    ),
    pytest.param(with_code(grant_type="password"), 400, "unsupported_grant_type", id="unknown-grant-type"),
    pytest.param(
        lambda w: token_request(w, {"grant_type": "client_credentials"}),
        400,
        "unauthorized_client",
        id="grant-type-not-allowed",
    ),
    pytest.param(
        lambda w: token_request(w, {"grant_type": "client_credentials", "scope": "admin"}, w.service),
        400,
        "invalid_scope",
        id="client-credentials-unknown-scope",
    ),
    pytest.param(
        lambda w: w.browser.post("/token", data={"grant_type": "client_credentials", "x": "y" * 70_000}),
        413,
        "request_entity_too_large",
        id="oversized-body",
    ),
    pytest.param(lambda w: w.browser.get("/token"), 405, "method_not_allowed", id="get"),
    # client authentication (RFC 6749 §2.3, §5.2): 401 with a challenge
    pytest.param(wrong_secret, 401, "invalid_client", id="wrong-secret"),
    pytest.param(with_auth(basic("not-registered", "secret")), 401, "invalid_client", id="unknown-client"),
    pytest.param(
        with_auth(basic("rp\x00", "secret")),
        401,
        "invalid_client",
        id="nul-in-client-id",
    ),
    pytest.param(no_credentials, 401, "invalid_client", id="confidential-without-credentials"),
    pytest.param(with_auth(), 401, "invalid_client", id="no-client-at-all"),
    pytest.param(secret_in_form, 401, "invalid_client", id="unregistered-auth-method"),
    pytest.param(with_auth({"Authorization": "Basic !!not-base64!!"}), 401, "invalid_client", id="malformed-basic"),
    pytest.param(oversized_secret, 401, "invalid_client", id="oversized-secret"),
    pytest.param(public_with_secret, 401, "invalid_client", id="public-client-with-secret"),
    pytest.param(lambda w: assertion_grant(w, "not.a.jwt"), 401, "invalid_client", id="client-assertion-garbage"),
    pytest.param(
        lambda w: assertion_grant(w, assertion(w, key=ECKey.generate_key("P-256", auto_kid=True))),
        401,
        "invalid_client",
        id="client-assertion-unknown-key",
    ),
    pytest.param(
        lambda w: assertion_grant(w, assertion(w, aud="https://elsewhere.example/token")),
        401,
        "invalid_client",
        id="client-assertion-wrong-audience",
    ),
    pytest.param(
        lambda w: assertion_grant(w, f"{b64({'alg': 'none'})}.{b64(payload_of(assertion(w)))}."),
        401,
        "invalid_client",
        id="client-assertion-alg-none",
    ),
    pytest.param(
        lambda w: assertion_grant(w, assertion(w, exp=10**12)),
        401,
        "invalid_client",
        id="client-assertion-exp-beyond-year-9999",
    ),
]


@pytest.mark.parametrize(("send", "status", "error"), TOKEN_CASES)
def test_token_refuses(world: World, seen: list[tuple[str, int]], send: Case, status: int, error: str) -> None:
    response = send(world)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["error"] == error
    assert response.headers["Cache-Control"] == "no-store"
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert_no_server_error(seen)


# -- /userinfo ---------------------------------------------------------------------------------------------------------


def bearer(make: Callable[[World], str]) -> Case:
    return lambda w: w.browser.get("/userinfo", headers={"Authorization": f"Bearer {make(w)}"})


USERINFO_CASES = [
    pytest.param(lambda w: w.browser.get("/userinfo"), 401, "invalid_request", id="no-token"),
    pytest.param(
        lambda w: w.browser.get("/userinfo", headers={"Authorization": "Bearer "}), 401, "invalid_request", id="empty"
    ),
    pytest.param(
        lambda w: w.browser.get("/userinfo", headers=basic_of(w.rp)), 401, "invalid_request", id="basic-scheme"
    ),
    pytest.param(
        lambda w: w.browser.get("/userinfo?access_token=" + tokens_for(w)["access_token"]),
        401,
        "invalid_request",
        id="token-in-query",
    ),
    pytest.param(
        lambda w: w.browser.post("/userinfo", json={"access_token": tokens_for(w)["access_token"]}),
        401,
        "invalid_request",
        id="token-in-json-body",
    ),
    *(pytest.param(bearer(make), 401, "invalid_token", id=name) for name, make in BAD_TOKENS.items()),
    pytest.param(bearer(revoked), 401, "invalid_token", id="revoked"),
    pytest.param(bearer(service_token), 401, "invalid_token", id="client-credentials-token"),
    pytest.param(bearer(without_openid), 403, "insufficient_scope", id="without-openid-scope"),
    pytest.param(lambda w: w.browser.put("/userinfo"), 405, "method_not_allowed", id="put"),
]


@pytest.mark.parametrize(("send", "status", "error"), USERINFO_CASES)
def test_userinfo_refuses(world: World, seen: list[tuple[str, int]], send: Case, status: int, error: str) -> None:
    response = send(world)
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.get_json()["error"] == error
    assert response.headers["Cache-Control"] == "no-store"
    if status in (401, 403):
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ")
        # RFC 6750 §3.1: no error code when the request carried no token at all.
        assert ("error=" in challenge) == (error != "invalid_request")
    assert_no_server_error(seen)


# -- /introspect -------------------------------------------------------------------------------------------------------

INACTIVE = "inactive"


def introspect(make: Callable[[World], str], **form: str) -> Case:
    return lambda w: w.browser.post("/introspect", data={"token": make(w), **form}, headers=basic_of(w.rp))


def introspect_without_auth(w: World) -> TestResponse:
    return w.browser.post("/introspect", data={"token": tokens_for(w)["access_token"]})


def introspect_as_public_client(w: World) -> TestResponse:
    return w.browser.post("/introspect", data={"token": tokens_for(w)["access_token"], "client_id": w.spa.client.id})


def introspect_wrong_secret(w: World) -> TestResponse:
    return w.browser.post(
        "/introspect", data={"token": tokens_for(w)["access_token"]}, headers=basic(w.rp.client.id, "wrong")
    )


INTROSPECT_CASES = [
    pytest.param(introspect_without_auth, 401, "invalid_client", id="no-client-auth"),
    pytest.param(introspect_wrong_secret, 401, "invalid_client", id="wrong-secret"),
    pytest.param(introspect_as_public_client, 401, "invalid_client", id="public-client"),
    pytest.param(
        lambda w: w.browser.post("/introspect", data={"token": "x"}, headers=basic("rp\x00", "secret")),
        401,
        "invalid_client",
        id="nul-in-client-id",
    ),
    pytest.param(
        lambda w: w.browser.post("/introspect", data={}, headers=basic_of(w.rp)),
        400,
        "invalid_request",
        id="missing-token",
    ),
    pytest.param(
        lambda w: w.browser.post("/introspect", json={"token": "x"}, headers=basic_of(w.rp)),
        400,
        "invalid_request",
        id="json-body",
    ),
    pytest.param(
        introspect(lambda w: tokens_for(w)["access_token"], token_type_hint="id_token"),
        400,
        "unsupported_token_type",
        id="unsupported-hint",
    ),
    *(pytest.param(introspect(make), 200, INACTIVE, id=name) for name, make in BAD_TOKENS.items()),
    pytest.param(introspect(revoked), 200, INACTIVE, id="revoked"),
    pytest.param(introspect(other_clients_token), 200, INACTIVE, id="token-of-another-client"),
    pytest.param(lambda w: w.browser.get("/introspect"), 405, "method_not_allowed", id="get"),
]


@pytest.mark.parametrize(("send", "status", "error"), INTROSPECT_CASES)
def test_introspect_refuses(world: World, seen: list[tuple[str, int]], send: Case, status: int, error: str) -> None:
    response = send(world)
    assert response.status_code == status, response.get_data(as_text=True)
    if error == INACTIVE:
        assert response.get_json() == {"active": False}
    else:
        assert response.get_json()["error"] == error
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert_no_server_error(seen)


# -- /revoke -----------------------------------------------------------------------------------------------------------

REVOKED = "revoked"


def revoke(make: Callable[[World], str], **form: str) -> Case:
    return lambda w: w.browser.post("/revoke", data={"token": make(w), **form}, headers=basic_of(w.rp))


def revoke_of_another_client(w: World) -> TestResponse:
    """Refused, and the token stays active for its own client."""
    token = tokens_for(w, w.spa)["access_token"]
    answer = w.browser.post("/revoke", data={"token": token}, headers=basic_of(w.rp))
    still = w.browser.get("/userinfo", headers={"Authorization": f"Bearer {token}"})
    assert still.status_code == 200
    return answer


REVOKE_CASES = [
    pytest.param(
        lambda w: w.browser.post("/revoke", data={"token": "x", "client_id": w.rp.client.id}),
        401,
        "invalid_client",
        id="confidential-without-secret",
    ),
    pytest.param(
        lambda w: w.browser.post("/revoke", data={"token": "x"}, headers=basic(w.rp.client.id, "wrong")),
        401,
        "invalid_client",
        id="wrong-secret",
    ),
    pytest.param(
        lambda w: w.browser.post("/revoke", data={"token": "x", "client_id": "spa\x00"}),
        401,
        "invalid_client",
        id="nul-in-client-id",
    ),
    pytest.param(
        lambda w: w.browser.post("/revoke", data={}, headers=basic_of(w.rp)), 400, "invalid_request", id="missing-token"
    ),
    pytest.param(
        revoke(lambda w: "x", token_type_hint="id_token"),
        400,
        "unsupported_token_type",
        id="unsupported-hint",
    ),
    pytest.param(revoke_of_another_client, 400, "invalid_grant", id="token-of-another-client"),
    # RFC 7009 §2.2: an invalid or unknown token is answered 200, as if it had been revoked.
    *(pytest.param(revoke(make), 200, REVOKED, id=name) for name, make in BAD_TOKENS.items()),
    pytest.param(
        lambda w: w.browser.post("/revoke", data={"token": "unknown", "client_id": w.spa.client.id}),
        200,
        REVOKED,
        id="public-client-unknown-token",
    ),
    pytest.param(lambda w: w.browser.get("/revoke"), 405, "method_not_allowed", id="get"),
]


@pytest.mark.parametrize(("send", "status", "error"), REVOKE_CASES)
def test_revoke_refuses(world: World, seen: list[tuple[str, int]], send: Case, status: int, error: str) -> None:
    response = send(world)
    assert response.status_code == status, response.get_data(as_text=True)
    if error == REVOKED:
        assert response.get_json() == {}
    else:
        assert response.get_json()["error"] == error
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
    assert_no_server_error(seen)


# -- /consent ----------------------------------------------------------------------------------------------------------


def consent_answer(**changes: str | None) -> Case:
    """POST /consent for a pending request of a client not yet consented to, the form changed by `changes`."""

    def send(w: World) -> TestResponse:
        html = w.browser.get(authorize_query(w, w.fresh_client())).get_data(as_text=True)
        request_id = REQUEST_ID.search(html)
        assert request_id, html[-500:]
        form: dict[str, str] = {"csrf_token": csrf_of(html), "request_id": request_id.group(1), "decision": "allow"}
        for key, value in changes.items():
            if value is None:
                form.pop(key, None)
            else:
                form[key] = value
        return w.browser.post("/consent", data=form)

    return send


def consent_without_session(w: World) -> TestResponse:
    browser = w.anonymous()
    token = csrf_of(browser.get("/login/carrier").get_data(as_text=True))
    return browser.post("/consent", data={"csrf_token": token, "request_id": "anything", "decision": "allow"})


CONSENT_CASES = [
    pytest.param(consent_answer(csrf_token=None), id="missing-csrf-token"),
    pytest.param(consent_answer(csrf_token="forged"), id="wrong-csrf-token"),
    pytest.param(consent_answer(request_id="unknown"), id="unknown-request-id"),
    pytest.param(consent_answer(request_id=None), id="missing-request-id"),
    pytest.param(consent_without_session, id="no-session"),
]


@pytest.mark.parametrize("send", CONSENT_CASES)
def test_consent_refuses(world: World, seen: list[tuple[str, int]], send: Case) -> None:
    response = send(world)
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert response.mimetype == "text/html"
    assert_no_server_error(seen)


# -- the rows' starting points -----------------------------------------------------------------------------------------


def test_every_row_changes_a_request_that_succeeds(world: World, seen: list[tuple[str, int]]) -> None:
    """The rows below change one thing in these requests; unchanged, each succeeds, so a refusal is the change's."""
    authorized = world.browser.get(authorize_query(world))
    assert authorized.status_code == 302
    assert "code" in parse_qs(urlsplit(authorized.headers["Location"]).query)
    assert tokens_for(world)["token_type"] == "Bearer"
    assert with_auth(basic_of(world.service))(world).status_code == 200
    assert assertion_grant(world, assertion(world)).status_code == 200
    resigned = active_key_signed(world)
    assert world.browser.get("/userinfo", headers={"Authorization": f"Bearer {resigned}"}).status_code == 200
    assert introspect(lambda w: resigned)(world).get_json()["active"] is True
    assert consent_answer()(world).status_code == 303
    assert_no_server_error(seen)
