"""The consent page: a decision covers the request and the resident it was shown for, and nothing more."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from oidc_flow import KIM_E164, REDIRECT, REQUEST_ID, basic, csrf_of, decode, pkce, register, sign_in
from sandbox_agency import SandboxAgency
from sqlalchemy import select

from idp.models import Consent, Resident
from idp.runtime import of as runtime_of
from idp.settings import Settings

LEE = {"carrier": "KT", "name": "이수원", "birthdate": "1992-11-02", "rrn_digit7": "2", "phone": "010-0000-0002"}
LEE_E164 = "+821000000002"
ALL_SCOPES = "openid profile phone offline_access"


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Flask:
    app = make_app(replace(settings, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


def authorize_url(client_id: str, challenge: str, *, scope: str, state: str = "s1", nonce: str = "n1") -> str:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    return "/authorize?" + urlencode(query)


def consent_page(browser: FlaskClient, url: str) -> str:
    page = browser.get(url)
    assert page.status_code == 200, page.get_data(as_text=True)[-500:]
    html = page.get_data(as_text=True)
    assert REQUEST_ID.search(html), html[-500:]
    return html


def answer(browser: FlaskClient, html: str, decision: str) -> str:
    request_id = REQUEST_ID.search(html)
    assert request_id
    answered = browser.post(
        "/consent", data={"csrf_token": csrf_of(html), "request_id": request_id.group(1), "decision": decision}
    )
    assert answered.status_code == 303, answered.get_data(as_text=True)[-500:]
    return answered.headers["Location"]


def granted_scopes(app: Flask, phone: str) -> set[str]:
    with runtime_of(app).sessions() as db:
        consent = db.scalar(
            select(Consent).join(Resident, Resident.id == Consent.resident_id).where(Resident.phone == phone)
        )
        return set(consent.scopes) if consent else set()


def test_allow_grants_only_the_scopes_its_page_listed(app: Flask, sandbox: SandboxAgency) -> None:
    created = register(app)
    browser = app.test_client()
    sign_in(browser, sandbox)
    verifier, challenge = pkce()
    page_a = consent_page(browser, authorize_url(created.client.id, challenge, scope="openid"))
    # A second request with the same state and nonce, asking for everything, opens its own page.
    consent_page(browser, authorize_url(created.client.id, challenge, scope=ALL_SCOPES))

    back = browser.get(answer(browser, page_a, "allow"))

    assert back.status_code == 302, back.get_data(as_text=True)[-500:]
    params = parse_qs(urlsplit(back.headers["Location"]).query)
    assert granted_scopes(app, KIM_E164) == {"openid"}
    tokens = browser.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"][0],
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        },
        headers=basic(created.client.id, created.secret or ""),
    )
    assert tokens.status_code == 200, tokens.get_data(as_text=True)
    body = tokens.get_json()
    assert body["scope"] == "openid"
    assert "refresh_token" not in body
    assert not {"name", "birthdate", "phone_number"} & set(decode(app, body["id_token"]).claims)


def test_a_consent_page_shown_again_voids_the_older_one(app: Flask, sandbox: SandboxAgency) -> None:
    created = register(app)
    browser = app.test_client()
    sign_in(browser, sandbox)
    _, challenge = pkce()
    url = authorize_url(created.client.id, challenge, scope="openid")
    first = consent_page(browser, url)
    # The same request shown again gets a fresh id: the older page can no longer be answered.
    second = consent_page(browser, url)
    stale, fresh = REQUEST_ID.search(first), REQUEST_ID.search(second)
    assert stale
    assert fresh
    assert stale.group(1) != fresh.group(1)
    refused = browser.post(
        "/consent", data={"csrf_token": csrf_of(first), "request_id": stale.group(1), "decision": "allow"}
    )
    assert refused.status_code == 400
    assert granted_scopes(app, KIM_E164) == set()


def test_another_resident_signing_in_does_not_inherit_the_decision(app: Flask, sandbox: SandboxAgency) -> None:
    created = register(app)
    browser = app.test_client()
    sign_in(browser, sandbox)
    _, challenge = pkce()
    url = authorize_url(created.client.id, challenge, scope="openid profile", nonce="n2") + "&prompt=consent"
    answer(browser, consent_page(browser, url), "allow")
    # Before the request goes on, someone else signs in in the same browser.
    sign_in(browser, sandbox, LEE, LEE_E164)

    again = browser.get(url)

    assert again.status_code == 200, again.headers.get("Location")
    assert REQUEST_ID.search(again.get_data(as_text=True))
    assert granted_scopes(app, LEE_E164) == set()


def test_raw_ci_is_kept_only_once_the_resident_allows_kr_ci(app: Flask, sandbox: SandboxAgency) -> None:
    welfare = register(app, name="복지급여 테스트", scopes=("openid", "profile", "kr_ci"))
    browser = app.test_client()
    _, challenge = pkce()
    url = authorize_url(welfare.client.id, challenge, scope="openid kr_ci")
    to_login = browser.get(url)
    assert to_login.headers["Location"].startswith("/login?")
    browser.get(to_login.headers["Location"])
    sign_in(browser, sandbox)

    page = consent_page(browser, url)
    with runtime_of(app).sessions() as db:
        assert db.scalars(select(Resident.ci_encrypted)).one() is None
    denied = browser.get(answer(browser, page, "deny"))

    assert "error=access_denied" in denied.headers["Location"]
    with runtime_of(app).sessions() as db:
        assert db.scalars(select(Resident.ci_encrypted)).one() is None

    # Asked again, the resident verifies afresh and allows: now the CI is kept and released.
    verifier, challenge = pkce()
    url = authorize_url(welfare.client.id, challenge, scope="openid kr_ci", state="s2")
    to_login = browser.get(url)
    assert to_login.headers["Location"].startswith("/login?")
    browser.get(to_login.headers["Location"])
    sign_in(browser, sandbox)
    back = browser.get(answer(browser, consent_page(browser, url), "allow"))
    code = parse_qs(urlsplit(back.headers["Location"]).query)["code"][0]
    tokens = browser.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier},
        headers=basic(welfare.client.id, welfare.secret or ""),
    )
    assert len(decode(app, tokens.get_json()["id_token"]).claims["kr_ci"]) == 88
    with runtime_of(app).sessions() as db:
        assert db.scalars(select(Resident.ci_encrypted)).one() is not None


def test_withdrawing_the_last_kr_ci_consent_drops_the_raw_ci(app: Flask, sandbox: SandboxAgency) -> None:
    welfare = register(app, name="복지급여 테스트", scopes=("openid", "profile", "kr_ci"))
    browser = app.test_client()
    _, challenge = pkce()
    url = authorize_url(welfare.client.id, challenge, scope="openid kr_ci")
    browser.get(browser.get(url).headers["Location"])
    sign_in(browser, sandbox)
    assert browser.get(answer(browser, consent_page(browser, url), "allow")).status_code == 302
    with runtime_of(app).sessions() as db:
        assert db.scalars(select(Resident.ci_encrypted)).one() is not None

    question = browser.get(f"/account/services/revoke?client_id={welfare.client.id}").get_data(as_text=True)
    withdrawn = browser.post(
        "/account/services/revoke",
        data={"csrf_token": csrf_of(question), "client_id": welfare.client.id, "confirm": "yes"},
    )

    assert withdrawn.status_code == 303
    with runtime_of(app).sessions() as db:
        assert db.scalars(select(Resident.ci_encrypted)).one() is None


@pytest.mark.parametrize("body", ["5", "true", "[1, 2]", '"allow"', "null", '{"decision": "allow"}'])
def test_a_json_body_is_no_answer_to_the_consent_page(app: Flask, sandbox: SandboxAgency, body: str) -> None:
    created = register(app)
    browser = app.test_client()
    sign_in(browser, sandbox)
    _, challenge = pkce()
    consent_page(browser, authorize_url(created.client.id, challenge, scope="openid"))

    answered = browser.post("/consent", data=body, content_type="application/json")

    assert answered.status_code == 400
    assert answered.mimetype == "text/html"
    assert granted_scopes(app, KIM_E164) == set()
