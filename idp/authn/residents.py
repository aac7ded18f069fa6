"""Resident accounts keyed by CI: create on first verification, sign in, re-key, update, lock and erase."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import uuid
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from idp.audit import FAILURE, SUCCESS, record_event
from idp.authn.carrier import VerifiedIdentity
from idp.authn.sessions import end_all_sessions
from idp.logs import mask_phone
from idp.models import AuditEvent, Resident

CI_PEPPER_VERSION = 1


class ResidentLockedError(Exception):
    """An admin locked this resident; no sign-in succeeds until unlocked."""


class AccountOutcome(enum.StrEnum):
    CREATED = "created"
    SIGNED_IN = "signed_in"
    REKEYED = "rekeyed"


@dataclass(frozen=True, slots=True)
class AccountResult:
    resident: Resident
    outcome: AccountOutcome
    phone_changed_from: str | None = None


def ci_index(ci: str, pepper: str) -> bytes:
    """The blind index of a CI: finds the resident again without storing the CI (docs/carrier.md)."""
    return hmac.new(pepper.encode(), ci.encode(), hashlib.sha256).digest()


# Every carrier sign-in finds its resident by the CI's blind index: built once.
BY_CI_INDEX = select(Resident).where(Resident.ci_index == bindparam("ci_index"))


def resident_for_identity(
    db: Session,
    identity: VerifiedIdentity,
    *,
    pepper: str,
    now: dt.datetime,
    client_ip: str | None = None,
) -> AccountResult:
    """The resident this verified person is, created on their first verification.

    The same CI signs in to the same resident on any line or carrier; a CI re-issued by the agency
    (`ci_previous`) re-keys the resident; a new phone number replaces the stored one.

    Raises:
        ResidentLockedError: the resident is locked by an admin.
    """
    index = ci_index(identity.ci, pepper)
    resident = db.scalar(BY_CI_INDEX, {"ci_index": index})
    outcome = AccountOutcome.SIGNED_IN
    if resident is None and identity.ci_previous:
        resident = db.scalar(BY_CI_INDEX, {"ci_index": ci_index(identity.ci_previous, pepper)})
        if resident is not None:
            resident.ci_index = index
            resident.ci_pepper_version = CI_PEPPER_VERSION
            outcome = AccountOutcome.REKEYED
            record_event(db, "resident.rekeyed", result=SUCCESS, resident_id=resident.id, client_ip=client_ip)
    if resident is None:
        resident = Resident(id=uuid.uuid4(), ci_index=index, ci_pepper_version=CI_PEPPER_VERSION, created_at=now)
        db.add(resident)
        outcome = AccountOutcome.CREATED
    if resident.is_locked:
        record_event(
            db, "signin.refused", result=FAILURE, resident_id=resident.id, client_ip=client_ip, reason="locked"
        )
        raise ResidentLockedError
    previous_phone = resident.phone
    resident.name = identity.name
    resident.birthdate = identity.birthdate
    resident.phone = identity.phone
    resident.carrier = identity.carrier
    resident.verified_at = identity.verified_at
    resident.verified_by = identity.agency
    db.flush()
    if outcome is AccountOutcome.CREATED:
        record_event(db, "resident.created", result=SUCCESS, resident_id=resident.id, client_ip=client_ip)
    changed = previous_phone if previous_phone and previous_phone != identity.phone else None
    if changed:
        record_event(
            db,
            "resident.phone_changed",
            result=SUCCESS,
            resident_id=resident.id,
            client_ip=client_ip,
            old_phone=mask_phone(changed),
            new_phone=mask_phone(identity.phone),
        )
    return AccountResult(resident=resident, outcome=outcome, phone_changed_from=changed)


class AmbiguousResidentError(Exception):
    """Several residents share the phone number (a number passed on by the carrier); use the id."""


def find_resident(db: Session, reference: str) -> Resident | None:
    """A resident by id or by phone number in E.164 form.

    Raises:
        AmbiguousResidentError: more than one resident has the phone number.
    """
    if reference.startswith("+"):
        found = db.scalars(select(Resident).where(Resident.phone == reference).limit(2)).all()
        if len(found) > 1:
            raise AmbiguousResidentError(reference)
        return found[0] if found else None
    try:
        return db.get(Resident, uuid.UUID(reference))
    except ValueError:
        return None


def list_residents(db: Session, *, limit: int, locked_only: bool = False) -> list[Resident]:
    """The newest residents first, at most `limit` of them."""
    query = select(Resident).order_by(Resident.created_at.desc(), Resident.id).limit(limit)
    if locked_only:
        query = query.where(Resident.locked_at.is_not(None))
    return list(db.scalars(query))


def lock_resident(db: Session, resident: Resident, *, now: dt.datetime) -> None:
    """Lock the resident and end their sessions."""
    resident.locked_at = resident.locked_at or now
    end_all_sessions(db, resident.id, now=now)
    record_event(db, "resident.locked", result=SUCCESS, resident_id=resident.id, actor="admin")


def unlock_resident(db: Session, resident: Resident) -> None:
    resident.locked_at = None
    record_event(db, "resident.unlocked", result=SUCCESS, resident_id=resident.id, actor="admin")


def delete_resident(db: Session, resident: Resident, *, now: dt.datetime) -> None:
    """Erase the resident's personal data and sessions, keeping audit records that hold none."""
    resident_id = resident.id
    # Audit details may hold a masked phone number; the erased resident keeps none of it.
    for event in db.scalars(select(AuditEvent).where(AuditEvent.resident_id == resident_id)):
        event.details = {k: v for k, v in event.details.items() if "phone" not in k}
        event.client_ip = None
    db.delete(resident)
    db.flush()
    record_event(db, "resident.deleted", result=SUCCESS, resident_id=resident_id, actor="admin")
