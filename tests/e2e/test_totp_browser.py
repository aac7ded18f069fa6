"""TOTP in real Chromium: a carrier sign-in, set-up on /account/totp by reading the key off the page and typing a
code pyotp makes from it, the recovery codes, sign-out, and a sign-in on /login/totp with the phone number and a code.

The pages are read in English (the browser asks for it), so the test does not depend on the Korean catalogue.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pyotp
import pytest
from idp_server import IdpServer
from playwright.sync_api import Browser, Page, expect
from sandbox_agency import SandboxAgency
from sqlalchemy import create_engine, text

KIM = ("SKT", "김경기", "1985-03-14", "1", "010-0000-0001", "+821000000001")
NARROW = {"width": 320, "height": 640}


@pytest.fixture
def english(browser: Browser) -> Iterator[Page]:
    """A phone-sized page whose browser asks for English."""
    context = browser.new_context(locale="en-US", viewport={"width": 390, "height": 844})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


def carrier_sign_in(page: Page, base: str, sandbox: SandboxAgency) -> None:
    carrier, name, birthdate, digit, phone, e164 = KIM
    page.goto(f"{base}/login/carrier")
    page.get_by_label("Mobile carrier").select_option(carrier)
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Birth date").fill(birthdate)
    page.get_by_label("Resident number, 7th digit").fill(digit)
    page.get_by_label("Mobile phone number").fill(phone)
    page.get_by_label("I agree to all of the following.").check()
    page.get_by_role("button", name="Send verification request").click()
    page.get_by_label("Verification code").fill(sandbox.last_code(e164))
    page.get_by_role("button", name="Confirm", exact=True).click()
    expect(page.get_by_role("heading", name=re.compile("Your account is ready|My account"))).to_be_visible()


def fits_without_horizontal_scrolling(page: Page) -> bool:
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth, window.innerWidth]"
    )
    scroll_width, client_width, inner_width = widths
    return bool(scroll_width <= client_width <= inner_width)


def next_time_step(database_url: str) -> None:
    """As if the app showed its next code (tests do not wait 30 s): the replay guard's step moves back."""
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE totp_device SET last_used_step = last_used_step - 3"))
    engine.dispose()


def test_totp_set_up_by_hand_then_sign_in_with_phone_and_code(
    english: Page, idp: IdpServer, sandbox: SandboxAgency, fresh_database_url: str
) -> None:
    page = english
    carrier_sign_in(page, idp.base, sandbox)

    page.goto(f"{idp.base}/account/totp")
    page.get_by_role("button", name="Set up an authenticator app").click()
    qr = page.locator("figure.qr-code svg")
    expect(qr).to_be_visible()
    secret_text = page.locator("code.secret").inner_text()
    assert re.fullmatch(r"(?:[A-Z2-7]{4} ){7}[A-Z2-7]{4}", secret_text.strip()), secret_text
    page.set_viewport_size(NARROW)
    assert fits_without_horizontal_scrolling(page), "the set-up page scrolls sideways at 320 px"
    box = qr.bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= NARROW["width"]
    secret_box = page.locator("code.secret").bounding_box()
    assert secret_box is not None
    assert secret_box["x"] + secret_box["width"] <= NARROW["width"]
    page.set_viewport_size({"width": 390, "height": 844})

    secret = secret_text.replace(" ", "")
    page.get_by_label("Code from your authenticator app").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Confirm and turn on").click()

    expect(page.get_by_role("heading", name="Recovery codes")).to_be_visible()
    codes = page.locator("ol.recovery-codes li code")
    expect(codes).to_have_count(10)
    assert all(re.fullmatch(r"[a-z2-9]{5}-[a-z2-9]{5}", code) for code in codes.all_inner_texts())
    page.get_by_role("link", name="I saved the codes").click()
    expect(page.get_by_text("Recovery codes left: 10")).to_be_visible()

    page.goto(f"{idp.base}/account")
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page).to_have_url(re.compile("/login$"))

    page.get_by_role("link", name="Sign in with a code from your authenticator app").click()
    expect(page).to_have_url(re.compile("/login/totp$"))
    expect(page.get_by_label("Code from your authenticator app")).to_have_attribute("autocomplete", "one-time-code")
    next_time_step(fresh_database_url)
    page.get_by_label("Mobile phone number").fill(KIM[4])
    page.get_by_label("Code from your authenticator app").fill(pyotp.TOTP(secret).now())
    page.get_by_role("button", name="Sign in", exact=True).click()

    expect(page.get_by_role("heading", name="My account")).to_be_visible()
    expect(page).to_have_url(re.compile("/account$"))


def test_wrong_and_malformed_codes_are_announced_on_the_page(english: Page, idp: IdpServer) -> None:
    page = english
    page.goto(f"{idp.base}/login/totp")
    page.get_by_label("Mobile phone number").fill("010-9999-0000")
    page.get_by_label("Code from your authenticator app").fill("123 456")
    page.get_by_role("button", name="Sign in", exact=True).click()

    expect(page.get_by_role("alert")).to_contain_text("The phone number or the code is not right.")
    expect(page).to_have_url(re.compile("/login/totp$"))

    page.get_by_label("Code from your authenticator app").fill("12ab56")
    page.get_by_role("button", name="Sign in", exact=True).click()

    field = page.get_by_label("Code from your authenticator app")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#code-error")).to_have_text("Enter the 6 digits your authenticator app shows now.")
    page.set_viewport_size(NARROW)
    assert fits_without_horizontal_scrolling(page), "the sign-in page scrolls sideways at 320 px"
