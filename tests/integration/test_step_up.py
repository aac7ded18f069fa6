"""Assurance through a relying service's code flow (docs/integration.md section 6): the ID token's `acr`, `amr`,
`auth_time` and `sid` after each way of signing in, and the step-ups `acr_values`, an essential `acr` claim, a
client's default acr, `max_age` and `prompt=login` ask for.

auth_time has one-second resolution and tests never sleep: where a test needs an earlier sign-in, it moves the
session's times back in the database (`backdate`), every authentication event of it included.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from flask import Flask
from flask.testing import FlaskClient
from oidc_flow import KIM_E164, decode, exchange, register
from sandbox_agency import SandboxAgency
from test_login_passkey import ORIGIN, RP_ID, add_passkey, sign_in_with_passkey
from test_login_totp import (
    AAL1,
    ISSUER,
    KIM_PHONE,
    back_at_the_client,
    backdate,
    begin_authorization,
    carrier_sign_in,
    english_browser,
    enrol,
    live_sessions,
    next_time_step,
    sign_out,
    totp_sign_in,
)
from webauthn_authenticator import SoftAuthenticator
from werkzeug.test import TestResponse

from idp.models import LoginSession
from idp.oidc.clients import CreatedClient
from idp.settings import Settings

PASSKEY_AMR = {"swk", "user", "mfa"}
ESSENTIAL_PHR = json.dumps({"id_token": {"acr": {"essential": True, "values": ["phr"]}}})


@pytest.fixture
def app(
    make_app: Callable[[Settings], Flask], settings: Settings, sandbox: SandboxAgency, fresh_database_url: str
) -> Flask:
    app = make_app(replace(settings, carrier_agency_url=sandbox.url, database_url=fresh_database_url))
    app.config["TESTING"] = True
    return app


@pytest.fixture
def browser(app: Flask) -> FlaskClient:
    return english_browser(app)


@pytest.fixture
def authenticator() -> SoftAuthenticator:
    return SoftAuthenticator(RP_ID, ORIGIN, backup_eligible=True)


@pytest.fixture
def rp(app: Flask) -> CreatedClient:
    return register(app, first_party=True)


# -- helpers ---------------------------------------------------------------------------------------------------------


def code_flow(
    app: Flask,
    browser: FlaskClient,
    created: CreatedClient,
    sign_in: Callable[[], TestResponse] | None = None,
    **extra: str,
) -> dict[str, Any]:
    """The ID token's claims after /authorize → (/login → `sign_in` → back to /authorize when given) → code → token."""
    url, authorization = begin_authorization(created.client.id, **extra)
    answer = browser.get(url)
    if sign_in is not None:
        assert answer.status_code == 303, answer.headers.get("Location")
        login_url = answer.headers["Location"]
        assert login_url.startswith("/login?"), login_url
        next_url = parse_qs(urlsplit(login_url).query)["next"][0]
        assert browser.get(login_url).status_code == 200
        signed_in = sign_in()
        assert signed_in.status_code in (200, 303), signed_in.get_data(as_text=True)[-600:]
        target = signed_in.headers["Location"] if signed_in.status_code == 303 else signed_in.get_json()["redirect"]
        assert target == next_url
        answer = browser.get(next_url)
    authorization = back_at_the_client(answer, authorization)
    tokens = exchange(browser, created, authorization)
    assert tokens.status_code == 200, tokens.get_data(as_text=True)
    claims: dict[str, Any] = decode(app, tokens.get_json()["id_token"]).claims
    assert claims["nonce"] == authorization.nonce
    return claims


def with_totp(app: Flask, browser: FlaskClient, sandbox: SandboxAgency) -> str:
    """Kim verifies by carrier, sets up TOTP and signs out; the secret."""
    carrier_sign_in(browser, sandbox)
    secret, _ = enrol(app, browser)
    sign_out(browser)
    return secret


def with_passkey_and_totp(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> str:
    """Kim verifies by carrier, adds a passkey, sets up TOTP and signs out; the TOTP secret."""
    carrier_sign_in(browser, sandbox)
    added = add_passkey(browser, authenticator)
    assert added.status_code == 200, added.get_data(as_text=True)
    secret, _ = enrol(app, browser)
    sign_out(browser)
    return secret


def by_totp(app: Flask, browser: FlaskClient, secret: str) -> Callable[[], TestResponse]:
    def sign_in() -> TestResponse:
        next_time_step(app)
        return totp_sign_in(browser, pyotp.TOTP(secret).now(), phone=KIM_PHONE)

    return sign_in


def by_passkey(browser: FlaskClient, authenticator: SoftAuthenticator) -> Callable[[], TestResponse]:
    return lambda: sign_in_with_passkey(browser, authenticator)


def only_session(app: Flask) -> LoginSession:
    [login] = live_sessions(app)
    return login


# -- each way of signing in ------------------------------------------------------------------------------------------


def test_carrier_verification_alone_is_aal1_by_sms_and_carrier(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, rp: CreatedClient
) -> None:
    carrier_sign_in(browser, sandbox)

    claims = code_flow(app, browser, rp)

    assert claims["acr"] == AAL1
    assert claims["amr"] == ["sms", "mca"]
    assert claims["sid"] == only_session(app).sid


def test_totp_alone_is_aal1_by_otp(app: Flask, browser: FlaskClient, sandbox: SandboxAgency, rp: CreatedClient) -> None:
    secret = with_totp(app, browser, sandbox)
    before = int(time.time())

    claims = code_flow(app, browser, rp, by_totp(app, browser, secret))

    assert claims["acr"] == AAL1
    assert claims["amr"] == ["otp"]
    assert before <= claims["auth_time"] <= int(time.time())


def test_carrier_then_totp_continues_the_services_request_at_aal1(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, rp: CreatedClient
) -> None:
    secret = with_totp(app, browser, sandbox)
    url, authorization = begin_authorization(rp.client.id)
    login_url = browser.get(url).headers["Location"]
    next_url = parse_qs(urlsplit(login_url).query)["next"][0]
    assert browser.get(login_url).status_code == 200
    assert carrier_sign_in(browser, sandbox).headers["Location"] == "/login/totp"

    finished = totp_sign_in(browser, pyotp.TOTP(secret).now(), phone=None)

    assert finished.status_code == 303, finished.get_data(as_text=True)[-600:]
    assert finished.headers["Location"] == next_url
    authorization = back_at_the_client(browser.get(next_url), authorization)
    tokens = exchange(browser, rp, authorization)
    claims = decode(app, tokens.get_json()["id_token"]).claims
    assert claims["acr"] == AAL1
    assert set(claims["amr"]) == {"otp", "sms", "mca"}
    assert "mfa" not in claims["amr"]  # two things the resident has
    assert claims["sid"] == only_session(app).sid


def test_passkey_is_phishing_resistant_by_key_and_user_verification(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, rp: CreatedClient, authenticator: SoftAuthenticator
) -> None:
    with_passkey_and_totp(app, browser, sandbox, authenticator)

    claims = code_flow(app, browser, rp, by_passkey(browser, authenticator))

    assert claims["acr"] == "phr"
    assert set(claims["amr"]) == PASSKEY_AMR


# -- step-up ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "asked",
    [
        pytest.param({"acr_values": "phr"}, id="acr-values"),
        pytest.param({"claims": ESSENTIAL_PHR}, id="essential-acr-claim"),
        pytest.param({"acr_values": "phrh phr"}, id="acr-values-phrh-or-phr"),
    ],
)
def test_totp_session_steps_up_to_phr_with_a_passkey_in_the_same_session(
    app: Flask,
    browser: FlaskClient,
    sandbox: SandboxAgency,
    rp: CreatedClient,
    authenticator: SoftAuthenticator,
    asked: dict[str, str],
) -> None:
    secret = with_passkey_and_totp(app, browser, sandbox, authenticator)
    assert by_totp(app, browser, secret)().status_code == 303
    backdate(app, 120)
    first = code_flow(app, browser, rp)
    assert (first["acr"], first["amr"]) == (AAL1, ["otp"])

    stepped = code_flow(app, browser, rp, by_passkey(browser, authenticator), **asked)

    assert stepped["acr"] == "phr"
    assert set(stepped["amr"]) == {"otp"} | PASSKEY_AMR
    assert stepped["auth_time"] >= first["auth_time"] + 120
    assert stepped["sid"] == first["sid"]
    login = only_session(app)
    assert (login.sid, login.acr) == (first["sid"], "phr")
    assert [event["method"] for event in login.events] == ["totp", "passkey"]


def test_essential_phr_that_the_resident_cannot_reach_fails_at_the_redirect_uri(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, rp: CreatedClient
) -> None:
    secret = with_totp(app, browser, sandbox)
    assert by_totp(app, browser, secret)().status_code == 303
    url, authorization = begin_authorization(rp.client.id, claims=ESSENTIAL_PHR)

    answer = browser.get(url)

    assert answer.status_code == 302, answer.headers.get("Location")
    location = answer.headers["Location"]
    assert location.startswith("https://rp.example.kr/callback?")
    params = parse_qs(urlsplit(location).query)
    assert params["error"] == ["unmet_authentication_requirements"]
    assert params["state"] == [authorization.state]
    assert params["iss"] == [ISSUER]
    assert "code" not in params
    assert only_session(app).acr == AAL1


@pytest.mark.parametrize("has_passkey", [True, False])
def test_prompt_none_tells_a_service_not_yet_allowed_nothing_about_the_residents_passkeys(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator, has_passkey: bool
) -> None:
    stranger = register(app, name="처음 보는 서비스")  # the resident never consented to it
    carrier_sign_in(browser, sandbox)
    if has_passkey:
        assert add_passkey(browser, authenticator).status_code == 200
        sign_out(browser)
        carrier_sign_in(browser, sandbox)  # an aal1 session, with a passkey the resident could step up with
    url, authorization = begin_authorization(stranger.client.id, claims=ESSENTIAL_PHR, prompt="none")

    answer = back_at_the_client(browser.get(url), authorization)

    assert answer.params["error"] == ["login_required"]


@pytest.mark.parametrize(
    ("asked", "outcome"),
    [
        pytest.param({"acr_values": "phr"}, "code", id="voluntary"),
        pytest.param({"claims": ESSENTIAL_PHR}, "unmet_authentication_requirements", id="essential"),
    ],
)
def test_choosing_totp_again_when_asked_for_a_passkey_ends_the_request_without_a_loop(
    app: Flask,
    browser: FlaskClient,
    sandbox: SandboxAgency,
    rp: CreatedClient,
    authenticator: SoftAuthenticator,
    asked: dict[str, str],
    outcome: str,
) -> None:
    secret = with_passkey_and_totp(app, browser, sandbox, authenticator)
    assert by_totp(app, browser, secret)().status_code == 303
    url, authorization = begin_authorization(rp.client.id, **asked)
    login_url = browser.get(url).headers["Location"]
    assert parse_qs(urlsplit(login_url).query)["reason"] == ["acr_too_low"]
    page = browser.get(login_url).get_data(as_text=True)
    assert "The service asks for a stronger sign-in. Sign in with your passkey." in page
    next_url = parse_qs(urlsplit(login_url).query)["next"][0]

    assert by_totp(app, browser, secret)().headers["Location"] == next_url
    answer = back_at_the_client(browser.get(next_url), authorization)

    if outcome == "code":
        tokens = exchange(browser, rp, answer)
        assert decode(app, tokens.get_json()["id_token"]).claims["acr"] == AAL1
    else:
        assert answer.params["error"] == [outcome]
        assert "code" not in answer.params


def test_voluntary_phr_without_a_passkey_returns_a_code_at_aal1(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, rp: CreatedClient
) -> None:
    secret = with_totp(app, browser, sandbox)
    assert by_totp(app, browser, secret)().status_code == 303

    claims = code_flow(app, browser, rp, acr_values="phr")

    assert claims["acr"] == AAL1
    assert claims["amr"] == ["otp"]


@pytest.mark.parametrize(
    "asked", [pytest.param({"max_age": "0"}, id="max-age-0"), pytest.param({"prompt": "login"}, id="prompt-login")]
)
def test_a_fresh_sign_in_is_asked_for_and_moves_auth_time(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, rp: CreatedClient, asked: dict[str, str]
) -> None:
    secret = with_totp(app, browser, sandbox)
    assert by_totp(app, browser, secret)().status_code == 303
    backdate(app, 300)
    first = code_flow(app, browser, rp)
    assert first["auth_time"] <= int(time.time()) - 300

    again = code_flow(app, browser, rp, by_totp(app, browser, secret), **asked)

    assert again["auth_time"] >= first["auth_time"] + 300
    assert again["auth_time"] >= int(time.time()) - 5
    assert (again["acr"], again["amr"], again["sid"]) == (AAL1, ["otp"], first["sid"])


def test_acr_is_the_best_level_reached_within_max_age(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, rp: CreatedClient, authenticator: SoftAuthenticator
) -> None:
    secret = with_passkey_and_totp(app, browser, sandbox, authenticator)
    assert sign_in_with_passkey(browser, authenticator).status_code == 200
    backdate(app, 600)  # the passkey ten minutes ago
    stepped_in = code_flow(app, browser, rp, by_totp(app, browser, secret), prompt="login")  # TOTP now
    assert [event["method"] for event in only_session(app).events] == ["passkey", "totp"]

    recent = code_flow(app, browser, rp, max_age="300")  # covers only the TOTP sign-in
    whole = code_flow(app, browser, rp)
    both = code_flow(app, browser, rp, max_age="3600")

    assert (recent["acr"], recent["amr"]) == (AAL1, ["otp"])
    assert whole["acr"] == both["acr"] == stepped_in["acr"] == "phr"
    assert set(whole["amr"]) == set(both["amr"]) == {"otp"} | PASSKEY_AMR
    # auth_time is the last active authentication whatever max_age says.
    assert recent["auth_time"] == whole["auth_time"] == stepped_in["auth_time"] >= int(time.time()) - 60
    assert len({recent["sid"], whole["sid"], both["sid"]}) == 1


def test_max_age_covering_only_a_weaker_sign_in_asks_for_the_passkey_again(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, rp: CreatedClient, authenticator: SoftAuthenticator
) -> None:
    secret = with_passkey_and_totp(app, browser, sandbox, authenticator)
    assert sign_in_with_passkey(browser, authenticator).status_code == 200
    backdate(app, 600)
    code_flow(app, browser, rp, by_totp(app, browser, secret), prompt="login")

    again = code_flow(app, browser, rp, by_passkey(browser, authenticator), max_age="300", acr_values="phr")

    assert again["acr"] == "phr"
    assert set(again["amr"]) >= PASSKEY_AMR


def test_a_clients_default_acr_asks_for_the_step_up(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, authenticator: SoftAuthenticator
) -> None:
    strict = register(app, first_party=True, default_acr="phr", name="전자문서지갑")
    secret = with_passkey_and_totp(app, browser, sandbox, authenticator)
    assert by_totp(app, browser, secret)().status_code == 303

    claims = code_flow(app, browser, strict, by_passkey(browser, authenticator))

    assert claims["acr"] == "phr"
    assert set(claims["amr"]) == {"otp"} | PASSKEY_AMR


def test_a_clients_default_acr_the_resident_cannot_reach_returns_aal1(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency
) -> None:
    strict = register(app, first_party=True, default_acr="phr", name="전자문서지갑")
    secret = with_totp(app, browser, sandbox)
    assert by_totp(app, browser, secret)().status_code == 303

    claims = code_flow(app, browser, strict)

    assert claims["acr"] == AAL1


def test_a_request_for_aal1_is_met_by_a_passkey_session(
    app: Flask, browser: FlaskClient, sandbox: SandboxAgency, rp: CreatedClient, authenticator: SoftAuthenticator
) -> None:
    with_passkey_and_totp(app, browser, sandbox, authenticator)
    assert sign_in_with_passkey(browser, authenticator).status_code == 200

    claims = code_flow(app, browser, rp, acr_values=AAL1)

    assert claims["acr"] == "phr"
    assert claims["phone_number"] == KIM_E164


def test_discovery_lists_the_acr_values_in_order(app: Flask) -> None:
    metadata = app.test_client().get("/.well-known/openid-configuration").get_json()

    assert metadata["acr_values_supported"] == [AAL1, f"{ISSUER}/acr/aal2", "phr", "phrh"]
    assert {"acr", "amr", "auth_time"} <= set(metadata["claims_supported"])
    assert metadata["claims_parameter_supported"] is True
