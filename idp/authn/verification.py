"""Signing in by carrier verification: limits, the agency calls, result checks, the account and the session."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, update
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
from idp.authn.sessions import sign_in_resident
from idp.authn.totp import has_totp
from idp.logs import mask_phone
from idp.models import AuditEvent, LoginSession


@dataclass(frozen=True, slots=True)
class CarrierSignIn:
    """What a carrier sign-in needs from the deployment."""

    gateway: CarrierGateway
    limiter: RateLimiter
    issuer: str
    ci_pepper: str


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A carrier sign-in: the session (None when the resident's TOTP must finish it: a second factor), and the
    new session's cookie value (None when the browser's session of the same resident was raised instead)."""

    session: LoginSession | None
    cookie_value: str | None
    account: AccountResult
    event: AuthEvent


# A verification's events, found by their transaction (an index of carrier events alone: the events of abandoned
# verifications and of unknown numbers, which never get a resident, are never read). By the transaction alone: its
# events are recorded without a resident, and with "resident_id IS NULL" beside it PostgreSQL may take the resident
# index instead whenever few events lack a resident (as in the bench's database).
_EVENTS = cast(Table, AuditEvent.__table__)
LINK_EVENTS = update(_EVENTS).where(_EVENTS.c.txn == bindparam("of_txn")).values(resident_id=bindparam("to_resident"))


def txn_digest(txn_id: str) -> str:
    # The audit log may show which agency transaction it was, never the id itself.
    return hashlib.sha256(txn_id.encode()).hexdigest()[:16]


def _limit_error(limit: Limit, retry: int) -> CarrierVerificationError:
    code = CarrierErrorCode.TOO_MANY_ATTEMPTS if limit is CARRIER_CODES_PER_TXN else CarrierErrorCode.RATE_LIMITED
    return CarrierVerificationError(code, limit.kind, retry_after=retry)


def _limit(service: CarrierSignIn, limit: Limit, subject: str, now: dt.datetime) -> None:
    """Count an attempt first, and refuse it when its own count is over the limit (it stays counted): of attempts
    made at once, only as many as the limit allows go on to the agency."""
    try:
        service.limiter.hit(limit, subject, now=now)
    except RateLimitedError as exc:
        raise _limit_error(limit, exc.retry_after) from None


def _limit_each(service: CarrierSignIn, hits: list[tuple[Limit, str]], now: dt.datetime) -> None:
    """`_limit` for several limits in turn, counted in one step; the first one over refuses the attempt, and those
    after it are not counted."""
    try:
        service.limiter.hit_each(hits, now=now)
    except RateLimitedError as exc:
        raise _limit_error(exc.limit, exc.retry_after) from None


def _give_back_if_unanswered(
    service: CarrierSignIn, error: CarrierVerificationError, limit: Limit, subject: str, now: dt.datetime
) -> None:
    """Uncount an attempt the agency never answered (down, or too slow): an outage costs the resident nothing.
    Whatever the agency did answer stays counted."""
    if error.code in (CarrierErrorCode.AGENCY_UNAVAILABLE, CarrierErrorCode.AGENCY_TIMEOUT):
        service.limiter.take_back(limit, subject, now=now)


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
        # Every start counts against the address, even one the agency never answered (it may be someone trying
        # numbers). Against the phone counts every start the agency answered, a text message or an app approval
        # alike: both reach the resident's phone, and both let someone try names and birth dates against it. A
        # start refused for the address is not counted against the phone. Both in one step.
        _limit_each(
            service, [(CARRIER_STARTS_PER_IP, request.client_ip), (CARRIER_SENDS_PER_PHONE, request.phone)], now
        )
        try:
            transaction = service.gateway.start(request)
        except CarrierVerificationError as error:
            _give_back_if_unanswered(service, error, CARRIER_SENDS_PER_PHONE, request.phone, now)
            raise
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
        try:
            transaction = service.gateway.resend(txn_id)
        except CarrierVerificationError:
            # A resend the agency refused (too soon, too many for the transaction) or never answered sent nothing;
            # the identity was verified at the start, so there is nothing to guess here either.
            service.limiter.take_back(CARRIER_SENDS_PER_PHONE, phone, now=now)
            raise
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
        try:
            identity = service.gateway.confirm_code(txn_id, code)
        except CarrierVerificationError as error:
            _give_back_if_unanswered(service, error, CARRIER_CODES_PER_TXN, txn_id, now)
            raise
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
    current: LoginSession | None,
    client_ip: str | None,
    user_agent: str | None,
    now: dt.datetime,
) -> SignedIn:
    """Find or create the resident the identity names and sign them in: the browser's `current` session rises
    when it is theirs, otherwise a new one opens.

    Raises:
        ResidentLockedError: an admin locked the resident.
    """
    account = resident_for_identity(db, identity, pepper=service.ci_pepper, now=now, client_ip=client_ip)
    # The verification's own events belong to the resident from now on, so erasing them erases those too.
    db.execute(LINK_EVENTS, {"of_txn": txn_digest(identity.agency_txn_id), "to_resident": account.resident.id})
    method = Method.CARRIER_APP if identity.method is VerificationMethod.APP else Method.CARRIER_SMS
    event = AuthEvent.of(method, issuer=service.issuer, at=now)
    if has_totp(db, account.resident.id):
        # A resident who set up TOTP asked for it as a second factor: a swapped SIM alone does not sign them in.
        record_event(
            db,
            "signin.first_factor",
            result=SUCCESS,
            resident_id=account.resident.id,
            client_ip=client_ip,
            method=method.value,
        )
        return SignedIn(session=None, cookie_value=None, account=account, event=event)
    login, cookie_value = sign_in_resident(
        db,
        account.resident,
        [event],
        current=current,
        client_ip=client_ip,
        user_agent=user_agent,
        issuer=service.issuer,
        now=now,
    )
    return SignedIn(session=login, cookie_value=cookie_value, account=account, event=event)
