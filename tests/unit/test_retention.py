"""The purge of expired records: what expired longer ago than its grace goes, everything else stays."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.authn.assurance import AuthEvent, Method
from idp.authn.sessions import start_session
from idp.models import (
    AuthorizationCode,
    Client,
    Grant,
    LoginSession,
    LogoutDelivery,
    RateLimitCounter,
    RefreshToken,
    Resident,
    RevokedAccessToken,
    WebAuthnChallenge,
)
from idp.retention import ENDED_SESSIONS, GRACE, PurgeWorker, purge_expired

NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
ISSUER = "http://localhost:8000"
# Just past the grace, and just within it.
GONE = NOW - GRACE - dt.timedelta(seconds=1)
KEPT = NOW - GRACE + dt.timedelta(seconds=1)


@pytest.fixture
def owners(db: Session) -> tuple[Resident, Client]:
    resident = Resident(id=uuid.uuid4(), name="김민준", phone="+821012345678")
    client = Client(id=f"client-{uuid.uuid4().hex[:8]}", name="민원24")
    db.add_all([resident, client])
    db.flush()
    return resident, client


def _code(resident: Resident, client: Client, expires_at: dt.datetime) -> AuthorizationCode:
    return AuthorizationCode(
        digest=secrets.token_bytes(32),
        grant_id=uuid.uuid4(),
        client_id=client.id,
        resident_id=resident.id,
        redirect_uri="https://rp.example.kr/callback",
        scope="openid",
        acr="aal1",
        auth_time=NOW,
        expires_at=expires_at,
    )


def _refresh(resident: Resident, client: Client, family_expires_at: dt.datetime) -> RefreshToken:
    return RefreshToken(
        digest=secrets.token_bytes(32),
        grant_id=uuid.uuid4(),
        client_id=client.id,
        resident_id=resident.id,
        scope="openid offline_access",
        acr="aal1",
        auth_time=NOW,
        expires_at=family_expires_at - dt.timedelta(days=16),
        family_expires_at=family_expires_at,
    )


def _grant(resident: Resident, client: Client, expires_at: dt.datetime) -> Grant:
    return Grant(id=uuid.uuid4(), client_id=client.id, resident_id=resident.id, created_at=NOW, expires_at=expires_at)


def _revoked(expires_at: dt.datetime) -> RevokedAccessToken:
    return RevokedAccessToken(jti=secrets.token_urlsafe(16), expires_at=expires_at)


def _challenge(expires_at: dt.datetime) -> WebAuthnChallenge:
    return WebAuthnChallenge(
        digest=secrets.token_bytes(32), purpose="signin", binding=secrets.token_bytes(32), expires_at=expires_at
    )


def _counter(expires_at: dt.datetime) -> RateLimitCounter:
    return RateLimitCounter(key=secrets.token_hex(32), window_start=NOW, count=1, expires_at=expires_at)


def test_records_expired_past_their_grace_are_purged_and_the_rest_kept(
    db: Session, owners: tuple[Resident, Client]
) -> None:
    resident, client = owners
    # Other tests leave committed rows in the shared database: each check follows the rows made here by their keys.
    made = {
        AuthorizationCode: (_code(resident, client, GONE), _code(resident, client, KEPT)),
        Grant: (_grant(resident, client, GONE), _grant(resident, client, KEPT)),
        RevokedAccessToken: (_revoked(GONE), _revoked(KEPT)),
        RefreshToken: (_refresh(resident, client, GONE), _refresh(resident, client, KEPT)),
        WebAuthnChallenge: (_challenge(GONE), _challenge(KEPT)),
        RateLimitCounter: (_counter(GONE), _counter(KEPT)),
    }
    keys = {model: [_key(row) for row in rows] for model, rows in made.items()}
    db.add_all([row for rows in made.values() for row in rows])
    db.flush()

    counts = purge_expired(db, now=NOW)

    db.expunge_all()
    for model, (gone, kept) in keys.items():
        table = model.__tablename__
        assert counts[table] >= 1, table
        assert db.get(model, gone) is None, table
        assert db.get(model, kept) is not None, table


def _key(row: object) -> object:
    return getattr(row, "jti", None) or getattr(row, "key", None) or getattr(row, "id", None) or row.digest  # type: ignore[attr-defined]


def test_a_refresh_family_stays_whole_until_it_ends(db: Session, owners: tuple[Resident, Client]) -> None:
    resident, client = owners
    # A rotated token whose own lifetime ended long ago, in a family that lives on: it must still reveal reuse.
    rotated = _refresh(resident, client, NOW + dt.timedelta(days=10))
    rotated.expires_at = NOW - dt.timedelta(days=5)
    rotated.rotated_at = NOW - dt.timedelta(days=5)
    db.add(rotated)
    db.flush()
    purge_expired(db, now=NOW)
    db.expunge_all()
    assert db.get(RefreshToken, rotated.digest) is not None


def test_ended_sessions_stay_for_a_month(db: Session, owners: tuple[Resident, Client]) -> None:
    resident, _ = owners
    event = AuthEvent.of(Method.CARRIER_SMS, issuer=ISSUER, at=NOW)
    old = start_session(db, resident, event, client_ip=None, user_agent=None, now=NOW).session
    recent = start_session(db, resident, event, client_ip=None, user_agent=None, now=NOW).session
    live = start_session(db, resident, event, client_ip=None, user_agent=None, now=NOW).session
    old.ended_at = NOW - ENDED_SESSIONS - dt.timedelta(seconds=1)
    recent.ended_at = NOW - ENDED_SESSIONS + dt.timedelta(seconds=1)
    db.flush()
    assert purge_expired(db, now=NOW)["login_session"] >= 1
    mine = {old.id, recent.id, live.id}
    assert set(db.scalars(select(LoginSession.id).where(LoginSession.id.in_(mine)))) == {recent.id, live.id}


def test_logout_deliveries_go_once_delivered_or_given_up_long_enough(
    db: Session, owners: tuple[Resident, Client]
) -> None:
    _, client = owners

    def delivery(**state: dt.datetime) -> LogoutDelivery:
        return LogoutDelivery(client_id=client.id, sid="sid", sub="sub", next_attempt_at=NOW, **state)

    pending = delivery()
    delivered_long_ago = delivery(delivered_at=GONE)
    given_up_lately = delivery(given_up_at=KEPT)
    db.add_all([pending, delivered_long_ago, given_up_lately])
    db.flush()
    assert purge_expired(db, now=NOW)["logout_delivery"] >= 1
    mine = {pending.id, delivered_long_ago.id, given_up_lately.id}
    assert set(db.scalars(select(LogoutDelivery.id).where(LogoutDelivery.id.in_(mine)))) == {
        pending.id,
        given_up_lately.id,
    }


def test_the_worker_purges_and_commits(fresh_database_url: str) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    own = create_engine(fresh_database_url)
    try:
        factory = sessionmaker(own)
        expired = _counter(dt.datetime.now(dt.UTC) - GRACE - dt.timedelta(minutes=1))
        key = expired.key
        with factory() as db:
            db.add(expired)
            db.commit()
        assert PurgeWorker(factory).purge_once()["rate_limit_counter"] >= 1
        with factory() as db:
            assert db.get(RateLimitCounter, key) is None
    finally:
        own.dispose()
