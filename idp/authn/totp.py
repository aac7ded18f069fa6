"""TOTP (RFC 6238) enrolment and replay-proof verification, with lockouts on wrong codes."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import pyotp
from cryptography.fernet import Fernet, InvalidToken
from pyotp.exceptions import OTPVerificationError
from sqlalchemy import Table, bindparam, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from idp.audit import FAILURE, SUCCESS, record_event
from idp.authn.lockout import (
    TOTP_FAILURES_PER_IP,
    TOTP_FAILURES_PER_RESIDENT,
    LockedOutError,
    RateLimiter,
    judge_attempt,
)
from idp.authn.residents import ResidentLockedError
from idp.models import RecoveryCode, Resident, TotpDevice

TOTP_DIGITS = 6  # RFC 6238 §5.3 (the RFC 4226 truncation to 6 digits every authenticator app shows)
TOTP_PERIOD = 30  # RFC 6238 §5.2: the recommended time step
TOTP_WINDOW = 1  # RFC 6238 §5.2 and §6: accept one step either side for clock drift and typing time
SECRET_BYTES = 20  # RFC 4226 §4: 160-bit shared secrets
# A set-up is finished within the recent-sign-in window that let it start (authn/sessions.py RECENT_SIGN_IN): one
# left open longer is void, so a stale session can neither read its secret nor finish it.
ENROLMENT_LIFETIME = dt.timedelta(minutes=15)


class TotpError(Exception):
    """A code from the resident's authenticator (or a recovery code) was refused; `reason` names why for the audit."""

    reason = "refused"


class TotpCodeMalformedError(TotpError):
    """Not a code at all: letters, or the wrong number of digits."""

    reason = "malformed"


class TotpCodeInvalidError(TotpError):
    """Not the code of this authenticator at this time (or no confirmed authenticator to check it against)."""

    reason = "wrong_code"


class TotpCodeReusedError(TotpError):
    """The code, or an earlier one, was already accepted: a replayed code (RFC 6238 §5.2)."""

    reason = "replayed"


class TotpEnrolmentExpiredError(TotpError):
    """The set-up was left unconfirmed for longer than ENROLMENT_LIFETIME: it is started again."""

    reason = "enrolment_expired"


class TotpAlreadyEnrolledError(Exception):
    """The resident already has a confirmed authenticator; it is removed before another is set up."""


@dataclass(frozen=True, slots=True)
class Enrolment:
    """An authenticator being set up: its secret as the resident types it, and the URI the QR code carries."""

    device: TotpDevice
    secret: str
    provisioning_uri: str

    @property
    def grouped_secret(self) -> str:
        """The Base32 secret in groups of four, easier to type into an app by hand."""
        return " ".join(self.secret[i : i + 4] for i in range(0, len(self.secret), 4))


def normalize_code(code: str) -> str:
    """The six digits a resident meant: spaces and hyphens dropped (apps show "123 456").

    Raises:
        TotpCodeMalformedError: letters, or not six digits.
    """
    compact = re.sub(r"[\s\-]", "", code or "")
    if not re.fullmatch(rf"[0-9]{{{TOTP_DIGITS}}}", compact):
        raise TotpCodeMalformedError
    return compact


def _totp(secret: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD)


def _secret(device: TotpDevice, cipher: Fernet) -> str:
    return cipher.decrypt(device.secret_encrypted).decode()


# Statements of every TOTP sign-in (and of every carrier sign-in, which asks whether TOTP must follow), built once.
FIND_DEVICE = select(TotpDevice).where(TotpDevice.resident_id == bindparam("resident_id"))
_DEVICES = cast(Table, TotpDevice.__table__)
HAS_TOTP = select(_DEVICES.c.id).where(
    _DEVICES.c.resident_id == bindparam("resident_id"), _DEVICES.c.confirmed_at.is_not(None)
)
# A compare-and-set: the step is marked only if no step as late was marked before.
MARK_STEP = (
    update(_DEVICES)
    .where(
        _DEVICES.c.id == bindparam("device"),
        or_(_DEVICES.c.last_used_step.is_(None), _DEVICES.c.last_used_step < bindparam("step")),
    )
    .values(last_used_step=bindparam("step"), last_used_at=bindparam("at"))
)


def find_device(db: Session, resident_id: uuid.UUID) -> TotpDevice | None:
    """The resident's authenticator, confirmed or still being set up."""
    found: TotpDevice | None = db.scalar(FIND_DEVICE, {"resident_id": resident_id})
    return found


def has_totp(db: Session, resident_id: uuid.UUID) -> bool:
    """Whether the resident has a confirmed authenticator (only then does TOTP sign them in)."""
    return db.scalar(HAS_TOTP, {"resident_id": resident_id}) is not None


def begin_enrolment(
    db: Session, resident: Resident, *, cipher: Fernet, issuer_name: str, now: dt.datetime
) -> Enrolment:
    """A fresh 160-bit secret for the resident, replacing any set-up that was never confirmed.

    Raises:
        TotpAlreadyEnrolledError: a confirmed authenticator exists.
    """
    device = find_device(db, resident.id)
    if device is not None and device.is_confirmed:
        raise TotpAlreadyEnrolledError
    secret = pyotp.random_base32(length=SECRET_BYTES * 8 // 5)
    if device is None:
        device = TotpDevice(resident_id=resident.id, secret_encrypted=b"", created_at=now)
        db.add(device)
    device.secret_encrypted = cipher.encrypt(secret.encode())
    device.created_at = now
    device.last_used_step = None
    db.flush()
    record_event(db, "totp.enrolment_started", result=SUCCESS, resident_id=resident.id, now=now)
    return pending_enrolment_of(device, resident, cipher=cipher, issuer_name=issuer_name)


def enrolment_expired(device: TotpDevice, *, now: dt.datetime) -> bool:
    """Whether an unconfirmed set-up is too old to be shown or finished (a confirmed device never expires)."""
    return not device.is_confirmed and now - device.created_at > ENROLMENT_LIFETIME


def pending_enrolment_of(device: TotpDevice, resident: Resident, *, cipher: Fernet, issuer_name: str) -> Enrolment:
    """What the set-up page shows for an authenticator not yet confirmed."""
    secret = _secret(device, cipher)
    # The account name is what the app lists; a masked number says whose it is without showing it whole.
    label = _account_label(resident)
    return Enrolment(device, secret, _totp(secret).provisioning_uri(name=label, issuer_name=issuer_name))


def _account_label(resident: Resident) -> str:
    phone = resident.phone or ""
    return f"{phone[:-4]}****" if len(phone) > 8 else (resident.name or "resident")


def match_code(device: TotpDevice, code: str, *, cipher: Fernet, now: dt.datetime) -> int:
    """The time step `code` belongs to at `now` (one step either side), checked without writing anything.

    Raises:
        TotpCodeMalformedError, TotpCodeInvalidError, TotpCodeReusedError (a step not after the last one used).
    """
    digits = normalize_code(code)
    try:
        secret = _secret(device, cipher)
    except InvalidToken:
        # IDP_DATA_KEY changed: the secret cannot be read, so no code can match it.
        raise TotpCodeInvalidError from None
    try:
        step = _totp(secret).verify_and_get_timecode(digits, for_time=now, valid_window=TOTP_WINDOW)
    except OTPVerificationError:
        raise TotpCodeInvalidError from None
    if device.last_used_step is not None and step <= device.last_used_step:
        raise TotpCodeReusedError
    return step


def mark_step_used(db: Session, device: TotpDevice, step: int, *, now: dt.datetime) -> None:
    """Record that a code for `step` was accepted: a compare-and-set, so of two processes given the same code
    only one succeeds, and no code for that step or an earlier one is accepted again.

    Raises:
        TotpCodeReusedError: another request used this step (or a later one) first.
    """
    marked = db.execute(MARK_STEP, {"device": device.id, "step": step, "at": now})
    if marked.rowcount != 1:  # type: ignore[attr-defined]  # CursorResult of an UPDATE
        raise TotpCodeReusedError
    # The object as stored, without reading it back.
    set_committed_value(device, "last_used_step", step)
    set_committed_value(device, "last_used_at", now)


def verify_code(db: Session, device: TotpDevice, code: str, *, cipher: Fernet, now: dt.datetime) -> int:
    """Check `code` and mark its time step used (replay-proof across processes); the step.

    Raises:
        TotpCodeMalformedError, TotpCodeInvalidError, TotpCodeReusedError.
    """
    step = match_code(device, code, cipher=cipher, now=now)
    mark_step_used(db, device, step, now=now)
    return step


def confirm_enrolment(
    db: Session, device: TotpDevice, code: str, *, cipher: Fernet, client_ip: str | None, now: dt.datetime
) -> None:
    """Count the authenticator once a code from it is right; the confirming code cannot sign in afterwards.

    Raises:
        TotpEnrolmentExpiredError: the set-up is older than ENROLMENT_LIFETIME.
        TotpCodeMalformedError, TotpCodeInvalidError, TotpCodeReusedError.
    """
    try:
        if enrolment_expired(device, now=now):
            raise TotpEnrolmentExpiredError
        verify_code(db, device, code, cipher=cipher, now=now)
    except TotpError as error:
        _record_failure(db, "totp.enrolment_confirm", error, device.resident_id, client_ip, now)
        raise
    device.confirmed_at = now
    db.flush()
    record_event(db, "totp.enrolled", result=SUCCESS, resident_id=device.resident_id, client_ip=client_ip, now=now)


def remove_totp(
    db: Session, resident_id: uuid.UUID, *, now: dt.datetime, actor: str = "resident", client_ip: str | None = None
) -> bool:
    """Remove the resident's authenticator and recovery codes; whether there was one.

    `actor` says who did it for the audit log: "resident", or "admin" from the command line."""
    device = find_device(db, resident_id)
    if device is None:
        return False
    db.delete(device)
    for recovery_code in db.scalars(select(RecoveryCode).where(RecoveryCode.resident_id == resident_id)):
        db.delete(recovery_code)
    db.flush()
    record_event(db, "totp.removed", result=SUCCESS, resident_id=resident_id, client_ip=client_ip, now=now, actor=actor)
    return True


Consume = Callable[[], None]
# Judges a code against the confirmed device (None: there is none) without writing; returns what consumes it.
Check = Callable[[TotpDevice | None], Consume]


def authenticate(
    db: Session,
    limiter: RateLimiter,
    resident: Resident | None,
    check: Check,
    *,
    code: str,
    subject: str,
    client_ip: str,
    now: dt.datetime,
) -> TotpDevice:
    """A sign-in step with the resident's authenticator: count → check → settle → consume, audited; the device.

    The attempt is counted as a failure against the resident and the address before `code` is checked, and
    refused unchecked while either is locked (`lockout.judge_attempt`), so parallel guesses get no more checks
    than guesses one after another. `check` judges `code` against the confirmed device without writing (raising
    a TotpError when it is wrong) and returns what consumes it (marks the time step, burns the recovery code).
    The counters are kept in `db`'s transaction (with database storage): the caller commits it on every outcome,
    and the attempt, its judgment and the sign-in are stored together.

    `resident` is None when the phone number typed names nobody: that fails exactly like a wrong code, so the
    answer never says whether a number has an account. `subject` keys the per-resident lockout (the resident's
    id, or the number typed when it names nobody).

    Raises:
        LockedOutError: too many wrong codes for this resident or this IP lately.
        TotpError: the code was refused (malformed, wrong, reused).
        ResidentLockedError: the code was right, but an admin locked the resident (nothing was used up).
    """
    resident_id = resident.id if resident is not None else None

    def attempt() -> tuple[TotpDevice, Consume]:
        device = find_device(db, resident_id) if resident_id is not None else None
        if device is None or not device.is_confirmed:
            # Checked against no authenticator: the same refusal, after the same work, as a wrong code.
            check(None)
            raise TotpCodeInvalidError
        consume = check(device)
        if resident is not None and resident.is_locked:
            # Said only to someone with a right code, and before the code is used up or any count forgotten.
            raise ResidentLockedError
        return device, consume

    subjects = [(TOTP_FAILURES_PER_RESIDENT, subject), (TOTP_FAILURES_PER_IP, client_ip)]
    try:
        device, consume = judge_attempt(limiter, subjects, attempt, failures=(TotpError,), now=now, db=db)
        try:
            consume()
        except TotpError:
            # Another process consumed the same code a moment earlier (with Redis storage: database counters make
            # attempts on one resident wait for each other): a replay after all, and it counts again (the success
            # had already been forgiven or uncounted). The consume wrote nothing.
            for backoff, key in subjects:
                limiter.fail(backoff, key, now=now, db=db)
            raise
    except TotpError as error:
        _record_failure(db, "totp.verify", error, resident_id, client_ip, now)
        raise
    except LockedOutError:
        record_event(
            db, "totp.verify", result=FAILURE, resident_id=resident_id, client_ip=client_ip, now=now, reason="locked"
        )
        raise
    except ResidentLockedError:
        record_event(
            db, "signin.refused", result=FAILURE, resident_id=resident_id, client_ip=client_ip, now=now, reason="locked"
        )
        raise
    record_event(db, "totp.verify", result=SUCCESS, resident_id=resident_id, client_ip=client_ip, now=now)
    return device


def totp_check(db: Session, code: str, *, cipher: Fernet, now: dt.datetime) -> Check:
    """The `check` for `authenticate` with a code from the app."""

    def check(device: TotpDevice | None) -> Consume:
        if device is None:
            # The format first and a verification of the same cost, as with a device: neither the answer nor
            # its time says whether the number has an account.
            _totp(pyotp.random_base32()).verify(normalize_code(code), for_time=now, valid_window=TOTP_WINDOW)
            raise TotpCodeInvalidError
        step = match_code(device, code, cipher=cipher, now=now)
        return lambda: mark_step_used(db, device, step, now=now)

    return check


def _record_failure(
    db: Session,
    event: str,
    error: TotpError,
    resident_id: uuid.UUID | None,
    client_ip: str | None,
    now: dt.datetime,
) -> None:
    record_event(
        db,
        event,
        result=FAILURE,
        resident_id=resident_id,
        client_ip=client_ip,
        now=now,
        reason=error.reason,
    )
