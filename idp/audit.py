"""The audit log: who did what, when, from where, with what result, and never a secret or personal number."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from sqlalchemy.orm import Session

from idp.models import AuditEvent

log = logging.getLogger("idp.audit")

SUCCESS = "success"
FAILURE = "failure"


def record_event(
    db: Session,
    event: str,
    *,
    result: str,
    resident_id: uuid.UUID | None = None,
    client_id: str | None = None,
    client_ip: str | None = None,
    now: dt.datetime | None = None,
    **details: Any,
) -> AuditEvent:
    """Add an audit event (flushed with the caller's transaction) and log it.

    `details` must already be free of secrets, codes, CIs and full phone numbers: callers pass masked values.
    """
    entry = AuditEvent(
        event=event,
        result=result,
        resident_id=resident_id,
        client_id=client_id,
        client_ip=client_ip,
        details=details,
        at=now or dt.datetime.now(dt.UTC),
    )
    db.add(entry)
    log.info(
        "%s %s",
        event,
        result,
        extra={"resident_id": str(resident_id) if resident_id else None, "client_ip": client_ip, **details},
    )
    return entry
