"""Consent without HTTP: what is asked again, merging grants, withdrawal (tokens revoked, the raw CI dropped when no
service allowed `kr_ci` is left) and the raw CI held in the browser's flow until the resident answers."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import replace
from typing import Any

import pytest
from factories import make_client, make_resident
from sqlalchemy import select
from sqlalchemy.orm import Session

from idp.models import AuditEvent, Client, Consent, Grant, RefreshToken, Resident
from idp.oidc.claims import encrypt_ci
from idp.oidc.consent import (
    RAW_CI_HOLD,
    grant_consent,
    held_ci,
    hold_raw_ci,
    keep_raw_ci,
    list_consents,
    missing_scopes,
    revoke_consent,
)
from idp.oidc.tokens import (
    Authentication,
    access_token_holds,
    grant_of,
    issue_refresh_token,
    new_jti,
    record_grant,
    subject_for,
)
from idp.settings import Settings, data_fernet

NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
CI = "ci-" + "B" * 85


@pytest.fixture
def resident(db: Session) -> Resident:
    return make_resident(db, now=NOW)


@pytest.fixture
def client(db: Session) -> Client:
    return make_client(db, now=NOW, scopes=("openid", "profile", "phone", "kr_ci")).client


def events(db: Session, name: str) -> list[AuditEvent]:
    return list(db.scalars(select(AuditEvent).where(AuditEvent.event == name).order_by(AuditEvent.id)))


# -- asking ----------------------------------------------------------------------------------------------------------


def test_every_scope_is_asked_for_before_any_consent(db: Session, resident: Resident, client: Client) -> None:
    assert missing_scopes(db, resident.id, client, ["openid", "profile"]) == ["openid", "profile"]


def test_only_scopes_not_yet_allowed_are_asked_for(db: Session, resident: Resident, client: Client) -> None:
    grant_consent(db, resident.id, client.id, ["openid", "profile"], now=NOW)
    assert missing_scopes(db, resident.id, client, ["openid", "profile"]) == []
    assert missing_scopes(db, resident.id, client, ["openid", "phone", "profile", "kr_ci"]) == ["phone", "kr_ci"]


def test_consent_to_one_service_or_by_one_resident_does_not_count_for_another(
    db: Session, resident: Resident, client: Client
) -> None:
    other_client = make_client(db, now=NOW, name="다른 서비스").client
    other_resident = make_resident(db, now=NOW, phone="+821000000002")
    grant_consent(db, resident.id, client.id, ["openid", "profile"], now=NOW)
    assert missing_scopes(db, resident.id, other_client, ["openid"]) == ["openid"]
    assert missing_scopes(db, other_resident.id, client, ["openid"]) == ["openid"]


def test_first_party_services_never_ask(db: Session, resident: Resident) -> None:
    first_party = make_client(db, now=NOW, first_party=True).client
    assert missing_scopes(db, resident.id, first_party, ["openid", "profile", "phone"]) == []


# -- granting --------------------------------------------------------------------------------------------------------


def test_consents_merge_into_one_record(db: Session, resident: Resident, client: Client) -> None:
    grant_consent(db, resident.id, client.id, ["profile", "openid"], now=NOW)
    grant_consent(db, resident.id, client.id, ["phone", "openid"], now=NOW + dt.timedelta(days=1))
    db.flush()
    consents = db.scalars(select(Consent).where(Consent.resident_id == resident.id)).all()
    assert len(consents) == 1
    assert consents[0].scopes == ["openid", "phone", "profile"]
    # The first consent's time stays: it says since when the service has had the resident's data.
    assert consents[0].granted_at == NOW
    assert [event.details["scopes"] for event in events(db, "consent.granted")] == [
        ["profile", "openid"],
        ["phone", "openid"],
    ]
    assert all(event.client_id == client.id for event in events(db, "consent.granted"))


def test_consents_are_listed_with_their_services(db: Session, resident: Resident, client: Client) -> None:
    other = make_client(db, now=NOW, name="다른 서비스").client
    grant_consent(db, resident.id, client.id, ["openid"], now=NOW)
    grant_consent(db, resident.id, other.id, ["openid", "phone"], now=NOW)
    db.flush()
    listed = {found.id: consent.scopes for consent, found in list_consents(db, resident.id)}
    assert listed == {client.id: ["openid"], other.id: ["openid", "phone"]}
    assert list_consents(db, uuid.uuid4()) == []


# -- withdrawing -----------------------------------------------------------------------------------------------------


def issue_tokens(db: Session, settings: Settings, client: Client, resident: Resident) -> tuple[dict[str, Any], bytes]:
    """A grant of the client for the resident, with an access token's claims and a refresh token's digest."""
    grant = uuid.uuid4()
    record_grant(
        db, settings, grant_id=grant, client=client, resident_id=resident.id, claims=None, refreshable=True, now=NOW
    )
    access = {"jti": new_jti(grant), "client_id": client.id, "exp": int(NOW.timestamp()) + 600}
    signed_in = Authentication(
        resident=resident,
        sub=subject_for(client, resident.id, settings),
        sid=None,
        acr="aal1",
        amr=["sms"],
        auth_time=NOW,
    )
    issue_refresh_token(
        db, settings, client=client, authentication=signed_in, scope="openid", grant_id=grant, claims=None, now=NOW
    )
    db.flush()
    refresh = db.scalars(select(RefreshToken.digest).where(RefreshToken.grant_id == grant)).one()
    return access, refresh


def revoked(db: Session, tokens: tuple[dict[str, Any], bytes]) -> tuple[bool, bool]:
    db.expire_all()
    refresh = db.get(RefreshToken, tokens[1])
    assert refresh is not None
    return not access_token_holds(db, tokens[0]), refresh.revoked_at is not None


def test_withdrawn_consent_is_asked_for_again_and_the_services_tokens_stop_working(
    db: Session, settings: Settings, resident: Resident, client: Client
) -> None:
    other = make_client(db, now=NOW, name="다른 서비스").client
    grant_consent(db, resident.id, client.id, ["openid", "profile"], now=NOW)
    grant_consent(db, resident.id, other.id, ["openid"], now=NOW)
    mine, others = issue_tokens(db, settings, client, resident), issue_tokens(db, settings, other, resident)
    later = NOW + dt.timedelta(hours=2)

    revoke_consent(db, resident.id, client.id, now=later)

    assert missing_scopes(db, resident.id, client, ["openid", "profile"]) == ["openid", "profile"]
    assert missing_scopes(db, resident.id, other, ["openid"]) == []
    assert revoked(db, mine) == (True, True)
    assert db.get(Grant, grant_of(mine[0]["jti"])).revoked_at == later  # type: ignore[union-attr]
    assert revoked(db, others) == (False, False)
    assert [event.client_id for event in events(db, "consent.revoked")] == [client.id]


def test_withdrawing_the_last_kr_ci_consent_drops_the_raw_ci(
    db: Session, settings: Settings, resident: Resident, client: Client
) -> None:
    ordinary = make_client(db, now=NOW, name="다른 서비스").client
    grant_consent(db, resident.id, client.id, ["openid", "kr_ci"], now=NOW)
    grant_consent(db, resident.id, ordinary.id, ["openid", "profile"], now=NOW)
    keep_raw_ci(db, resident, encrypt_ci(CI, settings), client_id=client.id)
    assert [event.client_id for event in events(db, "ci.kept")] == [client.id]

    revoke_consent(db, resident.id, client.id, now=NOW)

    assert resident.ci_encrypted is None
    assert [event.client_id for event in events(db, "ci.dropped")] == [client.id]


def test_raw_ci_stays_while_another_service_is_allowed_kr_ci(
    db: Session, settings: Settings, resident: Resident, client: Client
) -> None:
    welfare = make_client(db, now=NOW, name="복지급여", scopes=("openid", "kr_ci")).client
    ordinary = make_client(db, now=NOW, name="다른 서비스").client
    grant_consent(db, resident.id, client.id, ["openid", "kr_ci"], now=NOW)
    grant_consent(db, resident.id, welfare.id, ["openid", "kr_ci"], now=NOW)
    grant_consent(db, resident.id, ordinary.id, ["openid"], now=NOW)
    kept = encrypt_ci(CI, settings)
    keep_raw_ci(db, resident, kept, client_id=client.id)

    revoke_consent(db, resident.id, client.id, now=NOW)
    revoke_consent(db, resident.id, ordinary.id, now=NOW)
    assert resident.ci_encrypted == kept
    assert events(db, "ci.dropped") == []

    revoke_consent(db, resident.id, welfare.id, now=NOW)
    assert resident.ci_encrypted is None
    assert [event.client_id for event in events(db, "ci.dropped")] == [welfare.id]


def test_withdrawing_without_a_kept_ci_records_no_drop(db: Session, resident: Resident, client: Client) -> None:
    grant_consent(db, resident.id, client.id, ["openid"], now=NOW)
    revoke_consent(db, resident.id, client.id, now=NOW)
    assert events(db, "ci.dropped") == []
    assert len(events(db, "consent.revoked")) == 1


# -- the raw CI held until the resident answers ----------------------------------------------------------------------
# Fernet stamps the hold with the real time of encryption, so these tests read the clock once and judge from it.


def test_held_ci_is_returned_for_its_resident_and_service_while_fresh(
    settings: Settings, resident: Resident, client: Client
) -> None:
    before = dt.datetime.now(dt.UTC)
    held = hold_raw_ci(CI, resident_id=resident.id, client_id=client.id, settings=settings)
    assert CI not in str(held)
    assert held["resident"] == str(resident.id)
    assert held["client"] == client.id
    found = held_ci(
        held,
        resident_id=resident.id,
        client_id=client.id,
        settings=settings,
        now=before + RAW_CI_HOLD - dt.timedelta(seconds=1),
    )
    assert found is not None
    assert data_fernet(settings).decrypt(found).decode() == CI


def test_held_ci_expires_with_the_flow(settings: Settings, resident: Resident, client: Client) -> None:
    held = hold_raw_ci(CI, resident_id=resident.id, client_id=client.id, settings=settings)
    now = dt.datetime.now(dt.UTC)
    assert held_ci(held, resident_id=resident.id, client_id=client.id, settings=settings, now=now) is not None
    # Fernet's ttl: a token is too old once its time plus the ttl is before now.
    stale = now + RAW_CI_HOLD + dt.timedelta(seconds=2)
    assert held_ci(held, resident_id=resident.id, client_id=client.id, settings=settings, now=stale) is None


def test_held_ci_is_bound_to_its_resident_and_service(
    db: Session, settings: Settings, resident: Resident, client: Client
) -> None:
    now = dt.datetime.now(dt.UTC)
    held = hold_raw_ci(CI, resident_id=resident.id, client_id=client.id, settings=settings)
    other_client = make_client(db, now=NOW, name="다른 서비스").client
    assert held_ci(held, resident_id=uuid.uuid4(), client_id=client.id, settings=settings, now=now) is None
    assert held_ci(held, resident_id=resident.id, client_id=other_client.id, settings=settings, now=now) is None


@pytest.mark.parametrize(
    "change",
    [
        lambda held: None,
        lambda held: "not a dict",
        lambda held: {**held, "ci": 42},
        lambda held: {key: value for key, value in held.items() if key != "ci"},
        lambda held: {**held, "ci": held["ci"][:-4] + "AAAA"},
    ],
    ids=["none", "text", "number-ci", "no-ci", "changed-ci"],
)
def test_a_hold_of_another_shape_holds_nothing(
    settings: Settings, resident: Resident, client: Client, change: object
) -> None:
    now = dt.datetime.now(dt.UTC)
    held = hold_raw_ci(CI, resident_id=resident.id, client_id=client.id, settings=settings)
    changed = change(held)  # type: ignore[operator]
    assert held_ci(changed, resident_id=resident.id, client_id=client.id, settings=settings, now=now) is None


def test_a_hold_made_under_another_data_key_holds_nothing(
    settings: Settings, resident: Resident, client: Client
) -> None:
    now = dt.datetime.now(dt.UTC)
    previous = replace(settings, data_key="the previous data key")
    held = hold_raw_ci(CI, resident_id=resident.id, client_id=client.id, settings=previous)
    assert held_ci(held, resident_id=resident.id, client_id=client.id, settings=settings, now=now) is None
