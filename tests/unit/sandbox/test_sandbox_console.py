"""The sandbox-only endpoints: outbox, residents (shipped and added), CI re-issue, clock and reset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sandbox_support import (
    HAN_LGU_MVNO,
    ISSUER,
    KANG_REISSUED,
    KIM,
    LEE,
    SITE_CODE,
    SITE_SECRET,
    YOON_LGU_MVNO,
    YOON_SKT,
    AgencyClient,
    resident,
)

from idp.sandbox import create_app

NEW_RESIDENT = {
    "name": "문평택",
    "birthdate": "2000-01-01",
    "rrn_digit7": "4",
    "phone": "010-0000-0100",
    "carrier": "KT",
}


def add(agency: AgencyClient, **fields: Any) -> dict[str, Any]:
    response = agency.http.post("/sandbox/residents", json={**NEW_RESIDENT, **fields})
    assert response.status_code == 201, response.json
    line: dict[str, Any] = response.json  # type: ignore[assignment]
    return line


# -- outbox ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("typed", ["010-0000-0001", "01000000001", "+82 10 0000 0001", "+821000000001"])
def test_the_outbox_filter_takes_any_form_a_resident_types(agency: AgencyClient, typed: str) -> None:
    agency.start_txn(KIM)
    agency.start_txn(LEE)
    messages = agency.outbox(typed)
    assert [message["phone"] for message in messages] == ["+821000000001"]


def test_the_outbox_lists_every_message_oldest_first(agency: AgencyClient) -> None:
    first = agency.start_txn(KIM)
    agency.advance_clock(5)
    second = agency.start_txn(LEE)
    messages = agency.outbox()
    assert [message["txn_id"] for message in messages] == [first, second]
    assert set(messages[0]) == {"phone", "text", "code", "txn_id", "sent_at"}
    assert messages[0]["sent_at"] < messages[1]["sent_at"]
    assert messages[0]["sent_at"].endswith("Z")


def test_an_outbox_filter_that_is_not_a_phone_number_is_refused(agency: AgencyClient) -> None:
    response = agency.http.get("/sandbox/outbox?phone=02-123-4567")
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"  # type: ignore[index]


# -- residents ---------------------------------------------------------------------------------------------------


def test_the_shipped_residents_cover_the_edge_cases(agency: AgencyClient) -> None:
    lines: list[dict[str, Any]] = agency.http.get("/sandbox/residents").json  # type: ignore[assignment]
    assert all(line["source"] == "shipped" and line["note"] for line in lines)
    assert all(line["phone"].startswith("+8210") and len(line["phone"]) == 13 for line in lines)
    assert len({line["phone"] for line in lines}) == len(lines)
    carriers = {line["carrier"] for line in lines}
    assert carriers == {"SKT", "KT", "LGU", "SKT_MVNO", "KT_MVNO", "LGU_MVNO"}
    assert any(line["rrn_digit7"] in "5678" for line in lines)
    assert any(not line["eligible"] for line in lines)
    assert any(line["carrier"].endswith("_MVNO") and not line["has_app"] for line in lines)
    assert any(line["ci_version"] > 1 for line in lines)
    people = [line["person_id"] for line in lines]
    assert any(people.count(person) == 2 for person in people)
    assert all(len(line["ci"]) == 88 for line in lines)


def test_one_person_with_two_lines_gets_one_ci(agency: AgencyClient) -> None:
    skt = agency.verify_by_sms(YOON_SKT)
    mvno = agency.verify_by_sms(YOON_LGU_MVNO)
    assert (skt["carrier"], mvno["carrier"]) == ("SKT", "LGU_MVNO")
    assert skt["ci"] == mvno["ci"]
    assert skt["di"] == mvno["di"]
    assert agency.verify_by_sms(KIM)["ci"] != skt["ci"]


def test_mvno_lines_verify_with_their_own_carrier(agency: AgencyClient) -> None:
    assert agency.verify_by_sms(HAN_LGU_MVNO)["carrier"] == "LGU_MVNO"


def test_an_added_resident_can_verify(agency: AgencyClient) -> None:
    line = add(agency)
    assert line["phone"] == "+821000000100"
    assert line["person_id"]
    assert line["source"] == "added"
    assert line["has_app"] is True
    assert line["eligible"] is True
    claims = agency.verify_by_sms(resident("KT", "문평택", "2000-01-01", "4", "+821000000100"))
    assert (claims["sex"], claims["nationality"]) == ("F", "KR")
    assert claims["ci"] == line["ci"]


def test_added_residents_ci_and_signing_key_survive_a_restart(agency: AgencyClient, state_dir: Path) -> None:
    line = add(agency, person_id="p-restart")
    kid = agency.http.get("/v1/jwks").json["keys"][0]["kid"]  # type: ignore[index]
    restarted = create_app(state_dir, issuer=ISSUER, site_code=SITE_CODE, site_secret=SITE_SECRET).test_client()
    lines = restarted.get("/sandbox/residents").json
    assert lines is not None
    assert [entry for entry in lines if entry["person_id"] == "p-restart"] == [line]
    assert restarted.get("/v1/jwks").json["keys"][0]["kid"] == kid  # type: ignore[index]
    assert oct((state_dir / "residents.json").stat().st_mode & 0o777) == "0o600"
    assert oct((state_dir / "signing-key.pem").stat().st_mode & 0o777) == "0o600"
    assert oct((state_dir / "ci-secret").stat().st_mode & 0o777) == "0o600"


def test_a_new_state_folder_gives_new_cis(agency: AgencyClient, tmp_path: Path) -> None:
    ci = agency.verify_by_sms()["ci"]
    other = create_app(tmp_path / "other", issuer=ISSUER, site_code=SITE_CODE, site_secret=SITE_SECRET)
    lines = other.test_client().get("/sandbox/residents").json
    assert lines is not None
    assert lines[0]["ci"] != ci


def test_a_second_line_for_an_existing_person_shares_the_ci(agency: AgencyClient) -> None:
    line = add(agency, **{**KIM, "phone": "010-0000-0101", "carrier": "LGU"}, person_id="p-kim-gyeonggi")
    kim = agency.verify_by_sms(KIM)
    second = agency.verify_by_sms({**KIM, "phone": "+821000000101", "carrier": "LGU"})
    assert kim["ci"] == second["ci"] == line["ci"]


def test_a_second_line_must_match_its_person(agency: AgencyClient) -> None:
    response = agency.http.post(
        "/sandbox/residents", json={**NEW_RESIDENT, "person_id": "p-kim-gyeonggi", "name": "다른사람"}
    )
    assert response.status_code == 400
    assert "p-kim-gyeonggi" in response.json["message"]  # type: ignore[index]


def test_a_number_that_already_has_a_holder_cannot_be_added(agency: AgencyClient) -> None:
    response = agency.http.post("/sandbox/residents", json={**NEW_RESIDENT, "phone": "010-0000-0001"})
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"  # type: ignore[index]


@pytest.mark.parametrize(
    "fields",
    [
        {"name": ""},
        {"name": None},
        {"birthdate": "2000-02-30"},
        {"birthdate": "01/01/2000"},
        {"rrn_digit7": "9"},
        {"rrn_digit7": "1"},  # a 1 is for people born in the 1900s
        {"rrn_digit7": 4},
        {"phone": "02-123-4567"},
        {"carrier": "LG"},
        {"has_app": "yes"},
        {"eligible": 0},
        {"person_id": "has spaces"},
        {"person_id": 7},
        {"note": "x" * 301},
    ],
)
def test_a_malformed_resident_is_refused(agency: AgencyClient, fields: dict[str, object]) -> None:
    body = {key: value for key, value in {**NEW_RESIDENT, **fields}.items() if value is not None}
    response = agency.http.post("/sandbox/residents", json=body)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"  # type: ignore[index]
    assert response.json["message"]  # type: ignore[index]


def test_residents_must_be_sent_as_json(agency: AgencyClient) -> None:
    # A cross-site form post cannot send application/json, so other pages cannot add residents.
    response = agency.http.post("/sandbox/residents", data=NEW_RESIDENT)
    assert response.status_code == 400
    response = agency.http.post("/sandbox/residents", data=json.dumps(NEW_RESIDENT), content_type="text/plain")
    assert response.status_code == 400


# -- CI re-issue -------------------------------------------------------------------------------------------------


def test_a_ci_reissue_gives_a_new_ci_and_the_old_one_as_previous(agency: AgencyClient) -> None:
    before = agency.verify_by_sms()
    response = agency.http.post("/sandbox/residents/p-kim-gyeonggi/reissue-ci")
    assert response.status_code == 200
    assert response.json["ci_version"] == 2  # type: ignore[index]
    after = agency.verify_by_sms()
    assert after["ci"] != before["ci"]
    assert after["ci_previous"] == before["ci"]
    assert response.json["ci"] == after["ci"]  # type: ignore[index]
    assert after["di"] == before["di"]  # the DI is per site, not versioned


def test_the_shipped_reissued_person_carries_ci_previous(agency: AgencyClient) -> None:
    first = agency.verify_by_sms(KANG_REISSUED)
    assert first["ci_previous"] != first["ci"]
    agency.http.post("/sandbox/residents/p-kang-hwaseong/reissue-ci")
    second = agency.verify_by_sms(KANG_REISSUED)
    assert second["ci_previous"] == first["ci"]


def test_a_ci_reissue_survives_a_restart(agency: AgencyClient, state_dir: Path) -> None:
    agency.http.post("/sandbox/residents/p-kim-gyeonggi/reissue-ci")
    ci = agency.verify_by_sms()["ci"]
    restarted = create_app(state_dir, issuer=ISSUER, site_code=SITE_CODE, site_secret=SITE_SECRET).test_client()
    lines = restarted.get("/sandbox/residents").json
    assert lines is not None
    kim = next(line for line in lines if line["person_id"] == "p-kim-gyeonggi")
    assert (kim["ci_version"], kim["ci"]) == (2, ci)


def test_reissuing_the_ci_of_an_unknown_person_is_not_found(agency: AgencyClient) -> None:
    response = agency.http.post("/sandbox/residents/p-nobody/reissue-ci")
    assert response.status_code == 404
    assert response.json["error"] == "invalid_request"  # type: ignore[index]


# -- clock and reset ---------------------------------------------------------------------------------------------


def test_the_clock_advances_and_resets(agency: AgencyClient) -> None:
    start = agency.http.get("/sandbox/clock").json
    assert start is not None
    assert start["offset"] == 0
    advanced = agency.http.post("/sandbox/clock", json={"advance": 90.5}).json
    assert advanced is not None
    assert advanced["offset"] == 90.5
    assert advanced["now"] > start["now"]
    reset = agency.http.post("/sandbox/clock", json={"reset": True}).json
    assert reset is not None
    assert reset["offset"] == 0


@pytest.mark.parametrize(
    "body", [{}, {"advance": -1}, {"advance": "60"}, {"advance": True}, {"advance": 1e12}, {"reset": False}]
)
def test_a_malformed_clock_change_is_refused(agency: AgencyClient, body: dict[str, object]) -> None:
    response = agency.http.post("/sandbox/clock", json=body)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"  # type: ignore[index]


def test_reset_clears_transactions_outbox_limits_faults_and_clock(agency: AgencyClient) -> None:
    add(agency)
    txn_id = agency.start_txn()
    for _ in range(9):
        agency.start()
    assert agency.start().status_code == 429
    agency.fault("down")
    agency.advance_clock(500)
    response = agency.http.post("/sandbox/reset")
    assert response.status_code == 200
    assert agency.outbox() == []
    assert agency.http.get("/sandbox/faults").json == {"mode": "none", "remaining": None}
    assert agency.http.get("/sandbox/clock").json["offset"] == 0  # type: ignore[index]
    assert agency.confirm(txn_id, "123456").status_code == 404
    assert agency.start().status_code == 201
    lines = agency.http.get("/sandbox/residents").json
    assert lines is not None
    assert any(line["phone"] == "+821000000100" for line in lines)
