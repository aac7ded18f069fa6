"""Always back to the service, in real Chromium: every page of a sign-in names the service that asked, the
language switch keeps the request, a passkey added on the welcome page leads on to the service, and the pages
where residents get stuck say what to do and whom to call."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from idp_server import IdpServer
from playwright.sync_api import Page, Route, expect
from sandbox_agency import SandboxAgency
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from test_browser_login import fill_carrier_form
from test_passkeys_browser import add_authenticator

from idp.oidc.clients import ClientSpec, create_client, secret_digest_key

PORTAL = "경기 민원포털"
REDIRECT = "https://rp.example.kr/callback"
KIM_E164 = "+821000000001"


def register_service(idp: IdpServer, database_url: str, tmp_path: Path, *, first_party: bool = False) -> str:
    secret_key = json.loads((tmp_path / "instance" / "secrets.json").read_text())["secret_key"]
    engine = create_engine(database_url)
    with Session(engine) as db:
        created = create_client(
            db,
            ClientSpec(name=PORTAL, redirect_uris=(REDIRECT,), first_party=first_party),
            secret_key=secret_digest_key(secret_key),
            issuer=idp.base,
            now=dt.datetime.now(dt.UTC),
        )
        db.commit()
        client_id = created.client.id
    engine.dispose()
    return client_id


def authorization_url(idp: IdpServer, client_id: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid profile phone",
        "state": "st",
        "ui_locales": "ko",
    }
    return f"{idp.base}/authorize?{urlencode(query)}"


def the_service_answers(page: Page) -> None:
    """The service's callback (rp.example.kr does not exist): answered in the browser, so the page lands there."""

    def answer(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body="<!doctype html><title>back</title><h1>back</h1>")

    page.context.route(re.compile(re.escape(REDIRECT) + r".*"), answer)


def assert_back_at_the_service_with_a_code(page: Page) -> None:
    expect(page).to_have_url(re.compile("^" + re.escape(REDIRECT)))
    params = parse_qs(urlsplit(page.url).query)
    assert params["code"], page.url
    assert params["state"] == ["st"]


def confirm_code(page: Page, sandbox: SandboxAgency) -> None:
    page.get_by_label("인증번호", exact=True).fill(sandbox.last_code(KIM_E164))
    page.get_by_role("button", name="확인", exact=True).click()


def test_every_page_of_a_sign_in_names_the_service(
    page: Page, idp: IdpServer, sandbox: SandboxAgency, fresh_database_url: str, tmp_path: Path
) -> None:
    client_id = register_service(idp, fresh_database_url, tmp_path)
    the_service_answers(page)
    page.goto(authorization_url(idp, client_id))
    expect(page.get_by_role("heading", level=1)).to_have_text(f"{PORTAL}에 로그인합니다")
    page.get_by_role("button", name="휴대폰 본인확인으로 로그인").click()
    expect(page.locator("p.service")).to_have_text(f"{PORTAL}에 로그인합니다")
    fill_carrier_form(page)
    expect(page.locator("p.service")).to_have_text(f"{PORTAL}에 로그인합니다")
    confirm_code(page, sandbox)
    expect(page.get_by_role("heading", name="계정이 만들어졌습니다")).to_be_visible()
    page.get_by_role("link", name=f"{PORTAL}에서 계속하기").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(PORTAL)
    expect(page.get_by_role("heading", name=f"{PORTAL}에 제공하는 정보")).to_be_visible()
    expect(page.get_by_role("heading", name="보유 및 이용 기간")).to_be_visible()
    expect(page.get_by_text("동의를 거부할 권리가 있습니다.")).to_be_visible()
    page.get_by_role("button", name="허용", exact=True).click()
    assert_back_at_the_service_with_a_code(page)


def test_language_switch_on_the_sign_in_page_keeps_the_request(
    page: Page, idp: IdpServer, sandbox: SandboxAgency, fresh_database_url: str, tmp_path: Path
) -> None:
    client_id = register_service(idp, fresh_database_url, tmp_path)
    the_service_answers(page)
    page.goto(authorization_url(idp, client_id))
    # The request (and its ui_locales=ko) stays, and the resident's choice wins over the service's hint.
    page.get_by_role("link", name="English").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Sign in to {PORTAL}")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    page.get_by_role("link", name="한국어").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"{PORTAL}에 로그인합니다")
    page.get_by_role("button", name="휴대폰 본인확인으로 로그인").click()
    fill_carrier_form(page)
    confirm_code(page, sandbox)
    page.get_by_role("link", name=f"{PORTAL}에서 계속하기").click()
    page.get_by_role("button", name="허용", exact=True).click()
    assert_back_at_the_service_with_a_code(page)


def test_language_switch_on_the_consent_page_keeps_the_request(
    page: Page, idp: IdpServer, sandbox: SandboxAgency, fresh_database_url: str, tmp_path: Path
) -> None:
    client_id = register_service(idp, fresh_database_url, tmp_path)
    the_service_answers(page)
    page.goto(f"{idp.base}/login/carrier")
    fill_carrier_form(page)
    confirm_code(page, sandbox)
    expect(page.get_by_role("heading", name="계정이 만들어졌습니다")).to_be_visible()
    page.goto(authorization_url(idp, client_id))
    expect(page.get_by_role("button", name="허용", exact=True)).to_be_visible()
    # The consent page is served at /authorize: a link that drops the request's parameters ends on a 400 page.
    page.get_by_role("link", name="English").click()
    expect(page.get_by_role("button", name="Allow", exact=True)).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    page.get_by_role("button", name="Allow", exact=True).click()
    assert_back_at_the_service_with_a_code(page)


def test_passkey_added_on_the_welcome_page_then_on_to_the_service(
    page: Page, idp: IdpServer, sandbox: SandboxAgency, fresh_database_url: str, tmp_path: Path
) -> None:
    client_id = register_service(idp, fresh_database_url, tmp_path, first_party=True)
    authenticator = add_authenticator(page)
    the_service_answers(page)
    page.goto(authorization_url(idp, client_id))
    page.get_by_role("button", name="휴대폰 본인확인으로 로그인").click()
    fill_carrier_form(page)
    confirm_code(page, sandbox)
    expect(page.get_by_role("heading", name="계정이 만들어졌습니다")).to_be_visible()
    with authenticator.touched():
        page.get_by_role("button", name="패스키 추가").click()
        assert_back_at_the_service_with_a_code(page)
    held = authenticator.cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator.id})
    assert len(held["credentials"]) == 1  # the phone holds the new passkey ...
    page.goto(f"{idp.base}/account/passkeys")  # ... and the resident's account lists it
    expect(page.locator("ul.list li")).to_have_count(1)


def test_totp_lockout_page_says_what_to_do_and_whom_to_call(page: Page, idp: IdpServer) -> None:
    for _ in range(7):
        page.goto(f"{idp.base}/login/totp")
        page.get_by_label("휴대폰 번호").fill("010-9999-0000")
        page.get_by_label("인증 앱의 코드").fill("000000")
        page.get_by_role("button", name="로그인", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("잠시 후 다시 시도해 주세요")
    expect(page.get_by_role("link", name="휴대폰 본인확인으로 로그인하기")).to_be_visible()
    help_box = page.locator("main .help")
    expect(help_box.get_by_role("link", name="031-120")).to_have_attribute("href", "tel:031-120")
    expect(help_box).to_contain_text("평일 09:00~18:00")
    expect(page.get_by_text("오류 코드")).to_have_count(0)
    page.get_by_role("link", name="휴대폰 본인확인으로 로그인하기").click()
    expect(page).to_have_url(re.compile("/login/carrier$"))


def test_an_unknown_service_page_says_go_back_and_whom_to_ask(page: Page, idp: IdpServer) -> None:
    page.goto(f"{idp.base}/authorize?response_type=code&client_id=nobody&redirect_uri=https%3A%2F%2Fx.example%2F")
    expect(page.get_by_role("alert")).to_contain_text("경기도 통합 로그인에 등록되지 않은 서비스입니다.")
    expect(page.get_by_text("이용하던 서비스로 돌아가 다시 시도해 주세요.", exact=False)).to_be_visible()
    expect(page.locator("main .help").get_by_role("link", name="031-120")).to_be_visible()
    page.get_by_role("link", name="English").click()
    expect(page.get_by_text("Go back to the service you were using", exact=False)).to_be_visible()
