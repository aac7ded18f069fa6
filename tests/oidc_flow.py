"""Helpers for OIDC tests: register a client, sign a resident in through the sandbox, run the code flow."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from flask import Flask
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import KeySet
from sandbox_agency import SandboxAgency

from idp.oidc.clients import ClientSpec, CreatedClient, create_client, secret_digest_key
from idp.oidc.outbound import allows_local_destinations
from idp.runtime import of as runtime_of

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
REQUEST_ID = re.compile(r'name="request_id" value="([^"]+)"')
KIM = {"carrier": "SKT", "name": "김경기", "birthdate": "1985-03-14", "rrn_digit7": "1", "phone": "010-0000-0001"}
KIM_E164 = "+821000000001"
REDIRECT = "https://rp.example.kr/callback"


def register(app: Flask, **spec: Any) -> CreatedClient:
    settings = runtime_of(app).settings
    fields: dict[str, Any] = {"name": "민원24 테스트", "redirect_uris": (REDIRECT,)}
    fields.update(spec)
    with runtime_of(app).sessions() as db:
        created = create_client(
            db,
            ClientSpec(**fields),
            secret_key=secret_digest_key(settings.secret_key),
            issuer=settings.issuer,
            now=dt.datetime.now(dt.UTC),
            allow_restricted_scopes=True,
            allow_local_server_uris=allows_local_destinations(settings),
        )
        db.commit()
        db.refresh(created.client)
        db.expunge(created.client)
    return created


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, html[:400]
    return match.group(1)


def sign_in(browser: FlaskClient, sandbox: SandboxAgency, person: dict[str, str] = KIM, phone: str = KIM_E164) -> None:
    token = csrf_of(browser.get("/login/carrier").get_data(as_text=True))
    started = browser.post("/login/carrier", data={"csrf_token": token, "method": "sms", "consent": "y", **person})
    assert started.status_code == 303, started.get_data(as_text=True)[-500:]
    token = csrf_of(browser.get("/login/carrier/verify").get_data(as_text=True))
    done = browser.post(
        "/login/carrier/verify", data={"csrf_token": token, "action": "confirm", "code": sandbox.last_code(phone)}
    )
    assert done.status_code == 303


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass
class Authorization:
    code: str
    state: str
    nonce: str
    verifier: str
    location: str
    params: dict[str, list[str]]


def authorize(
    browser: FlaskClient, client_id: str, *, scope: str = "openid profile phone offline_access", **extra: str
) -> Authorization:
    """Run /authorize to its redirect back to the client, allowing consent when asked."""
    verifier, challenge = pkce()
    state, nonce = secrets.token_urlsafe(8), secrets.token_urlsafe(8)
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    response = browser.get("/authorize?" + urlencode(query))
    if response.status_code == 200 and "request_id" in response.get_data(as_text=True):
        page = response.get_data(as_text=True)
        request_id = REQUEST_ID.search(page)
        assert request_id
        answered = browser.post(
            "/consent", data={"csrf_token": csrf_of(page), "request_id": request_id.group(1), "decision": "allow"}
        )
        assert answered.status_code == 303
        response = browser.get(answered.headers["Location"])
    assert response.status_code == 302, response.get_data(as_text=True)[-800:]
    location = response.headers["Location"]
    assert location.startswith(REDIRECT), location
    params = parse_qs(urlsplit(location).query)
    return Authorization(
        code=params.get("code", [""])[0],
        state=state,
        nonce=nonce,
        verifier=verifier,
        location=location,
        params=params,
    )


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{client_id}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def exchange(browser: FlaskClient, created: CreatedClient, authorization: Authorization, **override: str):  # type: ignore[no-untyped-def]
    form = {
        "grant_type": "authorization_code",
        "code": authorization.code,
        "redirect_uri": REDIRECT,
        "code_verifier": authorization.verifier,
        **override,
    }
    headers = basic(created.client.id, created.secret) if created.secret else {}
    if not created.secret:
        form["client_id"] = created.client.id
    return browser.post("/token", data=form, headers=headers)


def decode(app: Flask, token: str) -> jwt.Token:
    jwks = app.test_client().get("/jwks").get_json()
    return jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256", "ES256", "PS256"])
