"""TOTP through the Flask app: set-up on /account/totp, sign-in with a phone number and a code on /login/totp,
recovery codes, the second factor after a carrier verification, lockouts, and a relying service's code flow.

Codes come from pyotp with the secret the set-up page shows. The replay guard refuses a second code of the same
30-second step, so where a test needs another code it rewinds the guard in the database (`next_time_step`): the
stand-in for waiting for the app's next code, as tests never sleep.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from oidc_flow import KIM, KIM_E164, REDIRECT, Authorization, csrf_of, decode, exchange, pkce, register
from sandbox_agency import SandboxAgency
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from transactions import commits
from werkzeug.test import TestResponse

from idp.models import AuditEvent, LoginSession, RateLimitCounter, RecoveryCode, Resident, TotpDevice
from idp.runtime import of as runtime_of
from idp.settings import Settings, recovery_code_key

ISSUER = "http://localhost:8000"
AAL1 = f"{ISSUER}/acr/aal1"
KIM_PHONE = KIM["phone"]
UNKNOWN_PHONE = "010-9999-0000"
SECRET = re.compile(r'<code class="secret"[^>]*>([A-Z2-7 ]+)</code>')
RECOVERY = re.compile(r'<code class="recovery-code">([a-z2-9]{5}-[a-z2-9]{5})</code>')
NOT_RIGHT = "The phone number or the code is not right."
WRONG_SECOND_CODE = "The code is not right. Check the time on your phone and try the code your app shows now."
CODE_REUSED = "This code was already used. Wait for the next code in your app."
RECOVERY_REUSED = "This recovery code was already used. Each recovery code works once."
LOCKED_OUT = "Too many wrong codes. Wait a while before you try again."
ACCOUNT_LOCKED = "This account is locked. Contact the help desk to unlock it."
ALERT = 'role="alert"'


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Flask:
    app = make_app(replace(settings, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


def english_browser(app: Flask, ip: str = "127.0.0.1") -> FlaskClient:
    """A browser that asks for English pages (the sentences checked here), from address `ip`."""
    browser = app.test_client()
    browser.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en"
    browser.environ_base["REMOTE_ADDR"] = ip
    return browser


@pytest.fixture
def browser(app: Flask) -> FlaskClient:
    return english_browser(app)


# -- the database ----------------------------------------------------------------------------------------------------


@contextmanager
def database(app: Flask) -> Iterator[Session]:
    with runtime_of(app).sessions() as db:
        yield db


def resident_id(app: Flask, phone: str = KIM_E164) -> uuid.UUID:
    with database(app) as db:
        found = db.scalar(select(Resident.id).where(Resident.phone == phone))
    assert found is not None
    return found


def device(app: Flask, phone: str = KIM_E164) -> TotpDevice | None:
    with database(app) as db:
        return db.scalar(
            select(TotpDevice).join(Resident, Resident.id == TotpDevice.resident_id).where(Resident.phone == phone)
        )


def recovery_rows(app: Flask) -> list[RecoveryCode]:
    with database(app) as db:
        return list(db.scalars(select(RecoveryCode).order_by(RecoveryCode.id)))


def login_sessions(app: Flask) -> list[LoginSession]:
    with database(app) as db:
        return list(db.scalars(select(LoginSession).order_by(LoginSession.created_at)))


def live_sessions(app: Flask) -> list[LoginSession]:
    return [s for s in login_sessions(app) if s.ended_at is None]


def audit(app: Flask, name: str) -> list[AuditEvent]:
    with database(app) as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.event == name).order_by(AuditEvent.id)))


def counters(app: Flask) -> list[tuple[str, int, Any]]:
    with database(app) as db:
        rows = db.execute(select(RateLimitCounter.key, RateLimitCounter.count, RateLimitCounter.locked_until))
        return sorted((key, count, until) for key, count, until in rows)


def next_time_step(app: Flask) -> None:
    """As if the app showed its next code: the replay guard's last step moves three steps back (90 s)."""
    with database(app) as db:
        db.execute(update(TotpDevice).values(last_used_step=TotpDevice.last_used_step - 3))
        db.commit()


def backdate(app: Flask, seconds: int) -> None:
    """Every live session, and each authentication event in it, `seconds` earlier."""
    shift = dt.timedelta(seconds=seconds)
    with database(app) as db:
        for login in db.scalars(select(LoginSession).where(LoginSession.ended_at.is_(None))):
            login.auth_time -= shift
            login.created_at -= shift
            login.last_seen_at -= shift
            login.events = [
                {**event, "at": (dt.datetime.fromisoformat(event["at"]) - shift).isoformat()} for event in login.events
            ]
        db.commit()


def lock_resident(app: Flask, phone: str = KIM_E164) -> None:
    with database(app) as db:
        db.execute(update(Resident).where(Resident.phone == phone).values(locked_at=dt.datetime.now(dt.UTC)))
        db.commit()


# -- the browser's side ----------------------------------------------------------------------------------------------


def session_cookie(browser: FlaskClient) -> str | None:
    cookie = browser.get_cookie("idp_sid")
    return cookie.value if cookie else None


def carrier_sign_in(browser: FlaskClient, sandbox: SandboxAgency, person: dict[str, str] = KIM) -> TestResponse:
    """A carrier verification by SMS code, to the answer of the verify form."""
    e164 = "+82" + person["phone"].replace("-", "")[1:]
    token = csrf_of(browser.get("/login/carrier").get_data(as_text=True))
    started = browser.post("/login/carrier", data={"csrf_token": token, "method": "sms", "consent": "y", **person})
    assert started.status_code == 303, started.get_data(as_text=True)[-500:]
    token = csrf_of(browser.get("/login/carrier/verify").get_data(as_text=True))
    done = browser.post(
        "/login/carrier/verify", data={"csrf_token": token, "action": "confirm", "code": sandbox.last_code(e164)}
    )
    assert done.status_code == 303, done.get_data(as_text=True)[-500:]
    return done


def sign_out(browser: FlaskClient) -> None:
    token = csrf_of(browser.get("/account").get_data(as_text=True))
    assert browser.post("/logout/session", data={"csrf_token": token}).status_code == 303
    assert session_cookie(browser) is None


def start_enrolment(browser: FlaskClient) -> str:
    """Press "Set up an authenticator app"; the Base32 secret the page then shows, without its spaces."""
    token = csrf_of(browser.get("/account/totp").get_data(as_text=True))
    started = browser.post("/account/totp/setup", data={"csrf_token": token})
    assert started.status_code == 303, started.get_data(as_text=True)[-400:]
    page = browser.get("/account/totp").get_data(as_text=True)
    shown = SECRET.search(page)
    assert shown, page[-1500:]
    return shown.group(1).replace(" ", "")


def confirm(browser: FlaskClient, code: str) -> TestResponse:
    token = csrf_of(browser.get("/account/totp").get_data(as_text=True))
    return browser.post("/account/totp/confirm", data={"csrf_token": token, "code": code})


def enrol(app: Flask, browser: FlaskClient) -> tuple[str, list[str]]:
    """Set up TOTP for the signed-in resident: the secret and the ten recovery codes shown once."""
    secret = start_enrolment(browser)
    confirmed = confirm(browser, pyotp.TOTP(secret).now())
    assert confirmed.status_code == 200, confirmed.get_data(as_text=True)[-800:]
    codes = RECOVERY.findall(confirmed.get_data(as_text=True))
    assert len(codes) == 10
    next_time_step(app)  # the confirming code is spent; the tests' sign-ins use the app's next one
    return secret, codes


def totp_page(browser: FlaskClient, kind: str = "totp") -> str:
    return browser.get("/login/totp" + ("?kind=recovery" if kind == "recovery" else "")).get_data(as_text=True)


def totp_sign_in(
    browser: FlaskClient, code: str, phone: str | None = KIM_PHONE, *, kind: str = "totp", **extra: str
) -> TestResponse:
    """Fill /login/totp and send it; without `phone` when a carrier sign-in waits for the code."""
    form = {"csrf_token": csrf_of(totp_page(browser, kind)), "code": code, "kind": kind, **extra}
    if phone is not None:
        form["phone"] = phone
    return browser.post("/login/totp", data=form)


def wrong_code(secret: str) -> str:
    """Six digits that are none of the codes the app shows from a minute ago to a minute ahead."""
    totp, now = pyotp.TOTP(secret), time.time()
    valid = {totp.at(now + 30 * step) for step in range(-2, 3)}
    return next(code for code in (f"{n:06d}" for n in range(1_000_000)) if code not in valid)


def signed_up_with_totp(app: Flask, browser: FlaskClient, sandbox: SandboxAgency) -> tuple[str, list[str]]:
    """Kim verifies by carrier, sets up TOTP and signs out: the secret and recovery codes."""
    carrier_sign_in(browser, sandbox)
    secret, codes = enrol(app, browser)
    sign_out(browser)
    return secret, codes


def assert_refused(response: TestResponse, sentence: str = NOT_RIGHT, status: int = 400) -> None:
    assert response.status_code == status, response.get_data(as_text=True)[-600:]
    page = response.get_data(as_text=True)
    assert ALERT in page
    assert sentence in page


# -- enrolment -------------------------------------------------------------------------------------------------------


def test_set_up_page_needs_a_signed_in_resident(browser: FlaskClient) -> None:
    page = browser.get("/account/totp")
    assert page.status_code == 303
    assert page.headers["Location"].startswith("/login?")
    assert parse_qs(urlsplit(page.headers["Location"]).query)["next"] == ["/account/totp"]
    token = csrf_of(browser.get("/login/totp").get_data(as_text=True))
    for path in ("/account/totp/setup", "/account/totp/confirm", "/account/totp/remove"):
        response = browser.post(path, data={"csrf_token": token, "code": "123456"})
        assert response.status_code == 303, path
        assert response.headers["Location"].startswith("/login"), path


def test_set_up_shows_an_inline_qr_code_and_the_secret_and_counts_only_after_a_right_code(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    carrier_sign_in(browser, sandbox)
    before = browser.get("/account/totp").get_data(as_text=True)
    assert "<svg" not in before
    assert device(app) is None

    secret = start_enrolment(browser)

    page = browser.get("/account/totp")
    html = page.get_data(as_text=True)
    assert page.headers["Cache-Control"] == "no-store"
    assert "<svg" in html
    assert "<img" not in html  # the QR code is drawn here, not fetched from anywhere
    assert re.fullmatch(r"[A-Z2-7]{32}", secret)  # 160 bits of Base32
    assert re.search(r'<code class="secret"[^>]*>(?:[A-Z2-7]{4} ){7}[A-Z2-7]{4}</code>', html)  # grouped by four
    pending = device(app)
    assert pending is not None
    assert pending.confirmed_at is None
    assert secret.encode() not in pending.secret_encrypted
    assert recovery_rows(app) == []
    [started] = audit(app, "totp.enrolment_started")
    assert started.resident_id == resident_id(app)


def test_wrong_confirm_code_answers_400_and_leaves_the_app_unconfirmed(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    carrier_sign_in(browser, sandbox)
    secret = start_enrolment(browser)

    refused = confirm(browser, wrong_code(secret))

    assert refused.status_code == 400
    html = refused.get_data(as_text=True)
    assert 'id="code-error"' in html
    assert 'aria-invalid="true"' in html
    assert WRONG_SECOND_CODE in html
    assert SECRET.search(html)  # the set-up stays on screen to try again
    pending = device(app)
    assert pending is not None
    assert (pending.confirmed_at, pending.last_used_step) == (None, None)
    assert recovery_rows(app) == []
    assert RECOVERY.findall(html) == []
    failure = audit(app, "totp.enrolment_confirm")[-1]
    assert (failure.result, failure.details["reason"]) == ("failure", "wrong_code")

    malformed = confirm(browser, "12ab56")

    assert malformed.status_code == 400
    assert 'id="code-error"' in malformed.get_data(as_text=True)
    confirmed_at = device(app)
    assert confirmed_at is not None
    assert confirmed_at.confirmed_at is None


def test_confirming_shows_the_recovery_codes_once_and_stores_only_their_digests(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    carrier_sign_in(browser, sandbox)
    secret = start_enrolment(browser)

    confirmed = confirm(browser, pyotp.TOTP(secret).now())

    assert confirmed.status_code == 200, confirmed.get_data(as_text=True)[-600:]
    assert confirmed.headers["Cache-Control"] == "no-store"
    html = confirmed.get_data(as_text=True)
    codes = RECOVERY.findall(html)
    assert len(codes) == len(set(codes)) == 10
    assert 'role="status"' in html
    enrolled = device(app)
    assert enrolled is not None
    assert enrolled.confirmed_at is not None
    rows = recovery_rows(app)
    key = recovery_code_key(runtime_of(app).settings)
    digests = {hmac.new(key, code.replace("-", "").encode(), hashlib.sha256).digest() for code in codes}
    assert {row.digest for row in rows} == digests
    assert all(row.used_at is None and row.resident_id == resident_id(app) for row in rows)
    assert [e.result for e in audit(app, "totp.enrolled")] == ["success"]

    later = browser.get("/account/totp").get_data(as_text=True)

    assert not any(code in later for code in codes)
    assert RECOVERY.findall(later) == []
    assert "<svg" not in later
    assert not SECRET.search(later)
    assert "Recovery codes left: 10" in later


def test_the_confirming_code_does_not_sign_in_again(app: Flask, browser: FlaskClient, sandbox: SandboxAgency) -> None:
    carrier_sign_in(browser, sandbox)
    secret = start_enrolment(browser)
    code = pyotp.TOTP(secret).now()
    assert confirm(browser, code).status_code == 200
    sign_out(browser)

    replayed = totp_sign_in(browser, code)

    assert_refused(replayed, CODE_REUSED)
    assert session_cookie(browser) is None
    assert audit(app, "totp.verify")[-1].details["reason"] == "replayed"


def test_a_second_set_up_while_confirmed_keeps_the_app_that_counts(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    carrier_sign_in(browser, sandbox)
    secret, _ = enrol(app, browser)
    enrolled = device(app)
    assert enrolled is not None
    token = csrf_of(browser.get("/account/totp").get_data(as_text=True))

    again = browser.post("/account/totp/setup", data={"csrf_token": token})

    assert again.status_code == 303
    after = device(app)
    assert after is not None
    assert (after.id, after.secret_encrypted, after.confirmed_at) == (
        enrolled.id,
        enrolled.secret_encrypted,
        enrolled.confirmed_at,
    )
    assert not SECRET.search(browser.get("/account/totp").get_data(as_text=True))
    sign_out(browser)
    assert totp_sign_in(browser, pyotp.TOTP(secret).now()).status_code == 303


def test_new_recovery_codes_replace_the_old_ones(app: Flask, browser: FlaskClient, sandbox: SandboxAgency) -> None:
    carrier_sign_in(browser, sandbox)
    _, old = enrol(app, browser)
    token = csrf_of(browser.get("/account/totp").get_data(as_text=True))

    renewed = browser.post("/account/totp/recovery-codes", data={"csrf_token": token})

    assert renewed.status_code == 200
    assert renewed.headers["Cache-Control"] == "no-store"
    new = RECOVERY.findall(renewed.get_data(as_text=True))
    assert len(new) == 10
    assert not set(new) & set(old)
    assert len(recovery_rows(app)) == 10
    sign_out(browser)
    assert_refused(totp_sign_in(browser, old[0], kind="recovery"))
    assert totp_sign_in(browser, new[0], kind="recovery").status_code == 303


def test_changes_need_a_sign_in_within_15_minutes(app: Flask, browser: FlaskClient, sandbox: SandboxAgency) -> None:
    carrier_sign_in(browser, sandbox)
    secret, _ = enrol(app, browser)
    digests = [row.digest for row in recovery_rows(app)]
    backdate(app, 16 * 60)
    page = browser.get("/account/totp").get_data(as_text=True)
    token = csrf_of(page)

    for path in ("/account/totp/remove", "/account/totp/recovery-codes"):
        answer = browser.post(path, data={"csrf_token": token})
        assert answer.status_code == 303, path
        assert answer.headers["Location"].startswith("/login?"), path
        assert parse_qs(urlsplit(answer.headers["Location"]).query)["next"] == ["/account/totp"]
        assert RECOVERY.findall(answer.get_data(as_text=True)) == []

    assert device(app) is not None
    assert [row.digest for row in recovery_rows(app)] == digests
    assert audit(app, "totp.removed") == []
    assert carrier_sign_in(browser, sandbox).headers["Location"] == "/login/totp"
    assert totp_sign_in(browser, pyotp.TOTP(secret).now(), phone=None).status_code == 303
    token = csrf_of(browser.get("/account/totp").get_data(as_text=True))
    assert browser.post("/account/totp/remove", data={"csrf_token": token, "confirm": "yes"}).status_code == 303
    assert device(app) is None


def test_an_abandoned_set_up_cannot_be_finished_from_a_stale_session(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    carrier_sign_in(browser, sandbox)
    secret = start_enrolment(browser)
    backdate(app, 16 * 60)

    page = browser.get("/account/totp").get_data(as_text=True)
    assert secret[:4] not in page.replace(" ", "")
    assert SECRET.search(page) is None
    answer = browser.post("/account/totp/confirm", data={"csrf_token": csrf_of(page), "code": pyotp.TOTP(secret).now()})

    assert answer.status_code == 303
    assert answer.headers["Location"].startswith("/login?")
    assert RECOVERY.findall(answer.get_data(as_text=True)) == []
    found = device(app)
    assert found is not None
    assert found.confirmed_at is None
    assert recovery_rows(app) == []


def test_a_set_up_left_unconfirmed_for_15_minutes_expires(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    carrier_sign_in(browser, sandbox)
    secret = start_enrolment(browser)
    with database(app) as db:
        for pending in db.scalars(select(TotpDevice)):
            pending.created_at -= dt.timedelta(minutes=16)
        db.commit()

    page = browser.get("/account/totp").get_data(as_text=True)
    assert SECRET.search(page) is None
    answer = confirm(browser, pyotp.TOTP(secret).now())

    assert RECOVERY.findall(answer.get_data(as_text=True)) == []
    found = device(app)
    assert found is not None
    assert found.confirmed_at is None
    # Starting again gives a new secret that works.
    fresh = start_enrolment(browser)
    assert fresh != secret
    assert confirm(browser, pyotp.TOTP(fresh).now()).status_code == 200


def input_tag(page: str, name: str) -> str:
    tags = re.findall(rf'<input[^>]*name="{name}"[^>]*>', page)
    assert len(tags) == 1, (name, tags)
    return tags[0]


def assert_labelled(page: str, tag: str) -> None:
    field_id = re.search(r'id="([^"]+)"', tag)
    assert field_id, tag
    assert re.search(rf'<label for="{field_id.group(1)}">[^<]+</label>', page), tag


def test_totp_forms_follow_the_design_contract(app: Flask, browser: FlaskClient, sandbox: SandboxAgency) -> None:
    sign_in_page = totp_page(browser)
    phone = input_tag(sign_in_page, "phone")
    code = input_tag(sign_in_page, "code")
    assert 'type="tel"' in phone
    assert 'autocomplete="tel"' in phone
    assert 'autocomplete="one-time-code"' in code
    assert 'inputmode="numeric"' in code
    for tag in (phone, code):
        assert_labelled(sign_in_page, tag)
    recovery_page = totp_page(browser, "recovery")
    assert_labelled(recovery_page, input_tag(recovery_page, "code"))
    assert 'inputmode="numeric"' not in input_tag(recovery_page, "code")  # recovery codes have letters

    carrier_sign_in(browser, sandbox)
    start_enrolment(browser)
    set_up_page = browser.get("/account/totp").get_data(as_text=True)
    confirm_code = input_tag(set_up_page, "code")
    assert 'autocomplete="one-time-code"' in confirm_code
    assert 'inputmode="numeric"' in confirm_code
    assert_labelled(set_up_page, confirm_code)
    assert re.search(r"<svg[^>]*>\s*<title[^>]*>[^<]+</title>", set_up_page)  # the QR code has a name


# -- signing in with the app's code ----------------------------------------------------------------------------------


def test_phone_and_code_sign_in_without_a_carrier_verification(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    texts = len(sandbox.outbox(KIM_E164))
    sessions_before = len(login_sessions(app))
    page = totp_page(browser)
    assert 'name="phone"' in page
    assert 'autocomplete="one-time-code"' in page

    signed_in = totp_sign_in(browser, pyotp.TOTP(secret).now())

    assert signed_in.status_code == 303, signed_in.get_data(as_text=True)[-600:]
    assert signed_in.headers["Location"] == "/account"
    assert session_cookie(browser) is not None
    assert browser.get("/account").status_code == 200
    assert len(sandbox.outbox(KIM_E164)) == texts  # no text message, no identity details asked
    assert len(login_sessions(app)) == sessions_before + 1
    [login] = live_sessions(app)
    assert (login.acr, login.amr, [e["method"] for e in login.events]) == (AAL1, ["otp"], ["totp"])
    used = device(app)
    assert used is not None
    assert used.last_used_at is not None
    assert used.last_used_step is not None
    verify = audit(app, "totp.verify")[-1]
    assert (verify.result, verify.resident_id, verify.client_ip) == ("success", resident_id(app), "127.0.0.1")
    signin = audit(app, "signin")[-1]
    assert (signin.details["method"], signin.details["acr"]) == ("totp", AAL1)


def test_a_sign_in_with_the_apps_code_is_one_transaction(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    # The lockout counters (counted before the code is judged, settled after) go with the sign-in's own writes.
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    form = {"csrf_token": csrf_of(totp_page(browser)), "code": pyotp.TOTP(secret).now(), "phone": KIM_PHONE}

    with commits(runtime_of(app).engine) as committed:
        signed_in = browser.post("/login/totp", data=form)

    assert signed_in.status_code == 303, signed_in.get_data(as_text=True)[-600:]
    assert len(committed) == 1


def test_a_wrong_code_is_one_transaction_and_stays_counted(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    form = {"csrf_token": csrf_of(totp_page(browser)), "code": wrong_code(secret), "phone": KIM_PHONE}
    before = {key: count for key, count, _ in counters(app)}

    with commits(runtime_of(app).engine) as committed:
        refused = browser.post("/login/totp", data=form)

    assert_refused(refused)
    assert len(committed) == 1
    counted = {key: count - before.get(key, 0) for key, count, _ in counters(app) if count != before.get(key)}
    assert sorted(counted.values()) == [1, 1]  # one failure against the resident, one against the address


def test_codes_with_a_space_or_a_hyphen_are_accepted(app: Flask, browser: FlaskClient, sandbox: SandboxAgency) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    code = pyotp.TOTP(secret).now()

    signed_in = totp_sign_in(browser, f"{code[:3]} {code[3:]}", phone="+82 10-0000-0001")

    assert signed_in.status_code == 303, signed_in.get_data(as_text=True)[-600:]
    sign_out(browser)
    next_time_step(app)
    code = pyotp.TOTP(secret).now()
    assert totp_sign_in(browser, f"{code[:3]}-{code[3:]}").status_code == 303


def test_sign_in_goes_on_to_the_page_that_asked_for_it(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    assert browser.get("/login?next=/account/passkeys").status_code == 200

    signed_in = totp_sign_in(browser, pyotp.TOTP(secret).now())

    assert signed_in.status_code == 303
    assert signed_in.headers["Location"] == "/account/passkeys"


def test_totp_code_is_refused_in_same_time_step(app: Flask, browser: FlaskClient, sandbox: SandboxAgency) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    code = pyotp.TOTP(secret).now()
    assert totp_sign_in(browser, code).status_code == 303
    first_cookie = session_cookie(browser)
    sign_out(browser)
    step = device(app)
    assert step is not None

    replayed = totp_sign_in(browser, code)

    assert_refused(replayed, CODE_REUSED)
    assert session_cookie(browser) is None
    assert first_cookie is not None
    assert live_sessions(app) == []
    still = device(app)
    assert still is not None
    assert still.last_used_step == step.last_used_step
    failure = audit(app, "totp.verify")[-1]
    assert (failure.result, failure.details["reason"]) == ("failure", "replayed")


def test_recovery_code_signs_in_once(app: Flask, browser: FlaskClient, sandbox: SandboxAgency) -> None:
    _, codes = signed_up_with_totp(app, browser, sandbox)
    page = totp_page(browser, "recovery")
    assert 'name="kind" value="recovery"' in page
    assert 'autocomplete="off"' in page

    signed_in = totp_sign_in(browser, codes[3].upper(), kind="recovery")

    assert signed_in.status_code == 303, signed_in.get_data(as_text=True)[-600:]
    assert signed_in.headers["Location"] == "/account/totp"  # where the codes left and a new set are
    [login] = live_sessions(app)
    assert (login.acr, login.amr, login.events[0]["method"]) == (AAL1, ["otp"], "recovery_code")
    assert "Recovery codes left: 9" in browser.get("/account/totp").get_data(as_text=True)
    assert len(audit(app, "recovery_code.used")) == 1
    sign_out(browser)

    reused = totp_sign_in(browser, codes[3], kind="recovery")

    assert_refused(reused, RECOVERY_REUSED)
    assert session_cookie(browser) is None
    assert [row.used_at is not None for row in recovery_rows(app)].count(True) == 1
    assert audit(app, "totp.verify")[-1].details["reason"] == "recovery_code_reused"


def test_removed_app_no_longer_signs_in_nor_asks_for_a_code_after_the_carrier(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    carrier_sign_in(browser, sandbox)
    secret, codes = enrol(app, browser)
    token = csrf_of(browser.get("/account/totp").get_data(as_text=True))

    removed = browser.post("/account/totp/remove", data={"csrf_token": token, "confirm": "yes"})

    assert removed.status_code == 303
    assert removed.headers["Location"] == "/account/totp"
    assert device(app) is None
    assert recovery_rows(app) == []
    assert [e.resident_id for e in audit(app, "totp.removed")] == [resident_id(app)]
    assert "Set up an authenticator app" in browser.get("/account/totp").get_data(as_text=True)
    sign_out(browser)
    assert_refused(totp_sign_in(browser, pyotp.TOTP(secret).now()))
    assert_refused(totp_sign_in(browser, codes[0], kind="recovery"))
    assert session_cookie(browser) is None
    carrier = carrier_sign_in(browser, sandbox)
    assert carrier.headers["Location"] == "/account"
    assert session_cookie(browser) is not None


# -- the second factor after a carrier verification ------------------------------------------------------------------


def test_carrier_sign_in_of_a_totp_resident_waits_for_the_code(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    sessions_before = len(login_sessions(app))

    first_factor = carrier_sign_in(browser, sandbox)

    assert first_factor.headers["Location"] == "/login/totp"
    assert session_cookie(browser) is None
    assert browser.get("/account").status_code == 303
    assert len(login_sessions(app)) == sessions_before
    assert audit(app, "signin.first_factor")[-1].resident_id == resident_id(app)
    page = totp_page(browser)
    assert 'name="phone"' not in page  # only the code is asked for
    assert 'name="code"' in page

    wrong = totp_sign_in(browser, wrong_code(secret), phone=None)

    assert_refused(wrong, WRONG_SECOND_CODE)
    assert session_cookie(browser) is None
    assert len(login_sessions(app)) == sessions_before

    finished = totp_sign_in(browser, pyotp.TOTP(secret).now(), phone=None)

    assert finished.status_code == 303, finished.get_data(as_text=True)[-600:]
    assert finished.headers["Location"] == "/account"
    assert session_cookie(browser) is not None
    [login] = live_sessions(app)
    assert set(login.amr) == {"otp", "sms", "mca"}
    assert login.acr == AAL1
    assert [e["method"] for e in login.events] == ["carrier_sms", "totp"]
    with browser.session_transaction() as flow:
        assert "second_factor" not in flow


def test_the_waiting_second_factor_expires(app: Flask, browser: FlaskClient, sandbox: SandboxAgency) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    before = device(app)
    assert before is not None
    carrier_sign_in(browser, sandbox)
    with browser.session_transaction() as flow:
        waiting = flow["second_factor"]
        left = dt.datetime.fromisoformat(waiting["expires_at"]) - dt.datetime.now(dt.UTC)
        assert dt.timedelta(minutes=4) < left <= dt.timedelta(minutes=5)
        # Five minutes and a second later.
        flow["second_factor"] = {
            **waiting,
            "expires_at": (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat(),
        }

    page = totp_page(browser)

    assert 'name="phone"' in page  # the plain TOTP sign-in again: the carrier verification no longer counts
    with browser.session_transaction() as flow:
        assert "second_factor" not in flow
    late = totp_sign_in(browser, pyotp.TOTP(secret).now(), phone=None)
    assert late.status_code == 400
    assert 'id="phone-error"' in late.get_data(as_text=True)
    assert session_cookie(browser) is None
    assert live_sessions(app) == []
    unused = device(app)
    assert unused is not None
    assert unused.last_used_step == before.last_used_step


# -- a relying service's code flow -----------------------------------------------------------------------------------


def begin_authorization(client_id: str, **extra: str) -> tuple[str, Authorization]:
    """An authorization request and what its answer is checked against (the code is filled in later)."""
    verifier, challenge = pkce()
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid profile phone",
        "state": "st-" + uuid.uuid4().hex[:8],
        "nonce": "n-" + uuid.uuid4().hex[:8],
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }
    empty = Authorization(
        code="", state=query["state"], nonce=query["nonce"], verifier=verifier, location="", params={}
    )
    return "/authorize?" + urlencode(query), empty


def back_at_the_client(response: TestResponse, authorization: Authorization) -> Authorization:
    assert response.status_code == 302, response.get_data(as_text=True)[-600:]
    location = response.headers["Location"]
    assert location.startswith(REDIRECT + "?"), location
    params = parse_qs(urlsplit(location).query)
    assert params["state"] == [authorization.state]
    return replace(authorization, code=params.get("code", [""])[0], location=location, params=params)


def test_totp_sign_in_through_a_relying_services_code_flow(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    created = register(app, first_party=True)
    url, authorization = begin_authorization(created.client.id)

    asked = browser.get(url)

    assert asked.status_code == 303
    login_url = asked.headers["Location"]
    assert login_url.startswith("/login?")
    next_url = parse_qs(urlsplit(login_url).query)["next"][0]
    assert 'href="/login/totp"' in browser.get(login_url).get_data(as_text=True)
    before = int(time.time())
    signed_in = totp_sign_in(browser, pyotp.TOTP(secret).now())
    after = int(time.time()) + 1
    assert signed_in.status_code == 303, signed_in.get_data(as_text=True)[-600:]
    assert signed_in.headers["Location"] == next_url
    authorization = back_at_the_client(browser.get(next_url), authorization)
    tokens = exchange(browser, created, authorization)

    assert tokens.status_code == 200, tokens.get_data(as_text=True)
    claims = decode(app, tokens.get_json()["id_token"]).claims
    assert claims["acr"] == AAL1
    assert claims["amr"] == ["otp"]
    assert before <= claims["auth_time"] <= after
    assert claims["nonce"] == authorization.nonce
    assert claims["phone_number"] == KIM_E164
    [login] = live_sessions(app)
    assert claims["sid"] == login.sid


# -- forged and guessed -----------------------------------------------------------------------------------------------


def test_posts_without_the_csrf_token_answer_400_and_change_nothing(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    step = device(app)
    assert step is not None
    counted = counters(app)

    for token in (None, "forged"):
        form = {"phone": KIM_PHONE, "code": pyotp.TOTP(secret).now(), "kind": "totp"}
        if token:
            form["csrf_token"] = token
        refused = browser.post("/login/totp", data=form)
        assert refused.status_code == 400, token
        assert ALERT in refused.get_data(as_text=True)
    assert session_cookie(browser) is None
    assert live_sessions(app) == []
    unchanged = device(app)
    assert unchanged is not None
    assert unchanged.last_used_step == step.last_used_step
    assert counters(app) == counted

    carrier_sign_in(browser, sandbox)
    assert totp_sign_in(browser, pyotp.TOTP(secret).now(), phone=None).status_code == 303
    for path in ("/account/totp/remove", "/account/totp/recovery-codes", "/account/totp/setup"):
        response = browser.post(path, data={})
        assert response.status_code == 400, path
        assert RECOVERY.findall(response.get_data(as_text=True)) == []
    assert device(app) is not None
    assert len(recovery_rows(app)) == 10


def test_unconfirmed_set_up_without_the_csrf_token_stays_unconfirmed(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    carrier_sign_in(browser, sandbox)
    secret = start_enrolment(browser)

    refused = browser.post("/account/totp/confirm", data={"code": pyotp.TOTP(secret).now()})

    assert refused.status_code == 400
    pending = device(app)
    assert pending is not None
    assert pending.confirmed_at is None
    assert recovery_rows(app) == []


def lockout_run(browser: FlaskClient, phone: str, wrong: str, right: str) -> list[TestResponse]:
    """Six wrong codes, then a seventh attempt with `right`."""
    return [totp_sign_in(browser, wrong, phone=phone) for _ in range(6)] + [totp_sign_in(browser, right, phone=phone)]


def test_sixth_wrong_code_locks_the_resident_out_even_for_the_right_code(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    step = device(app)
    assert step is not None

    *wrong, locked = lockout_run(browser, KIM_PHONE, wrong_code(secret), pyotp.TOTP(secret).now())

    assert [r.status_code for r in wrong] == [400] * 6
    for response in wrong:
        assert_refused(response)
    assert locked.status_code == 429, locked.get_data(as_text=True)[-600:]
    assert 0 < int(locked.headers["Retry-After"]) <= 30
    assert locked.headers["Cache-Control"] == "no-store"
    assert LOCKED_OUT in locked.get_data(as_text=True)
    assert ALERT in locked.get_data(as_text=True)
    assert session_cookie(browser) is None
    assert live_sessions(app) == []
    unused = device(app)
    assert unused is not None
    assert unused.last_used_step == step.last_used_step  # the right code was not even looked at
    reasons = [e.details["reason"] for e in audit(app, "totp.verify")]
    assert reasons[-7:] == ["wrong_code"] * 6 + ["locked"]
    assert max(count for _, count, _ in counters(app)) == 6


def test_wrong_codes_by_phone_lock_the_second_factor_too(app: Flask, sandbox: SandboxAgency) -> None:
    guesser = english_browser(app, "198.51.100.9")
    secret, _ = signed_up_with_totp(app, guesser, sandbox)
    for _ in range(6):
        assert_refused(totp_sign_in(guesser, wrong_code(secret)))
    resident = english_browser(app, "192.0.2.20")  # another address: only the lock on the resident applies
    assert carrier_sign_in(resident, sandbox).headers["Location"] == "/login/totp"

    locked = totp_sign_in(resident, pyotp.TOTP(secret).now(), phone=None)

    assert locked.status_code == 429
    assert "Retry-After" in locked.headers
    assert session_cookie(resident) is None
    assert live_sessions(app) == []


def test_an_address_is_locked_after_twenty_wrong_codes_whatever_the_numbers(app: Flask, sandbox: SandboxAgency) -> None:
    guesser = english_browser(app, "203.0.113.50")
    secret, _ = signed_up_with_totp(app, english_browser(app, "203.0.113.51"), sandbox)
    numbers = [f"010-9999-{n:04d}" for n in range(1, 6)]  # four guesses each: no number is locked
    for guess in range(20):
        assert_refused(totp_sign_in(guesser, wrong_code(secret), phone=numbers[guess % 5]))
    # Kim's own code from the same address still works: 20 failures are free. It does not forgive them.
    assert totp_sign_in(guesser, pyotp.TOTP(secret).now()).status_code == 303
    sign_out(guesser)
    assert_refused(totp_sign_in(guesser, wrong_code(secret), phone="010-9999-0100"))  # the 21st

    locked = totp_sign_in(guesser, "123456", phone="010-9999-0101")

    assert locked.status_code == 429
    assert 0 < int(locked.headers["Retry-After"]) <= 30
    next_time_step(app)
    elsewhere = english_browser(app, "203.0.113.52")
    assert totp_sign_in(elsewhere, pyotp.TOTP(secret).now()).status_code == 303


def test_lockout_of_an_unknown_number_looks_the_same_as_of_a_known_one(app: Flask, sandbox: SandboxAgency) -> None:
    browser = english_browser(app, "198.51.100.1")
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    wrong = wrong_code(secret)
    right = pyotp.TOTP(secret).now()
    stranger = english_browser(app, "198.51.100.2")

    known = lockout_run(browser, KIM_PHONE, wrong, right)
    unknown = lockout_run(stranger, UNKNOWN_PHONE, wrong, right)

    assert [r.status_code for r in unknown] == [r.status_code for r in known] == [400] * 6 + [429]
    for ours, theirs in zip(known, unknown, strict=True):
        assert ALERT in theirs.get_data(as_text=True)
        sentence = NOT_RIGHT if theirs.status_code == 400 else LOCKED_OUT
        assert sentence in ours.get_data(as_text=True)
        assert sentence in theirs.get_data(as_text=True)
    assert abs(int(known[-1].headers["Retry-After"]) - int(unknown[-1].headers["Retry-After"])) <= 1
    unknown_events = [e for e in audit(app, "totp.verify") if e.client_ip == "198.51.100.2"]
    assert [e.details["reason"] for e in unknown_events] == ["wrong_code"] * 6 + ["locked"]
    assert {e.resident_id for e in unknown_events} == {None}


def test_admin_locked_resident_with_the_right_code_gets_403_and_no_session(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    lock_resident(app)
    sessions_before = len(login_sessions(app))

    refused = totp_sign_in(browser, pyotp.TOTP(secret).now())

    assert refused.status_code == 403, refused.get_data(as_text=True)[-600:]
    assert ACCOUNT_LOCKED in refused.get_data(as_text=True)
    assert session_cookie(browser) is None
    assert len(login_sessions(app)) == sessions_before
    assert browser.get("/account").status_code == 303
    assert audit(app, "signin")[-1].details["method"] != "totp"


def test_admin_locked_refusal_is_audited_like_the_carrier_path(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    lock_resident(app)
    carrier = english_browser(app, "192.0.2.7")
    carrier_sign_in_refused = carrier_sign_in_locked(carrier, sandbox)
    assert carrier_sign_in_refused.status_code == 403
    [by_carrier] = audit(app, "signin.refused")
    assert (by_carrier.result, by_carrier.details["reason"]) == ("failure", "locked")

    refused = totp_sign_in(browser, pyotp.TOTP(secret).now())

    assert refused.status_code == 403
    by_totp = [e for e in audit(app, "signin.refused") if e.client_ip == "127.0.0.1"]
    assert [(e.result, e.resident_id, e.details["reason"]) for e in by_totp] == [
        ("failure", resident_id(app), "locked")
    ], "a 403 for an admin-locked resident on /login/totp leaves no signin.refused event"


def carrier_sign_in_locked(browser: FlaskClient, sandbox: SandboxAgency) -> TestResponse:
    token = csrf_of(browser.get("/login/carrier").get_data(as_text=True))
    started = browser.post("/login/carrier", data={"csrf_token": token, "method": "sms", "consent": "y", **KIM})
    assert started.status_code == 303
    token = csrf_of(browser.get("/login/carrier/verify").get_data(as_text=True))
    return browser.post(
        "/login/carrier/verify", data={"csrf_token": token, "action": "confirm", "code": sandbox.last_code(KIM_E164)}
    )


def test_admin_locked_resident_cannot_finish_a_carrier_sign_in_with_the_code(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    carrier_sign_in(browser, sandbox)  # waiting for the code
    lock_resident(app)

    refused = totp_sign_in(browser, pyotp.TOTP(secret).now(), phone=None)

    assert refused.status_code == 403, refused.get_data(as_text=True)[-600:]
    assert session_cookie(browser) is None
    assert live_sessions(app) == []


def test_a_success_forgets_earlier_wrong_codes(app: Flask, browser: FlaskClient, sandbox: SandboxAgency) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    for _ in range(5):
        assert_refused(totp_sign_in(browser, wrong_code(secret)))
    assert totp_sign_in(browser, pyotp.TOTP(secret).now()).status_code == 303
    sign_out(browser)

    for _ in range(5):
        assert_refused(totp_sign_in(browser, wrong_code(secret)))
    assert counters(app)
    assert_refused(totp_sign_in(browser, wrong_code(secret)))  # the sixth in a row: counted, and now locked
    next_time_step(app)
    assert totp_sign_in(browser, pyotp.TOTP(secret).now()).status_code == 429


def test_counters_store_no_phone_number(app: Flask, browser: FlaskClient, sandbox: SandboxAgency) -> None:
    secret, _ = signed_up_with_totp(app, browser, sandbox)
    earlier = {key for key, _, _ in counters(app)}
    assert_refused(totp_sign_in(browser, wrong_code(secret), phone=UNKNOWN_PHONE))
    keys = {key for key, _, _ in counters(app)} - earlier
    assert len(keys) == 2  # the number typed and the address
    with database(app) as db:
        assert db.scalar(select(func.count()).select_from(RateLimitCounter)) == len(earlier) + 2
    for key in keys:
        assert re.fullmatch(r"[0-9a-f]{64}", key)
