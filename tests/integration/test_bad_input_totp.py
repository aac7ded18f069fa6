"""Malformed, guessed and misplaced input on /login/totp: never a 500, a message the resident can act on, an audit
event, and no change to the authenticator, recovery-code or session rows beyond the attempt counters.

One parametrized table, like test_bad_input.py. The app, its database and four residents are built once per module
and backend: Kim has a confirmed authenticator and recovery codes (one used), Lee a set-up never confirmed, Park no
authenticator, and Choi a confirmed one but an admin lock. Every case comes from an address of its own and starts
with no lockout counters, so no case depends on another.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyotp
import pytest
from flask import Flask, Response, request, request_finished
from flask.testing import FlaskClient
from oidc_flow import csrf_of
from sandbox_agency import SandboxAgency
from sqlalchemy import delete, select, update
from test_login_totp import (
    CODE_REUSED,
    LOCKED_OUT,
    NOT_RIGHT,
    RECOVERY_REUSED,
    WRONG_SECOND_CODE,
    carrier_sign_in,
    enrol,
    next_time_step,
    sign_out,
    start_enrolment,
    wrong_code,
)
from werkzeug.test import TestResponse

from idp.authn.lockout import TOTP_FAILURES_PER_IP, counter_key
from idp.models import AuditEvent, LoginSession, RateLimitCounter, RecoveryCode, Resident, TotpDevice
from idp.runtime import of as runtime_of

ISSUER = "http://localhost:8000"
KIM = {"carrier": "SKT", "name": "김경기", "birthdate": "1985-03-14", "rrn_digit7": "1", "phone": "010-0000-0001"}
LEE = {"carrier": "KT", "name": "이수원", "birthdate": "1992-11-02", "rrn_digit7": "2", "phone": "010-0000-0002"}
PARK = {"carrier": "LGU", "name": "박용인", "birthdate": "2001-07-21", "rrn_digit7": "3", "phone": "010-0000-0003"}
CHOI = {"carrier": "SKT_MVNO", "name": "최성남", "birthdate": "1978-01-30", "rrn_digit7": "2", "phone": "010-0000-0004"}
UNKNOWN = "010-9999-0000"
ENTER_DIGITS = "Enter the 6 digits your authenticator app shows now."
ENTER_RECOVERY = "A recovery code has 10 letters and digits, for example abcde-23456."
ENTER_PHONE = "Enter a Korean mobile number, for example 010-1234-5678."
FORM_EXPIRED = "This form has expired or was sent twice. Please fill it in again."
ACCOUNT_LOCKED = "This account is locked. Contact the help desk to unlock it."
# -- the world the cases run in ----------------------------------------------------------------------------------------


@dataclass
class World:
    app: Flask
    sandbox: SandboxAgency
    kim_secret: str
    lee_secret: str  # from a set-up never confirmed
    choi_secret: str
    kim_recovery: list[str]  # the first one is used
    choi_recovery: list[str]
    seen: list[tuple[str, int]] = field(default_factory=list)
    addresses: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def browser(self) -> FlaskClient:
        """A new browser, asking for English pages, from an address no other case used."""
        n = next(self.addresses)
        browser = self.app.test_client()
        browser.environ_base["REMOTE_ADDR"] = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
        browser.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en"
        return browser

    def db(self) -> Any:
        return runtime_of(self.app).sessions()


def ip_of(browser: FlaskClient) -> str:
    return str(browser.environ_base["REMOTE_ADDR"])


@pytest.fixture(scope="module")
def world(module_app: Flask, sandbox_url: str) -> Iterator[World]:
    app = module_app
    sandbox = SandboxAgency(sandbox_url)
    sandbox.reset()

    kim = app.test_client()
    carrier_sign_in(kim, sandbox, KIM)
    kim_secret, kim_recovery = enrol(app, kim)
    sign_out(kim)
    used = kim.post(
        "/login/totp",
        data={"csrf_token": csrf_of(kim.get("/login/totp").get_data(as_text=True))}
        | {"phone": KIM["phone"], "code": kim_recovery[0], "kind": "recovery"},
    )
    assert used.status_code == 303, used.get_data(as_text=True)[-600:]
    sign_out(kim)

    lee = app.test_client()
    carrier_sign_in(lee, sandbox, LEE)
    lee_secret = start_enrolment(lee)
    sign_out(lee)

    park = app.test_client()
    carrier_sign_in(park, sandbox, PARK)
    sign_out(park)

    choi = app.test_client()
    carrier_sign_in(choi, sandbox, CHOI)
    choi_secret, choi_recovery = enrol(app, choi)
    sign_out(choi)
    with runtime_of(app).sessions() as db:
        db.execute(update(Resident).where(Resident.name == CHOI["name"]).values(locked_at=dt.datetime.now(dt.UTC)))
        db.commit()

    world = World(
        app=app,
        sandbox=sandbox,
        kim_secret=kim_secret,
        lee_secret=lee_secret,
        choi_secret=choi_secret,
        kim_recovery=kim_recovery,
        choi_recovery=choi_recovery,
    )

    def record(sender: Flask, response: Response, **extra: Any) -> None:
        world.seen.append((f"{request.method} {request.path}", response.status_code))

    request_finished.connect(record, app, weak=False)
    yield world
    request_finished.disconnect(record, app)


@pytest.fixture
def seen(world: World) -> list[tuple[str, int]]:
    """Every response the app gives during the test (the case's own requests and those that prepare it)."""
    world.seen.clear()
    return world.seen


# -- what a case may change ------------------------------------------------------------------------------------------


def rows(w: World) -> dict[str, list[tuple[Any, ...]]]:
    """Every authenticator, recovery code and login session, column by column."""
    with w.db() as db:
        return {
            "totp_device": sorted(
                db.execute(
                    select(
                        TotpDevice.id,
                        TotpDevice.resident_id,
                        TotpDevice.secret_encrypted,
                        TotpDevice.confirmed_at,
                        TotpDevice.last_used_step,
                        TotpDevice.last_used_at,
                        TotpDevice.created_at,
                    )
                ).all(),
                key=str,
            ),
            "recovery_code": sorted(
                db.execute(
                    select(RecoveryCode.id, RecoveryCode.resident_id, RecoveryCode.digest, RecoveryCode.used_at)
                ).all(),
                key=str,
            ),
            "login_session": sorted(
                db.execute(
                    select(
                        LoginSession.id,
                        LoginSession.sid,
                        LoginSession.acr,
                        LoginSession.amr,
                        LoginSession.events,
                        LoginSession.auth_time,
                        LoginSession.ended_at,
                    )
                ).all(),
                key=str,
            ),
        }


def counters(w: World) -> dict[str, int]:
    with w.db() as db:
        return {key: count for key, count in db.execute(select(RateLimitCounter.key, RateLimitCounter.count))}


def ip_failures(w: World, ip: str) -> int:
    """The failures counted against the address (the per-IP TOTP lockout)."""
    secret: bytes = runtime_of(w.app).limiter.secret
    return counters(w).get(counter_key(TOTP_FAILURES_PER_IP, ip, secret), 0)


def verify_events(w: World, ip: str) -> list[AuditEvent]:
    with w.db() as db:
        return list(
            db.scalars(
                select(AuditEvent)
                .where(AuditEvent.event == "totp.verify", AuditEvent.client_ip == ip)
                .order_by(AuditEvent.id)
            )
        )


def forget_lockouts(w: World) -> None:
    with w.db() as db:
        db.execute(delete(RateLimitCounter))
        db.commit()


# -- the cases ---------------------------------------------------------------------------------------------------------

Send = Callable[[World, FlaskClient], TestResponse]
Prepare = Callable[[World, FlaskClient], None]


def post(browser: FlaskClient, form: dict[str, str], *, kind: str | None = None, csrf: bool = True) -> TestResponse:
    """/login/totp as the page would send it: the page first (for its CSRF token), then the form."""
    page = browser.get("/login/totp" + ("?kind=recovery" if kind == "recovery" else "")).get_data(as_text=True)
    data = {"kind": kind or "totp", **form}
    if csrf:
        data["csrf_token"] = csrf_of(page)
    return browser.post("/login/totp", data=data)


def code(value: str | Callable[[World], str], phone: str = KIM["phone"], **extra: str) -> Send:
    """Phone and code on /login/totp; `value` may depend on the world (the residents' secrets)."""

    def send(w: World, browser: FlaskClient) -> TestResponse:
        typed = value(w) if callable(value) else value
        return post(browser, {"phone": phone, "code": typed, **extra}, kind=extra.get("kind"))

    return send


def recovery(value: str | Callable[[World], str], phone: str = KIM["phone"]) -> Send:
    def send(w: World, browser: FlaskClient) -> TestResponse:
        typed = value(w) if callable(value) else value
        return post(browser, {"phone": phone, "code": typed}, kind="recovery")

    return send


def second_factor(value: str | Callable[[World], str]) -> Send:
    """Only the code, while Kim's carrier verification waits for it."""

    def send(w: World, browser: FlaskClient) -> TestResponse:
        typed = value(w) if callable(value) else value
        return post(browser, {"code": typed})

    return send


def no_csrf(w: World, browser: FlaskClient) -> TestResponse:
    return post(browser, {"phone": KIM["phone"], "code": pyotp.TOTP(w.kim_secret).now()}, csrf=False)


def forged_csrf(w: World, browser: FlaskClient) -> TestResponse:
    form = {"phone": KIM["phone"], "code": pyotp.TOTP(w.kim_secret).now(), "csrf_token": "forged"}
    return post(browser, form, csrf=False)


def carrier_verified(w: World, browser: FlaskClient) -> None:
    carrier_sign_in(browser, w.sandbox, KIM)


def six_wrong_codes(w: World, browser: FlaskClient) -> None:
    for _ in range(6):
        assert post(browser, {"phone": KIM["phone"], "code": wrong_code(w.kim_secret)}).status_code == 400


def kims_step_used(w: World, browser: FlaskClient) -> None:
    """A code of Kim's app was accepted for the next 30-second step already: the code the app shows now is a
    replay, even when a new step begins before the case sends it."""
    with w.db() as db:
        kim = select(Resident.id).where(Resident.name == KIM["name"]).scalar_subquery()
        db.execute(
            update(TotpDevice).where(TotpDevice.resident_id == kim).values(last_used_step=int(time.time()) // 30 + 1)
        )
        db.commit()


def kims_code(w: World) -> str:
    return pyotp.TOTP(w.kim_secret).now()


def kims_wrong_code(w: World) -> str:
    return wrong_code(w.kim_secret)


def lees_code(w: World) -> str:
    return pyotp.TOTP(w.lee_secret).now()


def kims_used_recovery_code(w: World) -> str:
    return w.kim_recovery[0]


def a_recovery_code_for_kim(w: World) -> str:
    """Right in form, but none of Kim's."""
    return next(c for c in ("abcde-23456", "zyxwv-98765", "hjkmn-pqrst") if c not in w.kim_recovery)


@dataclass(frozen=True)
class Case:
    send: Send
    prepare: Prepare | None = None


@dataclass(frozen=True)
class Refused:
    """A 400 beside the field (`field`) or in an alert box (`field` None), saying `sentence`; audited as
    `reason` (None: not audited, the request never reached the form); `counted` when it counts as a wrong guess."""

    sentence: str
    reason: str | None
    field: str | None = None
    counted: bool = False
    status: int = 400


MALFORMED_CODE = Refused(ENTER_DIGITS, "malformed", field="code")
MALFORMED_RECOVERY = Refused(ENTER_RECOVERY, "malformed", field="code")
MALFORMED_PHONE = Refused(ENTER_PHONE, "malformed", field="phone")
NOT_RIGHT_GUESS = Refused(NOT_RIGHT, "wrong_code", counted=True)

CASES = [
    # Not a code at all: answered beside the field, never checked nor counted.
    pytest.param(Case(code("12a456")), MALFORMED_CODE, id="letters"),
    pytest.param(Case(code("12345")), MALFORMED_CODE, id="five-digits"),
    pytest.param(Case(code("1234567")), MALFORMED_CODE, id="seven-digits"),
    pytest.param(Case(code("")), MALFORMED_CODE, id="empty"),
    pytest.param(Case(code("   ")), MALFORMED_CODE, id="only-spaces"),
    pytest.param(Case(code("1" * 10_240)), MALFORMED_CODE, id="ten-kilobytes"),
    # Six digits padded with 10 kB of spaces are six digits: checked, wrong, counted.
    pytest.param(Case(code("1" * 6 + " " * 10_240)), NOT_RIGHT_GUESS, id="six-digits-and-10-kb-of-spaces"),
    pytest.param(Case(code("١٢٣٤٥٦")), MALFORMED_CODE, id="arabic-indic-digits"),
    pytest.param(Case(code("１２３４５６")), MALFORMED_CODE, id="fullwidth-digits"),
    pytest.param(Case(code("¹²³⁴⁵⁶")), MALFORMED_CODE, id="superscript-digits"),
    pytest.param(Case(code("123\x00456")), MALFORMED_CODE, id="nul-inside"),
    pytest.param(Case(code("123456\x00")), MALFORMED_CODE, id="nul-after"),
    pytest.param(Case(code("12345６")), MALFORMED_CODE, id="one-fullwidth-digit"),
    pytest.param(Case(code("123 45")), MALFORMED_CODE, id="five-digits-grouped"),
    # The phone number.
    pytest.param(Case(code("123456", phone="not a phone")), MALFORMED_PHONE, id="phone-letters"),
    pytest.param(Case(code("123456", phone="010-1234")), MALFORMED_PHONE, id="phone-too-short"),
    pytest.param(Case(code("123456", phone="02-123-4567")), MALFORMED_PHONE, id="phone-landline"),
    pytest.param(Case(code("123456", phone="+1 202 555 0100")), MALFORMED_PHONE, id="phone-foreign"),
    pytest.param(Case(code("123456", phone="")), MALFORMED_PHONE, id="phone-empty"),
    pytest.param(Case(code("123456", phone="010-0000-0001\x00")), MALFORMED_PHONE, id="phone-nul"),
    pytest.param(Case(code("123456", phone="0" * 10_240)), MALFORMED_PHONE, id="phone-ten-kilobytes"),
    # A Korean IME may type full-width digits: the number is Kim's, and the wrong code counts against it.
    pytest.param(
        Case(code(kims_wrong_code, phone="０１０-００００-０００１")), NOT_RIGHT_GUESS, id="phone-fullwidth-is-kims"
    ),
    # kind: only "recovery" asks for a recovery code; anything else is the app's code.
    pytest.param(Case(code("abcde-23456", kind="password")), MALFORMED_CODE, id="kind-other-with-recovery-code"),
    pytest.param(Case(code("abcde-23456", kind="RECOVERY")), MALFORMED_CODE, id="kind-upper-case"),
    pytest.param(Case(code("abcde-23456", kind="recovery\x00")), MALFORMED_CODE, id="kind-nul"),
    pytest.param(Case(code(kims_wrong_code, kind="sms")), NOT_RIGHT_GUESS, id="kind-other-wrong-digits"),
    pytest.param(Case(code(kims_wrong_code, kind="x" * 10_240)), NOT_RIGHT_GUESS, id="kind-ten-kilobytes"),
    # Recovery codes.
    pytest.param(Case(recovery("12345")), MALFORMED_RECOVERY, id="recovery-too-short"),
    pytest.param(Case(recovery("abcde-2345l")), MALFORMED_RECOVERY, id="recovery-letter-l"),
    pytest.param(Case(recovery("abcde-23456-7")), MALFORMED_RECOVERY, id="recovery-too-long"),
    pytest.param(Case(recovery("abcde_23456")), MALFORMED_RECOVERY, id="recovery-underscore"),
    pytest.param(Case(recovery("abcde\x0023456")), MALFORMED_RECOVERY, id="recovery-nul"),
    pytest.param(Case(recovery("ａｂｃｄｅ-23456")), MALFORMED_RECOVERY, id="recovery-fullwidth"),
    pytest.param(Case(recovery("")), MALFORMED_RECOVERY, id="recovery-empty"),
    pytest.param(
        Case(recovery(a_recovery_code_for_kim)),
        Refused(NOT_RIGHT, "wrong_recovery_code", counted=True),
        id="recovery-not-kims",
    ),
    pytest.param(
        Case(recovery(kims_used_recovery_code)),
        Refused(RECOVERY_REUSED, "recovery_code_reused", counted=True),
        id="recovery-used-twice",
    ),
    pytest.param(
        Case(recovery(a_recovery_code_for_kim, phone=PARK["phone"])),
        Refused(NOT_RIGHT, "wrong_recovery_code", counted=True),
        id="recovery-without-totp",
    ),
    # Nobody to check the code against: the same sentence as a wrong code, and it counts.
    pytest.param(Case(code(lees_code, phone=LEE["phone"])), NOT_RIGHT_GUESS, id="code-of-unconfirmed-set-up"),
    pytest.param(Case(code("123456", phone=PARK["phone"])), NOT_RIGHT_GUESS, id="resident-without-totp"),
    pytest.param(Case(code("123456", phone=UNKNOWN)), NOT_RIGHT_GUESS, id="unknown-phone"),
    pytest.param(Case(code(kims_wrong_code)), NOT_RIGHT_GUESS, id="wrong-code"),
    pytest.param(
        Case(code(kims_code), prepare=kims_step_used), Refused(CODE_REUSED, "replayed", counted=True), id="replayed"
    ),
    # Too many wrong codes: even the right one is not looked at.
    pytest.param(
        Case(code(kims_code), prepare=six_wrong_codes), Refused(LOCKED_OUT, "locked", status=429), id="locked-out"
    ),
    # The second factor after a carrier verification.
    pytest.param(Case(second_factor("12ab56"), prepare=carrier_verified), MALFORMED_CODE, id="second-factor-letters"),
    pytest.param(
        Case(second_factor(kims_wrong_code), prepare=carrier_verified),
        Refused(WRONG_SECOND_CODE, "wrong_code", counted=True),
        id="second-factor-wrong",
    ),
    pytest.param(
        Case(second_factor(a_recovery_code_for_kim), prepare=carrier_verified),
        MALFORMED_CODE,
        id="second-factor-recovery-code-as-app-code",
    ),
    # Forged or expired forms: refused before the form is read.
    pytest.param(Case(no_csrf), Refused(FORM_EXPIRED, None), id="csrf-missing"),
    pytest.param(Case(forged_csrf), Refused(FORM_EXPIRED, None), id="csrf-forged"),
]


@pytest.mark.parametrize(("case", "outcome"), CASES)
def test_totp_sign_in_refuses(world: World, seen: list[tuple[str, int]], case: Case, outcome: Refused) -> None:
    forget_lockouts(world)
    browser = world.browser()
    ip = ip_of(browser)
    if case.prepare:
        case.prepare(world, browser)
    before, failures, events = rows(world), ip_failures(world, ip), len(verify_events(world, ip))

    response = case.send(world, browser)

    page = response.get_data(as_text=True)
    assert response.status_code == outcome.status, page[-800:]
    assert response.headers["Cache-Control"] == "no-store"
    assert outcome.sentence in page
    if outcome.field:
        assert f'<p class="field-error" id="{outcome.field}-error">' in page
        assert 'aria-invalid="true"' in page
        assert 'role="alert"' not in page
    else:
        assert 'role="alert"' in page
    if outcome.status == 429:
        assert 0 < int(response.headers["Retry-After"]) <= 30
    assert browser.get_cookie("idp_sid") is None
    assert rows(world) == before
    assert ip_failures(world, ip) == failures + (1 if outcome.counted else 0)
    audited = verify_events(world, ip)[events:]
    if outcome.reason is None:
        assert audited == []
    else:
        [event] = audited
        assert (event.result, event.details["reason"]) == ("failure", outcome.reason)
    assert ("POST /login/totp", outcome.status) in seen
    assert not [f"{what} → {status}" for what, status in seen if status >= 500]


# -- an admin lock ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(code(lambda w: wrong_code(w.choi_secret), phone=CHOI["phone"]), id="wrong-code"),
        pytest.param(recovery("abcde-23456", phone=CHOI["phone"]), id="wrong-recovery-code"),
    ],
)
def test_wrong_code_of_a_locked_resident_reads_like_any_wrong_code(
    world: World, seen: list[tuple[str, int]], send: Send
) -> None:
    forget_lockouts(world)
    browser = world.browser()
    before = rows(world)

    response = send(world, browser)

    assert response.status_code == 400
    assert NOT_RIGHT in response.get_data(as_text=True)
    assert rows(world) == before
    assert not [status for _, status in seen if status >= 500]


@pytest.mark.parametrize(
    ("send", "spent"),
    [
        pytest.param(code(lambda w: pyotp.TOTP(w.choi_secret).now(), phone=CHOI["phone"]), "step", id="app-code"),
        pytest.param(recovery(lambda w: w.choi_recovery[1], phone=CHOI["phone"]), "recovery", id="recovery-code"),
    ],
)
def test_right_code_of_a_locked_resident_is_refused_with_403(
    world: World, seen: list[tuple[str, int]], send: Send, spent: str
) -> None:
    forget_lockouts(world)
    next_time_step(world.app)
    browser = world.browser()
    before = rows(world)

    response = send(world, browser)

    assert response.status_code == 403, response.get_data(as_text=True)[-600:]
    page = response.get_data(as_text=True)
    assert ACCOUNT_LOCKED in page
    assert 'role="alert"' in page
    assert browser.get_cookie("idp_sid") is None
    after = rows(world)
    assert after["login_session"] == before["login_session"]
    if spent == "recovery":
        # Nobody was signed in, so the resident keeps the code for after the lock is lifted.
        used_before = [row for row in before["recovery_code"] if row[3] is not None]
        used_after = [row for row in after["recovery_code"] if row[3] is not None]
        assert len(used_after) == len(used_before), "a locked resident's recovery code was used up by a refused sign-in"
    assert not [status for _, status in seen if status >= 500]


# -- the page itself ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("?kind=<script>", id="kind-markup"),
        pytest.param("?kind=recovery&kind=totp", id="kind-repeated"),
        pytest.param("?phone=" + "%3Cscript%3E" * 10, id="phone-markup"),
        pytest.param("?phone=" + "1" * 10_000, id="phone-long"),
        pytest.param("?phone=%00", id="phone-nul"),
    ],
)
def test_odd_queries_on_the_sign_in_page_are_harmless(world: World, seen: list[tuple[str, int]], query: str) -> None:
    page = world.browser().get("/login/totp" + query)

    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "<script>" not in html
    assert 'maxlength="20"' in html
    assert not [status for _, status in seen if status >= 500]
