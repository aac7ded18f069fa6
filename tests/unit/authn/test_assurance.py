"""Assurance: methods to amr and acr (docs/integration.md section 6), the best level within max_age, and when to sign
in again."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy.orm import Session

from idp.authn.assurance import (
    AMR_BY_METHOD,
    PHR,
    PHRH,
    AuthEvent,
    Method,
    aal1,
    aal2,
    acr_for_method,
    acr_satisfies,
    assurance_within,
    available_methods,
    best_acceptable,
    best_acr,
    merge_amr,
    reachable_acr,
)
from idp.authn.sessions import add_event, session_assurance, start_session
from idp.models import LoginSession, Resident

ISSUER = "http://localhost:8000"
NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
AAL1 = f"{ISSUER}/acr/aal1"
AAL2 = f"{ISSUER}/acr/aal2"
# RFC 8176 §2 and the IANA "Authentication Method Reference Values" registry.
REGISTERED_AMR = {
    "face", "fpt", "geo", "hwk", "iris", "kba", "mca", "mfa", "otp", "pin", "pwd", "rba", "retina", "sc", "sms", "swk",
    "tel", "user", "vbm", "wia",
}  # fmt: skip


def event(method: Method, *, ago: dt.timedelta = dt.timedelta(0)) -> AuthEvent:
    return AuthEvent.of(method, issuer=ISSUER, at=NOW - ago)


def minutes(n: int) -> dt.timedelta:
    return dt.timedelta(minutes=n)


# -- methods → amr and acr (docs/integration.md section 6) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "amr", "acr"),
    [
        (Method.PASSKEY_HARDWARE, ("hwk", "user", "mfa"), PHRH),
        (Method.PASSKEY, ("swk", "user", "mfa"), PHR),
        (Method.TOTP, ("otp",), AAL1),
        (Method.RECOVERY_CODE, ("otp",), AAL1),
        (Method.CARRIER_SMS, ("sms", "mca"), AAL1),
        (Method.CARRIER_APP, ("mca",), AAL1),
    ],
)
def test_each_method_has_its_amr_and_acr(method: Method, amr: tuple[str, ...], acr: str) -> None:
    assert acr_for_method(method, ISSUER) == acr
    made = AuthEvent.of(method, issuer=ISSUER, at=NOW)
    assert (made.method, made.amr, made.acr, made.at) == (method, amr, acr, NOW)


def test_every_method_has_amr_values_from_the_registry() -> None:
    assert set(AMR_BY_METHOD) == set(Method)
    for values in AMR_BY_METHOD.values():
        assert values
        assert set(values) <= REGISTERED_AMR


def test_levels_are_named_after_the_issuer() -> None:
    assert (aal1(ISSUER), aal2(ISSUER)) == (AAL1, AAL2)


def test_carrier_sms_then_totp_are_sms_mca_otp_at_aal1() -> None:
    acr, amr = assurance_within(
        [event(Method.CARRIER_SMS, ago=minutes(1)), event(Method.TOTP)], max_age=None, issuer=ISSUER, now=NOW
    )
    # Two things you have: no "mfa", and still AAL1. The values come in the order the authentications happened.
    assert (acr, amr) == (AAL1, ["sms", "mca", "otp"])


def test_totp_then_carrier_sms_are_otp_sms_mca() -> None:
    acr, amr = assurance_within(
        [event(Method.TOTP, ago=minutes(1)), event(Method.CARRIER_SMS)], max_age=None, issuer=ISSUER, now=NOW
    )
    assert (acr, amr) == (AAL1, ["otp", "sms", "mca"])


def test_carrier_app_then_recovery_code_are_mca_otp_at_aal1() -> None:
    acr, amr = assurance_within(
        [event(Method.CARRIER_APP, ago=minutes(1)), event(Method.RECOVERY_CODE)], max_age=None, issuer=ISSUER, now=NOW
    )
    assert (acr, amr) == (AAL1, ["mca", "otp"])


def test_auth_event_survives_json() -> None:
    original = event(Method.TOTP, ago=minutes(3))
    data = original.to_json()
    assert data == {"method": "totp", "amr": ["otp"], "acr": AAL1, "at": "2026-11-26T05:57:00+00:00"}
    assert AuthEvent.from_json(data) == original


@pytest.mark.parametrize(
    ("amrs", "merged"),
    [
        ((), []),
        ((("otp",),), ["otp"]),
        ((("sms", "mca"), ("otp",)), ["sms", "mca", "otp"]),
        ((("otp",), ("sms", "mca")), ["otp", "sms", "mca"]),
        ((("swk", "user", "mfa"), ("sms", "mca")), ["swk", "user", "mfa", "sms", "mca"]),
        # Each value once, where it first appeared: a later repeat does not move it.
        ((("sms", "mca"), ("otp",), ("mca",), ("sms", "mca")), ["sms", "mca", "otp"]),
        ((("hwk", "user", "mfa"), ("swk", "user", "mfa")), ["hwk", "user", "mfa", "swk"]),
        # Lists (a session's stored amr) and tuples (an event's) alike.
        ((["swk", "user", "mfa", "otp"], ("otp",), ("mca",)), ["swk", "user", "mfa", "otp", "mca"]),
    ],
)
def test_merge_amr_keeps_each_value_once_in_the_order_of_the_authentications(
    amrs: tuple[tuple[str, ...] | list[str], ...], merged: list[str]
) -> None:
    assert merge_amr(*amrs) == merged


def test_merge_amr_leaves_its_arguments_alone() -> None:
    stored = ["sms", "mca"]
    assert merge_amr(stored, ("otp",)) == ["sms", "mca", "otp"]
    assert stored == ["sms", "mca"]


# -- order of levels -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("acrs", "best"),
    [
        ([AAL1], AAL1),
        ([AAL1, AAL2], AAL2),
        ([PHR, AAL2, AAL1], PHR),
        ([AAL1, PHRH, PHR], PHRH),
        (["urn:unknown", AAL1], AAL1),
    ],
)
def test_best_acr_follows_the_design_order(acrs: list[str], best: str) -> None:
    assert best_acr(acrs, ISSUER) == best


@pytest.mark.parametrize(
    ("reached", "wanted", "satisfied"),
    [
        (AAL1, AAL1, True),
        (AAL2, AAL1, True),
        (PHR, AAL2, True),
        (PHRH, PHR, True),
        (PHRH, AAL1, True),
        (AAL1, AAL2, False),
        (AAL1, PHR, False),
        (PHR, PHRH, False),
        (PHRH, "urn:unknown", False),
        ("urn:unknown", AAL1, False),
        # Another issuer's level is unknown here.
        (AAL1, "https://other.example/acr/aal1", False),
    ],
)
def test_higher_levels_meet_lower_requests(reached: str, wanted: str, satisfied: bool) -> None:
    assert acr_satisfies(reached, wanted, ISSUER) is satisfied


def test_best_acceptable_keeps_known_values_in_the_clients_order() -> None:
    assert best_acceptable(["urn:x", PHR, AAL1, "urn:y"], ISSUER) == [PHR, AAL1]
    assert best_acceptable(["urn:x"], ISSUER) == []


# -- available methods and the reachable level -----------------------------------------------------------------------


def test_carrier_verification_is_always_available() -> None:
    assert available_methods() == {Method.CARRIER_SMS, Method.CARRIER_APP}


def test_enrolled_totp_is_available() -> None:
    assert available_methods(totp=True) == {Method.CARRIER_SMS, Method.CARRIER_APP, Method.TOTP}


def test_passkeys_are_available_when_registered() -> None:
    methods = available_methods(passkey=True, hardware_passkey=True, totp=True)
    assert methods == {*Method} - {Method.RECOVERY_CODE, Method.PASSKEY_PROVISIONAL}


@pytest.mark.parametrize(
    ("kwargs", "acr"),
    [
        ({}, AAL1),
        ({"totp": True}, AAL1),
        ({"passkey": True}, PHR),
        ({"passkey": True, "totp": True}, PHR),
        ({"hardware_passkey": True}, PHRH),
        ({"passkey": True, "hardware_passkey": True, "totp": True}, PHRH),
    ],
)
def test_reachable_acr(kwargs: dict[str, bool], acr: str) -> None:
    assert reachable_acr(available_methods(**kwargs), ISSUER) == acr


def test_reachable_acr_with_no_method_is_aal1() -> None:
    assert reachable_acr(set(), ISSUER) == AAL1


# -- the best level within max_age -----------------------------------------------------------------------------------


def test_assurance_without_max_age_is_the_best_of_all_events() -> None:
    events = [event(Method.PASSKEY, ago=minutes(120)), event(Method.CARRIER_SMS)]
    assert assurance_within(events, max_age=None, issuer=ISSUER, now=NOW) == (
        PHR,
        ["swk", "user", "mfa", "sms", "mca"],
    )


def test_assurance_counts_only_events_within_max_age() -> None:
    events = [event(Method.PASSKEY, ago=minutes(120)), event(Method.TOTP, ago=minutes(10)), event(Method.CARRIER_SMS)]
    assert assurance_within(events, max_age=3600, issuer=ISSUER, now=NOW) == (AAL1, ["otp", "sms", "mca"])
    assert assurance_within(events, max_age=3 * 3600, issuer=ISSUER, now=NOW) == (
        PHR,
        ["swk", "user", "mfa", "otp", "sms", "mca"],
    )


def test_best_level_within_max_age_wins_over_a_later_weaker_event() -> None:
    events = [event(Method.PASSKEY_HARDWARE, ago=minutes(20)), event(Method.CARRIER_APP, ago=minutes(1))]
    assert assurance_within(events, max_age=1800, issuer=ISSUER, now=NOW) == (PHRH, ["hwk", "user", "mfa", "mca"])


def test_event_exactly_max_age_old_still_counts() -> None:
    events = [event(Method.PASSKEY, ago=minutes(60)), event(Method.CARRIER_SMS)]
    assert assurance_within(events, max_age=3600, issuer=ISSUER, now=NOW)[0] == PHR
    assert assurance_within(events, max_age=3599, issuer=ISSUER, now=NOW)[0] == AAL1


def test_with_no_event_within_max_age_the_last_one_answers() -> None:
    events = [event(Method.PASSKEY, ago=minutes(120)), event(Method.TOTP, ago=minutes(90))]
    assert assurance_within(events, max_age=600, issuer=ISSUER, now=NOW) == (AAL1, ["otp"])


def test_assurance_of_no_events_is_aal1_without_amr() -> None:
    assert assurance_within([], max_age=None, issuer=ISSUER, now=NOW) == (AAL1, [])
    assert assurance_within([], max_age=60, issuer=ISSUER, now=NOW) == (AAL1, [])


# -- session_assurance -----------------------------------------------------------------------------------------------


@pytest.fixture
def session_with_three_events(db: Session) -> LoginSession:
    """A passkey sign-in two hours ago, TOTP ten minutes ago, carrier SMS now."""
    resident = Resident(id=uuid.uuid4(), name="박지훈", phone="+821055556666")
    db.add(resident)
    db.flush()
    started = start_session(
        db, resident, event(Method.PASSKEY, ago=minutes(120)), client_ip=None, user_agent=None, now=NOW - minutes(120)
    )
    add_event(db, started.session, event(Method.TOTP, ago=minutes(10)), issuer=ISSUER, now=NOW - minutes(10))
    add_event(db, started.session, event(Method.CARRIER_SMS), issuer=ISSUER, now=NOW)
    return started.session


def test_session_without_max_age_vouches_for_everything(session_with_three_events: LoginSession) -> None:
    assert session_assurance(session_with_three_events, max_age=None, issuer=ISSUER, now=NOW) == (
        PHR,
        ["swk", "user", "mfa", "otp", "sms", "mca"],
    )


def test_session_amr_grows_in_the_order_of_the_authentications(session_with_three_events: LoginSession) -> None:
    # add_event merges each step-up's values after those already there.
    assert session_with_three_events.amr == ["swk", "user", "mfa", "otp", "sms", "mca"]


def test_a_repeated_method_does_not_move_its_amr_values(db: Session) -> None:
    resident = Resident(id=uuid.uuid4(), name="박지훈", phone="+821055557777")
    db.add(resident)
    db.flush()
    started = start_session(
        db, resident, event(Method.CARRIER_SMS, ago=minutes(20)), client_ip=None, user_agent=None, now=NOW - minutes(20)
    )
    add_event(db, started.session, event(Method.TOTP, ago=minutes(10)), issuer=ISSUER, now=NOW - minutes(10))
    add_event(db, started.session, event(Method.CARRIER_APP), issuer=ISSUER, now=NOW)
    assert started.session.amr == ["sms", "mca", "otp"]
    assert session_assurance(started.session, max_age=None, issuer=ISSUER, now=NOW) == (AAL1, ["sms", "mca", "otp"])
    # Within five minutes only the carrier app counts.
    assert session_assurance(started.session, max_age=300, issuer=ISSUER, now=NOW) == (AAL1, ["mca"])


@pytest.mark.parametrize(
    ("max_age", "acr", "amr"),
    [
        (60, AAL1, ["sms", "mca"]),
        (3600, AAL1, ["otp", "sms", "mca"]),
        (7200, PHR, ["swk", "user", "mfa", "otp", "sms", "mca"]),
    ],
)
def test_session_vouches_for_the_events_within_max_age(
    session_with_three_events: LoginSession, max_age: int, acr: str, amr: list[str]
) -> None:
    assert session_assurance(session_with_three_events, max_age=max_age, issuer=ISSUER, now=NOW) == (acr, amr)


def test_session_keeps_every_event_after_a_reload(db: Session, session_with_three_events: LoginSession) -> None:
    session_id = session_with_three_events.id
    db.expire_all()
    reloaded = db.get(LoginSession, session_id)
    assert reloaded is not None
    assert [AuthEvent.from_json(data).method for data in reloaded.events] == [
        Method.PASSKEY,
        Method.TOTP,
        Method.CARRIER_SMS,
    ]
    assert reloaded.auth_time == NOW
    assert reloaded.amr == ["swk", "user", "mfa", "otp", "sms", "mca"]
    assert session_assurance(reloaded, max_age=3600, issuer=ISSUER, now=NOW + minutes(5)) == (
        AAL1,
        ["otp", "sms", "mca"],
    )
