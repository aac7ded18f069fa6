"""The cookies: the login session (set, cleared, read into the current LoginSession) and the flow cookie's shape."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

from flask import g, request, session
from werkzeug.wrappers import Response

from idp.authn.assurance import AuthEvent
from idp.authn.carrier import CarrierErrorCode
from idp.authn.sessions import SessionEndedError, load_session
from idp.models import LoginSession
from idp.runtime import current, db_session, request_time


def cookie_name() -> str:
    settings = current().settings
    # __Host- binds the cookie to this exact host over https (RFC 6265bis §4.1.3.2).
    return "__Host-idp_sid" if settings.issuer.startswith("https://") else "idp_sid"


def set_session_cookie(response: Response, value: str) -> None:
    settings = current().settings
    response.set_cookie(
        cookie_name(),
        value,
        httponly=True,
        secure=settings.issuer.startswith("https://"),
        samesite="Lax",
        path="/",
    )


def clear_session_cookie(response: Response) -> None:
    settings = current().settings
    response.delete_cookie(
        cookie_name(), path="/", secure=settings.issuer.startswith("https://"), httponly=True, samesite="Lax"
    )


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


# -- the flow cookie ------------------------------------------------------------------------------------------------
# Flask's signed session carries a browser's flow between pages. Only the app writes it, but an older release wrote
# other shapes and a leaked key writes any: each member the views read is checked for the shape they write before
# any view (or Flask-WTF's CSRF check) reads it, and dropped otherwise, as if the flow had ended.


def _text(value: object) -> bool:
    return isinstance(value, str)


def _moment(value: object) -> bool:
    """An ISO 8601 time with its offset (the views compare it with aware datetimes)."""
    if not isinstance(value, str):
        return False
    try:
        return dt.datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


def _record(value: object, **members: Callable[[object], bool]) -> bool:
    """A mapping holding each of `members`, each of its shape (other keys are left alone)."""
    return isinstance(value, dict) and all(name in value and check(value[name]) for name, check in members.items())


def _carrier_flow(value: object) -> bool:
    if not _record(value, txn=_text, phone=_text, binding=_text, expires_at=_moment):
        return False
    assert isinstance(value, dict)
    return value.get("method") in ("sms", "app") and (value.get("match") is None or _text(value["match"]))


def _auth_event(value: object) -> bool:
    try:
        AuthEvent.from_json(value)  # type: ignore[arg-type]  # whatever the cookie holds: checked by parsing
    except (KeyError, TypeError, ValueError, AttributeError):
        return False
    return _record(value, at=_moment)


def _uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


def _pending_request(entry: object) -> bool:
    params = entry.get("params") if isinstance(entry, dict) else None
    if not isinstance(params, dict) or not all(_text(k) and _text(v) for k, v in params.items()):
        return False
    assert isinstance(entry, dict)
    ask = entry.get("ask")
    if ask is not None and not (
        _record(ask, id=_text, resident=_text, scopes=lambda s: isinstance(s, list) and all(map(_text, s)))
    ):
        return False
    return _moment(entry.get("since")) and (entry.get("consent") is None or isinstance(entry.get("consent"), dict))


def _pending_requests(value: object) -> bool:
    return isinstance(value, dict) and all(_text(key) and _pending_request(entry) for key, entry in value.items())


CARRIER_ERROR_CODES = frozenset(code.value for code in CarrierErrorCode)
FLOW_MEMBERS: dict[str, Callable[[object], bool]] = {
    # Flask-WTF's raw token (hex), compared with hmac.compare_digest, which refuses non-ASCII text.
    "csrf_token": lambda value: isinstance(value, str) and value.isascii(),
    "locale": _text,
    "next": _text,
    "webauthn": _text,  # idp.web.passkeys BINDING
    "welcome": lambda value: isinstance(value, bool),
    "carrier": _carrier_flow,  # idp.web.login FLOW_KEY
    "carrier_failure": lambda value: isinstance(value, str) and value in CARRIER_ERROR_CODES,
    "carrier_retry": lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= 0,
    "second_factor": lambda value: _record(value, resident=_uuid, event=_auth_event, expires_at=_moment),
    "held_ci": lambda value: _record(value, resident=_text, client=_text, ci=_text),
    "authz_pending": _pending_requests,  # kept by idp.oidc.views between /authorize and the sign-in
}


def drop_malformed_flow_members() -> None:
    """Before every request: forget members of the flow cookie that are not of the shape the views write."""
    for name, shaped in FLOW_MEMBERS.items():
        if name in session and not shaped(session[name]):
            session.pop(name)
