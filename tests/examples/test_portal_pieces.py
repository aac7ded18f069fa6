"""The sample portal's pieces without an IdP: the WWW-Authenticate parser, the server-side session store, CSRF on
its forms, and back-channel logout refusing what is not a logout token."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from examples.portal import PortalSettings, create_app
from examples.portal.challenges import BearerChallenge, parse_bearer_challenge
from examples.portal.sessions import SessionStore
from idp.rp import Requirement, Verifier, challenge

PORTAL = "http://127.0.0.1:8001"
NEED = Requirement(scopes=("openid",), acr_values=("phr", "phrh"), max_age=300)
COOKIE = "portal_session"


# -- the challenge parser ------------------------------------------------------------------------------------------


def test_step_up_challenge_of_idp_rp_is_read_back() -> None:
    parsed = parse_bearer_challenge(challenge(NEED, "insufficient_user_authentication"))
    assert parsed is not None
    assert parsed.wants_step_up
    assert (parsed.acr_values, parsed.max_age) == (("phr", "phrh"), 300)


@pytest.mark.parametrize("error", ["invalid_token", "insufficient_scope"])
def test_other_challenges_ask_for_no_step_up(error: str) -> None:
    parsed = parse_bearer_challenge(challenge(NEED, error))
    assert parsed is not None
    assert parsed.error == error
    assert not parsed.wants_step_up


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer", BearerChallenge(None, None, (), None)),
        ('bearer error="invalid_token"', BearerChallenge("invalid_token", None, (), None)),
        (
            'Bearer error_description="say \\"hi\\", then go", error=invalid_token',
            BearerChallenge("invalid_token", 'say "hi", then go', (), None),
        ),
        ('Bearer max_age="soon"', BearerChallenge(None, None, (), None)),
        ("Bearer max_age=99999999999999", BearerChallenge(None, None, (), None)),
    ],
)
def test_bearer_challenges_are_parsed(header: str, expected: BearerChallenge) -> None:
    assert parse_bearer_challenge(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        'Basic realm="x"',
        'Bearer error="unterminated',
        "Bearer error",
        "Bearer ,,,",
        "Bearer " + "a=b," * 2000,
    ],
)
def test_what_is_no_bearer_challenge_is_none(header: str | None) -> None:
    assert parse_bearer_challenge(header) is None


# -- the session store ---------------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_session_expires_after_its_lifetime_without_requests() -> None:
    clock = Clock()
    store = SessionStore(lifetime=60, clock=clock)
    store.save("a", {"x": 1}, create=True)
    clock.now += 59
    assert store.load("a") == {"x": 1}  # and lives on from this request
    clock.now += 59
    assert store.load("a") == {"x": 1}
    clock.now += 61
    assert store.load("a") is None


def test_logout_by_sid_ends_that_sessions_only() -> None:
    store = SessionStore()
    store.save("kim-phone", {"user": {"sub": "kim", "sid": "s1"}}, create=True)
    store.save("kim-laptop", {"user": {"sub": "kim", "sid": "s2"}}, create=True)
    store.save("signed-out", {"lang": "en"}, create=True)
    assert store.end_signed_in(sid="s1", sub="kim") == 1
    assert store.load("kim-phone") is None
    assert store.load("kim-laptop") is not None
    assert store.end_signed_in(sid="s2", sub="lee") == 0  # a sid with another resident's sub is not Kim's


def test_logout_by_sub_alone_ends_every_session_of_the_resident() -> None:
    store = SessionStore()
    store.save("a", {"user": {"sub": "kim", "sid": "s1"}}, create=True)
    store.save("b", {"user": {"sub": "kim", "sid": "s2"}}, create=True)
    store.save("c", {"user": {"sub": "lee", "sid": "s3"}}, create=True)
    assert store.end_signed_in(sid=None, sub="kim") == 2
    assert len(store) == 1
    assert store.end_signed_in(sid=None, sub=None) == 0


def test_a_request_does_not_bring_back_a_session_logout_ended() -> None:
    store = SessionStore()
    store.save("a", {"user": {"sub": "kim", "sid": "s1"}}, create=True)
    loaded = store.load("a")
    store.end_signed_in(sid="s1", sub=None)
    assert loaded is not None
    assert store.save("a", loaded, create=False) is False
    assert store.load("a") is None


# -- the app -------------------------------------------------------------------------------------------------------


@pytest.fixture
def portal() -> Flask:
    # An issuer nobody answers on: nothing here may need the IdP.
    settings = PortalSettings(
        issuer="http://127.0.0.1:9", portal_url=PORTAL, client_id="portal", client_secret="s", secret_key="k" * 32
    )
    verifier = Verifier(settings.issuer, client_id="portal")
    return create_app(settings, verifier=verifier)


def signed_in(portal: Flask, browser: FlaskClient) -> str:
    """A session as the callback leaves it, put straight into the store; its id."""
    sessions = portal.extensions["portal"].sessions
    sessions.save("sid-cookie", {"user": {"sub": "kim", "sid": "s1", "acr": "phr", "amr": ["swk"]}}, create=True)
    browser.set_cookie(COOKIE, "sid-cookie", domain="localhost")
    return "sid-cookie"


def test_session_cookie_holds_an_id_only_and_is_httponly_and_lax(portal: Flask) -> None:
    response = portal.test_client().get("/?lang=en")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    assert portal.extensions["portal"].sessions.load(value) == {"lang": "en"}


@pytest.mark.parametrize("path", ["/logout", "/permits/new"])
def test_portal_forms_refuse_a_post_without_the_csrf_token(portal: Flask, path: str) -> None:
    browser = portal.test_client()
    signed_in(portal, browser)
    response = browser.post(path, data={"address": "수원시", "purpose": "house"})
    assert response.status_code == 400
    assert "양식이 만료되었습니다" in response.get_data(as_text=True)
    assert portal.extensions["portal"].sessions.load("sid-cookie") is not None


def test_logout_with_the_csrf_token_ends_the_portal_session(portal: Flask) -> None:
    browser = portal.test_client()
    signed_in(portal, browser)
    page = browser.get("/").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    response = browser.post("/logout", data={"csrf_token": token})
    assert response.status_code == 303
    assert portal.extensions["portal"].sessions.load("sid-cookie") is None


@pytest.mark.parametrize(
    ("form", "reason"),
    [
        ({}, "Missing 'logout_token'."),
        ({"logout_token": "not-a-jwt"}, "The token is not a compact JWS."),
        ({"logout_token": "x" * 20000}, "The token is empty or too long."),
        ({"logout_token": "eyJhbGciOiJub25lIn0.e30."}, "The token's alg is not one this IdP signs with."),
    ],
)
def test_backchannel_logout_refuses_what_is_no_logout_token(portal: Flask, form: dict[str, str], reason: str) -> None:
    browser = portal.test_client()
    signed_in(portal, browser)
    response = portal.test_client().post("/backchannel-logout", data=form)
    assert response.status_code == 400
    assert response.get_json() == {"error": "invalid_request", "error_description": reason}
    assert response.headers["Cache-Control"] == "no-store"
    assert portal.extensions["portal"].sessions.load("sid-cookie") is not None


def test_permit_api_without_a_token_gets_a_bearer_challenge(portal: Flask) -> None:
    response = portal.test_client().post("/api/permits", json={"address": "수원시", "purpose": "house"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
