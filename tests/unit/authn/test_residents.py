"""Resident accounts as admins handle them, without the `idp` command: find by id or phone number, list, lock,
unlock and delete (who comes back from a carrier verification is tested with the gateway)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from factories import make_login_session, make_resident
from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.audit import SUCCESS, record_event
from idp.authn.residents import (
    AmbiguousResidentError,
    delete_resident,
    find_resident,
    list_residents,
    lock_resident,
    unlock_resident,
)
from idp.models import AuditEvent, LoginSession, Resident

NOW = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC)
# Later than any resident another test committed to the shared PostgreSQL database, so these are the newest.
FUTURE = dt.datetime(2199, 1, 1, tzinfo=dt.UTC)


def phone() -> str:
    return "+8210" + str(uuid.uuid4().int)[:8]


def test_a_resident_is_found_by_id_or_by_phone_number(db: Session) -> None:
    resident = make_resident(db, phone=phone())
    assert find_resident(db, str(resident.id)) is resident
    assert find_resident(db, resident.phone or "") is resident


@pytest.mark.parametrize("reference", ["", "not-an-id", "+821099999999x", str(uuid.uuid4()), "+82"])
def test_an_unknown_reference_finds_nobody(db: Session, reference: str) -> None:
    assert find_resident(db, reference) is None


def test_a_phone_number_two_residents_share_is_refused(db: Session) -> None:
    # A carrier passes a number on: the old account keeps it until its owner signs in again.
    shared = phone()
    make_resident(db, phone=shared)
    make_resident(db, phone=shared, name="이경기")
    with pytest.raises(AmbiguousResidentError):
        find_resident(db, shared)


def test_residents_are_listed_newest_first_up_to_the_limit(db: Session) -> None:
    older = make_resident(db, phone=phone(), created_at=FUTURE)
    newer = make_resident(db, phone=phone(), created_at=FUTURE + dt.timedelta(days=1))
    assert [r.id for r in list_residents(db, limit=2)] == [newer.id, older.id]
    assert [r.id for r in list_residents(db, limit=1)] == [newer.id]


def test_only_locked_residents_are_listed_when_asked(db: Session) -> None:
    locked = make_resident(db, phone=phone(), created_at=FUTURE)
    make_resident(db, phone=phone(), created_at=FUTURE + dt.timedelta(days=1))
    lock_resident(db, locked, now=NOW)
    assert list_residents(db, limit=1, locked_only=True)[0].id == locked.id


def test_locking_ends_every_session_and_unlocking_lets_the_resident_back(db: Session) -> None:
    resident = make_resident(db, phone=phone())
    first = make_login_session(db, resident, now=NOW).session.id
    second = make_login_session(db, resident, now=NOW).session.id
    lock_resident(db, resident, now=NOW + dt.timedelta(minutes=1))
    ended = db.scalars(select(LoginSession.ended_at).where(LoginSession.id.in_([first, second]))).all()
    assert ended == [NOW + dt.timedelta(minutes=1)] * 2
    # Locking again keeps the first lock's time.
    lock_resident(db, resident, now=NOW + dt.timedelta(hours=1))
    assert resident.locked_at == NOW + dt.timedelta(minutes=1)
    unlock_resident(db, resident)
    assert resident.locked_at is None
    events = db.scalars(
        select(AuditEvent.event).where(AuditEvent.resident_id == resident.id).order_by(AuditEvent.id)
    ).all()
    assert events == ["resident.locked", "resident.locked", "resident.unlocked"]


def test_deleting_erases_the_resident_and_the_phone_numbers_in_their_audit_records(db: Session) -> None:
    resident = make_resident(db, phone=phone())
    resident_id = resident.id
    make_login_session(db, resident, now=NOW)
    record_event(db, "signin", result=SUCCESS, resident_id=resident_id, client_ip="203.0.113.7", phone="+82******01")
    delete_resident(db, resident, now=NOW)
    db.expire_all()
    assert db.get(Resident, resident_id) is None
    assert db.scalars(select(LoginSession).where(LoginSession.resident_id == resident_id)).all() == []
    kept = db.scalars(select(AuditEvent).where(AuditEvent.resident_id == resident_id).order_by(AuditEvent.id)).all()
    assert [event.event for event in kept] == ["signin", "resident.deleted"]
    assert all("phone" not in event.details and event.client_ip is None for event in kept)
