"""Generated malformed requests at every endpoint and form (issue 10): whatever arrives, never a 5xx; the spec's
error shape (OAuth JSON with an RFC error code, or a page with a sentence and no traceback); no row changed but
counters, audit events and single-use challenge records; no secret that was sent in comes back; and no redirect
off this server except to a client's registered URI.

The hand-written tables (test_bad_input*.py) say exactly what each known bad request gets; this module asks
Hypothesis for the requests nobody thought of, built as raw WSGI (tests/strategies.py). It reuses their world:
the module's app, clients and signed-in browser of test_bad_input.py, plus a resident of its own with a passkey,
a TOTP set-up waiting for its code, and cookies to draw from. The number of examples comes from the Hypothesis
profile (tests/conftest.py); the terminal summary lists how many distinct requests each endpoint got.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs, quote_from_bytes, urlsplit

import pytest
from flask import Flask
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeTimedSerializer
from oidc_flow import REDIRECT, authorize, csrf_of, sign_in
from sandbox_agency import SandboxAgency
from sqlalchemy import select
from strategies import (
    Bytes,
    Jar,
    RawRequest,
    authorization,
    content_type,
    cookie_header,
    envelope_headers,
    garbage,
    json_text,
    json_values,
    one_of_methods,
    phone_like,
    query_safe,
    remote_address,
    secret_like,
    send,
    unicode_text,
    url_encoded,
)
from test_bad_input import World, tokens_for, world  # noqa: F401  (world: the module-scoped fixture)
from test_login_passkey import add_passkey
from test_login_totp import start_enrolment
from webauthn_authenticator import SoftAuthenticator
from werkzeug.test import TestResponse

from idp.authn.passkeys import NAME_MAX
from idp.models import (
    AuthorizationCode,
    CarrierResult,
    Client,
    Consent,
    Grant,
    InitialAccessToken,
    LoginSession,
    LogoutDelivery,
    Passkey,
    RecoveryCode,
    RefreshToken,
    Resident,
    RevokedAccessToken,
    SessionClient,
    TotpDevice,
)
from idp.oidc.clients import mint_initial_access_token
from idp.runtime import of as runtime_of

ISSUER = "http://localhost:8000"
PARK = {"carrier": "LGU", "name": "박용인", "birthdate": "2001-07-21", "rrn_digit7": "3", "phone": "010-0000-0003"}
PARK_E164 = "+821000000003"
LEE = {"carrier": "KT", "name": "이수원", "birthdate": "1992-11-02", "rrn_digit7": "2", "phone": "010-0000-0002"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\.py\", line \d+|\bsqlalchemy\.|psycopg\.")

# The rows a refused request must leave as they were, column by column (login_session.last_seen_at moves on
# every page view of a live session, at most once a minute: that is bookkeeping, not a change).
PROTECTED: dict[type[Any], tuple[str, ...]] = {
    Resident: (),
    Client: (),
    LoginSession: ("last_seen_at",),
    AuthorizationCode: (),
    RefreshToken: (),
    Grant: (),
    RevokedAccessToken: (),
    Consent: (),
    InitialAccessToken: (),
    LogoutDelivery: (),
    SessionClient: (),
    Passkey: (),
    TotpDevice: (),
    RecoveryCode: (),
    CarrierResult: (),
}
# Not protected: rate_limit_counter, audit_event, used_assertion and webauthn_challenge, which refused requests
# legitimately write (an attempt counted, a failure on record, an assertion's jti or a challenge spent).

# The error codes each kind of endpoint may answer (RFC 6749 §5.2, RFC 7009 §2.2.1, RFC 7662 §2.3, RFC 6750 §3.1,
# RFC 7591 §3.2.2), and the generic HTTP ones of the app's JSON error handler.
HTTP_ERRORS = {"method_not_allowed", "request_entity_too_large", "not_found", "bad_request", "unsupported_media_type"}
TOKEN_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
}
TOKEN_TYPE_ERRORS = {"invalid_request", "invalid_client", "unsupported_token_type", "invalid_grant"}
BEARER_ERRORS = {"invalid_request", "invalid_token", "insufficient_scope"}
REGISTRATION_ERRORS = {"invalid_token", "invalid_client_metadata", "invalid_redirect_uri", "invalid_request"}
AUTHORIZE_ERRORS = {
    "invalid_request",
    "invalid_client",
    "unauthorized_client",
    "access_denied",
    "unsupported_response_type",
    "invalid_scope",
    "login_required",
    "consent_required",
    "interaction_required",
    "request_not_supported",
    "request_uri_not_supported",
    "unmet_authentication_requirements",
}
PAGE_STATUSES = {200, 302, 303, 400, 403, 404, 405, 413, 429, 503}


# -- the world ---------------------------------------------------------------------------------------------------------


@dataclass(repr=False)
class Corpus:
    """What generated requests draw from: the test_bad_input world, a second resident's live session, its
    cookies and CSRF tokens, real tokens and ids, and an initial access token with uses to spare."""

    world: World
    jar: Jar
    client_ids: list[str]
    client_secrets: list[str]
    access_token: str
    refresh_token: str
    id_token: str
    passkey_id: str
    initial_access_token: str
    registered_id: str
    registration_token: str
    snapshot: dict[str, list[str]] | None = None

    @property
    def app(self) -> Flask:
        return self.world.app

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text("Corpus(…)")  # Hypothesis prints the fixture with each falsifying example: keep it short

    def csrf_tokens(self) -> list[str]:
        return list(self.jar.csrf.values())


def cookie_of(browser: Any, name: str) -> str:
    cookie = browser.get_cookie(name)
    assert cookie is not None, name
    return str(cookie.value)


@pytest.fixture(scope="module")
def corpus(world: World, sandbox_url: str) -> Corpus:  # noqa: F811  (world is the imported fixture)
    app = world.app
    sandbox = SandboxAgency(sandbox_url)
    authenticator = SoftAuthenticator("localhost", ISSUER, backup_eligible=True)

    # Park: signed in by carrier, a passkey, a TOTP set-up waiting for its first code, consent given to rp.
    park = app.test_client()
    sign_in(park, sandbox, PARK, PARK_E164)
    assert add_passkey(park, authenticator, name="박용인 휴대폰").status_code == 200
    start_enrolment(park)
    authorize(park, world.rp.client.id)
    with runtime_of(app).sessions() as db:
        passkey_id = str(db.scalar(select(Passkey.id)))
        initial = mint_initial_access_token(db, uses=1000, expires_in=86400, note="fuzz", now=dt.datetime.now(dt.UTC))
        db.commit()
    registered = app.test_client().post(
        "/register",
        json={"client_name": "등록 서비스", "redirect_uris": [REDIRECT]},
        headers={"Authorization": f"Bearer {initial}"},
    )
    assert registered.status_code == 201, registered.get_data(as_text=True)

    anonymous = app.test_client()
    anonymous_csrf = csrf_of(anonymous.get("/login/carrier").get_data(as_text=True))
    # A carrier verification under way (its SMS code is never sent back), for /login/carrier/verify.
    carrier = app.test_client()
    started = carrier.post(
        "/login/carrier",
        data={"csrf_token": csrf_of(carrier.get("/login/carrier").get_data(as_text=True)), "method": "sms"}
        | {"consent": "y", **LEE},
    )
    assert started.status_code == 303, started.get_data(as_text=True)[-400:]
    carrier_csrf = csrf_of(carrier.get("/login/carrier/verify").get_data(as_text=True))
    park_csrf = csrf_of(park.get("/account").get_data(as_text=True))
    other_key = Flask("forger")
    other_key.secret_key = "not-the-secret-key"
    forged_flow = other_key.session_interface.get_signing_serializer(other_key).dumps(  # type: ignore[union-attr]
        {"csrf_token": "0" * 40, "carrier": {"txn": "x", "method": "sms", "phone": PARK_E164, "binding": "b"}}
    )

    tokens = tokens_for(world)
    clients = [world.rp, world.other, world.spa, world.service, world.no_code, world.signer]
    body = registered.get_json()
    return Corpus(
        world=world,
        jar=Jar(
            session_name="idp_sid",
            flow_name="idp_flow",
            live_session=cookie_of(park, "idp_sid"),
            flows={
                "anonymous": cookie_of(anonymous, "idp_flow"),
                "signed-in": cookie_of(park, "idp_flow"),
                "carrier": cookie_of(carrier, "idp_flow"),
            },
            csrf={"anonymous": anonymous_csrf, "signed-in": park_csrf, "carrier": carrier_csrf},
            forged_flow=forged_flow,
        ),
        client_ids=[created.client.id for created in clients],
        client_secrets=[created.secret for created in clients if created.secret],
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
        id_token=tokens["id_token"],
        passkey_id=passkey_id,
        initial_access_token=initial,
        registered_id=body["client_id"],
        registration_token=body["registration_access_token"],
    )


# -- the properties ----------------------------------------------------------------------------------------------------


def rows(app: Flask) -> dict[str, list[str]]:
    """Every protected row, as text, column by column."""
    snapshot: dict[str, list[str]] = {}
    with runtime_of(app).sessions() as db:
        for model, skipped in PROTECTED.items():
            columns = [column for column in model.__table__.columns if column.name not in skipped]
            snapshot[model.__tablename__] = sorted(repr(tuple(row)) for row in db.execute(select(*columns)))
    return snapshot


def changed_tables(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, str]:
    return {
        table: f"{len(set(before[table]) - set(after[table]))} rows gone or changed, "
        f"{len(set(after[table]) - set(before[table]))} new or changed"
        for table in before
        if before[table] != after[table]
    }


@dataclass(frozen=True)
class Outcome:
    """What an answer did: the tables it may have changed because the request succeeded."""

    may_change: frozenset[str] = frozenset()


REFUSED = Outcome()


def body_text(response: TestResponse) -> str:
    return response.get_data().decode("utf-8", errors="replace")


def assert_well_formed(request: RawRequest, response: TestResponse) -> None:
    """What holds for every answer: below 500, no traceback, a parseable body, no secret, no open redirect."""
    text = body_text(response)
    assert response.status_code < 500, f"{response.status} {text[-1500:]}"
    assert not TRACEBACK.search(text), text[-1500:]
    if response.mimetype == "application/json" and request.method != "HEAD":
        parsed = json.loads(text)
        if response.status_code >= 400:
            assert isinstance(parsed, dict), parsed
            assert isinstance(parsed.get("error"), str), parsed
    elif response.status_code >= 400 and response.mimetype == "text/html" and request.method != "HEAD":
        assert 'role="alert"' in text or "<h1>" in text, text[-800:]
    shown = html.unescape(text) + "\n" + "\n".join(f"{name}: {value}" for name, value in response.headers.items())
    for secret in request.secrets:
        assert secret not in shown, f"secret {secret[:12]}… echoed"
    location = response.headers.get("Location")
    if location:
        parts = urlsplit(location)
        off_site = parts.scheme or parts.netloc or location.startswith("//") or "\\" in location
        assert not off_site or location.startswith((ISSUER + "/", REDIRECT)), location


def check(c: Corpus, request: RawRequest, judge: Callable[[RawRequest, TestResponse], Outcome]) -> TestResponse:
    """Send `request` and hold it to the properties; `judge` checks the endpoint's own shape and says what
    the answer may have changed."""
    before = c.snapshot if c.snapshot is not None else rows(c.app)
    response = send(c.app, request)
    assert_well_formed(request, response)
    outcome = judge(request, response)
    after = rows(c.app)
    c.snapshot = after
    changes = {table: change for table, change in changed_tables(before, after).items()}
    unexpected = {table: change for table, change in changes.items() if table not in outcome.may_change}
    assert not unexpected, f"{response.status}: {unexpected}"
    return response


def oauth_error(response: TestResponse, allowed: set[str]) -> str:
    assert response.mimetype == "application/json", (response.status, body_text(response)[:300])
    error = response.get_json()["error"]
    assert error in allowed | HTTP_ERRORS, error
    return str(error)


def wrong_method(request: RawRequest, methods: Sequence[str]) -> bool:
    return request.method not in methods and not (request.method == "HEAD" and "GET" in methods)


def assert_wrong_method_refused(response: TestResponse) -> None:
    """405, or 200 for OPTIONS (CORS), or 400 bad_request for a Host werkzeug cannot route (it is checked first)."""
    assert response.status_code in (200, 400, 405), response.status_code
    if response.status_code == 400:
        assert response.get_json() == {"error": "bad_request"}


def judge_token(request: RawRequest, response: TestResponse) -> Outcome:
    status = response.status_code
    if wrong_method(request, ["POST"]):
        assert_wrong_method_refused(response)
        return REFUSED
    if status == 200:
        body = response.get_json()
        assert body["token_type"] == "Bearer", body
        return Outcome(frozenset({"access_token"}))
    assert status in (400, 401, 413), (status, body_text(response)[:300])
    if status != 413 or response.mimetype == "application/json":
        error = oauth_error(response, TOKEN_ERRORS)
        assert response.headers["Cache-Control"] == "no-store"
        if status == 401:
            assert error == "invalid_client"
            assert response.headers["WWW-Authenticate"].startswith("Basic ")
    return REFUSED


def judge_client_authenticated(kind: str) -> Callable[[RawRequest, TestResponse], Outcome]:
    def judge(request: RawRequest, response: TestResponse) -> Outcome:
        status = response.status_code
        if wrong_method(request, ["POST"]):
            assert_wrong_method_refused(response)
            return REFUSED
        assert status in (200, 400, 401, 413), (status, body_text(response)[:300])
        if status == 200:
            body = response.get_json()
            assert body == {} if kind == "revoke" else isinstance(body.get("active"), bool), body
        elif status != 413 or response.mimetype == "application/json":
            error = oauth_error(response, TOKEN_TYPE_ERRORS)
            if status == 401:
                assert error == "invalid_client"
                assert response.headers["WWW-Authenticate"].startswith("Basic ")
        return REFUSED

    return judge


def judge_userinfo(request: RawRequest, response: TestResponse) -> Outcome:
    status = response.status_code
    if wrong_method(request, ["GET", "POST"]):
        assert status in (200, 405), status
        return REFUSED
    assert status in (200, 400, 401, 403, 413), (status, body_text(response)[:300])
    if request.method == "HEAD":
        return REFUSED
    if status == 200:
        assert "sub" in response.get_json()
    elif status in (401, 403):
        error = oauth_error(response, BEARER_ERRORS)
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ")
        assert ("error=" in challenge) == (error != "invalid_request")
    return REFUSED


def judge_register(request: RawRequest, response: TestResponse) -> Outcome:
    status = response.status_code
    if wrong_method(request, ["POST"]):
        assert status in (200, 405), status
        return REFUSED
    if status == 201:
        assert response.get_json()["client_id"]
        return Outcome(frozenset({"client", "initial_access_token"}))
    assert status in (400, 401, 413, 415), (status, body_text(response)[:300])
    if response.mimetype == "application/json" or status in (400, 401):
        error = oauth_error(response, REGISTRATION_ERRORS)
        if status == 401:
            assert error == "invalid_token"
            assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    return REFUSED


def judge_registration(request: RawRequest, response: TestResponse) -> Outcome:
    status = response.status_code
    if wrong_method(request, ["GET", "DELETE", "PUT"]):
        if status != 404:  # an unknown client id's path is not found, whatever the method
            assert_wrong_method_refused(response)
        return REFUSED
    assert status in (200, 400, 401, 404, 405), (status, body_text(response)[:300])
    if status == 400:
        assert oauth_error(response, REGISTRATION_ERRORS) == "bad_request"  # a Host werkzeug cannot route
    if request.method == "HEAD":
        return REFUSED
    if status == 200:
        assert response.get_json()["client_id"]
    elif status == 401:
        assert oauth_error(response, REGISTRATION_ERRORS) == "invalid_token"
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    return REFUSED


def judge_page(request: RawRequest, response: TestResponse) -> Outcome:
    assert response.status_code in PAGE_STATUSES, response.status
    if response.status_code >= 400 and request.method != "HEAD":
        assert response.mimetype in ("text/html", "application/json"), response.mimetype
    return REFUSED


def judge_published(request: RawRequest, response: TestResponse) -> Outcome:
    assert response.status_code in (*PAGE_STATUSES, 304), response.status
    return REFUSED


def judge_authorize(request: RawRequest, response: TestResponse) -> Outcome:
    judge_page(request, response)
    location = response.headers.get("Location", "")
    if location.startswith(REDIRECT):
        params = parse_qs(urlsplit(location).query)
        assert params["iss"] == [ISSUER], params
        if "code" in params:
            return Outcome(frozenset({"authorization_code"}))
        assert params["error"][0] in AUTHORIZE_ERRORS, params
    if response.status_code == 200 and 'name="code"' in body_text(response):
        return Outcome(frozenset({"authorization_code"}))  # form_post: the code in an auto-submitted form
    if response.status_code == 400 and response.mimetype == "text/html":
        detail = re.search(r"\(([a-z_]+)\)</p>", body_text(response))
        assert detail is None or detail.group(1) in AUTHORIZE_ERRORS, detail
    return REFUSED


def judge_rename(request: RawRequest, response: TestResponse) -> Outcome:
    judge_page(request, response)
    if response.status_code == 303 and response.headers["Location"] == "/account/passkeys":
        return Outcome(frozenset({"passkey"}))  # renamed: the name is checked by the test
    return REFUSED


def judge_json_page(request: RawRequest, response: TestResponse) -> Outcome:
    """The passkey ceremony's JSON endpoints: JSON answers, or the CSRF page for a missing token."""
    if response.status_code != 401:
        judge_page(request, response)
    else:
        assert response.get_json()["error"] == "login_required"
    return REFUSED


# -- building requests -------------------------------------------------------------------------------------------------


Fields = dict[str, Bytes]


@st.composite
def api_request(
    draw: st.DrawFn,
    c: Corpus,
    *,
    endpoint: str,
    path: bytes,
    methods: Sequence[str],
    fields: Fields,
    secret_fields: Sequence[str],
    auth: Bytes | None = None,
    json_members: Sequence[str] = (),
) -> RawRequest:
    """A request to an API endpoint: parameters in the query or the body (form, JSON, bytes), any headers, and
    cookies from the jar (an API ignores them)."""
    method = draw(one_of_methods(methods))
    headers = draw(envelope_headers())
    query = b""
    body = b""
    sent: dict[str, list[bytes]] = {}
    kind = draw(st.sampled_from(["form", "form", "form", "query", "json", "bytes", "empty"]))
    if kind in ("form", "query"):
        encoded, sent = draw(url_encoded(fields, raw=kind == "form"))
        if kind == "form":
            body = encoded
            headers.append(
                ("Content-Type", draw(st.sampled_from([b"application/x-www-form-urlencoded"]) | content_type))
            )
        else:
            query = query_safe(encoded)
    elif kind == "json":
        body = draw(json_text(json_members or list(fields)))
        headers.append(("Content-Type", draw(st.sampled_from([b"application/json"]) | content_type)))
    elif kind == "bytes":
        body = draw(st.binary(max_size=300))
        if draw(st.booleans()):
            headers.append(("Content-Type", draw(content_type)))
    if draw(st.integers(0, 3)) == 0:
        extra, more = draw(url_encoded(fields, raw=False))
        query = query_safe(extra)
        for name, values in more.items():
            sent.setdefault(name, []).extend(values)
    if auth is not None and draw(st.integers(0, 4)) > 0:
        value = draw(auth)
        headers.append(("Authorization", value))
        token = value.split(b" ", 1)[-1]
        sent.setdefault("Authorization", []).append(token)
    cookie = draw(cookie_header(c.jar))
    if cookie is not None:
        headers.append(("Cookie", cookie))
    secrets = tuple(
        value.decode() for name in (*secret_fields, "Authorization") for value in sent.get(name, []) if is_secret(value)
    )
    return RawRequest(
        endpoint=endpoint,
        method=method,
        path=path,
        query=query,
        headers=tuple(headers),
        body=body,
        remote_addr=draw(remote_address),
        secrets=secrets,
    )


def is_secret(value: bytes) -> bool:
    """A value that must never come back: a generated secret-like one or a real secret or token."""
    return (len(value) >= 20 and value.isascii() and re.fullmatch(rb"[A-Za-z0-9_.~+/=-]+", value) is not None) and len(
        set(value)
    ) > 4


@st.composite
def page_request(
    draw: st.DrawFn,
    c: Corpus,
    *,
    endpoint: str,
    path: bytes | Bytes,
    methods: Sequence[str],
    fields: Fields,
    secret_fields: Sequence[str] = (),
    guarded: bool = False,
    csrf_header: bool = False,
) -> RawRequest:
    """A request to a page or form: a flow cookie (anonymous, signed-in, mid-carrier-verification, forged or
    garbage), the live session cookie or not, and a CSRF token valid for that flow cookie, for another, or none.

    `guarded`: the form changes something whatever its fields say (sign out, remove TOTP), so a live session
    and a valid CSRF token are never drawn together: that request would rightly succeed."""
    method = draw(one_of_methods(methods))
    flow = draw(st.sampled_from([*c.jar.flows, None]))
    live = draw(st.booleans())
    csrf_choices: list[Bytes] = [garbage(*c.csrf_tokens())]
    if flow is not None:
        csrf_choices.append(st.just(c.jar.csrf[flow].encode()))
    csrf = draw(st.one_of(csrf_choices) | st.none())
    if guarded and live and flow is not None and csrf == c.jar.csrf[flow].encode():
        csrf = draw(garbage().filter(lambda value: value not in [t.encode() for t in c.csrf_tokens()]))
    headers = draw(envelope_headers())
    cookie = draw(cookie_header(c.jar, flow=flow, live=live))
    if cookie is not None:
        headers.append(("Cookie", cookie))
    form_fields = dict(fields)
    if csrf is not None and not csrf_header:
        form_fields["csrf_token"] = st.just(csrf)
    encoded, sent = draw(url_encoded(form_fields, raw=method == "POST"))
    query = b""
    body = b""
    if method in ("GET", "HEAD"):
        query = query_safe(encoded)
    else:
        body = encoded
        kind = draw(st.sampled_from(["form", "form", "form", "json", "bytes"]))
        if kind == "json":
            body = draw(json_text(list(fields)))
        elif kind == "bytes":
            body = draw(st.binary(max_size=300))
        headers.append(("Content-Type", draw(st.sampled_from([b"application/x-www-form-urlencoded"]) | content_type)))
        if draw(st.integers(0, 3)) == 0:
            extra, _ = draw(url_encoded(fields, raw=False))
            query = query_safe(extra)
    if csrf_header and csrf is not None:
        headers.append(("X-CSRFToken", bytes(b for b in csrf if b >= 0x20 and b != 0x7F)))
    raw_path = path if isinstance(path, bytes) else draw(path)
    secrets = tuple(value.decode() for name in secret_fields for value in sent.get(name, []) if is_secret(value))
    return RawRequest(
        endpoint=endpoint,
        method=method,
        path=raw_path,
        query=query,
        headers=tuple(headers),
        body=body,
        remote_addr=draw(remote_address),
        secrets=secrets,
    )


def tampered(token: str) -> Bytes:
    """A real token changed so that it no longer verifies (cut, extended, its parts shuffled)."""
    return st.sampled_from(
        [
            token[:-10],
            token + "A",
            "A" + token,
            ".".join(reversed(token.split("."))),
            token.replace(".", ".."),
            token.split(".")[0] + "..",
            token[: len(token) // 2],
        ]
    ).map(str.encode)


def token_values(c: Corpus) -> Bytes:
    return st.one_of(garbage(), tampered(c.access_token), tampered(c.refresh_token), tampered(c.id_token))


# -- OAuth and OIDC endpoints ------------------------------------------------------------------------------------------


def client_auth(c: Corpus) -> Bytes:
    return authorization(c.client_ids, c.client_secrets, [c.access_token])


def token_requests(c: Corpus) -> st.SearchStrategy[RawRequest]:
    fields: Fields = {
        "grant_type": garbage("authorization_code", "refresh_token", "client_credentials", "password"),
        "code": token_values(c) | secret_like.map(str.encode),
        "redirect_uri": garbage(REDIRECT, "https://evil.example/callback"),
        "code_verifier": garbage("a" * 43) | secret_like.map(str.encode),
        "refresh_token": token_values(c) | secret_like.map(str.encode),
        "scope": garbage("openid", "profile", "openid profile offline_access", "admin"),
        "client_id": garbage(*c.client_ids),
        "client_secret": garbage(*c.client_secrets) | secret_like.map(str.encode),
        "client_assertion_type": garbage(ASSERTION_TYPE),
        "client_assertion": token_values(c) | secret_like.map(str.encode),
    }
    return api_request(
        c,
        endpoint="POST /token",
        path=b"/token",
        methods=["POST"],
        fields=fields,
        secret_fields=["code", "code_verifier", "refresh_token", "client_secret", "client_assertion"],
        auth=client_auth(c),
    )


def token_endpoint_requests(c: Corpus, endpoint: str) -> st.SearchStrategy[RawRequest]:
    fields: Fields = {
        "token": token_values(c) | secret_like.map(str.encode),
        "token_type_hint": garbage("access_token", "refresh_token", "id_token"),
        "client_id": garbage(*c.client_ids),
        "client_secret": garbage(*c.client_secrets) | secret_like.map(str.encode),
        "client_assertion_type": garbage(ASSERTION_TYPE),
        "client_assertion": token_values(c) | secret_like.map(str.encode),
    }
    return api_request(
        c,
        endpoint=f"POST {endpoint}",
        path=endpoint.encode(),
        methods=["POST"],
        fields=fields,
        secret_fields=["token", "client_secret", "client_assertion"],
        auth=client_auth(c),
    )


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_token_endpoint_refuses_generated_requests(corpus: Corpus, data: st.DataObject) -> None:
    request = data.draw(token_requests(corpus))
    check(corpus, request, judge_token)


@pytest.mark.parametrize("endpoint", ["/introspect", "/revoke"])
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_introspection_and_revocation_refuse_generated_requests(
    corpus: Corpus, endpoint: str, data: st.DataObject
) -> None:
    request = data.draw(token_endpoint_requests(corpus, endpoint))
    check(corpus, request, judge_client_authenticated(endpoint.strip("/")))


@st.composite
def client_authentication_request(
    draw: st.DrawFn, c: Corpus, endpoint: str, *, header: str, values: Bytes
) -> RawRequest:
    """A well-formed POST to a client-authenticating endpoint (one grant_type, or a token) but for one header."""
    fields: Fields = {"scope": garbage("profile"), "token_type_hint": garbage("access_token")}
    encoded, _ = draw(url_encoded(fields, raw=False))
    first = b"grant_type=client_credentials" if endpoint == "/token" else b"token=" + draw(tampered(c.access_token))
    return RawRequest(
        endpoint=f"POST {endpoint}",
        method="POST",
        path=endpoint.encode(),
        headers=(("Content-Type", b"application/x-www-form-urlencoded"), (header, draw(values))),
        body=first + b"&" + encoded.replace(b"grant_type", b"x").replace(b"token=", b"x="),
        remote_addr=draw(remote_address),
    )


basic_not_utf8_values = st.builds(
    lambda user, secret, joined: b"Basic " + base64.b64encode(user + b":" + secret if joined else user + secret),
    st.sampled_from([b"\xff", b"abc", b"\xc3", b""]),
    st.sampled_from([b"\xfe", b"\x80", b"s\xe9cret"]),
    st.booleans(),
)
no_credentials_values = st.sampled_from([b"Basic ", b"Bearer ", b" ", b"Basic \xa0", b"basic \x85", b"DPoP  "])
insecure_hosts = st.sampled_from([b"evil.example", b"10.0.0.5:8000", b"a b", b"[x", b":80", b"idp.example.kr"])
NO_SHRINK = [Phase.explicit, Phase.generate]


@pytest.mark.parametrize("endpoint", ["/token", "/introspect", "/revoke"])
@settings(phases=NO_SHRINK)
@given(data=st.data())
def test_client_authentication_refuses_basic_credentials_that_are_not_utf8(
    corpus: Corpus, endpoint: str, data: st.DataObject
) -> None:
    request = data.draw(
        client_authentication_request(corpus, endpoint, header="Authorization", values=basic_not_utf8_values)
    )
    check(corpus, request, judge_token if endpoint == "/token" else judge_client_authenticated(endpoint.strip("/")))


@pytest.mark.parametrize("endpoint", ["/token", "/introspect", "/revoke"])
@settings(phases=NO_SHRINK)
@given(data=st.data())
def test_client_authentication_refuses_an_authorization_header_without_credentials(
    corpus: Corpus, endpoint: str, data: st.DataObject
) -> None:
    request = data.draw(
        client_authentication_request(corpus, endpoint, header="Authorization", values=no_credentials_values)
    )
    check(corpus, request, judge_token if endpoint == "/token" else judge_client_authenticated(endpoint.strip("/")))


@pytest.mark.parametrize("endpoint", ["/token", "/introspect", "/revoke"])
@settings(phases=NO_SHRINK)
@given(data=st.data())
def test_client_authentication_endpoints_refuse_any_host(corpus: Corpus, endpoint: str, data: st.DataObject) -> None:
    request = data.draw(client_authentication_request(corpus, endpoint, header="Host", values=insecure_hosts))
    check(corpus, request, judge_token if endpoint == "/token" else judge_client_authenticated(endpoint.strip("/")))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_userinfo_refuses_generated_requests(corpus: Corpus, data: st.DataObject) -> None:
    tokens = [corpus.access_token]
    bearer = authorization(tokens=tokens) | tampered(corpus.access_token).map(lambda token: b"Bearer " + token)
    request = data.draw(
        api_request(
            corpus,
            endpoint="GET|POST /userinfo",
            path=b"/userinfo",
            methods=["GET", "POST"],
            fields={"access_token": token_values(corpus) | secret_like.map(str.encode)},
            secret_fields=["access_token"],
            auth=bearer,
        )
    )
    check(corpus, request, judge_userinfo)


def client_metadata(c: Corpus) -> st.SearchStrategy[bytes]:
    members = [
        "client_name",
        "redirect_uris",
        "post_logout_redirect_uris",
        "token_endpoint_auth_method",
        "grant_types",
        "response_types",
        "scope",
        "jwks",
        "jwks_uri",
        "backchannel_logout_uri",
        "id_token_signed_response_alg",
        "default_acr_values",
        "subject_type",
    ]
    valid = [
        {"client_name": "서비스", "redirect_uris": [REDIRECT]},
        {"client_name": "x", "redirect_uris": ["http://evil.example/cb"], "token_endpoint_auth_method": "none"},
        {"redirect_uris": [REDIRECT, "https://other.example/cb"], "grant_types": ["client_credentials"]},
        {"client_name": "\x00", "jwks": {"keys": [{"kty": "EC"}]}, "token_endpoint_auth_method": "private_key_jwt"},
    ]
    return json_text(members, valid)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_registration_refuses_generated_requests(corpus: Corpus, data: st.DataObject) -> None:
    bearer = st.one_of(
        st.just(f"Bearer {corpus.initial_access_token}".encode()),
        authorization(tokens=[corpus.registration_token]),
    )
    request = data.draw(
        api_request(
            corpus,
            endpoint="POST /register",
            path=b"/register",
            methods=["POST"],
            fields={"client_name": garbage("서비스"), "redirect_uris": garbage(REDIRECT)},
            secret_fields=[],
            auth=bearer,
        )
    )
    if request.method == "POST" and data.draw(st.integers(0, 2)) > 0:
        # Mostly a JSON body of client metadata, as RFC 7591 §3.1 has it.
        headers = [(name, value) for name, value in request.headers if name != "Content-Type"]
        headers.append(("Content-Type", data.draw(st.sampled_from([b"application/json"]) | content_type)))
        request = replace(request, body=data.draw(client_metadata(corpus)), headers=tuple(headers))
    check(corpus, request, judge_register)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_registration_management_refuses_generated_requests(corpus: Corpus, data: st.DataObject) -> None:
    client_id = garbage(corpus.registered_id, *corpus.client_ids).map(lambda value: value.replace(b"/", b""))
    method = data.draw(st.sampled_from(["GET", "PUT", "DELETE"]) | st.sampled_from(["POST", "PATCH", "HEAD", "FOO"]))
    # The real registration token only where it cannot delete the registration.
    tokens = [corpus.registration_token] if method != "DELETE" else []
    request = data.draw(
        api_request(
            corpus,
            endpoint="GET|PUT|DELETE /register/<id>",
            path=b"/register/x",
            methods=[method],
            fields={"client_name": garbage()},
            secret_fields=[],
            auth=authorization(tokens=tokens) | tampered(corpus.registration_token).map(lambda t: b"Bearer " + t),
        )
    )
    request = replace(request, method=method, path=b"/register/" + data.draw(client_id))
    check(corpus, request, judge_registration)


def authorize_fields(c: Corpus) -> Fields:
    return {
        "response_type": garbage("code", "token", "code id_token", "none"),
        "client_id": garbage(*c.client_ids),
        "redirect_uri": garbage(REDIRECT, "https://evil.example/callback", REDIRECT + "/../x"),
        "scope": garbage("openid", "openid profile", "openid kr_ci", "openid offline_access phone", "admin"),
        "state": garbage("st-1"),
        "nonce": garbage("n-1"),
        "code_challenge": garbage("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
        "code_challenge_method": garbage("S256", "plain"),
        "response_mode": garbage("query", "form_post", "fragment"),
        "prompt": garbage("none", "login", "consent", "none login"),
        "max_age": garbage("0", "60", "-1", "\u00b2"),
        "acr_values": garbage(f"{ISSUER}/acr/aal1", "phr", "phrh"),
        "claims": json_text(["id_token", "userinfo", "acr", "essential", "values", "value"])
        | garbage('{"id_token": {"acr": {"essential": true, "values": ["phrh"]}}}'),
        "ui_locales": garbage("en", "ko-KR"),
        "login_hint": phone_like.map(str.encode) | garbage(),
        "id_token_hint": tampered(c.id_token) | garbage(),
        "request": garbage("eyJhbGciOiJub25lIn0.e30."),
        "request_uri": garbage("https://rp.example.kr/request.jwt"),
    }


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_authorization_endpoint_refuses_generated_requests(corpus: Corpus, data: st.DataObject) -> None:
    request = data.draw(
        page_request(
            corpus,
            endpoint="GET|POST /authorize",
            path=b"/authorize",
            methods=["GET", "POST"],
            fields=authorize_fields(corpus),
            secret_fields=["id_token_hint"],
        )
    )
    if request.secrets and request.method in ("GET", "HEAD"):
        # The request goes on to the sign-in page with its own parameters (next=…): that is the same browser's
        # request coming back to it, not an echo to anyone else.
        request = replace(request, secrets=())
    check(corpus, request, judge_authorize)


@pytest.mark.parametrize("endpoint", ["/authorize", "/token"])
@settings(phases=NO_SHRINK)
@given(
    name=st.sampled_from(['a"b', "\u00e9", "x\\y", "\u2028", "\ud0a4"]),
    how=st.sampled_from(["repeated", "long", "control"]),
)
def test_refused_parameters_are_named_without_a_server_error(
    corpus: Corpus, endpoint: str, name: str, how: str
) -> None:
    key = quote_from_bytes(name.encode()).encode()
    if endpoint == "/token" or how == "repeated":
        extra = key + b"=1&" + key + b"=2"
    else:
        extra = key + b"=" + (b"a" * 3000 if how == "long" else b"%01")
    if endpoint == "/token":
        request = RawRequest(
            endpoint="POST /token",
            method="POST",
            path=b"/token",
            headers=(("Content-Type", b"application/x-www-form-urlencoded"),),
            body=b"grant_type=client_credentials&" + extra,
        )
        check(corpus, request, judge_token)
    else:
        query = AUTHORIZE_OF_RP + b"&client_id=" + corpus.client_ids[0].encode() + b"&" + extra
        check(
            corpus,
            RawRequest(endpoint="GET|POST /authorize", method="GET", path=b"/authorize", query=query),
            judge_authorize,
        )


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_consent_refuses_generated_answers(corpus: Corpus, data: st.DataObject) -> None:
    request = data.draw(
        page_request(
            corpus,
            endpoint="POST /consent",
            path=b"/consent",
            methods=["POST"],
            fields={"request_id": garbage(), "decision": garbage("allow", "deny")},
        )
    )
    response = check(corpus, request, judge_page)
    if request.method == "POST":
        assert response.status_code in (400, 413), response.status


@pytest.mark.parametrize("method", ["GET", "POST"])
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_logout_refuses_generated_requests(corpus: Corpus, method: str, data: st.DataObject) -> None:
    request = data.draw(
        page_request(
            corpus,
            endpoint=f"{method} /logout",
            path=b"/logout",
            methods=[method],
            fields={
                "id_token_hint": tampered(corpus.id_token) | garbage(),
                "client_id": garbage(*corpus.client_ids),
                "post_logout_redirect_uri": garbage(REDIRECT, "https://evil.example/"),
                "state": garbage("s1"),
                "confirm": garbage("yes"),
                "ui_locales": garbage("en"),
            },
            secret_fields=["id_token_hint"] if method == "POST" else [],
            guarded=True,
        )
    )
    check(corpus, request, judge_page)


PUBLISHED = ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server", "/jwks"]


@pytest.mark.parametrize("path", [*PUBLISHED, "/healthz", "/readyz"])
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_published_documents_and_probes_answer_any_request(corpus: Corpus, path: str, data: st.DataObject) -> None:
    request = data.draw(
        api_request(
            corpus,
            endpoint=f"GET {path}",
            path=path.encode(),
            methods=["GET", "HEAD"],
            fields={"x": garbage()},
            secret_fields=[],
            auth=authorization(),
        )
    )
    if data.draw(st.booleans()):
        etag = data.draw(st.sampled_from([b"*", b'W/"x"', b'"a", "b"', b""]) | garbage())
        request = replace(request, headers=(*request.headers, ("If-None-Match", etag.replace(b"\n", b""))))
    response = check(corpus, request, judge_published)
    if request.method == "GET":
        # 400: a Host werkzeug cannot route (a label longer than DNS allows).
        assert response.status_code in (200, 304, 400), response.status


# -- resident-facing pages and forms -----------------------------------------------------------------------------------


def judge_for(endpoint: str) -> Callable[[RawRequest, TestResponse], Outcome]:
    if ("passkeys" in endpoint and endpoint.endswith(("options", "verify"))) or "/login/passkey" in endpoint:
        return judge_json_page
    if endpoint.endswith("/rename"):
        return judge_rename
    return judge_page


def passkey_path(c: Corpus, verb: str) -> Bytes:
    """/account/passkeys/<id>/<verb> with the resident's own passkey or any bytes as the id."""
    ids = st.one_of(st.just(c.passkey_id.encode()), garbage("00000000-0000-0000-0000-000000000000"))
    return ids.map(lambda value: b"/account/passkeys/" + value.replace(b"/", b"%2F") + b"/" + verb.encode())


def forms(c: Corpus) -> list[tuple[str, Bytes | bytes, list[str], Fields, dict[str, Any]]]:
    """Every resident-facing page and form: endpoint, path, methods, fields and options of page_request."""
    carrier_fields: Fields = {
        "carrier": garbage("SKT", "KT", "LGU", "SKT_MVNO"),
        "name": garbage("김경기"),
        "birthdate": garbage("1985-03-14", "1985-02-30", "0001-01-01"),
        "rrn_digit7": garbage("1", "9", "１"),
        "phone": phone_like.map(str.encode) | garbage(),
        "method": garbage("sms", "app"),
        "consent": garbage("y", "n"),
    }
    code: Bytes = st.integers(0, 999_999).map(lambda n: f"{n:06d}".encode()) | garbage("123 456")
    recovery = garbage("abcde-23456") | secret_like.map(str.encode)
    return [
        (
            "GET /login",
            b"/login",
            ["GET"],
            {
                "next": garbage("/authorize?x=1", "//evil.example", "/\\evil"),
                "login_hint": phone_like.map(str.encode) | garbage(),
                "reason": garbage("acr_too_low", "max_age"),
                "ui_locales": garbage("en"),
            },
            {},
        ),
        ("GET|POST /login/carrier", b"/login/carrier", ["GET", "POST"], carrier_fields, {"secret_fields": []}),
        (
            "GET|POST /login/carrier/verify",
            b"/login/carrier/verify",
            ["GET", "POST"],
            {"action": garbage("confirm", "resend", "cancel"), "code": code, "sent": garbage("1")},
            {"secret_fields": ["code"]},
        ),
        ("GET /login/welcome", b"/login/welcome", ["GET"], {}, {}),
        (
            "GET /language",
            b"/language",
            ["GET"],
            {"to": garbage("en", "ko"), "request": garbage(), "back": garbage("/login", "//evil.example")},
            {},
        ),
        (
            "GET|POST /login/totp",
            b"/login/totp",
            ["GET", "POST"],
            {
                "phone": phone_like.map(str.encode) | garbage(),
                "code": code | recovery,
                "kind": garbage("totp", "recovery"),
            },
            {"secret_fields": ["code"]},
        ),
        ("POST /login/passkey/options", b"/login/passkey/options", ["POST"], {}, {"csrf_header": True}),
        (
            "POST /login/passkey/verify",
            b"/login/passkey/verify",
            ["POST"],
            {"id": garbage(), "response": garbage()},
            {"csrf_header": True},
        ),
        ("GET /account", b"/account", ["GET"], {}, {}),
        ("GET /account/passkeys", b"/account/passkeys", ["GET"], {}, {}),
        ("POST /account/passkeys/options", b"/account/passkeys/options", ["POST"], {}, {"csrf_header": True}),
        (
            "POST /account/passkeys/verify",
            b"/account/passkeys/verify",
            ["POST"],
            {"name": garbage("내 휴대폰"), "id": garbage()},
            {"csrf_header": True},
        ),
        ("POST /account/passkeys/<id>/rename", passkey_path(c, "rename"), ["POST"], {"name": garbage("새 이름")}, {}),
        ("GET /account/passkeys/<id>/remove", passkey_path(c, "remove"), ["GET"], {}, {}),
        (
            "POST /account/passkeys/<id>/remove",
            passkey_path(c, "remove"),
            ["POST"],
            {"confirm": garbage("yes")},
            {"guarded": True},
        ),
        ("GET /account/totp", b"/account/totp", ["GET"], {}, {}),
        ("POST /account/totp/setup", b"/account/totp/setup", ["POST"], {}, {"guarded": True}),
        (
            "POST /account/totp/confirm",
            b"/account/totp/confirm",
            ["POST"],
            {"code": code, "kind": garbage("totp", "recovery")},
            {"secret_fields": ["code"]},
        ),
        ("POST /account/totp/recovery-codes", b"/account/totp/recovery-codes", ["POST"], {}, {"guarded": True}),
        ("GET /account/totp/remove", b"/account/totp/remove", ["GET"], {}, {}),
        ("POST /account/totp/remove", b"/account/totp/remove", ["POST"], {}, {"guarded": True}),
        ("POST /logout/session", b"/logout/session", ["POST"], {}, {"guarded": True}),
        ("GET /account/sessions/end-all", b"/account/sessions/end-all", ["GET"], {}, {}),
        ("POST /account/sessions/end-all", b"/account/sessions/end-all", ["POST"], {}, {"guarded": True}),
        ("GET /account/signed-out", b"/account/signed-out", ["GET"], {}, {}),
        ("GET /account/services", b"/account/services", ["GET"], {}, {}),
        ("GET /account/services/revoke", b"/account/services/revoke", ["GET"], {"client_id": garbage()}, {}),
        ("POST /account/services/revoke", b"/account/services/revoke", ["POST"], {"client_id": garbage()}, {}),
    ]


FORM_NAMES = [
    "GET /login",
    "GET|POST /login/carrier",
    "GET|POST /login/carrier/verify",
    "GET /login/welcome",
    "GET /language",
    "GET|POST /login/totp",
    "POST /login/passkey/options",
    "POST /login/passkey/verify",
    "GET /account",
    "GET /account/passkeys",
    "POST /account/passkeys/options",
    "POST /account/passkeys/verify",
    "POST /account/passkeys/<id>/rename",
    "GET /account/passkeys/<id>/remove",
    "POST /account/passkeys/<id>/remove",
    "GET /account/totp",
    "POST /account/totp/setup",
    "POST /account/totp/confirm",
    "POST /account/totp/recovery-codes",
    "GET /account/totp/remove",
    "POST /account/totp/remove",
    "POST /logout/session",
    "GET /account/sessions/end-all",
    "POST /account/sessions/end-all",
    "GET /account/signed-out",
    "GET /account/services",
    "GET /account/services/revoke",
    "POST /account/services/revoke",
]


@pytest.mark.parametrize("endpoint", FORM_NAMES)
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_pages_and_forms_refuse_generated_requests(corpus: Corpus, endpoint: str, data: st.DataObject) -> None:
    [(name, path, methods, fields, options)] = [form for form in forms(corpus) if form[0] == endpoint]
    request = data.draw(page_request(corpus, endpoint=name, path=path, methods=methods, fields=fields, **options))
    if request.path.endswith(b"/verify") and request.method == "POST" and data.draw(st.booleans()):
        # The passkey ceremonies post the browser's JSON (WebAuthn §5.1): any JSON instead of a form.
        members = [
            "id",
            "rawId",
            "type",
            "response",
            "clientDataJSON",
            "authenticatorData",
            "signature",
            "userHandle",
            "attestationObject",
            "transports",
            "authenticatorAttachment",
        ]
        request = replace(request, body=data.draw(json_text(members)))
    response = check(corpus, request, judge_for(endpoint))
    if endpoint.endswith("/rename") and response.status_code == 303:
        with runtime_of(corpus.app).sessions() as db:
            names = db.scalars(select(Passkey.name)).all()
        assert all(name.isprintable() and 0 < len(name) <= NAME_MAX for name in names), names


# -- flow cookies of any shape, signed with the app's own key -------------------------------------------------------

FLOW_VALUE = json_values(["txn", "method", "phone", "binding", "expires_at", "resident", "event", "params", "id"])
FUTURE = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3650)).isoformat()
# What the views keep in the flow cookie (idp/web/login.py, totp.py, passkeys.py, idp/oidc/views.py), each member
# of the right name but of any type: a cookie of an older release, or one made with a leaked key.
FLOW_MEMBERS: dict[str, st.SearchStrategy[Any]] = {
    "carrier": st.fixed_dictionaries(
        {"txn": FLOW_VALUE | st.just("txn-1")},
        optional={
            "method": FLOW_VALUE | st.sampled_from(["sms", "app"]),
            "phone": FLOW_VALUE | st.just(PARK_E164),
            "match": FLOW_VALUE,
            "binding": FLOW_VALUE,
            "expires_at": FLOW_VALUE | st.just(FUTURE),
        },
    )
    | FLOW_VALUE,
    "second_factor": st.fixed_dictionaries(
        {},
        optional={
            "resident": FLOW_VALUE | st.uuids().map(str),
            "event": FLOW_VALUE,
            "expires_at": FLOW_VALUE | st.just(FUTURE),
        },
    )
    | FLOW_VALUE,
    "authz_pending": st.dictionaries(
        unicode_text,
        st.fixed_dictionaries(
            {},
            optional={
                "since": FLOW_VALUE | st.just(FUTURE),
                "id": FLOW_VALUE | st.just("req-1"),
                "params": FLOW_VALUE | st.dictionaries(unicode_text, unicode_text),
                "consent": FLOW_VALUE | st.sampled_from(["allow", "deny"]),
            },
        )
        | FLOW_VALUE,
        max_size=3,
    )
    | FLOW_VALUE,
    "next": FLOW_VALUE | st.sampled_from(["/authorize?client_id=x", "//evil.example", "/account"]),
    "locale": FLOW_VALUE | st.sampled_from(["en", "ko"]),
    "webauthn": FLOW_VALUE,
    "welcome": FLOW_VALUE,
    "carrier_failure": FLOW_VALUE | st.sampled_from(["wrong_code", "expired", "nonsense"]),
    "carrier_retry": FLOW_VALUE,
}
RAW_CSRF = "0123456789abcdef0123456789abcdef01234567"


SIGNED_FLOW_PAGES = [
    ("GET", "/login"),
    ("GET", "/login/carrier"),
    ("POST", "/login/carrier"),
    ("GET", "/login/carrier/verify"),
    ("POST", "/login/carrier/verify"),
    ("GET", "/login/welcome"),
    ("GET", "/login/totp"),
    ("POST", "/login/totp"),
    ("POST", "/login/passkey/options"),
    ("POST", "/login/passkey/verify"),
    ("GET", "/authorize"),
    ("POST", "/consent"),
    ("GET", "/account"),
    ("POST", "/account/passkeys/options"),
    ("GET", "/logout"),
]
flow_cookies = st.builds(
    lambda members, csrf: members | {"csrf_token": csrf},
    st.lists(st.sampled_from(list(FLOW_MEMBERS)), unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: FLOW_MEMBERS[name] for name in names})
    ),
    st.just(RAW_CSRF) | FLOW_VALUE,
)
SIGNED_FLOW_FIELDS: Fields = {
    "code": garbage("123456"),
    "phone": phone_like.map(str.encode),
    "request_id": garbage("req-1"),
    "action": garbage("confirm", "resend", "cancel"),
    "decision": garbage("allow", "deny"),
}
AUTHORIZE_OF_RP = (
    b"response_type=code&redirect_uri=https%3A%2F%2Frp.example.kr%2Fcallback&scope=openid+profile&state=st-1"
    b"&nonce=n-1&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256"
)


def signed_flow_request(c: Corpus, method: str, path: str, flow: dict[str, Any], live: bool, form: bytes) -> RawRequest:
    """A request whose flow cookie the app signed itself, holding `flow`, with a CSRF token that matches it."""
    app = c.app
    cookie = app.session_interface.get_signing_serializer(app).dumps(flow)  # type: ignore[attr-defined]
    raw_csrf = flow["csrf_token"] if isinstance(flow.get("csrf_token"), str) else RAW_CSRF
    csrf = URLSafeTimedSerializer(app.secret_key, salt="wtf-csrf-token").dumps(raw_csrf).encode()
    cookies = f"idp_flow={cookie}" + (f"; idp_sid={c.jar.live_session}" if live else "")
    fields = b"csrf_token=" + csrf + b"&" + form
    if path == "/authorize":
        fields = AUTHORIZE_OF_RP + b"&client_id=" + c.client_ids[0].encode()
    headers: list[tuple[str, bytes]] = [("Cookie", cookies.encode()), ("X-CSRFToken", csrf)]
    if method == "POST":
        headers.append(("Content-Type", b"application/x-www-form-urlencoded"))
    return RawRequest(
        endpoint=f"{method} {path} (flow cookie of any shape)",
        method=method,
        path=path.encode(),
        query=fields if method == "GET" else b"",
        headers=tuple(headers),
        body=fields if method == "POST" else b"",
    )


@pytest.mark.parametrize(("method", "path"), SIGNED_FLOW_PAGES)
@settings(phases=NO_SHRINK)
@example(flow={"csrf_token": None}, live=False, form=b"")
@example(flow={"csrf_token": "\u00e9" * 40}, live=False, form=b"")
@example(flow={"csrf_token": RAW_CSRF, "carrier_failure": "nonsense"}, live=False, form=b"")
@example(flow={"csrf_token": RAW_CSRF, "carrier": {"txn": "t"}}, live=False, form=b"")
@example(flow={"csrf_token": RAW_CSRF, "welcome": True, "next": ["/account"]}, live=False, form=b"")
@example(flow={"csrf_token": RAW_CSRF, "authz_pending": [[]]}, live=True, form=b"request_id=req-1")
@given(flow=flow_cookies, live=st.booleans(), form=url_encoded(SIGNED_FLOW_FIELDS, raw=False).map(lambda sent: sent[0]))
def test_pages_answer_flow_cookies_of_any_shape(
    corpus: Corpus, method: str, path: str, flow: dict[str, Any], live: bool, form: bytes
) -> None:
    """The flow cookie is signed, so only the app makes one; but an older release made other shapes, and a leaked
    key makes any: a page still answers without a 500 and changes nothing it would not change anyway."""
    request = signed_flow_request(corpus, method, path, flow, live, form)
    check(corpus, request, judge_authorize if path == "/authorize" else judge_for(f"{method} {path}"))
