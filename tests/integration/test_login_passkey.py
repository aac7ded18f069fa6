"""Passkeys through the Flask app: add one on /account/passkeys, sign in with it on /login, rename and remove it.

The browser is the test client; navigator.credentials is the software authenticator in tests/webauthn_authenticator.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from oidc_flow import KIM_E164, authorize, csrf_of, decode, exchange, register, sign_in
from sandbox_agency import SandboxAgency
from sqlalchemy import select
from sqlalchemy.orm import Session
from webauthn_authenticator import SoftAuthenticator, b64url
from werkzeug.test import TestResponse

from idp.models import AuditEvent, LoginSession, Passkey, Resident, WebAuthnChallenge
from idp.runtime import of as runtime_of
from idp.settings import Settings

RP_ID = "localhost"
ORIGIN = "http://localhost:8000"
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
LEE = {"carrier": "KT", "name": "이수원", "birthdate": "1992-11-02", "rrn_digit7": "2", "phone": "010-0000-0002"}
LEE_E164 = "+821000000002"
NOT_VERIFIED = "패스키를 확인하지 못했습니다. 다시 시도하거나 다른 방법으로 로그인해 주세요."
NO_LONGER_USABLE = "이 패스키는 더 이상 쓸 수 없습니다. 다른 방법으로 로그인한 뒤 내 계정에서 삭제해 주세요."
LAST_PASSKEY = (
    "마지막 패스키입니다. 앞으로는 휴대폰 본인확인으로 로그인하거나, 인증 앱을 설정했다면 인증 앱으로 로그인합니다."
)
JSON_ENDPOINTS = [
    "/login/passkey/options",
    "/login/passkey/verify",
    "/account/passkeys/options",
    "/account/passkeys/verify",
]


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Flask:
    app = make_app(replace(settings, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def browser(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def authenticator() -> SoftAuthenticator:
    return SoftAuthenticator(RP_ID, ORIGIN, backup_eligible=True)


# -- the browser's side ----------------------------------------------------------------------------------------------


@contextmanager
def database(app: Flask) -> Iterator[Session]:
    with runtime_of(app).sessions() as db:
        yield db


def csrf_header(browser: FlaskClient, page: str) -> dict[str, str]:
    """The header passkey.js sends: the token of the page's <meta name="csrf-token">."""
    html = browser.get(page).get_data(as_text=True)
    match = CSRF_META.search(html)
    assert match, html[:400]
    return {"X-CSRFToken": match.group(1)}


def post_json(browser: FlaskClient, path: str, body: object, headers: dict[str, str]) -> TestResponse:
    data = body if isinstance(body, str) else json.dumps(body)
    return browser.post(path, data=data, content_type="application/json", headers=headers)


def options(browser: FlaskClient, path: str, headers: dict[str, str]) -> dict[str, Any]:
    response = post_json(browser, path, {}, headers)
    assert response.status_code == 200, response.get_data(as_text=True)[-400:]
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = response.get_json()
    return body


def add_passkey(
    browser: FlaskClient, authenticator: SoftAuthenticator, name: str = "내 휴대폰", **knobs: Any
) -> TestResponse:
    headers = csrf_header(browser, "/account/passkeys")
    creation = options(browser, "/account/passkeys/options", headers)
    path = "/account/passkeys/verify?" + urlencode({"name": name})  # passkey.js sends the name in the query
    return post_json(browser, path, authenticator.create(creation, **knobs), headers)


def passkey_response(browser: FlaskClient, authenticator: SoftAuthenticator, **knobs: Any) -> dict[str, Any]:
    """Press "Sign in with a passkey": the options, then the authenticator's assertion (not sent yet)."""
    return authenticator.get(options(browser, "/login/passkey/options", csrf_header(browser, "/login")), **knobs)


def send_assertion(browser: FlaskClient, body: object) -> TestResponse:
    return post_json(browser, "/login/passkey/verify", body, csrf_header(browser, "/login"))


def sign_in_with_passkey(browser: FlaskClient, authenticator: SoftAuthenticator, **knobs: Any) -> TestResponse:
    return send_assertion(browser, passkey_response(browser, authenticator, **knobs))


def sign_out(browser: FlaskClient) -> None:
    token = csrf_of(browser.get("/account").get_data(as_text=True))
    assert browser.post("/logout/session", data={"csrf_token": token}).status_code == 303
    assert browser.get_cookie("idp_sid") is None


def session_cookie(browser: FlaskClient) -> str | None:
    cookie = browser.get_cookie("idp_sid")
    return cookie.value if cookie else None


def passkeys(app: Flask) -> list[Passkey]:
    with database(app) as db:
        return list(db.scalars(select(Passkey).order_by(Passkey.created_at)))


def events(app: Flask, name: str) -> list[AuditEvent]:
    with database(app) as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.event == name).order_by(AuditEvent.id)))


def resident_id(app: Flask, phone: str = KIM_E164) -> uuid.UUID | None:
    with database(app) as db:
        return db.scalar(select(Resident.id).where(Resident.phone == phone))


def assert_refused(response: TestResponse, message: str = NOT_VERIFIED) -> None:
    assert response.status_code == 400, response.get_data(as_text=True)[-400:]
    assert response.mimetype == "application/json"
    assert response.get_json() == {"error": "passkey_rejected", "message": message}


# -- the journey -----------------------------------------------------------------------------------------------------


def test_resident_adds_a_passkey_and_signs_in_with_it_at_phishing_resistant_level(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    carrier_cookie = session_cookie(browser)

    added = add_passkey(browser, authenticator, name="내 휴대폰")

    assert added.status_code == 200, added.get_data(as_text=True)
    assert added.get_json() == {"redirect": "/account/passkeys"}
    [passkey] = passkeys(app)
    assert passkey.resident_id == resident_id(app)
    assert (passkey.name, passkey.backup_eligible, passkey.attested) == ("내 휴대폰", True, False)
    assert "내 휴대폰" in browser.get("/account/passkeys").get_data(as_text=True)
    sign_out(browser)

    signed_in = sign_in_with_passkey(browser, authenticator)

    assert signed_in.status_code == 200, signed_in.get_data(as_text=True)
    assert signed_in.get_json() == {"redirect": "/account"}
    assert signed_in.headers["Cache-Control"] == "no-store"
    assert session_cookie(browser) not in (None, carrier_cookie)
    assert browser.get("/account").status_code == 200
    [used] = passkeys(app)
    assert used.sign_count == 1
    assert used.last_used_at is not None
    signin = events(app, "signin")[-1]
    assert (signin.result, signin.details["method"], signin.details["acr"]) == ("success", "passkey", "phr")

    created = register(app)
    authorization = authorize(browser, created.client.id)
    tokens = exchange(browser, created, authorization)
    assert tokens.status_code == 200, tokens.get_data(as_text=True)
    claims = decode(app, tokens.get_json()["id_token"]).claims
    assert claims["amr"] == ["swk", "user", "mfa"]
    assert claims["acr"] == "phr"
    assert claims["phone_number"] == KIM_E164


def test_sign_in_continues_only_within_the_idp(
    browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    sign_out(browser)
    # Browsers drop the tab: the page would go to //evil.example/phish.
    browser.get("/login?next=/%09/evil.example/phish")

    signed_in = sign_in_with_passkey(browser, authenticator)

    assert signed_in.get_json() == {"redirect": "/account"}


def test_a_passkey_added_after_a_carrier_only_sign_in_counts_as_that_sign_in_for_a_while(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator, name="내 휴대폰").get_json() == {"redirect": "/account/passkeys"}
    # Someone with the resident's phone number (a swapped SIM) verifies by carrier on another browser.
    other = app.test_client()
    sign_in(other, sandbox)
    assert "처음 72시간 동안" in other.get("/account/passkeys").get_data(as_text=True)
    theirs = SoftAuthenticator(RP_ID, ORIGIN, backup_eligible=True)
    assert add_passkey(other, theirs, name="새 휴대폰").status_code == 200
    [_, added] = passkeys(app)
    assert added.provisional_until is not None
    assert dt.timedelta(hours=71) < added.provisional_until - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=72)
    registered = events(app, "passkey.registered")[-1]
    assert registered.details["provisional_until"] == added.provisional_until.isoformat()
    sign_out(other)

    signed_in = sign_in_with_passkey(other, theirs)

    assert signed_in.status_code == 200
    signin = events(app, "signin")[-1]
    assert (signin.details["method"], signin.details["acr"]) == (
        "passkey_provisional",
        "http://localhost:8000/acr/aal1",
    )
    assert "mfa" not in signin.details["amr"]
    created = register(app)
    claims = decode(app, exchange(other, created, authorize(other, created.client.id)).get_json()["id_token"]).claims
    assert claims["acr"] == "http://localhost:8000/acr/aal1"
    assert claims["amr"] == ["swk", "user"]
    # The resident's own browser, signed in long ago, shows it and removes it without signing in again.
    with database(app) as db:
        for login in db.scalars(select(LoginSession)):
            login.auth_time -= dt.timedelta(hours=1)
        db.commit()
    account = browser.get("/account").get_data(as_text=True)
    assert "새 휴대폰" in account
    assert f"/account/passkeys/{added.id}/remove" in account
    question = browser.get(f"/account/passkeys/{added.id}/remove?back=account").get_data(as_text=True)
    assert question.count('name="back" value="account"') == 1
    removed = browser.post(
        f"/account/passkeys/{added.id}/remove",
        data={"csrf_token": csrf_of(question), "back": "account", "confirm": "yes"},
    )
    assert removed.status_code == 303
    assert removed.headers["Location"] == "/account"
    assert [p.name for p in passkeys(app)] == ["내 휴대폰"]
    assert events(app, "passkey.removed")[-1].details["provisional"] is True


def test_a_recovery_passkey_counts_in_full_after_the_waiting_period(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    other = app.test_client()
    sign_in(other, sandbox)
    theirs = SoftAuthenticator(RP_ID, ORIGIN, backup_eligible=True)
    assert add_passkey(other, theirs).status_code == 200
    with database(app) as db:
        for passkey in db.scalars(select(Passkey).where(Passkey.provisional_until.is_not(None))):
            passkey.provisional_until = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        db.commit()
    sign_out(other)

    assert sign_in_with_passkey(other, theirs).status_code == 200

    signin = events(app, "signin")[-1]
    assert (signin.details["method"], signin.details["acr"]) == ("passkey", "phr")
    assert "새 휴대폰" not in other.get("/account").get_data(as_text=True)


def test_a_passkey_added_after_a_passkey_sign_in_counts_at_once(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    sign_out(browser)
    assert sign_in_with_passkey(browser, authenticator).status_code == 200
    assert "처음 72시간 동안" not in browser.get("/account/passkeys").get_data(as_text=True)

    assert add_passkey(browser, SoftAuthenticator(RP_ID, ORIGIN), name="노트북").status_code == 200

    assert [p.provisional_until for p in passkeys(app)] == [None, None]


def test_passkey_in_a_carrier_session_steps_the_same_session_up(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    cookie = session_cookie(browser)
    with database(app) as db:
        [before] = db.scalars(select(LoginSession).where(LoginSession.ended_at.is_(None))).all()

    stepped_up = sign_in_with_passkey(browser, authenticator)

    assert stepped_up.status_code == 200
    # A new cookie secret for the raised session (as at every authentication); the sid services know stays.
    assert session_cookie(browser) != cookie
    with database(app) as db:
        [login] = db.scalars(select(LoginSession).where(LoginSession.ended_at.is_(None))).all()
        assert login.sid == before.sid
        assert login.acr == "phr"
        assert set(login.amr) == {"sms", "mca", "swk", "user", "mfa"}


def test_registration_options_exclude_the_passkeys_already_added(
    browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    creation = options(browser, "/account/passkeys/options", csrf_header(browser, "/account/passkeys"))
    assert [item["id"] for item in creation["excludeCredentials"]] == [b64url(authenticator.last_credential_id)]
    assert creation["authenticatorSelection"]["residentKey"] == "required"
    assert creation["authenticatorSelection"]["userVerification"] == "required"


def test_registration_needs_a_signed_in_resident(browser: FlaskClient) -> None:
    headers = csrf_header(browser, "/login")
    for path in ("/account/passkeys/options", "/account/passkeys/verify"):
        response = post_json(browser, path, {}, headers)
        assert response.status_code == 401
        assert response.get_json() == {"error": "login_required"}
    page = browser.get("/account/passkeys")
    assert page.status_code == 303
    assert page.headers["Location"].startswith("/login")


# -- rename and remove -----------------------------------------------------------------------------------------------


def test_resident_renames_a_passkey(app: Flask, browser: FlaskClient, sandbox: SandboxAgency) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, SoftAuthenticator(RP_ID, ORIGIN)).status_code == 200
    [passkey] = passkeys(app)
    token = csrf_of(browser.get("/account/passkeys").get_data(as_text=True))

    renamed = browser.post(
        f"/account/passkeys/{passkey.id}/rename", data={"csrf_token": token, "name": " 회사 노트북 "}
    )

    assert renamed.status_code == 303
    assert renamed.headers["Location"] == "/account/passkeys"
    assert [p.name for p in passkeys(app)] == ["회사 노트북"]
    assert "회사 노트북" in browser.get("/account/passkeys").get_data(as_text=True)


def test_removing_the_last_passkey_asks_once_and_it_then_no_longer_signs_in(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    [passkey] = passkeys(app)
    page = browser.get("/account/passkeys").get_data(as_text=True)
    assert "‘내 휴대폰’ 패스키 삭제" in page
    token = csrf_header(browser, "/account/passkeys")["X-CSRFToken"]

    unconfirmed = browser.post(f"/account/passkeys/{passkey.id}/remove", data={"csrf_token": token})

    assert unconfirmed.status_code == 303
    assert unconfirmed.headers["Location"] == f"/account/passkeys/{passkey.id}/remove"
    assert len(passkeys(app)) == 1
    question = browser.get(unconfirmed.headers["Location"]).get_data(as_text=True)
    assert LAST_PASSKEY in question

    removed = browser.post(
        f"/account/passkeys/{passkey.id}/remove", data={"csrf_token": csrf_of(question), "confirm": "yes"}
    )

    assert removed.status_code == 303
    assert passkeys(app) == []
    [event] = events(app, "passkey.removed")
    assert (event.result, event.resident_id) == ("success", passkey.resident_id)
    sign_out(browser)
    refused = sign_in_with_passkey(browser, authenticator)
    assert_refused(refused)
    assert session_cookie(browser) is None
    assert events(app, "passkey.signin")[-1].details == {"reason": "unknown_credential"}


def test_removing_one_of_two_passkeys_asks_once_too(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    laptop = SoftAuthenticator(RP_ID, ORIGIN)
    assert add_passkey(browser, authenticator, name="휴대폰").status_code == 200
    assert add_passkey(browser, laptop, name="노트북").status_code == 200
    on_phone = next(p for p in passkeys(app) if p.name == "휴대폰")
    question = browser.get(f"/account/passkeys/{on_phone.id}/remove").get_data(as_text=True)
    assert LAST_PASSKEY not in question

    removed = browser.post(
        f"/account/passkeys/{on_phone.id}/remove", data={"csrf_token": csrf_of(question), "confirm": "yes"}
    )

    assert removed.status_code == 303
    assert [p.name for p in passkeys(app)] == ["노트북"]
    assert sign_in_with_passkey(browser, laptop).status_code == 200
    assert_refused(sign_in_with_passkey(browser, authenticator))


def test_another_residents_passkey_can_be_neither_renamed_nor_removed(
    app: Flask, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    kim, lee = app.test_client(), app.test_client()
    sign_in(kim, sandbox)
    assert add_passkey(kim, authenticator, name="김경기 휴대폰").status_code == 200
    [passkey] = passkeys(app)
    sign_in(lee, sandbox, LEE, LEE_E164)
    token = csrf_header(lee, "/account/passkeys")["X-CSRFToken"]  # Lee has no passkey, so no form: the meta token

    renamed = lee.post(f"/account/passkeys/{passkey.id}/rename", data={"csrf_token": token, "name": "가로채기"})
    removed = lee.post(f"/account/passkeys/{passkey.id}/remove", data={"csrf_token": token, "confirm": "yes"})

    assert (renamed.status_code, removed.status_code) == (404, 404)
    assert [p.name for p in passkeys(app)] == ["김경기 휴대폰"]


def _sign_in_long_ago(app: Flask) -> None:
    """The browser's session was signed in 20 minutes ago (past RECENT_SIGN_IN)."""
    with database(app) as db:
        for login in db.scalars(select(LoginSession)):
            login.auth_time = login.auth_time - dt.timedelta(minutes=20)
        db.commit()


def test_adding_or_removing_a_passkey_needs_a_recent_sign_in(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator, name="첫 휴대폰").status_code == 200
    _sign_in_long_ago(app)
    headers = csrf_header(browser, "/account/passkeys")
    # A session left open on a lost phone can neither add its finder's passkey nor remove the resident's.
    asked = post_json(browser, "/account/passkeys/options", {}, headers)
    assert asked.status_code == 401
    assert asked.get_json()["redirect"] == "/login?next=/account/passkeys"
    [passkey] = passkeys(app)
    token = headers["X-CSRFToken"]
    removed = browser.post(f"/account/passkeys/{passkey.id}/remove", data={"csrf_token": token, "confirm": "yes"})
    assert removed.status_code == 303
    assert removed.headers["Location"] == "/login?next=/account/passkeys"
    assert len(passkeys(app)) == 1
    # A name is no risk: renaming goes on without signing in again.
    renamed = browser.post(f"/account/passkeys/{passkey.id}/rename", data={"csrf_token": token, "name": "옛 휴대폰"})
    assert renamed.status_code == 303
    assert [p.name for p in passkeys(app)] == ["옛 휴대폰"]
    # Signing in again (here with the passkey) makes the session recent: the passkey can go.
    assert sign_in_with_passkey(browser, authenticator).status_code == 200
    token = csrf_header(browser, "/account/passkeys")["X-CSRFToken"]
    removed = browser.post(f"/account/passkeys/{passkey.id}/remove", data={"csrf_token": token, "confirm": "yes"})
    assert removed.status_code == 303
    assert removed.headers["Location"] == "/account/passkeys"
    assert passkeys(app) == []


# -- refusals --------------------------------------------------------------------------------------------------------

SIGN_IN_REFUSALS: list[Any] = [
    pytest.param({"client_data": {"crossOrigin": True}}, "assertion_invalid", id="client-data-tampered"),
    pytest.param({"origin": "https://localhost.example"}, "assertion_invalid", id="origin"),
    pytest.param({"rp_id": "example.kr"}, "assertion_invalid", id="rp-id"),
    pytest.param({"user_verified": False}, "assertion_invalid", id="no-user-verification"),
    pytest.param({"flags": 0x04}, "assertion_invalid", id="no-user-presence"),
]


@pytest.mark.parametrize(("knobs", "reason"), SIGN_IN_REFUSALS)
def test_refused_sign_in_answers_json_400_in_korean_and_is_audited(
    app: Flask,
    browser: FlaskClient,
    sandbox: SandboxAgency,
    authenticator: SoftAuthenticator,
    knobs: dict[str, Any],
    reason: str,
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    assert sign_in_with_passkey(browser, authenticator).status_code == 200
    sign_out(browser)

    refused = sign_in_with_passkey(browser, authenticator, **knobs)

    assert_refused(refused)
    assert refused.headers["Cache-Control"] == "no-store"
    assert session_cookie(browser) is None
    assert browser.get("/account").status_code == 303
    [passkey] = passkeys(app)
    assert passkey.sign_count == 1
    failure = events(app, "passkey.signin")[-1]
    assert (failure.result, failure.resident_id, failure.client_ip) == ("failure", None, "127.0.0.1")
    assert failure.details["reason"].startswith(reason)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param("{", "malformed_json", id="malformed-json"),
        pytest.param("[1, 2]", "malformed_json", id="json-array"),
        pytest.param("{}", "malformed_credential", id="empty-object"),
        pytest.param("", "malformed_json", id="empty-body"),
    ],
)
def test_malformed_sign_in_body_answers_json_400(app: Flask, browser: FlaskClient, body: str, reason: str) -> None:
    headers = csrf_header(browser, "/login")
    options(browser, "/login/passkey/options", headers)

    refused = post_json(browser, "/login/passkey/verify", body, headers)

    assert_refused(refused)
    failure = events(app, "passkey.signin")[-1]
    assert (failure.result, failure.details) == ("failure", {"reason": reason})


@pytest.mark.parametrize("path", ["/login/passkey/verify", "/account/passkeys/verify"])
def test_oversized_body_is_refused_before_the_ceremony(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, path: str
) -> None:
    sign_in(browser, sandbox)
    headers = csrf_header(browser, "/account/passkeys")
    refused = post_json(browser, path, json.dumps({"padding": "x" * (64 * 1024)}), headers)
    assert refused.status_code == 413  # MAX_CONTENT_LENGTH: the app's limit is the service's 64 KiB
    assert passkeys(app) == []


def test_replayed_sign_in_response_is_refused(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    sign_out(browser)
    response = passkey_response(browser, authenticator)
    assert send_assertion(browser, response).status_code == 200
    sign_out(browser)

    assert_refused(send_assertion(browser, response))
    assert session_cookie(browser) is None
    assert events(app, "passkey.signin")[-1].details == {"reason": "challenge_unknown_expired_or_used"}


def test_sign_in_challenge_of_another_browser_is_refused(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    sign_out(browser)
    victim = app.test_client()
    response = passkey_response(victim, authenticator)  # options fetched in the other browser

    assert_refused(send_assertion(browser, response))
    assert events(app, "passkey.signin")[-1].details == {"reason": "challenge_unknown_expired_or_used"}
    assert send_assertion(victim, response).status_code == 200


@pytest.mark.parametrize(
    ("knobs", "reason"),
    [
        pytest.param({"origin": "https://localhost.example"}, "registration_invalid", id="origin"),
        pytest.param({"user_verified": False}, "registration_invalid", id="no-user-verification"),
        pytest.param({"malformed_attestation": True}, "registration_invalid", id="malformed-cbor"),
    ],
)
def test_refused_registration_stores_nothing_and_is_audited(
    app: Flask,
    browser: FlaskClient,
    sandbox: SandboxAgency,
    authenticator: SoftAuthenticator,
    knobs: dict[str, Any],
    reason: str,
) -> None:
    sign_in(browser, sandbox)

    refused = add_passkey(browser, authenticator, **knobs)

    assert_refused(refused)
    assert passkeys(app) == []
    failure = events(app, "passkey.register")[-1]
    assert (failure.result, failure.resident_id) == ("failure", resident_id(app))
    assert failure.details["reason"].startswith(reason)
    assert events(app, "passkey.registered") == []


def test_json_endpoints_without_the_csrf_header_answer_400(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    sign_in(browser, sandbox)
    for path in JSON_ENDPOINTS:
        for headers in ({}, {"X-CSRFToken": "forged"}):
            response = post_json(browser, path, {}, headers)
            assert response.status_code == 400, (path, headers, response.status_code)
    with database(app) as db:
        assert db.scalars(select(WebAuthnChallenge)).all() == []
    assert passkeys(app) == []
    assert events(app, "passkey.signin") == []


def test_rename_and_remove_without_the_csrf_token_answer_400(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    [passkey] = passkeys(app)
    renamed = browser.post(f"/account/passkeys/{passkey.id}/rename", data={"name": "가로채기"})
    removed = browser.post(f"/account/passkeys/{passkey.id}/remove", data={"confirm": "yes"})
    assert (renamed.status_code, removed.status_code) == (400, 400)
    assert [p.name for p in passkeys(app)] == ["내 휴대폰"]


# -- clones, and the bugs found --------------------------------------------------------------------------------------


def test_a_cloned_passkey_is_refused_with_its_own_message(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    copies = authenticator.clone()
    for _ in range(2):
        assert sign_in_with_passkey(browser, authenticator).status_code == 200
    sign_out(browser)

    assert_refused(sign_in_with_passkey(browser, copies), NO_LONGER_USABLE)
    assert events(app, "passkey.signin")[-1].details == {"reason": "sign_count_went_backwards"}
    assert session_cookie(browser) is None


def test_a_cloned_passkey_stays_blocked(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    copies = authenticator.clone()
    for _ in range(2):
        assert sign_in_with_passkey(browser, authenticator).status_code == 200
    sign_out(browser)
    assert_refused(sign_in_with_passkey(browser, copies), NO_LONGER_USABLE)

    assert_refused(sign_in_with_passkey(browser, authenticator), NO_LONGER_USABLE)
    [passkey] = passkeys(app)
    assert passkey.suspected_clone_at is not None
    assert len(events(app, "passkey.clone_suspected")) == 1


def test_a_challenge_answered_by_a_refused_response_is_used_up(
    browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    sign_out(browser)
    headers = csrf_header(browser, "/login")
    request_options = options(browser, "/login/passkey/options", headers)
    phished = authenticator.get(request_options, origin="https://login.example")
    assert_refused(post_json(browser, "/login/passkey/verify", phished, headers))

    retried = post_json(browser, "/login/passkey/verify", authenticator.get(request_options), headers)

    assert_refused(retried)


def test_undecodable_raw_id_answers_400_not_500(
    browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    sign_in(browser, sandbox)
    assert add_passkey(browser, authenticator).status_code == 200
    sign_out(browser)
    response = passkey_response(browser, authenticator)
    assert_refused(send_assertion(browser, {**response, "rawId": "a"}))


def test_none_attestation_claiming_a_listed_model_does_not_reach_phrh(
    make_app: Callable[[Settings], Flask],
    settings: Settings,
    sandbox: SandboxAgency,
    fresh_database_url: str,
    tmp_path: Path,
) -> None:
    yubikey = bytes.fromhex("ee882879721c491397753dfcce97072a")  # YubiKey 5 series; anyone can write these bytes
    metadata = tmp_path / "fido-metadata.json"
    metadata.write_text(json.dumps([{"aaguid": "ee882879-721c-4913-9775-3dfcce97072a"}]))
    app = make_app(
        replace(
            settings,
            carrier_agency_url=sandbox.url,
            database_url=fresh_database_url,
            fido_metadata_path=metadata,
        )
    )
    app.config["TESTING"] = True
    browser = app.test_client()
    forger = SoftAuthenticator(RP_ID, ORIGIN, aaguid=yubikey)
    sign_in(browser, sandbox)
    assert add_passkey(browser, forger).status_code == 200
    sign_out(browser)
    assert sign_in_with_passkey(browser, forger).status_code == 200

    created = register(app)
    tokens = exchange(browser, created, authorize(browser, created.client.id)).get_json()
    claims = decode(app, tokens["id_token"]).claims

    assert claims["acr"] == "phr"
    assert [p.attested for p in passkeys(app)] == [False]
