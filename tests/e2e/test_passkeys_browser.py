"""Passkeys in real Chromium with a DevTools virtual authenticator: register, sign out, sign in through a
relying service's code flow, and read `amr` in the ID token."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from idp_server import IdpServer
from joserfc import jwt
from joserfc.jwk import KeySet
from playwright.sync_api import BrowserContext, CDPSession, Page, expect
from sandbox_agency import SandboxAgency
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from idp.oidc.clients import ClientSpec, create_client, secret_digest_key

REDIRECT = "https://rp.example.kr/callback"
KIM = ("SKT", "김경기", "1985-03-14", "1", "010-0000-0001", "+821000000001")
LEE = ("KT", "이수원", "1992-11-02", "2", "010-0000-0002", "+821000000002")


class Authenticator:
    """A platform authenticator with resident keys and user verification (a phone's fingerprint or face).

    The resident's touch is simulated only inside `touched()`: otherwise the passkey autofill that /login
    starts would sign in on its own at every visit of the page."""

    def __init__(self, page: Page) -> None:
        self.cdp: CDPSession = page.context.new_cdp_session(page)
        self.cdp.send("WebAuthn.enable")
        result = self.cdp.send(
            "WebAuthn.addVirtualAuthenticator",
            {
                "options": {
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": True,
                    "hasUserVerification": True,
                    "isUserVerified": True,
                    "automaticPresenceSimulation": False,
                }
            },
        )
        self.id = result["authenticatorId"]

    @contextlib.contextmanager
    def touched(self) -> Iterator[None]:
        self._presence(True)
        try:
            yield
        finally:
            self._presence(False)

    def _presence(self, enabled: bool) -> None:
        self.cdp.send("WebAuthn.setAutomaticPresenceSimulation", {"authenticatorId": self.id, "enabled": enabled})

    def remove(self) -> None:
        self.cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": self.id})


def add_authenticator(page: Page) -> Authenticator:
    return Authenticator(page)


def carrier_sign_in(page: Page, base: str, sandbox: SandboxAgency, person: tuple[str, ...]) -> None:
    carrier, name, birthdate, digit, phone, e164 = person
    page.goto(f"{base}/login/carrier")
    page.get_by_label("통신사", exact=True).select_option(carrier)
    page.get_by_label("이름").fill(name)
    page.get_by_label("생년월일").fill(birthdate)
    page.get_by_label("주민등록번호 뒷자리 첫 숫자").fill(digit)
    page.get_by_label("휴대폰 번호").fill(phone)
    page.get_by_label("아래 내용에 모두 동의합니다.").check()
    page.get_by_role("button", name="인증 요청").click()
    page.get_by_label("인증번호", exact=True).fill(sandbox.last_code(e164))
    page.get_by_role("button", name="확인", exact=True).click()
    expect(page.get_by_role("heading", name=re.compile("계정이 만들어졌습니다|내 계정"))).to_be_visible()


def register_passkey(page: Page, base: str, authenticator: Authenticator) -> None:
    page.goto(f"{base}/account/passkeys")
    with authenticator.touched():
        page.get_by_role("button", name="패스키 추가").click()
        expect(page.locator("ul.list li")).to_have_count(1)


def sign_out(page: Page, base: str) -> None:
    page.goto(f"{base}/account")
    page.get_by_role("button", name="로그아웃", exact=True).click()
    expect(page).to_have_url(re.compile("/login$"))
    # Leave /login, whose autofill request would otherwise still hold the authenticator for the next step.
    page.goto("about:blank")


@pytest.fixture
def client(idp: IdpServer, fresh_database_url: str, tmp_path: Any) -> tuple[str, str]:
    import json

    secrets_file = tmp_path / "instance" / "secrets.json"
    secret_key = json.loads(secrets_file.read_text())["secret_key"]
    engine = create_engine(fresh_database_url)
    with Session(engine) as db:
        created = create_client(
            db,
            ClientSpec(name="민원24 테스트", redirect_uris=(REDIRECT,), first_party=True),
            secret_key=secret_digest_key(secret_key),
            issuer=idp.base,
            now=dt.datetime.now(dt.UTC),
        )
        db.commit()
        client_id, secret = created.client.id, created.secret or ""
    engine.dispose()
    return client_id, secret


def code_flow(page: Page, idp: IdpServer, client: tuple[str, str], authenticator: Authenticator) -> dict[str, Any]:
    client_id, secret = client
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid",
        "state": "st",
    }
    # /authorize sends the resident to /login, which starts passkey autofill at once; the resident picks the
    # passkey the phone offers (presence is simulated before the request starts, as a finger already on the sensor).
    with authenticator.touched(), page.expect_request(lambda request: request.url.startswith(REDIRECT)) as callback:
        page.goto(f"{idp.base}/authorize?{urlencode(query)}", wait_until="commit")
    code = parse_qs(urlsplit(callback.value.url).query)["code"][0]
    auth = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    tokens = httpx.post(
        f"{idp.base}/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
        headers={"Authorization": f"Basic {auth}"},
        timeout=10,
    ).json()
    jwks = httpx.get(f"{idp.base}/jwks", timeout=10).json()
    claims: dict[str, Any] = jwt.decode(tokens["id_token"], KeySet.import_key_set(jwks), algorithms=["RS256"]).claims
    return claims


def test_passkey_registered_then_signs_in_through_a_code_flow(
    page: Page, idp: IdpServer, sandbox: SandboxAgency, client: tuple[str, str]
) -> None:
    authenticator = add_authenticator(page)
    carrier_sign_in(page, idp.base, sandbox, KIM)
    register_passkey(page, idp.base, authenticator)
    sign_out(page, idp.base)
    claims = code_flow(page, idp, client, authenticator)
    assert claims["amr"] == ["swk", "user", "mfa"] or claims["amr"] == ["hwk", "user", "mfa"]
    assert claims["acr"] in ("phr", "phrh")


def test_passkey_autofill_signs_in_from_the_login_page(page: Page, idp: IdpServer, sandbox: SandboxAgency) -> None:
    authenticator = add_authenticator(page)
    carrier_sign_in(page, idp.base, sandbox, KIM)
    register_passkey(page, idp.base, authenticator)
    sign_out(page, idp.base)
    page.goto(f"{idp.base}/login")
    expect(page.get_by_label("휴대폰 번호")).to_have_attribute("autocomplete", "username webauthn")
    page.goto("about:blank")
    # Conditional mediation: the resident picks the passkey the phone offers on the field; no button pressed.
    with page.expect_request(lambda request: request.url.endswith("/login/passkey/options")), authenticator.touched():
        page.goto(f"{idp.base}/login")
        expect(page.get_by_role("heading", name="내 계정")).to_be_visible()


def test_removed_passkey_no_longer_signs_in(page: Page, idp: IdpServer, sandbox: SandboxAgency) -> None:
    authenticator = add_authenticator(page)
    carrier_sign_in(page, idp.base, sandbox, KIM)
    register_passkey(page, idp.base, authenticator)
    page.get_by_role("link", name=re.compile("패스키 삭제")).click()
    page.get_by_role("button", name=re.compile("패스키 삭제")).click()
    expect(page.locator("ul.list li")).to_have_count(0)
    sign_out(page, idp.base)
    # The phone still holds the credential, but the IdP no longer knows it.
    with authenticator.touched():
        page.goto(f"{idp.base}/login")
        expect(page.locator("#passkey-status")).to_contain_text("패스키를 확인하지 못했습니다")
    expect(page).to_have_url(re.compile("/login$"))


def test_another_residents_authenticator_signs_in_as_that_resident(
    context: BrowserContext, idp: IdpServer, sandbox: SandboxAgency
) -> None:
    first = context.new_page()
    kims = add_authenticator(first)
    carrier_sign_in(first, idp.base, sandbox, KIM)
    register_passkey(first, idp.base, kims)
    sign_out(first, idp.base)
    # Kim's authenticator is unplugged; Lee registers on a second one and signs in with it.
    kims.remove()
    lees = add_authenticator(first)
    carrier_sign_in(first, idp.base, sandbox, LEE)
    register_passkey(first, idp.base, lees)
    sign_out(first, idp.base)
    with lees.touched():
        first.goto(f"{idp.base}/login")
        expect(first.get_by_role("heading", name="내 계정")).to_be_visible()
    expect(first.locator("dl.facts")).to_contain_text("이수원")


def test_passkey_button_signs_in_while_autofill_is_waiting(page: Page, idp: IdpServer, sandbox: SandboxAgency) -> None:
    authenticator = add_authenticator(page)
    carrier_sign_in(page, idp.base, sandbox, KIM)
    register_passkey(page, idp.base, authenticator)
    sign_out(page, idp.base)
    # The autofill request starts as the page loads and waits for the resident, who presses the button instead.
    with page.expect_request(lambda request: request.url.endswith("/login/passkey/options")):
        page.goto(f"{idp.base}/login")
    button = page.get_by_role("button", name="패스키로 로그인")
    expect(button).to_be_visible()
    # The button's own request (a second challenge) is the one that signs in, not the autofill one.
    with authenticator.touched():
        with page.expect_request(lambda request: request.url.endswith("/login/passkey/options")):
            button.click()
        expect(page.get_by_role("heading", name="내 계정")).to_be_visible()
