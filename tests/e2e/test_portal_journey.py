"""The newcomer's journey of `make run`, in real Chromium: the IdP, the sandbox agency and the sample portal started
by the same script (examples/portal/run.py), a first sign-in by the mobile carrier, a passkey, a permit application
that steps up through the portal's API challenge, RP-initiated logout, a passkey sign-in, and sign-out everywhere
that the portal hears of through back-channel logout."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, Request, expect
from sandbox_agency import free_port
from test_passkeys_browser import Authenticator, add_authenticator
from waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
KIM = {"carrier": "SKT", "name": "김경기", "birthdate": "1985-03-14", "digit": "1", "phone": "010-0000-0001"}
KIM_E164 = "+821000000001"
URL_LINE = re.compile(r"^\s+(portal|IdP|virtual phone):\s+(\S+)", re.MULTILINE)


@dataclass
class Stack:
    portal: str
    idp: str
    phone: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def stack(tmp_path: Path, keys_dir: Path, fresh_database_url: str) -> Iterator[Stack]:
    """`make run`'s script on free ports, with this test's database and keyring; stopped as Ctrl-C stops it."""
    idp_port, portal_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("IDP_", "PORTAL_"))}
    env.update(
        IDP_INSTANCE_DIR=str(tmp_path / "instance"),
        IDP_KEYS_DIR=str(keys_dir),
        IDP_DATABASE_URL=fresh_database_url,
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "run.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "examples.portal.run",
                "--idp-port",
                str(idp_port),
                "--portal-port",
                str(portal_port),
                "--idp-workers",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def ready() -> dict[str, str] | None:
            if process.poll() is not None:
                raise AssertionError(f"run.py exited: {log.read_text()}")
            text = log.read_text(errors="replace")
            return dict(URL_LINE.findall(text)) if "Ctrl-C stops everything" in text else None

        try:
            urls = wait_until(ready, timeout=90, waiting_for="run.py to print the URLs", detail=log.read_text)
            yield Stack(urls["portal"].rstrip("/"), urls["IdP"].removesuffix("/account"), urls["virtual phone"], log)
        finally:
            # What Ctrl-C does: run.py stops the servers it started, and exits.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise
    assert process.returncode == 0, log.read_text()


def carrier_sign_in(page: Page, stack: Stack) -> None:
    """At the IdP's /login: the carrier form, and the SMS code read from the sandbox's virtual phone page."""
    page.locator("form[action$='/login/carrier'] button").click()
    page.get_by_label("통신사", exact=True).select_option(KIM["carrier"])
    page.get_by_label("이름").fill(KIM["name"])
    page.get_by_label("생년월일").fill(KIM["birthdate"])
    page.get_by_label("주민등록번호 뒷자리 첫 숫자").fill(KIM["digit"])
    page.get_by_label("휴대폰 번호").fill(KIM["phone"])
    page.get_by_label("아래 내용에 모두 동의합니다.").check()
    page.get_by_role("button", name="인증 요청").click()
    phone = page.context.new_page()
    phone.goto(stack.phone)
    code = phone.locator(".code").last.inner_text().strip()
    phone.close()
    page.get_by_label("인증번호", exact=True).fill(code)
    page.get_by_role("button", name="확인", exact=True).click()


def claim(page: Page, name: str) -> str:
    return page.locator(f"[data-claim={name}]").inner_text().strip()


def apply_for_permit(page: Page) -> None:
    page.get_by_label("건축물 주소").fill("경기도 수원시 팔달구 효원로 1")
    page.get_by_label("용도").select_option("house")
    page.get_by_role("button", name="신청서 제출").click()


def test_newcomer_journey_signs_in_steps_up_and_is_signed_out_everywhere(page: Page, stack: Stack) -> None:
    authenticator: Authenticator = add_authenticator(page)

    # A first visit: sign in with the mobile carrier, which creates the account and offers a passkey.
    page.goto(f"{stack.portal}/")
    page.get_by_role("link", name="경기도 통합 로그인으로 로그인").click()
    expect(page).to_have_url(re.compile(re.escape(stack.idp) + "/login"))
    carrier_sign_in(page, stack)
    expect(page.get_by_role("heading", name="계정이 만들어졌습니다")).to_be_visible()
    # The passkey is added on the welcome page itself, which then goes on to the portal that asked.
    with authenticator.touched():
        page.get_by_role("button", name="패스키 추가").click()
        # Back at the portal, signed in by the carrier: aal1, sms mca.
        expect(page.get_by_role("heading", name=re.compile("로그인됨"))).to_be_visible()
    assert page.url.startswith(stack.portal), page.url
    assert claim(page, "acr") == f"{stack.idp}/acr/aal1"
    assert claim(page, "amr") == "sms mca"
    assert claim(page, "name") == "김경기"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d KST", claim(page, "auth_time"))

    # The permit API refuses the carrier sign-in with an RFC 9470 challenge; the portal sends the resident to
    # /authorize with exactly its acr_values and max_age, the passkey answers, and the application is kept.
    page.get_by_role("link", name="건축 인허가 신청").click()
    step_ups: dict[str, str] = {}
    page.on("request", lambda request: _record_authorize(request, stack, step_ups))
    with authenticator.touched():
        apply_for_permit(page)
        expect(page.get_by_text("본인 인증이 끝났습니다")).to_be_visible()
    assert len(step_ups) == 1
    (step_up,) = step_ups.values()
    assert "acr_values=phr+phrh" in step_up
    assert "max_age=300" in step_up
    expect(page.get_by_label("건축물 주소")).to_have_value("경기도 수원시 팔달구 효원로 1")
    page.get_by_role("button", name="신청서 제출").click()
    expect(page.get_by_role("heading", name="신청이 접수되었습니다")).to_be_visible()
    expect(page.locator("[data-field=number]")).to_have_text(re.compile(r"GG-\d{4}-000001"))

    # RP-initiated logout ends the IdP session too and comes back to the portal, signed out.
    page.goto(f"{stack.portal}/")
    page.get_by_role("button", name="로그아웃", exact=True).click()
    expect(page).to_have_url(f"{stack.portal}/")
    expect(page.get_by_role("link", name="경기도 통합 로그인으로 로그인")).to_be_visible()

    # Signing back in with the passkey reaches phr, which the permit API takes at once: no second step-up.
    with authenticator.touched():
        page.get_by_role("link", name="경기도 통합 로그인으로 로그인").click()
        expect(page.get_by_role("heading", name=re.compile("로그인됨"))).to_be_visible()
    assert claim(page, "acr") in ("phr", "phrh")
    assert claim(page, "amr") in ("swk user mfa", "hwk user mfa")
    page.get_by_role("link", name="건축 인허가 신청").click()
    apply_for_permit(page)
    expect(page.get_by_role("heading", name="신청이 접수되었습니다")).to_be_visible()
    assert len(step_ups) == 1

    # Sign out everywhere, at the IdP's account page: the portal hears of it by back-channel logout.
    page.goto(f"{stack.portal}/")
    page.get_by_role("link", name=re.compile("모든 기기에서 로그아웃")).click()
    page.get_by_role("link", name="모든 기기에서 로그아웃", exact=True).click()
    page.get_by_role("button", name=re.compile("기기 \\d+대에서 로그아웃")).click()
    wait_until(
        lambda: "back-channel logout: 1 session(s) ended" in stack.output(),
        timeout=20,
        waiting_for="the portal to receive the back-channel logout",
        detail=stack.output,
    )
    page.goto(f"{stack.portal}/")
    expect(page.get_by_role("link", name="경기도 통합 로그인으로 로그인")).to_be_visible()
    assert not re.search(r"[?&]code=", stack.output())  # no authorization code in any log


def _record_authorize(request: Request, stack: Stack, seen: dict[str, str]) -> None:
    """Authorization requests with acr_values, by state (the IdP's login page returns to the same request)."""
    if request.url.startswith(f"{stack.idp}/authorize?") and "acr_values=" in request.url:
        seen[parse_qs(urlsplit(request.url).query)["state"][0]] = request.url
