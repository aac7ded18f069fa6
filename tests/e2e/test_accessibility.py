"""axe-core (pinned in axe/package.json) over every page a resident can see, in Korean and English, at 320 and
1280 px: no WCAG 2.1 A or AA violation.

Each page is reached through real flows (page_states.py: the sandbox agency, the virtual authenticator, real
forms); a page that cannot be reached fails its test. Pages are checked as they are after loading, without
scripts of ours running in them; axe itself is evaluated through DevTools, under the pages' own CSP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from page_states import STATES, World, axe_source, axe_violations, describe_violations, running_world
from playwright.sync_api import Browser, Page
from sandbox_agency import SandboxAgency

LOCALES = {"ko": "ko-KR", "en": "en-US"}
WIDTHS = (320, 1280)
HEIGHT = 800


@pytest.fixture(scope="module")
def axe() -> str:
    return axe_source()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sandbox_url: str, keyring_template: Path) -> Iterator[World]:
    """One IdP for the module (the pages do not depend on the database backend); every state makes its own
    resident, so the states do not see each other."""
    with running_world(tmp_path_factory.mktemp("a11y"), SandboxAgency(sandbox_url), keyring_template) as world:
        yield world


@pytest.fixture(params=sorted(LOCALES))
def resident_page(request: pytest.FixtureRequest, browser: Browser) -> Iterator[Page]:
    """A phone-sized page of a browser asking for Korean or English."""
    context = browser.new_context(locale=LOCALES[request.param], viewport={"width": WIDTHS[0], "height": HEIGHT})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


@pytest.mark.parametrize("name", sorted(STATES))
def test_page_has_no_wcag_violations(name: str, resident_page: Page, world: World, axe: str) -> None:
    world.sandbox.reset()
    world.forget_limits()
    page = resident_page
    STATES[name](page, world)
    page.wait_for_load_state()
    found = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": HEIGHT})
        violations = axe_violations(page, axe)
        if violations:
            found.append(f"at {width} px, {page.url}:\n{describe_violations(violations)}")
    assert not found, f"{name}: axe found WCAG 2.1 A/AA violations\n" + "\n".join(found)


def test_the_run_finds_a_violation_when_there_is_one(page: Page, axe: str) -> None:
    """The harness itself: a page with an unlabelled field and low-contrast text fails, so a pass means something."""
    page.set_content(
        '<!doctype html><html lang="ko"><title>t</title><main><input type="text">'
        '<p style="color:#bbb;background:#fff">흐린 글씨</p></main></html>'
    )
    found = {violation["id"] for violation in axe_violations(page, axe)}
    assert {"label", "color-contrast"} <= found, found
