"""A resident signs in on /login through the sandbox carrier agency, in real Chromium."""

from __future__ import annotations

import re

from idp_server import IdpServer
from playwright.sync_api import Page, expect
from sandbox_agency import SandboxAgency

KIM_PHONE = "+821000000001"


def fill_carrier_form(page: Page, *, method: str = "sms", birthdate: str = "1985-03-14") -> None:
    page.get_by_label("통신사", exact=True).select_option("SKT")
    page.get_by_label("이름").fill("김경기")
    page.get_by_label("생년월일").fill(birthdate)
    page.get_by_label("주민등록번호 뒷자리 첫 숫자").fill("1")
    page.get_by_label("휴대폰 번호").fill("010-0000-0001")
    page.get_by_label("통신사 앱에서 승인" if method == "app" else "문자(SMS) 인증번호").check()
    page.get_by_label("아래 내용에 모두 동의합니다.").check()
    page.get_by_role("button", name="인증 요청").click()


def test_resident_signs_in_with_an_sms_code(page: Page, idp: IdpServer, sandbox: SandboxAgency) -> None:
    page.goto(f"{idp.base}/login")
    expect(page).to_have_title(re.compile("로그인"))
    page.get_by_role("button", name="휴대폰 본인확인으로 로그인").click()
    fill_carrier_form(page)
    expect(page.get_by_role("heading", name="인증번호 입력")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("+8210****0001")
    page.get_by_label("인증번호", exact=True).fill(sandbox.last_code(KIM_PHONE))
    page.get_by_role("button", name="확인", exact=True).click()
    expect(page.get_by_role("heading", name="계정이 만들어졌습니다")).to_be_visible()
    page.get_by_role("link", name="계속", exact=True).click()
    expect(page.get_by_role("heading", name="내 계정")).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text("김경기")
    cookies = {cookie["name"]: cookie for cookie in page.context.cookies()}
    assert cookies["idp_sid"]["httpOnly"] is True
    assert cookies["idp_sid"]["sameSite"] == "Lax"


def test_resident_approves_in_the_carrier_app_without_pressing_continue(
    page: Page, idp: IdpServer, sandbox: SandboxAgency
) -> None:
    page.goto(f"{idp.base}/login/carrier")
    fill_carrier_form(page, method="app")
    number = page.locator(".match-number").inner_text()
    phone_page = sandbox.call("GET", f"/phone/{KIM_PHONE}")
    txn_id = re.search(r"/approvals/([A-Za-z0-9_\-]+)", phone_page).group(1)  # type: ignore[union-attr]
    sandbox.answer(KIM_PHONE, txn_id, number=number)
    # approval.js asks again by itself; the resident lands on the next page without touching anything.
    expect(page.get_by_role("heading", name="계정이 만들어졌습니다")).to_be_visible(timeout=20_000)


def test_a_mistake_is_announced_beside_the_field(page: Page, idp: IdpServer, sandbox: SandboxAgency) -> None:
    page.goto(f"{idp.base}/login/carrier")
    fill_carrier_form(page, birthdate="1985-02-30")
    birthdate = page.get_by_label("생년월일")
    expect(birthdate).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#birthdate-error")).to_have_text("존재하지 않는 날짜입니다. 월과 일을 확인해 주세요.")
    expect(page.get_by_role("alert").first).to_be_visible()
    assert sandbox.outbox() == []


def test_sign_in_page_fits_a_320_pixel_screen(page: Page, idp: IdpServer) -> None:
    page.set_viewport_size({"width": 320, "height": 640})
    for path in ("/login", "/login/carrier"):
        page.goto(f"{idp.base}{path}")
        assert page.evaluate("document.documentElement.scrollWidth") <= 320, path


def test_english_when_the_browser_asks(page: Page, idp: IdpServer) -> None:
    page.goto(f"{idp.base}/login?ui_locales=en")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "en")
