"""Real Chromium (Debian's /usr/bin/chromium) driven by Playwright, against real servers on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from idp_server import IdpServer
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from sandbox_agency import SandboxAgency, free_port

CHROMIUM = os.environ.get("IDP_TEST_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    context = browser.new_context(locale="ko-KR", viewport={"width": 390, "height": 844})
    context.set_default_timeout(15_000)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def idp(
    start_server: Callable[..., IdpServer],
    tmp_path: Path,
    keys_dir: Path,
    fresh_database_url: str,
    sandbox: SandboxAgency,
) -> IdpServer:
    """`idp serve` on http://localhost:PORT (WebAuthn needs a host name, not 127.0.0.1), using the sandbox."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
    env.update(
        IDP_ISSUER=f"http://localhost:{port}",
        IDP_INSTANCE_DIR=str(tmp_path / "instance"),
        IDP_KEYS_DIR=str(keys_dir),
        IDP_DATABASE_URL=fresh_database_url,
        IDP_CARRIER_AGENCY_URL=sandbox.url,
    )
    server = start_server(env, port=port)
    server.base = f"http://localhost:{port}"
    return server
