"""Resident-facing pages: the web and account blueprints, locale choice, CSRF, CSP and HTML error pages."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from gettext import NullTranslations
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, current_app, g, render_template, request, session, url_for
from flask_babel import Babel, get_locale, get_translations
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError, CSRFProtect
from jinja2 import pass_context
from jinja2.runtime import Context
from markupsafe import Markup
from werkzeug.exceptions import HTTPException, InternalServerError

from idp.models import Client
from idp.oidc import views as oidc_views
from idp.oidc.authorization import ReceivedRequest
from idp.oidc.errors import (
    UNAVAILABLE_ERRORS,
    UNAVAILABLE_RETRY_AFTER,
    TemporarilyUnavailableError,
    json_error,
    log_unavailable,
)
from idp.oidc.interaction import waiting_client, waiting_key, waiting_params
from idp.oidc.views import json_http_error
from idp.runtime import Runtime, current, db_session
from idp.settings import HelpHours, Settings
from idp.web.cookies import FlowCookie, drop_malformed_flow_members

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


def _ui_locale(asked: str) -> str | None:
    for tag in asked.split():
        language = tag.split("-")[0].lower()
        if language in LOCALES:
            return language
    return None


def select_locale() -> str:
    """The resident's own choice (the language switch), then the service's `ui_locales` (this request's, else the
    waiting authorization request's, so every page of its sign-in speaks it), then the browser's languages, then
    Korean. A service's hint never overrides what the resident chose."""
    chosen = session.get("locale")
    if chosen in LOCALES:
        return str(chosen)
    waiting = waiting_params(session.get("next")) or {}
    for asked in (request.args.get("ui_locales"), waiting.get("ui_locales")):
        language = _ui_locale(asked or "")
        if language:
            return language
    return request.accept_languages.best_match(LOCALES) or DEFAULT_LOCALE


# Query parameters a page may be asked again with after a language switch: closed sets of short words (a step-up
# reason, the recovery-code form, "code sent"), never what the resident typed (a phone number, a code).
KEPT_QUERY = frozenset({"reason", "kind", "sent"})
KEPT_VALUE = re.compile(r"[a-z0-9_]{1,32}")


def language_link(language: str) -> str:
    """The language switch to `language`, leading back to this page: on /authorize to the same authorization
    request (by its short name when it waits here, so its parameters are not written into the page), elsewhere to
    this address with only the harmless parameters; the sign-in's `next` stays in the flow cookie."""
    if request.endpoint == "oidc.authorize":
        params = ReceivedRequest.of(request.form if request.method == "POST" else request.args).params
        key = waiting_key(params)
        if key is not None:
            return url_for("web.language", to=language, request=key)
        # An error page for a request that goes nowhere: the browser's own address, when it is one.
        back = request.full_path if request.method == "GET" else None
        return url_for("web.language", to=language, back=back)
    if request.method != "GET":
        back = _page_again() or waiting_authorization()
        return url_for("web.language", to=language, back=back)
    query = [
        (key, value)
        for key, value in request.args.items(multi=True)
        if key in KEPT_QUERY and KEPT_VALUE.fullmatch(value)
    ]
    return url_for("web.language", to=language, back=request.path + ("?" + urlencode(query) if query else ""))


def _page_again() -> str | None:
    """This page's address if it can be opened afresh (a form sent here by POST that also answers GET)."""
    adapter = current_app.create_url_adapter(request)
    return request.path if adapter is not None and adapter.test(request.path, method="GET") else None


def waiting_authorization() -> str | None:
    """The authorization request this browser's sign-in goes back to, if one waits."""
    target = session.get("next")
    return target if isinstance(target, str) and waiting_params(target) is not None else None


def waiting_service() -> Client | None:
    """The service whose sign-in this browser is in the middle of, named on the pages of that sign-in."""
    if "waiting_service" not in g:
        client: Client | None = None
        target = waiting_authorization()
        if target is not None:
            try:
                client = waiting_client(db_session(), target)
            except UNAVAILABLE_ERRORS:
                # The page still renders (an error page of its own, often) without naming the service.
                with contextlib.suppress(Exception):
                    db_session().rollback()
        g.waiting_service = client
    found: Client | None = g.waiting_service
    return found


def _page_gettext(catalogue: NullTranslations) -> Callable[..., str]:
    """Jinja's new-style gettext (the i18n extension's `_` and `gettext`), bound to one catalogue."""

    @pass_context
    def gettext(context: Context, string: str, /, **variables: Any) -> str:
        text = catalogue.gettext(string)
        if context.eval_ctx.autoescape:
            text = Markup(text)  # noqa: S704  (our own catalogue, as Jinja's i18n trusts it; `%` escapes the variables)
        return text % variables

    return gettext


def _page_ngettext(catalogue: NullTranslations) -> Callable[..., str]:
    """Jinja's new-style ngettext, bound to one catalogue (`num` is the count unless given)."""

    @pass_context
    def ngettext(context: Context, singular: str, plural: str, count: int, /, **variables: Any) -> str:
        variables.setdefault("num", count)
        text = catalogue.ngettext(singular, plural, count)
        if context.eval_ctx.autoescape:
            text = Markup(text)  # noqa: S704  (as above)
        return text % variables

    return ngettext


def page_language() -> dict[str, Any]:
    """What every page's template gets: the request's language, and gettext bound to its catalogue, found once per
    page (Flask-Babel's own template functions find the request's locale and catalogue again for every string)."""
    catalogue = get_translations()
    locale = get_locale()
    return {
        "gettext": _page_gettext(catalogue),
        "ngettext": _page_ngettext(catalogue),
        "page_language": locale.language if locale is not None else DEFAULT_LOCALE,
    }


@dataclass(frozen=True, slots=True)
class HelpDesk:
    """The help-desk line as the pages show it: the number to dial and when it answers, in the page's language."""

    phone: str
    dial: str
    hours: str


def _hours_text(hours: HelpHours) -> str:
    if hours.days == "always":
        return str(_("24 hours a day, every day"))
    if hours.days == "daily":
        return str(_("every day, %(opens)s–%(closes)s (Korea time)", opens=hours.opens, closes=hours.closes))
    return str(_("weekdays, %(opens)s–%(closes)s (Korea time)", opens=hours.opens, closes=hours.closes))


def help_desk() -> HelpDesk:
    settings = current().settings
    dial = "".join(c for c in settings.help_phone if c.isdigit() or c in "+-")
    return HelpDesk(settings.help_phone, dial, _hours_text(settings.help_desk_hours))


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


HEADINGS = {
    403: lambda: _("This cannot be done"),
    404: lambda: _("Page not found"),
    429: lambda: _("Please wait before you try again"),
    503: lambda: _("The service is busy"),
}
# What a resident can do about it themselves: these pages say what, and leave out the error code.
RECOVERABLE = frozenset({429})


@dataclass(frozen=True, slots=True)
class Action:
    """A way on from an error page: a link, the first one the main button."""

    label: str
    href: str


def default_actions(status: int) -> list[Action]:
    """Ways on from an error page: sign in another way after a lockout, else back into the sign-in in progress."""
    if status == 429:
        return [
            Action(str(_("Sign in with your mobile phone instead")), url_for("web.carrier_start")),
            Action(str(_("See the other ways to sign in")), url_for("web.login")),
        ]
    service, waiting = waiting_service(), waiting_authorization()
    if status != 403 and service is not None and waiting is not None:
        return [Action(str(_("Continue signing in to %(service)s", service=service.name)), waiting)]
    return [Action(str(_("Go to the sign-in page")), url_for("web.login"))]


def render_error(
    status: int,
    message: str | None = None,
    *,
    retry_after: int | None = None,
    detail: str | None = None,
    heading: str | None = None,
    advice: str | None = None,
    actions: list[Action] | None = None,
    show_code: bool | None = None,
) -> Response:
    """The resident-facing error page (every HTML error goes through here), in the resident's language: what
    happened, what to do (`advice`, `actions`; by default the ways on for `status`), and the help-desk line."""
    try:
        sentence = message or ERROR_SENTENCES.get(status, ERROR_SENTENCES[500])()
        body = render_template(
            "error.html",
            status=status,
            heading=heading or HEADINGS.get(status, lambda: _("Something is not right"))(),
            message=sentence,
            advice=advice,
            retry_after=retry_after,
            detail=detail,
            actions=default_actions(status) if actions is None else actions,
            show_code=status not in RECOVERABLE if show_code is None else show_code,
        )
    except Exception:
        # The error page itself failed (a broken template or catalogue): still answer without a traceback.
        log.exception("error page failed to render")
        body = FALLBACK_ERROR_PAGE
    response = Response(body, status=status, mimetype="text/html")
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    response.headers["Cache-Control"] = "no-store"
    return response


def form_expired() -> Response:
    """A form whose CSRF token is missing or stale: say so, and lead back to a fresh form (or the sign-in)."""
    again = _page_again()
    actions = [Action(str(_("Fill in the form again")), again)] if again else default_actions(400)
    return render_error(
        400,
        _("This form has expired or was sent twice. Please fill it in again."),
        heading=_("This page has expired"),
        advice=_(
            "For your safety, a form stops working after a while, and once it has been sent. Nothing was changed."
        ),
        actions=actions,
        show_code=False,
    )


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
    app.session_interface = FlowCookie()
    Babel(app, locale_selector=select_locale)
    app.context_processor(page_language)
    app.jinja_env.globals.update(
        get_locale=get_locale, language_link=language_link, waiting_service=waiting_service, help_desk=help_desk
    )
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
        return form_expired()

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if wants_html():
            return render_error(error.code or 500)
        return json_http_error(error)

    def backend_unavailable(error: Exception) -> Response:
        log_unavailable(log, error, request.method, request.path)
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
