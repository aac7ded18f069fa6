"""The purge of expired records: what expired longer ago than its grace goes, everything else stays."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from idp.authn.assurance import AuthEvent, Method
from idp.authn.sessions import start_session
from idp.models import (
    AccessToken,
    AuthorizationCode,
    Client,
    LoginSession,
    LogoutDelivery,
    RateLimitCounter,
    RefreshToken,
    Resident,
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


def _access(client: Client, expires_at: dt.datetime) -> AccessToken:
    return AccessToken(
        jti=secrets.token_urlsafe(16), client_id=client.id, scope="openid", issued_at=NOW, expires_at=expires_at
    )


def _challenge(expires_at: dt.datetime) -> WebAuthnChallenge:
    return WebAuthnChallenge(
        digest=secrets.token_bytes(32), purpose="signin", binding=secrets.token_bytes(32), expires_at=expires_at
    )


def _counter(expires_at: dt.datetime) -> RateLimitCounter:
    return RateLimitCounter(key=secrets.token_hex(32), window_start=NOW, count=1, expires_at=expires_at)


def _count(db: Session, model: type) -> int:
    return int(db.scalar(select(func.count()).select_from(model)) or 0)


def test_records_expired_past_their_grace_are_purged_and_the_rest_kept(
    db: Session, owners: tuple[Resident, Client]
) -> None:
    resident, client = owners
    db.add_all(
        [
            _code(resident, client, GONE),
            _code(resident, client, KEPT),
            _access(client, GONE),
            _access(client, KEPT),
            _refresh(resident, client, GONE),
            _refresh(resident, client, KEPT),
            _challenge(GONE),
            _challenge(KEPT),
            _counter(GONE),
            _counter(KEPT),
        ]
    )
    db.flush()

    counts = purge_expired(db, now=NOW)

    for table, model in [
        ("authorization_code", AuthorizationCode),
        ("access_token", AccessToken),
        ("refresh_token", RefreshToken),
        ("webauthn_challenge", WebAuthnChallenge),
        ("rate_limit_counter", RateLimitCounter),
    ]:
        assert counts[table] == 1, table
        assert _count(db, model) == 1, table


def test_a_refresh_family_stays_whole_until_it_ends(db: Session, owners: tuple[Resident, Client]) -> None:
    resident, client = owners
    # A rotated token whose own lifetime ended long ago, in a family that lives on: it must still reveal reuse.
    rotated = _refresh(resident, client, NOW + dt.timedelta(days=10))
    rotated.expires_at = NOW - dt.timedelta(days=5)
    rotated.rotated_at = NOW - dt.timedelta(days=5)
    db.add(rotated)
    db.flush()
    assert purge_expired(db, now=NOW)["refresh_token"] == 0
    assert _count(db, RefreshToken) == 1


def test_ended_sessions_stay_for_a_month(db: Session, owners: tuple[Resident, Client]) -> None:
    resident, _ = owners
    event = AuthEvent.of(Method.CARRIER_SMS, issuer=ISSUER, at=NOW)
    old = start_session(db, resident, event, client_ip=None, user_agent=None, now=NOW).session
    recent = start_session(db, resident, event, client_ip=None, user_agent=None, now=NOW).session
    live = start_session(db, resident, event, client_ip=None, user_agent=None, now=NOW).session
    old.ended_at = NOW - ENDED_SESSIONS - dt.timedelta(seconds=1)
    recent.ended_at = NOW - ENDED_SESSIONS + dt.timedelta(seconds=1)
    db.flush()
    assert purge_expired(db, now=NOW)["login_session"] == 1
    assert set(db.scalars(select(LoginSession.id))) == {recent.id, live.id}


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
    assert purge_expired(db, now=NOW)["logout_delivery"] == 1
    assert set(db.scalars(select(LogoutDelivery.id))) == {pending.id, given_up_lately.id}


def test_the_worker_purges_and_commits(fresh_database_url: str) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    own = create_engine(fresh_database_url)
    factory = sessionmaker(own)
    with factory() as db:
        db.add(_counter(dt.datetime.now(dt.UTC) - GRACE - dt.timedelta(minutes=1)))
        db.commit()
    assert PurgeWorker(factory).purge_once()["rate_limit_counter"] == 1
    with factory() as db:
        assert _count(db, RateLimitCounter) == 0
    own.dispose()
