"""The seam between the protocol and the resident's pages: the login-session cookie, the authorization requests
waiting for a sign-in or a consent answer (kept in the browser's signed flow cookie), the raw CI waiting for a
`kr_ci` consent, and the pages the protocol needs shown (`InteractionPages`, which idp.web implements).

idp.web depends on this module; nothing here imports idp.web.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit

from authlib.oauth2.rfc6749 import OAuth2Error
from flask import g, request, session, url_for
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from idp.authn.sessions import SessionEndedError, load_session
from idp.models import Client, LoginSession
from idp.oidc.consent import grant_consent
from idp.runtime import current, db_session, request_time

PENDING = "authz_pending"  # the authorization requests of this browser that wait for a sign-in or an answer
HELD_CI = "held_ci"  # a fresh carrier verification's CI, until the resident answers a kr_ci consent question
MAX_PENDING = 5  # the flow cookie must stay small: a few requests of one browser at a time


# -- the login-session cookie ------------------------------------------------------------------------------------


def cookie_name() -> str:
    # __Host- binds the cookie to this exact host over https (RFC 6265bis §4.1.3.2).
    return "__Host-idp_sid" if current().settings.issuer.startswith("https://") else "idp_sid"


def set_session_cookie(response: Response, value: str) -> None:
    response.set_cookie(
        cookie_name(),
        value,
        httponly=True,
        secure=current().settings.issuer.startswith("https://"),
        samesite="Lax",
        path="/",
    )


def clear_session_cookie(response: Response) -> None:
    secure = current().settings.issuer.startswith("https://")
    response.delete_cookie(cookie_name(), path="/", secure=secure, httponly=True, samesite="Lax")


def current_login() -> LoginSession | None:
    """The live login session of this browser, loaded once per request."""
    if "login_session" in g:
        cached: LoginSession | None = g.login_session
        return cached
    value = request.cookies.get(cookie_name())
    login: LoginSession | None = None
    if value and len(value) <= 128:
        try:
            login = load_session(db_session(), value, now=request_time())
        except SessionEndedError:
            login = None
    g.login_session = login
    return login


def carry_over(response: Response, cookie_value: str | None) -> None:
    """After a sign-in that opened a new session: its cookie, and a fresh flow cookie too (no fixation).

    Nothing from before the sign-in carries over but the language, the authorization requests waiting for it
    (prompt=login, max_age, step-up) and a raw CI waiting for the resident's consent (bound to its resident)."""
    if cookie_value is None:
        return
    kept = {key: session[key] for key in ("locale", PENDING, HELD_CI) if session.get(key)}
    session.clear()
    session.update(kept)
    set_session_cookie(response, cookie_value)


# -- authorization requests waiting for the resident ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """What this browser remembers of one authorization request: since when it waits for a sign-in, and the
    resident's answer on its consent page."""

    since: dt.datetime | None
    decision: dict[str, Any] | None


def authorize_url(params: dict[str, str]) -> str:
    """The authorization request again, as the sign-in and consent pages send the browser back to it."""
    return url_for("oidc.authorize") + "?" + urlencode(params)


def _request_key(params: dict[str, str]) -> str:
    # One entry per authorization request of this browser, identified by all its parameters: a request that
    # differs in anything (its scope, say) is another request with a consent question of its own.
    canonical = json.dumps(sorted(params.items()), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _entries() -> dict[str, dict[str, Any]]:
    return dict(session.get(PENDING, {}))


def pending_request(params: dict[str, str]) -> PendingRequest:
    entry = _entries().get(_request_key(params), {})
    since = dt.datetime.fromisoformat(entry["since"]) if "since" in entry else None
    return PendingRequest(since=since, decision=entry.get("consent"))


def remember_request(params: dict[str, str], **fields: Any) -> None:
    """Remember the request (it waits for a sign-in or a consent answer); `since` is kept from the first time."""
    entries = _entries()
    key = _request_key(params)
    entry = dict(entries.pop(key, {}))
    entry.setdefault("since", request_time().isoformat())
    entry["params"] = params
    entry.update(fields)
    entries = dict(list(entries.items())[-(MAX_PENDING - 1) :])
    entries[key] = entry
    session[PENDING] = entries


def waiting_params(target: object) -> dict[str, str] | None:
    """The parameters of the authorization request that `target` (where a sign-in continues) goes back to, if that
    request waits in this browser; None for any other target, and for a link that merely looks like a request
    (it never came through /authorize here, so nothing vouches for it)."""
    if not isinstance(target, str):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.path != url_for("oidc.authorize"):
        return None
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    return params if _request_key(params) in _entries() else None


def waiting_key(params: dict[str, str]) -> str | None:
    """A short name for the authorization request `params` if it waits in this browser: a page can link back to
    the request by it without writing the request's parameters into the page."""
    key = _request_key(params)
    return key if key in _entries() else None


def waiting_by_key(key: str) -> dict[str, str] | None:
    """The parameters of the waiting authorization request named `key` (see `waiting_key`), or None."""
    entry = _entries().get(key) if isinstance(key, str) else None
    params = entry.get("params") if isinstance(entry, dict) else None
    return dict(params) if isinstance(params, dict) else None


def waiting_client(db: Session, target: object) -> Client | None:
    """The service whose authorization request `target` goes back to, if that request waits in this browser (from
    the server's cache of clients: every page of a sign-in names it)."""
    params = waiting_params(target)
    return current().oidc.clients.get(db, params.get("client_id", "")) if params else None


def forget_request(params: dict[str, str]) -> None:
    entries = _entries()
    if entries.pop(_request_key(params), None) is not None:
        session[PENDING] = entries


# -- consent -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsentQuestion:
    """The consent page of one request: its server-generated id, the client, every scope of the request and the
    ones the page lists (those the resident has not allowed yet, or all with prompt=consent)."""

    request_id: str
    client: Client
    scopes: list[str]
    shown: list[str]


class ConsentExpiredError(Exception):
    """No consent question with this id waits in this browser for this resident (answered, replaced, or asked of
    someone else)."""


def ask_consent(params: dict[str, str], *, client: Client, resident_id: uuid.UUID, shown: list[str]) -> ConsentQuestion:
    """Put the question to the resident: a new id each time the page is shown, bound to the resident and to the
    exact scopes it lists; an answer is taken only for the latest page, from the same resident, for those scopes."""
    request_id = secrets.token_urlsafe(16)
    remember_request(params, ask={"id": request_id, "resident": str(resident_id), "scopes": shown}, consent=None)
    return ConsentQuestion(request_id, client, params.get("scope", "").split(), shown)


def consent_decision(pending: PendingRequest, *, resident_id: uuid.UUID, scopes: list[str]) -> str | None:
    """The answer on this request's consent page ("allow" or "deny") if it was this resident's and about exactly
    these scopes; a sign-in by someone else, or another scope list, is asked afresh."""
    decision = pending.decision
    if not isinstance(decision, dict) or decision.get("resident") != str(resident_id):
        return None
    if decision.get("scopes") != sorted(scopes):
        return None
    answer = decision.get("decision")
    return answer if answer in ("allow", "deny") else None


def answer_consent(
    db: Session, request_id: str, *, login: LoginSession, allow: bool, now: dt.datetime
) -> dict[str, str]:
    """Record the resident's answer to the consent question `request_id`; an allowed one stores consent to exactly
    the scopes the page listed. The request's parameters come back, to continue it.

    Raises:
        ConsentExpiredError: no such question waits for this resident.
    """
    entries = _entries()
    key = next((k for k, v in entries.items() if request_id and (v.get("ask") or {}).get("id") == request_id), None)
    if key is None:
        raise ConsentExpiredError
    entry = dict(entries[key])
    asked = entry.pop("ask")
    if asked.get("resident") != str(login.resident_id):
        # Someone else signed in since the page was shown: their answer is asked on a page of their own.
        raise ConsentExpiredError
    params: dict[str, str] = entry["params"]
    if allow:
        # Exactly what the page listed; the rest of the request was allowed before (or it is asked again).
        grant_consent(db, login.resident_id, params.get("client_id", ""), asked["scopes"], now=now)
    entry["consent"] = {
        "decision": "allow" if allow else "deny",
        "resident": str(login.resident_id),
        "scopes": sorted(s for s in params.get("scope", "").split() if s),
    }
    entries[key] = entry
    session[PENDING] = entries
    return params


# -- the raw CI waiting for a kr_ci consent -----------------------------------------------------------------------


def hold_ci(held: dict[str, str]) -> None:
    session[HELD_CI] = held


def held_ci_value() -> object:
    return session.get(HELD_CI)


def drop_held_ci() -> object:
    return session.pop(HELD_CI, None)


# -- the flow cookie members this module writes --------------------------------------------------------------------


def is_text(value: object) -> bool:
    return isinstance(value, str)


def is_moment(value: object) -> bool:
    """An ISO 8601 time with its offset (compared with aware datetimes); idp.web.cookies checks its members with
    these too."""
    if not isinstance(value, str):
        return False
    try:
        return dt.datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _pending_request(entry: object) -> bool:
    params = entry.get("params") if isinstance(entry, dict) else None
    if not isinstance(params, dict) or not all(is_text(k) and is_text(v) for k, v in params.items()):
        return False
    assert isinstance(entry, dict)
    ask = entry.get("ask")
    if ask is not None:
        scopes = ask.get("scopes") if isinstance(ask, dict) else None
        if not (isinstance(ask, dict) and is_text(ask.get("id")) and is_text(ask.get("resident"))):
            return False
        if not (isinstance(scopes, list) and all(map(is_text, scopes))):
            return False
    return is_moment(entry.get("since")) and (entry.get("consent") is None or isinstance(entry.get("consent"), dict))


FLOW_MEMBERS: dict[str, Callable[[object], bool]] = {
    PENDING: lambda value: (
        isinstance(value, dict) and all(is_text(k) and _pending_request(v) for k, v in value.items())
    ),
    HELD_CI: lambda value: isinstance(value, dict) and all(is_text(value.get(k)) for k in ("resident", "client", "ci")),
}


# -- the pages the protocol needs shown ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogoutQuestion:
    """RP-Initiated Logout asks the resident first unless the request proves it is about their session."""

    params: dict[str, str]
    client: Client | None


class InteractionPages(Protocol):
    """The resident-facing pages the protocol shows; idp.web implements them (templates, language, CSRF)."""

    def consent(self, question: ConsentQuestion) -> Response:
        """The consent page of an authorization request (200)."""

    def logout_confirmation(self, question: LogoutQuestion) -> Response:
        """ "Sign out?" with a CSRF-protected form that confirms (200)."""

    def signed_out(self) -> Response:
        """The page after a logout with nowhere to return to."""

    def form_post(self, action: str, fields: list[tuple[str, str]]) -> Response:
        """An auto-submitted form to the client (OAuth 2.0 Form Post Response Mode)."""

    def error(self, error: OAuth2Error) -> Response:
        """A request that cannot go back to the client (unknown client, unregistered redirect or logout URI)."""
