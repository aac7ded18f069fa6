"""idp.rp against the real IdP served on 127.0.0.1: the tokens of a real code flow, and a real logout token, verify
with a Verifier that reads the served discovery and JWKS."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from factories import SignIn
from flask import Flask
from oidc_flow import authorize, exchange, register
from sandbox_agency import SandboxAgency
from werkzeug.serving import make_server

from idp.oidc.logout import logout_token
from idp.rp import Requirement, StepUp, VerificationError, Verifier
from idp.runtime import of as runtime_of
from idp.settings import Settings


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Iterator[Flask]:
    """The IdP served over HTTP on a free port, its issuer that address (the test client reaches the same app)."""
    served: dict[str, Any] = {}
    server = make_server("127.0.0.1", 0, lambda environ, start: served["app"](environ, start), threaded=True)
    issuer = f"http://127.0.0.1:{server.server_port}"
    app = make_app(replace(settings, issuer=issuer, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    app.config["TESTING"] = True
    served["app"] = app
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield app
    server.shutdown()
    server.server_close()


def test_tokens_of_a_real_code_flow_verify(app: Flask, signed_in: SignIn) -> None:
    issuer = runtime_of(app).settings.issuer
    created = register(app)
    browser = app.test_client()
    signed_in(browser)
    authorization = authorize(browser, created.client.id, scope="openid profile")
    tokens = exchange(browser, created, authorization).get_json()
    verifier = Verifier(issuer, client_id=created.client.id)

    id_token = verifier.verify_id_token(
        tokens["id_token"], nonce=authorization.nonce, max_age=300, acr_values=(f"{issuer}/acr/aal1",)
    )
    assert (id_token.iss, id_token.aud, id_token.amr, id_token.acr) == (
        issuer,
        (created.client.id,),
        ("sms", "mca"),
        f"{issuer}/acr/aal1",
    )
    assert id_token.claims["name"] == "김경기"
    assert id_token.sid

    access = verifier.verify_access_token(tokens["access_token"], scopes=("openid", "profile"), max_age=300)
    assert (access.client_id, access.sub, access.scopes) == (
        created.client.id,
        id_token.sub,
        frozenset({"openid", "profile"}),
    )
    with pytest.raises(VerificationError) as refused:
        verifier.verify_access_token(tokens["access_token"], acr_values=("phr", "phrh"))
    assert refused.value.reason == "insufficient_acr"
    # Each token is what it is: an ID token is no access token, and the other way round.
    for call in (
        lambda: verifier.verify_access_token(tokens["id_token"]),
        lambda: verifier.verify_id_token(tokens["access_token"]),
    ):
        with pytest.raises(VerificationError) as refused:
            call()
        assert refused.value.reason == "wrong_type"


def test_real_logout_token_verifies_once(app: Flask) -> None:
    settings = runtime_of(app).settings
    created = register(app, backchannel_logout_uri="https://rp.example.kr/logout")
    delivery = SimpleNamespace(sub="pairwise-sub", sid="sid-1")
    token = logout_token(
        created.client,
        delivery,  # type: ignore[arg-type]  # what logout_token reads of a LogoutDelivery
        runtime_of(app).keyring.current(),
        settings,
        dt.datetime.now(dt.UTC),
    )
    verifier = Verifier(settings.issuer, client_id=created.client.id)
    verified = verifier.verify_logout_token(token)
    assert (verified.sub, verified.sid) == ("pairwise-sub", "sid-1")
    with pytest.raises(VerificationError) as refused:
        verifier.verify_logout_token(token)
    assert refused.value.reason == "replayed"


def test_step_up_asks_a_real_carrier_sign_in_for_a_passkey(app: Flask, signed_in: SignIn) -> None:
    issuer = runtime_of(app).settings.issuer
    created = register(app)
    browser = app.test_client()
    signed_in(browser)
    tokens = exchange(browser, created, authorize(browser, created.client.id, scope="openid")).get_json()

    def api(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"permit"]

    protected = StepUp(
        api, Verifier(issuer, client_id=created.client.id), {"/api/permits": Requirement(acr_values=("phr",))}
    )
    answers: list[tuple[str, list[tuple[str, str]]]] = []
    body = protected(
        {"PATH_INFO": "/api/permits", "HTTP_AUTHORIZATION": f"Bearer {tokens['access_token']}"},
        lambda status, headers, exc_info=None: answers.append((status, headers)),  # type: ignore[arg-type,return-value]
    )
    assert answers[0][0] == "401 Unauthorized"
    assert ("WWW-Authenticate", answers[0][1][0][1]) == answers[0][1][0]
    assert answers[0][1][0][1].startswith('Bearer error="insufficient_user_authentication"')
    assert answers[0][1][0][1].endswith('acr_values="phr"')
    assert b"insufficient_user_authentication" in b"".join(body)
