"""Every page a resident can see, and how a real browser gets there: a table of states for the accessibility run
(test_accessibility.py), the keyboard-only sign-in (test_keyboard.py) and the screenshots of docs/screens/.

A state is a function that takes a fresh browser page and leaves it showing one page in one situation, reached the
way a resident reaches it: through the sandbox agency, the virtual WebAuthn authenticator and real forms. Adding a
page is adding a function decorated with `@state("name")`.

Flows find fields and buttons by their ids and form actions, not by their wording, so that rewording a page does
not break the table; the wording has its own tests.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pyotp
from idp_server import IdpServer
from interop_support import RegisteredClient, register_client
from playwright.sync_api import Page, expect
from sandbox_agency import SandboxAgency, free_port
from sqlalchemy import create_engine, text

from idp.db import upgrade_database
from idp.keyring import Keyring

AXE_DIR = Path(__file__).with_name("axe")
AXE_SCRIPT = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
NPM_TIMEOUT = 180
# WCAG 2.1 level A and AA, as axe tags its rules.
AXE_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa")
# Rules switched off, each with its reason. Keep it empty: a rule that misfires is fixed in the page or reported.
AXE_DISABLED_RULES: dict[str, str] = {}

SERVICE_NAME = "경기 민원포털"
REDIRECT = "https://portal.example.kr/callback"
POST_LOGOUT = "https://portal.example.kr/signed-out"
SERVICE_SCOPE = "openid profile phone"
WRONG_CODE_LIMIT = 8  # more wrong SMS codes than the agency takes before it ends the verification
WRONG_TOTP_LIMIT = 12  # more wrong codes than TOTP_FAILURES_PER_RESIDENT lets through before the lockout


# -- the world: a sandbox agency and an IdP using it ---------------------------------------------------------------


@dataclass
class Resident:
    """A sandbox resident made for one state, so that every state starts from an account of its own."""

    name: str
    birthdate: str
    rrn_digit7: str
    phone: str  # as typed: 010-0000-1234
    e164: str
    carrier: str = "SKT"


@dataclass
class World:
    """A running IdP on http://localhost:PORT, the sandbox agency it calls, and a registered service."""

    base: str
    sandbox: SandboxAgency
    database_url: str
    service: RegisteredClient

    def new_resident(self, carrier: str = "SKT") -> Resident:
        """A new line in the sandbox agency (it has no account at the IdP yet)."""
        for _ in range(20):
            number = 2000 + secrets.randbelow(8000)
            resident = Resident("정다산", "1985-03-14", "1", f"010-0000-{number}", f"+82100000{number}", carrier)
            added = self.sandbox.call(
                "POST",
                "/sandbox/residents",
                {
                    "name": resident.name,
                    "birthdate": resident.birthdate,
                    "rrn_digit7": resident.rrn_digit7,
                    "phone": resident.phone,
                    "carrier": resident.carrier,
                },
            )
            if isinstance(added, dict) and added.get("phone") == resident.e164:
                return resident
        raise AssertionError(f"the sandbox refused every new resident: {added}")

    def forget_limits(self) -> None:
        """Start a state with no rate limit counted: every state signs in from 127.0.0.1, more often than the
        per-address limits allow a real resident."""
        engine = create_engine(self.database_url)
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM rate_limit_counter"))
        engine.dispose()

    def authorize_url(self, **extra: str) -> str:
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        query = {
            "response_type": "code",
            "client_id": self.service.client_id,
            "redirect_uri": REDIRECT,
            "scope": SERVICE_SCOPE,
            "state": secrets.token_urlsafe(8),
            "nonce": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **extra,
        }
        return f"{self.base}/authorize?{urlencode(query)}"


@contextlib.contextmanager
def running_world(directory: Path, sandbox: SandboxAgency, keyring_template: Path | None = None) -> Iterator[World]:
    """`idp serve` on SQLite in `directory` (the pages do not depend on the database), using `sandbox`, with
    "경기 민원포털" registered as a service that asks for consent."""
    keys = directory / "keys"
    if keyring_template is not None:
        shutil.copytree(keyring_template, keys)
    else:
        Keyring.from_directory(keys).ensure_default()
    database_url = f"sqlite:///{directory / 'idp.sqlite3'}"
    upgrade_database(database_url)
    port = free_port()
    instance = directory / "instance"
    env = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
    env.update(
        IDP_ISSUER=f"http://localhost:{port}",
        IDP_INSTANCE_DIR=str(instance),
        IDP_KEYS_DIR=str(keys),
        IDP_DATABASE_URL=database_url,
        IDP_CARRIER_AGENCY_URL=sandbox.url,
    )
    server = IdpServer(env, directory / "serve.log", 1, port)
    try:
        base = f"http://localhost:{port}"
        service = register_client(
            issuer=base,
            database_url=database_url,
            instance_dir=instance,
            keys_dir=keys,
            name=SERVICE_NAME,
            redirect_uris=(REDIRECT,),
            post_logout_redirect_uris=(POST_LOGOUT,),
        )
        yield World(base, sandbox, database_url, service)
    finally:
        server.stop()


# -- axe -------------------------------------------------------------------------------------------------------------


def axe_source() -> str:
    """axe-core's script, installed from axe/package-lock.json the first time (`npm ci`)."""
    if not AXE_SCRIPT.is_file():
        for tool in ("node", "npm"):
            assert shutil.which(tool), f"{tool} is missing: the accessibility tests install axe-core with npm"
        command = ["npm", "ci", "--no-audit", "--no-fund"]
        result = subprocess.run(command, cwd=AXE_DIR, capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False)
        assert result.returncode == 0, f"{' '.join(command)} failed: {(result.stderr or result.stdout)[-2000:]}"
    return AXE_SCRIPT.read_text(encoding="utf-8")


def axe_violations(page: Page, source: str) -> list[dict[str, Any]]:
    """axe's WCAG 2.1 A/AA violations on the page as it is now (the script is evaluated through DevTools, so the
    pages' Content-Security-Policy does not have to allow it)."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(source)
    options = {
        "runOnly": {"type": "tag", "values": list(AXE_TAGS)},
        "rules": {rule: {"enabled": False} for rule in AXE_DISABLED_RULES},
        "resultTypes": ["violations"],
    }
    result: dict[str, Any] = page.evaluate("options => window.axe.run(document, options)", options)
    violations: list[dict[str, Any]] = result["violations"]
    return violations


def describe_violations(violations: list[dict[str, Any]]) -> str:
    lines = []
    for violation in violations:
        lines.append(f"  {violation['id']} ({violation['impact']}): {violation['help']}")
        for node in violation["nodes"][:5]:
            summary = " ".join((node.get("failureSummary") or "").split())
            lines.append(f"    {' '.join(map(str, node['target']))}: {node['html'][:160]} — {summary[:300]}")
    return "\n".join(lines)


# -- steps a resident takes -------------------------------------------------------------------------------------------


CARRIER_FORM = "form:has(#name)"
CODE_FORM = "form:has(#code)"


def fill_carrier_form(page: Page, resident: Resident, *, method: str = "sms", birthdate: str | None = None) -> None:
    page.locator("#carrier").select_option(resident.carrier)
    page.locator("#name").fill(resident.name)
    page.locator("#birthdate").fill(birthdate or resident.birthdate)
    page.locator("#rrn_digit7").fill(resident.rrn_digit7)
    page.locator("#phone").fill(resident.phone)
    page.locator(f"#method-{method}").check()
    for box in page.locator(f"{CARRIER_FORM} input[type=checkbox]").all():
        box.check()


def goto_expecting(page: Page, url: str, status: int) -> None:
    answer = page.goto(url)
    assert answer is not None
    assert answer.status == status, (answer.status, url)


def submit(page: Page, form: str) -> None:
    page.locator(f"{form} [type=submit]").first.click()


def start_carrier(page: Page, world: World, resident: Resident, *, method: str = "sms") -> None:
    """From the carrier form to the page that waits for the code or the approval."""
    page.goto(f"{world.base}/login/carrier")
    fill_carrier_form(page, resident, method=method)
    submit(page, CARRIER_FORM)
    expect(page).to_have_url(re.compile(r"/login/carrier/verify"))


def carrier_sign_in(page: Page, world: World, resident: Resident) -> None:
    """A whole carrier sign-in by text message; the page is wherever the IdP sends the resident next."""
    start_carrier(page, world, resident)
    page.locator("#code").fill(world.sandbox.last_code(resident.e164))
    submit(page, CODE_FORM)
    expect(page).not_to_have_url(re.compile(r"/login/carrier"))


def signed_in(page: Page, world: World) -> Resident:
    resident = world.new_resident()
    carrier_sign_in(page, world, resident)
    return resident


def start_totp_set_up(page: Page, world: World) -> None:
    page.goto(f"{world.base}/account/totp")
    submit(page, "form[action$='/account/totp/setup']")
    expect(page.locator("code.secret")).to_be_visible()


def add_passkey(page: Page, world: World, authenticator: Any) -> None:
    page.goto(f"{world.base}/account/passkeys")
    with authenticator.touched():
        page.locator("#passkey-register").click()
        expect(page.locator("a[href*='/remove']")).to_have_count(1)


# -- the states ------------------------------------------------------------------------------------------------------


State = Callable[[Page, World], None]
STATES: dict[str, State] = {}
SANDBOX_STATES: set[str] = set()  # pages of the sandbox agency, not of the IdP


def state(name: str, *, sandbox: bool = False) -> Callable[[State], State]:
    def register(function: State) -> State:
        assert name not in STATES, name
        STATES[name] = function
        if sandbox:
            SANDBOX_STATES.add(name)
        return function

    return register


@state("login")
def login(page: Page, world: World) -> None:
    page.goto(f"{world.base}/login")


@state("login-for-a-service")
def login_for_a_service(page: Page, world: World) -> None:
    page.goto(world.authorize_url())
    expect(page).to_have_url(re.compile(r"/login\?"))


@state("carrier-form")
def carrier_form(page: Page, world: World) -> None:
    page.goto(f"{world.base}/login/carrier")


@state("carrier-form-with-an-error")
def carrier_form_with_an_error(page: Page, world: World) -> None:
    page.goto(f"{world.base}/login/carrier")
    fill_carrier_form(page, world.new_resident(), birthdate="1985-02-30")
    submit(page, CARRIER_FORM)
    expect(page.locator("#birthdate[aria-invalid=true]")).to_be_visible()


@state("carrier-form-nothing-typed")
def carrier_form_nothing_typed(page: Page, world: World) -> None:
    page.goto(f"{world.base}/login/carrier")
    submit(page, CARRIER_FORM)
    expect(page.locator("[aria-invalid=true]").first).to_be_visible()


@state("code-page")
def code_page(page: Page, world: World) -> None:
    start_carrier(page, world, world.new_resident())
    expect(page.locator("#code")).to_be_visible()


@state("code-page-wrong-code")
def code_page_wrong_code(page: Page, world: World) -> None:
    resident = world.new_resident()
    start_carrier(page, world, resident)
    code = world.sandbox.last_code(resident.e164)
    page.locator("#code").fill("000000" if code != "000000" else "111111")
    submit(page, CODE_FORM)
    expect(page.get_by_role("alert").first).to_be_visible()


@state("approval-page")
def approval_page(page: Page, world: World) -> None:
    start_carrier(page, world, world.new_resident(), method="app")
    expect(page.locator(".match-number")).to_be_visible()


@state("carrier-form-after-a-declined-approval")
def carrier_form_after_a_declined_approval(page: Page, world: World) -> None:
    """The resident declined in the carrier's app: the form again, saying so."""
    resident = world.new_resident()
    start_carrier(page, world, resident)
    start_carrier(page, world, resident, method="app")
    phone_page = world.sandbox.call("GET", f"/phone/{resident.e164}")
    txn_id = re.search(r"/approvals/([A-Za-z0-9_\-]+)", phone_page)
    assert txn_id is not None, phone_page
    world.sandbox.answer(resident.e164, txn_id.group(1), deny=True)
    submit(page, "#check-form")
    expect(page).to_have_url(re.compile(r"/login/carrier$"))
    expect(page.get_by_role("alert").first).to_be_visible()


@state("carrier-form-after-too-many-wrong-codes")
def carrier_form_after_too_many_wrong_codes(page: Page, world: World) -> None:
    """Wrong codes until the verification ends: the form again, saying so."""
    resident = world.new_resident()
    start_carrier(page, world, resident)
    wrong = "000000" if world.sandbox.last_code(resident.e164) != "000000" else "111111"
    for _ in range(WRONG_CODE_LIMIT):
        page.locator("#code").fill(wrong)
        submit(page, CODE_FORM)
        page.wait_for_load_state()
        if page.locator("#code").count() == 0:
            break
    expect(page).to_have_url(re.compile(r"/login/carrier$"))
    expect(page.get_by_role("alert").first).to_be_visible()


@state("welcome")
def welcome(page: Page, world: World) -> None:
    signed_in(page, world)
    expect(page).to_have_url(re.compile(r"/login/welcome"))


@state("welcome-for-a-service")
def welcome_for_a_service(page: Page, world: World) -> None:
    page.goto(world.authorize_url())
    carrier_sign_in(page, world, world.new_resident())
    expect(page).to_have_url(re.compile(r"/login/welcome"))


@state("consent")
def consent(page: Page, world: World) -> None:
    signed_in(page, world)
    page.goto(world.authorize_url())
    expect(page.locator("button[name=decision][value=allow]")).to_be_visible()


@state("totp-login")
def totp_login(page: Page, world: World) -> None:
    page.goto(f"{world.base}/login/totp")


@state("totp-login-wrong-code")
def totp_login_wrong_code(page: Page, world: World) -> None:
    page.goto(f"{world.base}/login/totp")
    page.locator("#phone").fill(world.new_resident().phone)
    page.locator("#code").fill("123456")
    submit(page, CODE_FORM)
    expect(page.get_by_role("alert").first).to_be_visible()


@state("totp-login-locked-out")
def totp_login_locked_out(page: Page, world: World) -> None:
    page.goto(f"{world.base}/login/totp")
    phone = world.new_resident().phone
    for _ in range(WRONG_TOTP_LIMIT):
        page.locator("#phone").fill(phone)
        page.locator("#code").fill("123456")
        with page.expect_response(lambda response: response.request.method == "POST") as answer:
            submit(page, CODE_FORM)
        page.wait_for_load_state()
        if answer.value.status == 429:
            return
        page.goto(f"{world.base}/login/totp")
    raise AssertionError(f"{WRONG_TOTP_LIMIT} wrong codes and still no lockout")


@state("logout-confirmation")
def logout_confirmation(page: Page, world: World) -> None:
    signed_in(page, world)
    page.goto(f"{world.base}/logout?{urlencode({'client_id': world.service.client_id})}")
    expect(page.locator("form[action$='/logout/confirm']")).to_be_visible()


@state("signed-out")
def signed_out(page: Page, world: World) -> None:
    signed_in(page, world)
    page.goto(f"{world.base}/logout")
    submit(page, "form[action$='/logout/confirm']")
    expect(page).to_have_url(re.compile(r"/logout/confirm$"))


@state("error-unknown-service")
def error_unknown_service(page: Page, world: World) -> None:
    goto_expecting(page, world.authorize_url(client_id="no-such-service"), 400)


@state("error-unregistered-redirect")
def error_unregistered_redirect(page: Page, world: World) -> None:
    goto_expecting(page, world.authorize_url(redirect_uri="https://elsewhere.example/callback"), 400)


@state("error-expired-form")
def error_expired_form(page: Page, world: World) -> None:
    """The form was open longer than the flow cookie lives (or was sent from another browser): CSRF refuses it."""
    page.goto(f"{world.base}/login/carrier")
    fill_carrier_form(page, world.new_resident())
    page.context.clear_cookies()
    submit(page, CARRIER_FORM)
    expect(page.locator("#name")).to_have_count(0)


@state("error-verification-ended")
def error_verification_ended(page: Page, world: World) -> None:
    """Another tab of the same browser cancelled the verification this tab still shows."""
    start_carrier(page, world, world.new_resident())
    token = page.locator("form:has(#code) input[name=csrf_token]").input_value()
    cancelled = page.context.request.post(
        f"{world.base}/login/carrier/verify", form={"csrf_token": token, "action": "cancel"}, max_redirects=0
    )
    assert cancelled.status == 303, cancelled.status
    page.locator("#code").fill("123456")
    submit(page, CODE_FORM)
    expect(page.locator("#code")).to_have_count(0)


@state("error-no-such-page")
def error_no_such_page(page: Page, world: World) -> None:
    goto_expecting(page, f"{world.base}/no-such-page", 404)


@state("account")
def account(page: Page, world: World) -> None:
    signed_in(page, world)
    page.goto(f"{world.base}/account")


@state("passkeys-none")
def passkeys_none(page: Page, world: World) -> None:
    signed_in(page, world)
    page.goto(f"{world.base}/account/passkeys")
    expect(page.locator("#passkey-register")).to_be_visible()


@state("passkeys-one")
def passkeys_one(page: Page, world: World) -> None:
    from test_passkeys_browser import add_authenticator

    authenticator = add_authenticator(page)
    signed_in(page, world)
    add_passkey(page, world, authenticator)


@state("account-with-a-new-passkey")
def account_with_a_new_passkey(page: Page, world: World) -> None:
    """A passkey added after a mobile-phone sign-in is provisional: My account warns about it."""
    passkeys_one(page, world)
    page.goto(f"{world.base}/account")


@state("totp-intro")
def totp_intro(page: Page, world: World) -> None:
    signed_in(page, world)
    page.goto(f"{world.base}/account/totp")


@state("totp-set-up")
def totp_set_up(page: Page, world: World) -> None:
    signed_in(page, world)
    start_totp_set_up(page, world)


@state("totp-recovery-codes")
def totp_recovery_codes(page: Page, world: World) -> None:
    turn_on_totp(page, world)


def turn_on_totp(page: Page, world: World) -> Resident:
    resident = signed_in(page, world)
    start_totp_set_up(page, world)
    secret = page.locator("code.secret").inner_text().replace(" ", "")
    page.locator("#code").fill(pyotp.TOTP(secret).now())
    submit(page, CODE_FORM)
    expect(page.locator("ol.recovery-codes li")).to_have_count(10)
    return resident


@state("totp-on")
def totp_on(page: Page, world: World) -> None:
    totp_recovery_codes(page, world)
    page.goto(f"{world.base}/account/totp")


@state("totp-second-step")
def totp_second_step(page: Page, world: World) -> None:
    """A resident with an authenticator app verifies by carrier on another browser: the code is asked next."""
    resident = turn_on_totp(page, world)
    page.context.clear_cookies()
    carrier_sign_in(page, world, resident)
    expect(page).to_have_url(re.compile(r"/login/totp$"))


@state("services-none")
def services_none(page: Page, world: World) -> None:
    signed_in(page, world)
    page.goto(f"{world.base}/account/services")


@state("services-one")
def services_one(page: Page, world: World) -> None:
    consent(page, world)
    # The service is not there: its callback answers with an empty page of its own.
    page.route(f"{REDIRECT}*", lambda route: route.fulfill(content_type="text/html", body="<!doctype html>"))
    page.locator("button[name=decision][value=allow]").click()
    page.wait_for_url(f"{REDIRECT}?*")
    page.goto(f"{world.base}/account/services")
    expect(page.locator("a[href*='/account/services/revoke']")).to_have_count(1)


@state("sandbox-phone", sandbox=True)
def sandbox_phone(page: Page, world: World) -> None:
    """The sandbox's virtual phone with a text message and a pending app approval."""
    resident = world.new_resident()
    start_carrier(page, world, resident)
    start_carrier(page, world, resident, method="app")
    page.goto(f"{world.sandbox.url}/phone/{resident.e164}")


@state("sandbox-phones", sandbox=True)
def sandbox_phones(page: Page, world: World) -> None:
    page.goto(f"{world.sandbox.url}/")
