"""Signing in by carrier verification (idp.authn.verification.sign_in): the verification's own audit events go to
the resident it signed in, found by their transaction through an index, whatever else the log holds."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from idp.audit import FAILURE, SUCCESS, record_event
from idp.authn.carrier import VerificationMethod, VerifiedIdentity
from idp.authn.lockout import DatabaseRateLimiter
from idp.authn.verification import CarrierSignIn, sign_in, txn_digest
from idp.models import AuditEvent

NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
ISSUER = "http://localhost:8000"


class NoAgency:
    """A CarrierGateway that is never called: the identity is verified before sign_in runs."""

    def start(self, request: Any) -> Any:
        raise AssertionError("not called")

    confirm_code = poll = resend = cancel = start


@pytest.fixture
def service(limiter: DatabaseRateLimiter) -> CarrierSignIn:
    return CarrierSignIn(gateway=NoAgency(), limiter=limiter, issuer=ISSUER, ci_pepper="pepper")


def identity(txn_id: str) -> VerifiedIdentity:
    person = uuid.uuid4().hex
    return VerifiedIdentity(
        ci=(person * 4)[:88],
        ci_previous=None,
        name="김경기",
        birthdate=dt.date(1985, 3, 14),
        sex="M",
        nationality="KR",
        phone=f"+8210{uuid.uuid4().int % 10**8:08d}",
        carrier="SKT",
        method=VerificationMethod.SMS,
        agency="sandbox",
        agency_txn_id=txn_id,
        verified_at=NOW,
        jti=uuid.uuid4().hex,
        session_binding="binding",
        expires_at=NOW + dt.timedelta(minutes=10),
    )


def verification_events(db: Session, txn_id: str, *, ip: str) -> None:
    """What a verification records before its sign-in: a start and a code, neither with a resident yet."""
    digest = txn_digest(txn_id)
    record_event(db, "carrier.start", result=SUCCESS, client_ip=ip, txn=digest, phone="+8210****0001")
    record_event(db, "carrier.verify", result=FAILURE, client_ip=ip, txn=digest, error="wrong_code")
    record_event(db, "carrier.verify", result=SUCCESS, client_ip=ip, txn=digest, method="sms")


def residents_of(db: Session, txn_id: str) -> list[uuid.UUID | None]:
    events = db.scalars(
        select(AuditEvent).where(AuditEvent.details["txn"].as_string() == txn_digest(txn_id)).order_by(AuditEvent.id)
    )
    return [found.resident_id for found in events]


def test_the_verifications_own_events_go_to_the_resident_it_signs_in(
    db: Session, service: CarrierSignIn, client_ip: str
) -> None:
    ip = client_ip
    signed_in, abandoned = uuid.uuid4().hex, uuid.uuid4().hex
    verification_events(db, signed_in, ip=client_ip)
    verification_events(db, abandoned, ip=client_ip)
    record_event(db, "totp.verify", result=FAILURE, client_ip=client_ip, reason="wrong_code")
    done = sign_in(db, service, identity(signed_in), current=None, client_ip=client_ip, user_agent=None, now=NOW)
    resident = done.account.resident.id
    assert residents_of(db, signed_in) == [resident, resident, resident]
    # Another verification's events (abandoned, or someone else's) stay as they were.
    assert residents_of(db, abandoned) == [None, None, None]
    unrelated = select(AuditEvent.resident_id).where(AuditEvent.event == "totp.verify", AuditEvent.client_ip == ip)
    assert db.execute(unrelated).all() == [(None,)]


@contextmanager
def statements_of(connection: Connection) -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements run on `connection` inside the block, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(connection, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(connection, "before_cursor_execute", record)


def plan_of(connection: Connection, statement: str, parameters: Any) -> str:
    """How the database would run `statement`: an index lookup wherever one can serve (PostgreSQL is told to avoid
    sequential scans, which it prefers on a table of a few rows)."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        rows = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
        connection.exec_driver_sql("SET LOCAL enable_seqscan = on")
        return "\n".join(str(row[0]) for row in rows)
    rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
    return "\n".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize("without_resident", ["few", "many"])
def test_the_verifications_events_are_found_by_an_index_on_their_transaction(
    db: Session, service: CarrierSignIn, client_ip: str, without_resident: str
) -> None:
    # Every abandoned verification and every failure by an unknown number leaves events without a resident: the
    # sign-in must look its own up by its transaction, not read all of those; and where nearly every event has its
    # resident (as when verifications are finished), the index on residents must not be taken instead either.
    others = 400
    for n in range(others):
        resident = uuid.uuid4() if without_resident == "few" or n % 2 else None
        record_event(db, "signin", result=SUCCESS, resident_id=resident, client_ip=client_ip, method="passkey")
    db.execute(text("ANALYZE audit_event"))
    txn_id = uuid.uuid4().hex
    verification_events(db, txn_id, ip=client_ip)
    connection = db.connection()
    with statements_of(connection) as seen:
        sign_in(db, service, identity(txn_id), current=None, client_ip=client_ip, user_agent=None, now=NOW)
    [(statement, parameters)] = [(sql, params) for sql, params in seen if sql.startswith("UPDATE audit_event")]
    plan = plan_of(connection, statement, parameters)
    assert "ix_audit_event_txn" in plan, plan
