"""Claims without HTTP: what each scope releases, the `claims` request parameter, pairwise subjects, the raw CI and
verified claims (OpenID Connect for Identity Assurance)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest
from factories import make_client, make_resident
from sqlalchemy.orm import Session

from idp.models import Client, Resident
from idp.oidc.claims import (
    IDENTITY_TRUST_FRAMEWORK,
    allowed_claims,
    decrypt_ci,
    encrypt_ci,
    id_token_claims,
    pairwise_sub,
    resident_claims,
    verified_claims,
)
from idp.settings import Settings

NOW = dt.datetime(2026, 11, 26, 6, 0, tzinfo=dt.UTC)
VERIFIED = dt.datetime(2026, 11, 26, 5, 58, 30, tzinfo=dt.UTC)
CI = "ci-" + "A" * 85  # the agencies' CI is 88 characters of base64


@pytest.fixture
def resident(db: Session) -> Resident:
    return make_resident(db, now=VERIFIED)


@pytest.fixture
def client(db: Session) -> Client:
    return make_client(db, now=NOW, scopes=("openid", "profile", "phone", "offline_access", "kr_ci")).client


def claims_for(
    resident: Resident,
    client: Client,
    settings: Settings,
    scope: str,
    *,
    request: dict[str, Any] | None = None,
    member: str = "id_token",
    include_scope_claims: bool = True,
) -> dict[str, Any]:
    return resident_claims(
        resident,
        scope=scope,
        claims_request=request,
        member=member,
        client=client,
        settings=settings,
        include_scope_claims=include_scope_claims,
    )


# -- scopes ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("openid", {}),
        ("openid profile", {"name": "김경기", "birthdate": "1985-03-14"}),
        ("openid phone", {"phone_number": "+821000000001", "phone_number_verified": True}),
        (
            "openid profile phone offline_access",
            {
                "name": "김경기",
                "birthdate": "1985-03-14",
                "phone_number": "+821000000001",
                "phone_number_verified": True,
            },
        ),
    ],
    ids=["openid", "profile", "phone", "all"],
)
def test_each_scope_releases_its_claims(
    resident: Resident, client: Client, settings: Settings, scope: str, expected: dict[str, Any]
) -> None:
    assert claims_for(resident, client, settings, scope) == expected


def test_values_the_resident_lacks_are_left_out_and_no_phone_is_not_verified(
    db: Session, client: Client, settings: Settings
) -> None:
    resident = make_resident(db, now=VERIFIED, birthdate=None, phone=None)
    assert claims_for(resident, client, settings, "openid profile phone") == {
        "name": "김경기",
        "phone_number_verified": False,
    }


def test_allowed_claims_are_those_of_the_scopes(settings: Settings) -> None:
    assert allowed_claims(["openid", "profile"]) == {"sub", "name", "birthdate"}
    assert allowed_claims(["offline_access"]) == set()
    assert allowed_claims(["kr_ci", "phone"]) == {"kr_ci", "phone_number", "phone_number_verified"}


# -- the claims request parameter (OIDC Core §5.5) -------------------------------------------------------------------


def test_claims_parameter_picks_claims_of_the_granted_scopes(
    resident: Resident, client: Client, settings: Settings
) -> None:
    request = {"userinfo": {"phone_number": None}, "id_token": {"name": {"essential": True}}}
    # UserInfo without scope claims: only what its member names.
    assert claims_for(
        resident,
        client,
        settings,
        "openid profile phone",
        request=request,
        member="userinfo",
        include_scope_claims=False,
    ) == {"phone_number": "+821000000001"}
    assert claims_for(
        resident, client, settings, "openid profile phone", request=request, include_scope_claims=False
    ) == {"name": "김경기"}


def test_claims_parameter_cannot_reach_past_the_granted_scopes(
    resident: Resident, client: Client, settings: Settings
) -> None:
    resident.ci_encrypted = encrypt_ci(CI, settings)
    request = {"id_token": {"phone_number": None, "birthdate": None, "kr_ci": None, "locked_at": None}}
    # The consent was for the scopes: a claim of a scope not granted stays out, even for a client allowed it.
    assert claims_for(resident, client, settings, "openid profile", request=request) == {
        "name": "김경기",
        "birthdate": "1985-03-14",
    }


@pytest.mark.parametrize(
    "request_",
    [None, {}, {"id_token": "phone_number"}, {"id_token": ["phone_number"]}, {"id_token": None}],
    ids=["none", "empty", "text-member", "list-member", "null-member"],
)
def test_a_claims_request_of_another_shape_asks_for_nothing_more(
    resident: Resident, client: Client, settings: Settings, request_: dict[str, Any] | None
) -> None:
    assert claims_for(resident, client, settings, "openid", request=request_) == {}


def test_id_token_claims_are_the_scope_claims_and_the_id_token_member(
    resident: Resident, client: Client, settings: Settings
) -> None:
    request = {"id_token": {"phone_number": None}, "userinfo": {"name": None}}
    assert id_token_claims(resident, "openid phone", request, client, settings) == {
        "phone_number": "+821000000001",
        "phone_number_verified": True,
    }
    assert id_token_claims(resident, "openid", request, client, settings) == {}


# -- pairwise subjects (OIDC Core §8.1) ------------------------------------------------------------------------------


def test_pairwise_sub_is_stable_per_sector_and_resident() -> None:
    sub = pairwise_sub("minwon.suwon.example", "resident-1", "secret")
    assert sub == pairwise_sub("minwon.suwon.example", "resident-1", "secret")
    assert len(sub) == 43  # 256 bits in base64url, no padding
    assert set(sub) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    others = {
        pairwise_sub("welfare.gg.example", "resident-1", "secret"),
        pairwise_sub("minwon.suwon.example", "resident-2", "secret"),
        pairwise_sub("minwon.suwon.example", "resident-1", "another secret"),
    }
    assert sub not in others
    assert len(others) == 3


def test_pairwise_sub_keeps_sector_and_resident_apart() -> None:
    # The separator keeps ("ab", "c") and ("a", "bc") apart: no two sectors can be made to collide.
    assert pairwise_sub("ab", "c", "secret") != pairwise_sub("a", "bc", "secret")


# -- the raw CI (kr_ci) ----------------------------------------------------------------------------------------------


def test_raw_ci_is_released_with_the_kr_ci_scope_when_kept(
    resident: Resident, client: Client, settings: Settings
) -> None:
    resident.ci_encrypted = encrypt_ci(CI, settings)
    assert CI.encode() not in resident.ci_encrypted
    assert claims_for(resident, client, settings, "openid kr_ci") == {"kr_ci": CI}
    assert "kr_ci" not in claims_for(resident, client, settings, "openid profile phone")


def test_kr_ci_scope_releases_nothing_when_no_ci_is_kept(
    resident: Resident, client: Client, settings: Settings
) -> None:
    assert resident.ci_encrypted is None
    assert claims_for(resident, client, settings, "openid kr_ci") == {}


def test_kr_ci_is_released_only_when_asked_for_by_scope_or_claims_request(
    resident: Resident, client: Client, settings: Settings
) -> None:
    resident.ci_encrypted = encrypt_ci(CI, settings)
    assert claims_for(resident, client, settings, "openid kr_ci", include_scope_claims=False) == {}
    asked = {"userinfo": {"kr_ci": None}}
    assert claims_for(
        resident, client, settings, "openid kr_ci", request=asked, member="userinfo", include_scope_claims=False
    ) == {"kr_ci": CI}


def test_ci_encrypted_under_another_data_key_is_not_released(
    resident: Resident, client: Client, settings: Settings
) -> None:
    resident.ci_encrypted = encrypt_ci(CI, replace(settings, data_key="the previous data key"))
    assert decrypt_ci(resident, settings) is None
    assert claims_for(resident, client, settings, "openid kr_ci") == {}


# -- verified claims (OpenID Connect for Identity Assurance 1.0) -----------------------------------------------------


def test_verified_claims_name_the_agencys_verification(resident: Resident) -> None:
    assert verified_claims(resident) == {
        "verification": {
            "trust_framework": IDENTITY_TRUST_FRAMEWORK,
            "time": "2026-11-26T05:58:30Z",
            "verification_process": "sandbox",
        },
        "claims": {"name": "김경기", "birthdate": "1985-03-14"},
    }


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({"claims": {"name": None}}, {"name": "김경기"}),
        ({"claims": {"birthdate": {"essential": True}}}, {"birthdate": "1985-03-14"}),
        ({"claims": {}}, {"name": "김경기", "birthdate": "1985-03-14"}),
        (None, {"name": "김경기", "birthdate": "1985-03-14"}),
        ({"claims": {"phone_number": None}}, {}),
    ],
    ids=["name", "birthdate", "empty-claims", "null", "unknown-claim"],
)
def test_verified_claims_keep_to_the_inner_claims_asked_for(
    resident: Resident, request_: object, expected: dict[str, str]
) -> None:
    assert verified_claims(resident, request_)["claims"] == expected


def test_verified_claims_come_only_when_asked_for_with_profile(
    db: Session, resident: Resident, client: Client, settings: Settings
) -> None:
    request = {"id_token": {"verified_claims": {"claims": {"name": None}}}}
    released = claims_for(resident, client, settings, "openid profile", request=request, include_scope_claims=False)
    assert released == {"verified_claims": verified_claims(resident, {"claims": {"name": None}})}
    assert claims_for(resident, client, settings, "openid profile", include_scope_claims=False) == {}
    # Without profile the name and birth date were not consented to, verified or not.
    assert claims_for(resident, client, settings, "openid phone", request=request) == {
        "phone_number": "+821000000001",
        "phone_number_verified": True,
    }
    never_verified = make_resident(db, now=NOW, phone="+821000000002", verified_at=None)
    assert "verified_claims" not in claims_for(never_verified, client, settings, "openid profile", request=request)
