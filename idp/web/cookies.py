"""The login-session cookie: set, cleared, and read into the current LoginSession."""

from __future__ import annotations

import datetime as dt

from flask import current_app, g, request
from werkzeug.wrappers import Response

from idp import db
from idp.authn.sessions import SessionEndedError, load_session
from idp.models import LoginSession
from idp.settings import Settings


def cookie_name() -> str:
    settings: Settings = current_app.extensions["idp.settings"]
    # __Host- binds the cookie to this exact host over https (RFC 6265bis §4.1.3.2).
    return "__Host-idp_sid" if settings.issuer.startswith("https://") else "idp_sid"


def set_session_cookie(response: Response, value: str) -> None:
    settings: Settings = current_app.extensions["idp.settings"]
    response.set_cookie(
        cookie_name(),
        value,
        httponly=True,
        secure=settings.issuer.startswith("https://"),
        samesite="Lax",
        path="/",
    )


def clear_session_cookie(response: Response) -> None:
    settings: Settings = current_app.extensions["idp.settings"]
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
            login = load_session(db.session(), value, now=dt.datetime.now(dt.UTC))
        except SessionEndedError:
            login = None
    g.login_session = login
    return login
