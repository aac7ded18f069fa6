"""A resident who cannot use a mouse signs in: by mobile carrier, then with a passkey (the virtual authenticator),
pressing only Tab, Shift+Tab, Enter and Space and typing. At every stop the focused element shows a focus ring (an
outline or a box-shadow), and the stops come in reading order: later in the document, and not above or to the
left of the one before on the same line; Shift+Tab walks the same stops back.

The walk decides what to do at each stop from the element itself (the field's id, a checkbox, the form's submit
button), not from a fixed count of Tabs, so a page may gain a link or a disclosure without breaking the test.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from page_states import Resident, World, running_world
from playwright.sync_api import Browser, Page, expect
from sandbox_agency import SandboxAgency
from test_passkeys_browser import add_authenticator

MAX_STOPS = 40  # Tabs to reach a control before the walk gives up: a page with more is a page too long
SAME_LINE = 24  # px: two stops whose tops differ by less are on one line, read left to right

# What the browser focused: where it is in the document and on the screen, and how its focus is drawn.
FOCUSED = """() => {
  const el = document.activeElement;
  if (!el || el === document.body || el === document.documentElement) return null;
  const style = getComputedStyle(el);
  const box = el.getBoundingClientRect();
  return {
    index: Array.prototype.indexOf.call(document.querySelectorAll('*'), el),
    html: el.outerHTML.slice(0, 120),
    outline: style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0,
    shadow: style.boxShadow !== 'none',
    top: box.top + window.scrollY,
    left: box.left + window.scrollX,
  };
}"""

Stop = dict[str, Any]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sandbox_url: str, keyring_template: Path) -> Iterator[World]:
    with running_world(tmp_path_factory.mktemp("keyboard"), SandboxAgency(sandbox_url), keyring_template) as world:
        yield world


@pytest.fixture
def page(browser: Browser, world: World) -> Iterator[Page]:
    world.sandbox.reset()
    world.forget_limits()
    context = browser.new_context(locale="ko-KR", viewport={"width": 390, "height": 844})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


class KeyboardWalk:
    """Tab stops on the current page, each checked as it is reached."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.stops: list[Stop] = []
        start = page.evaluate(FOCUSED)
        if start is not None:  # a field with autofocus
            self._check(start)
            self.stops.append(start)

    def focused_matches(self, selector: str) -> bool:
        return bool(self.page.evaluate("s => document.activeElement.matches(s)", selector))

    def tab(self) -> Stop:
        self.page.keyboard.press("Tab")
        stop: Stop | None = self.page.evaluate(FOCUSED)
        assert stop is not None, f"Tab left the page after {[s['html'] for s in self.stops]}"
        self._check(stop)
        if self.stops:
            assert_reading_order(self.stops[-1], stop)
        self.stops.append(stop)
        return stop

    def to(self, selector: str, at_each: Callable[[], None] | None = None) -> None:
        """Tab until `selector` has the focus; `at_each` acts on every stop before it (types, ticks)."""
        for _ in range(MAX_STOPS):
            self.tab()
            if self.focused_matches(selector):
                return
            if at_each is not None:
                at_each()
        raise AssertionError(f"{MAX_STOPS} Tabs did not reach {selector}: {[s['html'] for s in self.stops]}")

    def back_the_same_way(self) -> None:
        """Shift+Tab from the last stop to the first passes the same stops in reverse; Tab returns to the last."""
        for expected in reversed(self.stops[:-1]):
            self.page.keyboard.press("Shift+Tab")
            stop = self.page.evaluate(FOCUSED)
            assert stop is not None
            assert stop["index"] == expected["index"], f"Shift+Tab went to {stop['html']}, not {expected['html']}"
            self._check(stop)
        for _ in self.stops[:-1]:
            self.page.keyboard.press("Tab")
        assert self.page.evaluate(FOCUSED)["index"] == self.stops[-1]["index"]

    def _check(self, stop: Stop) -> None:
        assert stop["outline"] or stop["shadow"], f"no visible focus on {stop['html']} at {self.page.url}"


def assert_reading_order(before: Stop, after: Stop) -> None:
    assert after["index"] > before["index"], f"Tab went back in the document: {before['html']} → {after['html']}"
    if abs(after["top"] - before["top"]) < SAME_LINE:
        assert after["left"] >= before["left"], f"Tab went leftwards: {before['html']} → {after['html']}"
    else:
        assert after["top"] > before["top"], f"Tab went upwards: {before['html']} → {after['html']}"


def fill_by_keyboard(page: Page, values: dict[str, str]) -> Callable[[], None]:
    """At each stop: type into a field of `values` (once; a list picks its option by type-ahead unless it shows it
    already), tick an unticked checkbox with Space."""
    typed: set[str] = set()

    def act() -> None:
        field, kind, value, checked = page.evaluate(
            "() => { const e = document.activeElement; return [e.id, e.type, e.value, !!e.checked]; }"
        )
        if field in values and field not in typed:
            if not (kind.startswith("select") and value == values[field]):
                page.keyboard.type(values[field])
            typed.add(field)
        elif kind == "checkbox" and not checked:
            page.keyboard.press("Space")

    return act


def carrier_sign_in_by_keyboard(page: Page, world: World, resident: Resident) -> None:
    page.goto(f"{world.base}/login")
    walk = KeyboardWalk(page)
    walk.to("#phone")
    page.keyboard.type(resident.phone)
    walk.to("form:has(#phone) [type=submit]")
    walk.back_the_same_way()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/login/carrier"))

    walk = KeyboardWalk(page)
    # The phone number typed on /login is already in its field; the carrier is picked by typing its name.
    fields = {"carrier": resident.carrier, "name": resident.name, "birthdate": resident.birthdate}
    fields["rrn_digit7"] = resident.rrn_digit7
    walk.to("form:has(#name) [type=submit]", fill_by_keyboard(page, fields))
    expect(page.locator("#carrier")).to_have_value(resident.carrier)
    expect(page.locator("#phone")).to_have_value(resident.phone)
    expect(page.locator("#method-sms")).to_be_checked()
    for box in page.locator("form:has(#name) input[type=checkbox]").all():
        expect(box).to_be_checked()
    walk.back_the_same_way()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/login/carrier/verify"))

    walk = KeyboardWalk(page)
    if not walk.focused_matches("#code"):
        walk.to("#code")
    page.keyboard.type(world.sandbox.last_code(resident.e164))
    walk.to("form:has(#code) [type=submit]")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/login/welcome"))

    walk = KeyboardWalk(page)
    walk.to("a[href$='/account']")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/account$"))


def test_resident_signs_in_by_carrier_with_the_keyboard_alone(page: Page, world: World) -> None:
    carrier_sign_in_by_keyboard(page, world, world.new_resident(carrier="KT"))
    expect(page.locator("dl.facts")).to_contain_text("정다산")


def test_resident_adds_a_passkey_and_signs_in_with_it_by_keyboard(page: Page, world: World) -> None:
    authenticator = add_authenticator(page)
    carrier_sign_in_by_keyboard(page, world, world.new_resident())

    page.goto(f"{world.base}/account/passkeys")
    walk = KeyboardWalk(page)
    walk.to("#passkey-register")
    with authenticator.touched():
        page.keyboard.press("Enter")
        expect(page.locator("a[href*='/remove']")).to_have_count(1)

    page.goto(f"{world.base}/account")
    walk = KeyboardWalk(page)
    walk.to("form[action$='/logout/session'] [type=submit]")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("about:blank")  # the autofill request of that /login would hold the authenticator

    # Passkey autofill starts waiting as /login loads; the resident presses the passkey button instead.
    with page.expect_request(lambda request: request.url.endswith("/login/passkey/options")):
        page.goto(f"{world.base}/login")
    walk = KeyboardWalk(page)
    walk.to("#passkey-signin")
    walk.back_the_same_way()
    with authenticator.touched():
        page.keyboard.press("Enter")
        expect(page).to_have_url(re.compile(r"/account$"))
    expect(page.locator("dl.facts")).to_contain_text("정다산")
