"""What is measured: each case's request to the idp and to node-oidc-provider, and the bench client and resident
both servers know for them.

A request is a path or a URL the server's discovery document names, with a method, body and headers; a value
minted before each run (or each request) can stand in it for FRESH; and a request can be the page a browser is
sent to by another (`via`).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from servers import Server

# The client both servers know for the token cases (bench/node/provider.mjs registers the same): confidential,
# client_secret_basic, code flow with refresh tokens and client credentials, pairwise subjects, RS256 ID tokens.
NODE_CLIENT_ID = "bench"
REDIRECT_URI = "http://localhost/callback"
CODE_SCOPE = "openid profile phone offline_access"
# What the /authorize cases ask for. Without offline_access: node-oidc-provider drops it from a request without
# prompt=consent (OIDC Core §11), so both servers would not be asked the same thing.
AUTHORIZE_SCOPE = "openid profile phone"
# PKCE (S256): both servers require it for these codes; one verifier serves every minted code.
CODE_VERIFIER = "bench-code-verifier-0123456789-abcdefghijklmnopqrstuvwxyz"
# The resident the codes and tokens are for; node's account has the same claims.
RESIDENT = {"name": "김경기", "birthdate": dt.date(1985, 3, 14), "phone": "+821000000001", "carrier": "SKT"}
# Replaced in a request's body and headers by a value minted before each run (or each request: `single_use`).
FRESH = "__BENCH_FRESH__"

# code: an authorization code; refresh_token; access_token: one the token endpoint issued for a code;
# login_cookie: the Cookie header of a browser whose resident signed in and allowed the bench client.
MintKind = Literal["code", "refresh_token", "access_token", "login_cookie"]


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2 S256."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request for wrk: a fixed path, or a URL the server's discovery document names (and a query).

    With `fresh`, a value of that kind is minted before each run and replaces FRESH in the body and headers; with
    `single_use` as well, every request gets its own value (authorization codes, refresh tokens) and none is reused.
    With `via`, the request is where the answer to `via` sends a browser: before each run `via` is sent once
    without cookies, must answer with a redirect, and its Location, with the cookies it set, is what wrk asks for.
    With `expect_redirect_with`, the answer must be a redirect (302 or 303) whose Location carries that query
    parameter.
    """

    path: str | None = None
    discovery_field: str | None = None
    query: str = ""
    method: str = "GET"
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    expect_status: int = 200
    expect_redirect_with: str | None = None
    fresh: MintKind | None = None
    single_use: bool = False
    via: Request | None = None

    @classmethod
    def get(cls, path: str) -> Request:
        return cls(path=path)

    @classmethod
    def from_discovery(cls, name: str) -> Request:
        """The path of the URL the discovery document gives under `name` (e.g. `jwks_uri`)."""
        return cls(discovery_field=name)

    @property
    def needs_script(self) -> bool:
        return self.method != "GET" or self.body is not None or bool(self.headers)

    def path_on(self, server: Server) -> str:
        """The path (and query) on `server`."""
        if self.path is not None:
            path = self.path
        else:
            assert self.discovery_field is not None
            path = server.path_of(self.discovery_field)
        return f"{path}?{self.query}" if self.query else path

    def with_value(self, value: str) -> Request:
        """This request with FRESH replaced by `value` (one value for the whole run)."""
        body = self.body.replace(FRESH.encode(), value.encode()) if self.body is not None else None
        headers = {name: text.replace(FRESH, value) for name, text in self.headers.items()}
        return dataclasses.replace(self, body=body, headers=headers, fresh=None, single_use=False)


@dataclass(frozen=True, slots=True)
class Credentials:
    """The bench client as one server knows it."""

    client_id: str
    client_secret: str

    def basic(self) -> dict[str, str]:
        """client_secret_basic: id and secret form-encoded, then Base64 (RFC 6749 §2.3.1)."""
        pair = f"{urllib.parse.quote(self.client_id, safe='')}:{urllib.parse.quote(self.client_secret, safe='')}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


RequestSpec = Request | Callable[[Credentials], Request]


@dataclass(frozen=True, slots=True)
class Case:
    """An endpoint measured on both servers, by name (`--only NAME`).

    A case that touches the idp's database (`uses_database`) is measured once per database (SQLite, PostgreSQL).
    """

    name: str
    idp: RequestSpec
    node: RequestSpec
    uses_database: bool = False


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _form(**fields: str) -> bytes:
    # FRESH is made of characters urlencode leaves alone, so it can still be found and replaced.
    return urllib.parse.urlencode(fields).encode()


def client_credentials_request(client: Credentials) -> Request:
    return Request(
        discovery_field="token_endpoint",
        method="POST",
        body=_form(grant_type="client_credentials"),
        headers={**FORM, **client.basic()},
    )


def authorization_code_request(client: Credentials) -> Request:
    body = _form(grant_type="authorization_code", code=FRESH, redirect_uri=REDIRECT_URI, code_verifier=CODE_VERIFIER)
    return Request(
        discovery_field="token_endpoint",
        method="POST",
        body=body,
        headers={**FORM, **client.basic()},
        fresh="code",
        single_use=True,
    )


def refresh_token_request(client: Credentials) -> Request:
    return Request(
        discovery_field="token_endpoint",
        method="POST",
        body=_form(grant_type="refresh_token", refresh_token=FRESH),
        headers={**FORM, **client.basic()},
        fresh="refresh_token",
        single_use=True,
    )


def userinfo_request(client: Credentials) -> Request:
    return Request(
        discovery_field="userinfo_endpoint", headers={"Authorization": f"Bearer {FRESH}"}, fresh="access_token"
    )


def introspection_request(client: Credentials) -> Request:
    return Request(
        discovery_field="introspection_endpoint",
        method="POST",
        body=_form(token=FRESH, token_type_hint="access_token"),  # noqa: S106  (a token type, not a secret)
        headers={**FORM, **client.basic()},
        fresh="access_token",
    )


def authorization_query(client: Credentials, *, scope: str = AUTHORIZE_SCOPE) -> str:
    """A service's authorization request for a code (OIDC Core §3.1.2.1), with PKCE: the same every time (neither
    server requires a fresh state or nonce)."""
    return urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": client.client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": scope,
            "state": "bench-state-0123456789",
            "nonce": "bench-nonce-0123456789",
            "code_challenge": pkce_challenge(CODE_VERIFIER),
            "code_challenge_method": "S256",
        }
    )


def authorize_request(client: Credentials) -> Request:
    """/authorize from a browser whose resident is signed in and allowed the client: a redirect with a code."""
    return Request(
        discovery_field="authorization_endpoint",
        query=authorization_query(client),
        headers={"Cookie": FRESH},
        fresh="login_cookie",
        expect_redirect_with="code",
    )


def signin_page_request(client: Credentials) -> Request:
    """The sign-in page as a browser arrives at it from /authorize without a signed-in resident: where /authorize
    sends it, with the cookies /authorize set (the waiting request)."""
    return Request(via=Request(discovery_field="authorization_endpoint", query=authorization_query(client)))


# A POST case gives method, body and headers and wrk gets a Lua script for it; a case that needs credentials gives
# a function of them.
CASES: tuple[Case, ...] = (
    Case(
        "discovery", Request.get("/.well-known/openid-configuration"), Request.get("/.well-known/openid-configuration")
    ),
    Case("jwks", Request.get("/jwks"), Request.from_discovery("jwks_uri")),
    Case("client_credentials", client_credentials_request, client_credentials_request, uses_database=True),
    Case("authorization_code", authorization_code_request, authorization_code_request, uses_database=True),
    Case("refresh_token", refresh_token_request, refresh_token_request, uses_database=True),
    Case("userinfo", userinfo_request, userinfo_request, uses_database=True),
    Case("introspection", introspection_request, introspection_request, uses_database=True),
    Case("authorize", authorize_request, authorize_request, uses_database=True),
    Case("signin_page", signin_page_request, signin_page_request, uses_database=True),
)
