"""The HTTP CarrierGateway against a running sandbox agency: every error code of the seam, and what succeeds."""

from __future__ import annotations

import datetime as dt
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from sandbox_agency import SandboxAgency
from sqlalchemy.orm import Session

from idp.authn.carrier import (
    CarrierErrorCode,
    CarrierVerificationError,
    CircuitBreaker,
    HttpCarrierGateway,
    Pending,
    Transaction,
    VerificationMethod,
    VerificationRequest,
    VerifiedIdentity,
    redeem_identity,
    session_binding_for,
)
from idp.authn.residents import AccountOutcome, resident_for_identity
from idp.models import Carrier

SITE = {"site_code": "GG-IDP-SANDBOX", "site_secret": "sandbox-site-secret"}
NOW = dt.datetime.now(dt.UTC)

KIM = {
    "carrier": Carrier.SKT,
    "name": "김경기",
    "birthdate": dt.date(1985, 3, 14),
    "rrn_digit7": "1",
    "phone": "+821000000001",
}
KT_MVNO = {
    "carrier": Carrier.KT_MVNO,
    "name": "정안양",
    "birthdate": dt.date(1966, 5, 5),
    "rrn_digit7": "1",
    "phone": "+821000000005",
}
NO_APP = {
    "carrier": Carrier.SKT_MVNO,
    "name": "최성남",
    "birthdate": dt.date(1978, 1, 30),
    "rrn_digit7": "2",
    "phone": "+821000000004",
}
FOREIGN = {
    "carrier": Carrier.SKT,
    "name": "NGUYEN VAN AN",
    "birthdate": dt.date(1990, 8, 17),
    "rrn_digit7": "5",
    "phone": "+821000000007",
}
CORPORATE = {
    "carrier": Carrier.KT,
    "name": "오법인",
    "birthdate": dt.date(1988, 2, 29),
    "rrn_digit7": "1",
    "phone": "+821000000008",
}
YOON_SKT = {
    "carrier": Carrier.SKT,
    "name": "윤부천",
    "birthdate": dt.date(1995, 6, 9),
    "rrn_digit7": "2",
    "phone": "+821000000009",
}
YOON_MVNO = {**YOON_SKT, "carrier": Carrier.LGU_MVNO, "phone": "+821000000010"}
KANG = {
    "carrier": Carrier.LGU,
    "name": "강화성",
    "birthdate": dt.date(1983, 10, 10),
    "rrn_digit7": "1",
    "phone": "+821000000011",
}


@pytest.fixture
def gateway(sandbox: SandboxAgency) -> Iterator[HttpCarrierGateway]:
    gateway = HttpCarrierGateway(
        sandbox.url, production=False, timeout=1.0, breaker=CircuitBreaker(threshold=3), **SITE
    )
    yield gateway
    gateway.close()


def request_for(
    person: dict[str, object], *, method: str = "sms", binding: str = "b", ip: str | None = None
) -> VerificationRequest:
    return VerificationRequest(
        method=VerificationMethod(method),
        session_binding=session_binding_for(binding),
        client_ip=ip or f"198.51.100.{secrets.randbelow(250)}",
        **person,  # type: ignore[arg-type]
    )


def verify_by_sms(gateway: HttpCarrierGateway, sandbox: SandboxAgency, person: dict[str, object]) -> VerifiedIdentity:
    transaction = gateway.start(request_for(person))
    return gateway.confirm_code(transaction.txn_id, sandbox.last_code(str(person["phone"])))


def expect_error(code: CarrierErrorCode, call: object, *args: object) -> CarrierVerificationError:
    with pytest.raises(CarrierVerificationError) as error:
        call(*args)  # type: ignore[operator]
    assert error.value.code is code, error.value
    return error.value


def wrong_code(sandbox: SandboxAgency, phone: str) -> str:
    right = sandbox.last_code(phone)
    return "000000" if right != "000000" else "111111"


def test_wrong_code_then_right_code_verifies(gateway: HttpCarrierGateway, sandbox: SandboxAgency) -> None:
    transaction = gateway.start(request_for(KIM))
    assert transaction.method is VerificationMethod.SMS
    assert transaction.attempts_remaining == 5
    error = expect_error(
        CarrierErrorCode.WRONG_CODE, gateway.confirm_code, transaction.txn_id, wrong_code(sandbox, KIM["phone"])
    )
    assert error.retryable
    assert error.attempts_remaining == 4
    identity = gateway.confirm_code(transaction.txn_id, sandbox.last_code(KIM["phone"]))
    assert (identity.name, identity.birthdate, identity.phone, identity.carrier) == (
        "김경기",
        KIM["birthdate"],
        KIM["phone"],
        "SKT",
    )
    assert len(identity.ci) == 88
    assert identity.nationality == "KR"
    assert identity.sex == "M"
    assert identity.method is VerificationMethod.SMS
    assert identity.agency == "sandbox"
    assert identity.session_binding == session_binding_for("b")


def test_five_wrong_codes_lock_the_transaction(gateway: HttpCarrierGateway, sandbox: SandboxAgency) -> None:
    transaction = gateway.start(request_for(KIM))
    bad = wrong_code(sandbox, KIM["phone"])
    for _ in range(4):
        expect_error(CarrierErrorCode.WRONG_CODE, gateway.confirm_code, transaction.txn_id, bad)
    error = expect_error(CarrierErrorCode.TOO_MANY_ATTEMPTS, gateway.confirm_code, transaction.txn_id, bad)
    assert not error.retryable
    expect_error(
        CarrierErrorCode.TOO_MANY_ATTEMPTS, gateway.confirm_code, transaction.txn_id, sandbox.last_code(KIM["phone"])
    )


def test_code_expires_by_the_test_clock(gateway: HttpCarrierGateway, sandbox: SandboxAgency) -> None:
    transaction = gateway.start(request_for(KIM))
    sandbox.advance(181)
    expect_error(CarrierErrorCode.EXPIRED, gateway.confirm_code, transaction.txn_id, sandbox.last_code(KIM["phone"]))


def test_resend_keeps_used_attempts_and_replaces_the_code(gateway: HttpCarrierGateway, sandbox: SandboxAgency) -> None:
    transaction = gateway.start(request_for(KIM))
    first_code = sandbox.last_code(KIM["phone"])
    for _ in range(2):
        expect_error(
            CarrierErrorCode.WRONG_CODE, gateway.confirm_code, transaction.txn_id, wrong_code(sandbox, KIM["phone"])
        )
    sandbox.advance(31)
    resent = gateway.resend(transaction.txn_id)
    assert resent.attempts_remaining == 3
    assert resent.sends_remaining == 3
    new_code = sandbox.last_code(KIM["phone"])
    assert len(sandbox.outbox(KIM["phone"])) == 2
    if new_code != first_code:
        expect_error(CarrierErrorCode.WRONG_CODE, gateway.confirm_code, transaction.txn_id, first_code)
    assert gateway.confirm_code(transaction.txn_id, new_code).phone == KIM["phone"]


def test_resend_within_thirty_seconds_says_when(gateway: HttpCarrierGateway, sandbox: SandboxAgency) -> None:
    transaction = gateway.start(request_for(KIM))
    error = expect_error(CarrierErrorCode.RATE_LIMITED, gateway.resend, transaction.txn_id)
    assert error.retry_after is not None
    assert 1 <= error.retry_after <= 30


@pytest.mark.parametrize(
    ("person", "method", "code"),
    [
        ({**KIM, "birthdate": dt.date(1985, 3, 15)}, "sms", CarrierErrorCode.IDENTITY_MISMATCH),
        ({**KIM, "rrn_digit7": "2"}, "sms", CarrierErrorCode.IDENTITY_MISMATCH),
        ({**KIM, "phone": "+821099999999"}, "sms", CarrierErrorCode.IDENTITY_MISMATCH),
        ({**KT_MVNO, "carrier": Carrier.KT}, "sms", CarrierErrorCode.CARRIER_MISMATCH),
        (CORPORATE, "sms", CarrierErrorCode.NOT_ELIGIBLE),
        (NO_APP, "app", CarrierErrorCode.NOT_ELIGIBLE),
    ],
    ids=["birthdate", "rrn-digit", "unknown-number", "carrier", "corporate-line", "no-carrier-app"],
)
def test_start_is_refused(
    gateway: HttpCarrierGateway, person: dict[str, object], method: str, code: CarrierErrorCode
) -> None:
    error = expect_error(code, gateway.start, request_for(person, method=method))
    assert not error.retryable


def test_too_many_starts_from_one_address_are_rate_limited(gateway: HttpCarrierGateway) -> None:
    for _ in range(10):
        gateway.start(request_for(KIM, ip="203.0.113.77"))
    error = expect_error(CarrierErrorCode.RATE_LIMITED, gateway.start, request_for(KIM, ip="203.0.113.77"))
    assert error.retry_after is not None


def start_app(gateway: HttpCarrierGateway, person: dict[str, object] = KIM) -> Transaction:
    transaction = gateway.start(request_for(person, method="app"))
    assert transaction.match_number is not None
    assert len(transaction.match_number) == 2
    return transaction


def test_app_approval_with_the_right_number_verifies(gateway: HttpCarrierGateway, sandbox: SandboxAgency) -> None:
    transaction = start_app(gateway)
    assert isinstance(gateway.poll(transaction.txn_id), Pending)
    sandbox.answer(KIM["phone"], transaction.txn_id, number=transaction.match_number)
    outcome = gateway.poll(transaction.txn_id)
    # Polled again within a second, the agency asks to slow down: still pending for the resident.
    if isinstance(outcome, Pending):
        assert outcome.retry_after == 1
        sandbox.pass_poll_interval()
        outcome = gateway.poll(transaction.txn_id)
    assert isinstance(outcome, VerifiedIdentity)
    assert outcome.method is VerificationMethod.APP


def test_app_denied_is_user_denied(gateway: HttpCarrierGateway, sandbox: SandboxAgency) -> None:
    transaction = start_app(gateway)
    sandbox.answer(KIM["phone"], transaction.txn_id, deny=True)
    expect_error(CarrierErrorCode.USER_DENIED, gateway.poll, transaction.txn_id)


def test_app_wrong_number_ends_the_transaction(gateway: HttpCarrierGateway, sandbox: SandboxAgency) -> None:
    transaction = start_app(gateway)
    wrong = "10" if transaction.match_number != "10" else "11"
    sandbox.answer(KIM["phone"], transaction.txn_id, number=wrong)
    # Its own code, not user_denied: the resident did not refuse, they picked another number (docs/carrier.md).
    expect_error(CarrierErrorCode.NUMBER_MISMATCH, gateway.poll, transaction.txn_id)


def test_agency_down_opens_the_circuit(gateway: HttpCarrierGateway, sandbox: SandboxAgency) -> None:
    sandbox.fault("down", 3)
    for _ in range(3):
        expect_error(CarrierErrorCode.AGENCY_UNAVAILABLE, gateway.start, request_for(KIM))
    sandbox.fault("none")
    # The agency is back, but the circuit stays open for its cooldown: no call reaches it.
    error = expect_error(CarrierErrorCode.AGENCY_UNAVAILABLE, gateway.start, request_for(KIM))
    assert error.retry_after is not None
    assert sandbox.outbox(KIM["phone"]) == []


def test_agency_timeout(gateway: HttpCarrierGateway, sandbox: SandboxAgency) -> None:
    sandbox.fault("timeout", 1)
    error = expect_error(CarrierErrorCode.AGENCY_TIMEOUT, gateway.start, request_for(KIM))
    assert error.retryable


def test_corrupted_result_fails_integrity(gateway: HttpCarrierGateway, sandbox: SandboxAgency) -> None:
    transaction = gateway.start(request_for(KIM))
    sandbox.fault("corrupt", 1)
    expect_error(
        CarrierErrorCode.INTEGRITY_FAILED, gateway.confirm_code, transaction.txn_id, sandbox.last_code(KIM["phone"])
    )


def test_replayed_result_is_refused(gateway: HttpCarrierGateway, sandbox: SandboxAgency, db: Session) -> None:
    transaction = start_app(gateway)
    sandbox.answer(KIM["phone"], transaction.txn_id, number=transaction.match_number)
    first = gateway.poll(transaction.txn_id)
    assert isinstance(first, VerifiedIdentity)
    redeem_identity(db, first, binding_secret="b")
    sandbox.pass_poll_interval()
    again = gateway.poll(transaction.txn_id)
    assert isinstance(again, VerifiedIdentity)
    assert again.jti == first.jti
    with pytest.raises(CarrierVerificationError) as error:
        redeem_identity(db, again, binding_secret="b")
    assert error.value.code is CarrierErrorCode.REPLAYED


def test_result_from_another_login_session_is_refused(
    gateway: HttpCarrierGateway, sandbox: SandboxAgency, db: Session
) -> None:
    identity = verify_by_sms(gateway, sandbox, KIM)
    with pytest.raises(CarrierVerificationError) as error:
        redeem_identity(db, identity, binding_secret="another browser's secret")
    assert error.value.code is CarrierErrorCode.INTEGRITY_FAILED


def test_production_refuses_sandbox_results(sandbox: SandboxAgency) -> None:
    gateway = HttpCarrierGateway(sandbox.url, production=True, **SITE)
    transaction = gateway.start(request_for(KIM))
    expect_error(
        CarrierErrorCode.INTEGRITY_FAILED, gateway.confirm_code, transaction.txn_id, sandbox.last_code(KIM["phone"])
    )
    gateway.close()


def test_wrong_site_secret_is_refused(sandbox: SandboxAgency) -> None:
    gateway = HttpCarrierGateway(sandbox.url, production=False, site_code="GG-IDP-SANDBOX", site_secret="guess")
    expect_error(CarrierErrorCode.INVALID_REQUEST, gateway.start, request_for(KIM))
    gateway.close()


@pytest.mark.parametrize("txn_id", ["unknown-transaction", "../../sandbox/reset", "a" * 200])
def test_unknown_or_malformed_transaction_is_invalid_request(gateway: HttpCarrierGateway, txn_id: str) -> None:
    expect_error(CarrierErrorCode.INVALID_REQUEST, gateway.confirm_code, txn_id, "123456")


def test_one_person_on_two_lines_has_one_ci(gateway: HttpCarrierGateway, sandbox: SandboxAgency) -> None:
    assert verify_by_sms(gateway, sandbox, YOON_SKT).ci == verify_by_sms(gateway, sandbox, YOON_MVNO).ci


def test_foreign_resident_is_verified_as_foreign(gateway: HttpCarrierGateway, sandbox: SandboxAgency) -> None:
    identity = verify_by_sms(gateway, sandbox, FOREIGN)
    assert identity.nationality == "foreign"
    assert identity.name == "NGUYEN VAN AN"


def test_reissued_ci_rekeys_the_resident(gateway: HttpCarrierGateway, sandbox: SandboxAgency, db: Session) -> None:
    before = verify_by_sms(gateway, sandbox, KANG)
    first = resident_for_identity(db, before, pepper="pepper", now=NOW)
    sandbox.reissue_ci("p-kang-hwaseong")
    after = verify_by_sms(gateway, sandbox, KANG)
    assert after.ci != before.ci
    assert after.ci_previous == before.ci
    again = resident_for_identity(db, after, pepper="pepper", now=NOW)
    assert again.outcome is AccountOutcome.REKEYED
    assert again.resident.id == first.resident.id


def test_result_naming_another_agency_is_refused(sandbox: SandboxAgency) -> None:
    # The same sandbox reached by another name: its results name 127.0.0.1 as `iss`, not localhost.
    gateway = HttpCarrierGateway(sandbox.url.replace("127.0.0.1", "localhost"), production=False, **SITE)
    transaction = gateway.start(request_for(KIM))
    code = sandbox.last_code(KIM["phone"])
    expect_error(CarrierErrorCode.INTEGRITY_FAILED, gateway.confirm_code, transaction.txn_id, code)
    gateway.close()


def test_a_web_page_elsewhere_cannot_drive_the_sandbox(sandbox: SandboxAgency) -> None:
    for path in ("/sandbox/reset", f"/phone/{KIM['phone']}/approvals/x"):
        request = urllib.request.Request(
            sandbox.url + path, data=b"deny=1", method="POST", headers={"Origin": "https://evil.example"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 403
        refused.value.close()
