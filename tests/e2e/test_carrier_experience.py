"""The carrier pages and the sandbox's virtual phone as a resident uses them, in real Chromium: birth dates as typed,
the phone's own buttons, a filled form and a true message when a verification ends, the code page's clocks, and
the itemised consents."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from idp_server import IdpServer
from playwright.sync_api import Browser, BrowserContext, Page, expect
from sandbox_agency import SandboxAgency

KIM_PHONE = "+821000000001"


def fill_form(page: Page, *, method: str = "sms", birthdate: str = "19850314", phone: str = "010-0000-0001") -> None:
    page.get_by_label("통신사", exact=True).select_option("SKT")
    page.get_by_label("이름").fill("김경기")
    page.get_by_label("생년월일").fill(birthdate)
    page.get_by_label("주민등록번호 뒷자리 첫 숫자").fill("1")
    page.get_by_label("휴대폰 번호").fill(phone)
    page.get_by_label("통신사 앱에서 승인" if method == "app" else "문자(SMS) 인증번호").check()
    page.get_by_label("아래 내용에 모두 동의합니다.").check()
    page.get_by_role("button", name="인증 요청").click()


def expect_filled(page: Page, *, birthdate: str = "19850314", phone: str = "010-0000-0001") -> None:
    expect(page.get_by_label("이름")).to_have_value("김경기")
    expect(page.get_by_label("생년월일")).to_have_value(birthdate)
    expect(page.get_by_label("주민등록번호 뒷자리 첫 숫자")).to_have_value("1")
    expect(page.get_by_label("휴대폰 번호")).to_have_value(phone)
    expect(page.get_by_label("통신사", exact=True)).to_have_value("SKT")


def virtual_phone(context: BrowserContext, sandbox: SandboxAgency) -> Page:
    phone = context.new_page()
    phone.goto(f"{sandbox.url}/phone/{KIM_PHONE}")
    return phone


def test_the_virtual_phones_number_button_approves_in_chromium(
    page: Page, context: BrowserContext, idp: IdpServer, sandbox: SandboxAgency
) -> None:
    page.goto(f"{idp.base}/login/carrier")
    fill_form(page, method="app")
    number = page.locator(".match-number").inner_text()
    phone = virtual_phone(context, sandbox)
    expect(phone.get_by_text("경기도 통합 로그인 본인확인 요청")).to_be_visible()
    phone.get_by_role("button", name=f"{number} 선택").click()
    expect(phone.get_by_role("status")).to_contain_text("승인했습니다")
    # approval.js asks the agency again by itself: the sign-in goes on without a touch.
    expect(page.get_by_role("heading", name="계정이 만들어졌습니다")).to_be_visible(timeout=20_000)


def test_an_eight_digit_birth_date_and_the_code_from_the_virtual_phone_sign_in(
    page: Page, context: BrowserContext, idp: IdpServer, sandbox: SandboxAgency
) -> None:
    page.goto(f"{idp.base}/login/carrier")
    birthdate = page.get_by_label("생년월일")
    expect(birthdate).to_have_attribute("inputmode", "decimal")
    expect(page.get_by_text("예: 19850314 (8자리)")).to_be_visible()
    fill_form(page, birthdate="19850314")
    phone = virtual_phone(context, sandbox)
    message = phone.locator("ul.cards li p").first
    expect(message).to_have_text(
        re.compile(r"^\[경기도 통합 로그인\] 인증번호는 \[\d{6}\]입니다\. 타인에게 알려주지 마세요\.$")
    )
    code = re.search(r"\[(\d{6})\]", message.inner_text()).group(1)  # type: ignore[union-attr]
    page.get_by_label("인증번호", exact=True).fill(code)
    page.get_by_role("button", name="확인", exact=True).click()
    expect(page.get_by_role("heading", name="계정이 만들어졌습니다")).to_be_visible()


def test_a_wrong_number_picked_returns_to_the_filled_form_with_its_own_message(
    page: Page, context: BrowserContext, idp: IdpServer, sandbox: SandboxAgency
) -> None:
    page.goto(f"{idp.base}/login/carrier")
    fill_form(page, method="app", birthdate="1985.03.14", phone="01000000001")
    number = page.locator(".match-number").inner_text()
    phone = virtual_phone(context, sandbox)
    decoy = next(text for text in phone.locator(".choices button").all_inner_texts() if text.strip() != number).strip()
    phone.get_by_role("button", name=f"{decoy} 선택").click()
    expect(phone.get_by_role("status")).to_contain_text("로그인 화면의 숫자와 다릅니다")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("이 화면의 숫자와 다른 숫자를 고르셔서", timeout=20_000)
    expect(alert).not_to_contain_text("거절")
    expect(alert).to_contain_text("입력하신 내용은 그대로 두었습니다")
    expect_filled(page, birthdate="1985.03.14", phone="01000000001")
    expect(page.get_by_label("통신사 앱에서 승인")).to_be_checked()
    assert page.url == f"{idp.base}/login/carrier"  # nothing typed travels in the address


@pytest.fixture
def english(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(locale="en-US", viewport={"width": 390, "height": 844})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def test_an_expired_app_approval_says_so_without_talking_about_codes(
    page: Page, english: Page, idp: IdpServer, sandbox: SandboxAgency
) -> None:
    page.goto(f"{idp.base}/login/carrier")
    fill_form(page, method="app")
    sandbox.advance(181)
    page.get_by_role("button", name="승인했습니다: 계속").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("통신사 앱 승인 요청의 유효시간이 지났습니다")
    expect(alert).not_to_contain_text("인증번호")
    expect_filled(page)

    sandbox.reset()
    english.goto(f"{idp.base}/login/carrier")
    english.get_by_label("Mobile carrier", exact=True).select_option("SKT")
    english.get_by_label("Name").fill("김경기")
    english.get_by_label("Birth date").fill("1985-03-14")
    english.get_by_label("Resident number, 7th digit").fill("1")
    english.get_by_label("Mobile phone number").fill("010-0000-0001")
    english.get_by_label("Approval in the carrier's app").check()
    english.get_by_label("I agree to all of the following.").check()
    english.get_by_role("button", name="Send verification request").click()
    sandbox.advance(181)
    english.get_by_role("button", name="I approved it: continue").click()
    alert = english.get_by_role("alert")
    expect(alert).to_contain_text("The approval request in the carrier's app has expired")
    expect(alert).not_to_contain_text("code")
    expect(english.get_by_label("Birth date")).to_have_value("1985-03-14")


def test_the_code_page_counts_down_and_speaks_only_at_one_minute_and_at_the_end(
    page: Page, idp: IdpServer, sandbox: SandboxAgency
) -> None:
    page.clock.install()
    page.goto(f"{idp.base}/login/carrier")
    fill_form(page)
    expect(page.get_by_text("인증번호는 3분 동안 유효합니다.")).to_be_visible()
    countdown = page.locator("#countdown")
    announce = page.locator("#countdown-announce")
    expect(countdown).to_contain_text(re.compile(r"남은 시간: (3:00|2:5\d)"))
    resend = page.get_by_role("button", name="인증번호 다시 받기")
    expect(resend).to_be_disabled()
    expect(page.locator("#resend-wait")).to_have_text(re.compile(r"새 인증번호는 (30|2\d)초 후에 받을 수 있습니다."))

    page.clock.run_for("00:10")
    expect(countdown).to_contain_text(re.compile(r"남은 시간: 2:[45]\d"))
    expect(announce).to_have_text("")  # the ticking is not read out
    page.clock.run_for("00:25")
    expect(resend).to_be_enabled()
    expect(page.locator("#resend-wait")).to_be_hidden()
    page.clock.run_for("01:30")
    expect(announce).to_have_text("인증번호를 입력할 시간이 1분 남았습니다.")
    page.clock.run_for("01:00")
    expect(countdown).to_have_text("인증번호 유효시간이 지났습니다. 새 인증번호를 받아 주세요.")
    expect(announce).to_have_text("인증번호 유효시간이 지났습니다. 새 인증번호를 받아 주세요.")


def test_cancel_returns_to_the_filled_form(page: Page, idp: IdpServer, sandbox: SandboxAgency) -> None:
    page.goto(f"{idp.base}/login/carrier")
    fill_form(page)
    page.get_by_role("button", name="이 요청 취소").click()
    expect(page.get_by_role("alert")).to_contain_text("본인확인 요청을 취소했습니다")
    expect_filled(page)
    expect(page.get_by_label("아래 내용에 모두 동의합니다.")).to_be_checked()


def test_each_consent_is_itemised_with_what_it_means(page: Page, idp: IdpServer, sandbox: SandboxAgency) -> None:
    page.goto(f"{idp.base}/login/carrier")
    items = [
        page.get_by_label("[필수] 본인확인서비스 이용약관에 동의합니다."),
        page.get_by_label("[필수] 개인정보 수집·이용에 동의합니다."),
        page.get_by_label("[필수] 개인정보 제3자 제공에 동의합니다."),
    ]
    everything = page.get_by_label("아래 내용에 모두 동의합니다.")
    everything.check()
    for item in items:
        expect(item).to_be_checked()
    items[1].uncheck()
    expect(everything).not_to_be_checked()

    disclosure = page.locator("details").nth(1)
    expect(disclosure.get_by_text("보유 기간")).to_be_hidden()
    disclosure.locator("summary").click()
    for heading in ("목적", "항목", "보유 기간", "동의를 거부할 권리"):
        expect(disclosure.get_by_text(heading, exact=True)).to_be_visible()
    expect(disclosure).to_contain_text(
        "주민등록번호 뒷자리 첫 번째 숫자는 본인확인기관에 전달만 하고 보관하지 않습니다"
    )

    # Without the unticked item the agency is not asked, and the item says why.
    page.get_by_label("이름").fill("김경기")
    page.get_by_label("생년월일").fill("19850314")
    page.get_by_label("주민등록번호 뒷자리 첫 숫자").fill("1")
    page.get_by_label("휴대폰 번호").fill("010-0000-0001")
    page.get_by_role("button", name="인증 요청").click()
    expect(page.locator("#consent_collection-error")).to_have_text("휴대폰 본인확인을 하려면 이 항목에 동의해 주세요.")
    assert sandbox.outbox() == []


def test_the_carrier_form_fits_a_320_pixel_screen_with_a_disclosure_open(page: Page, idp: IdpServer) -> None:
    page.set_viewport_size({"width": 320, "height": 640})
    page.goto(f"{idp.base}/login/carrier")
    for index in range(3):
        page.locator("summary").nth(index).click()
    assert page.evaluate("document.documentElement.scrollWidth") <= 320
