"""Resident-facing pages: the web and account blueprints, locale choice, CSRF, CSP and HTML error pages."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from flask import Flask, Response, render_template, request, session
from flask_babel import Babel, get_locale
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError, CSRFProtect
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from werkzeug.exceptions import HTTPException, InternalServerError

from idp.oidc import views as oidc_views
from idp.oidc.errors import TemporarilyUnavailableError, json_error
from idp.oidc.views import json_http_error
from idp.runtime import Runtime, current, db_session
from idp.settings import Settings
from idp.web.cookies import drop_malformed_flow_members

LOCALES = ("ko", "en")
DEFAULT_LOCALE = "ko"
TRANSLATIONS = Path(__file__).parent / "translations"
# Pages load only their own styles and scripts; nothing may frame them (clickjacking on sign-in and consent).
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)

FALLBACK_ERROR_PAGE = (
    '<!doctype html><html lang="ko"><meta charset="utf-8"><title>오류 · Error</title>'
    "<h1>일시적인 오류가 발생했습니다.</h1><p>Something went wrong. Please try again.</p></html>"
)

csrf = CSRFProtect()
log = logging.getLogger("idp.web")


def select_locale() -> str:
    """`ui_locales` (remembered for the login flow), then the browser's languages, then Korean."""
    asked = request.args.get("ui_locales")
    if asked:
        for tag in asked.split():
            language = tag.split("-")[0].lower()
            if language in LOCALES:
                session["locale"] = language
                return language
    remembered = session.get("locale")
    if remembered in LOCALES:
        return str(remembered)
    return request.accept_languages.best_match(LOCALES) or DEFAULT_LOCALE


def wants_html() -> bool:
    if request.blueprint in ("web", "account", "passkeys", "totp", "interaction"):
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html" and request.accept_mimetypes[best] > request.accept_mimetypes["application/json"]


ERROR_SENTENCES = {
    400: lambda: _("The request could not be understood. Go back and try again."),
    403: lambda: _("This action is not allowed."),
    404: lambda: _("There is no page at this address."),
    405: lambda: _("This page cannot be used this way."),
    413: lambda: _("What was sent is too large."),
    429: lambda: _("Too many attempts. Wait a moment and try again."),
    500: lambda: _("Something went wrong on our side. Please try again in a moment."),
    503: lambda: _("The service is temporarily unavailable. Please try again in a moment."),
}
# Errors that mean a backing service (the database, Redis for limits) cannot be reached right now: not a bug, so
# 503 with Retry-After and one log line; the pool reconnects by itself once it is back.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    SQLAlchemyTimeoutError,
    RedisConnectionError,
    RedisTimeoutError,
)
UNAVAILABLE_RETRY_AFTER = 5


def render_error(
    status: int, message: str | None = None, *, retry_after: int | None = None, detail: str | None = None
) -> Response:
    """The resident-facing error page (every HTML error goes through here), in the resident's language."""
    try:
        sentence = message or ERROR_SENTENCES.get(status, ERROR_SENTENCES[500])()
        body = render_template("error.html", status=status, message=sentence, retry_after=retry_after, detail=detail)
    except Exception:
        # The error page itself failed (a broken template or catalogue): still answer without a traceback.
        log.exception("error page failed to render")
        body = FALLBACK_ERROR_PAGE
    response = Response(body, status=status, mimetype="text/html")
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    response.headers["Cache-Control"] = "no-store"
    return response


def _page_headers(response: Response) -> Response:
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = PAGE_CSP
        response.headers.setdefault("Cache-Control", "no-store")
        response.vary.add("Accept-Language")
    return response


def init_app(app: Flask, runtime: Runtime) -> None:
    from idp.web import account, interaction, login, passkeys, totp

    settings = runtime.settings

    https = settings.issuer.startswith("https://")
    app.config.update(
        # __Host- cookies are only accepted over https, host-only, Path=/: no subdomain can set or read them.
        SESSION_COOKIE_NAME="__Host-idp_flow" if https else "idp_flow",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=https,
        PERMANENT_SESSION_LIFETIME=1800,
        WTF_CSRF_TIME_LIMIT=3600,
        WTF_CSRF_SSL_STRICT=https,
        BABEL_DEFAULT_LOCALE=DEFAULT_LOCALE,
        BABEL_TRANSLATION_DIRECTORIES=str(TRANSLATIONS),
    )
    Babel(app, locale_selector=select_locale)
    app.jinja_env.globals["get_locale"] = get_locale
    # Before CSRFProtect reads the flow cookie's token, so a token of another shape is a missing one, not a 500.
    app.before_request(drop_malformed_flow_members)
    csrf.init_app(app)
    # Protocol endpoints authenticate clients, not browsers: no CSRF token. The resident's answers to the pages
    # the protocol shows (consent, sign out) go to this package's blueprints, which CSRFProtect covers.
    csrf.exempt(oidc_views.bp)
    app.register_blueprint(login.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(passkeys.bp)
    app.register_blueprint(totp.bp)
    app.register_blueprint(interaction.bp)
    app.after_request(_page_headers)

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError) -> Response:
        return render_error(400, _("This form has expired or was sent twice. Please fill it in again."))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if wants_html():
            return render_error(error.code or 500)
        return json_http_error(error)

    def backend_unavailable(error: Exception) -> Response:
        # The cause's first line only: the statement and its parameters (codes, tokens) stay out of the log.
        cause = getattr(error, "orig", None) or error
        summary = (str(cause).splitlines() or [""])[0][:200]
        log.warning(
            "database unavailable on %s %s: %s: %s", request.method, request.path, type(cause).__name__, summary
        )
        with contextlib.suppress(Exception):
            db_session().rollback()
        if wants_html():
            return render_error(503, retry_after=UNAVAILABLE_RETRY_AFTER)
        return json_error(TemporarilyUnavailableError(UNAVAILABLE_RETRY_AFTER))

    for unavailable in UNAVAILABLE_ERRORS:
        app.register_error_handler(unavailable, backend_unavailable)

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        db_session().rollback()
        if wants_html():
            return render_error(500)
        return json_http_error(InternalServerError())


def page_settings() -> Settings:
    return current().settings
