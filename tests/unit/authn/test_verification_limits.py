"""The IdP's own limits on carrier verification: every start and resend counts against the phone, SMS and app
approval alike, and every code against its transaction, before the agency is asked; what the agency never answered
is given back."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy.orm import Session

from idp.authn.carrier import (
    CarrierErrorCode,
    CarrierVerificationError,
    Pending,
    Transaction,
    VerificationMethod,
    VerificationRequest,
    VerifiedIdentity,
)
from idp.authn.lockout import (
    CARRIER_CODES_PER_TXN,
    CARRIER_SENDS_PER_PHONE,
    CARRIER_STARTS_PER_IP,
    DatabaseRateLimiter,
)
from idp.authn.verification import CarrierSignIn, confirm_code, resend_code, start_verification
from idp.models import Carrier

NOW = dt.datetime(2026, 11, 26, 6, 0, 30, tzinfo=dt.UTC)


class ScriptedAgency:
    """A CarrierGateway that answers each call with the next error of `errors` (none left: success), and keeps
    count of the calls it was asked."""

    def __init__(self) -> None:
        self.errors: list[CarrierErrorCode] = []
        self.calls: list[str] = []

    def _answer(self, call: str) -> None:
        self.calls.append(call)
        if self.errors:
            raise CarrierVerificationError(self.errors.pop(0))

    def _transaction(self, method: VerificationMethod) -> Transaction:
        return Transaction(uuid.uuid4().hex, method, NOW + dt.timedelta(minutes=3), None, None, None)

    def start(self, request: VerificationRequest) -> Transaction:
        self._answer("start")
        return self._transaction(request.method)

    def confirm_code(self, txn_id: str, code: str) -> VerifiedIdentity:
        self._answer("confirm")
        raise CarrierVerificationError(CarrierErrorCode.WRONG_CODE)

    def poll(self, txn_id: str) -> VerifiedIdentity | Pending:
        raise NotImplementedError

    def resend(self, txn_id: str) -> Transaction:
        self._answer("resend")
        return self._transaction(VerificationMethod.SMS)

    def cancel(self, txn_id: str) -> None:
        raise NotImplementedError


@pytest.fixture
def agency() -> ScriptedAgency:
    return ScriptedAgency()


@pytest.fixture
def service(agency: ScriptedAgency, limiter: DatabaseRateLimiter) -> CarrierSignIn:
    return CarrierSignIn(gateway=agency, limiter=limiter, issuer="http://localhost:8000", ci_pepper="pepper")


@pytest.fixture
def phone() -> str:
    return f"+8210{uuid.uuid4().int % 10**8:08d}"


def request_for(phone: str, method: VerificationMethod = VerificationMethod.SMS) -> VerificationRequest:
    # Each start from an address of its own: the per-address limit is not what these tests are about. The tests share
    # a database and a clock, and 16 random bits collided (a start counted twice against one address in a full run).
    own = uuid.uuid4().hex
    return VerificationRequest(
        carrier=Carrier.SKT,
        name="김경기",
        birthdate=dt.date(1985, 3, 14),
        rrn_digit7="1",
        phone=phone,
        method=method,
        session_binding="binding",
        client_ip=f"2001:db8::{own[:4]}:{own[4:8]}:{own[8:12]}",
    )


def refused(error: pytest.ExceptionInfo[CarrierVerificationError]) -> tuple[CarrierErrorCode, bool]:
    return error.value.code, bool(error.value.retry_after)


@pytest.mark.parametrize("method", [VerificationMethod.SMS, VerificationMethod.APP])
def test_the_eleventh_start_for_a_phone_in_a_day_is_refused_before_the_agency_is_asked(
    db: Session, service: CarrierSignIn, agency: ScriptedAgency, phone: str, method: VerificationMethod
) -> None:
    for _ in range(CARRIER_SENDS_PER_PHONE.count):
        start_verification(db, service, request_for(phone, method), now=NOW)
    with pytest.raises(CarrierVerificationError) as error:
        start_verification(db, service, request_for(phone, method), now=NOW)
    assert refused(error) == (CarrierErrorCode.RATE_LIMITED, True)
    assert agency.calls == ["start"] * CARRIER_SENDS_PER_PHONE.count


def test_sms_and_app_approval_starts_share_the_phones_daily_limit(
    db: Session, service: CarrierSignIn, agency: ScriptedAgency, phone: str
) -> None:
    for index in range(CARRIER_SENDS_PER_PHONE.count):
        method = VerificationMethod.APP if index % 2 else VerificationMethod.SMS
        start_verification(db, service, request_for(phone, method), now=NOW)
    for method in VerificationMethod:
        with pytest.raises(CarrierVerificationError) as error:
            start_verification(db, service, request_for(phone, method), now=NOW)
        assert refused(error) == (CarrierErrorCode.RATE_LIMITED, True)
    assert len(agency.calls) == CARRIER_SENDS_PER_PHONE.count


@pytest.mark.parametrize(
    "answer", [CarrierErrorCode.IDENTITY_MISMATCH, CarrierErrorCode.NOT_ELIGIBLE, CarrierErrorCode.CARRIER_MISMATCH]
)
def test_a_start_the_agency_refused_counts_against_the_phone(
    db: Session,
    service: CarrierSignIn,
    agency: ScriptedAgency,
    limiter: DatabaseRateLimiter,
    phone: str,
    answer: CarrierErrorCode,
) -> None:
    # Someone trying names and birth dates against one number is held to the same ten a day.
    agency.errors = [answer]
    with pytest.raises(CarrierVerificationError):
        start_verification(db, service, request_for(phone), now=NOW)
    assert limiter.peek(CARRIER_SENDS_PER_PHONE, phone, now=NOW) == 1


@pytest.mark.parametrize("answer", [CarrierErrorCode.AGENCY_UNAVAILABLE, CarrierErrorCode.AGENCY_TIMEOUT])
def test_a_start_the_agency_never_answered_is_given_back_to_the_phone_but_not_the_address(
    db: Session,
    service: CarrierSignIn,
    agency: ScriptedAgency,
    limiter: DatabaseRateLimiter,
    phone: str,
    answer: CarrierErrorCode,
) -> None:
    agency.errors = [answer]
    request = request_for(phone, VerificationMethod.APP)
    with pytest.raises(CarrierVerificationError) as error:
        start_verification(db, service, request, now=NOW)
    assert error.value.code is answer
    assert limiter.peek(CARRIER_SENDS_PER_PHONE, phone, now=NOW) == 0
    assert limiter.peek(CARRIER_STARTS_PER_IP, request.client_ip, now=NOW) == 1


def test_a_start_refused_for_the_address_does_not_count_against_the_phone(
    db: Session, service: CarrierSignIn, agency: ScriptedAgency, limiter: DatabaseRateLimiter, phone: str
) -> None:
    request = request_for(phone)
    for _ in range(CARRIER_STARTS_PER_IP.count):
        limiter.hit(CARRIER_STARTS_PER_IP, request.client_ip, now=NOW)
    with pytest.raises(CarrierVerificationError) as error:
        start_verification(db, service, request, now=NOW)
    assert refused(error) == (CarrierErrorCode.RATE_LIMITED, True)
    assert limiter.peek(CARRIER_SENDS_PER_PHONE, phone, now=NOW) == 0
    assert agency.calls == []


def test_resends_count_against_the_phone_and_the_eleventh_send_is_refused_before_the_agency_is_asked(
    db: Session, service: CarrierSignIn, agency: ScriptedAgency, limiter: DatabaseRateLimiter, phone: str
) -> None:
    transaction = start_verification(db, service, request_for(phone), now=NOW)
    for _ in range(CARRIER_SENDS_PER_PHONE.count - 1):
        resend_code(db, service, transaction.txn_id, phone=phone, client_ip="2001:db8::1", now=NOW)
    with pytest.raises(CarrierVerificationError) as error:
        resend_code(db, service, transaction.txn_id, phone=phone, client_ip="2001:db8::1", now=NOW)
    assert refused(error) == (CarrierErrorCode.RATE_LIMITED, True)
    assert agency.calls == ["start"] + ["resend"] * (CARRIER_SENDS_PER_PHONE.count - 1)


def test_a_resend_the_agency_never_answered_is_given_back(
    db: Session, service: CarrierSignIn, agency: ScriptedAgency, limiter: DatabaseRateLimiter, phone: str
) -> None:
    transaction = start_verification(db, service, request_for(phone), now=NOW)
    agency.errors = [CarrierErrorCode.AGENCY_TIMEOUT]
    with pytest.raises(CarrierVerificationError):
        resend_code(db, service, transaction.txn_id, phone=phone, client_ip="2001:db8::1", now=NOW)
    assert limiter.peek(CARRIER_SENDS_PER_PHONE, phone, now=NOW) == 1


@pytest.mark.parametrize(
    "answer", [CarrierErrorCode.RATE_LIMITED, CarrierErrorCode.TOO_MANY_ATTEMPTS, CarrierErrorCode.EXPIRED]
)
def test_a_resend_the_agency_refused_sent_nothing_and_is_given_back(
    db: Session,
    service: CarrierSignIn,
    agency: ScriptedAgency,
    limiter: DatabaseRateLimiter,
    phone: str,
    answer: CarrierErrorCode,
) -> None:
    # A resident pressing "send a new code" too soon must not use up their own day.
    transaction = start_verification(db, service, request_for(phone), now=NOW)
    agency.errors = [answer]
    with pytest.raises(CarrierVerificationError) as error:
        resend_code(db, service, transaction.txn_id, phone=phone, client_ip="2001:db8::1", now=NOW)
    assert error.value.code is answer
    assert limiter.peek(CARRIER_SENDS_PER_PHONE, phone, now=NOW) == 1


def test_the_sixth_code_for_a_transaction_is_refused_before_the_agency_is_asked(
    db: Session, service: CarrierSignIn, agency: ScriptedAgency
) -> None:
    txn_id = uuid.uuid4().hex
    for _ in range(CARRIER_CODES_PER_TXN.count):
        with pytest.raises(CarrierVerificationError) as wrong:
            confirm_code(db, service, txn_id, "000000", binding_secret="b", client_ip="2001:db8::1", now=NOW)
        assert wrong.value.code is CarrierErrorCode.WRONG_CODE
    with pytest.raises(CarrierVerificationError) as error:
        confirm_code(db, service, txn_id, "000000", binding_secret="b", client_ip="2001:db8::1", now=NOW)
    assert error.value.code is CarrierErrorCode.TOO_MANY_ATTEMPTS
    assert agency.calls == ["confirm"] * CARRIER_CODES_PER_TXN.count


@pytest.mark.parametrize("answer", [CarrierErrorCode.AGENCY_UNAVAILABLE, CarrierErrorCode.AGENCY_TIMEOUT])
def test_a_code_the_agency_never_answered_is_given_back(
    db: Session, service: CarrierSignIn, agency: ScriptedAgency, limiter: DatabaseRateLimiter, answer: CarrierErrorCode
) -> None:
    txn_id = uuid.uuid4().hex
    agency.errors = [answer]
    with pytest.raises(CarrierVerificationError) as error:
        confirm_code(db, service, txn_id, "000000", binding_secret="b", client_ip="2001:db8::1", now=NOW)
    assert error.value.code is answer
    assert limiter.peek(CARRIER_CODES_PER_TXN, txn_id, now=NOW) == 0


def test_a_code_the_agency_judged_counts_whatever_it_said(
    db: Session, service: CarrierSignIn, agency: ScriptedAgency, limiter: DatabaseRateLimiter
) -> None:
    txn_id = uuid.uuid4().hex
    agency.errors = [CarrierErrorCode.EXPIRED]
    with pytest.raises(CarrierVerificationError):
        confirm_code(db, service, txn_id, "000000", binding_secret="b", client_ip="2001:db8::1", now=NOW)
    with pytest.raises(CarrierVerificationError):
        confirm_code(db, service, txn_id, "000000", binding_secret="b", client_ip="2001:db8::1", now=NOW)
    assert limiter.peek(CARRIER_CODES_PER_TXN, txn_id, now=NOW) == 2
