"""Login sessions: fresh ids at sign-in, digests only, timeouts by level, step-up and sign-out."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy.orm import Session

from idp.authn.assurance import PHR, AuthEvent, Method, aal1
from idp.authn.sessions import (
    SessionEndedError,
    digest_secret,
    end_all_sessions,
    end_session,
    live_sessions,
    load_session,
    start_session,
)
from idp.models import Resident

ISSUER = "http://localhost:8000"
NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)


@pytest.fixture
def resident(db: Session) -> Resident:
    resident = Resident(id=uuid.uuid4(), name="김민준", phone="+821012345678")
    db.add(resident)
    db.flush()
    return resident


def sms_event(at: dt.datetime = NOW) -> AuthEvent:
    return AuthEvent.of(Method.CARRIER_SMS, issuer=ISSUER, at=at)


def test_sign_in_records_the_event_and_stores_only_a_digest(db: Session, resident: Resident) -> None:
    started = start_session(db, resident, sms_event(), client_ip="203.0.113.9", user_agent="UA", now=NOW)
    session = started.session
    assert session.amr == ["sms", "mca"]
    assert session.acr == aal1(ISSUER)
    assert session.auth_time == NOW
    assert session.events == [
        {"method": "carrier_sms", "amr": ["sms", "mca"], "acr": aal1(ISSUER), "at": NOW.isoformat()}
    ]
    assert session.secret_digest == digest_secret(started.cookie_value)
    assert started.cookie_value not in (session.sid, str(session.id))
    assert len(started.cookie_value) >= 43


def test_every_sign_in_gets_a_new_session(db: Session, resident: Resident) -> None:
    first = start_session(db, resident, sms_event(), client_ip=None, user_agent=None, now=NOW)
    second = start_session(db, resident, sms_event(), client_ip=None, user_agent=None, now=NOW)
    assert first.session.sid != second.session.sid
    assert first.cookie_value != second.cookie_value


def test_cookie_loads_its_live_session(db: Session, resident: Resident) -> None:
    started = start_session(db, resident, sms_event(), client_ip=None, user_agent=None, now=NOW)
    loaded = load_session(db, started.cookie_value, now=NOW + dt.timedelta(days=29))
    assert loaded.id == started.session.id


@pytest.mark.parametrize("cookie", ["", "nonsense", "x" * 43])
def test_unknown_cookie_is_refused(db: Session, cookie: str) -> None:
    with pytest.raises(SessionEndedError):
        load_session(db, cookie, now=NOW)


def test_low_level_session_ends_after_thirty_days(db: Session, resident: Resident) -> None:
    started = start_session(db, resident, sms_event(), client_ip=None, user_agent=None, now=NOW)
    with pytest.raises(SessionEndedError):
        load_session(db, started.cookie_value, now=NOW + dt.timedelta(days=30))


def test_phr_session_ends_after_an_idle_hour_and_after_a_day(db: Session, resident: Resident) -> None:
    strong = AuthEvent(method=Method.CARRIER_SMS, amr=("swk", "user", "mfa"), acr=PHR, at=NOW)
    started = start_session(db, resident, strong, client_ip=None, user_agent=None, now=NOW)
    assert started.session.expires_at == NOW + dt.timedelta(hours=24)
    load_session(db, started.cookie_value, now=NOW + dt.timedelta(minutes=59))
    with pytest.raises(SessionEndedError):
        load_session(db, started.cookie_value, now=NOW + dt.timedelta(minutes=59) + dt.timedelta(hours=1, seconds=1))


def test_sign_out_ends_only_this_session(db: Session, resident: Resident) -> None:
    one = start_session(db, resident, sms_event(), client_ip=None, user_agent=None, now=NOW)
    two = start_session(db, resident, sms_event(), client_ip=None, user_agent=None, now=NOW)
    end_session(db, one.session, now=NOW)
    with pytest.raises(SessionEndedError):
        load_session(db, one.cookie_value, now=NOW)
    assert load_session(db, two.cookie_value, now=NOW).id == two.session.id


def test_sign_out_everywhere_ends_every_session(db: Session, resident: Resident) -> None:
    cookies = [
        start_session(db, resident, sms_event(), client_ip=None, user_agent=None, now=NOW).cookie_value
        for _ in range(3)
    ]
    assert end_all_sessions(db, resident.id, now=NOW) == 3
    assert live_sessions(db, resident.id, now=NOW) == []
    for cookie in cookies:
        with pytest.raises(SessionEndedError):
            load_session(db, cookie, now=NOW)


def test_locked_resident_has_no_live_session(db: Session, resident: Resident) -> None:
    started = start_session(db, resident, sms_event(), client_ip=None, user_agent=None, now=NOW)
    resident.locked_at = NOW
    with pytest.raises(SessionEndedError):
        load_session(db, started.cookie_value, now=NOW)
