"""Login sessions: server-side, one cookie secret stored as a digest, timeouts by assurance level."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session, contains_eager, make_transient_to_detached

from idp.audit import SUCCESS, record_event
from idp.authn.assurance import PHR, PHRH, AuthEvent, assurance_within, best_acr, merge_amr
from idp.models import LoginSession, Resident

# docs/integration.md section 2.4: sessions at phr or above end after 24 h, or 1 h idle; lower ones after 30 days.
STRONG_ABSOLUTE = dt.timedelta(hours=24)
STRONG_IDLE = dt.timedelta(hours=1)
WEAK_ABSOLUTE = dt.timedelta(days=30)
# Changes to how a resident signs in (a passkey or an authenticator app added or removed, new recovery codes) need
# an authentication this recent: a session left open on a lost phone must not be able to change them.
RECENT_SIGN_IN = dt.timedelta(minutes=15)
# last_seen_at is written at most this often, so page views do not each cost a write.
LAST_SEEN_RESOLUTION = dt.timedelta(minutes=1)


class SessionEndedError(Exception):
    """The session cookie names no live session (signed out, expired or idle too long)."""


@dataclass(frozen=True, slots=True)
class StartedSession:
    session: LoginSession
    cookie_value: str


def digest_secret(secret: str) -> bytes:
    # The cookie secret has 256 random bits, so a fast hash is enough; only the digest is stored.
    return hashlib.sha256(secret.encode()).digest()


# A plain INSERT built once: every sign-in opens a session, and the unit of work would cost as much again.
INSERT_SESSION = insert(cast(Table, LoginSession.__table__))


def start_session(
    db: Session,
    resident: Resident,
    event: AuthEvent,
    *,
    client_ip: str | None,
    user_agent: str | None,
    now: dt.datetime,
    issuer: str = "",
    later: Sequence[AuthEvent] = (),
) -> StartedSession:
    """Open a new session for `resident` after `event` (and the `later` events of the same sign-in, in order; the
    acr they reach is judged under `issuer`): a fresh sid and cookie at every sign-in (no fixation)."""
    secret = secrets.token_urlsafe(32)
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "sid": secrets.token_urlsafe(24),
        "secret_digest": digest_secret(secret),
        "resident_id": resident.id,
        "auth_time": event.at,
        "acr": event.acr,
        "amr": list(event.amr),
        "events": [event.to_json()],
        "client_ip": client_ip,
        "user_agent": (user_agent or "")[:300] or None,
        "created_at": now,
        "last_seen_at": now,
        "expires_at": now + absolute_lifetime(event.acr),
        "ended_at": None,
    }
    for further in later:
        row.update(_raised(row, further, issuer=issuer, now=now))
    db.flush()  # the resident may be new in this transaction: its row first
    db.execute(INSERT_SESSION, row)
    session = LoginSession(**row)
    # The row is written: the object joins the session as if it had been read back, without a query.
    make_transient_to_detached(session)
    db.add(session)
    return StartedSession(session=session, cookie_value=secret)


def _raised(session: Mapping[str, Any], event: AuthEvent, *, issuer: str, now: dt.datetime) -> dict[str, Any]:
    """What a session's columns become after a further authentication (step-up): amr grows, acr is the best
    reached, the absolute lifetime is that of the new level (never longer than it was)."""
    acr = best_acr([session["acr"], event.acr], issuer)
    return {
        "events": [*session["events"], event.to_json()],
        "amr": merge_amr(session["amr"], event.amr),
        "acr": acr,
        "auth_time": event.at,
        "expires_at": min(session["expires_at"], now + absolute_lifetime(acr)),
        "last_seen_at": now,
    }


def absolute_lifetime(acr: str) -> dt.timedelta:
    return STRONG_ABSOLUTE if acr in (PHR, PHRH) else WEAK_ABSOLUTE


def idle_limit(acr: str) -> dt.timedelta | None:
    return STRONG_IDLE if acr in (PHR, PHRH) else None


# The session with its resident, in one statement built once: every page and every /authorize reads both. An
# inner join (a session always has its resident) filled in as the relationship: less work than a joined load.
FIND_SESSION = (
    select(LoginSession)
    .join(LoginSession.resident)
    .options(contains_eager(LoginSession.resident))
    .where(LoginSession.secret_digest == bindparam("secret_digest"))
)


def load_session(db: Session, cookie_value: str, *, now: dt.datetime) -> LoginSession:
    """The live session the cookie names, its last-seen time refreshed.

    Raises:
        SessionEndedError: no such session, or it was ended, expired or idle too long.
    """
    session = db.scalar(FIND_SESSION, {"secret_digest": digest_secret(cookie_value)})
    if session is None or session.ended_at is not None or session.expires_at <= now:
        raise SessionEndedError
    idle = idle_limit(session.acr)
    if idle is not None and now - session.last_seen_at > idle:
        raise SessionEndedError
    if session.resident.is_locked:
        raise SessionEndedError
    if now - session.last_seen_at >= LAST_SEEN_RESOLUTION:
        session.last_seen_at = now
    return session


def add_event(db: Session, session: LoginSession, event: AuthEvent, *, issuer: str, now: dt.datetime) -> None:
    """Record a further authentication (step-up) in the session: amr grows, acr is the best reached."""
    current = {"events": session.events, "amr": session.amr, "acr": session.acr, "expires_at": session.expires_at}
    for column, value in _raised(current, event, issuer=issuer, now=now).items():
        setattr(session, column, value)
    db.flush()


def session_assurance(
    session: LoginSession, *, max_age: int | None, issuer: str, now: dt.datetime
) -> tuple[str, list[str]]:
    """The acr and amr the session vouches for to a request with `max_age` (docs/integration.md section 6)."""
    if max_age is None:
        return session.acr, list(session.amr)
    events = [AuthEvent.from_json(event) for event in session.events]
    return assurance_within(events, max_age=max_age, issuer=issuer, now=now)


def sign_in_resident(
    db: Session,
    resident: Resident,
    events: list[AuthEvent],
    *,
    current: LoginSession | None,
    client_ip: str | None,
    user_agent: str | None,
    issuer: str,
    now: dt.datetime,
) -> tuple[LoginSession, str]:
    """Sign `resident` in after `events` (in order), and record it: the browser's `current` session rises when it
    is the same resident's (step-up: its sid stays, docs/integration.md section 6), otherwise a new session opens.

    Returns the session and its new cookie value (the cookie secret changes at every authentication).
    """
    methods = "+".join(event.method.value for event in events)
    if current is None or current.resident_id != resident.id:
        started = start_session(
            db,
            resident,
            events[0],
            client_ip=client_ip,
            user_agent=user_agent,
            now=now,
            issuer=issuer,
            later=events[1:],
        )
        current, cookie_value = started.session, started.cookie_value
    else:
        # A new cookie secret at every authentication, as at every sign-in; the sid that services know stays.
        cookie_value = secrets.token_urlsafe(32)
        current.secret_digest = digest_secret(cookie_value)
        for event in events:
            add_event(db, current, event, issuer=issuer, now=now)
    record_event(
        db,
        "signin",
        result=SUCCESS,
        resident_id=resident.id,
        client_ip=client_ip,
        method=methods,
        acr=current.acr,
        amr=list(current.amr),
    )
    return current, cookie_value


def recently_signed_in(session: LoginSession, *, now: dt.datetime) -> bool:
    """Whether the session's last authentication is recent enough to change the resident's ways to sign in."""
    return now - session.auth_time <= RECENT_SIGN_IN


def end_session(db: Session, session: LoginSession, *, now: dt.datetime) -> None:
    if session.ended_at is None:
        session.ended_at = now
        db.flush()


def end_all_sessions(db: Session, resident_id: uuid.UUID, *, now: dt.datetime) -> int:
    """Sign out everywhere: end every live session of the resident; how many were ended."""
    result = db.execute(
        update(LoginSession)
        .where(LoginSession.resident_id == resident_id, LoginSession.ended_at.is_(None))
        .values(ended_at=now)
        .execution_options(synchronize_session=False)
    )
    db.expire_all()
    return int(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of an UPDATE


def live_sessions(db: Session, resident_id: uuid.UUID, *, now: dt.datetime) -> list[LoginSession]:
    sessions = db.scalars(
        select(LoginSession)
        .where(LoginSession.resident_id == resident_id, LoginSession.ended_at.is_(None))
        .order_by(LoginSession.last_seen_at.desc())
    ).all()
    return [s for s in sessions if s.expires_at > now]
