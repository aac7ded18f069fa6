"""The sandbox agency's /v1 protocol over Flask's test client: every outcome, limit and fault of the contract."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from flask import Flask
from joserfc import jws, jwt
from joserfc.errors import BadSignatureError
from sandbox_support import (
    AUTH,
    CHOI_MVNO_NO_APP,
    ISSUER,
    JUNG_KT_MVNO,
    KIM,
    LEE,
    NGUYEN_FOREIGN,
    OH_CORPORATE,
    SITE_CODE,
    SITE_SECRET,
    AgencyClient,
)
from werkzeug.test import TestResponse

from idp.sandbox import agency as agency_module
from idp.sandbox.faults import SLOW_DELAY, TIMEOUT_DELAY

ERROR_KEYS = {"error", "message", "retryable", "attempts_remaining", "retry_after"}


def error_of(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    """The error body, after checking its status, code and shape."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    assert set(body) == ERROR_KEYS
    assert body["error"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    if body["retry_after"] is not None:
        assert response.headers["Retry-After"] == str(body["retry_after"])
    else:
        assert "Retry-After" not in response.headers
    return body


# -- site authentication -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Site-Code": SITE_CODE},
        {"Authorization": f"Bearer {SITE_SECRET}"},
        {"Authorization": "Bearer wrong-secret", "X-Site-Code": SITE_CODE},
        {"Authorization": f"Bearer {SITE_SECRET}", "X-Site-Code": "OTHER-SITE"},
        {"Authorization": f"Basic {SITE_SECRET}", "X-Site-Code": SITE_CODE},
        {"Authorization": f"Bearer {SITE_SECRET}x", "X-Site-Code": SITE_CODE},
        {"Authorization": "Bearer 비밀", "X-Site-Code": SITE_CODE},
    ],
    ids=["none", "no-secret", "no-site", "wrong-secret", "wrong-site", "basic", "longer-secret", "non-ascii"],
)
def test_requests_without_the_site_credentials_are_refused(agency: AgencyClient, headers: dict[str, str]) -> None:
    response = agency.http.post("/v1/verifications", json={}, headers=headers)
    error_of(response, 401, "invalid_request")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_authentication_comes_before_looking_up_the_transaction(agency: AgencyClient) -> None:
    error_of(agency.http.get("/v1/verifications/unknown"), 401, "invalid_request")
    error_of(agency.http.get("/v1/verifications/unknown", headers=AUTH), 404, "invalid_request")


def test_the_bearer_scheme_is_case_insensitive(agency: AgencyClient) -> None:
    headers = {"Authorization": f"bearer {SITE_SECRET}", "X-Site-Code": SITE_CODE}
    body = {**KIM, "method": "sms", "session_binding": "s", "client_ip": "192.0.2.1", "consent": True}
    assert agency.http.post("/v1/verifications", json=body, headers=headers).status_code == 201


def test_jwks_needs_no_authentication(agency: AgencyClient) -> None:
    response = agency.http.get("/v1/jwks")
    assert response.status_code == 200
    (key,) = response.json["keys"]  # type: ignore[index]
    assert key["kty"] == "EC"
    assert key["crv"] == "P-256"
    assert key["alg"] == "ES256"
    assert key["use"] == "sig"
    assert key["kid"]
    assert "d" not in key
    assert "max-age" in response.headers["Cache-Control"]


# -- malformed requests ------------------------------------------------------------------------------------------

VALID_START = {**KIM, "method": "sms", "session_binding": "s", "client_ip": "192.0.2.1", "consent": True}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("carrier", "LG"),
        ("carrier", None),
        ("carrier", "skt"),
        ("name", ""),
        ("name", "   "),
        ("name", 7),
        ("name", "가" * 65),
        ("name", "김\x00경기"),
        ("birthdate", "19850314"),
        ("birthdate", "1985-02-30"),
        ("birthdate", "1985-3-14"),
        ("birthdate", "2999-01-01"),
        ("birthdate", 19850314),
        ("rrn_digit7", "9"),
        ("rrn_digit7", "0"),
        ("rrn_digit7", "12"),
        ("rrn_digit7", 1),
        ("rrn_digit7", ""),
        ("phone", "010-0000-0001"),
        ("phone", "01000000001"),
        ("phone", "+82 10 0000 0001"),
        ("phone", "+8220000001"),
        ("phone", 821000000001),
        ("method", "push"),
        ("method", None),
        ("session_binding", ""),
        ("session_binding", "x" * 129),
        ("session_binding", ["a"]),
        ("client_ip", "localhost"),
        ("client_ip", "203.0.113.300"),
        ("client_ip", None),
        ("consent", False),
        ("consent", "true"),
        ("consent", 1),
        ("consent", None),
    ],
)
def test_malformed_start_fields_are_invalid_requests(agency: AgencyClient, field: str, value: object) -> None:
    body = {**VALID_START, field: value}
    if value is None:
        del body[field]
    response = agency.http.post("/v1/verifications", json=body, headers=AUTH)
    error_of(response, 400, "invalid_request")
    assert agency.outbox() == []


def test_a_session_binding_of_128_characters_is_accepted(agency: AgencyClient) -> None:
    assert agency.start(session_binding="b" * 128).status_code == 201


def test_an_ipv6_client_address_is_accepted(agency: AgencyClient) -> None:
    assert agency.start(client_ip="2001:db8::7").status_code == 201


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[]", b'"text"', b"null", b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000, b'{"carrier": NaN'],
    ids=["empty", "truncated", "array", "string", "null", "not-utf8", "deeply-nested", "nan"],
)
def test_a_body_that_is_not_a_json_object_is_an_invalid_request(agency: AgencyClient, body: bytes) -> None:
    response = agency.http.post("/v1/verifications", data=body, headers=AUTH, content_type="application/json")
    error_of(response, 400, "invalid_request")


def test_an_oversized_body_is_an_invalid_request(agency: AgencyClient) -> None:
    body = json.dumps({**VALID_START, "padding": "x" * 20_000})
    response = agency.http.post("/v1/verifications", data=body, headers=AUTH, content_type="application/json")
    error_of(response, 400, "invalid_request")


def test_unknown_fields_are_ignored(agency: AgencyClient) -> None:
    assert agency.start(extra="ignored").status_code == 201


def test_unknown_endpoints_and_methods_answer_json(agency: AgencyClient) -> None:
    error_of(agency.http.get("/v1/nothing-here", headers=AUTH), 404, "invalid_request")
    response = agency.http.get("/v1/verifications", headers=AUTH)
    error_of(response, 405, "invalid_request")
    assert "POST" in response.headers["Allow"]


def test_an_unexpected_failure_is_agency_unavailable_json(
    agency: AgencyClient, sandbox_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(sandbox_app.extensions["idp.sandbox"].agency, "start", broken)
    body = error_of(agency.start(), 503, "agency_unavailable")
    assert body["retryable"] is True


# -- start -------------------------------------------------------------------------------------------------------


def test_an_sms_start_sends_a_six_digit_code(agency: AgencyClient) -> None:
    response = agency.start()
    assert response.status_code == 201
    body = response.json
    assert body is not None
    assert set(body) == {"txn_id", "method", "expires_at", "resend_after", "sends_remaining", "attempts_remaining"}
    assert body["method"] == "sms"
    assert body["sends_remaining"] == 4
    assert body["attempts_remaining"] == 5
    assert body["expires_at"].endswith("Z")
    assert body["resend_after"] < body["expires_at"]
    assert len(body["txn_id"]) >= 22
    assert set(body["txn_id"]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    (message,) = agency.outbox()
    assert message["phone"] == KIM["phone"]
    assert message["txn_id"] == body["txn_id"]
    assert message["code"].isdigit()
    assert len(message["code"]) == 6
    # The IdP's own name (its pages' brand, 경기도 통합 로그인), and a sentence that needs no particle after the code
    # (`[066348]를` was wrong: 8 is read 팔, which takes 을).
    assert message["text"] == f"[경기도 통합 로그인] 인증번호는 [{message['code']}]입니다. 타인에게 알려주지 마세요."


def test_an_app_start_gives_a_two_digit_match_number_and_sends_no_sms(agency: AgencyClient) -> None:
    response = agency.start(method="app")
    assert response.status_code == 201
    body = response.json
    assert body is not None
    assert body["method"] == "app"
    assert len(body["match_number"]) == 2
    assert body["match_number"].isdigit()
    assert isinstance(body["sends_remaining"], int)
    assert isinstance(body["attempts_remaining"], int)
    assert body["resend_after"].endswith("Z")
    assert agency.outbox() == []
    assert body["match_number"] in agency.approval_choices(KIM["phone"], body["txn_id"])


def test_an_unknown_number_reads_as_an_identity_mismatch(agency: AgencyClient) -> None:
    error_of(agency.start(phone="+821099999999"), 400, "identity_mismatch")


def test_a_line_on_another_carrier_is_a_carrier_mismatch(agency: AgencyClient) -> None:
    error_of(agency.start(JUNG_KT_MVNO, carrier="KT"), 400, "carrier_mismatch")
    assert agency.start(JUNG_KT_MVNO).status_code == 201


def test_a_corporate_line_is_not_eligible(agency: AgencyClient) -> None:
    error_of(agency.start(OH_CORPORATE), 403, "not_eligible")
    assert agency.outbox() == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("name", "김경구"), ("birthdate", "1985-03-15"), ("rrn_digit7", "2"), ("rrn_digit7", "3")],
)
def test_an_identity_that_does_not_match_the_holder_is_refused(agency: AgencyClient, field: str, value: str) -> None:
    body = error_of(agency.start(**{field: value}), 400, "identity_mismatch")
    assert body["retryable"] is False
    assert agency.outbox() == []


def test_names_compare_after_unicode_normalisation_and_spacing(agency: AgencyClient) -> None:
    import unicodedata

    assert agency.start(name=unicodedata.normalize("NFD", "김경기")).status_code == 201
    assert agency.start(NGUYEN_FOREIGN, name="Nguyen  Van An ").status_code == 201


def test_the_app_method_on_a_line_without_the_carrier_app_suggests_sms(agency: AgencyClient) -> None:
    body = error_of(agency.start(CHOI_MVNO_NO_APP, method="app"), 403, "not_eligible")
    assert "SMS" in body["message"]
    assert agency.start(CHOI_MVNO_NO_APP, method="sms").status_code == 201


def test_identity_is_checked_before_carrier_and_eligibility(agency: AgencyClient) -> None:
    # Whoever does not know the holder learns nothing about the line: not its carrier, not that it is corporate.
    error_of(agency.start(OH_CORPORATE, carrier="SKT", name="someone else"), 400, "identity_mismatch")
    error_of(agency.start(OH_CORPORATE, name="someone else"), 400, "identity_mismatch")
    error_of(agency.start(OH_CORPORATE, carrier="SKT"), 400, "carrier_mismatch")
    error_of(agency.start(OH_CORPORATE), 403, "not_eligible")
    error_of(agency.start(CHOI_MVNO_NO_APP, method="app", name="someone else"), 400, "identity_mismatch")


def test_ten_starts_per_address_per_minute(agency: AgencyClient) -> None:
    for i in range(10):
        # Failed starts count too, or the limit would not slow down guessing who holds a line.
        response = agency.start(name="틀린이름") if i % 2 else agency.start()
        assert response.status_code in (201, 400)
    body = error_of(agency.start(), 429, "rate_limited")
    assert body["retryable"] is True
    assert 1 <= body["retry_after"] <= 60
    assert agency.start(client_ip="198.51.100.1").status_code == 201
    agency.advance_clock(60)
    assert agency.start().status_code == 201


def test_a_refused_start_sends_nothing_and_the_limit_blocks_before_the_line_check(agency: AgencyClient) -> None:
    for _ in range(10):
        agency.start(phone="+821099999999")
    error_of(agency.start(phone="+821099999999"), 429, "rate_limited")


def test_ten_pushes_per_phone_per_day_sms_and_app_approvals_alike(agency: AgencyClient) -> None:
    for i in range(5):
        agency.start_txn(client_ip=f"198.51.100.{i}")
        assert agency.start(method="app", client_ip=f"198.51.100.{i + 10}").status_code == 201
    body = error_of(agency.start(client_ip="198.51.100.99"), 429, "rate_limited")
    assert 86000 < body["retry_after"] <= 86400
    error_of(agency.start(method="app", client_ip="198.51.100.99"), 429, "rate_limited")
    assert agency.start(LEE, client_ip="198.51.100.99").status_code == 201
    agency.advance_clock(86400)
    assert agency.start(client_ip="198.51.100.99").status_code == 201


# -- confirm -----------------------------------------------------------------------------------------------------


def test_the_right_code_gives_a_signed_result_with_every_claim(agency: AgencyClient) -> None:
    txn_id = agency.start_txn(session_binding="sess-42")
    response = agency.confirm(txn_id, agency.code_for(txn_id))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json
    assert body is not None
    assert body["status"] == "verified"
    token = jwt.decode(body["result"], agency.jwks(), algorithms=["ES256"])
    assert token.header["typ"] == "carrier-result+jwt"
    assert token.header["alg"] == "ES256"
    assert token.header["kid"] == agency.http.get("/v1/jwks").json["keys"][0]["kid"]  # type: ignore[index]
    claims = token.claims
    assert claims["iss"] == ISSUER
    assert claims["aud"] == SITE_CODE
    assert claims["exp"] - claims["iat"] == 600
    assert claims["verified_at"] == claims["iat"]
    assert claims["txn"] == txn_id
    assert claims["session_binding"] == "sess-42"
    assert len(claims["jti"]) >= 16
    assert len(claims["ci"]) == 88
    assert len(base64.b64decode(claims["ci"], validate=True)) == 64
    assert len(base64.b64decode(claims["di"], validate=True)) == 64
    assert claims["di"] != claims["ci"]
    assert "ci_previous" not in claims
    assert (claims["name"], claims["birthdate"], claims["sex"], claims["nationality"]) == (
        "김경기",
        "1985-03-14",
        "M",
        "KR",
    )
    assert (claims["phone"], claims["carrier"], claims["method"], claims["agency"]) == (
        "+821000000001",
        "SKT",
        "sms",
        "sandbox",
    )


def test_each_result_has_its_own_jti(agency: AgencyClient) -> None:
    assert agency.verify_by_sms()["jti"] != agency.verify_by_sms()["jti"]


def test_result_times_follow_the_sandbox_clock(agency: AgencyClient) -> None:
    before = agency.verify_by_sms()["iat"]
    agency.advance_clock(3600)
    assert agency.verify_by_sms()["iat"] - before >= 3600


def test_sex_and_nationality_come_from_the_registration_digit(agency: AgencyClient) -> None:
    lee = agency.verify_by_sms(LEE)
    assert (lee["sex"], lee["nationality"]) == ("F", "KR")
    foreign = agency.verify_by_sms(NGUYEN_FOREIGN)
    assert (foreign["sex"], foreign["nationality"], foreign["name"]) == ("M", "foreign", "NGUYEN VAN AN")


def test_a_wrong_code_says_how_many_attempts_remain(agency: AgencyClient) -> None:
    txn_id = agency.start_txn()
    wrong = "000000" if agency.code_for(txn_id) != "000000" else "111111"
    body = error_of(agency.confirm(txn_id, wrong), 400, "wrong_code")
    assert body["retryable"] is True
    assert body["attempts_remaining"] == 4


def test_the_fifth_wrong_code_locks_the_transaction(agency: AgencyClient) -> None:
    txn_id = agency.start_txn()
    code = agency.code_for(txn_id)
    wrong = "000000" if code != "000000" else "111111"
    for remaining in (4, 3, 2, 1):
        assert error_of(agency.confirm(txn_id, wrong), 400, "wrong_code")["attempts_remaining"] == remaining
    body = error_of(agency.confirm(txn_id, wrong), 429, "too_many_attempts")
    assert body["retryable"] is False
    error_of(agency.confirm(txn_id, code), 429, "too_many_attempts")
    agency.advance_clock(30)
    error_of(agency.resend(txn_id), 429, "too_many_attempts")


@pytest.mark.parametrize("code", ["12345", "1234567", "abcdef", 123456, None, "١٢٣٤٥٦"])
def test_a_malformed_code_is_an_invalid_request_and_costs_no_attempt(agency: AgencyClient, code: object) -> None:
    txn_id = agency.start_txn()
    error_of(agency.confirm(txn_id, code), 400, "invalid_request")
    wrong = "000000" if agency.code_for(txn_id) != "000000" else "111111"
    assert error_of(agency.confirm(txn_id, wrong), 400, "wrong_code")["attempts_remaining"] == 4


def test_a_code_expires_after_180_seconds(agency: AgencyClient) -> None:
    txn_id = agency.start_txn()
    agency.advance_clock(179)
    assert agency.confirm(txn_id, agency.code_for(txn_id)).status_code == 200
    txn_id = agency.start_txn()
    agency.advance_clock(180)
    body = error_of(agency.confirm(txn_id, agency.code_for(txn_id)), 410, "expired")
    assert body["retryable"] is True  # a resend gives a new code


def test_an_expired_code_can_be_replaced_by_a_resend(agency: AgencyClient) -> None:
    txn_id = agency.start_txn()
    agency.advance_clock(200)
    assert agency.resend(txn_id).status_code == 200
    assert agency.confirm(txn_id, agency.code_for(txn_id)).status_code == 200


def test_confirming_an_app_transaction_is_an_invalid_request(agency: AgencyClient) -> None:
    txn_id = agency.start_txn(method="app")
    error_of(agency.confirm(txn_id, "123456"), 400, "invalid_request")


def test_confirming_an_unknown_transaction_is_not_found(agency: AgencyClient) -> None:
    error_of(agency.confirm("no-such-txn", "123456"), 404, "invalid_request")


def test_a_verified_transaction_cannot_be_confirmed_again(agency: AgencyClient) -> None:
    txn_id = agency.start_txn()
    code = agency.code_for(txn_id)
    assert agency.confirm(txn_id, code).status_code == 200
    error_of(agency.confirm(txn_id, code), 400, "invalid_request")
    error_of(agency.resend(txn_id), 400, "invalid_request")


# -- poll (app approval) -----------------------------------------------------------------------------------------


def test_polling_is_pending_until_the_resident_picks_the_number(agency: AgencyClient) -> None:
    started = agency.start(method="app").json
    assert started is not None
    txn_id = started["txn_id"]
    response = agency.poll(txn_id)
    assert response.status_code == 200
    assert response.json == {"status": "pending", "expires_at": started["expires_at"]}
    assert agency.answer(KIM["phone"], txn_id, number=started["match_number"]).status_code == 303
    response = agency.poll(txn_id)
    assert response.status_code == 200
    assert response.json["status"] == "verified"  # type: ignore[index]
    claims = agency.claims(response.json["result"])  # type: ignore[index]
    assert claims["method"] == "app"
    assert claims["txn"] == txn_id
    assert claims["session_binding"] == "login-session-1"
    # Polling again gives the same result: the IdP's single-use check is what stops a replay.
    assert agency.poll(txn_id).json["result"] == response.json["result"]  # type: ignore[index]


def test_polling_faster_than_once_a_second_is_slow_down(agency: AgencyClient) -> None:
    txn_id = agency.start_txn(method="app")
    assert agency.http.get(f"/v1/verifications/{txn_id}", headers=AUTH).status_code == 200
    agency.monotonic.advance(0.5)
    body = error_of(agency.http.get(f"/v1/verifications/{txn_id}", headers=AUTH), 429, "slow_down")
    assert body["retry_after"] == 1
    assert body["retryable"] is True
    # The refused poll does not restart the interval.
    agency.monotonic.advance(0.5)
    assert agency.http.get(f"/v1/verifications/{txn_id}", headers=AUTH).status_code == 200


def test_advancing_the_sandbox_clock_passes_the_poll_interval(agency: AgencyClient) -> None:
    # So that a test of the IdP against the sandbox advances its clock instead of sleeping a second.
    txn_id = agency.start_txn(method="app")
    assert agency.http.get(f"/v1/verifications/{txn_id}", headers=AUTH).status_code == 200
    agency.advance_clock(1)
    assert agency.http.get(f"/v1/verifications/{txn_id}", headers=AUTH).status_code == 200
    # Putting the clock back does not hold the transaction back by the minute it lost.
    agency.advance_clock(60)
    assert agency.http.get(f"/v1/verifications/{txn_id}", headers=AUTH).status_code == 200
    assert agency.http.post("/sandbox/clock", json={"reset": True}).status_code == 200
    assert agency.http.get(f"/v1/verifications/{txn_id}", headers=AUTH).status_code == 200


def test_the_poll_interval_is_per_transaction(agency: AgencyClient) -> None:
    first = agency.start_txn(method="app")
    second = agency.start_txn(LEE, method="app")
    assert agency.http.get(f"/v1/verifications/{first}", headers=AUTH).status_code == 200
    assert agency.http.get(f"/v1/verifications/{second}", headers=AUTH).status_code == 200


def test_denying_on_the_phone_is_user_denied(agency: AgencyClient) -> None:
    txn_id = agency.start_txn(method="app")
    agency.answer(KIM["phone"], txn_id, deny="1")
    body = error_of(agency.poll(txn_id), 403, "user_denied")
    assert body["retryable"] is False


def test_picking_a_wrong_number_is_number_mismatch_and_ends_the_transaction(agency: AgencyClient) -> None:
    # Not user_denied: the resident did not decline, they picked another number than the sign-in page showed.
    started = agency.start(method="app").json
    assert started is not None
    txn_id = started["txn_id"]
    decoy = next(n for n in agency.approval_choices(KIM["phone"], txn_id) if n != started["match_number"])
    agency.answer(KIM["phone"], txn_id, number=decoy)
    body = error_of(agency.poll(txn_id), 403, "number_mismatch")
    assert body["retryable"] is False
    response = agency.answer(KIM["phone"], txn_id, number=started["match_number"])
    assert "notice=closed" in response.headers["Location"]
    error_of(agency.poll(txn_id), 403, "number_mismatch")


def test_an_unanswered_approval_expires(agency: AgencyClient) -> None:
    txn_id = agency.start_txn(method="app")
    agency.advance_clock(180)
    body = error_of(agency.poll(txn_id), 410, "expired")
    assert body["retryable"] is False
    assert agency.approval_choices(KIM["phone"], txn_id) == []


def test_polling_an_sms_transaction_is_an_invalid_request(agency: AgencyClient) -> None:
    error_of(agency.poll(agency.start_txn()), 400, "invalid_request")


def test_polling_an_unknown_transaction_is_not_found(agency: AgencyClient) -> None:
    error_of(agency.poll("nope"), 404, "invalid_request")


def test_resending_an_app_transaction_is_an_invalid_request(agency: AgencyClient) -> None:
    error_of(agency.resend(agency.start_txn(method="app")), 400, "invalid_request")


# -- resend ------------------------------------------------------------------------------------------------------


def test_a_resend_within_30_seconds_is_rate_limited(agency: AgencyClient) -> None:
    txn_id = agency.start_txn()
    agency.advance_clock(10)
    body = error_of(agency.resend(txn_id), 429, "rate_limited")
    assert body["retryable"] is True
    assert body["retry_after"] == 20
    agency.advance_clock(20)
    response = agency.resend(txn_id)
    assert response.status_code == 200
    body = response.json
    assert body is not None
    assert set(body) == {"expires_at", "resend_after", "sends_remaining", "attempts_remaining"}
    assert body["sends_remaining"] == 3
    messages = [m for m in agency.outbox() if m["txn_id"] == txn_id]
    assert len(messages) == 2
    assert agency.confirm(txn_id, messages[-1]["code"]).status_code == 200


def test_a_resend_replaces_the_code_and_renews_the_expiry(agency: AgencyClient) -> None:
    txn_id = agency.start_txn()
    first = agency.code_for(txn_id)
    agency.advance_clock(170)
    assert agency.resend(txn_id).status_code == 200
    second = agency.code_for(txn_id)
    agency.advance_clock(170)  # 340 s after the start, 170 s after the resend
    if first != second:
        wrong = error_of(agency.confirm(txn_id, first), 400, "wrong_code")
        assert wrong["attempts_remaining"] == 4
    assert agency.confirm(txn_id, second).status_code == 200


def test_a_resend_does_not_restore_attempts(agency: AgencyClient) -> None:
    txn_id = agency.start_txn()
    wrong = "000000" if agency.code_for(txn_id) != "000000" else "111111"
    agency.confirm(txn_id, wrong)
    agency.confirm(txn_id, wrong)
    agency.advance_clock(30)
    response = agency.resend(txn_id)
    assert response.json["attempts_remaining"] == 3  # type: ignore[index]


def test_five_sends_per_transaction(agency: AgencyClient) -> None:
    txn_id = agency.start_txn()
    for remaining in (3, 2, 1, 0):
        agency.advance_clock(30)
        assert agency.resend(txn_id).json["sends_remaining"] == remaining  # type: ignore[index]
    agency.advance_clock(30)
    body = error_of(agency.resend(txn_id), 429, "rate_limited")
    assert body["retryable"] is False
    assert body["retry_after"] is None
    assert agency.confirm(txn_id, agency.code_for(txn_id)).status_code == 200


def test_resends_count_toward_the_phones_daily_sms(agency: AgencyClient) -> None:
    for _ in range(2):
        txn_id = agency.start_txn()
        for _ in range(4):
            agency.advance_clock(30)
            assert agency.resend(txn_id).status_code == 200
    error_of(agency.start(), 429, "rate_limited")
    other = agency.start_txn(LEE)
    agency.advance_clock(30)
    assert agency.resend(other).status_code == 200


def test_a_resend_beyond_the_phones_daily_sms_is_rate_limited(agency: AgencyClient) -> None:
    first = agency.start_txn()
    for _ in range(4):
        agency.advance_clock(30)
        agency.resend(first)
    second = agency.start_txn()
    for _ in range(3):
        agency.advance_clock(30)
        agency.resend(second)
    third = agency.start_txn()  # the 10th SMS
    agency.advance_clock(30)
    body = error_of(agency.resend(third), 429, "rate_limited")
    assert body["retry_after"] > 80000


def test_resending_an_unknown_transaction_is_not_found(agency: AgencyClient) -> None:
    error_of(agency.resend("nope"), 404, "invalid_request")


# -- cancel ------------------------------------------------------------------------------------------------------


def test_a_cancelled_transaction_accepts_nothing_more(agency: AgencyClient) -> None:
    txn_id = agency.start_txn()
    response = agency.cancel(txn_id)
    assert response.status_code == 200
    assert response.json == {"status": "cancelled"}
    assert agency.cancel(txn_id).status_code == 200  # idempotent
    error_of(agency.confirm(txn_id, agency.code_for(txn_id)), 400, "invalid_request")
    agency.advance_clock(30)
    error_of(agency.resend(txn_id), 400, "invalid_request")


def test_a_cancelled_approval_leaves_the_phone(agency: AgencyClient) -> None:
    txn_id = agency.start_txn(method="app")
    agency.cancel(txn_id)
    assert agency.approval_choices(KIM["phone"], txn_id) == []
    error_of(agency.poll(txn_id), 400, "invalid_request")


def test_a_verified_transaction_cannot_be_cancelled(agency: AgencyClient) -> None:
    txn_id = agency.start_txn()
    agency.confirm(txn_id, agency.code_for(txn_id))
    error_of(agency.cancel(txn_id), 400, "invalid_request")


def test_cancelling_an_unknown_transaction_is_not_found(agency: AgencyClient) -> None:
    error_of(agency.cancel("nope"), 404, "invalid_request")


def test_transactions_are_forgotten_after_an_hour(agency: AgencyClient) -> None:
    txn_id = agency.start_txn()
    agency.advance_clock(agency_module.TXN_RETENTION + 1)
    agency.start_txn(LEE)  # forgetting happens on the next start
    error_of(agency.confirm(txn_id, agency.code_for(txn_id)), 404, "invalid_request")


# -- faults ------------------------------------------------------------------------------------------------------


def test_down_answers_agency_unavailable_for_count_requests(agency: AgencyClient) -> None:
    assert agency.fault("down", count=2).json == {"mode": "down", "remaining": 2}
    body = error_of(agency.start(), 503, "agency_unavailable")
    assert body["retryable"] is True
    assert agency.http.get("/sandbox/faults").json == {"mode": "down", "remaining": 1}
    # Faults apply before authentication: a down agency answers nobody.
    error_of(agency.http.post("/v1/verifications", json={}), 503, "agency_unavailable")
    assert agency.http.get("/sandbox/faults").json == {"mode": "none", "remaining": None}
    assert agency.start().status_code == 201


def test_down_until_cleared_leaves_the_jwks_alone(agency: AgencyClient) -> None:
    agency.fault("down")
    for _ in range(3):
        error_of(agency.start(), 503, "agency_unavailable")
    assert agency.http.get("/v1/jwks").status_code == 200
    assert agency.http.get("/sandbox/faults").json == {"mode": "down", "remaining": None}
    agency.fault("none")
    assert agency.start().status_code == 201


@pytest.mark.parametrize(("mode", "delay"), [("timeout", TIMEOUT_DELAY), ("slow", SLOW_DELAY)])
def test_timeout_and_slow_sleep_then_answer(agency: AgencyClient, mode: str, delay: float) -> None:
    agency.fault(mode, count=1)
    assert agency.start().status_code == 201
    assert agency.sleeps == [delay]
    assert agency.start().status_code == 201
    assert agency.sleeps == [delay]


def test_the_fault_delays_are_a_timeout_and_a_slow_answer() -> None:
    assert TIMEOUT_DELAY >= 10
    assert 1 <= SLOW_DELAY < TIMEOUT_DELAY


def test_a_corrupt_result_fails_signature_verification(agency: AgencyClient) -> None:
    agency.fault("corrupt", count=1)
    txn_id = agency.start_txn()  # a start carries no result and does not use up the fault
    assert agency.http.get("/sandbox/faults").json == {"mode": "corrupt", "remaining": 1}
    result = agency.confirm(txn_id, agency.code_for(txn_id)).json["result"]  # type: ignore[index]
    with pytest.raises(BadSignatureError):
        jwt.decode(result, agency.jwks(), algorithms=["ES256"])
    # Still a well-formed compact JWS with the same claims: only the signature is wrong.
    assert json.loads(jws.extract_compact(result.encode()).payload)["txn"] == txn_id
    assert agency.verify_by_sms(LEE)["name"] == "이수원"


def test_corrupt_applies_to_polled_results_too(agency: AgencyClient) -> None:
    started = agency.start(method="app").json
    assert started is not None
    agency.answer(KIM["phone"], started["txn_id"], number=started["match_number"])
    agency.fault("corrupt")
    result = agency.poll(started["txn_id"]).json["result"]  # type: ignore[index]
    with pytest.raises(BadSignatureError):
        jwt.decode(result, agency.jwks(), algorithms=["ES256"])


@pytest.mark.parametrize(
    "body",
    [
        {"mode": "broken"},
        {},
        {"mode": "down", "count": 0},
        {"mode": "down", "count": "2"},
        {"mode": "down", "count": True},
    ],
)
def test_a_malformed_fault_is_refused(agency: AgencyClient, body: dict[str, object]) -> None:
    error_of(agency.http.post("/sandbox/faults", json=body), 400, "invalid_request")
