"""Interop tests' helpers: register a client on a running `idp serve`, a resident's cookie-keeping browser without
JavaScript (httpx) that signs in through the sandbox, and openid-client's relying party (interop/rp.mjs) as a
process."""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import re
import selectors
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from sandbox_agency import SandboxAgency
from sqlalchemy.orm import Session

from idp.db import make_engine
from idp.oidc.clients import ClientSpec, create_client, secret_digest_key
from idp.settings import SECRETS_FILE, Settings

INTEROP_DIR = Path(__file__).with_name("interop")
RP_SCRIPT = INTEROP_DIR / "rp.mjs"
REDIRECT = "https://rp.example.kr/callback"
KIM = {"carrier": "SKT", "name": "김경기", "birthdate": "1985-03-14", "rrn_digit7": "1", "phone": "010-0000-0001"}
KIM_E164 = "+821000000001"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
REQUEST_ID = re.compile(r'name="request_id" value="([^"]+)"')
# The welcome page offers a passkey first; the resident here continues to the service.
CONTINUE_LINK = re.compile(r'<a class="button" id="continue" href="([^"]+)">')
NPM_TIMEOUT = 180  # the first `npm ci` downloads three small packages
STEP_TIMEOUT = 20.0  # one step of rp.mjs: discovery, or every grant and call after the callback


# -- clients -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisteredClient:
    client_id: str
    secret: str | None
    auth_method: str


def register_client(
    *, issuer: str, database_url: str, instance_dir: Path, keys_dir: Path, **spec: Any
) -> RegisteredClient:
    """Register a client the way `idp clients create` does: against the server's database, its secret digested with
    the server's IDP_SECRET_KEY (generated into its instance folder, since the e2e server sets none)."""
    assert (instance_dir / SECRETS_FILE).is_file(), f"no generated secrets in {instance_dir}: is the server's?"
    settings = Settings.from_env(
        {
            "IDP_ISSUER": issuer,
            "IDP_INSTANCE_DIR": str(instance_dir),
            "IDP_DATABASE_URL": database_url,
            "IDP_KEYS_DIR": str(keys_dir),
        }
    )
    fields: dict[str, Any] = {"name": "interop RP", "redirect_uris": (REDIRECT,)}
    fields.update(spec)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        with Session(engine) as db:
            created = create_client(
                db,
                ClientSpec(**fields),
                secret_key=secret_digest_key(settings.secret_key),
                issuer=settings.issuer,
                now=dt.datetime.now(dt.UTC),
            )
            db.commit()
            return RegisteredClient(created.client.id, created.secret, created.client.token_endpoint_auth_method)
    finally:
        engine.dispose()


# -- the resident's browser ----------------------------------------------------------------------------------------


class ResidentBrowser:
    """A browser without JavaScript: keeps cookies, follows the IdP's own redirects, signs in with an SMS code from
    the sandbox, allows consent, and stops at the redirect to the client (which it never contacts)."""

    def __init__(self, sandbox: SandboxAgency, *, person: dict[str, str] = KIM, phone: str = KIM_E164) -> None:
        self.sandbox = sandbox
        self.person = person
        self.phone = phone
        self.http = httpx.Client(follow_redirects=False, timeout=15.0)
        self.signed_in = 0
        self.consented = 0

    def close(self) -> None:
        self.http.close()

    def authorize(self, authorization_url: str, redirect_uri: str = REDIRECT) -> str:
        """Open the authorization URL and go through sign-in and consent; the URL the IdP redirects back to."""
        response = self.http.get(authorization_url)
        for _ in range(12):
            if response.is_redirect:
                location = str(response.url.join(response.headers["Location"]))
                if location.startswith(redirect_uri):
                    assert response.status_code == 302, response.status_code
                    return location
                assert _origin(location) == _origin(authorization_url), f"left the IdP for {location}"
                response = self.http.get(location)
                if urlsplit(location).path == "/login":
                    assert response.status_code == 200, response.text[-500:]
                    response = self._sign_in(_origin(location))
                continue
            assert response.status_code == 200, f"{response.status_code} at {response.url}: {response.text[-800:]}"
            page = response.text
            request_id = REQUEST_ID.search(page)
            if request_id:
                response = self.http.post(
                    f"{_origin(str(response.url))}/consent",
                    data={"csrf_token": _csrf(page), "request_id": request_id.group(1), "decision": "allow"},
                )
                self.consented += 1
                continue
            if response.url.path == "/login/welcome":
                link = CONTINUE_LINK.search(page)
                assert link, page[-800:]
                response = self.http.get(response.url.join(html.unescape(link.group(1))))
                continue
            raise AssertionError(f"unexpected page at {response.url}: {page[-800:]}")
        raise AssertionError("too many steps between the authorization URL and the redirect back")

    def _sign_in(self, origin: str) -> httpx.Response:
        """The carrier form, then the code the sandbox texted; the IdP's answer (a redirect onwards)."""
        form = self.http.get(f"{origin}/login/carrier")
        started = self.http.post(
            f"{origin}/login/carrier",
            data={"csrf_token": _csrf(form.text), "method": "sms", "consent": "y", **self.person},
        )
        assert started.status_code == 303, started.text[-800:]
        verify = self.http.get(f"{origin}/login/carrier/verify")
        done = self.http.post(
            f"{origin}/login/carrier/verify",
            data={"csrf_token": _csrf(verify.text), "action": "confirm", "code": self.sandbox.last_code(self.phone)},
        )
        assert done.status_code == 303, done.text[-800:]
        self.signed_in += 1
        return done


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _csrf(page: str) -> str:
    match = CSRF.search(page)
    assert match, page[-800:]
    return match.group(1)


# -- openid-client (Node.js) ---------------------------------------------------------------------------------------


def ensure_node_modules() -> None:
    """Install interop/package.json's packages once: `npm ci` from the lockfile, `npm install` to create it."""
    if (INTEROP_DIR / "node_modules" / "openid-client").is_dir():
        return
    for tool in ("node", "npm"):
        assert shutil.which(tool), f"{tool} is missing: the interop tests run openid-client on Node.js 20 or later"
    has_lock = (INTEROP_DIR / "package-lock.json").is_file()
    command = ["npm", "ci" if has_lock else "install", "--no-audit", "--no-fund"]
    result = subprocess.run(command, cwd=INTEROP_DIR, capture_output=True, text=True, timeout=NPM_TIMEOUT, check=False)
    assert result.returncode == 0, f"{' '.join(command)} failed: {(result.stderr or result.stdout)[-2000:]}"


class NodeRp:
    """interop/rp.mjs running: its JSON lines read with a deadline, the callback URL written to its stdin."""

    def __init__(
        self,
        *,
        issuer: str,
        client: RegisteredClient,
        redirect_uri: str = REDIRECT,
        scope: str,
        post_logout_redirect_uri: str | None = None,
    ) -> None:
        # `--name=value`: a client id may begin with "-", which node's parseArgs would take for an option.
        options = {
            "issuer": issuer,
            "client-id": client.client_id,
            "auth-method": client.auth_method,
            "redirect-uri": redirect_uri,
            "scope": scope,
        }
        if post_logout_redirect_uri:
            options["post-logout-redirect-uri"] = post_logout_redirect_uri
        argv = ["node", str(RP_SCRIPT), *(f"--{name}={value}" for name, value in options.items())]
        env = {key: value for key, value in os.environ.items() if not key.startswith(("NODE_", "npm_", "RP_"))}
        if client.secret is not None:
            env["RP_CLIENT_SECRET"] = client.secret  # not on the command line, where `ps` shows it
        self.process = subprocess.Popen(
            argv,
            cwd=INTEROP_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def read(self, timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        """The next JSON line; fails with what node printed on stderr if it exits or stays silent."""
        stdout = self.process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while not selector.select(max(0.0, deadline - time.monotonic())):
                if time.monotonic() >= deadline:
                    self.process.kill()
                    raise AssertionError(f"rp.mjs said nothing for {timeout} s: {self._stderr()}")
        line = stdout.readline()
        if not line:
            self.process.wait(timeout=5)
            raise AssertionError(f"rp.mjs exited with {self.process.returncode}: {self._stderr()}")
        message: dict[str, Any] = json.loads(line)
        return message

    def send(self, line: str) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(line + "\n")
        stdin.flush()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=5)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def _stderr(self) -> str:
        """What node wrote on stderr, once it has exited (or been killed)."""
        self.process.wait(timeout=5)
        assert self.process.stderr is not None
        return self.process.stderr.read()[-2000:]
