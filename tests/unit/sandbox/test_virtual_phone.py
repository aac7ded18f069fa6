"""The virtual phone pages: SMS messages, app approvals with number matching, and the index."""

from __future__ import annotations

import re

import pytest
from sandbox_support import KIM, LEE, AgencyClient


def page(agency: AgencyClient, path: str) -> str:
    response = agency.http.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    return response.get_data(as_text=True)


def test_the_index_links_every_shipped_phone(agency: AgencyClient) -> None:
    html = page(agency, "/")
    assert '<html lang="ko">' in html
    lines = agency.http.get("/sandbox/residents").json
    assert lines is not None
    for line in lines:
        assert f'href="/phone/{line["phone"]}"' in html


def test_the_phone_page_shows_messages_newest_first(agency: AgencyClient) -> None:
    first = agency.start_txn()
    agency.advance_clock(30)
    agency.resend(first)
    codes = [message["code"] for message in agency.outbox(KIM["phone"])]
    html = page(agency, f"/phone/{KIM['phone']}")
    assert html.index(f'class="code">{codes[1]}<') < html.index(f'class="code">{codes[0]}<')
    assert "[경기도 통합 로그인]" in html
    assert "김경기" in html
    # Only this number's messages.
    agency.start_txn(LEE)
    assert agency.outbox(LEE["phone"])[0]["code"] not in page(agency, f"/phone/{KIM['phone']}").split("<main>")[1]


def test_a_typed_number_redirects_to_the_e164_page(agency: AgencyClient) -> None:
    response = agency.http.get("/phone/010-0000-0001")
    assert response.status_code == 308
    assert response.headers["Location"] == "/phone/+821000000001"


def test_a_page_for_something_that_is_not_a_phone_number_is_not_found(agency: AgencyClient) -> None:
    assert agency.http.get("/phone/hello").status_code == 404


def test_an_unknown_number_has_an_empty_phone(agency: AgencyClient) -> None:
    html = page(agency, "/phone/+821099999999")
    assert "No sandbox resident has this number" in html


def test_an_approval_offers_the_match_number_among_two_decoys_and_a_deny_button(agency: AgencyClient) -> None:
    started = agency.start(method="app").json
    assert started is not None
    choices = agency.approval_choices(KIM["phone"], started["txn_id"])
    assert len(choices) == 3
    assert len(set(choices)) == 3
    assert started["match_number"] in choices
    assert all(re.fullmatch(r"[1-9][0-9]", choice) for choice in choices)
    html = page(agency, f"/phone/{KIM['phone']}")
    assert 'name="deny" value="1"' in html
    assert "<legend>" in html
    # Every button has an accessible name that contains its visible text.
    for choice in choices:
        assert f'aria-label="{choice} 선택 (choose {choice})">{choice}</button>' in html


def test_picking_the_match_number_approves(agency: AgencyClient) -> None:
    started = agency.start(method="app").json
    assert started is not None
    response = agency.answer(KIM["phone"], started["txn_id"], number=started["match_number"])
    assert response.status_code == 303
    assert response.headers["Location"] == "/phone/+821000000001?notice=approved"
    assert "Approved" in page(agency, response.headers["Location"])
    assert agency.poll(started["txn_id"]).json["status"] == "verified"  # type: ignore[index]
    assert agency.approval_choices(KIM["phone"], started["txn_id"]) == []


def test_deny_wins_over_a_number_in_the_same_form(agency: AgencyClient) -> None:
    started = agency.start(method="app").json
    assert started is not None
    response = agency.answer(KIM["phone"], started["txn_id"], number=started["match_number"], deny="1")
    assert response.headers["Location"].endswith("notice=denied")
    assert agency.poll(started["txn_id"]).json["error"] == "user_denied"  # type: ignore[index]


def test_an_approval_cannot_be_answered_from_another_phone(agency: AgencyClient) -> None:
    started = agency.start(method="app").json
    assert started is not None
    response = agency.answer(LEE["phone"], started["txn_id"], number=started["match_number"])
    assert response.headers["Location"].endswith("notice=closed")
    assert agency.poll(started["txn_id"]).json["status"] == "pending"  # type: ignore[index]


def test_an_expired_approval_cannot_be_answered(agency: AgencyClient) -> None:
    started = agency.start(method="app").json
    assert started is not None
    agency.advance_clock(180)
    response = agency.answer(KIM["phone"], started["txn_id"], number=started["match_number"])
    assert response.headers["Location"].endswith("notice=closed")


def test_an_answer_without_a_number_or_deny_is_a_bad_request(agency: AgencyClient) -> None:
    txn_id = agency.start_txn(method="app")
    assert agency.answer(KIM["phone"], txn_id).status_code == 400


def test_pages_allow_no_scripts(agency: AgencyClient) -> None:
    response = agency.http.get(f"/phone/{KIM['phone']}")
    policy = response.headers["Content-Security-Policy"]
    assert "script-src" not in policy
    assert "default-src 'none'" in policy
    assert "<script" not in response.get_data(as_text=True)


# -- the phone's own buttons in a real browser ---------------------------------------------------------------------

# What Chromium sends with a form posted by a page of the same origin that says `Referrer-Policy: no-referrer`: the
# Fetch standard serialises the origin as "null" under that policy.
CHROMIUM_SAME_ORIGIN_NO_REFERRER = {"Sec-Fetch-Site": "same-origin", "Origin": "null"}


def test_the_phones_own_buttons_are_accepted_from_chromium(agency: AgencyClient) -> None:
    started = agency.start(method="app").json
    assert started is not None
    response = agency.http.post(
        f"/phone/{KIM['phone']}/approvals/{started['txn_id']}",
        data={"number": started["match_number"]},
        headers=CHROMIUM_SAME_ORIGIN_NO_REFERRER,
    )
    assert response.status_code == 303, response.get_data(as_text=True)
    assert response.headers["Location"].endswith("notice=approved")


def test_phone_pages_send_their_origin_only_to_themselves(agency: AgencyClient) -> None:
    # `same-origin`: the phone's own forms carry a real Origin (browsers without Sec-Fetch-Site need it), and no
    # other site learns a phone number from a Referer.
    for path in ("/", f"/phone/{KIM['phone']}"):
        assert agency.http.get(path).headers["Referrer-Policy"] == "same-origin", path


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://localhost:8000"},
        # Sec-Fetch-Site says where the request came from; an Origin that is not ours cannot be outvoted by it.
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://evil.example"},
        # Browsers without Sec-Fetch-Site: the Origin decides, and an opaque origin is not ours.
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
    ],
    ids=["cross-site", "same-site", "foreign-origin", "foreign-origin-only", "null-origin-only"],
)
def test_a_post_from_another_site_is_refused(agency: AgencyClient, headers: dict[str, str]) -> None:
    started = agency.start(method="app").json
    assert started is not None
    response = agency.http.post(
        f"/phone/{KIM['phone']}/approvals/{started['txn_id']}",
        data={"number": started["match_number"]},
        headers=headers,
    )
    assert response.status_code == 403
    assert agency.poll(started["txn_id"]).json["status"] == "pending"  # type: ignore[index]


def test_picking_a_wrong_number_says_so_on_the_phone(agency: AgencyClient) -> None:
    started = agency.start(method="app").json
    assert started is not None
    decoy = next(n for n in agency.approval_choices(KIM["phone"], started["txn_id"]) if n != started["match_number"])
    response = agency.answer(KIM["phone"], started["txn_id"], number=decoy)
    assert response.headers["Location"].endswith("notice=mismatch")
    html = page(agency, response.headers["Location"])
    assert "로그인 화면의 숫자와 다릅니다" in html


def test_the_approval_names_the_idp_as_its_pages_do(agency: AgencyClient) -> None:
    agency.start(method="app")
    html = page(agency, f"/phone/{KIM['phone']}")
    assert "경기도 통합 로그인 본인확인 요청" in html
    assert "통합인증" not in html
