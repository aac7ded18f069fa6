"""Signing in by carrier verification: limits, the agency calls, result checks, the account and the session."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from idp.audit import FAILURE, SUCCESS, record_event
from idp.authn.assurance import AuthEvent, Method
from idp.authn.carrier import (
    CarrierErrorCode,
    CarrierGateway,
    CarrierVerificationError,
    Pending,
    Transaction,
    VerificationMethod,
    VerificationRequest,
    VerifiedIdentity,
    redeem_identity,
)
from idp.authn.lockout import (
    CARRIER_CODES_PER_TXN,
    CARRIER_SENDS_PER_PHONE,
    CARRIER_STARTS_PER_IP,
    Limit,
    RateLimitedError,
    RateLimiter,
)
from idp.authn.residents import AccountResult, resident_for_identity
from idp.authn.sessions import StartedSession, start_session
from idp.logs import mask_phone


@dataclass(frozen=True, slots=True)
class CarrierSignIn:
    """What a carrier sign-in needs from the deployment."""

    gateway: CarrierGateway
    limiter: RateLimiter
    issuer: str
    ci_pepper: str


@dataclass(frozen=True, slots=True)
class SignedIn:
    session: StartedSession
    account: AccountResult


def txn_digest(txn_id: str) -> str:
    # The audit log may show which agency transaction it was, never the id itself.
    return hashlib.sha256(txn_id.encode()).hexdigest()[:16]


def _limit(service: CarrierSignIn, limit: Limit, subject: str, now: dt.datetime) -> None:
    try:
        service.limiter.hit(limit, subject, now=now)
    except RateLimitedError as exc:
        code = CarrierErrorCode.TOO_MANY_ATTEMPTS if limit is CARRIER_CODES_PER_TXN else CarrierErrorCode.RATE_LIMITED
        raise CarrierVerificationError(code, exc.limit.kind, retry_after=exc.retry_after) from None


def _failed(db: Session, event: str, error: CarrierVerificationError, client_ip: str | None, **details: Any) -> None:
    record_event(
        db,
        event,
        result=FAILURE,
        client_ip=client_ip,
        error=error.code.value,
        lockout=error.code in (CarrierErrorCode.TOO_MANY_ATTEMPTS, CarrierErrorCode.RATE_LIMITED),
        **details,
    )


def start_verification(
    db: Session, service: CarrierSignIn, request: VerificationRequest, *, now: dt.datetime
) -> Transaction:
    """Ask the agency to send a code (or an app approval) after the IdP's own limits.

    Raises:
        CarrierVerificationError: a limit was hit (`rate_limited`) or the agency refused.
    """
    details: dict[str, Any] = {
        "phone": mask_phone(request.phone),
        "carrier": request.carrier.value,
        "method": request.method.value,
    }
    try:
        _limit(service, CARRIER_STARTS_PER_IP, request.client_ip, now)
        _limit(service, CARRIER_SENDS_PER_PHONE, request.phone, now)
        transaction = service.gateway.start(request)
    except CarrierVerificationError as error:
        _failed(db, "carrier.start", error, request.client_ip, **details)
        raise
    record_event(
        db, "carrier.start", result=SUCCESS, client_ip=request.client_ip, txn=txn_digest(transaction.txn_id), **details
    )
    return transaction


def resend_code(
    db: Session, service: CarrierSignIn, txn_id: str, *, phone: str, client_ip: str, now: dt.datetime
) -> Transaction:
    """Send a new code for the same transaction; attempts already used stay used."""
    try:
        _limit(service, CARRIER_SENDS_PER_PHONE, phone, now)
        transaction = service.gateway.resend(txn_id)
    except CarrierVerificationError as error:
        _failed(db, "carrier.resend", error, client_ip, txn=txn_digest(txn_id))
        raise
    record_event(db, "carrier.resend", result=SUCCESS, client_ip=client_ip, txn=txn_digest(txn_id))
    return transaction


def confirm_code(
    db: Session,
    service: CarrierSignIn,
    txn_id: str,
    code: str,
    *,
    binding_secret: str,
    client_ip: str,
    now: dt.datetime,
) -> VerifiedIdentity:
    """Check the SMS code with the agency and accept the identity it vouches for, once."""
    try:
        _limit(service, CARRIER_CODES_PER_TXN, txn_id, now)
        identity = service.gateway.confirm_code(txn_id, code)
        redeem_identity(db, identity, binding_secret=binding_secret)
    except CarrierVerificationError as error:
        _failed(db, "carrier.verify", error, client_ip, txn=txn_digest(txn_id), attempts=error.attempts_remaining)
        raise
    record_event(db, "carrier.verify", result=SUCCESS, client_ip=client_ip, txn=txn_digest(txn_id), method="sms")
    return identity


def check_approval(
    db: Session, service: CarrierSignIn, txn_id: str, *, binding_secret: str, client_ip: str
) -> VerifiedIdentity | Pending:
    """Ask the agency whether the resident approved in the carrier's app."""
    try:
        outcome = service.gateway.poll(txn_id)
        if isinstance(outcome, Pending):
            return outcome
        redeem_identity(db, outcome, binding_secret=binding_secret)
    except CarrierVerificationError as error:
        _failed(db, "carrier.verify", error, client_ip, txn=txn_digest(txn_id))
        raise
    record_event(db, "carrier.verify", result=SUCCESS, client_ip=client_ip, txn=txn_digest(txn_id), method="app")
    return outcome


def cancel_verification(service: CarrierSignIn, txn_id: str) -> None:
    """Tell the agency the resident gave up; an agency that cannot be reached lets the transaction expire."""
    with contextlib.suppress(CarrierVerificationError):
        service.gateway.cancel(txn_id)


def sign_in(
    db: Session,
    service: CarrierSignIn,
    identity: VerifiedIdentity,
    *,
    client_ip: str | None,
    user_agent: str | None,
    now: dt.datetime,
) -> SignedIn:
    """Find or create the resident the identity names and open a new login session for them.

    Raises:
        ResidentLockedError: an admin locked the resident.
    """
    account = resident_for_identity(db, identity, pepper=service.ci_pepper, now=now, client_ip=client_ip)
    method = Method.CARRIER_APP if identity.method is VerificationMethod.APP else Method.CARRIER_SMS
    event = AuthEvent.of(method, issuer=service.issuer, at=now)
    started = start_session(db, account.resident, event, client_ip=client_ip, user_agent=user_agent, now=now)
    record_event(
        db,
        "signin",
        result=SUCCESS,
        resident_id=account.resident.id,
        client_ip=client_ip,
        method=method.value,
        acr=event.acr,
        amr=list(event.amr),
        account=account.outcome.value,
    )
    return SignedIn(session=started, account=account)
