"""The three whole sign-ins the bench drives over HTTP, each as a resident's browser and the service's back end
would make its requests: passkey, authenticator app (TOTP) and carrier SMS, each from `/authorize` to the
service's `/userinfo` call.

A journey raises SignInFailedError naming the step that went wrong; each request's time is recorded under its
step's name, so a slow step shows in the report.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pyotp
from browser import Browser, Connection, HttpError, Response
from seed import REDIRECT_URI, Population

TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))
from webauthn_authenticator import Credential, SoftAuthenticator  # noqa: E402  (tests/ is put on the path above)

CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
SCOPE = "openid profile phone"
TOTP_PERIOD = 30  # RFC 6238 §5.2, as idp/authn/totp.py
CARRIER_USES_PER_LINE = 9  # the IdP and the sandbox allow 10 codes a day to one phone; the warm-up takes some


class SignInFailedError(Exception):
    """A step answered what a sign-in does not: the step's name and what came back."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail


@dataclass
class Steps:
    """Seconds per request, by step name, and the requests sent to each server."""

    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    idp_requests: int = 0
    sandbox_requests: int = 0
    connections: int = 0


@dataclass(frozen=True, slots=True)
class Target:
    """Where the IdP listens and how it names itself (the issuer's host, for the Host header and the origin)."""

    host: str
    port: int
    host_header: str
    origin: str
    rp_id: str
    client_id: str
    client_secret: str
    sandbox_port: int | None = None

    @property
    def basic(self) -> str:
        pair = f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}"
        return "Basic " + base64.b64encode(pair.encode()).decode()


class Residents:
    """Who signs in next: residents picked at random across the whole base (so every lookup is a real one), a
    TOTP resident at most once per time step (a code is single use per step, RFC 6238 §5.2), a carrier line
    never twice at once and at most CARRIER_USES_PER_LINE times a run (the per-phone daily limit)."""

    def __init__(self, population: Population, *, share: int = 0, shares: int = 1) -> None:
        self.population = population
        self.random = secrets.SystemRandom()
        self.last_step: dict[int, int] = {}
        self.share, self.shares = share, shares
        lines = [line for line in range(population.carrier_lines) if line % shares == share]
        self.random.shuffle(lines)
        self.lines = lines
        self.line_uses = 0
        self.busy: set[int] = set()

    def passkey(self) -> int:
        return self.random.randrange(self.population.residents)

    def totp(self, step: int) -> int:
        for _ in range(1000):
            k = self.random.randrange(self.population.totp_residents)
            if k % self.shares != self.share:
                continue
            i = self.population.totp_resident(k)
            if self.last_step.get(i, -1) < step:
                self.last_step[i] = step
                return i
        raise SignInFailedError("pick", "no TOTP resident left unused in this time step: seed more residents")

    def carrier_line(self) -> int:
        for _ in range(len(self.lines)):
            if self.line_uses >= len(self.lines) * CARRIER_USES_PER_LINE:
                break
            line = self.lines[self.line_uses % len(self.lines)]
            self.line_uses += 1
            if line not in self.busy:
                self.busy.add(line)
                return line
        raise SignInFailedError("pick", "carrier lines used up for this run: raise --carrier-lines")


class Client:
    """One virtual user: signs in again and again, each time as a new browser, for one service whose back end
    keeps its connection to the IdP (and, for carrier sign-ins, the SMS read from the sandbox's outbox)."""

    def __init__(self, target: Target, residents: Residents, steps: Steps, addresses: Callable[[], str]) -> None:
        self.target = target
        self.residents = residents
        self.steps = steps
        self.addresses = addresses
        self.service = Connection(target.host, target.port, target.host_header)
        self.sandbox = (
            Connection(target.host, target.sandbox_port, f"127.0.0.1:{target.sandbox_port}")
            if target.sandbox_port
            else None
        )
        self.authenticator = SoftAuthenticator(target.rp_id, target.origin, backup_eligible=True)
        self.authorize_query = urlencode(
            {
                "response_type": "code",
                "client_id": target.client_id,
                "redirect_uri": REDIRECT_URI,
                "scope": SCOPE,
                "code_challenge_method": "S256",
            }
        )
        self.basic = target.basic
        self.last_tokens: dict[str, Any] = {}
        self.token_form = "grant_type=authorization_code&redirect_uri=" + quote(REDIRECT_URI, safe="")

    def close(self) -> None:
        self.service.close()
        if self.sandbox is not None:
            self.sandbox.close()

    # -- timing ----------------------------------------------------------------------------------------------

    async def _timed(self, step: str, call: Awaitable[Response], *, server: str = "idp") -> Response:
        started = time.perf_counter()
        try:
            response = await call
        except HttpError as error:
            raise SignInFailedError(step, str(error)) from None
        self.steps.times[step].append(time.perf_counter() - started)
        if server == "idp":
            self.steps.idp_requests += 1
        else:
            self.steps.sandbox_requests += 1
        return response

    @staticmethod
    def _expect(step: str, response: Response, status: int, location: str | None = None) -> None:
        if response.status != status or (location is not None and not response.location.startswith(location)):
            where = f" → {response.location[:80]}" if response.location else ""
            raise SignInFailedError(step, f"status {response.status}{where}: {response.text[:200]!r}")

    # -- the parts every sign-in shares ------------------------------------------------------------------------

    async def _authorize(self, browser: Browser) -> tuple[str, str, str]:
        """GET /authorize with PKCE as a service sends the resident; the sign-in page it leads to, the state and
        the code verifier."""
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(12)
        # token_urlsafe and base64url values need no escaping: the query is built, not encoded (urlencode's
        # quoting cost the generator more than the rest of the request).
        query = f"{self.authorize_query}&state={state}&nonce={secrets.token_urlsafe(12)}&code_challenge={challenge}"
        response = await self._timed("authorize", browser.request("GET", "/authorize?" + query))
        self._expect("authorize", response, 303, "/login?")
        return response.location, state, verifier

    async def _sign_in_page(self, browser: Browser, login: str) -> str:
        response = await self._timed("login page", browser.request("GET", login))
        self._expect("login page", response, 200)
        return response.text

    async def _finish(self, browser: Browser, authorize: str, state: str, verifier: str) -> None:
        """Back at /authorize signed in: the code at the service's redirect URI, exchanged by its back end, and
        UserInfo read with the access token."""
        if not authorize.startswith("/authorize?"):
            raise SignInFailedError("signed in", f"sent to {authorize[:80]!r}, not back to /authorize")
        response = await self._timed("authorize (signed in)", browser.request("GET", authorize))
        self._expect("authorize (signed in)", response, 302, REDIRECT_URI)
        params = parse_qs(urlsplit(response.location).query)
        if params.get("state") != [state] or not params.get("code"):
            raise SignInFailedError("authorize (signed in)", f"no code or another state: {response.location[:120]}")
        # The code is token-safe characters (Authlib's generate_token), the verifier base64url.
        form = f"{self.token_form}&code={params['code'][0]}&code_verifier={verifier}".encode()
        headers = [("Authorization", self.basic), ("Content-Type", "application/x-www-form-urlencoded")]
        response = await self._timed("token", self.service.request("POST", "/token", headers, form))
        self._expect("token", response, 200)
        tokens = json.loads(response.body)
        self.last_tokens = tokens
        if "id_token" not in tokens:
            raise SignInFailedError("token", "no ID token")
        bearer = [("Authorization", "Bearer " + tokens["access_token"])]
        response = await self._timed("userinfo", self.service.request("GET", "/userinfo", bearer))
        self._expect("userinfo", response, 200)
        if "phone_number" not in json.loads(response.body):
            raise SignInFailedError("userinfo", "no phone_number claim")

    def _browser(self) -> Browser:
        return Browser(self.target.host, self.target.port, self.target.host_header, self.addresses())

    async def _with_browser(self, journey: Callable[[Browser], Awaitable[None]]) -> None:
        browser = self._browser()
        try:
            await journey(browser)
        finally:
            self.steps.connections += browser.connection.opened
            browser.close()

    # -- passkey --------------------------------------------------------------------------------------------------

    async def passkey(self) -> None:
        await self._with_browser(self._passkey)

    async def _passkey(self, browser: Browser) -> None:
        i = self.residents.passkey()
        login, state, verifier = await self._authorize(browser)
        page = await self._sign_in_page(browser, login)
        token = CSRF_META.search(page)
        if token is None:
            raise SignInFailedError("login page", "no csrf-token meta")
        headers = [("Content-Type", "application/json"), ("X-CSRFToken", token.group(1))]
        response = await self._timed(
            "passkey options", browser.request("POST", "/login/passkey/options", headers=headers, body=b"{}")
        )
        self._expect("passkey options", response, 200)
        assertion = self._assertion(i, json.loads(response.body))
        response = await self._timed(
            "passkey verify", browser.request("POST", "/login/passkey/verify", headers=headers, body=assertion)
        )
        self._expect("passkey verify", response, 200)
        await self._finish(browser, json.loads(response.body)["redirect"], state, verifier)

    def _assertion(self, i: int, options: dict[str, Any]) -> bytes:
        """The resident's passkey answers the options: a synced passkey, counter 0 (as phones' passkeys send)."""
        population = self.residents.population
        credential_id = population.credential_id(i)
        user_handle = population.resident_id(i).bytes
        self.authenticator.credentials = {
            credential_id: Credential(credential_id, population.key(i), self.target.rp_id, user_handle)
        }
        return json.dumps(self.authenticator.get(options, credential_id, sign_count=0)).encode()

    # -- authenticator app ----------------------------------------------------------------------------------------

    async def totp(self) -> None:
        await self._with_browser(self._totp)

    async def _totp(self, browser: Browser) -> None:
        login, state, verifier = await self._authorize(browser)
        await self._sign_in_page(browser, login)
        response = await self._timed("totp page", browser.request("GET", "/login/totp"))
        self._expect("totp page", response, 200)
        token = CSRF_FIELD.search(response.text)
        if token is None:
            raise SignInFailedError("totp page", "no csrf_token field")
        now = time.time()
        i = self.residents.totp(int(now // TOTP_PERIOD))
        population = self.residents.population
        code = pyotp.TOTP(population.totp_secret(i)).at(now)
        national = "0" + population.phone(i)[3:]
        form = urlencode({"csrf_token": token.group(1), "kind": "totp", "phone": national, "code": code}).encode()
        headers = [("Content-Type", "application/x-www-form-urlencoded")]
        response = await self._timed("totp verify", browser.request("POST", "/login/totp", headers=headers, body=form))
        self._expect("totp verify", response, 303)
        await self._finish(browser, response.location, state, verifier)

    # -- carrier SMS ----------------------------------------------------------------------------------------------

    async def carrier(self) -> None:
        line = self.residents.carrier_line()
        try:
            await self._with_browser(lambda browser: self._carrier(browser, line))
        finally:
            self.residents.busy.discard(line)

    async def _carrier(self, browser: Browser, line: int) -> None:
        assert self.sandbox is not None
        population = self.residents.population
        person = population.person(population.carrier_resident(line))
        national = "0" + person.phone[3:]
        login, state, verifier = await self._authorize(browser)
        await self._sign_in_page(browser, login)
        response = await self._timed("carrier page", browser.request("GET", "/login/carrier?phone=" + national))
        self._expect("carrier page", response, 200)
        token = CSRF_FIELD.search(response.text)
        if token is None:
            raise SignInFailedError("carrier page", "no csrf_token field")
        form = {
            "csrf_token": token.group(1),
            "carrier": person.carrier,
            "name": person.name,
            "birthdate": person.birthdate.strftime("%Y%m%d"),
            "rrn_digit7": person.rrn_digit7,
            "phone": national,
            "method": "sms",
            "consent": "y",
        }
        headers = [("Content-Type", "application/x-www-form-urlencoded")]
        body = urlencode(form).encode()
        response = await self._timed(
            "carrier start", browser.request("POST", "/login/carrier", headers=headers, body=body)
        )
        self._expect("carrier start", response, 303, "/login/carrier/verify")
        response = await self._timed("carrier code page", browser.request("GET", "/login/carrier/verify"))
        self._expect("carrier code page", response, 200)
        token = CSRF_FIELD.search(response.text)
        if token is None:
            raise SignInFailedError("carrier code page", "no csrf_token field")
        outbox = await self._timed(
            "sandbox outbox",
            self.sandbox.request("GET", "/sandbox/outbox?" + urlencode({"phone": person.phone})),
            server="sandbox",
        )
        self._expect("sandbox outbox", outbox, 200)
        messages = json.loads(outbox.body)
        if not messages:
            raise SignInFailedError("sandbox outbox", "no text message to the phone")
        form = {"csrf_token": token.group(1), "action": "confirm", "code": messages[-1]["code"]}
        body = urlencode(form).encode()
        response = await self._timed(
            "carrier verify", browser.request("POST", "/login/carrier/verify", headers=headers, body=body)
        )
        self._expect("carrier verify", response, 303)
        await self._finish(browser, response.location, state, verifier)


KINDS = ("passkey", "totp", "carrier")
