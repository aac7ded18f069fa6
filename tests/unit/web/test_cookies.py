"""The flow cookie's signing: plain JSON, a serializer built once per key, and cookies signed before that still read."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadSignature

from idp.web.cookies import FlowCookie

FLOW = {
    "csrf_token": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "next": "/authorize?client_id=portal&scope=openid+profile",
    "welcome": True,
    "carrier_retry": 30,
    "authz_pending": {"abc": {"since": "2026-12-08T01:00:00+00:00", "params": {"client_id": "portal"}}},
}


def app_with(secret: str) -> Flask:
    app = Flask("flow-cookie-test")
    app.secret_key = secret
    return app


def test_a_cookie_signed_by_flasks_own_session_reads_the_same() -> None:
    # Cookies issued before the flow cookie's plain JSON (Flask's tagged JSON) keep their sign-in going.
    app = app_with("test-secret-key")
    before = SecureCookieSessionInterface().get_signing_serializer(app)
    after = FlowCookie().get_signing_serializer(app)
    assert before is not None
    assert after is not None
    assert after.loads(before.dumps(FLOW)) == FLOW
    assert before.loads(after.dumps(FLOW)) == FLOW


def test_the_payload_is_plain_compact_json() -> None:
    serializer = FlowCookie().serializer
    assert serializer.dumps({"next": "/account", "welcome": True}) == '{"next":"/account","welcome":true}'


def test_the_signing_serializer_is_built_once_per_key() -> None:
    cookie, app = FlowCookie(), app_with("first-key")
    first = cookie.get_signing_serializer(app)
    assert cookie.get_signing_serializer(app) is first
    app.secret_key = "second-key"
    second = cookie.get_signing_serializer(app)
    assert second is not first
    assert second is not None
    assert first is not None
    # A cookie signed under the old key no longer reads under the new one.
    assert second.loads(second.dumps(FLOW)) == FLOW
    with pytest.raises(BadSignature):
        second.loads(first.dumps(FLOW))
