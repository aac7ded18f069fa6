"""The audit log: who did what, when, from where, with what result, and never a secret or personal number."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from idp.models import AuditEvent

log = logging.getLogger("idp.audit")

SUCCESS = "success"
FAILURE = "failure"

# What a resident's sign-in history shows (the account page): every sign-in and refusal, and the failed attempts
# at a way to sign in that named this resident, so that one they did not make can be noticed ("was that me?").
SIGN_IN_EVENTS = ("signin", "signin.refused", "passkey.clone_suspected")
FAILED_ATTEMPT_EVENTS = ("totp.verify", "carrier.verify")


def record_event(
    db: Session,
    event: str,
    *,
    result: str,
    resident_id: uuid.UUID | None = None,
    client_id: str | None = None,
    client_ip: str | None = None,
    now: dt.datetime | None = None,
    txn: str | None = None,
    **details: Any,
) -> None:
    """Add an audit event (in the caller's transaction) and log it.

    `txn` names the carrier verification the event belongs to (a digest of the agency's transaction id); it is
    kept in the details too. `details` must already be free of secrets, codes, CIs and full phone numbers: callers
    pass masked values.
    """
    if txn is not None:
        details["txn"] = txn
    # Added to the unit of work, not written at once: the row goes in with the caller's other writes, so on SQLite
    # the database's write lock is not taken before a limiter counting on its own connection has counted
    # (idp.authn.lockout).
    db.add(
        AuditEvent(
            event=event,
            result=result,
            resident_id=resident_id,
            client_id=client_id,
            client_ip=client_ip,
            details=details,
            txn=txn,
            at=now or dt.datetime.now(dt.UTC),
        )
    )
    log.info(
        "%s %s",
        event,
        result,
        extra={"resident_id": str(resident_id) if resident_id else None, "client_ip": client_ip, **details},
    )


def sign_in_history(db: Session, resident_id: uuid.UUID, *, limit: int) -> list[AuditEvent]:
    """The resident's latest sign-ins, refusals and failed sign-in attempts, newest first."""
    return list(
        db.scalars(
            select(AuditEvent)
            .where(
                AuditEvent.resident_id == resident_id,
                or_(
                    AuditEvent.event.in_(SIGN_IN_EVENTS),
                    and_(AuditEvent.event.in_(FAILED_ATTEMPT_EVENTS), AuditEvent.result == FAILURE),
                ),
            )
            .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
            .limit(limit)
        )
    )
