"""The carrier pages as residents meet them: birth dates as typed, nothing typed lost when a verification ends,
a true message for each ending, time made visible on the code page, and itemised consents."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Callable
from dataclasses import replace

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sandbox_agency import SandboxAgency
from werkzeug.test import TestResponse

from idp.runtime import EXTENSION as RUNTIME
from idp.runtime import of as runtime_of
from idp.settings import Settings

KIM = {"carrier": "SKT", "name": "김경기", "birthdate": "1985-03-14", "rrn_digit7": "1", "phone": "010-0000-0001"}
KIM_E164 = "+821000000001"
ALL_CONSENTS = {"consent_terms": "y", "consent_collection": "y", "consent_provision": "y"}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
KST = dt.timezone(dt.timedelta(hours=9))


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Flask:
    app = make_app(replace(settings, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


def text(response: TestResponse) -> str:
    return html.unescape(response.get_data(as_text=True))


def csrf(client: FlaskClient, path: str) -> str:
    match = CSRF.search(client.get(path).get_data(as_text=True))
    assert match
    return match.group(1)


def start(client: FlaskClient, person: dict[str, str] = KIM, *, method: str = "sms", **extra: str) -> TestResponse:
    form = {"csrf_token": csrf(client, "/login/carrier"), "method": method, **ALL_CONSENTS, **person, **extra}
    return client.post("/login/carrier", data=form)


def act(client: FlaskClient, action: str, **extra: str) -> TestResponse:
    token = csrf(client, "/login/carrier/verify")
    return client.post("/login/carrier/verify", data={"csrf_token": token, "action": action, **extra})


def txn_of(sandbox: SandboxAgency) -> str:
    page = sandbox.call("GET", f"/phone/{KIM_E164}")
    match = re.search(r"/approvals/([A-Za-z0-9_\-]+)", page)
    assert match, page
    return match.group(1)


def match_number(client: FlaskClient) -> str:
    found = re.search(r'class="match-number"[^>]*>(\d\d)<', client.get("/login/carrier/verify").get_data(as_text=True))
    assert found
    return found.group(1)


def input_value(page: str, name: str) -> str | None:
    tag = re.search(rf'<input[^>]* name="{name}"[^>]*>', page)
    assert tag, name
    value = re.search(r'value="([^"]*)"', tag.group(0))
    return value.group(1) if value else None


def assert_form_keeps(page: str, typed: dict[str, str]) -> None:
    for field in ("name", "birthdate", "rrn_digit7", "phone"):
        assert input_value(page, field) == typed[field], field
    assert re.search(rf'<option value="{typed["carrier"]}" selected>', page)


# -- 1. birth dates as people type them ----------------------------------------------------------------------------


@pytest.mark.parametrize("typed", ["19850314", "1985-03-14", "1985.03.14", "1985. 3. 14.", "1985/03/14", "850314"])
def test_a_birth_date_is_accepted_as_people_type_it(client: FlaskClient, sandbox: SandboxAgency, typed: str) -> None:
    # The agency matches the holder's birth date exactly, so a 303 to the code page means it got 1985-03-14; the
    # 6-digit form takes its century from the registration digit (1: born in the 1900s).
    response = start(client, {**KIM, "birthdate": typed})
    assert response.status_code == 303, text(response)[-1500:]
    assert response.headers["Location"].endswith("/login/carrier/verify")
    assert len(sandbox.outbox(KIM_E164)) == 1


def test_a_six_digit_birth_date_takes_its_century_from_the_registration_digit(
    client: FlaskClient, sandbox: SandboxAgency
) -> None:
    # 3 is a man born in the 2000s: 850314 is then 2085-03-14, which has not happened yet.
    response = start(client, {**KIM, "birthdate": "850314", "rrn_digit7": "3"})
    assert response.status_code == 400
    assert "실제 생년월일" in text(response)
    assert sandbox.outbox() == []


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("1985-02-30", "존재하지 않는 날짜"),
        ("19850230", "존재하지 않는 날짜"),
        ("1985031", "8자리"),
        ("1985-0314", "8자리"),
        ("85-03-14", "8자리"),
        ("abc", "8자리"),
        ("1985.13.01", "존재하지 않는 날짜"),
    ],
)
def test_a_birth_date_that_cannot_be_read_says_how_to_type_it(
    client: FlaskClient, sandbox: SandboxAgency, typed: str, message: str
) -> None:
    response = start(client, {**KIM, "birthdate": typed})
    assert response.status_code == 400
    assert message in text(response)
    assert sandbox.outbox() == []


def test_the_birth_date_field_shows_the_eight_digit_example_and_a_keypad_that_types_it(client: FlaskClient) -> None:
    page = text(client.get("/login/carrier"))
    assert "예: 19850314 (8자리)" in page
    tag = re.search(r'<input[^>]* name="birthdate"[^>]*>', page)
    assert tag
    # decimal: the iPhone keypad with digits and the decimal point, so 19850314, 850314 and 1985.03.14 can all be
    # typed on it (numeric has no punctuation at all).
    assert 'inputmode="decimal"' in tag.group(0)
    assert 'autocomplete="bday"' in tag.group(0)
    english = text(client.get("/login/carrier?ui_locales=en"))
    assert "For example 19850314 (8 digits)" in english


# -- 2. nothing typed is lost, and each ending has its own true message --------------------------------------------


def test_five_wrong_codes_bring_back_the_filled_form(client: FlaskClient, sandbox: SandboxAgency) -> None:
    typed = {**KIM, "birthdate": "19850314", "phone": "01000000001"}
    start(client, typed)
    right = sandbox.last_code(KIM_E164)
    wrong = "000000" if right != "000000" else "111111"
    for _ in range(4):
        assert act(client, "confirm", code=wrong).status_code == 400
    ended = act(client, "confirm", code=wrong)
    assert ended.status_code == 303
    # Back to the form; nothing the resident typed travels in the address (never the registration digit).
    assert ended.headers["Location"] == "/login/carrier"
    page = text(client.get("/login/carrier"))
    assert_form_keeps(page, typed)
    assert "인증번호를 여러 번 잘못 입력해" in page
    assert "입력하신 내용은 그대로 두었습니다" in page


def test_a_denied_app_approval_says_declined_and_keeps_the_form(client: FlaskClient, sandbox: SandboxAgency) -> None:
    start(client, method="app")
    sandbox.answer(KIM_E164, txn_of(sandbox), deny=True)
    sandbox.pass_poll_interval()
    ended = act(client, "check")
    assert ended.status_code == 303
    page = text(client.get("/login/carrier"))
    assert "통신사 앱에서 요청을 거절하셨습니다" in page
    assert_form_keeps(page, KIM)
    assert 'value="app" checked' in page


def test_a_wrong_number_picked_is_not_called_a_refusal(client: FlaskClient, sandbox: SandboxAgency) -> None:
    start(client, method="app")
    right = match_number(client)
    decoy = str(int(right) % 89 + 10)
    sandbox.answer(KIM_E164, txn_of(sandbox), number=decoy)
    sandbox.pass_poll_interval()
    assert act(client, "check").status_code == 303
    page = text(client.get("/login/carrier"))
    assert "이 화면의 숫자와 다른 숫자를 고르셔서" in page
    assert "거절" not in page
    assert_form_keeps(page, KIM)


@pytest.mark.parametrize(
    ("locale", "expected"), [("ko", "승인 요청의 유효시간이 지났습니다"), ("en", "approval request")]
)
def test_an_expired_app_approval_does_not_talk_about_codes(
    client: FlaskClient, sandbox: SandboxAgency, locale: str, expected: str
) -> None:
    headers = {"Accept-Language": locale}
    form = {"csrf_token": csrf(client, "/login/carrier"), "method": "app", **ALL_CONSENTS, **KIM}
    client.post("/login/carrier", data=form, headers=headers)
    sandbox.advance(181)
    token = csrf(client, "/login/carrier/verify")
    ended = client.post("/login/carrier/verify", data={"csrf_token": token, "action": "check"}, headers=headers)
    assert ended.status_code == 303
    page = text(client.get("/login/carrier", headers=headers))
    assert expected in page
    alert = page.split('role="alert"', 1)[1].split("</div>", 1)[0]
    for word in ("인증번호", "code"):
        assert word not in alert, alert
    assert_form_keeps(page, KIM)


def test_cancel_brings_back_the_filled_form(client: FlaskClient, sandbox: SandboxAgency) -> None:
    typed = {**KIM, "birthdate": "1985.03.14"}
    start(client, typed)
    cancelled = act(client, "cancel")
    assert cancelled.status_code == 303
    assert cancelled.headers["Location"] == "/login/carrier"
    page = text(client.get("/login/carrier"))
    assert "본인확인 요청을 취소했습니다" in page
    assert_form_keeps(page, typed)
    # Shown once: the details are not kept in the browser after the form showed them.
    again = text(client.get("/login/carrier"))
    assert input_value(again, "name") in (None, "")


def test_the_details_are_not_readable_in_the_flow_cookie(client: FlaskClient, sandbox: SandboxAgency) -> None:
    start(client)
    act(client, "cancel")
    with client.session_transaction() as flow:
        dumped = repr(dict(flow))
    for secret in ("김경기", "1985", "0000-0001"):
        assert secret not in dumped


# -- 4. time made visible ------------------------------------------------------------------------------------------


def test_the_code_page_says_how_long_the_code_lives_and_counts_down(
    client: FlaskClient, sandbox: SandboxAgency
) -> None:
    start(client)
    page = text(client.get("/login/carrier/verify"))
    assert "인증번호는 3분 동안 유효합니다" in page
    countdown = re.search(r'<[^>]+id="countdown"[^>]*data-seconds="(\d+)"', page)
    assert countdown, page
    assert 170 <= int(countdown.group(1)) <= 180
    # Screen readers hear the countdown only at 1:00 and 0:00: the ticking clock is not a live region.
    assert 'id="countdown-announce"' in page
    assert re.search(r'<[^>]+id="countdown"[^>]*aria-live', page) is None
    assert "countdown.js" in page


def test_resend_is_disabled_with_a_label_until_it_is_allowed(client: FlaskClient, sandbox: SandboxAgency) -> None:
    start(client)
    page = text(client.get("/login/carrier/verify"))
    button = re.search(r'<button[^>]*name="action" value="resend"[^>]*>', page) or re.search(
        r'<button[^>]*id="resend"[^>]*>', page
    )
    assert button, page
    assert "disabled" in button.group(0)
    assert re.search(r"새 인증번호는 (2\d|30)초 후에 받을 수 있습니다", page)
    sandbox.advance(31)
    assert act(client, "resend").status_code == 303
    assert len(sandbox.outbox(KIM_E164)) == 2


def test_a_resend_asked_too_early_says_when_instead_of_too_many_requests(
    client: FlaskClient, sandbox: SandboxAgency
) -> None:
    start(client)
    refused = act(client, "resend")
    assert refused.status_code == 429
    page = text(refused)
    assert "너무 많" not in page
    assert re.search(r"새 인증번호는 \d+초 후에 받을 수 있습니다", page)


class NoonInKorea:
    """The IdP's clock at 12:00 in Korea (03:00 UTC): the per-phone day ends at 09:00 the next morning, Korea time.
    On the real clock the wait is under an hour between 08:00 and 09:00 in Korea, and is then counted in minutes."""

    def now(self) -> dt.datetime:
        return dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.UTC)


def test_a_long_wait_is_a_korea_time_clock_time(app: Flask, sandbox: SandboxAgency) -> None:
    app.extensions[RUNTIME] = replace(runtime_of(app), clock=NoonInKorea())
    client = app.test_client()
    for index in range(10):
        client.environ_base["REMOTE_ADDR"] = f"203.0.113.{index + 1}"
        assert start(client).status_code == 303
    client.environ_base["REMOTE_ADDR"] = "203.0.113.200"
    limited = start(client)
    assert limited.status_code == 429
    page = text(limited)
    assert "내일 오전 9시부터 다시 시도할 수 있습니다" in page


# -- 5. itemised consents ------------------------------------------------------------------------------------------


def test_the_form_itemises_each_consent_with_a_disclosure(client: FlaskClient) -> None:
    page = text(client.get("/login/carrier"))
    for name in ("consent_terms", "consent_collection", "consent_provision"):
        assert re.search(rf'<input type="checkbox" id="{name}" name="{name}" value="y"', page), name
    assert page.count("<details") >= 3
    assert page.count(">보기<") >= 3
    for heading in ("목적", "항목", "보유", "거부"):
        assert heading in page, heading
    assert "본인확인기관" in page
    assert "이용약관" in page
    assert "개인정보 수집·이용" in page
    assert "제3자 제공" in page


@pytest.mark.parametrize("missing", ["consent_terms", "consent_collection", "consent_provision"])
def test_each_consent_is_needed(client: FlaskClient, sandbox: SandboxAgency, missing: str) -> None:
    form = {"csrf_token": csrf(client, "/login/carrier"), "method": "sms", **ALL_CONSENTS, **KIM}
    del form[missing]
    response = client.post("/login/carrier", data=form)
    assert response.status_code == 400
    assert "동의" in text(response)
    assert sandbox.outbox() == []


def test_agree_to_all_counts_for_every_item(client: FlaskClient, sandbox: SandboxAgency) -> None:
    form = {"csrf_token": csrf(client, "/login/carrier"), "method": "sms", "consent": "y", **KIM}
    assert client.post("/login/carrier", data=form).status_code == 303
