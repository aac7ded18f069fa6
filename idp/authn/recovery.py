"""Recovery codes: single-use stand-ins for a lost TOTP app, stored as keyed digests and burned when used."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import uuid

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from idp.audit import SUCCESS, record_event
from idp.authn.totp import Check, Consume, TotpError
from idp.models import RecoveryCode, TotpDevice

RECOVERY_CODE_COUNT = 10  # issue #6: ten codes, shown once
# No 0/o, 1/l/i: the codes are copied by hand from paper. 31 symbols × 10 ≈ 49.5 bits per code.
ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"
CODE_LENGTH = 10
RECOVERY_CODE_PATTERN = re.compile(rf"[{ALPHABET}]{{{CODE_LENGTH}}}")


class RecoveryCodeInvalidError(TotpError):
    """Not one of the resident's recovery codes."""

    reason = "wrong_recovery_code"


class RecoveryCodeUsedError(TotpError):
    """One of the resident's recovery codes, already used once."""

    reason = "recovery_code_reused"


def normalize_recovery_code(code: str) -> str | None:
    """The code as stored (lower case, no spaces or hyphens), or None when it cannot be a recovery code."""
    compact = re.sub(r"[\s\-]", "", code or "").lower()
    return compact if RECOVERY_CODE_PATTERN.fullmatch(compact) else None


def _digest(code: str, key: bytes) -> bytes:
    # Keyed: ~50 random bits would fall to an offline search of a stolen table with a plain hash.
    return hmac.new(key, code.encode(), hashlib.sha256).digest()


def generate_recovery_codes(
    db: Session, resident_id: uuid.UUID, *, key: bytes, client_ip: str | None = None, now: dt.datetime
) -> list[str]:
    """Ten new codes for the resident, replacing every earlier one; the plain codes exist only in the answer."""
    db.execute(delete(RecoveryCode).where(RecoveryCode.resident_id == resident_id))
    codes = ["".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH)) for _ in range(RECOVERY_CODE_COUNT)]
    db.add_all(RecoveryCode(resident_id=resident_id, digest=_digest(code, key), created_at=now) for code in codes)
    db.flush()
    record_event(db, "recovery_codes.generated", result=SUCCESS, resident_id=resident_id, client_ip=client_ip, now=now)
    return [format_recovery_code(code) for code in codes]


def format_recovery_code(code: str) -> str:
    return f"{code[:5]}-{code[5:]}"


def find_recovery_code(db: Session, resident_id: uuid.UUID, code: str, *, key: bytes) -> int:
    """The id of the resident's unused recovery code `code`, found without writing anything.

    Raises:
        RecoveryCodeInvalidError: not one of the resident's codes.
        RecoveryCodeUsedError: used before.
    """
    compact = normalize_recovery_code(code)
    if compact is None:
        raise RecoveryCodeInvalidError
    row = db.execute(
        select(RecoveryCode.id, RecoveryCode.used_at).where(
            RecoveryCode.resident_id == resident_id, RecoveryCode.digest == _digest(compact, key)
        )
    ).first()
    if row is None:
        raise RecoveryCodeInvalidError
    if row.used_at is not None:
        raise RecoveryCodeUsedError
    return int(row.id)


def burn_recovery_code(db: Session, code_id: int, *, now: dt.datetime) -> None:
    """Mark the code used: a compare-and-set, so a code signs in once, even when two requests race.

    Raises:
        RecoveryCodeUsedError: another request used it first.
    """
    burned = db.execute(
        update(RecoveryCode)
        .where(RecoveryCode.id == code_id, RecoveryCode.used_at.is_(None))
        .values(used_at=now)
        .returning(RecoveryCode.resident_id)
    ).first()
    if burned is None:
        raise RecoveryCodeUsedError
    record_event(db, "recovery_code.used", result=SUCCESS, resident_id=burned.resident_id, now=now)


def recovery_check(db: Session, code: str, *, key: bytes, now: dt.datetime) -> Check:
    """The `check` for `totp.authenticate` with a recovery code instead of a code from the app."""

    def check(device: TotpDevice | None) -> Consume:
        if device is None:
            # A digest of the same cost as a real look-up, then the refusal a wrong code gets.
            _digest(normalize_recovery_code(code) or "", key)
            raise RecoveryCodeInvalidError
        code_id = find_recovery_code(db, device.resident_id, code, key=key)
        return lambda: burn_recovery_code(db, code_id, now=now)

    return check


def remaining_recovery_codes(db: Session, resident_id: uuid.UUID) -> int:
    """How many of the resident's recovery codes are still unused."""
    unused = select(func.count()).where(RecoveryCode.resident_id == resident_id, RecoveryCode.used_at.is_(None))
    return int(db.scalar(unused) or 0)
