"""The account pages on a phone, in real Chromium: the authenticator app set up at 320 px (a QR code that scales, a
link for an app on this phone, recovery codes whole), Korea time and device names, a failed attempt in the sign-in
history, Korean line breaking, and destructive actions that ask once and then say what happened.

The browser says it is Chrome on an Android phone, as most residents' phones do."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from idp_server import IdpServer
from playwright.sync_api import Browser, BrowserContext, CDPSession, Page, expect
from sandbox_agency import SandboxAgency
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from idp.models import Consent, Resident
from idp.oidc.clients import ClientSpec, create_client, secret_digest_key

ANDROID_CHROME = (
    "Mozilla/5.0 (Linux; Android 14; SM-S921N) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile "
    "Safari/537.36"
)
KIM = ("SKT", "김경기", "1985-03-14", "1", "010-0000-0001", "+821000000001")
PHONE = {"width": 320, "height": 640}
# At least this many CSS pixels per QR module at 320 px: a phone camera reads it off another screen.
MIN_MODULE_PX = 3


def phone_context(browser: Browser, locale: str = "ko-KR") -> BrowserContext:
    context = browser.new_context(locale=locale, viewport=PHONE, user_agent=ANDROID_CHROME)
    context.set_default_timeout(15_000)
    return context


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    """A 320 px Android phone whose browser asks for Korean."""
    context = phone_context(browser)
    yield context.new_page()
    context.close()


def carrier_sign_in(page: Page, base: str, sandbox: SandboxAgency) -> None:
    carrier, name, birthdate, digit, number, e164 = KIM
    page.goto(f"{base}/login/carrier")
    page.get_by_label("통신사", exact=True).select_option(carrier)
    page.get_by_label("이름").fill(name)
    page.get_by_label("생년월일").fill(birthdate)
    page.get_by_label("주민등록번호 뒷자리 첫 숫자").fill(digit)
    page.get_by_label("휴대폰 번호").fill(number)
    page.get_by_label("아래 내용에 모두 동의합니다.").check()
    page.get_by_role("button", name="인증 요청").click()
    page.get_by_label("인증번호", exact=True).fill(sandbox.last_code(e164))
    page.get_by_role("button", name="확인", exact=True).click()
    expect(page.get_by_role("heading", name=re.compile("계정이 만들어졌습니다|내 계정"))).to_be_visible()


def fits_the_screen(page: Page) -> bool:
    scroll_width, client_width = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    return bool(scroll_width <= client_width)


def status(page: Page) -> str:
    return " ".join(page.get_by_role("status").inner_text().split())


# -- the authenticator app on a phone --------------------------------------------------------------------------------


def set_up_authenticator(page: Page, base: str, sandbox: SandboxAgency) -> None:
    carrier_sign_in(page, base, sandbox)
    page.goto(f"{base}/account/totp")
    page.get_by_role("button", name="인증 앱 설정하기").click()


def test_authenticator_qr_code_scales_to_a_320_px_phone_beside_a_link_for_this_phone(
    phone: Page, idp: IdpServer, sandbox: SandboxAgency
) -> None:
    page = phone
    set_up_authenticator(page, idp.base, sandbox)

    # The QR code scales to the screen: inside the screen, not cut off, drawn by its viewBox, modules big enough.
    qr = page.locator("figure.qr-code svg")
    expect(qr).to_be_visible()
    box = qr.bounding_box()
    drawn = qr.locator("path").bounding_box()
    assert box is not None
    assert drawn is not None
    assert box["x"] >= 0, box
    assert box["x"] + box["width"] <= PHONE["width"], box
    # The drawing stays inside the box: without a viewBox the box shrinks and the code is cut off instead.
    assert drawn["x"] + drawn["width"] <= box["x"] + box["width"] + 0.5, (drawn, box)
    assert drawn["y"] + drawn["height"] <= box["y"] + box["height"] + 0.5, (drawn, box)
    view_box = qr.get_attribute("viewBox")
    assert view_box, "the QR code has no viewBox, so it cannot scale"
    modules = float(view_box.split()[2])
    assert box["width"] / modules >= MIN_MODULE_PX, f"{box['width'] / modules:.1f} px per module"
    assert fits_the_screen(page)

    # A link adds the account to an authenticator app on this very phone.
    link = page.get_by_role("link", name="이 휴대폰의 인증 앱에 추가")
    expect(link).to_be_visible()
    uri = urlsplit(link.get_attribute("href") or "")
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    secret = page.locator("code.secret").inner_text().replace(" ", "")
    assert parse_qs(uri.query)["secret"] == [secret]


def test_recovery_codes_stay_whole_and_a_failed_attempt_shows_in_the_history(
    phone: Page, browser: Browser, idp: IdpServer, sandbox: SandboxAgency
) -> None:
    page = phone
    set_up_authenticator(page, idp.base, sandbox)
    secret = page.locator("code.secret").inner_text().replace(" ", "")
    page.get_by_label("인증 앱의 코드").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="확인하고 사용하기").click()

    # Ten whole recovery codes: none split at its hyphen, none past the screen's edge.
    codes = page.locator("ol.recovery-codes li code")
    expect(codes).to_have_count(10)
    lines = codes.evaluate_all("codes => codes.map(code => code.getClientRects().length)")
    assert lines == [1] * 10, f"recovery codes broken over lines at 320 px: {lines}"
    for code in codes.all():
        code_box = code.bounding_box()
        assert code_box is not None
        assert code_box["x"] + code_box["width"] <= PHONE["width"]
    assert fits_the_screen(page)

    # Someone else tries the number with a wrong code; the history shows it and asks "was that me?".
    stranger = phone_context(browser)
    try:
        other = stranger.new_page()
        other.goto(f"{idp.base}/login/totp")
        other.get_by_label("휴대폰 번호").fill(KIM[4])
        other.get_by_label("인증 앱의 코드").fill("000000" if pyotp.TOTP(secret).now() != "000000" else "111111")
        other.get_by_role("button", name="로그인", exact=True).click()
        expect(other.get_by_role("alert")).to_be_visible()
    finally:
        stranger.close()

    page.goto(f"{idp.base}/account")
    history = page.locator("section", has=page.get_by_role("heading", name="최근 로그인 기록"))
    expect(history.locator("li.failed")).to_have_count(1)
    expect(history.locator("li.failed")).to_contain_text("틀린 코드로 로그인을 시도했습니다")
    expect(history).to_contain_text("본인이 시도하지 않았나요?")
    # Korea time, and this phone by name.
    verified = page.locator("dl.facts dd").nth(3).inner_text()
    assert re.fullmatch(r"\d{4}년 \d{1,2}월 \d{1,2}일 (오전|오후) \d{1,2}:\d{2}", verified), verified
    assert "UTC" not in page.locator("main").inner_text()
    sessions = page.locator("section", has=page.get_by_role("heading", name="로그인된 기기"))
    expect(sessions).to_contain_text("Android의 Chrome")
    assert fits_the_screen(page)
    page.goto(f"{idp.base}/account?ui_locales=en")
    expect(page.get_by_text("Chrome on Android", exact=True)).to_be_visible()
    expect(page.locator("dl.facts dd").nth(3)).to_contain_text("(Korea time)")
    expect(page.locator("li.failed")).to_contain_text("Someone tried to sign in with a wrong code")
    page.goto(f"{idp.base}/account?ui_locales=ko")

    # Removing the app asks once, then says what happened.
    page.goto(f"{idp.base}/account/totp")
    page.get_by_role("link", name="인증 앱 삭제").click()
    expect(page.get_by_role("heading", name="인증 앱을 삭제할까요?")).to_be_visible()
    expect(page.get_by_text("남은 복구 코드 10개")).to_be_visible()
    page.get_by_role("button", name="인증 앱 삭제").click()
    expect(page).to_have_url(re.compile("/account/totp$"))
    assert status(page) == "인증 앱을 삭제했습니다. 인증 앱의 코드와 복구 코드로는 더 이상 로그인할 수 없습니다."
    expect(page.get_by_role("button", name="인증 앱 설정하기")).to_be_visible()


# -- passkeys: Korean line breaking, and removal that asks once ----------------------------------------------------


class Authenticator:
    """A phone's platform authenticator (CDP virtual authenticator); touched only inside `touched()`."""

    def __init__(self, page: Page) -> None:
        self.cdp: CDPSession = page.context.new_cdp_session(page)
        self.cdp.send("WebAuthn.enable")
        options = {
            "protocol": "ctap2",
            "transport": "internal",
            "hasResidentKey": True,
            "hasUserVerification": True,
            "isUserVerified": True,
            "automaticPresenceSimulation": True,
        }
        self.id = self.cdp.send("WebAuthn.addVirtualAuthenticator", {"options": options})["authenticatorId"]


def add_passkey(page: Page, base: str, name: str, count: int) -> None:
    page.goto(f"{base}/account/passkeys")
    page.get_by_label("새 패스키 이름").fill(name)
    page.get_by_role("button", name="패스키 추가").click()
    expect(page.locator("main ul.list > li")).to_have_count(count)


def test_long_names_wrap_and_korean_words_stay_whole_at_320_px(
    phone: Page, idp: IdpServer, sandbox: SandboxAgency
) -> None:
    page = phone
    Authenticator(page)
    carrier_sign_in(page, idp.base, sandbox)
    add_passkey(page, idp.base, "Samsung-Galaxy-S24-Ultra-" + "x" * 60, 1)

    breaking = page.evaluate(
        "() => { const style = getComputedStyle(document.querySelector('main p'));"
        " return [style.wordBreak, style.overflowWrap]; }"
    )

    assert fits_the_screen(page), "a long passkey name pushes the page sideways at 320 px"
    assert breaking == ["keep-all", "anywhere"]


def test_removing_a_passkey_asks_once_then_says_what_happened(
    phone: Page, idp: IdpServer, sandbox: SandboxAgency
) -> None:
    page = phone
    Authenticator(page)
    carrier_sign_in(page, idp.base, sandbox)
    page.goto(f"{idp.base}/account/passkeys")
    # The first name is the phone's own, not "my phone".
    expect(page.get_by_label("새 패스키 이름")).to_have_value("Android 휴대폰")
    add_passkey(page, idp.base, "Android 휴대폰", 1)

    page.get_by_role("link", name="‘Android 휴대폰’ 패스키 삭제").click()

    expect(page.get_by_role("heading", name="‘Android 휴대폰’ 패스키를 삭제할까요?")).to_be_visible()
    expect(page.get_by_text("마지막 패스키입니다.")).to_be_visible()
    assert fits_the_screen(page)
    page.get_by_role("link", name="취소하고 돌아가기").click()
    expect(page.locator("main ul.list > li")).to_have_count(1)

    page.get_by_role("link", name="‘Android 휴대폰’ 패스키 삭제").click()
    page.get_by_role("button", name="‘Android 휴대폰’ 패스키 삭제").click()

    expect(page).to_have_url(re.compile("/account/passkeys$"))
    assert status(page) == "‘Android 휴대폰’ 패스키를 삭제했습니다. 이 패스키로는 더 이상 로그인할 수 없습니다."
    expect(page.locator("main ul.list > li")).to_have_count(0)
    page.reload()
    expect(page.get_by_role("status")).to_have_count(0)  # said once


# -- signing out everywhere, withdrawing a service ------------------------------------------------------------------


def test_signing_out_everywhere_asks_once_then_says_how_many_devices(
    phone: Page, browser: Browser, idp: IdpServer, sandbox: SandboxAgency
) -> None:
    other_context = phone_context(browser)
    try:
        other = other_context.new_page()
        carrier_sign_in(other, idp.base, sandbox)
        carrier_sign_in(phone, idp.base, sandbox)
        phone.goto(f"{idp.base}/account")

        phone.get_by_role("link", name="모든 기기에서 로그아웃").click()

        expect(phone.get_by_role("heading", name="기기 2대에서 로그아웃할까요?")).to_be_visible()
        expect(phone.locator("main ul.list li")).to_have_text(["Android의 Chrome", "Android의 Chrome"])
        phone.get_by_role("button", name="기기 2대에서 로그아웃").click()
        expect(phone).to_have_url(re.compile("/account/signed-out$"))
        assert status(phone) == "기기 2대에서 로그아웃했습니다."
        other.goto(f"{idp.base}/account")
        expect(other).to_have_url(re.compile("/login"))
    finally:
        other_context.close()


def test_withdrawing_a_service_asks_once_then_says_what_it_no_longer_gets(
    phone: Page, idp: IdpServer, sandbox: SandboxAgency, fresh_database_url: str
) -> None:
    carrier_sign_in(phone, idp.base, sandbox)
    engine = create_engine(fresh_database_url)
    with Session(engine) as db:
        portal = create_client(
            db,
            ClientSpec(name="경기 민원포털", redirect_uris=("https://portal.example.kr/callback",)),
            secret_key=secret_digest_key("unused"),
            issuer=idp.base,
            now=dt.datetime.now(dt.UTC),
        ).client
        resident_id = db.scalars(select(Resident.id)).one()
        db.add(Consent(resident_id=resident_id, client_id=portal.id, scopes=["openid", "profile", "phone"]))
        db.commit()
    engine.dispose()
    page = phone

    page.goto(f"{idp.base}/account/services")
    service = page.locator("li.card", has=page.get_by_role("heading", name="경기 민원포털"))
    expect(service).to_contain_text("이름과 생년월일")
    expect(service).to_contain_text("휴대폰 번호")
    assert "openid" not in service.inner_text()
    service.get_by_role("link", name="경기 민원포털 연결 해제").click()

    expect(page.get_by_role("heading", name="경기 민원포털의 연결을 해제할까요?")).to_be_visible()
    page.get_by_role("button", name="경기 민원포털 연결 해제").click()

    expect(page).to_have_url(re.compile("/account/services$"))
    assert status(page).startswith("경기 민원포털의 연결을 해제했습니다.")
    expect(page.get_by_role("heading", name="경기 민원포털")).to_have_count(0)
    assert fits_the_screen(page)
