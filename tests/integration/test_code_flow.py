"""The authorization code flow with PKCE through the Flask app.

Tests about what follows a sign-in start signed in directly (the `signed_in` fixture); those where signing in is
part of the behaviour (a fresh verification for kr_ci, prompt=login, signing in for an id_token_hint) sign in
through the sandbox agency.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from factories import SignIn
from flask import Flask
from oidc_flow import KIM_E164, REDIRECT, authorize, basic, decode, exchange, pkce, register, sign_in
from sandbox_agency import SandboxAgency
from sqlalchemy import select

from idp.models import LoginSession, Resident
from idp.runtime import of as runtime_of
from idp.settings import Settings


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Flask:
    app = make_app(replace(settings, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


def test_code_flow_issues_verified_tokens(app: Flask, signed_in: SignIn) -> None:
    created = register(app)
    browser = app.test_client()
    signed_in(browser)
    authorization = authorize(browser, created.client.id)
    assert authorization.params["state"] == [authorization.state]
    assert authorization.params["iss"] == ["http://localhost:8000"]
    response = exchange(browser, created, authorization)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    assert body["token_type"] == "Bearer"
    assert set(body) >= {"access_token", "id_token", "refresh_token", "expires_in", "scope"}
    id_token = decode(app, body["id_token"])
    assert id_token.header["alg"] == "RS256"
    claims = id_token.claims
    assert claims["iss"] == "http://localhost:8000"
    assert claims["aud"] == created.client.id
    assert claims["nonce"] == authorization.nonce
    assert claims["amr"] == ["sms", "mca"]
    assert claims["acr"] == "http://localhost:8000/acr/aal1"
    assert claims["name"] == "김경기"
    assert claims["phone_number"] == KIM_E164
    assert "sid" in claims
    assert "at_hash" in claims
    access = decode(app, body["access_token"])
    assert access.header["typ"] == "at+jwt"
    assert access.claims["sub"] == claims["sub"]
    info = browser.get("/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert info.status_code == 200
    assert info.get_json()["sub"] == claims["sub"]
    assert info.get_json()["birthdate"] == "1985-03-14"


def test_replayed_code_is_refused_and_revokes_what_it_issued(app: Flask, signed_in: SignIn) -> None:
    created = register(app)
    browser = app.test_client()
    signed_in(browser)
    authorization = authorize(browser, created.client.id)
    first = exchange(browser, created, authorization).get_json()
    replay = exchange(browser, created, authorization)
    assert replay.status_code == 400
    assert replay.get_json()["error"] == "invalid_grant"
    info = browser.get("/userinfo", headers={"Authorization": f"Bearer {first['access_token']}"})
    assert info.status_code == 401
    refreshed = browser.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        headers=basic(created.client.id, created.secret or ""),
    )
    assert refreshed.get_json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param({"code_verifier": pkce()[0]}, id="another-verifier"),
        pytest.param({"code_verifier": ""}, id="no-verifier"),
        pytest.param({"redirect_uri": "https://rp.example.kr/other"}, id="another-redirect-uri"),
    ],
)
def test_a_code_is_spent_only_by_a_request_that_proves_it_is_the_clients(
    app: Flask, signed_in: SignIn, wrong: dict[str, str]
) -> None:
    created = register(app, public=True)
    browser = app.test_client()
    signed_in(browser)
    authorization = authorize(browser, created.client.id)

    # Whoever saw the code but holds no verifier can neither use it nor burn it.
    refused = exchange(browser, created, authorization, **wrong)
    assert refused.status_code == 400
    assert refused.get_json()["error"] in ("invalid_grant", "invalid_request")
    tokens = exchange(browser, created, authorization)
    assert tokens.status_code == 200, tokens.get_data(as_text=True)

    # Nor can they revoke what it issued by replaying it without the verifier; the client's own replay does.
    access = {"Authorization": f"Bearer {tokens.get_json()['access_token']}"}
    assert exchange(browser, created, authorization, **wrong).status_code == 400
    assert browser.get("/userinfo", headers=access).status_code == 200
    replay = exchange(browser, created, authorization)
    assert replay.get_json()["error"] == "invalid_grant"
    assert browser.get("/userinfo", headers=access).status_code == 401


def test_refresh_rotates_and_reuse_revokes_the_family(app: Flask, signed_in: SignIn) -> None:
    created = register(app)
    browser = app.test_client()
    signed_in(browser)
    tokens = exchange(browser, created, authorize(browser, created.client.id)).get_json()
    auth = basic(created.client.id, created.secret or "")
    second = browser.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, headers=auth
    )
    assert second.status_code == 200, second.get_data(as_text=True)
    rotated = second.get_json()
    assert rotated["refresh_token"] != tokens["refresh_token"]
    assert "id_token" in rotated
    reuse = browser.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}, headers=auth
    )
    assert reuse.get_json()["error"] == "invalid_grant"
    after = browser.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": rotated["refresh_token"]}, headers=auth
    )
    assert after.get_json()["error"] == "invalid_grant"


def test_introspection_and_revocation(app: Flask, signed_in: SignIn) -> None:
    created = register(app)
    other = register(app, name="다른 서비스")
    browser = app.test_client()
    signed_in(browser)
    tokens = exchange(browser, created, authorize(browser, created.client.id)).get_json()
    auth = basic(created.client.id, created.secret or "")
    active = browser.post("/introspect", data={"token": tokens["access_token"]}, headers=auth).get_json()
    assert active["active"] is True
    assert active["client_id"] == created.client.id
    foreign = browser.post(
        "/introspect", data={"token": tokens["access_token"]}, headers=basic(other.client.id, other.secret or "")
    ).get_json()
    assert foreign == {"active": False}
    revoked = browser.post("/revoke", data={"token": tokens["refresh_token"]}, headers=auth)
    assert revoked.status_code == 200
    after = browser.post("/introspect", data={"token": tokens["access_token"]}, headers=auth).get_json()
    assert after == {"active": False}


def test_client_credentials_issue_an_access_token_only(app: Flask) -> None:
    created = register(app, redirect_uris=(), grant_types=("client_credentials",), scopes=("profile",))
    response = app.test_client().post(
        "/token",
        data={"grant_type": "client_credentials", "scope": "profile"},
        headers=basic(created.client.id, created.secret or ""),
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert "id_token" not in body
    assert "refresh_token" not in body
    assert decode(app, body["access_token"]).claims["sub"] == created.client.id
    # The calling service introspects its own token (docs/integration.md section 4.6); another client cannot.
    own = basic(created.client.id, created.secret or "")
    introspected = app.test_client().post("/introspect", data={"token": body["access_token"]}, headers=own)
    assert introspected.get_json()["active"] is True
    api = register(app, name="API", redirect_uris=(), grant_types=("client_credentials",), scopes=("profile",))
    foreign = app.test_client().post(
        "/introspect", data={"token": body["access_token"]}, headers=basic(api.client.id, api.secret or "")
    )
    assert foreign.get_json() == {"active": False}


def test_public_client_needs_pkce(app: Flask, signed_in: SignIn) -> None:
    created = register(app, public=True)
    browser = app.test_client()
    signed_in(browser)
    response = browser.get(
        f"/authorize?response_type=code&client_id={created.client.id}&redirect_uri={REDIRECT}&scope=openid&state=s"
    )
    assert response.status_code == 302
    assert "error=invalid_request" in response.headers["Location"]
    authorization = authorize(browser, created.client.id, scope="openid")
    tokens = exchange(browser, created, authorization)
    assert tokens.status_code == 200, tokens.get_data(as_text=True)
    assert "refresh_token" not in tokens.get_json()


def test_raw_ci_only_for_a_client_allowed_kr_ci(app: Flask, sandbox: SandboxAgency) -> None:
    ordinary = register(app)
    allowed = register(app, name="복지급여 테스트", scopes=("openid", "profile", "kr_ci"))
    browser = app.test_client()
    sign_in(browser, sandbox)
    plain = decode(app, exchange(browser, ordinary, authorize(browser, ordinary.client.id)).get_json()["id_token"])
    assert "kr_ci" not in plain.claims
    with runtime_of(app).sessions() as db:
        assert db.scalars(select(Resident.ci_encrypted)).one() is None
    # Asking for kr_ci sends the resident through a fresh carrier verification, whose CI is then kept.
    response = browser.get(
        "/authorize?"
        + urlencode(
            {
                "response_type": "code",
                "client_id": allowed.client.id,
                "redirect_uri": REDIRECT,
                "scope": "openid kr_ci",
                "state": "s",
                "code_challenge": pkce()[1],
                "code_challenge_method": "S256",
            }
        )
    )
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/login?")
    # The sign-in page says that only the mobile-phone verification will do.
    page = browser.get(response.headers["Location"]).get_data(as_text=True)
    assert "본인확인이 필요합니다" in page
    sign_in(browser, sandbox)
    authorization = authorize(browser, allowed.client.id, scope="openid kr_ci")
    claims = decode(app, exchange(browser, allowed, authorization).get_json()["id_token"]).claims
    assert len(claims["kr_ci"]) == 88
    with runtime_of(app).sessions() as db:
        stored = db.scalars(select(Resident.ci_encrypted)).one()
    assert stored is not None
    assert claims["kr_ci"].encode() not in stored
    refused = browser.get(
        "/authorize?"
        + urlencode(
            {
                "response_type": "code",
                "client_id": ordinary.client.id,
                "redirect_uri": REDIRECT,
                "scope": "openid kr_ci",
                "state": "s",
            }
        )
    )
    assert "error=invalid_scope" in refused.headers["Location"]


def test_prompt_login_signs_in_again_and_moves_auth_time(app: Flask, sandbox: SandboxAgency) -> None:
    created = register(app)
    browser = app.test_client()
    sign_in(browser, sandbox)
    # The first sign-in happened a minute ago (auth_time has one-second resolution; no sleeping in tests).
    with runtime_of(app).sessions() as db:
        for login in db.scalars(select(LoginSession)):
            login.auth_time -= dt.timedelta(minutes=1)
        db.commit()
    first = decode(app, exchange(browser, created, authorize(browser, created.client.id)).get_json()["id_token"])
    verifier, challenge = pkce()
    query = {
        "response_type": "code",
        "client_id": created.client.id,
        "redirect_uri": REDIRECT,
        "scope": "openid",
        "state": "s",
        "prompt": "login",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    asked = browser.get("/authorize?" + urlencode(query))
    assert asked.headers["Location"].startswith("/login?")
    login_page = asked.headers["Location"]
    # The resident, already signed in, reads why they are asked again.
    assert "다시 로그인하도록 요청했습니다" in browser.get(login_page).get_data(as_text=True)
    sign_in(browser, sandbox)
    # The same request, after the new sign-in, goes through (no loop back to /login).
    returned = browser.get(parse_qs(urlsplit(login_page).query)["next"][0])
    assert returned.status_code == 302, returned.get_data(as_text=True)[-300:]
    code = parse_qs(urlsplit(returned.headers["Location"]).query)["code"][0]
    tokens = browser.post(
        "/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier},
        headers=basic(created.client.id, created.secret or ""),
    ).get_json()
    second = decode(app, tokens["id_token"])
    assert second.claims["auth_time"] > first.claims["auth_time"]


def test_client_credentials_grant_only_registered_scopes(app: Flask) -> None:
    created = register(app, redirect_uris=(), grant_types=("client_credentials",), scopes=("profile",))
    auth = basic(created.client.id, created.secret or "")
    wider = app.test_client().post("/token", data={"grant_type": "client_credentials", "scope": "phone"}, headers=auth)
    assert wider.status_code == 400
    assert wider.get_json()["error"] == "invalid_scope"
    default = app.test_client().post("/token", data={"grant_type": "client_credentials"}, headers=auth).get_json()
    assert default["scope"] == "profile"


def test_claims_parameter_cannot_reach_past_the_granted_scopes(app: Flask, signed_in: SignIn) -> None:
    created = register(app)
    browser = app.test_client()
    signed_in(browser)
    claims = '{"id_token": {"phone_number": null, "verified_claims": {"claims": {"name": null}}}}'
    authorization = authorize(browser, created.client.id, scope="openid", claims=claims)
    token = decode(app, exchange(browser, created, authorization).get_json()["id_token"]).claims
    assert "phone_number" not in token
    assert "verified_claims" not in token
    with_profile = authorize(browser, created.client.id, scope="openid profile", claims=claims)
    verified = decode(app, exchange(browser, created, with_profile).get_json()["id_token"]).claims["verified_claims"]
    assert verified["claims"] == {"name": "김경기"}
    assert verified["verification"]["trust_framework"] == "kr_mobile_identity_verification"


def test_refresh_with_a_wider_scope_leaves_the_token_usable(app: Flask, signed_in: SignIn) -> None:
    created = register(app)
    browser = app.test_client()
    signed_in(browser)
    tokens = exchange(browser, created, authorize(browser, created.client.id, scope="openid offline_access")).get_json()
    auth = basic(created.client.id, created.secret or "")
    wider = browser.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "scope": "openid phone"},
        headers=auth,
    )
    assert wider.get_json()["error"] == "invalid_scope"
    narrower = browser.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "scope": "openid"},
        headers=auth,
    ).get_json()
    assert narrower["scope"] == "openid"
    # The family keeps its full scope: the next refresh may ask for offline_access again.
    again = browser.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": narrower["refresh_token"]}, headers=auth
    )
    assert again.get_json()["scope"] == "openid offline_access"


def test_essential_acr_that_cannot_be_reached_fails(app: Flask, signed_in: SignIn) -> None:
    created = register(app)
    browser = app.test_client()
    signed_in(browser)
    claims = '{"id_token": {"acr": {"essential": true, "values": ["phr"]}}}'
    query = {
        "response_type": "code",
        "client_id": created.client.id,
        "redirect_uri": REDIRECT,
        "scope": "openid",
        "state": "s",
        "claims": claims,
        "code_challenge": pkce()[1],
        "code_challenge_method": "S256",
    }
    # Carrier verification, the only method this resident has, reaches aal1: no sign-in can help.
    failed = browser.get("/authorize?" + urlencode(query))
    assert failed.status_code == 302
    location = parse_qs(urlsplit(failed.headers["Location"]).query)
    assert location["error"] == ["unmet_authentication_requirements"]
    assert location["state"] == ["s"]


@pytest.mark.parametrize("with_session", [True, False], ids=["signed-in", "signed-out"])
def test_essential_acr_of_only_unknown_levels_fails(app: Flask, signed_in: SignIn, with_session: bool) -> None:
    created = register(app)
    browser = app.test_client()
    if with_session:
        signed_in(browser)
    query = {
        "response_type": "code",
        "client_id": created.client.id,
        "redirect_uri": REDIRECT,
        "scope": "openid",
        "state": "s",
        "claims": '{"id_token": {"acr": {"essential": true, "values": ["urn:example:loa:4"]}}}',
        "code_challenge": pkce()[1],
        "code_challenge_method": "S256",
    }
    # No level this provider knows was asked for, so no sign-in could ever meet it (OIDC Core §5.5.1.1).
    failed = browser.get("/authorize?" + urlencode(query))
    assert failed.status_code == 302
    location = parse_qs(urlsplit(failed.headers["Location"]).query)
    assert location["error"] == ["unmet_authentication_requirements"]
    assert location["state"] == ["s"]


def test_voluntary_acr_returns_the_level_reached(app: Flask, signed_in: SignIn) -> None:
    created = register(app)
    browser = app.test_client()
    signed_in(browser)
    authorization = authorize(browser, created.client.id, scope="openid", acr_values="phr")
    claims = decode(app, exchange(browser, created, authorization).get_json()["id_token"]).claims
    assert claims["acr"] == "http://localhost:8000/acr/aal1"


def test_login_hint_fills_the_phone_field(app: Flask) -> None:
    created = register(app)
    query = {
        "response_type": "code",
        "client_id": created.client.id,
        "redirect_uri": REDIRECT,
        "scope": "openid",
        "state": "s",
        "login_hint": "010-0000-0001",
        "code_challenge": pkce()[1],
        "code_challenge_method": "S256",
    }
    browser = app.test_client()
    asked = browser.get("/authorize?" + urlencode(query))
    page = browser.get(asked.headers["Location"]).get_data(as_text=True)
    assert 'value="+821000000001"' in page


def test_id_token_hint_of_another_resident_asks_for_sign_in(app: Flask, signed_in: SignIn) -> None:
    created = register(app)
    kim = app.test_client()
    signed_in(kim)
    kims_token = exchange(kim, created, authorize(kim, created.client.id, scope="openid")).get_json()["id_token"]
    lee = app.test_client()
    signed_in(lee, name="이수원", birthdate=dt.date(1992, 11, 2), phone="+821000000002", carrier="KT")
    query = {
        "response_type": "code",
        "client_id": created.client.id,
        "redirect_uri": REDIRECT,
        "scope": "openid",
        "state": "s",
        "id_token_hint": kims_token,
        "code_challenge": pkce()[1],
        "code_challenge_method": "S256",
    }
    silent = lee.get("/authorize?" + urlencode({**query, "prompt": "none"}))
    assert parse_qs(urlsplit(silent.headers["Location"]).query)["error"] == ["login_required"]
    assert lee.get("/authorize?" + urlencode(query)).headers["Location"].startswith("/login?")
    # The hint's own resident goes straight through.
    own = kim.get("/authorize?" + urlencode({**query, "prompt": "none"}))
    assert "code" in parse_qs(urlsplit(own.headers["Location"]).query)
    forged = kim.get("/authorize?" + urlencode({**query, "id_token_hint": "a.b.c"}))
    assert parse_qs(urlsplit(forged.headers["Location"]).query)["error"] == ["invalid_request"]


def test_id_token_hint_answers_login_required_when_another_resident_signs_in_for_it(
    app: Flask, sandbox: SandboxAgency
) -> None:
    created = register(app)
    kim = app.test_client()
    sign_in(kim, sandbox)
    kims_token = exchange(kim, created, authorize(kim, created.client.id, scope="openid")).get_json()["id_token"]
    lee = app.test_client()
    query = {
        "response_type": "code",
        "client_id": created.client.id,
        "redirect_uri": REDIRECT,
        "scope": "openid",
        "state": "s",
        "id_token_hint": kims_token,
        "code_challenge": pkce()[1],
        "code_challenge_method": "S256",
    }
    asked = lee.get("/authorize?" + urlencode(query))
    assert asked.headers["Location"].startswith("/login?")
    lee_person = {
        "carrier": "KT",
        "name": "이수원",
        "birthdate": "1992-11-02",
        "rrn_digit7": "2",
        "phone": "010-0000-0002",
    }
    sign_in(lee, sandbox, lee_person, "+821000000002")
    # Lee signed in for a request naming Kim: the client hears login_required (OIDC Core §3.1.2.1), no loop.
    answered = lee.get(parse_qs(urlsplit(asked.headers["Location"]).query)["next"][0])
    assert answered.status_code == 302
    location = parse_qs(urlsplit(answered.headers["Location"]).query)
    assert location["error"] == ["login_required"]
    assert location["state"] == ["s"]
