"""Signing in on /login/carrier through a running sandbox agency: accounts, sessions, audit, bad input."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sandbox_agency import SandboxAgency
from sqlalchemy import select
from sqlalchemy.orm import Session
from transactions import commits
from werkzeug.test import TestResponse

from idp.authn.lockout import CARRIER_CODES_PER_TXN, CARRIER_SENDS_PER_PHONE
from idp.authn.residents import lock_resident
from idp.models import AuditEvent, LoginSession, Resident
from idp.runtime import of as runtime_of
from idp.settings import Settings

KIM = {"carrier": "SKT", "name": "김경기", "birthdate": "1985-03-14", "rrn_digit7": "1", "phone": "010-0000-0001"}
KIM_E164 = "+821000000001"
YOON_SKT = {"carrier": "SKT", "name": "윤부천", "birthdate": "1995-06-09", "rrn_digit7": "2", "phone": "01000000009"}
YOON_MVNO = {**YOON_SKT, "carrier": "LGU_MVNO", "phone": "+82 10 0000 0010"}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
CONSENT_ITEMS = ("consent_terms", "consent_collection", "consent_provision")


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Flask:
    """The app calling the running sandbox, on a database of its own: requests commit for real."""
    app = make_app(replace(settings, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def db_session(app: Flask) -> Iterator[Session]:
    with runtime_of(app).sessions() as session:
        yield session


def csrf(client: FlaskClient, path: str) -> str:
    page = client.get(path)
    match = CSRF.search(page.get_data(as_text=True))
    assert match, page.get_data(as_text=True)[:500]
    return match.group(1)


def start(client: FlaskClient, person: dict[str, str], *, method: str = "sms", **extra: str) -> TestResponse:
    form = {"csrf_token": csrf(client, "/login/carrier"), "method": method, "consent": "y", **person, **extra}
    return client.post("/login/carrier", data=form)


def confirm(client: FlaskClient, code: str) -> TestResponse:
    token = csrf(client, "/login/carrier/verify")
    return client.post("/login/carrier/verify", data={"csrf_token": token, "action": "confirm", "code": code})


def sign_in(client: FlaskClient, sandbox: SandboxAgency, person: dict[str, str], phone: str) -> TestResponse:
    assert start(client, person).status_code == 303
    return confirm(client, sandbox.last_code(phone))


def session_cookie(response: TestResponse) -> str:
    header = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("idp_sid="))
    return header


def text(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def test_first_verification_creates_the_resident_and_signs_in(
    client: FlaskClient, sandbox: SandboxAgency, db_session: Session
) -> None:
    started = start(client, KIM)
    assert started.status_code == 303
    assert started.headers["Location"].endswith("/login/carrier/verify")
    page = client.get("/login/carrier/verify")
    assert "+8210****0001" in text(page)
    done = confirm(client, sandbox.last_code(KIM_E164))
    assert done.status_code == 303
    assert done.headers["Location"].endswith("/login/welcome")
    cookie = session_cookie(done)
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Path=/" in cookie
    resident = db_session.scalar(select(Resident).where(Resident.phone == KIM_E164))
    assert resident is not None
    assert (resident.name, str(resident.birthdate), resident.carrier, resident.verified_by) == (
        "김경기",
        "1985-03-14",
        "SKT",
        "sandbox",
    )
    assert resident.ci_index is not None
    assert len(resident.ci_index) == 32
    assert resident.ci_encrypted is None
    account = client.get("/account")
    assert account.status_code == 200
    assert "김경기" in text(account)
    events = [e.event for e in db_session.scalars(select(AuditEvent).order_by(AuditEvent.id))]
    assert events[-4:] == ["carrier.start", "carrier.verify", "resident.created", "signin"]


def test_a_start_commits_its_counts_before_the_agency_is_asked_and_its_result_after(
    app: Flask, client: FlaskClient
) -> None:
    # The counts (per address and per phone) must be seen by other starts while the agency is asked: one
    # transaction before the call, one after it for the audit event.
    form = {"csrf_token": csrf(client, "/login/carrier"), "method": "sms", "consent": "y", **KIM}

    with commits(runtime_of(app).engine) as committed:
        started = client.post("/login/carrier", data=form)

    assert started.status_code == 303
    assert len(committed) == 2


def test_same_person_on_another_line_signs_in_to_the_same_resident(
    app: Flask, sandbox: SandboxAgency, db_session: Session
) -> None:
    sign_in(app.test_client(), sandbox, YOON_SKT, "+821000000009")
    second = sign_in(app.test_client(), sandbox, YOON_MVNO, "+821000000010")
    assert second.headers["Location"].endswith("/account")
    residents = db_session.scalars(select(Resident).where(Resident.name == "윤부천")).all()
    assert len(residents) == 1
    assert residents[0].phone == "+821000000010"
    assert residents[0].carrier == "LGU_MVNO"
    changed = db_session.scalar(select(AuditEvent).where(AuditEvent.event == "resident.phone_changed"))
    assert changed is not None
    assert changed.details == {"old_phone": "+8210****0009", "new_phone": "+8210****0010"}


def test_every_sign_in_gets_a_new_session_cookie(app: Flask, sandbox: SandboxAgency, db_session: Session) -> None:
    client = app.test_client()
    first = session_cookie(sign_in(client, sandbox, KIM, KIM_E164))
    second = session_cookie(sign_in(client, sandbox, KIM, KIM_E164))
    assert first != second
    # The same resident signing in again in this browser raises the session: its sid (known to services) stays,
    # and it keeps both authentications (docs/integration.md section 6).
    sessions = db_session.scalars(select(LoginSession)).all()
    assert len(sessions) == 1
    assert [event["method"] for event in sessions[0].events] == ["carrier_sms", "carrier_sms"]


def test_another_resident_signing_in_gets_a_session_of_their_own(
    app: Flask, sandbox: SandboxAgency, db_session: Session
) -> None:
    client = app.test_client()
    sign_in(client, sandbox, KIM, KIM_E164)
    sign_in(client, sandbox, YOON_SKT, "+821000000009")
    sessions = db_session.scalars(select(LoginSession)).all()
    assert len({session.sid for session in sessions}) == 2
    assert len({session.resident_id for session in sessions}) == 2


def test_app_approval_signs_in(client: FlaskClient, sandbox: SandboxAgency) -> None:
    assert start(client, KIM, method="app").status_code == 303
    page = text(client.get("/login/carrier/verify"))
    number = re.search(r'class="match-number"[^>]*>(\d\d)<', page)
    assert number
    token = CSRF.search(page).group(1)  # type: ignore[union-attr]
    pending = client.post("/login/carrier/verify", data={"csrf_token": token, "action": "check"})
    assert pending.status_code == 200
    assert sandbox.outbox() == []  # app approvals send no text message
    approvals = sandbox.call("GET", f"/phone/{KIM_E164}")
    txn_id = re.search(r"/approvals/([A-Za-z0-9_\-]+)", approvals).group(1)  # type: ignore[union-attr]
    sandbox.answer(KIM_E164, txn_id, number=number.group(1))
    sandbox.pass_poll_interval()
    done = client.post("/login/carrier/verify", data={"csrf_token": token, "action": "check"})
    assert done.status_code == 303
    assert client.get("/account").status_code == 200


def test_sign_out_and_sign_out_everywhere(app: Flask, sandbox: SandboxAgency) -> None:
    phone_one, phone_two = app.test_client(), app.test_client()
    sign_in(phone_one, sandbox, KIM, KIM_E164)
    sign_in(phone_two, sandbox, KIM, KIM_E164)
    token = csrf(phone_one, "/account")
    out = phone_one.post("/account/sessions/end-all", data={"csrf_token": token, "confirm": "yes"})
    assert out.status_code == 303
    assert phone_one.get("/account").status_code == 303
    assert phone_two.get("/account").status_code == 303


def test_locked_resident_cannot_sign_in(app: Flask, sandbox: SandboxAgency, db_session: Session) -> None:
    sign_in(app.test_client(), sandbox, KIM, KIM_E164)
    resident = db_session.scalar(select(Resident).where(Resident.phone == KIM_E164))
    assert resident is not None

    lock_resident(db_session, resident, now=dt.datetime.now(dt.UTC))
    db_session.commit()
    refused = sign_in(app.test_client(), sandbox, KIM, KIM_E164)
    assert refused.status_code == 403
    assert "잠긴 계정" in text(refused)


def test_next_is_followed_only_within_the_idp(app: Flask, sandbox: SandboxAgency) -> None:
    client = app.test_client()
    sign_in(client, sandbox, KIM, KIM_E164)  # the account exists; the next sign-in goes straight to `next`
    for target, expected in [
        ("/account?tab=1", "/account?tab=1"),
        ("//evil.example/", "/account"),
        ("https://evil.example/", "/account"),
        ("/\\evil.example", "/account"),
        # Browsers drop tabs and newlines inside URLs: these would become //evil.example/phish.
        ("/\t/evil.example/phish", "/account"),
        ("/\n/evil.example/phish", "/account"),
        ("/\r/evil.example/phish", "/account"),
    ]:
        client.get("/login", query_string={"next": target})
        done = sign_in(client, sandbox, KIM, KIM_E164)
        assert done.headers["Location"] == expected, target


def test_welcome_page_continues_only_within_the_idp(app: Flask, sandbox: SandboxAgency) -> None:
    client = app.test_client()
    client.get("/login?next=/%09/evil.example/phish")
    done = sign_in(client, sandbox, KIM, KIM_E164)
    assert done.headers["Location"].endswith("/login/welcome")
    page = text(client.get("/login/welcome"))
    assert "evil.example" not in page
    assert 'href="/account"' in page


def test_pages_speak_korean_by_default_and_english_when_asked(client: FlaskClient) -> None:
    korean = client.get("/login/carrier")
    assert '<html lang="ko">' in text(korean)
    assert "휴대폰 본인확인" in text(korean)
    english = client.get("/login/carrier", headers={"Accept-Language": "en-US,en;q=0.9"})
    assert '<html lang="en">' in text(english)
    assert "Mobile phone verification" in text(english)
    asked = client.get("/login/carrier?ui_locales=en%20ko")
    assert "Mobile phone verification" in text(asked)


def test_pages_carry_a_strict_csp(client: FlaskClient) -> None:
    page = client.get("/login")
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["Cache-Control"] == "no-store"


def test_form_fields_follow_the_design_contract(client: FlaskClient) -> None:
    page = text(client.get("/login/carrier"))
    assert re.search(r'<input id="phone" name="phone" type="tel" autocomplete="tel"', page)
    assert 'name="name" type="text" autocomplete="name"' in page
    assert 'name="birthdate" type="text" inputmode="decimal" autocomplete="bday"' in page
    assert 'name="rrn_digit7" type="text" inputmode="numeric" autocomplete="off"' in page
    assert '<select id="carrier" name="carrier"' in page
    for carrier in ("SKT", "KT", "LGU", "SKT_MVNO", "KT_MVNO", "LGU_MVNO"):
        assert f'value="{carrier}"' in page
    for field in ("carrier", "name", "birthdate", "rrn_digit7", "phone", "consent", *CONSENT_ITEMS):
        assert f'<label for="{field}">' in page


BAD_FORMS: list[tuple[str, dict[str, str], str]] = [
    ("phone-letters", {"phone": "010-abcd-0001"}, "휴대폰 번호를 입력해 주세요"),
    ("phone-too-short", {"phone": "010-0000-001"}, "휴대폰 번호를 입력해 주세요"),
    ("phone-landline", {"phone": "02-123-4567"}, "휴대폰 번호를 입력해 주세요"),
    ("phone-foreign", {"phone": "+1 415 555 0100"}, "휴대폰 번호를 입력해 주세요"),
    ("phone-empty", {"phone": ""}, "휴대폰 번호를 입력해 주세요"),
    ("birthdate-impossible", {"birthdate": "1985-02-30"}, "존재하지 않는 날짜"),
    ("birthdate-format", {"birthdate": "85-03-14"}, "생년월일 8자리"),
    ("birthdate-future", {"birthdate": "2999-01-01"}, "실제 생년월일"),
    ("birthdate-ancient", {"birthdate": "1800-01-01"}, "실제 생년월일"),
    ("digit-zero", {"rrn_digit7": "0"}, "1~8"),
    ("digit-nine", {"rrn_digit7": "9"}, "1~8"),
    ("digit-two-digits", {"rrn_digit7": "12"}, "1~8"),
    ("digit-letter", {"rrn_digit7": "a"}, "1~8"),
    ("name-empty", {"name": ""}, "등록된 이름"),
    ("name-200", {"name": "가" * 200}, "최대 50자"),
    ("name-control", {"name": "김\x00경기"}, "쓸 수 없는 문자"),
    ("name-newline", {"name": "김\n경기"}, "쓸 수 없는 문자"),
    ("carrier-unknown", {"carrier": "VERIZON"}, "올바르지 않은 선택값"),
    ("method-unknown", {"method": "carrier-pigeon"}, "올바르지 않은 선택값"),
    ("no-consent", {"consent": ""}, "이 항목에 동의해 주세요"),
]


@pytest.mark.parametrize(("case", "change", "message"), BAD_FORMS, ids=[case for case, _, _ in BAD_FORMS])
def test_bad_carrier_form_is_answered_beside_the_field(
    client: FlaskClient, sandbox: SandboxAgency, db_session: Session, case: str, change: dict[str, str], message: str
) -> None:
    person = {**KIM, **change}
    form = {"csrf_token": csrf(client, "/login/carrier"), "method": "sms", "consent": "y", **person}
    if change.get("consent") == "":
        del form["consent"]
    response = client.post("/login/carrier", data=form)
    assert response.status_code == 400
    body = text(response)
    assert message in body, body[-2000:]
    assert 'aria-invalid="true"' in body or case == "method-unknown"
    assert 'role="alert"' in body
    assert sandbox.outbox() == []
    assert db_session.scalar(select(Resident).where(Resident.phone == KIM_E164)) is None


def test_missing_csrf_token_is_refused(client: FlaskClient, sandbox: SandboxAgency) -> None:
    response = client.post("/login/carrier", data={"method": "sms", "consent": "y", **KIM})
    assert response.status_code == 400
    assert "유효시간이 지났거나" in text(response)
    assert sandbox.outbox() == []


@pytest.mark.parametrize("code", ["12345", "1234567", "abcdef", "", "12 34 5"])
def test_malformed_code_is_answered_without_asking_the_agency(
    client: FlaskClient, sandbox: SandboxAgency, code: str
) -> None:
    start(client, KIM)
    response = confirm(client, code)
    assert response.status_code == 400
    assert "6자리 인증번호" in text(response)
    # No attempt was spent: the right code still works with all five attempts.
    assert "남은 시도" not in text(response)
    assert confirm(client, sandbox.last_code(KIM_E164)).status_code == 303


def test_code_with_spaces_is_accepted(client: FlaskClient, sandbox: SandboxAgency) -> None:
    start(client, KIM)
    code = sandbox.last_code(KIM_E164)
    assert confirm(client, f"{code[:3]} {code[3:]}").status_code == 303


def test_wrong_code_shows_attempts_left(client: FlaskClient, sandbox: SandboxAgency) -> None:
    start(client, KIM)
    right = sandbox.last_code(KIM_E164)
    response = confirm(client, "000000" if right != "000000" else "111111")
    assert response.status_code == 400
    assert "인증번호가 맞지 않습니다" in text(response)
    assert "남은 시도 횟수: 4회" in text(response)


def test_replayed_verify_form_after_sign_in_is_refused(client: FlaskClient, sandbox: SandboxAgency) -> None:
    start(client, KIM)
    token = csrf(client, "/login/carrier/verify")
    code = sandbox.last_code(KIM_E164)
    form = {"csrf_token": token, "action": "confirm", "code": code}
    assert client.post("/login/carrier/verify", data=form).status_code == 303
    replay = client.post("/login/carrier/verify", data=form)
    assert replay.status_code == 400


def test_expired_transaction_sends_the_resident_back_to_the_form(
    client: FlaskClient, sandbox: SandboxAgency, db_session: Session
) -> None:
    start(client, KIM)
    sandbox.advance(181)
    response = confirm(client, sandbox.last_code(KIM_E164))
    assert response.status_code in (303, 400)
    followed = client.get("/login/carrier") if response.status_code == 303 else response
    assert "유효시간이 지났습니다" in text(followed)
    assert db_session.scalar(select(Resident).where(Resident.phone == KIM_E164)) is None


def test_agency_down_says_so_and_offers_other_ways(client: FlaskClient, sandbox: SandboxAgency) -> None:
    sandbox.fault("down", 1)
    response = start(client, KIM)
    assert response.status_code == 503
    assert "이용할 수 없습니다" in text(response)
    assert 'href="/login"' in text(response)


def test_too_many_starts_say_when_to_try_again(app: Flask, sandbox: SandboxAgency, db_session: Session) -> None:
    client = app.test_client()
    for _ in range(10):
        assert start(client, KIM).status_code == 303
    limited = start(client, KIM)
    assert limited.status_code == 429
    assert "다시 시도할 수 있습니다" in text(limited)
    lockout = db_session.scalars(
        select(AuditEvent).where(AuditEvent.event == "carrier.start", AuditEvent.result == "failure")
    ).all()
    assert lockout[-1].details["error"] == "rate_limited"
    assert lockout[-1].details["lockout"] is True


def test_app_approval_starts_count_against_the_phones_daily_limit(
    app: Flask, sandbox: SandboxAgency, db_session: Session
) -> None:
    client = app.test_client()
    # Each from an address of its own, so that only the phone's limit stands in the way.
    for index in range(CARRIER_SENDS_PER_PHONE.count):
        client.environ_base["REMOTE_ADDR"] = f"203.0.113.{index + 1}"
        assert start(client, KIM, method="app").status_code == 303
    client.environ_base["REMOTE_ADDR"] = "203.0.113.200"
    limited = start(client, KIM, method="app")
    assert limited.status_code == 429
    assert "다시 시도할 수 있습니다" in text(limited)
    refusal = db_session.scalars(
        select(AuditEvent).where(AuditEvent.event == "carrier.start", AuditEvent.result == "failure")
    ).one()
    assert refusal.details["error"] == "rate_limited"
    assert refusal.details["method"] == "app"


def test_mismatch_message_does_not_reveal_whether_an_account_exists(app: Flask, sandbox: SandboxAgency) -> None:
    sign_in(app.test_client(), sandbox, KIM, KIM_E164)
    with_account = start(app.test_client(), {**KIM, "birthdate": "1985-03-15"})
    without_account = start(app.test_client(), {**YOON_SKT, "birthdate": "1995-06-10"})
    strip = lambda body: re.sub(r'value="[^"]*"', "", body)  # noqa: E731
    assert with_account.status_code == without_account.status_code == 400
    assert strip(text(with_account)).count("통신사에서 입력하신 정보를 확인하지 못했습니다") == 1
    assert strip(text(without_account)).count("통신사에서 입력하신 정보를 확인하지 못했습니다") == 1


def audit_rows(db_session: Session) -> list[dict[str, Any]]:
    return [
        {"event": e.event, "details": e.details, "client_ip": e.client_ip}
        for e in db_session.scalars(select(AuditEvent).order_by(AuditEvent.id))
    ]


def test_an_agency_outage_uses_up_neither_the_phone_nor_the_code_attempts(
    app: Flask, sandbox: SandboxAgency, db_session: Session
) -> None:
    client = app.test_client()
    sandbox.fault("down", 3)
    for _ in range(3):
        assert start(client, KIM).status_code == 503
    limiter = runtime_of(app).carrier.limiter
    assert limiter.peek(CARRIER_SENDS_PER_PHONE, KIM_E164, now=dt.datetime.now(dt.UTC)) == 0
    assert start(client, KIM).status_code == 303
    right = sandbox.last_code(KIM_E164)
    # Four, so that the circuit breaker (five failures in a row) stays closed.
    sandbox.fault("down", 4)
    for _ in range(4):
        assert confirm(client, right).status_code == 503
    limiter = runtime_of(app).carrier.limiter
    with client.session_transaction() as flow:
        txn_id = flow["carrier"]["txn"]
    assert limiter.peek(CARRIER_CODES_PER_TXN, txn_id, now=dt.datetime.now(dt.UTC)) == 0
    assert confirm(client, right).status_code == 303
    assert limiter.peek(CARRIER_SENDS_PER_PHONE, KIM_E164, now=dt.datetime.now(dt.UTC)) == 1
