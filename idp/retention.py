"""How long expired records are kept, and the purge every server process runs in the background."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from sqlalchemy import Delete, delete, or_
from sqlalchemy.orm import Session, sessionmaker

from idp.models import (
    AuthorizationCode,
    CarrierResult,
    Grant,
    InitialAccessToken,
    LoginSession,
    LogoutDelivery,
    RateLimitCounter,
    RefreshToken,
    RevokedAccessToken,
    UsedAssertion,
    WebAuthnChallenge,
)

log = logging.getLogger("idp.retention")

# Past its expiry a record is kept this long more: a replay of a code or token that just expired still meets its
# row (and is refused as used, not as unknown), and an admin looking into an incident finds it.
GRACE = dt.timedelta(days=1)
# Ended and expired login sessions stay listed for an admin this long; sign-ins stay in the audit log regardless.
ENDED_SESSIONS = dt.timedelta(days=30)
PURGE_INTERVAL = 600.0  # seconds between purges in each server process


def _statements(now: dt.datetime) -> dict[str, Delete]:
    cutoff = now - GRACE
    sessions_cutoff = now - ENDED_SESSIONS
    return {
        "authorization_code": delete(AuthorizationCode).where(AuthorizationCode.expires_at < cutoff),
        "token_grant": delete(Grant).where(Grant.expires_at < cutoff),
        "revoked_access_token": delete(RevokedAccessToken).where(RevokedAccessToken.expires_at < cutoff),
        # A family is kept whole until it ends: a rotated token must stay to reveal its reuse (RFC 9700 §4.14.2).
        "refresh_token": delete(RefreshToken).where(RefreshToken.family_expires_at < cutoff),
        "webauthn_challenge": delete(WebAuthnChallenge).where(WebAuthnChallenge.expires_at < cutoff),
        "used_assertion": delete(UsedAssertion).where(UsedAssertion.expires_at < cutoff),
        "carrier_result": delete(CarrierResult).where(CarrierResult.expires_at < cutoff),
        "rate_limit_counter": delete(RateLimitCounter).where(RateLimitCounter.expires_at < cutoff),
        "initial_access_token": delete(InitialAccessToken).where(InitialAccessToken.expires_at < cutoff),
        "logout_delivery": delete(LogoutDelivery).where(
            or_(LogoutDelivery.delivered_at < cutoff, LogoutDelivery.given_up_at < cutoff)
        ),
        "login_session": delete(LoginSession).where(
            or_(LoginSession.ended_at < sessions_cutoff, LoginSession.expires_at < sessions_cutoff)
        ),
    }


def purge_expired(db: Session, *, now: dt.datetime) -> dict[str, int]:
    """Delete what expired longer ago than its grace; how many rows of each table went."""
    counts: dict[str, int] = {}
    for table, statement in _statements(now).items():
        result = db.execute(statement.execution_options(synchronize_session=False))
        counts[table] = int(result.rowcount)  # type: ignore[attr-defined]  # CursorResult of a DELETE
    return counts


class PurgeWorker:
    """A daemon thread per server process that purges expired records every `interval` seconds.

    Several processes purging at once is harmless: a DELETE of what is already gone deletes nothing."""

    def __init__(self, factory: sessionmaker[Session], interval: float = PURGE_INTERVAL) -> None:
        self.factory = factory
        self.interval = interval
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        threading.Thread(target=self._run, name="idp-purge", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.purge_once()

    def purge_once(self) -> dict[str, int]:
        try:
            with self.factory() as db:
                counts = purge_expired(db, now=dt.datetime.now(dt.UTC))
                db.commit()
        except Exception:  # a periodic purge must outlive a bad round (a locked database); the next one retries
            log.exception("purge of expired records failed")
            return {}
        if any(counts.values()):
            log.info("purged expired records", extra={"purged": {k: v for k, v in counts.items() if v}})
        return counts
